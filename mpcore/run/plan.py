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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpcore.names import VALIDATION_FRACTION, name_of
from mpcore.run import launcher
from mpcore.run.files import save_results, write_results
from mpcore.run.process import EXIT_INTERRUPTED, signal_name
from mpcore.run.schema import RESULTS_FILE, strategy_of
from mpcore.run.spec import WorkerSpec
from mpcore.run.store import (
    failed_record,
    finished_repeats,
    new_document,
    now_iso,
    resumable_document,
    store_repeat,
    warmup_entry,
)


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

    @property
    def names(self) -> list[str]:
        return [name_of(config) for config in self.configs]

    @property
    def results_path(self) -> Path:
        return self.out / RESULTS_FILE

    def resumed_document(self) -> dict[str, Any]:
        """The saved run in ``out`` with what this plan may keep (see
        :func:`mpcore.run.store.resumable_document`)."""
        return resumable_document(
            self.results_path, self.settings, self.data_root, self.skipped_images, self.names
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
            tensorboard_dir=str(self.out / "tensorboard" / name_of(config)),
            verbose=self.verbose,
            parent_pid=os.getpid(),
            cpu_replicas=self.cpu_replicas if strategy_of(config) == "mirrored" else 0,
        )


def planned_configs(modes: list[dict[str, str]], strategy: str) -> list[dict[str, str]]:
    """Each mode as planned: under a strategy, first without one (the one-replica baseline its
    scaling efficiency is measured against), then under the strategy."""
    planned: list[dict[str, str]] = []
    for mode in modes:
        planned.append(dict(mode))
        if strategy != "none":
            planned.append({**mode, "strategy": strategy})
    return planned


def interleaved_schedule(names: list[str], repeats: int) -> list[tuple[str, int]]:
    """``(name, repeat)`` in run order: round ``r`` runs every configuration once, the planned
    order rotated by ``r`` (A B C, B C A, C A B, ...), so each configuration runs in every
    position of a round equally often and a steady drift of the machine lands on all of them.
    A rotation that would run a configuration twice in a row (always, with two of them) keeps
    the previous round's order instead (A B A B): the load of a shared machine comes in bursts
    longer than one run, and two runs in a row of one configuration could both fall in one."""
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    schedule: list[tuple[str, int]] = []
    order = list(names)
    for start in range(repeats):
        rotated = names[start % len(names) :] + names[: start % len(names)]
        if not schedule or rotated[0] != schedule[-1][0]:
            order = rotated
        schedule += [(name, start) for name in order]
    return schedule


def pending_runs(plan: RunPlan, document: dict[str, Any]) -> list[tuple[dict[str, str], int]]:
    """The ``(config, repeat)`` runs of the schedule still to do: a configuration whose record
    holds ``k`` finished repeats runs repeats ``k..N-1`` (``--resume``)."""
    done = finished_repeats(document)
    configs = {name_of(config): config for config in plan.configs}
    return [
        (configs[name], repeat)
        for name, repeat in interleaved_schedule(plan.names, plan.repeats)
        if repeat >= done.get(name, 0)
    ]


def run_warmup(plan: RunPlan, document: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """One untimed epoch of the first configuration before the timed runs, in ``OUT/warmup``:
    the first worker of a run pays for cold files (TensorFlow's libraries, the images) that the
    others find in the page cache. Recorded as ``warmup``, never in the table."""
    warm = dataclasses.replace(
        plan, out=plan.out / "warmup", settings={**plan.settings, "epochs": 1}
    )
    record = run_configuration(warm, plan.configs[0], workdir)
    shutil.rmtree(warm.out / "tensorboard", ignore_errors=True)
    document["warmup"] = warmup_entry(record, plan.out)
    return record


def run_configuration(plan: RunPlan, config: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Train ``config`` in a worker subprocess (or a local cluster of them) and return its
    record (``ok`` or ``failed``) with ``wall_seconds``, ``log`` and ``exit_code``.

    Raises ``KeyboardInterrupt`` (after stopping the workers) when the run is interrupted.
    """
    name = name_of(config)
    spec = plan.worker_spec(config, workdir / f"{name}.result.json")
    # A rerun (--resume after a failure) must not add a second set of events to TensorBoard.
    shutil.rmtree(spec.tensorboard_dir, ignore_errors=True)
    started = time.perf_counter()
    if strategy_of(config) == "multiworker" and plan.workers:
        cluster_dir = plan.out / "logs" / name  # worker-N.log and worker-N.json of each worker
        log_name = str((cluster_dir / "worker-0.log").relative_to(plan.out))
        try:
            outcome = launcher.run_local_multiworker(
                spec, plan.workers, plan.worker_timeout, cluster_dir, echo_chief=True
            )
            record, code = {**outcome.result, "name": name, "config": config}, 0
        except launcher.WorkerLaunchError as error:
            record, code = failed_record(name, config, str(error)), 1
    else:
        log_path = plan.out / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_name = str(log_path.relative_to(plan.out))
        code = launcher.run_worker(spec, workdir / f"{name}.spec.json", log_path)
        if Path(spec.result_path).is_file():
            record = json.loads(Path(spec.result_path).read_text())
        elif code == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        elif code < 0:
            reason = f"worker killed by {signal_name(code)} (see {log_name})"
            record = failed_record(name, config, reason)
        else:
            reason = f"worker exited with status {code} (see {log_name})"
            record = failed_record(name, config, reason)
    record.update(wall_seconds=time.perf_counter() - started, log=log_name, exit_code=code)
    return record


def run_all(
    plan: RunPlan,
    document: dict[str, Any],
    announce: Callable[[str], None] = print,
) -> bool:
    """Run every planned repeat not already ``ok`` in ``document`` in the interleaved order
    (after a warm-up when repeats > 1), saving ``results.json`` after each. A configuration
    that fails is not repeated. Returns False if the run was interrupted (Ctrl-C)."""
    results_path = plan.results_path
    pending = pending_runs(plan, document)
    counts = finished_repeats(document)
    done = [name for name in plan.names if counts.get(name, 0) >= plan.repeats]
    if done:
        announce(f"resuming: {len(done)} configuration(s) already finished: {', '.join(done)}")
    write_results(results_path, document)
    total = len(plan.configs) * plan.repeats
    running = ""  # the configuration an interrupt would cut short
    failed: set[str] = set()  # a configuration that failed is not repeated
    try:
        with tempfile.TemporaryDirectory(prefix="mpbench-") as workdir:
            if pending and plan.repeats > 1:
                running = f"the warm-up ({name_of(plan.configs[0])})"
                announce(f"warm-up: {name_of(plan.configs[0])}, 1 epoch, untimed")
                warmup = run_warmup(plan, document, Path(workdir))
                announce(
                    f"warm-up: done in {warmup['wall_seconds']:.1f} s"
                    if warmup["status"] == "ok"
                    else f"warm-up: {_outcome(warmup)}"
                )
            for position, (config, repeat) in enumerate(pending):
                name = running = name_of(config)
                if name in failed:
                    continue
                number = total - len(pending) + position + 1
                label = f"{name} (repeat {repeat + 1}/{plan.repeats})" if plan.repeats > 1 else name
                announce(f"[{number}/{total}] {label}: training")
                record = run_configuration(plan, config, Path(workdir))
                record = store_repeat(document, record, repeat, number - 1)
                if record["status"] != "ok":
                    failed.add(name)
                running = ""
                save_results(results_path, document, announce)
                following = next(
                    (name_of(c) for c, _ in pending[position + 1 :] if name_of(c) not in failed),
                    None,
                )
                announce(
                    f"[{number}/{total}] {label}: {_outcome(record)}; "
                    + (f"next: {following}" if following else "all done")
                )
    except KeyboardInterrupt:
        # Whatever the interrupt cut short, every finished configuration is in ``document``.
        document.update(status="interrupted", updated=now_iso())
        save_results(results_path, document, announce)
        announce(
            f"interrupted during {running}: it is not recorded"
            if running
            else "interrupted between configurations"
        )
        return False
    document.update(status="complete", updated=now_iso())
    save_results(results_path, document, announce)
    return True


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
