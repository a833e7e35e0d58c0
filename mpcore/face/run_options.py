"""``mpbench run``'s options of the run's shape: ``--repeats N|auto``, ``--budget``,
``--control`` and ``--quiet``, checked and turned into :class:`mpcore.run.plan.RunPlan` fields.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from mpcore.face.common import UsageError, float_option, positive_int
from mpcore.run.plan import MAX_REPEATS, RunPlan, duration, planned_configs

#: ``--repeats auto``: rounds beyond the profile's until every comparison is decided.
AUTO = "auto"
#: The run's time limit of ``--repeats auto`` when ``--budget`` is not given.
DEFAULT_BUDGET_MINUTES = 30.0


def repeats_value(text: str) -> int | str:
    """An argparse type: a number of repeats in 1..MAX_REPEATS, or ``auto``; refused before
    anything is planned, so an absurd count never reaches the schedule."""
    if text.strip().lower() == AUTO:
        return AUTO
    value = positive_int(text)
    if value > MAX_REPEATS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_REPEATS} repeats, got {text} (or auto, with --budget MINUTES)"
        )
    return value


def budget_minutes(text: str) -> float:
    """An argparse type: a positive, finite number of minutes."""
    return float_option(
        text, lambda value: 0 < value < math.inf, "a positive number of minutes", " of minutes"
    )


def check_repeat_options(args: argparse.Namespace) -> None:
    """Refuse a combination of the repeat options, before anything else is done."""
    if args.budget is not None and args.repeats != AUTO:
        raise UsageError("--budget applies to --repeats auto only")


def plan_options(
    args: argparse.Namespace,
    repeats: int,
    control: bool,
    modes: list[dict[str, str]],
    strategy: str,
) -> dict[str, Any]:
    """The :class:`RunPlan` fields these options decide (``repeats``: the run's, with ``--repeats
    auto`` the rounds it starts with; ``control``: the profile's default): the configurations
    with the A/A control or not, the repeats and the budget, and Keras's verbosity."""
    control = control if args.control is None else args.control
    configs = planned_configs(modes, strategy, control)
    if control and len(configs) == len(planned_configs(modes, strategy)):
        print("control: no A/A row, as the baseline float32+xla_off is not planned", flush=True)
    auto = args.repeats == AUTO
    return {
        "configs": configs,
        "verbose": 0 if args.quiet else 1 if sys.stdout.isatty() else 2,
        "repeats": repeats,
        "budget_seconds": 60 * (args.budget or DEFAULT_BUDGET_MINUTES) if auto else None,
        "band": args.band,
    }


def describe_repeats(plan: RunPlan) -> str:
    """The repeats part of the plan's announcement (empty for single runs)."""
    if plan.repeats == 1 and not plan.budget_seconds:
        return ""
    text = f", {plan.repeats} repeats each, interleaved"
    if plan.budget_seconds:
        text += (
            ", then more rounds until every comparison is decided, within "
            f"{duration(plan.budget_seconds)}"
        )
    return text
