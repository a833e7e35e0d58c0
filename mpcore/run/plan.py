"""The run plan and its execution: every configuration in turn, ``results.json`` after each.

Mixed precision, XLA and GPU memory are process-global in TensorFlow, so every configuration
trains in a fresh worker process (:mod:`mpcore.run.worker`): nothing leaks from one
configuration into the next, and a worker that runs out of memory, meets a NaN loss or crashes
outright is recorded as failed with its reason while the others go on. The parent writes
``results.json`` atomically after every configuration, so an interrupted or killed run always
leaves the last complete state on disk. No TensorFlow is imported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mpcore.names import (
    BASELINE,
    BASELINE_PRECISION,
    BASELINE_XLA,
    VALIDATION_FRACTION,
    name_of,
)
from mpcore.run import launcher, verdicts
from mpcore.run.files import save_results, write_results
from mpcore.run.process import EXIT_INTERRUPTED, signal_name
from mpcore.run.schedule import count, duration, interleaved_rounds, round_order
from mpcore.run.schedule import interleaved_schedule as interleaved_schedule  # re-exported
from mpcore.run.schedule import iter_schedule as iter_schedule  # re-exported
from mpcore.run.schema import RESULTS_FILE, strategy_of
from mpcore.run.spec import WorkerSpec
from mpcore.run.stats import BAND
from mpcore.run.store import (
    failed_record,
    finished_repeat_sets,
    finished_repeats,
    new_document,
    now_iso,
    resumable_document,
    store_repeat,
    warmup_entry,
)

#: More repeats than this is a typo, not a plan: a thousand rounds of the quick profile take
#: about a day on a 2-core CPU.
MAX_REPEATS = 1000


@dataclasses.dataclass
class RunPlan:
    """What ``mpbench run`` will do: where, on which data, settings and configurations."""

    out: Path
    data_root: Path
    settings: dict[str, Any]  # mpcore.train.settings.TrainSettings.to_dict()
    #: ``RunConfig.to_dict()`` of each configuration, in run order, plus ``strategy`` when not
    #: ``none`` (see :func:`planned_configs`).
    configs: list[dict[str, str]]
    validation_fraction: float = VALIDATION_FRACTION
    verbose: int = 2
    #: Undecodable images left out (``--skip-bad-images``): every worker drops them too.
    skipped_images: list[str] = dataclasses.field(default_factory=list)
    #: Logical CPU devices a ``mirrored`` worker splits the CPU into (0: leave it whole).
    cpu_replicas: int = 0
    #: Local worker processes a ``multiworker`` configuration runs on (0: one per host,
    #: clustered by the TF_CONFIG of each host).
    workers: int = 0
    #: Seconds a local multi-worker configuration may take before every worker is stopped.
    worker_timeout: float = 6 * 3600.0
    #: Times each configuration trains, interleaved (:func:`interleaved_schedule`); above one,
    #: an untimed warm-up run comes first (:func:`run_warmup`).
    repeats: int = 1
    #: ``--repeats auto``: after the ``repeats`` rounds, more interleaved rounds until every
    #: comparison with the baseline is decided or this many seconds (from the start) are spent.
    budget_seconds: float | None = None
    #: The practical-equivalence band the run's verdicts use (``--band``, a fraction).
    band: float = BAND

    @property
    def names(self) -> list[str]:
        return [name_of(config) for config in self.configs]

    @property
    def results_path(self) -> Path:
        return self.out / RESULTS_FILE

    def resumed_document(self, distribution: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The saved run in ``out`` with what this plan may keep (see
        :func:`mpcore.run.store.resumable_document`); ``distribution``: this run's
        ``--strategy``, ``--workers`` and ``--cpu-replicas``, which the saved run must share."""
        return resumable_document(
            self.results_path,
            self.settings,
            self.data_root,
            self.skipped_images,
            self.names,
            distribution,
        )

    def new_document(self, **fields: Any) -> dict[str, Any]:
        """A fresh ``results.json`` document for this plan (``fields``: profile, profile_reason,
        data, machine, command)."""
        return new_document(
            settings=self.settings,
            planned=self.names,
            validation_fraction=self.validation_fraction,
            **fields,
        )

    def worker_spec(self, config: dict[str, str], result_path: Path) -> WorkerSpec:
        """The spec a worker trains ``config`` from (each worker of a cluster gets it too)."""
        return WorkerSpec(
            config=config,
            settings=self.settings,
            data_root=str(self.data_root),
            result_path=str(result_path),
            validation_fraction=self.validation_fraction,
            skipped_images=tuple(self.skipped_images),
            tensorboard_dir=str(self.out / "tensorboard" / file_stem(name_of(config))),
            verbose=self.verbose,
            parent_pid=os.getpid(),
            cpu_replicas=self.cpu_replicas if strategy_of(config) == "mirrored" else 0,
        )


def planned_configs(
    modes: list[dict[str, str]], strategy: str, control: bool = False
) -> list[dict[str, str]]:
    """Each mode as planned: under a strategy, first without one (the one-replica baseline its
    scaling efficiency is measured against), then under the strategy. With ``control``, the
    baseline (when planned) once more at the end, as the A/A control."""
    planned: list[dict[str, str]] = []
    for mode in modes:
        planned.append(dict(mode))
        if strategy != "none":
            planned.append({**mode, "strategy": strategy})
    if control and any(name_of(config) == BASELINE for config in planned):
        planned.append({"precision": BASELINE_PRECISION, "xla": BASELINE_XLA, "control": "A/A"})
    return planned


def pending_runs(plan: RunPlan, document: dict[str, Any]) -> list[tuple[dict[str, str], int]]:
    """The ``(config, repeat)`` runs still to do: every repeat index of ``0..N-1`` not finished
    ``ok`` in ``document`` (``--resume`` reruns exactly the failed or missing ones), in an
    interleaved order of their own (:func:`interleaved_rounds`), so a resumed configuration
    alternates with the others that miss repeats instead of running back to back."""
    done = finished_repeat_sets(document)
    configs = {name_of(config): config for config in plan.configs}
    wanted: dict[str, Sequence[int]] = {}
    for name in plan.names:
        finished = done.get(name, set())
        missing = (
            range(plan.repeats)
            if not finished
            else [r for r in range(plan.repeats) if r not in finished]
        )
        if count(missing):
            wanted[name] = missing
    return [(configs[name], repeat) for name, repeat in interleaved_rounds(wanted)]


def recorded_rounds(document: Mapping[str, Any], names: Sequence[str]) -> int:
    """The rounds ``document`` holds of the configurations ``names``: one more than the highest
    repeat index recorded (0 for none)."""
    return max(
        (
            run.get("repeat", 0) + 1
            for record in document.get("configurations", [])
            if record.get("name") in names
            for run in record.get("repeats") or []
            if isinstance(run.get("repeat"), int)
        ),
        default=0,
    )


def run_warmup(plan: RunPlan, document: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """One untimed epoch of the first configuration before the timed runs, in ``OUT/warmup``:
    the first worker of a run pays for cold files (TensorFlow's libraries, the images) that the
    others find in the page cache. Recorded as ``warmup``, never in the table."""
    warm = dataclasses.replace(
        plan, out=plan.out / "warmup", settings={**plan.settings, "epochs": 1}
    )
    record = run_configuration(warm, plan.configs[0], workdir, None)
    shutil.rmtree(warm.out / "tensorboard", ignore_errors=True)
    document["warmup"] = warmup_entry(record, plan.out)
    return record


def file_stem(name: str) -> str:
    """A configuration's name as a file or folder name: the A/A control's ``(A/A)`` holds a
    slash, which would make a folder of ``(A``."""
    return name.replace("/", "-")


def fresh_result_file(workdir: Path, name: str, repeat: int | None) -> Path:
    """Where the worker of repeat ``repeat`` of ``name`` (None: the warm-up) writes its record:
    a file of its own, removed now, before the worker starts, so a worker that dies before
    writing leaves no file, never an earlier repeat's."""
    tag = "warmup" if repeat is None else f"r{repeat}"
    path = workdir / f"{file_stem(name)}.{tag}.result.json"
    path.unlink(missing_ok=True)
    return path


def run_configuration(
    plan: RunPlan, config: dict[str, str], workdir: Path, repeat: int | None = None
) -> dict[str, Any]:
    """Train ``config`` in a worker subprocess (or a local cluster of them) and return its
    record (``ok`` or ``failed``) with ``wall_seconds``, ``log`` and ``exit_code``; ``repeat``
    is the repeat's index (None: the warm-up).

    Raises ``KeyboardInterrupt`` (after stopping the workers) when the run is interrupted.
    """
    name = name_of(config)
    result_path = fresh_result_file(workdir, name, repeat)
    spec = dataclasses.replace(plan.worker_spec(config, result_path), repeat=repeat)
    if plan.settings.get("target") and repeat:
        # Convergence varies with the seed: each repeat initialises and shuffles with its own
        # (recorded in its result), on the run's one data split.
        spec = dataclasses.replace(
            spec, settings={**spec.settings, "init_seed": plan.settings["seed"] + repeat}
        )
    # A rerun (--resume after a failure) must not add a second set of events to TensorBoard.
    shutil.rmtree(spec.tensorboard_dir, ignore_errors=True)
    started = time.perf_counter()
    if strategy_of(config) == "multiworker" and plan.workers:
        cluster_dir = plan.out / "logs" / file_stem(name)  # worker-N.log, worker-N.json
        log_name = str((cluster_dir / "worker-0.log").relative_to(plan.out))
        try:
            outcome = launcher.run_local_multiworker(
                spec, plan.workers, plan.worker_timeout, cluster_dir, echo_chief=True
            )
            record, code = {**outcome.result, "name": name, "config": config}, 0
        except launcher.WorkerLaunchError as error:
            record, code = failed_record(name, config, str(error)), 1
    else:
        log_path = plan.out / "logs" / f"{file_stem(name)}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_name = str(log_path.relative_to(plan.out))
        code = launcher.run_worker(spec, workdir / f"{file_stem(name)}.spec.json", log_path)
        record = _worker_record(result_path, code, name, config, log_name)
    record.update(wall_seconds=time.perf_counter() - started, log=log_name, exit_code=code)
    return record


def _worker_record(
    result_path: Path, code: int, name: str, config: dict[str, str], log_name: str
) -> dict[str, Any]:
    """The record a lone worker left in its own ``result_path``, or a failed one saying why
    there is none (the signal that killed it, its exit status, an unreadable file)."""
    if code == EXIT_INTERRUPTED and not result_path.is_file():
        raise KeyboardInterrupt
    try:
        record = json.loads(result_path.read_text())
    except FileNotFoundError:
        how = (
            f"worker killed by {signal_name(code)}"
            if code < 0
            else f"worker exited with status {code} without writing its result"
        )
        return failed_record(name, config, f"{how} (see {log_name})")
    except (OSError, ValueError) as error:
        reason = f"worker's result {result_path.name} unreadable ({type(error).__name__})"
        return failed_record(name, config, f"{reason} (see {log_name})")
    if not isinstance(record, dict) or record.get("name") != name:
        return failed_record(name, config, f"worker's result {result_path.name} is not its record")
    return record


#: The clock a run's budget is kept by (``--repeats auto``).
CLOCK = time.monotonic


class Progress:
    """Numbers the runs and estimates the time left from the mean time of the runs so far."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.number = total, done
        self.seconds: list[float] = []
        self.started = CLOCK()

    def spent(self) -> float:
        return CLOCK() - self.started

    def left(self) -> str:
        """``; about 2 min left`` (nothing before the first run has finished)."""
        if not self.seconds:
            return ""
        remaining = (self.total - self.number) * sum(self.seconds) / len(self.seconds)
        return f"; about {duration(remaining)} left" if remaining > 0 else ""


def run_all(
    plan: RunPlan,
    document: dict[str, Any],
    announce: Callable[[str], None] = print,
) -> bool:
    """Run every planned repeat not already ``ok`` in ``document`` in the interleaved order
    (after a warm-up when repeats > 1), saving ``results.json`` after each; with a budget
    (``--repeats auto``), add rounds until every comparison is decided or the budget is spent.
    A configuration that fails is not repeated. Returns False if the run was interrupted."""
    if plan.budget_seconds:  # a resumed auto run goes on from the rounds it already ran
        plan.repeats = max(plan.repeats, recorded_rounds(document, plan.names))
    pending = pending_runs(plan, document)
    counts = finished_repeats(document)
    done = [name for name in plan.names if counts.get(name, 0) >= plan.repeats]
    if done:
        announce(f"resuming: {len(done)} configuration(s) already finished: {', '.join(done)}")
    write_results(plan.results_path, document)
    planned = len(plan.configs) * plan.repeats
    with tempfile.TemporaryDirectory(prefix="mpbench-") as workdir, launcher.fork_server():
        runner = _Runner(plan, document, Path(workdir), Progress(planned, planned - len(pending)))
        runner.announce = announce
        try:
            if pending and (plan.repeats > 1 or plan.budget_seconds):
                runner.running = f"the warm-up ({name_of(plan.configs[0])})"
                announce(f"warm-up: {name_of(plan.configs[0])}, 1 epoch, untimed")
                warmup = run_warmup(plan, document, Path(workdir))
                announce(
                    f"warm-up: done in {warmup['wall_seconds']:.1f} s"
                    if warmup["status"] == "ok"
                    else f"warm-up: {_outcome(warmup)}"
                )
                runner.running = ""
            runner.run_in_order(pending)
            if plan.budget_seconds:
                runner.more_rounds()
        except KeyboardInterrupt:
            # Whatever the interrupt cut short, every finished configuration is in ``document``.
            document.update(status="interrupted", updated=now_iso())
            save_results(plan.results_path, document, announce)
            announce(
                f"interrupted during {runner.running}: it is not recorded"
                if runner.running
                else "interrupted between configurations"
            )
            return False
    document.update(status="complete", updated=now_iso())
    save_results(plan.results_path, document, announce)
    return True


@dataclasses.dataclass
class _Runner:
    """Runs repeats one after another: each trained, stored and saved, with progress lines."""

    plan: RunPlan
    document: dict[str, Any]
    workdir: Path
    progress: Progress
    announce: Callable[[str], None] = print
    #: A configuration that failed is not repeated.
    failed: set[str] = dataclasses.field(default_factory=set)
    #: What an interrupt would cut short ("" between runs).
    running: str = ""
    #: The configuration that ran last.
    last: str | None = None

    def run_in_order(self, runs: Sequence[tuple[dict[str, str], int]]) -> None:
        for position, (config, repeat) in enumerate(runs):
            if name_of(config) in self.failed:
                self.progress.total -= 1
                continue
            self.run_one(config, repeat, [name_of(c) for c, _ in runs[position + 1 :]])

    def run_one(self, config: dict[str, str], repeat: int, after: Sequence[str]) -> None:
        """Train one repeat, store it and save ``results.json``, announcing before and after
        (``after``: the configurations still to run, in order)."""
        plan, progress = self.plan, self.progress
        name = self.running = name_of(config)
        progress.number += 1
        number = progress.number
        label = f"{name} (repeat {repeat + 1}/{plan.repeats})" if plan.repeats > 1 else name
        self.announce(f"[{number}/{progress.total}] {label}: training")
        record = run_configuration(plan, config, self.workdir, repeat)
        progress.seconds.append(record.get("wall_seconds", 0.0))
        record = store_repeat(self.document, record, repeat, number - 1)
        self.last = name
        if record["status"] != "ok":
            self.failed.add(name)
        self.running = ""
        save_results(plan.results_path, self.document, self.announce)
        following = next((n for n in after if n not in self.failed), None)
        self.announce(
            f"[{number}/{progress.total}] {label}: {_outcome(record)}{progress.left()}; "
            + (f"next: {following}" if following else "all done")
        )

    def more_rounds(self) -> None:
        """``--repeats auto``: one interleaved round more at a time while a comparison with
        the baseline is undecided and the next round fits in the budget (from the run's
        start, warm-up included); says which comparisons stayed undecided."""
        plan, progress = self.plan, self.progress
        budget = plan.budget_seconds or 0.0
        auto: dict[str, Any] = {"budget_seconds": budget, "rounds": plan.repeats}
        configs = {name_of(config): config for config in plan.configs}
        while True:
            names = [name for name in plan.names if name not in self.failed]
            undecided = verdicts.undecided(self.document, plan.band)
            open_calls = [name for name in undecided if name in names]
            self.document["auto_repeats"] = {**auto, "undecided": open_calls}
            if not open_calls:
                self.announce(
                    f"repeats auto: every comparison decided after {plan.repeats} round(s)"
                )
                return
            mean = sum(progress.seconds) / max(1, len(progress.seconds))
            if plan.repeats >= MAX_REPEATS or progress.spent() + mean * len(names) > budget:
                self.announce(
                    f"repeats auto: the budget of {duration(budget)} is spent after "
                    f"{plan.repeats} round(s); undecided: {', '.join(open_calls)}"
                )
                return
            repeat = plan.repeats
            plan.repeats += 1
            auto["rounds"] = plan.repeats
            order = round_order(names, repeat, self.last)
            progress.total += len(order)
            self.announce(
                f"repeats auto: round {repeat + 1} for {len(open_calls)} undecided comparison(s)"
            )
            self.run_in_order([(configs[name], repeat) for name in order])


def _outcome(record: dict[str, Any]) -> str:
    seconds = f"{record.get('wall_seconds', 0.0):.1f} s"
    if record["status"] != "ok":
        return f"FAILED after {seconds}: {record['reason']}"
    result = record["result"]
    # A user's model with a loss other than cross-entropy has no accuracy: the last loss instead.
    last = (
        f"val accuracy {result['val_accuracy'][-1]:.3f}"
        if result["val_accuracy"]
        else f"val loss {result['val_loss'][-1]:.4g}"
    )
    return f"finished in {seconds} ({result['ms_per_step']:.1f} ms/step, {last})"
