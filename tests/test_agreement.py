"""``mpbench run`` and ``pytest benchmarks/`` agree on one comparison at the same work.

The two measure different things (docs/statistics.md, "Three ratios for one question"): the run
times whole ``fit`` epochs (the whole-epoch ratio), the benchmarks the compiled train step on one
resident batch (the train-step ratio). Here both time the small CNN at the same image size and
batch, float32 against mixed_float16 with XLA off, in the same process environment (oneDNN
alike). float16 has no native arithmetic on a CPU and is emulated, so it is clearly slower
(about 0.5x on the step): a large, real effect that a wrong ratio (inverted, divided the wrong
way, taken from the wrong configuration) cannot hide in the noise.

Both sides are interleaved and judged by the same statistics (:func:`mpcore.run.stats.compare_all`):
the run's repeats, and benchmark sessions of one precision each, alternated. What separates the
two ratios is the work the run times and the benchmark does not: the input pipeline and
``fit``'s own work per step and per epoch. It is measured, not assumed: the run's float32
ms/step less the benchmark's. That work is the same for both precisions, so the run's ratio must
lie between the step's ratio (the extra work hidden behind the step) and the ratio with that work
added to both steps in series. The test asserts that the range this allows meets the run's
interval, that both say "slower", and that inverting either ratio breaks the agreement. When the
shared machine was so busy that a side stayed undecided, and that side's own spread warnings
say so, the test is skipped with the measurements rather than failed.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpcore.bench.table import rows_from_saved, with_speedups
from mpcore.names import BASELINE_PRECISION
from mpcore.run.stats import SLOWER, UNDECIDED, compare_all, spread_warnings
from mpcore.run.verdicts import run_times

pytest_plugins = ("pytester",)

pytestmark = pytest.mark.cpu(reason="float16 is emulated on a CPU: the effect the test needs")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
OTHER = "mixed_float16"
#: 64 px and 15 a batch: enough arithmetic a step that the step, where float16 costs (0.4-0.6x on
#: this size), outweighs what the run adds to it, and a loaded machine cannot hide the effect.
MODEL, SIZE, BATCH = "small", 64, 15
#: 22 generated images a class, 110 in all: 18 a class train (the run validates on 20%), 90
#: training images, 6 full steps of 15 an epoch.
PER_CLASS = 22
#: Four steady epochs a repeat: each repeat's figure is their median, which a burst of load on
#: the shared machine moves little; an epoch costs less than the worker's start-up.
EPOCHS = 5
#: Five repeats of the run and five rounds of benchmark sessions (each a session of each
#: precision): each side's interval is then the 3rd of its 25 repeat-to-repeat ratios from each
#: end, which one or two repeats caught in a burst of load on the shared machine cannot widen
#: (with 4, the fewest that can decide one comparison, it is their extremes).
REPEATS = ROUNDS = 5


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def meets(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def inverted(self) -> Interval:
        return Interval(1 / self.high, 1 / self.low)


def allowed_range(step: Interval, step_base: float, extra: float) -> Interval:
    """The whole-epoch ratios that a train-step ratio in ``step`` (the baseline's step taking
    ``step_base`` ms) allows when every step also carries ``extra`` ms of work that does not
    depend on the precision: from the step's own ratio (the extra work hidden behind the step)
    to the ratio with the extra work added to both steps in series."""

    def serial(ratio: float) -> float:
        return (step_base + extra) / (step_base / ratio + extra)

    ends = (step.low, step.high, serial(step.low), serial(step.high))
    return Interval(min(ends), max(ends))


def test_allowed_range_lies_between_the_step_ratio_and_one() -> None:
    slower = allowed_range(Interval(0.5, 0.5), 10.0, 10.0)
    assert (slower.low, slower.high) == (0.5, pytest.approx(20 / 30))
    assert allowed_range(Interval(2.0, 2.0), 20.0, 0.0) == Interval(2.0, 2.0)
    assert allowed_range(Interval(2.0, 2.0), 20.0, 20.0) == Interval(pytest.approx(4 / 3), 2.0)
    assert allowed_range(Interval(0.4, 0.5), 10.0, 10.0) == Interval(0.4, pytest.approx(20 / 30))
    assert Interval(0.6, 0.7).meets(slower) and not Interval(0.7, 0.8).meets(slower)
    assert Interval(0.5, 0.8).inverted() == Interval(1.25, 2.0)


def run_the_run(data: Path, folder: Path, cache: Path):
    from scenarios import run_in_process

    argv = ["run", "--model", MODEL, "--data", str(data), "--image-size", str(SIZE)]
    argv += ["--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--repeats", str(REPEATS)]
    argv += ["--precision", BASELINE_PRECISION, OTHER, "--xla", "off", "--quiet"]
    return run_in_process(argv, folder, cache, cpu_only=True)


def benchmark_session(pytester: pytest.Pytester, precision: str, saved: Path) -> dict:
    """One ``pytest benchmarks/test_train_step.py`` session of one precision, in-process: the
    train step's row as the suite records it (``ms_per_step``...)."""
    argv = [str(BENCHMARKS / "test_train_step.py"), "-p", "mpcore.bench.plugin", "--noconftest"]
    argv += ["--import-mode=importlib", "-p", "no:random_order", "--mp-allow-cpu"]
    argv += [f"--mp-model={MODEL}", f"--mp-image-size={SIZE}", f"--mp-batch={BATCH}"]
    argv += [f"--mp-precision={precision}", "--mp-xla=off", "--mp-step=fit"]
    # Eight rounds of three steps: a second or two of timing against a session's few of set-up.
    argv += ["--mp-steps=3", "--mp-rounds=8", "--mp-warmup-rounds=1"]
    result = pytester.inline_run(*argv, f"--benchmark-json={saved}")
    result.assertoutcome(passed=1)
    (row,) = rows_from_saved(json.loads(saved.read_text()))
    assert (row["model"], row["image_size"], row["batch"]) == (MODEL, SIZE, BATCH)
    assert (row["precision"], row["xla"], row["step"]) == (precision, "off", "fit")
    return row


def interleaved_benchmarks(pytester: pytest.Pytester, folder: Path) -> list[list[dict]]:
    """:data:`ROUNDS` rounds of one benchmark session of each precision, interleaved as the
    run's repeats are (the order rotated every round), so a drift of the shared machine lands on
    both alike: each round's two rows."""
    folder.mkdir()
    precisions = [BASELINE_PRECISION, OTHER]
    rounds = []
    for round_ in range(ROUNDS):
        order = precisions[round_ % 2 :] + precisions[: round_ % 2]
        rounds.append(
            [benchmark_session(pytester, p, folder / f"{p}-{round_}.json") for p in order]
        )
    return rounds


# Minutes of interleaved runs and benchmark sessions on a CPU: a measured report, not a unit of
# behaviour, so it runs in CI's acceptance session rather than in every test session.
@pytest.mark.slow
@pytest.mark.acceptance(reason="5 interleaved runs and 10 benchmark sessions (about 200 s idle)")
def test_run_and_benchmarks_agree_on_float16_against_float32(
    pytester: pytest.Pytester, tmp_path: Path, cache: Path
) -> None:
    from mpcore.data.synthetic import write_synthetic_ships

    data = write_synthetic_ships(tmp_path / "ships", per_class=PER_CLASS, image_size=SIZE)
    run = run_the_run(data, tmp_path / "run", cache)
    assert run.code == 0, run.stderr[-3000:]
    document = run.document
    shape = {
        (c["result"]["train_images"], c["result"]["steps_per_epoch"])
        for c in document["configurations"]
    }
    assert shape == {(90, 90 // BATCH)}  # full batches only: no short step in either epoch
    (judged,) = [
        comparison
        for comparison in document["statistics"]["comparisons"]
        if comparison["name"] == f"{OTHER}+xla_off"
    ]
    whole_epoch = Interval(judged["low"], judged["high"])
    run_base = statistics.median(run_times(document)[f"{BASELINE_PRECISION}+xla_off"])

    rounds = interleaved_benchmarks(pytester, tmp_path / "benchmarks")
    steps = {
        precision: [
            row["ms_per_step"] for rows in rounds for row in rows if row["precision"] == precision
        ]
        for precision in (BASELINE_PRECISION, OTHER)
    }
    step_judged = compare_all(steps, BASELINE_PRECISION)[OTHER]  # the run's own statistics
    train_step = Interval(step_judged.low, step_judged.high)
    step_base = statistics.median(steps[BASELINE_PRECISION])
    # Measured: what the run's step carries beyond the benchmark's (the input pipeline, fit's
    # own work per step and per epoch), the same for both precisions.
    extra = max(run_base - step_base, 0.0)
    allowed = allowed_range(train_step, step_base, extra)
    measured = (
        f"whole-epoch {judged['speedup']:.2f}x ({whole_epoch.low:.2f}-{whole_epoch.high:.2f}, "
        f"float32 {run_base:.1f} ms/step); train-step {step_judged.speedup:.2f}x "
        f"({train_step.low:.2f}-{train_step.high:.2f}, float32 {step_base:.1f} ms/step); "
        f"extra {extra:.1f} ms/step; allowed whole-epoch {allowed.low:.2f}-{allowed.high:.2f}"
    )
    print(measured)
    # Each round's speedup as the benchmark report prints it (its two rows as one table) is one
    # of the 25 ratios the interval is made of, its ends the 3rd from each end of those: so the
    # median of the 5 printed (the 3rd of them) lies inside it.
    printed = [
        row["speedup"]
        for rows in rounds
        for row in with_speedups(rows)
        if row["precision"] == OTHER
    ]
    assert train_step.low <= statistics.median(printed) <= train_step.high, (printed, measured)

    # The ratios agree once the measured extra work is accounted for.
    assert whole_epoch.meets(allowed), measured
    # A machine busy enough to leave a side undecided is not a disagreement: each side's own
    # spread warnings (a coefficient of variation over 10%, an outlying repeat) say so, and
    # then the verdicts and the teeth below cannot be checked. Undecided without them fails.
    sides = (
        (judged["verdict"], document["statistics"]["warnings"]),
        (step_judged.verdict, spread_warnings(steps)),
    )
    for verdict, warnings in sides:
        if verdict == UNDECIDED and warnings:
            pytest.skip(f"this machine was too busy to decide: {measured}; {'; '.join(warnings)}")
    # Both say slower, each decided by its own interval against the band.
    assert judged["verdict"] == SLOWER, measured
    assert step_judged.verdict == SLOWER, measured
    # And the check has teeth on these very numbers: either ratio inverted disagrees.
    assert not whole_epoch.inverted().meets(allowed), measured
    assert not whole_epoch.meets(allowed_range(train_step.inverted(), step_base, extra)), measured
