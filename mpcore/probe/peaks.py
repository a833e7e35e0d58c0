"""Datasheet peak throughput per GPU model and math mode, and the simulated GPU variable.

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
import re

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


#: Environment variable that replaces the detected GPUs, for tests only: ``none`` (no GPU) or
#: ``NAME@MAJOR.MINOR`` such as ``Tesla T4@7.5``.
FAKE_GPU_ENV = "MPBENCH_FAKE_GPU"


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
