"""The verdict of one comparison from its interval and its significance test, exact small cases:
an interval beyond the band is a verdict only when the test rejected "no difference"."""

from __future__ import annotations

import math

import numpy as np

from mpcore.run.stats import BAND, VERDICTS, verdict_codes

EDGE = math.log1p(BAND)


def verdicts(low: float, high: float, rejected: bool) -> str:
    code = verdict_codes(np.array([low]), np.array([high]), np.array([rejected]))
    return VERDICTS[int(code[0])]


def test_beyond_the_band_is_faster_or_slower_only_when_the_test_rejected() -> None:
    assert verdicts(2 * EDGE, 3 * EDGE, rejected=True) == "faster"
    assert verdicts(-3 * EDGE, -2 * EDGE, rejected=True) == "slower"
    assert verdicts(2 * EDGE, 3 * EDGE, rejected=False) == "undecided"
    assert verdicts(-3 * EDGE, -2 * EDGE, rejected=False) == "undecided"


def test_inside_the_band_is_no_practical_difference_and_across_it_undecided() -> None:
    assert verdicts(-EDGE / 2, EDGE / 2, rejected=False) == "no practical difference"
    assert verdicts(-EDGE / 2, 2 * EDGE, rejected=False) == "undecided"
