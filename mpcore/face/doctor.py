"""``mpbench doctor``: the software stack, the devices, and what each precision can be expected
to buy on this machine, and why; optionally the seed's "multiples of 8" tip for a model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from mpcore.probe import telemetry
from mpcore.probe.machine import GpuInfo, software_versions, visible_gpus

#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic that oneDNN uses.
CPU_BFLOAT16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a precision is expected to speed training up here (None: it is the baseline)."""

    precision: str
    speeds_up: bool | None
    why: str

    def line(self) -> str:
        label = {True: "expected to speed up", False: "not expected to speed up", None: "baseline"}
        return f"{self.precision:<15} {label[self.speeds_up]}: {self.why}"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` does not exist)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def precision_verdicts(gpus: tuple[GpuInfo, ...], flags: frozenset[str]) -> list[Verdict]:
    """One verdict per precision, for the first GPU (TensorFlow's default device) or the CPU."""
    if not gpus:
        native_bf16 = sorted(flag for flag in CPU_BFLOAT16_FLAGS if flag in flags)
        return [
            Verdict("float32", None, "the reference every speedup is measured against"),
            Verdict("mixed_float16", False, "CPU only: float16 is emulated and slower"),
            Verdict(
                "mixed_bfloat16",
                bool(native_bf16),
                f"CPU only, but it has {', '.join(native_bf16)}: oneDNN runs bfloat16 natively"
                if native_bf16
                else "CPU only: no AVX512-BF16/AMX-BF16 instructions, so bfloat16 is emulated "
                "and slower",
            ),
            Verdict(
                "amp_rewrite",
                False,
                "CPU only: grappler's auto_mixed_precision rewrites GPU graphs only (a no-op "
                "here; the loss-scale wrapper is pure overhead)",
            ),
            Verdict(
                "float8",
                False,
                "CPU only: float8 quantize-dequantize is emulated around bfloat16 matmuls "
                "(slower; it shows the numerics, not a speedup)",
            ),
        ]
    gpu = gpus[0]
    cc = f"compute capability {gpu.capability or 'unknown'}"
    float16_why = (
        f"{gpu.name}, {cc}: tensor cores run float16 matmuls and convolutions"
        if gpu.has_tensor_cores
        else f"{gpu.name}, {cc}: no tensor cores (need 7.0+); float16 saves memory, rarely time"
    )
    return [
        Verdict("float32", None, f"{gpu.name}: the reference every speedup is measured against"),
        Verdict("mixed_float16", gpu.has_tensor_cores, float16_why),
        Verdict(
            "mixed_bfloat16",
            gpu.supports_bfloat16,
            f"{gpu.name}, {cc}: "
            + (
                "bfloat16 tensor cores (8.0+)"
                if gpu.supports_bfloat16
                else "bfloat16 needs compute capability 8.0+ (Ampere); it is emulated here"
            ),
        ),
        Verdict(
            "amp_rewrite",
            gpu.has_tensor_cores,
            "grappler rewrites the float32 graph to float16: " + float16_why,
        ),
        Verdict(
            "float8",
            gpu.supports_float8,
            f"{gpu.name}, {cc}: "
            + (
                "FP8 tensor cores (8.9+) for Dense/EinsumDense layers; XLA (--xla jit) fuses "
                "the quantize-dequantize pairs into FP8 GEMMs"
                if gpu.supports_float8
                else "no FP8 tensor cores (need 8.9+, Ada or Hopper); float8 is emulated here"
            ),
        ),
    ]


def xla_note(gpus: tuple[GpuInfo, ...]) -> str:
    if gpus:
        return (
            "xla jit/auto: may speed up by fusing element-wise ops (most with mixed precision); "
            "the first epoch pays the compilation"
        )
    return "xla jit/auto: compiles for the CPU; expect little gain and a slower first epoch"


def multiple_of_8_findings(
    model_name: str | None, batch_size: int | None, image_size: int | None = None
) -> list[str]:
    """The seed's tip: layers whose units/filters, and a batch size, not multiples of 8."""
    from mpcore.models import build_model, multiple_of_8_report
    from mpcore.modes import RunConfig, applied

    findings = []
    if model_name is not None:
        with applied(RunConfig("float32", "off")):
            model = build_model(model_name, image_size)
            findings = [f"layer {finding}" for finding in multiple_of_8_report(model)]
    if batch_size is not None and batch_size % 8:
        lower, upper = batch_size - batch_size % 8, batch_size + 8 - batch_size % 8
        findings.append(
            f"batch size {batch_size}: not a multiple of 8 (try {lower or upper} or {upper})"
        )
    return findings


def _bytes(value: int | None) -> str:
    return f"{value / 2**30:.1f} GiB" if value is not None else "unknown (NVML unavailable)"


def run_doctor(
    model: str | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    emit: Callable[[str], None] = print,
) -> int:
    """Print the report; returns the exit status (0)."""
    import tensorflow as tf

    versions = software_versions()
    emit(
        f"TensorFlow {versions['tensorflow']} (CUDA build {versions['cuda_build'] or 'none'}, "
        f"cuDNN build {versions['cudnn_build'] or 'none'}), Keras {versions['keras']}, "
        f"Python {versions['python']}, NumPy {versions['numpy']}"
    )
    devices = ", ".join(
        d.name.replace("/physical_device:", "") for d in tf.config.list_physical_devices()
    )
    emit(f"devices: {devices}")
    lib = telemetry.nvml()
    emit(
        f"NVML: available (driver {telemetry.driver_version()}, "
        f"{telemetry.device_count()} device(s))"
        if lib is not None
        else "NVML: unavailable (no NVIDIA driver or library); GPU telemetry will be empty"
    )
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    emit(f"TF32: {'enabled' if tf32 else 'disabled'} (float32 matmuls on compute capability 8.0+)")
    gpus = visible_gpus()
    if not gpus:
        emit("GPUs: none visible to TensorFlow")
    for index, gpu in enumerate(gpus):
        emit(
            f"GPU {index}: {gpu.name}, compute capability {gpu.capability or 'unknown'}, memory "
            f"{_bytes(telemetry.memory_total_bytes(index))}, tensor cores "
            f"{'yes' if gpu.has_tensor_cores else 'no'} (7.0+), bfloat16 "
            f"{'yes' if gpu.supports_bfloat16 else 'no'} (8.0+)"
        )
    emit("")
    verdicts = precision_verdicts(gpus, cpu_flags())
    for verdict in verdicts:
        emit(verdict.line())
    emit(xla_note(gpus))
    if not any(verdict.speeds_up for verdict in verdicts):
        emit(
            "verdict: no GPU is visible to TensorFlow; mixed precision is not expected to speed "
            "up training on this machine"
            if not gpus
            else "verdict: mixed precision is not expected to speed up training on this GPU"
        )
    if model is not None or batch_size is not None:
        emit("")
        findings = multiple_of_8_findings(model, batch_size, image_size)
        what = ", ".join(
            ([f"model {model}"] if model else [])
            + ([f"batch size {batch_size}"] if batch_size else [])
        )
        if findings:
            emit(f"not multiples of 8 in {what} (they miss tensor-core kernels):")
            for finding in findings:
                emit(f"  {finding}")
            if model:
                emit("  (a classification head's units are the class count: that one is expected)")
        else:
            emit(f"{what}: every units/filters count and the batch size are multiples of 8")
    return 0
