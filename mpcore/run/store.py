"""The results store: ``results.json`` documents, their records, repeats and resuming.

No TensorFlow here; the files themselves are written by :mod:`mpcore.run.files`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpcore.run.files import RunSetupError, read_results
from mpcore.run.lossscale import collapse_note
from mpcore.run.scaling import add_scaling
from mpcore.run.schema import SCHEMA, ShapeError, check_record, finite_or_null, strategy_of
from mpcore.run.zygote import FORKED_ENV

#: The distribution settings a resume must share with the saved run, by the option that sets each.
DISTRIBUTION_OPTIONS = {
    "strategy": "--strategy",
    "workers": "--workers",
    "cpu_replicas": "--cpu-replicas",
}
_UNDISTRIBUTED = {"strategy": "none", "workers": 0, "cpu_replicas": 0}


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


#: What a run with one epoch has in place of a steady figure (its only epoch traced, compiled).
NO_STEADY_EPOCH = "no steady epoch"


def steady_description(epochs: int) -> str:
    """What a result's steady figures are: the median of the epochs after the first, or (one
    epoch) :data:`NO_STEADY_EPOCH`, the figures then being the first epoch's."""
    if epochs < 2:
        return f"{NO_STEADY_EPOCH}: the figures are the first epoch's, compilation included"
    return f"median of epochs 2-{epochs}" if epochs > 2 else "epoch 2"


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
    from mpcore.probe import backend, telemetry

    epochs = len(result.get("epoch_seconds") or [])
    on_tensorflow = backend.is_tensorflow()
    return {
        "name": name,
        "config": dict(config),
        "status": "ok",
        "reason": None,
        "result": {**result, "steady": steady_description(epochs)},
        "telemetry": {
            "peak_rss_bytes": telemetry.peak_rss_bytes(),
            # A forked worker's RSS leaves out the imported libraries' untouched pages: the figure
            # compares only with workers started the same way.
            "worker_start": "forked" if os.environ.get(FORKED_ENV) else "fresh",
            "tf_peak_memory_bytes": telemetry.tf_peak_memory_bytes() if on_tensorflow else None,
            # JAX's or torch's own peak GPU memory (None on a CPU, and on TensorFlow).
            "backend_peak_memory_bytes": None if on_tensorflow else backend.peak_memory_bytes(),
            "gpu": sampler.summary(),
            "gpu_series": sampler.series,
        },
    }


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
    distribution: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The saved run at ``path`` with every record it holds (a resume never drops one; a
    configuration outside ``planned`` is kept as it is); raise :class:`RunSetupError` naming
    every difference if it was made with other settings, data or ``distribution`` (the
    strategy, local workers and CPU replicas: records of different replica counts must not
    share a table)."""
    document = read_results(path)
    differing = sorted(
        key
        for key in set(settings) | set(document.get("settings", {}))
        if settings.get(key) != document.get("settings", {}).get(key)
    )
    saved_distribution = document.get("distribution")
    if distribution is not None and isinstance(saved_distribution, Mapping):
        differing += [
            DISTRIBUTION_OPTIONS[key]
            for key in DISTRIBUTION_OPTIONS
            if saved_distribution.get(key, _UNDISTRIBUTED[key]) != distribution.get(key)
        ]
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


def checked_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record``, or a failed record naming what is wrong when a finished one breaks the
    results schema (a step time of 0, a non-finite one): ``results.json`` is always valid."""
    try:
        check_record(finite_or_null(record))
    except ShapeError as error:
        if record.get("status") != "ok":  # nothing finished to lose; save_results will say
            return record
        config = record.get("config") if isinstance(record.get("config"), dict) else {}
        reason = f"its result breaks the results schema: {error}"
        return {**record, **failed_record(record["name"], config, reason)}
    return record


def store_record(document: dict[str, Any], record: dict[str, Any]) -> None:
    """Put ``record`` in ``document`` (replacing an earlier record of the same configuration)."""
    record = checked_record(record)
    kept = [r for r in document["configurations"] if r.get("name") != record["name"]]
    document["configurations"] = [*kept, record]
    document["updated"] = now_iso()
    if any(strategy_of(r["config"]) != "none" for r in document["configurations"]):
        add_scaling(document)


def data_change(saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> str | None:
    """What differs between a run's recorded data fingerprint and the data set's now (see
    :func:`mpcore.data.ships.fingerprint`), or None; a run recorded without one is not checked."""
    if not saved:
        return None
    changed = []
    if saved.get("csv_sha256") != now.get("csv_sha256"):
        rows = f" ({saved.get('rows')} rows, now {now.get('rows')})"
        changed.append("train.csv changed" + (rows if saved.get("rows") != now.get("rows") else ""))
    if saved.get("images_sha256") != now.get("images_sha256"):
        changed.append("the content of the listed images changed")
    return "; ".join(changed) or None


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
        "seed": (result.get("settings") or {}).get("init_seed"),
        "target": result.get("target"),
        "wall_seconds": record.get("wall_seconds"),
        "finished": now_iso(),
        "load_average": _load_average(),
    }


def _runs_of(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A record's repeats; a record from before repeats existed is its one run, repeat 0."""
    runs = record.get("repeats")
    if runs is not None:
        return [dict(run) for run in runs]
    return [repeat_entry(record, 0, 0)] if record.get("status") == "ok" else []


def finished_repeat_sets(document: Mapping[str, Any]) -> dict[str, set[int]]:
    """The indices of the repeats of each configuration that finished ``ok``, whatever its
    record's status (a configuration failed by one killed repeat keeps its finished ones, so a
    resume reruns exactly the killed one); configurations with none are left out."""
    done: dict[str, set[int]] = {}
    for record in document.get("configurations", []):
        finished = {
            run["repeat"]
            for run in _runs_of(record)
            if run.get("status") == "ok" and isinstance(run.get("repeat"), int)
        }
        if finished:
            done[record["name"]] = finished
    return done


def finished_repeats(document: Mapping[str, Any]) -> dict[str, int]:
    """How many repeats of each configuration finished ``ok`` (:func:`finished_repeat_sets`)."""
    return {name: len(done) for name, done in finished_repeat_sets(document).items()}


def store_repeat(
    document: dict[str, Any], record: dict[str, Any], repeat: int, position: int
) -> dict[str, Any]:
    """Store repeat ``repeat`` of a configuration (the ``position``-th run of the schedule) and
    return the record as stored (failed if its result broke the schema).

    ``repeats`` keeps one entry per repeat index (a rerun replaces its index's entry, failed or
    not). The record is the latest repeat's when every kept repeat is ``ok``; while any repeat
    failed the configuration is failed, with that repeat's reason (its finished repeats kept)."""
    record = checked_record(record)
    earlier = next((r for r in document["configurations"] if r.get("name") == record["name"]), None)
    runs = [run for run in _runs_of(earlier or {}) if run.get("repeat") != repeat]
    runs.append(repeat_entry(record, repeat, position))
    runs.sort(key=lambda run: run.get("repeat", 0))
    failed = [run for run in runs if run.get("status") != "ok"]
    if failed and record["status"] == "ok":
        reason = f"repeat {failed[0]['repeat'] + 1}: {failed[0].get('reason')}"
        record = {**record, "status": "failed", "reason": reason, "result": None}
        record["telemetry"] = None
    elif failed and len(runs) > 1:
        record = {**record, "reason": f"repeat {repeat + 1}: {record.get('reason')}"}
    place = document["configurations"].index(earlier) if earlier is not None else None
    store_record(document, {**record, "repeats": runs})
    if place is not None:  # the configuration keeps its place (the table's row order)
        records = document["configurations"]
        records.insert(place, records.pop())
    return record


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


def record_status(record: Mapping[str, Any]) -> str:
    """A record's status as the run table shows it: ``ok`` (naming a collapsed loss scale with
    its skipped steps), or ``failed: why``."""
    if record.get("status") != "ok":
        return f"failed: {record.get('reason')}"
    return "ok" + collapse_note((record.get("result") or {}).get("loss_scaling"))


def collapse_notes(document: dict[str, Any]) -> list[str]:
    """One footnote per configuration whose loss scale collapsed, naming the rule it broke."""
    notes = []
    for record in document.get("configurations", []):
        scaling = (record.get("result") or {}).get("loss_scaling") or {}
        if record.get("status") == "ok" and scaling.get("collapsed"):
            notes.append(
                f"loss scale collapsed in {record.get('name')}: {scaling.get('collapse_rule')}, "
                f"{scaling.get('skipped_total', 0)} steps skipped (non-finite gradients, no "
                "update): its numbers are not a fair comparison; run mpbench check MODEL --steps N"
            )
    return notes
