"""Which precision x XLA modes a device can serve meaningfully: the benchmarks' skip reasons and
the caveats printed beside a result that runs but should not be read as a speedup.
"""

from __future__ import annotations

import os

from mpcore.probe.machine import GpuInfo

NO_GPU_REASON = "no GPU visible to TensorFlow"


def cpu_autoclustering_enabled() -> bool:
    """Whether XLA auto-clustering may cluster CPU ops (off unless TF_XLA_FLAGS asks for it)."""
    return "--tf_xla_cpu_global_jit" in os.environ.get("TF_XLA_FLAGS", "")


def skip_reason(
    precision: str, xla: str, gpu: GpuInfo | None, allow_cpu: bool = False
) -> str | None:
    """Why ``precision`` x ``xla`` cannot be benchmarked meaningfully here, or None if it can.

    On a GPU: ``mixed_bfloat16`` needs compute capability 8.0 and ``float8`` 8.9 (FP8 tensor
    cores); grappler's float16 rewrite does nothing below 7.0 (TensorFlow's minimum for it). On
    the CPU (``allow_cpu``), a combination runs when the mode actually takes effect there:
    float32, mixed_float16, mixed_bfloat16 and float8 (emulated) with XLA ``off`` or ``jit``;
    ``amp_rewrite`` never does, and ``auto`` only when TF_XLA_FLAGS contains
    ``--tf_xla_cpu_global_jit``.
    """
    if gpu is None:
        if not allow_cpu:
            return NO_GPU_REASON
        if precision == "amp_rewrite":
            return "grappler auto_mixed_precision is a no-op without a GPU"
        if xla == "auto" and not cpu_autoclustering_enabled():
            return (
                "XLA auto-clustering does not cluster CPU ops "
                "(set TF_XLA_FLAGS=--tf_xla_cpu_global_jit to include it)"
            )
        return None
    shown = gpu.capability or "unknown"
    if precision == "mixed_bfloat16" and not gpu.supports_bfloat16:
        return f"mixed_bfloat16 needs compute capability 8.0+ ({gpu.name} has {shown})"
    if precision == "float8" and not gpu.supports_float8:
        return f"no FP8 tensor cores: float8 needs compute capability 8.9+ ({gpu.name} has {shown})"
    if precision == "amp_rewrite" and not gpu.has_tensor_cores:
        return (
            f"grappler auto_mixed_precision is a no-op below compute capability 7.0 "
            f"({gpu.name} has {shown})"
        )
    return None


def speedup_note(precision: str, gpu: GpuInfo | None) -> str | None:
    """A caveat to print beside a result that runs but should not be read as a speedup."""
    if gpu is not None and precision == "mixed_float16" and not gpu.has_tensor_cores:
        return "no tensor cores (compute capability < 7.0): float16 speedup not expected"
    if gpu is None and precision in ("mixed_float16", "mixed_bfloat16", "float8"):
        return "CPU run: says nothing about a GPU's reduced-precision speedup"
    return None
