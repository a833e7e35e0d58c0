"""Precision: the precision x XLA modes applied to the process and checked on a model, float8
quantization, and what a half-precision cast does to values and gradients (the census)."""
