"""``mpbench doctor``: the software stack, the devices, and what each precision can be expected
to buy on this machine, and why; optionally the seed's "multiples of 8" tip for a model, and with
``--measure`` verdicts resting on timed matmuls and convolutions (:mod:`mpcore.probe.measure`).

The devices come from :func:`mpcore.probe.capability.capability`, so ``MPBENCH_FAKE_GPU`` makes
the rule-based verdicts those of the simulated GPU, each marked as simulated; measurements always
run on the real devices."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpcore.probe import telemetry
from mpcore.probe.capability import Capability, capability
from mpcore.probe.machine import GpuInfo, software_versions
from mpcore.probe.peaks import FAKE_GPU_ENV

#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic that oneDNN uses.
CPU_BFLOAT16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")

#: A measured rate ratio this far above 1 counts as a speedup (below its inverse: a slowdown);
#: in between the timings of a shared machine cannot tell the two dtypes apart.
SPEEDUP_RATIO = 1.2


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
    from mpcore.models.registry import build_model, multiple_of_8_report
    from mpcore.precision.modes import RunConfig, applied

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


def measured_verdicts(entry: dict[str, Any], flags: frozenset[str]) -> list[Verdict]:
    """Verdicts resting on measured figures: each reduced dtype's rate over float32's, the
    geometric mean over the ops timed (matmul and the 3x3 convolution: a CNN needs both)."""
    on_cpu = not entry["device"].upper().startswith("/GPU")
    native = sorted(flag for flag in CPU_BFLOAT16_FLAGS if flag in flags)
    verdicts = []
    for dtype, precision in (("float16", "mixed_float16"), ("bfloat16", "mixed_bfloat16")):
        by_op = {op: r[dtype] for op, r in entry["ratios"].items() if r.get(dtype) is not None}
        if not by_op:
            verdicts.append(Verdict(precision, False, f"{dtype} did not run here"))
            continue
        ratio = math.prod(by_op.values()) ** (1 / len(by_op))
        each = ", ".join(f"{op} {value:.2g}x" for op, value in by_op.items())
        figure = f"{dtype} runs {ratio:.2g}x float32 (measured: {each})"
        if ratio >= SPEEDUP_RATIO:
            if not on_cpu:
                why = f"tensor cores engaged: {figure}"
            elif dtype == "bfloat16":
                why = f"native bfloat16 instructions engaged: {figure}"
            else:
                why = f"faster here: {figure}"
        elif ratio >= 1 / SPEEDUP_RATIO:
            why = f"no measurable gain: {figure}"
        else:
            why = f"slower: {figure}; {dtype} is emulated or has no fast kernel here"
        if on_cpu:
            why += (
                f"; this CPU has {', '.join(native)}"
                if native
                else "; this CPU has no AVX512-BF16 or AMX-BF16"
            )
        verdicts.append(Verdict(precision, ratio >= SPEEDUP_RATIO, why))
    return verdicts


def measure(cap: Capability) -> list[dict[str, Any]]:
    """Time the math on every real GPU, else on the CPU (a simulated GPU cannot be timed)."""
    from mpcore.probe.measure import measure_all

    devices = [(f"/GPU:{i}", gpu) for i, gpu in enumerate(cap.real_gpus)] or [("/CPU:0", None)]
    return measure_all(devices, cap.tf32_flag)


def _tflops(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def emit_measurements(entries: list[dict[str, Any]], flags: frozenset[str], emit) -> None:
    for entry in entries:
        tf32 = ", float32 as TF32" if entry["tf32"] else ""
        emit(f"measured on {entry['device']} ({entry['name']}{tf32}): TFLOP/s (% of peak)")
        for t in entry["timings"]:
            share = t["fraction_of_peak"]
            peak = f" ({100 * share:.0f}% of {t['peak_tflops']:g})" if share is not None else ""
            what = t["error"] or f"{_tflops(t['tflops'])}{peak}"
            emit(f"  {t['op']:<8} {t['dtype']:<9} {t['shape']:<34} {what}")
        for op, ratio in entry["ratios"].items():
            shown = ", ".join(f"{d}/float32 {_tflops(r)}" for d, r in ratio.items())
            emit(f"  ratios {op}: {shown}")
        emit(
            "  these are kernel ratios (one large op each); mpbench run gives whole-epoch ratios, "
            "pytest benchmarks/ train-step ratios (docs/statistics.md)"
        )
        for verdict in measured_verdicts(entry, flags):
            emit(f"  {verdict.line()}")


def run_doctor(
    model: str | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    emit: Callable[[str], None] = print,
    measured: bool = False,
    as_json: bool = False,
) -> int:
    """Print the report (or one JSON document); returns the exit status (0)."""
    cap = capability()
    flags = cpu_flags()
    if as_json:
        entries = measure(cap) if measured else None
        document = {
            "versions": software_versions(),
            **cap.to_dict(),
            "tf32_active": cap.tf32_active,
            "cpu_bfloat16_flags": sorted(f for f in CPU_BFLOAT16_FLAGS if f in flags),
            "verdicts": [dataclasses.asdict(v) for v in precision_verdicts(cap.gpus, flags)],
            "measurements": entries,
            "measured_verdicts": None
            if entries is None
            else [dataclasses.asdict(v) for v in measured_verdicts(entries[0], flags)],
            "predicted_memory": None
            if model is None
            else {
                p: e.to_dict() for p, e in predicted_memory(model, batch_size, image_size).items()
            },
        }
        emit(json.dumps(document, indent=2))
        return 0
    describe(cap, flags, emit)
    if measured:
        emit("")
        if cap.simulated:
            emit(f"measured on the real devices: {FAKE_GPU_ENV} cannot be timed")
        emit_measurements(measure(cap), flags, emit)
    if model is not None or batch_size is not None:
        emit_multiples_of_8(model, batch_size, image_size, emit)
    if model is not None:
        emit_predicted_memory(model, batch_size, image_size, emit)
    return 0


#: The batch the memory prediction is told at when ``--batch-size`` is not given.
PREDICTION_BATCH = 32


def predicted_memory(
    model_name: str, batch_size: int | None, image_size: int | None
) -> dict[str, Any]:
    """The training memory :func:`mpcore.models.memory.predict_memory` predicts for the registry
    model under float32 and each half precision, by precision."""
    from mpcore.models.memory import predict_memory
    from mpcore.models.registry import build_model
    from mpcore.names import HALF_PRECISIONS
    from mpcore.precision.modes import RunConfig, applied

    estimates = {}
    for precision in ("float32", *HALF_PRECISIONS):
        with applied(RunConfig(precision, "off")):
            built = build_model(model_name, image_size)
            estimates[precision] = predict_memory(built, batch_size or PREDICTION_BATCH)
    return estimates


def emit_predicted_memory(
    model_name: str, batch_size: int | None, image_size: int | None, emit
) -> None:
    """Before any run: how much activation memory half precision saves for the model."""
    from mpcore.models.memory import half_precision_saving
    from mpcore.train.maxbatch import format_bytes

    estimates = predicted_memory(model_name, batch_size, image_size)
    first = next(iter(estimates.values()))
    emit("")
    emit(
        f"predicted training memory of {model_name} at batch {first.batch_size} (weights, "
        "gradients, Adam slots, activations kept for the backward pass; mpbench maxbatch "
        "measures it):"
    )
    for precision, estimate in estimates.items():
        emit(
            f"  {precision}: {format_bytes(estimate.total_bytes)} = "
            f"{format_bytes(estimate.fixed_bytes)} fixed + "
            f"{format_bytes(estimate.activation_bytes_per_sample)} of activations per sample"
        )
    float32 = estimates["float32"]
    for precision, estimate in estimates.items():
        if precision != "float32":
            emit(f"  {precision} {half_precision_saving(float32, estimate)}")


def describe(cap: Capability, flags: frozenset[str], emit: Callable[[str], None]) -> None:
    """The stack, the devices, and the rule-based verdicts (marked when the GPU is simulated)."""
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
    tag = cap.simulated_tag()
    emit(cap.tf32_note() + tag)
    gpus = cap.gpus
    if not gpus:
        emit("GPUs: none visible to TensorFlow" + tag)
    for index, gpu in enumerate(gpus):
        memory = None if cap.simulated else telemetry.memory_total_bytes(index)
        emit(
            f"GPU {index}: {gpu.name}, compute capability {gpu.capability or 'unknown'}, memory "
            f"{_bytes(memory)}, tensor cores "
            f"{'yes' if gpu.has_tensor_cores else 'no'} (7.0+), bfloat16 "
            f"{'yes' if gpu.supports_bfloat16 else 'no'} (8.0+){tag}"
        )
    emit("")
    verdicts = precision_verdicts(gpus, flags)
    for verdict in verdicts:
        emit(verdict.line() + tag)
    emit(xla_note(gpus))
    if not any(verdict.speeds_up for verdict in verdicts):
        emit(
            "verdict: no GPU is visible to TensorFlow; mixed precision is not expected to speed "
            "up training on this machine"
            if not gpus
            else "verdict: mixed precision is not expected to speed up training on this GPU"
        )


def emit_multiples_of_8(
    model: str | None, batch_size: int | None, image_size: int | None, emit
) -> None:
    emit("")
    findings = multiple_of_8_findings(model, batch_size, image_size)
    what = ", ".join(
        ([f"model {model}"] if model else []) + ([f"batch size {batch_size}"] if batch_size else [])
    )
    if findings:
        emit(f"not multiples of 8 in {what} (they miss tensor-core kernels):")
        for finding in findings:
            emit(f"  {finding}")
        if model:
            emit("  (a classification head's units are the class count: that one is expected)")
    else:
        emit(f"{what}: every units/filters count and the batch size are multiples of 8")
