"""One batch-size trial in a fresh process: ``python -m mpcore.bench.batchtrial SPEC_JSON``.

A trial builds the model under one precision x XLA configuration, puts one batch of ``batch``
samples on the device and runs the training step :mod:`mpcore.bench.stepbench` times (Keras's
compiled train function, what ``model.fit`` runs): the first step (tracing, compilation) and
``steps`` more. It prints one line, ``MPBENCH_TRIAL {json}``, a
:class:`mpcore.train.maxbatch.Trial`, and exits 0, whether the batch fitted or not.

Why a fresh process per trial: on a GPU, TensorFlow's BFC allocator keeps the memory it has
taken and a failed step can leave the device fragmented, so the next trial in the same process
would not start from an empty device; the process's exit is the one sure release. On a CPU the
peak resident set size (``ru_maxrss``) only grows within a process, so a peak per batch needs a
process per batch.

What counts as not fitting:

- on a GPU, the device's own out-of-memory: TensorFlow raises
  ``tf.errors.ResourceExhaustedError`` (status ``RESOURCE_EXHAUSTED``, "OOM when allocating
  tensor" from the BFC allocator, "Out of memory while trying to allocate" from XLA); an XLA
  kernel that fails with ``CUDA_ERROR_OUT_OF_MEMORY`` surfaces as another ``OpError``
  (``InternalError``) whose message says so, which counts too; a process killed by the driver
  or the kernel's OOM killer counts as ``crashed``. The peak is
  ``tf.config.experimental.get_memory_info('GPU:0')['peak']`` (the allocator's own counter);
- with a memory budget (``limit_bytes``; required on a CPU, which has no device limit), a peak
  over it: the process's peak RSS on a CPU, TensorFlow's peak on a GPU. On a CPU a watchdog
  thread reads the RSS every few milliseconds and ends the trial as ``over_limit`` as soon as
  it passes the budget, so a trial far too large never takes the machine's memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from mpcore.train.maxbatch import Trial

MARKER = "MPBENCH_TRIAL "
#: Seconds one trial may take before it is stopped and counted as crashed.
TRIAL_TIMEOUT_SECONDS = 900.0
_OOM_WORDS = ("out of memory", "oom when allocating", "resource_exhausted", "resource exhausted")


def looks_like_oom(message: str) -> bool:
    """Whether an error message from TensorFlow or XLA reports an allocation that failed."""
    text = message.lower()
    return any(word in text for word in _OOM_WORDS)


def current_rss_bytes() -> int:
    """This process's resident set size now (``/proc/self/statm``; 0 where it is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _emit(trial: Trial) -> None:
    sys.stdout.write(MARKER + json.dumps(trial.to_dict()) + "\n")
    sys.stdout.flush()


def _watch_rss(batch: int, limit: int, started: float, interval: float = 0.005) -> None:
    """End the process as ``over_limit`` once its RSS passes ``limit`` (a daemon thread)."""

    def watch() -> None:
        while True:
            rss = current_rss_bytes()
            if rss > limit:
                _emit(
                    Trial(
                        batch,
                        False,
                        rss,
                        "over_limit",
                        "stopped as its resident memory passed the budget",
                        time.perf_counter() - started,
                    )
                )
                os._exit(0)
            time.sleep(interval)

    threading.Thread(target=watch, name="mpbench-rss-watch", daemon=True).start()


def run_trial(spec: dict[str, Any]) -> Trial:
    """Run the trial ``spec`` describes in this process (see :func:`trial_spec`)."""
    from mpcore.bench.stepbench import MemoryProbe, prepared_step
    from mpcore.precision.modes import RunConfig
    from mpcore.probe.backend import tf
    from mpcore.probe.capability import capability
    from mpcore.train.settings import TrainSettings

    started = time.perf_counter()
    batch, limit = spec["batch"], spec.get("limit_bytes")
    # The memory is where the arithmetic runs: a GPU MPBENCH_FAKE_GPU simulates does not count.
    on_gpu = bool(capability().real_gpus)
    if limit and not on_gpu:
        _watch_rss(batch, limit, started)
    settings = TrainSettings(
        model=spec["model"], image_size=spec.get("image_size"), batch_size=batch, seed=0
    )
    config = RunConfig(spec["precision"], spec["xla"])
    probe = MemoryProbe(on_gpu)
    try:
        with (
            probe,
            prepared_step(
                config,
                settings,
                spec.get("steps", 2),
                device="/GPU:0" if on_gpu else "/CPU:0",
                kind=spec.get("kind", "fit"),
            ) as prepared,
        ):
            prepared.run_round()
    except tf.errors.ResourceExhaustedError as error:
        return Trial(
            batch, False, None, "out_of_memory", _first_line(error.message), _since(started)
        )
    except tf.errors.OpError as error:
        if not looks_like_oom(error.message):
            raise
        return Trial(
            batch, False, None, "out_of_memory", _first_line(error.message), _since(started)
        )
    peak = probe.fields.get("peak_memory_bytes")
    if limit and peak is not None and peak > limit:
        return Trial(batch, False, peak, "over_limit", "peak over the budget", _since(started))
    return Trial(
        batch, True, peak, None, probe.fields.get("peak_memory_source", ""), _since(started)
    )


def _since(started: float) -> float:
    return time.perf_counter() - started


def _first_line(message: str) -> str:
    return (message.strip().splitlines() or [""])[0][:300]


def trial_spec(
    model: str,
    image_size: int | None,
    precision: str,
    xla: str,
    batch: int,
    steps: int,
    limit_bytes: int | None,
    kind: str = "fit",
) -> dict[str, Any]:
    """What :func:`run_trial` needs, JSON-ready; ``kind`` is the step (``fit`` or ``custom``)."""
    return {
        "model": model,
        "image_size": image_size,
        "precision": precision,
        "xla": xla,
        "batch": batch,
        "steps": steps,
        "limit_bytes": limit_bytes,
        "kind": kind,
    }


def fresh_memory_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """A benchmark row's memory measured on its own: the trial ``spec`` (no limit) run in a fresh
    process, its peak RSS as ``peak_memory_bytes`` (``peak_memory_source``
    ``fresh_process_rss``, comparable between rows); a failed trial gives None and its reason."""
    trial = launch_trial({**spec, "limit_bytes": None})
    return {
        "peak_memory_bytes": trial.peak_bytes if trial.fits else None,
        "peak_memory_source": "fresh_process_rss",
        "peak_memory_comparable": trial.fits and trial.peak_bytes is not None,
        **({} if trial.fits else {"fresh_memory_error": f"{trial.reason}: {trial.detail}"}),
    }


def launch_trial(spec: dict[str, Any], timeout: float = TRIAL_TIMEOUT_SECONDS) -> Trial:
    """Run :func:`run_trial` in a fresh Python process and read its one line back; a process
    that dies or prints no result is a trial that did not fit (``crashed``), with its exit
    status and the last line of its stderr."""
    environment = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mpcore.bench.batchtrial", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Trial(spec["batch"], False, None, "crashed", f"no result in {timeout:.0f} s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            return Trial.from_dict(json.loads(line[len(MARKER) :]))
    tail = [line for line in done.stderr.splitlines() if line.strip()]
    status = (
        f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
    )
    return Trial(
        spec["batch"],
        False,
        None,
        "crashed",
        f"{status}: {tail[-1][:300] if tail else 'no output'}",
        time.perf_counter() - started,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    from mpcore.probe.backend import tf

    tf.get_logger().setLevel("ERROR")
    _emit(run_trial(spec))
    # Skip interpreter teardown: TensorFlow's can take seconds and print nothing useful.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
