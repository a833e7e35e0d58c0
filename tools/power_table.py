"""Print docs/statistics.md's tables: how often a run's verdicts are right, by simulation.

Each simulated run has the shape of a profile (the baseline and ``k`` other configurations, every
one repeated ``n`` times); timings are ``100 * (1 + noise * Z)`` with ``Z`` standard normal, all
configurations doing the same work except one whose time is divided by ``1 + difference`` (a
speedup of ``1 + difference``). The verdicts come from :func:`mpcore.run.stats.decide`, the code
``mpbench run`` uses. Power is the share of runs in which that configuration is called
``faster``; the false-call rate is the share of same-work runs in which any configuration is
called faster or slower.

    python tools/power_table.py              # the tables, in markdown
    python tools/power_table.py --runs 2000  # quicker, noisier
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcore.run.stats import FASTER, SAME, VERDICTS, decide, minimum_repeats

#: (name, other configurations compared with the baseline): the two profiles' plans.
SHAPES = (("quick", 3), ("seed", 11))
DIFFERENCES = (0.05, 0.10, 0.20, 0.30)
NOISES = (0.02, 0.05, 0.10)
REPEATS = (4, 5, 6, 8, 10, 15)


def simulate(
    rng: np.random.Generator, runs: int, others: int, repeats: int, noise: float, difference: float
) -> np.ndarray:
    """Verdict codes ``(runs, others)``; configuration 0 is the one with the difference."""
    times = 100 * (1 + noise * rng.standard_normal((runs, others + 1, repeats)))
    times[:, 1] /= 1 + difference
    return decide(times[:, 0], times[:, 1:])["verdict"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="simulated runs per cell")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    faster, same = VERDICTS.index(FASTER), VERDICTS.index(SAME)
    for shape, others in SHAPES:
        least = minimum_repeats(others)
        print(f"\n### {shape}: {others} comparisons (decidable from {least} repeats)\n")
        print("| difference | noise | " + " | ".join(f"{n} repeats" for n in REPEATS) + " |")
        print("|---|---|" + "---|" * len(REPEATS))
        for difference in DIFFERENCES:
            for noise in NOISES:
                cells = []
                for repeats in REPEATS:
                    codes = simulate(rng, args.runs, others, repeats, noise, difference)
                    cells.append(f"{(codes[:, 0] == faster).mean():.0%}")
                print(f"| {difference:.0%} | {noise:.0%} | " + " | ".join(cells) + " |")
        print(f"\nsame work ({shape}): false faster/slower anywhere in the run, and the share")
        print("of comparisons decided 'no practical difference' (band +-3%)\n")
        print("| noise | " + " | ".join(f"{n} repeats" for n in REPEATS) + " |")
        print("|---|" + "---|" * len(REPEATS))
        for noise in NOISES:
            cells = []
            for repeats in REPEATS:
                codes = simulate(rng, args.runs, others, repeats, noise, 0.0)
                false = np.isin(codes, [0, 1]).any(axis=1).mean()
                cells.append(f"{false:.1%} / {(codes == same).mean():.0%}")
            print(f"| {noise:.0%} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
