"""Training one configuration: the settings, ``model.fit`` into a result record, the custom
training step, replica pieces for ``tf.distribute``, and the loss-scale census."""
