"""The statistics of a run's comparisons (:mod:`mpcore.run.stats`): the exact Mann-Whitney
distribution, Holm's correction, the Moses interval, the verdicts with their band, and, by
simulation on synthetic timings (no training), the family-wise false-call rate and the power
that docs/statistics.md states. Vectorised over 10,000 simulated runs: a few seconds in all.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mpcore.face.cli import main
from mpcore.face.run_cmd import PROFILES
from mpcore.run import ranks, stats
from mpcore.run.stats import (
    FASTER,
    SAME,
    SLOWER,
    UNDECIDED,
    compare_all,
    decide,
    holm,
    minimum_repeats,
    noise_floor,
    repeats_problem,
    spread_warnings,
)

A, B, C = "float32+xla_off", "mixed_float16+xla_off", "mixed_bfloat16+xla_off"
RUNS = 10_000


def _enumerated_null(n: int, m: int) -> np.ndarray:
    """P(U = u) by listing every way the ranks can split between the two samples."""
    counts = np.zeros(n * m + 1)
    for first in itertools.combinations(range(n + m), n):
        counts[sum(first) - n * (n - 1) // 2] += 1  # U from the first sample's rank sum
    return counts / counts.sum()


@pytest.mark.parametrize(("n", "m"), [(1, 1), (2, 5), (3, 3), (4, 5), (5, 5), (6, 3)])
def test_null_distribution_is_exact(n: int, m: int) -> None:
    assert ranks.mann_whitney_null(n, m) == pytest.approx(_enumerated_null(n, m), abs=1e-15)


def test_smallest_p_value_is_the_chance_of_no_overlap() -> None:
    for n in range(2, 8):
        p = ranks.p_values(np.array([0.0, n * n]), n, n)
        assert p == pytest.approx([2 / math.comb(2 * n, n)] * 2)
    assert ranks.p_values(np.array([12.5]), 5, 5)[0] == pytest.approx(1.0)


def test_minimum_repeats_is_the_first_that_passes_holms_first_step() -> None:
    for comparisons in (1, 2, 3, 4, 11, 12, 30):
        least = minimum_repeats(comparisons)
        assert stats.chance_of_no_overlap(least) <= 0.05 / comparisons
        assert stats.chance_of_no_overlap(least - 1) > 0.05 / comparisons
    # The quick profile compares 4 precisions with the baseline, the seed profile 4 x 3 XLA
    # modes: their default repeats are the fewest that can decide.
    for profile in PROFILES.values():
        comparisons = 4 * len(profile.xla) - 1
        assert profile.repeats == minimum_repeats(comparisons), profile
    assert repeats_problem(1, 11) is None  # a single measurement claims nothing
    assert repeats_problem(6, 11) is None
    problem = repeats_problem(5, 11)
    assert problem is not None and "at least 6" in problem and "\n" not in problem


def test_holm_matches_the_textbook_steps() -> None:
    rejected, level, adjusted = holm(np.array([0.01, 0.04, 0.03, 0.005]))
    assert rejected.tolist() == [True, False, False, True]
    # 0.005 <= 0.05/4 and 0.01 <= 0.05/3 pass; 0.03 > 0.05/2 stops: the rest stay at 0.025.
    assert level == pytest.approx([0.05 / 3, 0.025, 0.025, 0.0125])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_interval_is_the_moses_order_statistics() -> None:
    base = [10.0, 11.0, 12.0, 10.5, 11.5]
    other = [5.0, 6.0, 7.0, 5.5, 6.5]
    result = compare_all({A: base, B: other}, A)[B]
    ratios = sorted(b / o for b in base for o in other)
    # One comparison at 5%: P(U < 3) = 4/252 <= 0.025 < P(U < 4) = 7/252, so the interval
    # runs from the 3rd smallest to the 3rd largest of the 25 pairwise ratios.
    assert ranks.interval_rank(5, 5, 0.05) == 3
    assert (result.low, result.high) == pytest.approx((ratios[2], ratios[-3]))
    assert result.speedup == pytest.approx(math.exp(np.median(np.log(ratios))))
    assert result.verdict == FASTER and result.decided
    assert result.p_value == pytest.approx(2 / 252)
    assert (result.baseline_count, result.count) == (5, 5)
    assert compare_all({A: base, B: [2 * t for t in base]}, A)[B].verdict == SLOWER


def test_verdicts_follow_the_band() -> None:
    rng = np.random.default_rng(3)
    base = list(100 * (1 + 0.002 * rng.standard_normal(30)))
    # A real 1% difference, measured tightly: no practical difference inside +-3%, a
    # difference with a band of 0.5%.
    other = list(99 * (1 + 0.002 * rng.standard_normal(30)))
    assert compare_all({A: base, B: other}, A)[B].verdict == SAME
    assert compare_all({A: base, B: other}, A, band=0.005)[B].verdict == FASTER
    # Three repeats cannot decide one comparison: an infinite interval, undecided.
    few = compare_all({A: [10.0, 10.1, 10.2], B: [5.0, 5.1, 5.2]}, A)[B]
    assert (few.low, few.high, few.verdict) == (0.0, math.inf, UNDECIDED)
    with pytest.raises(ValueError, match="baseline"):
        compare_all({B: [1.0]}, A)
    with pytest.raises(ValueError, match="positive"):
        compare_all({A: [1.0, 2.0], B: [0.0, 1.0]}, A)


def test_an_aa_control_stays_out_of_the_family() -> None:
    rng = np.random.default_rng(4)
    rows = {name: list(100 + rng.standard_normal(5)) for name in (A, B, C)}
    alone = compare_all(rows, A)
    with_control = compare_all({**rows, f"{A} (A/A)": list(100 + rng.standard_normal(5))}, A)
    assert {n: c.level for n, c in alone.items()} == {
        n: c.level for n, c in with_control.items() if not stats.is_control(n)
    }
    assert with_control[f"{A} (A/A)"].level == pytest.approx(0.05 / 2)


def _timings(rng: np.random.Generator, shape: tuple[int, ...], noise: float) -> np.ndarray:
    """Times per step around 100 ms with a standard deviation of ``noise`` of the mean."""
    return 100 * (1 + noise * rng.standard_normal(shape))


@pytest.mark.parametrize(
    ("configurations", "profile"), [(12, "seed"), (4, "quick")], ids=["seed", "quick"]
)
def test_family_wise_false_call_rate_is_at_most_five_percent(
    configurations: int, profile: str
) -> None:
    repeats = PROFILES[profile].repeats
    rng = np.random.default_rng(2026)
    times = _timings(rng, (RUNS, configurations, repeats), 0.10)  # all the same work
    verdicts = decide(times[:, 0], times[:, 1:])["verdict"]
    false_call = np.isin(verdicts, [0, 1]).any(axis=1).mean()
    assert false_call <= 0.05
    # ...and not by never calling anything: the bound the footnote states holds as well.
    counts = [(repeats, repeats)] * (configurations - 1)
    assert false_call <= stats.family_error_rate(counts) + 0.005


def test_heavy_tailed_noise_keeps_the_rate() -> None:
    """The test is distribution-free: bursts of load (a skewed, heavy tail) change nothing."""
    rng = np.random.default_rng(7)
    times = 100 + 20 * rng.pareto(2.5, (RUNS, 12, PROFILES["seed"].repeats))
    verdicts = decide(times[:, 0], times[:, 1:])["verdict"]
    assert np.isin(verdicts, [0, 1]).any(axis=1).mean() <= 0.05


@pytest.mark.parametrize("direction", [FASTER, SLOWER])
def test_a_real_twenty_percent_difference_is_found(direction: str) -> None:
    """The quick profile's shape (4 configurations, its default repeats), 5% noise, one
    configuration 20% faster (or slower): called so in at least 80% of runs."""
    repeats = PROFILES["quick"].repeats
    rng = np.random.default_rng(11)
    times = _timings(rng, (RUNS, 4, repeats), 0.05)
    times[:, 1] = times[:, 1] / 1.2 if direction == FASTER else times[:, 1] * 1.2
    verdicts = decide(times[:, 0], times[:, 1:])["verdict"]
    found = (verdicts[:, 0] == stats.VERDICTS.index(direction)).mean()
    assert found >= 0.80
    assert (np.isin(verdicts[:, 1:], [0, 1])).any(axis=1).mean() <= 0.05


def test_spread_warnings_name_the_configuration_and_repeat() -> None:
    quiet = {A: [100.0, 101.0, 99.0, 100.5, 99.5]}
    assert spread_warnings(quiet) == []
    noisy = {A: [100.0, 101.0, 99.0, 100.5, 160.0], B: [50.0, 70.0, 40.0, 60.0, 55.0]}
    warnings = spread_warnings(noisy)
    assert any(w.startswith(f"{A}: repeat 5 (160.0 ms/step) is an outlier") for w in warnings)
    assert any(w.startswith(f"{B}: its repeats vary by 20%") for w in warnings)
    assert not any(w.startswith(f"{B}: repeat") for w in warnings)
    # Half the values equal (a MAD of 0) still finds the one far away.
    assert any("repeat 4" in w for w in spread_warnings({C: [10.0, 10.0, 10.0, 13.0, 10.1]}))


def test_spread_of_huge_figures_is_the_same_and_overflows_nothing() -> None:
    """A results.json edited by hand may hold any finite number: the spread is the same ratio,
    with no RuntimeWarning from squaring deviations near the largest float."""
    values = [50.0, 70.0, 40.0, 60.0, 55.0]
    with np.errstate(all="raise"):
        huge = spread_warnings({B: [v * 1e306 for v in values]}, unit="ms/step")
    assert [w.split(":")[1] for w in huge if "vary by" in w] == [
        w.split(":")[1] for w in spread_warnings({B: values}) if "vary by" in w
    ]
    assert any("vary by 20%" in w for w in huge)


def test_noise_floor_is_the_largest_relative_difference() -> None:
    assert noise_floor([100.0, 104.0], [98.0, 101.0]) == pytest.approx(104 / 98 - 1)
    assert noise_floor([10.0], [10.0]) == 0.0
    with pytest.raises(ValueError):
        noise_floor([], [1.0])


def test_run_refuses_repeats_that_can_never_decide(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(["run", "--profile", "quick", "--repeats", "3", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "at least 5" in err and "Traceback" not in err
    assert not out.exists()
