"""Claim 5: mpcore models compute their softmax head in float32 under the mixed policies, and a
float16 softmax head would fail where the float32 head gives the float32 reference loss."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from mpcore.models.registry import build_model
from mpcore.precision.modes import RunConfig, applied

MIXED = ("mixed_float16", "mixed_bfloat16")
COMPUTE_DTYPE = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
#: The label's logit sits this far below the top logit: p(label) = e**-18 ~ 1.5e-8, a normal
#: float32 but below 2**-25 ~ 3.0e-8, so float16 rounds it to zero.
LOGIT_GAP = 18.0


def textbook_cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log p(label), computed in float32 from the probabilities a model returned."""
    picked = np.take_along_axis(probabilities.astype(np.float32), labels[:, None], axis=1)[:, 0]
    with np.errstate(divide="ignore"):
        return -np.log(picked)


@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize("model_name", ["small", "resnet50"])
def test_mpcore_models_output_float32_from_a_float32_softmax_head(
    precision: str, model_name: str
) -> None:
    """The body computes in the policy's half type, the head casts its input up and computes
    the softmax in float32, and the output tensor is float32."""
    with applied(RunConfig(precision)):
        model = build_model(model_name, 32)
        head = model.layers[-1]
        outputs = model(np.zeros((2, 32, 32, 3), np.float32))
    assert head.name == "predictions" and head.activation is keras.activations.softmax
    assert head.compute_dtype == "float32"
    assert head.input.dtype == COMPUTE_DTYPE[precision]
    assert model.output.dtype == "float32"
    assert keras.backend.standardize_dtype(outputs.dtype) == "float32"  # torch: torch.float32


@pytest.fixture(scope="module")
def float16_vs_float32_heads():
    """The small model under mixed_float16 with its float32 head set so every logit is 0 except
    class 1's, which is ``LOGIT_GAP``; the same head weights in a float16 Dense softmax; both
    applied to the same float16 features, with label 0."""
    with applied(RunConfig("mixed_float16")):
        keras.utils.set_random_seed(0)
        model = build_model("small", 32)
        head = model.get_layer("predictions")
        bias = np.zeros(5, np.float32)
        bias[1] = LOGIT_GAP
        head.set_weights([np.zeros_like(head.kernel.numpy()), bias])
        features_model = keras.Model(model.input, head.input)
        features = features_model(np.random.default_rng(0).uniform(size=(4, 32, 32, 3)))
        float16_head = keras.layers.Dense(5, activation="softmax", name="float16_head")
        float16_head.build(features.shape)
        float16_head.set_weights(head.get_weights())
        assert float16_head.compute_dtype == "float16"
        assert keras.backend.standardize_dtype(features.dtype) == "float16"
        return {
            "float32": keras.ops.convert_to_numpy(head(features)),
            "float16": keras.ops.convert_to_numpy(float16_head(features)),
            "logits": np.zeros((4, 5)) + bias.astype(np.float64),
        }


def test_a_float16_softmax_head_flushes_the_label_probability_to_zero(
    float16_vs_float32_heads,
) -> None:
    """p(label) = e**-18 becomes exactly 0 in the float16 head, so -log p is infinite."""
    probabilities = float16_vs_float32_heads["float16"]
    assert probabilities.dtype == np.float16
    assert np.all(probabilities[:, 0] == 0)
    assert np.all(np.isinf(textbook_cross_entropy(probabilities, np.zeros(4, np.int64))))


def test_the_float32_head_gives_the_float32_reference_loss(float16_vs_float32_heads) -> None:
    """The float32 head keeps p(label) ~ 1.5e-8 and its -log p matches the reference computed
    in float64 from the logits (log-sum-exp minus the label's logit) to 1e-6 relative."""
    probabilities = float16_vs_float32_heads["float32"]
    assert probabilities.dtype == np.float32
    logits = float16_vs_float32_heads["logits"]
    reference = np.log(np.exp(logits).sum(axis=1)) - logits[:, 0]
    losses = textbook_cross_entropy(probabilities, np.zeros(4, np.int64))
    assert all(math.isfinite(loss) for loss in losses)
    np.testing.assert_allclose(losses, reference, rtol=1e-6)
    assert reference[0] == pytest.approx(LOGIT_GAP, abs=1e-6)
