"""The loss-scale census of ``mpbench numerics``: what a half-precision cast does to a fresh
registry model's float32 gradients, without loss scaling and at the initial loss scale.
"""

from __future__ import annotations

from typing import Any

import keras

from mpcore.models.registry import build_model, model_spec
from mpcore.precision.modes import RunConfig, applied
from mpcore.train.fit import compile_for, current_loss_scale


def loss_scale_census(
    model_name: str, image_size: int, batch_size: int, seed: int, dtype: str
) -> list[tuple[float, Any]]:
    """What a cast to ``dtype`` does to a fresh registry model's float32 gradients on a batch of
    generated ships, with no loss scaling and at the ``LossScaleOptimizer``'s initial scale:
    ``[(scale, GradientCensus), ...]`` (see :func:`mpcore.precision.census.gradient_census`)."""
    from mpcore.data.synthetic import generated_batch
    from mpcore.precision.census import gradient_censuses

    float32 = RunConfig("float32", "off")
    with applied(float32):
        keras.utils.set_random_seed(seed)
        # The census needs float32 gradients: it asks what a half-precision cast would do to them.
        model = compile_for(build_model(model_name, image_size), float32, learning_rate=1e-3)
        batch = generated_batch(model_spec(model_name).preprocess, image_size, batch_size, seed)
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
        optimizer.build(model.trainable_variables)
        scales = [1.0, current_loss_scale(optimizer) or 1.0]
        return list(zip(scales, gradient_censuses(model, batch, scales, dtype=dtype), strict=True))
