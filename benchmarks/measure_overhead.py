"""How much does the benchmark harness add to a step? ``python benchmarks/measure_overhead.py``

Runs the suite's own ``float32``/``off`` training-step benchmark (the CPU small-model setting
unless a GPU is visible) through pytest-benchmark and, in the same process, on the same compiled
step and device-resident batch, times a bare round of that step (the same steps, the loss read
and the device sync, nothing else) before every timed round. The overhead is the median over
rounds of (timed round / the bare loop just before it) - 1; the exit status is 1 when it exceeds
``--tolerance`` (3% by default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Generator, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from mpcore.bench.stepbench import PreparedStep

BENCHMARK_MODULE = Path(__file__).resolve().parent / "test_train_step.py"


def bare_loop_seconds(prepared: PreparedStep) -> float:
    """Seconds of one round with nothing around it: the very round the benchmark times
    (:meth:`PreparedStep.run_round`: the steps, the loss read and the device sync), so the bare
    loop waits for the device exactly as a timed round does and only pytest-benchmark's own
    bookkeeping is left to measure."""
    start = time.perf_counter()
    prepared.run_round()
    return time.perf_counter() - start


class OverheadProbe:
    """A pytest plugin that times a bare loop of the benchmark's own step before every round.

    The bare loop runs in pytest-benchmark's untimed ``setup`` slot, so bare loops and timed
    rounds alternate and share whatever load the machine is under.
    """

    def __init__(self) -> None:
        self.bare: list[float] = []
        self.harness: list[float] = []

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        prepared = item.funcargs.get("prepared")
        if prepared is None:
            return (yield)
        benchmark = item.funcargs["benchmark"]
        timed_pedantic = benchmark.pedantic

        def pedantic_with_bare_loops(target, *, warmup_rounds: int = 0, **options):
            def bare_loop() -> None:
                self.bare.append(bare_loop_seconds(prepared))

            result = timed_pedantic(target, setup=bare_loop, warmup_rounds=warmup_rounds, **options)
            del self.bare[:warmup_rounds]
            return result

        benchmark.pedantic = pedantic_with_bare_loops
        result = yield
        if benchmark.stats is not None:
            self.harness = list(benchmark.stats.stats.data)
        return result

    def pair_ratios(self) -> list[float]:
        """Each timed round over the bare loop that ran just before it."""
        return [timed / bare for timed, bare in zip(self.harness, self.bare, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round (10)")
    parser.add_argument("--rounds", type=int, default=100, help="timed rounds (100)")
    parser.add_argument("--tolerance", type=float, default=0.03, help="allowed overhead (0.03)")
    args = parser.parse_args(argv)
    for name in ("steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")

    probe = OverheadProbe()
    status = pytest.main(
        [
            str(BENCHMARK_MODULE),
            "-q",
            "-p",
            "no:random_order",
            "--mp-allow-cpu",
            "--mp-precision=float32",
            "--mp-xla=off",
            f"--mp-steps={args.steps}",
            f"--mp-rounds={args.rounds}",
        ],
        plugins=[probe],
    )
    if status != 0 or len(probe.harness) != args.rounds or len(probe.bare) != args.rounds:
        print(f"error: the float32/off benchmark did not run (pytest exit status {status})")
        return 2
    harness = statistics.median(probe.harness) / args.steps
    bare = statistics.median(probe.bare) / args.steps
    # The median of adjacent pairs cancels the drift of a shared machine's load.
    overhead = statistics.median(probe.pair_ratios()) - 1.0
    print(
        f"{args.rounds} timed rounds of {args.steps} steps, each after a bare loop of the same "
        f"steps: median harness {1000 * harness:.3f} ms/step, bare loop {1000 * bare:.3f} "
        f"ms/step; overhead (median of pairs) {overhead:+.2%}, tolerance {args.tolerance:.0%}"
    )
    return 0 if overhead <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
