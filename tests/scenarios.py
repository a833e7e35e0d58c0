"""The suite's expensive scenarios, each run once per session (tests/conftest.py) and read by many
tests: a real ``mpbench run`` costs a TensorFlow start-up and training in every worker process,
so tests that only read what a run wrote share one.

Each scenario runs ``mpbench run`` in-process (``main()``), with the process's file descriptors 1
and 2 sent to files, so that what the parent prints and what its workers (which inherit them)
print are kept together, in order, as a subprocess's output would be.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mpcore.face.cli import main
from mpcore.run.process import FAULT_ENV

#: Variables of the test session's environment a run must not see: a cluster spec or a planted
#: fault would change what it does.
SCRUBBED_ENV = ("TF_CONFIG", FAULT_ENV, "MPBENCH_WORKER_FAULT")
#: What pytest-xdist tells its workers through the environment. A test that starts a pytest
#: session of its own (pytester, a child ``pytest benchmarks/``) must not pass it on:
#: pytest-benchmark reads it as "this session is an xdist worker" and disables every benchmark.
XDIST_ENV = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


@dataclass(frozen=True)
class Run:
    """A finished ``mpbench run``: its exit code, output, folder and results.json."""

    code: int
    stdout: str
    stderr: str
    out: Path

    @property
    def document(self) -> dict[str, Any]:
        """A fresh copy of results.json each time (tests may change what they read)."""
        return json.loads((self.out / "results.json").read_text())

    def records(self) -> dict[str, dict[str, Any]]:
        return {record["name"]: record for record in self.document["configurations"]}


@contextlib.contextmanager
def output_to(folder: Path) -> Iterator[tuple[Path, Path]]:
    """Send file descriptors 1 and 2 (and ``sys.stdout``/``sys.stderr`` with them) to
    ``folder/stdout.txt`` and ``folder/stderr.txt`` while the block runs."""
    paths = folder / "stdout.txt", folder / "stderr.txt"
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    saved_streams = sys.stdout, sys.stderr
    files = [open(path, "wb") for path in paths]  # noqa: SIM115 - closed below
    try:
        for fd, handle in zip((1, 2), files, strict=True):
            os.dup2(handle.fileno(), fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        yield paths
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        for handle in files:
            handle.close()


def run_in_process(
    argv: Sequence[str], folder: Path, cache: Path, cpu_only: bool = False, **env: str
) -> Run:
    """``mpbench run ARGV --out folder/run`` in this process, with the data cache in ``cache``,
    ``env`` added to the environment and the scrubbed variables removed. ``cpu_only``: every
    decision made for no GPU and the workers shown none (as the ``cpu`` marker does)."""
    out = folder / "run"
    with pytest.MonkeyPatch.context() as patch:
        for name in SCRUBBED_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("MPBENCH_CACHE", str(cache))
        for name, value in env.items():
            patch.setenv(name, value)
        if cpu_only:
            from mpcore.probe.machine import visible_gpus

            patch.setenv("MPBENCH_FAKE_GPU", "none")
            patch.setenv("CUDA_VISIBLE_DEVICES", "")
            for module in [m for name, m in sys.modules.items() if name.startswith("mpcore")]:
                if getattr(module, "visible_gpus", None) is visible_gpus:
                    patch.setattr(module, "visible_gpus", lambda: ())
        code, stdout, stderr = run_main([*argv, "--out", str(out)], folder)
    return Run(code, stdout, stderr, out)


def run_main(argv: Sequence[str], folder: Path) -> tuple[int, str, str]:
    """``mpbench ARGV`` in this process, with file descriptors 1 and 2 (the workers' output too)
    kept in ``folder``: (exit code, stdout, stderr), as a child process would give them."""
    folder.mkdir(parents=True, exist_ok=True)
    with output_to(folder) as (stdout, stderr):
        try:
            code = main(list(argv))
        except SystemExit as stop:  # argparse's errors
            code = stop.code
    return code, stdout.read_text(), stderr.read_text()


# --------------------------------------------------------------------------------------------
# The scenarios

#: The quick run: four configurations on 40 generated images (30 training, 10 validation, 4
#: steps of 8), two epochs; mixed_bfloat16 fails (a planted out-of-memory error) and
#: amp_rewrite's worker SIGKILLs itself, as the kernel's OOM killer would.
QUICK_SETTINGS = ("--profile", "quick", "--repeats", "1", "--image-size", "32")
QUICK_SETTINGS += ("--batch-size", "8", "--epochs", "2")
QUICK_PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "amp_rewrite")
QUICK_FAILING = "mixed_bfloat16+xla_off"
QUICK_CRASHING = "amp_rewrite+xla_off"
QUICK_OK = ("float32+xla_off", "mixed_float16+xla_off")


def quick_run(ships: Path, folder: Path, cache: Path) -> Run:
    """The quick run on a private copy of ``ships`` in ``folder/data`` (tests that resume it
    change that copy's copies)."""
    data = Path(shutil.copytree(ships, folder / "data"))
    argv = ["run", "--data", str(data), *QUICK_SETTINGS, "--precision", *QUICK_PRECISIONS]
    return run_in_process(
        argv, folder, cache, **{FAULT_ENV: f"{QUICK_FAILING}=oom,{QUICK_CRASHING}=crash"}
    )


#: The mirrored run: float32 over two logical CPUs with oneDNN on (TensorFlow's CPU default,
#: which the test session turns off), its one-replica baseline, four repeats after a warm-up
#: (the fewest that can decide the one comparison, which writes keys of its own: ``mpbench run``
#: refuses 2 or 3, ``stats.minimum_repeats(1)``; 1 writes no comparison and no warm-up), and one
#: undecodable image left out with --skip-bad-images: nearly every key results.json can hold on
#: a CPU. Under the strategy both splits end in a batch of 1 image, which must be dropped.
MIRRORED_PRECISION = "float32"


def mirrored_run(folder: Path, cache: Path) -> Run:
    from mpcore.data.ships import images_dir
    from mpcore.data.synthetic import write_synthetic_ships

    # 3 per class less one bad image: 9 training and 5 validation images (the fewest with a
    # validation split as large as the global batch). In global batches of 4 (2 per replica)
    # each split's last batch holds 1 image, which would leave replica 1 an empty shard, on
    # which oneDNN's BatchNormalization fails: the mirrored configuration drops those batches
    # (2 steps, 8 images trained, 4 validated); the baseline, in batches of 2 on one device,
    # keeps them. The fewest images: a worker's time goes to its start and its tracing (a step
    # takes about 10 ms), so 7 per class (7 and 15 steps) cost little more, but nothing needs them.
    root = write_synthetic_ships(folder / "ships", per_class=3, image_size=32)
    (images_dir(root) / "000001.jpg").write_bytes(b"not an image")
    argv = ["run", "--profile", "quick", "--data", str(root), "--skip-bad-images"]
    argv += ["--precision", MIRRORED_PRECISION, "--epochs", "1", "--image-size", "32"]
    argv += ["--batch-size", "2", "--strategy", "mirrored", "--cpu-replicas", "2"]
    argv += ["--repeats", "4"]  # the repeats and the warm-up write keys of their own
    # oneDNN reaches the workers through the environment (read when TensorFlow is imported), so
    # this run's fork server, the only one with oneDNN on, can serve no later run: a pool of its
    # own closes it at the end, where the session's pool (kept_fork_servers, at most two) would
    # keep it in place of one that later in-process runs can fork from.
    from mpcore.run.launcher import fork_server_pool

    with fork_server_pool():
        return run_in_process(argv, folder, cache, cpu_only=True, TF_ENABLE_ONEDNN_OPTS="1")


#: The two-worker run: mixed_float16 on two local worker processes (a TF_CONFIG cluster), after
#: its one-replica baseline; 30 generated images (25 training), batch 2 per worker, two epochs
#: (the short last batch of 25 images, 4 a step, broke epoch 2 once: a NaN loss).
WORKERS_PRECISION = "mixed_float16"


def workers_run(folder: Path, cache: Path) -> Run:
    argv = ["run", "--profile", "quick", "--data", "synthetic", "--synthetic-per-class", "6"]
    argv += ["--image-size", "32", "--batch-size", "2", "--epochs", "2", "--repeats", "1"]
    argv += ["--precision", WORKERS_PRECISION, "--workers", "2"]
    return run_in_process(argv, folder, cache)
