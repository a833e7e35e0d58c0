"""The results store: ``results.json`` documents, their records, atomic writes and resuming.

Readers of a run folder see the old or the new ``results.json``, never a partial one: every write
goes to a temporary file in the same folder, is fsynced, then renamed over. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpcore.names import name_of
from mpcore.shapes import ShapeError, check_results

SCHEMA = "mpbench-results/1"
RESULTS_FILE = "results.json"


class RunSetupError(Exception):
    """The run cannot start as asked (bad ``--out``, unresumable folder); one line for the user."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a partial
    one: write a temporary file in the same folder, fsync it, then rename over; on any error the
    temporary file is removed and the old file is left as it was."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_json_atomic(path: Path, document: Any) -> None:
    """:func:`write_text_atomic` of ``document`` as indented JSON (serialised before the file is
    touched, so an unserialisable document leaves nothing behind)."""
    write_text_atomic(path, json.dumps(document, indent=2, allow_nan=True) + "\n")


def read_results(path: Path) -> dict[str, Any]:
    """Load a ``results.json``; raise :class:`RunSetupError` if it is not one."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as error:
        raise RunSetupError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise RunSetupError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise RunSetupError(f"{path} is not an mpbench results file (schema {SCHEMA})")
    try:
        check_results(document)
    except ShapeError as error:
        raise RunSetupError(f"{path}: {error}") from None
    return document


def check_writable_folder(out: Path) -> None:
    """Create ``out`` if needed and prove a file can be written in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".mpbench-write-test"):
            pass
    except OSError as error:
        raise RunSetupError(
            f"--out {out} is not a writable folder: {error.strerror or error}"
        ) from None


def strategy_of(config: Mapping[str, str]) -> str:
    """The tf.distribute strategy a planned configuration trains under."""
    return config.get("strategy", "none")


def mode_of(config: Mapping[str, str]) -> dict[str, str]:
    """The ``RunConfig`` fields of a planned configuration (without its strategy)."""
    return {"precision": config["precision"], "xla": config["xla"]}


# --------------------------------------------------------------------------------------------
# Records


def failed_record(name: str, config: Mapping[str, str], reason: str) -> dict[str, Any]:
    """The record of a configuration that did not train to the end."""
    return {
        "name": name,
        "config": dict(config),
        "status": "failed",
        "reason": reason,
        "result": None,
        "telemetry": None,
    }


def finished_record(
    name: str, config: Mapping[str, Any], result: dict[str, Any], sampler: Any
) -> dict[str, Any]:
    """The record of a configuration that trained to the end, with this process's telemetry
    (``sampler`` is the :class:`mpcore.probe.telemetry.Sampler` that ran during training)."""
    from mpcore.probe import telemetry

    return {
        "name": name,
        "config": dict(config),
        "status": "ok",
        "reason": None,
        "result": result,
        "telemetry": {
            "peak_rss_bytes": telemetry.peak_rss_bytes(),
            "tf_peak_memory_bytes": telemetry.tf_peak_memory_bytes(),
            "gpu": sampler.summary(),
            "gpu_series": sampler.series,
        },
    }


# --------------------------------------------------------------------------------------------
# Documents


def new_document(
    *,
    settings: dict[str, Any],
    planned: list[str],
    validation_fraction: float,
    profile: str,
    profile_reason: str,
    data: dict[str, Any],
    machine: dict[str, Any],
    command: list[str],
) -> dict[str, Any]:
    """The initial ``results.json`` content, before any configuration has run."""
    return {
        "schema": SCHEMA,
        "status": "running",
        "created": now_iso(),
        "updated": now_iso(),
        "command": command,
        "profile": profile,
        "profile_reason": profile_reason,
        "settings": settings,
        "validation_fraction": validation_fraction,
        "data": data,
        "planned": planned,
        "machine": machine,
        "configurations": [],
    }


def resumable_document(
    path: Path,
    settings: dict[str, Any],
    data_root: Path,
    skipped_images: list[str],
    planned: list[str],
) -> dict[str, Any]:
    """The saved run at ``path`` with every record it holds (a resume never drops one; a
    configuration outside ``planned`` is kept as it is); raise :class:`RunSetupError` if it was
    made with other settings or data."""
    document = read_results(path)
    differing = sorted(
        key
        for key in set(settings) | set(document.get("settings", {}))
        if settings.get(key) != document.get("settings", {}).get(key)
    )
    saved_data = document.get("data", {})
    saved_skipped = [image.get("path") for image in saved_data.get("skipped_images", [])]
    if saved_data.get("root") != str(data_root) or saved_skipped != skipped_images:
        differing.append("data")
    if differing:
        raise RunSetupError(
            f"cannot resume {path}: it was run with different {', '.join(differing)}; "
            "use the same options or a new --out folder"
        )
    # Append-only: every record is kept, finished or not, planned now or not. The ones this
    # plan names and that did not finish ``ok`` are run again and replaced (store_record).
    for position, record in enumerate(document.get("configurations", [])):
        if not isinstance(record.get("config"), dict):  # store_record reads every one's
            raise RunSetupError(f"{path}: key 'configurations[{position}].config' is missing")
    document["planned"] = list(dict.fromkeys([*document.get("planned", []), *planned]))
    document["status"] = "running"
    return document


def store_record(document: dict[str, Any], record: dict[str, Any]) -> None:
    """Put ``record`` in ``document`` (replacing an earlier record of the same configuration)."""
    kept = [r for r in document["configurations"] if r.get("name") != record["name"]]
    document["configurations"] = [*kept, record]
    document["updated"] = now_iso()
    if any(strategy_of(r["config"]) != "none" for r in document["configurations"]):
        add_scaling(document)


# --------------------------------------------------------------------------------------------
# Scaling figures


def images_per_second_per_replica(result: Mapping[str, Any]) -> float:
    """Training throughput of one replica, from a ``RunResult.to_dict()`` record."""
    return float(result["images_per_second"]) / int(result.get("replicas", 1))


def scaling_efficiency(
    images_per_second: float, replicas: int, single_replica_images_per_second: float
) -> float:
    """Throughput per replica relative to one replica alone: 1.0 is perfect linear scaling."""
    if replicas < 1 or single_replica_images_per_second <= 0:
        raise ValueError("scaling efficiency needs replicas >= 1 and a positive baseline")
    return images_per_second / (replicas * single_replica_images_per_second)


def add_scaling(document: dict[str, Any]) -> None:
    """Give every finished distributed configuration a ``scaling`` entry: replicas, global
    batch, images/s per replica and the efficiency against the same mode without a strategy
    (one replica) in this run; efficiency is None while that baseline is missing or failed."""
    records = document["configurations"]
    single = {
        name_of(r["config"]): r["result"]
        for r in records
        if r.get("status") == "ok" and strategy_of(r["config"]) == "none"
    }
    for record in records:
        if record.get("status") != "ok" or strategy_of(record["config"]) == "none":
            continue
        result = record["result"]
        baseline_name = name_of(mode_of(record["config"]))
        baseline = single.get(baseline_name)
        record["scaling"] = {
            "strategy": strategy_of(record["config"]),
            "replicas": result["replicas"],
            "global_batch": result["global_batch"],
            "images_per_second_per_replica": images_per_second_per_replica(result),
            "baseline": baseline_name,
            "baseline_images_per_second": baseline["images_per_second"] if baseline else None,
            "scaling_efficiency": scaling_efficiency(
                result["images_per_second"], result["replicas"], baseline["images_per_second"]
            )
            if baseline
            else None,
        }


# --------------------------------------------------------------------------------------------
# Data identity and saving through faults


def data_change(saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> str | None:
    """What differs between a run's recorded data fingerprint and the data set's now (see
    :func:`mpcore.data.fingerprint`), or None; a run recorded without one is not checked."""
    if not saved:
        return None
    changed = []
    if saved.get("csv_sha256") != now.get("csv_sha256"):
        rows = f" ({saved.get('rows')} rows, now {now.get('rows')})"
        changed.append("train.csv changed" + (rows if saved.get("rows") != now.get("rows") else ""))
    if saved.get("images_sha256") != now.get("images_sha256"):
        changed.append("the content of the listed images changed")
    return "; ".join(changed) or None


#: Tries and the pause between them before a results.json that cannot be written is given up.
SAVE_ATTEMPTS, SAVE_PAUSE_SECONDS = 3, 1.0


class ResultsUnsavable(Exception):
    """``results.json`` could not be written after every try; the document went to a fallback
    file the message names."""


def fallback_path(path: Path) -> Path:
    """Where a run's results go when its folder refuses them: the temporary folder, named by
    the run folder and this process."""
    stem = "".join(c if c.isalnum() else "-" for c in str(Path(path).parent.resolve()))[-60:]
    return Path(tempfile.gettempdir()) / f"mpbench-rescued{stem}-{os.getpid()}.json"


def save_results(
    path: Path,
    document: dict[str, Any],
    announce: Any = print,
    attempts: int | None = None,
    pause: float | None = None,
) -> None:
    """:func:`write_json_atomic` of ``document`` to ``path``, tried again on an ``OSError`` (a
    full disk, a folder made read-only); on giving up the document is written to
    :func:`fallback_path` and :class:`ResultsUnsavable` says where. ``document`` itself (the
    records in memory) is never changed."""
    import time

    attempts = attempts or SAVE_ATTEMPTS
    pause = SAVE_PAUSE_SECONDS if pause is None else pause
    for attempt in range(1, attempts + 1):
        try:
            write_json_atomic(path, document)
            return
        except OSError as error:
            problem = error.strerror or str(error)
            if attempt < attempts:
                announce(f"cannot write {path} ({problem}); trying again in {pause:g} s")
                time.sleep(pause)
    rescue = fallback_path(path)
    try:
        write_json_atomic(rescue, document)
        where = f"the run so far is saved in {rescue}"
    except OSError as error:
        where = f"nor to {rescue} ({error.strerror or error})"
    raise ResultsUnsavable(f"cannot write {path} ({problem}) after {attempts} tries; {where}")


# Repeats (``mpbench run --repeats N``)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def repeat_entry(record: Mapping[str, Any], repeat: int, position: int) -> dict[str, Any]:
    """What one repeat of a configuration measured, for the record's ``repeats`` list."""
    result = record.get("result") or {}
    return {
        "repeat": repeat,
        "position": position,
        "status": record["status"],
        "reason": record.get("reason"),
        "ms_per_step": result.get("ms_per_step"),
        "epoch_seconds": result.get("epoch_seconds"),
        "epoch_cpu_seconds": result.get("epoch_cpu_seconds"),
        "final_loss": (result.get("loss") or [None])[-1],
        "wall_seconds": record.get("wall_seconds"),
        "finished": now_iso(),
        "load_average": _load_average(),
    }


def finished_repeats(document: Mapping[str, Any]) -> dict[str, int]:
    """How many repeats of each configuration finished ``ok`` (a record without ``repeats``,
    from before they existed, counts as one)."""
    counts: dict[str, int] = {}
    for record in document.get("configurations", []):
        if record.get("status") != "ok":
            continue
        runs = record.get("repeats")
        counts[record["name"]] = (
            sum(run.get("status") == "ok" for run in runs) if runs is not None else 1
        )
    return counts


def store_repeat(
    document: dict[str, Any], record: dict[str, Any], repeat: int, position: int
) -> None:
    """Store repeat ``repeat`` of a configuration (the ``position``-th run of the schedule):
    the record is the latest repeat's, with every repeat's timings in ``repeats``; one failed
    repeat fails the configuration. A resumed configuration whose record failed starts its
    repeats afresh (its record is kept until then, as a resume keeps every record)."""
    earlier = next((r for r in document["configurations"] if r.get("name") == record["name"]), None)
    kept = earlier is not None and earlier.get("status") == "ok"
    runs = list(earlier.get("repeats", [])) if kept else []
    runs.append(repeat_entry(record, repeat, position))
    place = document["configurations"].index(earlier) if earlier is not None else None
    store_record(document, {**record, "repeats": runs})
    if place is not None:  # the configuration keeps its place (the table's row order)
        records = document["configurations"]
        records.insert(place, records.pop())


def warmup_entry(record: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """The untimed warm-up run as ``results.json`` keeps it (``log`` relative to ``out``)."""
    log = (out / "warmup" / record["log"]).relative_to(out) if record.get("log") else None
    return {
        "name": record["name"],
        "status": record["status"],
        "reason": record.get("reason"),
        "epoch_seconds": (record.get("result") or {}).get("epoch_seconds"),
        "wall_seconds": record.get("wall_seconds"),
        "log": str(log) if log else None,
    }
