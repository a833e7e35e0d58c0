"""What a device can do: datasheet peak throughput, which modes it can serve, model FLOPs.

The peak figures are NVIDIA's datasheet numbers for *dense* math (no structured sparsity), in
TFLOP/s. Datasheets from Ampere's L4 onwards print the sparse figure with an asterisk; the dense
figure is half of it and that is what is stored here. Sources (one per entry in
:data:`DEVICE_PEAKS`):

* T4: "NVIDIA T4 Tensor Core GPU" datasheet (2019): FP32 8.1, mixed FP16/FP32 65.
* V100: "NVIDIA Tesla V100 GPU Accelerator" datasheet (2020): SXM2 FP32 15.7, tensor 125;
  PCIe FP32 14, tensor 112.
* A10: "NVIDIA A10 Tensor Core GPU" datasheet (2021): FP32 31.2, TF32 62.5, BF16/FP16 125.
* A100: "NVIDIA A100 Tensor Core GPU" datasheet (2021, 40 GB and 80 GB, SXM and PCIe):
  FP32 19.5, TF32 156, BF16/FP16 312.
* L4: "NVIDIA L4 Tensor Core GPU" datasheet (2023): FP32 30.3, TF32 120*, BF16/FP16 242*,
  FP8 485* (* sparse; dense 60, 121 and 242.5).
* H100: "NVIDIA H100 Tensor Core GPU" datasheet (2023): SXM FP32 67, TF32 989*, BF16/FP16 1979*,
  FP8 3958*; PCIe FP32 51, TF32 756*, BF16/FP16 1513*, FP8 3026*; NVL FP32 60, TF32 835*,
  BF16/FP16 1671*, FP8 3341* (* sparse; dense is half).
* H200: "NVIDIA H200 Tensor Core GPU" datasheet (2024): SXM FP32 67, TF32 989*,
  BF16/FP16 1979*, FP8 3958*; NVL FP32 60, TF32 835*, BF16/FP16 1671*, FP8 3341* (* sparse;
  dense is half).

GPUs before Ada (compute capability 8.9) have no FP8 tensor cores: their ``fp8`` is None.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import keras

from mpcore.probe.machine import GpuInfo


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    """Dense peak TFLOP/s of one GPU model per math mode (None: the mode has no fast path)."""

    name: str
    fp32: float
    tf32: float | None
    fp16: float
    bf16: float | None
    fp8: float | None = None


#: (pattern matched against the device name TensorFlow/NVML reports, peaks), most specific first.
# One entry a line, keywords spelled out: tools/mutate.py plants wrong figures here.
# fmt: off
DEVICE_PEAKS: tuple[tuple[str, DevicePeak], ...] = (
    (r"\bT4\b", DevicePeak("T4", fp32=8.1, tf32=None, fp16=65.0, bf16=None)),
    (r"\bV100\b.*\bPCIE\b", DevicePeak("V100 PCIe", fp32=14.0, tf32=None, fp16=112.0, bf16=None)),
    (r"\bV100\b", DevicePeak("V100 SXM2", fp32=15.7, tf32=None, fp16=125.0, bf16=None)),
    (r"\bA10\b", DevicePeak("A10", fp32=31.2, tf32=62.5, fp16=125.0, bf16=125.0)),
    (r"\bA100\b", DevicePeak("A100", fp32=19.5, tf32=156.0, fp16=312.0, bf16=312.0)),
    (r"\bL4\b", DevicePeak("L4", fp32=30.3, tf32=60.0, fp16=121.0, bf16=121.0, fp8=242.5)),
    (r"\bH100\b.*\bPCIE\b", DevicePeak("H100 PCIe", fp32=51.0, tf32=378.0, fp16=756.5, bf16=756.5, fp8=1513.0)),  # noqa: E501
    (r"\bH100\b.*\bNVL\b", DevicePeak("H100 NVL", fp32=60.0, tf32=417.5, fp16=835.5, bf16=835.5, fp8=1670.5)),  # noqa: E501
    (r"\bH100\b", DevicePeak("H100 SXM", fp32=67.0, tf32=494.5, fp16=989.5, bf16=989.5, fp8=1979.0)),  # noqa: E501
    (r"\bH200\b.*\bNVL\b", DevicePeak("H200 NVL", fp32=60.0, tf32=417.5, fp16=835.5, bf16=835.5, fp8=1670.5)),  # noqa: E501
    (r"\bH200\b", DevicePeak("H200 SXM", fp32=67.0, tf32=494.5, fp16=989.5, bf16=989.5, fp8=1979.0)),  # noqa: E501
)
# fmt: on

#: Environment variable that replaces the detected GPUs, for tests only: ``none`` (no GPU) or
#: ``NAME@MAJOR.MINOR`` such as ``Tesla T4@7.5``.
FAKE_GPU_ENV = "MPBENCH_FAKE_GPU"

NO_GPU_REASON = "no GPU visible to TensorFlow"


def device_peak(device_name: str | None) -> DevicePeak | None:
    """The datasheet peaks of the GPU called ``device_name``, or None if it is not in the table."""
    if not device_name:
        return None
    upper = device_name.upper()
    for pattern, peak in DEVICE_PEAKS:
        if re.search(pattern, upper):
            return peak
    return None


def peak_tflops(peak: DevicePeak | None, precision: str, tf32_enabled: bool) -> float | None:
    """The dense peak TFLOP/s that bounds ``precision`` on a device, or None if unknown.

    ``float32`` runs on TF32 tensor cores where TensorFlow enables TF32 (its default on Ampere
    and newer); both float16 precisions run on float16 tensor cores; ``float8`` is bounded by the
    FP8 tensor cores (None below compute capability 8.9).
    """
    if peak is None:
        return None
    if precision == "float32":
        return peak.tf32 if tf32_enabled and peak.tf32 is not None else peak.fp32
    if precision == "mixed_bfloat16":
        return peak.bf16
    if precision == "float8":
        return peak.fp8
    return peak.fp16


def parse_fake_gpu(value: str) -> tuple[GpuInfo, ...]:
    """Parse a :data:`FAKE_GPU_ENV` value; raise ``ValueError`` with one line if it is malformed."""
    text = value.strip()
    if text.lower() == "none":
        return ()
    match = re.fullmatch(r"(.+)@(\d+)\.(\d+)", text)
    if not match or not match.group(1).strip():
        raise ValueError(
            f"{FAKE_GPU_ENV}={value!r} is not 'none' or 'NAME@MAJOR.MINOR' (e.g. 'Tesla T4@7.5')"
        )
    name, major, minor = match.group(1).strip(), int(match.group(2)), int(match.group(3))
    return (GpuInfo(name, (major, minor)),)


def benchmark_gpus(detected: tuple[GpuInfo, ...]) -> tuple[tuple[GpuInfo, ...], bool]:
    """The GPUs skip decisions are made for, and whether they are simulated via the environment."""
    fake = os.environ.get(FAKE_GPU_ENV)
    if fake is None:
        return detected, False
    return parse_fake_gpu(fake), True


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


_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def layer_forward_flops(layer: keras.layers.Layer) -> int:
    """FLOPs of one image's forward pass through ``layer`` as :func:`forward_flops` counts them
    (a nested model counts its layers; layers other than Conv and Dense count 0)."""
    if isinstance(layer, keras.Model):
        return forward_flops(layer)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # Kernel (h, w, channels, multiplier): each output element sees one h x w window.
        outputs = math.prod(int(d) for d in layer.output.shape[1:])
        return 2 * outputs * math.prod(int(d) for d in layer.kernel.shape[:-2])
    if isinstance(layer, (*_CONVOLUTIONS, keras.layers.Dense)):
        # Each output element needs one multiply-add per kernel weight feeding it:
        # kernel (..., fan_in, out) for Conv (fan_in already divided by groups) and Dense.
        outputs = math.prod(int(d) for d in layer.output.shape[1:])
        fan_in = math.prod(int(d) for d in layer.kernel.shape[:-1])
        return 2 * outputs * fan_in
    return 0


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one image's forward pass: 2 x the multiply-adds of Conv and Dense layers.

    These hold more than 99% of the arithmetic of CNNs such as ResNet50; normalisation,
    activations, pooling and bias adds are not counted. Nested models are counted through.
    """
    return sum(layer_forward_flops(layer) for layer in model.layers)


def training_flops_per_step(model: keras.Model, batch_size: int) -> int:
    """FLOPs of one training step: forward plus backward (about twice the forward), x batch."""
    return 3 * forward_flops(model) * batch_size
