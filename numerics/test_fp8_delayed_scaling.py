"""FP8 claim 3: delayed scaling lags. Keras's float8 ``Dense`` quantizes its input with a scale
computed from a history of past amax values, so when an input's amax jumps by 2**k the step
that sees the jump saturates, and after a one-step spike the oversized scale stays until the
spike rolls out of the history, flushing small inputs to zero for ``amax_history_length`` steps.

How the lag arises (``Dense._float8_call`` and ``keras.quantizers.compute_float8_scale``): a
training step quantizes with the ``inputs_scale`` variable as it stands, and returns as the
"gradients" of the scale and the history (variables with ``overwrite_with_gradient``, written
by the optimizer) a new scale, ``max(history) / 448`` of the history *before* this step, and
the history with this step's amax added. So the scale in force at step t reflects the amaxes of
steps up to t - 2. The probe is a 2-unit Dense with kernel ``0.4375 * I`` in float32: its output
is ``0.4375 * qdq(x)``, so it shows exactly what the E4M3 quantize-dequantize did to the input.
Every amax is ``448 * 2**-m``, so every scale is a power of two and every expectation exact.
"""

from __future__ import annotations

import keras
import pytest
from keras.dtype_policies import QuantizedFloat8DTypePolicy

from mpcore.probe.backend import tf

#: The steps here are tf.function/GradientTape: TensorFlow-only (Keras's float8 layers exist on
#: every backend; these claims are proved through TensorFlow).
pytestmark = pytest.mark.tensorflow_only

#: A steady input's large entry, 448 * 2**-10: the scale from its amax is exactly 2**-10.
STEADY = 448 * 2.0**-10
#: A small entry: 2**-16 / 2**-10 = 2**-6 is E4M3's smallest normal, so it survives the steady
#: scale; under a scale 2**8 times larger it becomes 2**-14, below E4M3's 2**-10, and is zero.
SMALL = 2.0**-16
JUMP = 2**8
KERNEL = 0.4375  # 448 * 2**-10 too: the kernel's own scale is exactly 2**-10
WARM_UP = 3  # the first two steps run at the initial scale 1, which flushes SMALL


class Float8Probe:
    """A float8 Dense trained one step per input row; records the input scale, the output."""

    def __init__(self, amax_history_length: int) -> None:
        policy = QuantizedFloat8DTypePolicy("float8", "float32", amax_history_length)
        self.layer = keras.layers.Dense(
            2,
            use_bias=False,
            kernel_initializer=keras.initializers.Identity(KERNEL),
            dtype=policy,
        )
        self.layer.build((None, 2))
        assert self.layer.quantization_mode == "float8"
        assert self.layer.dtype_policy.name == "float8_from_float32"
        variables = self.layer.trainable_variables
        optimizer = keras.optimizers.SGD(0.0)  # the kernel stays; the scales are overwritten
        optimizer.build(variables)

        @tf.function  # Keras's float8 custom gradient needs a traced step, as in fit
        def step(inputs: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                outputs = self.layer(inputs, training=True)
                loss = tf.reduce_sum(outputs)
            optimizer.apply(tape.gradient(loss, variables), variables)
            return outputs

        self._step = step
        self.scales: list[float] = []
        self.saturated: list[bool] = []
        self.flushed: list[bool] = []

    def train(self, rows: list[list[float]]) -> None:
        for row in rows:
            self.scales.append(float(self.layer.inputs_scale.numpy()))
            seen = self._step(tf.constant([row], tf.float32)).numpy()[0] / KERNEL
            assert seen[0] <= row[0] and seen[1] in (0.0, row[1]), (row, seen.tolist())
            self.saturated.append(bool(seen[0] < row[0]))
            self.flushed.append(bool(seen[1] == 0.0))


def steps(flags: list[bool]) -> list[int]:
    return [step for step, flag in enumerate(flags) if flag]


@pytest.mark.parametrize("history", [2, 4, 8])
def test_a_lasting_jump_saturates_the_step_that_sees_it_and_the_next(history: int) -> None:
    """Steady steps, then the large entry 2**8 times larger from step 3 on: steps 3 and 4 clip
    it to 448 * scale (the scale 2**-10 of the old amax), step 5 runs at 2**-2 and is exact,
    whatever the history length."""
    probe = Float8Probe(history)
    probe.train([[STEADY, SMALL]] * WARM_UP + [[STEADY * JUMP, SMALL]] * (history + 4))
    assert steps(probe.saturated) == [WARM_UP, WARM_UP + 1]
    assert probe.scales[: WARM_UP + 3] == [1.0, 1.0, 2.0**-10, 2.0**-10, 2.0**-10, 2.0**-2]
    assert set(probe.scales[WARM_UP + 2 :]) == {2.0**-2}


@pytest.mark.parametrize("history", [2, 4, 8])
def test_a_one_step_spike_keeps_the_scale_too_large_until_the_history_rolls(
    history: int,
) -> None:
    """A spike of 2**8 at step 3 only: step 3 saturates; from step 5 the scale is 2**-2 and the
    small entry is flushed to zero for exactly ``history`` steps, until the spike leaves the
    amax history and the scale is 2**-10 again. (The layer's default history is 1024 steps.)"""
    probe = Float8Probe(history)
    spike = WARM_UP
    probe.train(
        [[STEADY, SMALL]] * spike + [[STEADY * JUMP, SMALL]] + [[STEADY, SMALL]] * (history + 4)
    )
    assert steps(probe.saturated) == [spike]
    assert steps(probe.flushed) == [0, 1, *range(spike + 2, spike + 2 + history)]
    stale = probe.scales[spike + 2 : spike + 2 + history]
    assert stale == [2.0**-2] * history
    assert probe.scales[spike + 2 + history :] == [2.0**-10] * 3
    assert QuantizedFloat8DTypePolicy.default_amax_history_length == 1024
