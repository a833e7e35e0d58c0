"""The benchmark suite times with oneDNN on, as a user's TensorFlow does; the tests keep it off.

With oneDNN off, bfloat16 on a CPU runs emulated and the benchmarks' bfloat16 train step came out
5-10x slower than float32 where a user's TensorFlow runs it at about float32's speed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mpcore.bench import onednn_setting

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = str(ROOT / "benchmarks")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["benchmarks/test_train_step.py", "--mp-allow-cpu"], "1"),
        (["benchmarks", "-q", "--mp-precision", "float32,mixed_bfloat16"], "1"),
        (["benchmarks/test_train_step.py::test_train_step"], "1"),
        (["tests/test_stats.py"], "0"),
        (["benchmarks", "tests/test_stats.py"], "0"),  # a mixed session keeps the tests' setting
        (["-q"], "0"),  # no path: the configured testpaths, tests included
        (["benchmarks_elsewhere"], "0"),
    ],
)
def test_only_a_benchmarks_session_turns_onednn_on(
    args: list[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert onednn_setting(args, BENCHMARKS) == expected
