"""A custom training step (``tf.function``) with loss scaling done the Keras 3 way, for custom
training loops and the benchmarks' ``custom`` step kind.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from mpcore.probe.backend import tf


def make_train_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    jit_compile: bool = False,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """A ``tf.function`` training step for custom loops, loss scaling done the Keras 3 way.

    ``optimizer.scale_loss`` multiplies the loss by the dynamic scale inside the tape (the
    identity for optimizers without loss scaling); ``optimizer.apply`` then unscales the
    gradients, skips the update if any is non-finite and adjusts the scale. Returns the unscaled
    loss, so reading it also synchronises the device.

    The loss includes the model's own losses (``model.losses``: weight regularizers, losses
    added by layers), as ``fit``'s ``compute_loss`` does; the registry models have none.
    """
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def train_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            loss = loss_fn(labels, predictions)
            if model.losses:
                # A Keras loss in a replica context is already divided by the replicas (the
                # gradients are summed); the model's own losses are divided the same way.
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                loss += tf.cast(tf.add_n(model.losses), loss.dtype) / replicas
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    return train_step
