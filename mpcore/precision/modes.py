"""Precision and XLA modes: what a run configuration is, how to apply it, how to verify it.

Mixed precision in TensorFlow/Keras 3 is controlled by process-global state (the Keras dtype
policy, grappler's ``auto_mixed_precision`` option, the auto-clustering JIT flag), so applying a
mode is a context manager that restores every global it touched, and a model built under a mode
is verified against it with :func:`check_model` before any number is reported.

On the JAX and PyTorch backends (``KERAS_BACKEND``) the dtype policy is the only such global:
``float32``, ``mixed_float16`` and ``mixed_bfloat16`` with XLA ``off`` or ``jit`` (``jit_compile``;
``torch.compile`` on torch) apply there, ``amp_rewrite`` and ``auto`` are refused as
TensorFlow-only (:func:`mpcore.probe.backend.unsupported_reason`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import keras

from mpcore.names import FLOAT16_PRECISIONS, config_name, parse_precision, parse_xla
from mpcore.precision.fp8 import float8_candidates, float8_report
from mpcore.probe import backend
from mpcore.probe.backend import tf

#: The Keras dtype policy each precision builds its layers under. ``amp_rewrite`` builds a float32
#: model; grappler rewrites the graph to float16 on a GPU with tensor cores.
KERAS_POLICY: dict[str, str] = {
    "float32": "float32",
    "mixed_float16": "mixed_float16",
    "mixed_bfloat16": "mixed_bfloat16",
    "amp_rewrite": "float32",
    # Built under mixed_bfloat16, then Dense/EinsumDense are quantized (mpcore.precision.fp8).
    "float8": "mixed_bfloat16",
}

_GRAPPLER_AMP = "auto_mixed_precision"


class ModeMismatchError(AssertionError):
    """A built model does not run in the mode its configuration names."""


class UnsupportedModeError(ValueError):
    """The Keras backend in use cannot serve the mode (``amp_rewrite`` and XLA ``auto`` are
    TensorFlow-only)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One precision x XLA configuration; validated on construction."""

    precision: str = "float32"
    xla: str = "off"

    def __post_init__(self) -> None:
        parse_precision(self.precision)
        parse_xla(self.xla)

    @property
    def name(self) -> str:
        """Short label such as ``mixed_float16+xla_jit``."""
        return config_name(self.precision, self.xla)

    @property
    def uses_loss_scaling(self) -> bool:
        """Whether the optimizer must be a ``LossScaleOptimizer``."""
        return self.precision in FLOAT16_PRECISIONS

    @property
    def compile_jit(self) -> bool:
        """The ``jit_compile`` argument for ``Model.compile``: always explicit, never "auto"."""
        return self.xla == "jit"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class GlobalState:
    """The process-global TensorFlow/Keras settings a mode may change."""

    policy: str
    grappler_options: dict[str, Any]
    jit: Any

    @classmethod
    def capture(cls) -> GlobalState:
        if not backend.is_tensorflow():  # the policy is the only global Keras has elsewhere
            return cls(keras.mixed_precision.dtype_policy().name, {}, False)
        return cls(
            policy=keras.mixed_precision.dtype_policy().name,
            grappler_options=dict(tf.config.optimizer.get_experimental_options()),
            jit=tf.config.optimizer.get_jit(),
        )

    def restore(self) -> None:
        """Put every captured global back, including grappler options added since capture."""
        keras.mixed_precision.set_dtype_policy(self.policy)
        if not backend.is_tensorflow():
            return
        current = tf.config.optimizer.get_experimental_options()
        reset = {key: False for key in current if key not in self.grappler_options}
        # Grappler options are booleans we may have switched on; an option absent at capture time
        # was at its default, which for auto_mixed_precision is off.
        tf.config.optimizer.set_experimental_options({**reset, **self.grappler_options})
        tf.config.optimizer.set_jit(self.jit or False)


@contextlib.contextmanager
def applied(config: RunConfig) -> Iterator[RunConfig]:
    """Apply ``config`` to the process and restore every global it touched on exit.

    Order matters: ``keras.backend.clear_session()`` resets the dtype policy to float32, so the
    session is cleared *first* and the policy set afterwards, then asserted.
    """
    refused = backend.unsupported_reason(config.precision, config.xla)
    if refused:
        raise UnsupportedModeError(f"{config.name}: {refused}")
    saved = GlobalState.capture()
    try:
        keras.backend.clear_session()
        keras.mixed_precision.set_dtype_policy(KERAS_POLICY[config.precision])
        active = keras.mixed_precision.dtype_policy().name
        if active != KERAS_POLICY[config.precision]:
            raise ModeMismatchError(
                f"{config.name}: global dtype policy is {active!r} after setting it"
            )
        if backend.is_tensorflow():
            tf.config.optimizer.set_experimental_options(
                {_GRAPPLER_AMP: config.precision == "amp_rewrite"}
            )
            tf.config.optimizer.set_jit("autoclustering" if config.xla == "auto" else False)
        yield config
    finally:
        saved.restore()


def amp_rewrite_enabled() -> bool:
    """Whether grappler's ``auto_mixed_precision`` rewrite is switched on in this process."""
    if not backend.is_tensorflow():
        return False
    return bool(tf.config.optimizer.get_experimental_options().get(_GRAPPLER_AMP, False))


def autoclustering_enabled() -> bool:
    """Whether ``tf.config.optimizer.set_jit`` auto-clustering is on in this process."""
    if not backend.is_tensorflow():
        return False
    return bool(tf.config.optimizer.get_jit())


def _expected_dtypes(precision: str) -> tuple[str, str]:
    compute = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16", "float8": "bfloat16"}.get(
        precision, "float32"
    )
    return compute, "float32"


def check_model(
    model: keras.Model, config: RunConfig, heads: list[keras.layers.Layer] | None = None
) -> None:
    """Raise :class:`ModeMismatchError` unless a built, compiled ``model`` matches ``config``.

    Checked: every layer's variable dtype is float32 (master weights); the compute dtype of every
    layer with weights is the mode's, except the classification head, which must compute in
    float32; the model output is float32; the optimizer is a ``LossScaleOptimizer`` exactly for
    float16 modes; the XLA setting (``jit_compile`` and auto-clustering) and the grappler rewrite
    are the mode's; ``float8``: every Dense/EinsumDense but the head quantized to float8 (see
    :func:`mpcore.precision.fp8.float8_report`), and no float8 layer in any other mode.
    """
    problems: list[str] = []
    compute, variable = _expected_dtypes(config.precision)
    # The layers producing the outputs (default: the last one, the registry's layout).
    head_ids = {id(layer) for layer in heads or model.layers[-1:]}
    for layer in model.layers:
        if not layer.weights:
            continue
        want = "float32" if id(layer) in head_ids else compute
        if layer.compute_dtype != want:
            problems.append(
                f"layer {layer.name} computes in {layer.compute_dtype}, expected {want}"
            )
        if layer.variable_dtype != variable:
            problems.append(
                f"layer {layer.name} keeps variables in {layer.variable_dtype}, expected {variable}"
            )
    if config.precision == "float8":
        problems.extend(float8_report(model))
    else:
        problems.extend(
            f"layer {layer.name} is quantized to float8"
            for layer in float8_candidates(model)
            if layer.quantization_mode == "float8"
        )
    # A subclassed model has no graph outputs to read (its head layer is checked above).
    for output in getattr(model, "outputs", None) or []:
        if output.dtype != "float32":
            problems.append(f"model output {output.name} is {output.dtype}, expected float32")

    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        problems.append("model is not compiled")
    else:
        wrapped = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        if wrapped != config.uses_loss_scaling:
            state = "is" if wrapped else "is not"
            problems.append(f"optimizer {state} a LossScaleOptimizer")

    jit = getattr(model, "jit_compile", None)
    if jit != config.compile_jit:
        problems.append(f"model.jit_compile is {jit!r}, expected {config.compile_jit}")
    if autoclustering_enabled() != (config.xla == "auto"):
        problems.append(f"auto-clustering is {'on' if autoclustering_enabled() else 'off'}")
    if amp_rewrite_enabled() != (config.precision == "amp_rewrite"):
        problems.append(
            f"grappler auto_mixed_precision is {'on' if amp_rewrite_enabled() else 'off'}"
        )

    if problems:
        raise ModeMismatchError(f"{config.name}: " + "; ".join(problems))
