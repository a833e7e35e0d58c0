"""The vocabulary of mpbench: precisions, XLA modes, strategies and configuration names.

This module imports no TensorFlow, so the CLI's argument checks, the pytest plugin's option
checks and ``mpbench report`` use the same names (one vocabulary) without paying for the
TensorFlow import. Everything that needs TensorFlow (applying a mode, checking a model) lives in
:mod:`mpcore.precision.modes`, which builds on these names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PRECISIONS: tuple[str, ...] = (
    "float32",
    "mixed_float16",
    "mixed_bfloat16",
    "amp_rewrite",
    "float8",
)
#: What ``mpbench run`` trains when ``--precision`` is not given: the seed article's comparison.
#: ``float8`` is asked for by name (or ``all``): it needs Dense layers and FP8 tensor cores.
DEFAULT_PRECISIONS: tuple[str, ...] = PRECISIONS[:4]
XLA_MODES: tuple[str, ...] = ("off", "jit", "auto")
STRATEGIES: tuple[str, ...] = ("none", "mirrored", "multiworker")
#: Training steps the benchmarks time: Keras's compiled train function (what ``fit`` runs per
#: step; the default) and mpcore's own ``tf.function`` step (``make_train_step``).
STEP_KINDS: tuple[str, ...] = ("fit", "custom")

#: The half-precision Keras policies a user's model is checked and profiled under.
HALF_PRECISIONS: tuple[str, ...] = ("mixed_float16", "mixed_bfloat16")

#: Precisions whose compute dtype is float16 and which therefore need dynamic loss scaling.
FLOAT16_PRECISIONS: frozenset[str] = frozenset({"mixed_float16", "amp_rewrite"})

#: The configuration every speedup is measured against.
BASELINE_PRECISION, BASELINE_XLA = "float32", "off"

#: The environment variable that describes a multi-worker cluster to TensorFlow.
TF_CONFIG_ENV = "TF_CONFIG"

#: Share of the data set held out for validation (stratified, seeded), everywhere.
VALIDATION_FRACTION = 0.2


def _validated(name: str, valid: Sequence[str], what: str) -> str:
    if name not in valid:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(valid)}")
    return name


def parse_precision(name: str) -> str:
    """Return ``name`` if it is a known precision, else raise ``ValueError`` listing them."""
    return _validated(name, PRECISIONS, "precision")


def parse_xla(name: str) -> str:
    """Return ``name`` if it is a known XLA mode, else raise ``ValueError`` listing them."""
    return _validated(name, XLA_MODES, "XLA mode")


def config_name(precision: str, xla: str, strategy: str = "none") -> str:
    """The label of a configuration, e.g. ``mixed_float16+xla_jit`` or ``...@mirrored``."""
    suffix = "" if strategy == "none" else f"@{strategy}"
    return f"{precision}+xla_{xla}{suffix}"


#: Added to the name of the A/A control: the baseline's configuration planned a second time
#: (``"control": "A/A"`` in its configuration dict), a row of its own.
CONTROL_SUFFIX = " (A/A)"


def name_of(config: Mapping[str, str]) -> str:
    """:func:`config_name` of a configuration dict (``precision``, ``xla``, maybe ``strategy``;
    an A/A control's name ends in :data:`CONTROL_SUFFIX`)."""
    name = config_name(config["precision"], config["xla"], config.get("strategy", "none"))
    return name + CONTROL_SUFFIX if config.get("control") else name


BASELINE = config_name(BASELINE_PRECISION, BASELINE_XLA)


def parse_names(values: Sequence[str] | None, valid: Sequence[str], option: str) -> list[str]:
    """Names from repeated and/or comma-separated values; ``all`` means every valid name.

    ``None`` (the option not given) gives ``[]``; a value that names nothing (``""``, ``","``)
    and an unknown name raise ``ValueError`` naming ``option``. The CLI (``--precision a b``)
    and the pytest plugin (``--mp-precision a,b``) both parse with this.
    """
    if values is None:
        return []
    names: list[str] = []
    for value in values:
        for name in filter(None, (part.strip() for part in value.split(","))):
            if name == "all":
                names.extend(valid)
            elif name in valid:
                names.append(name)
            else:
                raise ValueError(f"unknown {option} value {name!r}; valid: {', '.join(valid)}, all")
    if not names:
        raise ValueError(f"{option}: no value given; valid: {', '.join(valid)}, all")
    return list(dict.fromkeys(names))
