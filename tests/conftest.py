"""Fixtures shared by the tests of mpcore and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from mpcore.face.cli import main

#: The models and data factories the tests name as ``module:factory`` specs (``check_models``,
#: ...) live in this folder, which is not a package: under ``--import-mode=importlib`` (tox) it is
#: not on ``sys.path`` by itself, so it is put there once, here.
TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

#: Variables of the test session's environment a child ``mpbench`` must not inherit: a cluster
#: spec or a planted fault would change what the child does.
SCRUBBED_ENV = ("TF_CONFIG", "MPBENCH_FAULT", "MPBENCH_WORKER_FAULT")


@pytest.fixture
def invoke(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str]], tuple[int, str, str]]:
    """Run ``mpbench ARGV`` in-process and return (exit code, stdout, stderr); argparse errors
    arrive as ``SystemExit`` and count as their exit code."""

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as stop:
            code = stop.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def cli_env() -> Callable[..., dict[str, str]]:
    """``cli_env(cache, **extra)``: the environment of a child ``mpbench`` with its data cache
    in ``cache``, the scrubbed variables removed and ``extra`` added."""

    def make(cache: Path, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in SCRUBBED_ENV}
        return {**env, "MPBENCH_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}

    return make


@pytest.fixture(scope="session")
def mpbench_process(cli_env) -> Callable[..., subprocess.CompletedProcess]:
    """``mpbench_process(*args, cwd=..., cache=None, **extra_env)``: run ``mpbench ARGS`` in a
    child process (a real TensorFlow start-up, signals and exit codes) and return its result."""

    def run(
        *args: str, cwd: Path, cache: Path | None = None, timeout: float = 300, **extra: str
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mpcore", *args],
            env=cli_env(cache or cwd, **extra),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
