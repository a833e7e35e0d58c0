"""The ship data: the seed layout read into a tf.data pipeline, the split, bad-image checks, the
fingerprint, and the learnable generated set."""
