"""The numerics suite: mixed-precision numerics claims proved on a CPU (``pytest numerics/``)."""
