"""FP8 claim 4: float8 training of a Dense-heavy model costs little accuracy. ``vit_tiny``
(every matmul a Dense or EinsumDense) trained on the generated ship set with the same seed,
data and epochs under ``mixed_bfloat16``, and under ``mixed_bfloat16`` with Keras's float8
quantization (:func:`mpcore.precision.fp8.quantize_float8`), ends within 5 points of validation
accuracy. On this CPU the FP8 GEMMs are emulated (quantize-dequantize in bfloat16), which is the
same arithmetic a GPU's fused FP8 GEMM does up to accumulation order.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from mpcore.data.ships import make_dataset, read_ship_index, stratified_split
from mpcore.data.synthetic import write_synthetic_ships
from mpcore.models.registry import build_model, model_spec
from mpcore.precision.fp8 import float8_candidates, float8_report
from mpcore.precision.modes import RunConfig, applied, check_model
from mpcore.train.fit import build_before_tracing, compile_for
from mpcore.train.settings import op_determinism

#: The data is a tf.data pipeline: TensorFlow-only (the float8 layers exist on every backend).
pytestmark = pytest.mark.tensorflow_only

#: 100 images per class at 40 px (25 patches, 48 px's 36 cost a third more), a fifth held out:
#: 100 validation images, 1 point each (with 60, a single run's 3-image gap already hit the
#: 5-point margin; at 32 px one run's 4-point gap came as near).
PER_CLASS, IMAGE_SIZE, BATCH, EPOCHS, LEARNING_RATE = 100, 40, 16, 6, 1e-3
PARITY_POINTS = 5.0
#: patch embedding + 3 blocks x (4 attention projections + 2 MLP layers); not the head.
QUANTIZED_LAYERS = 19


def fit(precision: str, train_data, validation_data) -> dict:
    """Train vit_tiny under ``mixed_bfloat16`` or ``float8`` (the float8 mode: built under
    mixed_bfloat16, then quantized by ``compile_for``), checked by ``check_model``."""
    config = RunConfig(precision)
    with applied(config), op_determinism(True):
        keras.utils.set_random_seed(0)
        model = compile_for(build_model("vit_tiny", IMAGE_SIZE), config, LEARNING_RATE)
        check_model(model, config)  # float8: every candidate quantized, the head float32
        quantized = [
            layer.name for layer in float8_candidates(model) if layer.quantization_mode == "float8"
        ]
        build_before_tracing(model, train_data)  # as train() does: one trace, not two
        history = model.fit(train_data, epochs=EPOCHS, shuffle=False, verbose=0).history
        histories = [
            layer.inputs_amax_history.numpy() for layer in float8_candidates(model) if quantized
        ]
        return {
            "val_accuracy": [accuracy(model, validation_data)],
            "loss": history["loss"],
            "quantized": quantized,
            "report": float8_report(model),
            "amax_histories": histories,
        }


def accuracy(model: keras.Model, data) -> float:
    """The trained model's accuracy on ``data``, from one eager inference pass over all of it.
    Only the final accuracy is compared, so ``fit`` does not validate: its validation would
    trace and optimize a test step to run it once (measured with ``evaluate``: 0.8 CPU seconds
    for bfloat16, 2.2 for float8, against 0.3 and 0.5 eagerly, the same accuracies). Inference
    mode: the float8 layers use their scales and leave their amax histories alone, as in
    ``fit``'s validation."""
    images, labels = next(iter(data.unbatch().batch(PER_CLASS * 5)))
    predicted = np.argmax(keras.ops.convert_to_numpy(model(images, training=False)), axis=-1)
    return float(np.mean(predicted == labels.numpy()))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = write_synthetic_ships(
        tmp_path_factory.mktemp("fp8-ships"), per_class=PER_CLASS, image_size=IMAGE_SIZE
    )
    train_index, validation_index = stratified_split(read_ship_index(root), 0.2, seed=0)
    # The shuffle's op seed combines with the global seed, which earlier tests may have set.
    keras.utils.set_random_seed(0)
    preprocess = model_spec("vit_tiny").preprocess
    train_data = make_dataset(train_index, IMAGE_SIZE, BATCH, preprocess, seed=0, cache=True)
    validation_data = make_dataset(
        validation_index, IMAGE_SIZE, BATCH, preprocess, shuffle=False, cache=True
    )
    return {p: fit(p, train_data, validation_data) for p in ("mixed_bfloat16", "float8")}


@pytest.mark.slow
def test_float8_quantizes_every_dense_and_einsum_dense_but_the_head(results) -> None:
    """19 layers are quantized, the head is not and computes in float32, and every quantized
    layer's input amax history recorded one positive amax per training step."""
    float8 = results["float8"]
    assert len(float8["quantized"]) == QUANTIZED_LAYERS
    assert "predictions" not in float8["quantized"]
    assert float8["report"] == []
    steps = EPOCHS * math.ceil(PER_CLASS * 5 * 0.8 / BATCH)
    for history in float8["amax_histories"]:
        assert np.count_nonzero(history) == steps  # history length 1024 > steps


@pytest.mark.slow
def test_float8_reaches_the_bfloat16_validation_accuracy_within_5_points(results) -> None:
    """Measured (op determinism on, global seed 0) after 6 epochs at 40 px: mixed_bfloat16 0.98,
    float8 0.99 (TensorFlow 2.21, Keras 3.15; 1.00 and 1.00 at 48 px; 0.97 and 0.99 at 48 px
    under TensorFlow 2.16, Keras 3.10, where 4 epochs left bfloat16 at 0.84). The reference
    learns the set (above 90%, chance is 20%) and the float8 losses stay finite. Compared in
    whole images, so float32 rounding of the accuracies cannot decide a tie at the margin."""
    bf16, float8 = results["mixed_bfloat16"], results["float8"]
    assert bf16["val_accuracy"][-1] >= 0.9
    assert all(math.isfinite(loss) for loss in float8["loss"])
    images = PER_CLASS * 5 // 5  # the held-out fifth
    correct = [round(r["val_accuracy"][-1] * images) for r in (bf16, float8)]
    gap = 100 * abs(correct[0] - correct[1]) / images
    assert gap <= PARITY_POINTS, f"float8 {float8['val_accuracy']} vs bf16 {bf16['val_accuracy']}"
