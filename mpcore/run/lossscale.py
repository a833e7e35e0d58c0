"""A configuration's dynamic loss scaling in ``mpbench run``: the summary the worker records
(``result.loss_scaling`` in results.json), the rules that call it a collapse, and the table's
notes. No TensorFlow here (the worker's callback,
:func:`mpcore.run.callbacks.make_loss_scale_watch`, reads the optimizer).
"""

from __future__ import annotations

import math
from typing import Any

#: A loss scale that falls by this power of two or more from where it started has collapsed:
#: dynamic scaling halves it once per skipped step, so 2^10 is ten non-finite steps with no
#: recovery in between.
COLLAPSE_FALL_EXPONENT = 10
#: A loss scale at or below this has collapsed whatever it started at: small gradients are no
#: longer lifted out of float16's underflow.
COLLAPSE_FLOOR = 1.0


def summarise_loss_scale(
    initial: float, scales: list[float], skipped: list[int], steps: list[int]
) -> dict[str, Any]:
    """The record of a configuration's dynamic loss scaling, from its history: ``initial`` scale,
    the scale at the end of each epoch, and per epoch the steps skipped (non-finite gradients, the
    update not applied) out of ``steps``. ``collapsed`` says whether the scale fell by
    2^:data:`COLLAPSE_FALL_EXPONENT` or more from ``initial``, or to :data:`COLLAPSE_FLOOR` or
    below; ``collapse_rule`` says which, in words."""
    lowest = min(scales, default=initial)
    rule = None
    if lowest <= COLLAPSE_FLOOR:
        rule = f"fell to {lowest:g} (at or below {COLLAPSE_FLOOR:g})"
    elif lowest > 0 and math.log2(initial / lowest) >= COLLAPSE_FALL_EXPONENT:
        rule = (
            f"fell by 2^{math.log2(initial / lowest):.0f} from {initial:g} to {lowest:g} "
            f"(2^{COLLAPSE_FALL_EXPONENT} or more)"
        )
    return {
        "initial_scale": float(initial),
        "per_epoch": [float(v) for v in scales],
        "skipped_steps": [int(n) for n in skipped],
        "steps": [int(n) for n in steps],
        "skipped_total": int(sum(skipped)),
        "collapsed": rule is not None,
        "collapse_rule": rule,
    }


def collapse_note(scaling: dict[str, Any] | None) -> str:
    """``, loss scale collapsed ...`` for a configuration whose dynamic loss scale collapsed
    (:func:`summarise_loss_scale`), else nothing."""
    if not scaling or not scaling.get("collapsed"):
        return ""
    steps = sum(scaling.get("steps") or [])
    final = (scaling.get("per_epoch") or [scaling.get("initial_scale")])[-1]
    return (
        f", loss scale collapsed: {scaling.get('initial_scale'):g} to {final:g}, "
        f"{scaling.get('skipped_total', 0)} of {steps} steps skipped"
    )
