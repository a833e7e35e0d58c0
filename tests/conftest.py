"""Fixtures shared by the tests of mpcore and the CLI."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from mpcore.cli import main


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
