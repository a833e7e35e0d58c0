"""Claim 8: grappler's ``auto_mixed_precision`` rewrite (mpbench's ``amp_rewrite``) changes
nothing without a GPU with tensor cores, and changes the numbers, within float16 error, on one."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mpcore.models.registry import build_model
from mpcore.precision.modes import RunConfig, amp_rewrite_enabled, applied
from mpcore.probe.backend import tf
from mpcore.probe.machine import visible_gpus

HAS_TENSOR_CORES = any(gpu.has_tensor_cores for gpu in visible_gpus())
#: Grappler and tf.function are TensorFlow's: the whole claim is about TensorFlow itself.
pytestmark = pytest.mark.tensorflow_only


def graph_outputs_and_gradients(
    precision: str, weights: list[np.ndarray], images: np.ndarray
) -> list[np.ndarray]:
    """Predictions and loss gradients of the small model from a ``tf.function`` (grappler only
    rewrites graphs) under ``precision``."""
    with applied(RunConfig(precision)):
        assert amp_rewrite_enabled() == (precision == "amp_rewrite")
        model = build_model("small", 32)
        model.set_weights(weights)
        labels = tf.range(images.shape[0]) % 5
        loss_fn = keras.losses.SparseCategoricalCrossentropy()

        @tf.function
        def forward_backward(inputs: tf.Tensor) -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                predictions = model(inputs, training=True)
                loss = loss_fn(labels, predictions)
            return [predictions, *tape.gradient(loss, model.trainable_variables)]

        return [tensor.numpy() for tensor in forward_backward(tf.constant(images))]


@pytest.fixture(scope="module")
def weights_and_images() -> tuple[list[np.ndarray], np.ndarray]:
    with applied(RunConfig("float32")):
        keras.utils.set_random_seed(0)
        weights = build_model("small", 32).get_weights()
    images = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype(np.float32)
    return weights, images


@pytest.mark.cpu(reason="grappler's float16 rewrite converts only nodes placed on a GPU")
def test_amp_rewrite_is_bitwise_a_no_op_without_a_tensor_core_gpu(weights_and_images) -> None:
    """On the CPU the rewrite is switched on but rewrites nothing: predictions and every
    gradient are bitwise equal to the float32 run (and float32, not float16)."""
    reference = graph_outputs_and_gradients("float32", *weights_and_images)
    rewritten = graph_outputs_and_gradients("amp_rewrite", *weights_and_images)
    assert len(rewritten) == len(reference) > 1
    for got, want in zip(rewritten, reference, strict=True):
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want)


@pytest.mark.gpu
def test_amp_rewrite_computes_in_float16_on_a_tensor_core_gpu(weights_and_images) -> None:
    """With tensor cores the rewrite runs the convolutions in float16: the predictions differ
    from float32 (not bitwise equal) but agree to float16 accuracy (1e-2 relative)."""
    if not HAS_TENSOR_CORES:
        pytest.skip("the visible GPU has no tensor cores (compute capability below 7.0)")
    reference = graph_outputs_and_gradients("float32", *weights_and_images)[0]
    rewritten = graph_outputs_and_gradients("amp_rewrite", *weights_and_images)[0]
    assert rewritten.dtype == np.float32
    assert not np.array_equal(rewritten, reference)
    np.testing.assert_allclose(rewritten, reference, rtol=1e-2, atol=1e-3)
