"""The one answer to "what device am I deciding for?": every device-dependent decision asks here.

Profile choice, the op-determinism default, benchmark skips, doctor verdicts, report notes, peak
figures and TF32 notes all read :func:`capability`. ``MPBENCH_FAKE_GPU`` (``none`` or
``NAME@MAJOR.MINOR``, e.g. ``Tesla T4@7.5``) replaces the detected GPUs for every one of those
decisions, so a CPU can play a T4 or an H100 while the arithmetic still runs where TensorFlow
places it (:attr:`Capability.real_gpus`); results then record ``gpu_simulated: true``.

Placement (which devices a strategy mirrors over, where a benchmark runs, whether TensorFlow's
GPU memory counters exist) is not a decision about capability: it follows the real devices.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from mpcore.probe import backend
from mpcore.probe.machine import GpuInfo, machine_summary, visible_gpus
from mpcore.probe.peaks import FAKE_GPU_ENV, DevicePeak, device_peak, parse_fake_gpu, peak_tflops
from mpcore.probe.skips import skip_reason, speedup_note


@dataclasses.dataclass(frozen=True)
class Capability:
    """The GPUs decisions are made for, whether they are simulated, and TensorFlow's TF32 flag."""

    gpus: tuple[GpuInfo, ...]
    simulated: bool
    real_gpus: tuple[GpuInfo, ...]
    tf32_flag: bool

    @property
    def gpu(self) -> GpuInfo | None:
        """The first GPU (TensorFlow's default device), None for the CPU."""
        return self.gpus[0] if self.gpus else None

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def tf32_active(self) -> bool:
        """Whether float32 matmuls and convolutions run as TF32 (flag on and compute 8.0+)."""
        return self.tf32_flag and self.gpu is not None and self.gpu.supports_bfloat16

    @property
    def deterministic_default(self) -> bool:
        """Op determinism by default on the CPU (free there); off on a GPU, where it costs."""
        return not self.gpus

    @property
    def peaks(self) -> DevicePeak | None:
        return device_peak(self.gpu.name if self.gpu else None)

    def peak_tflops(self, precision: str) -> float | None:
        """The datasheet dense peak bounding ``precision`` on the first GPU (None: unknown)."""
        return peak_tflops(self.peaks, precision, self.tf32_active)

    def skip_reason(self, precision: str, xla: str, allow_cpu: bool = False) -> str | None:
        return skip_reason(precision, xla, self.gpu, allow_cpu)

    def speedup_note(self, precision: str) -> str | None:
        """The caveat beside a result: the TF32 note for float32, else the device's caveat."""
        if precision == "float32" and self.tf32_active:
            return "runs as TF32 on tensor cores (TensorFlow's default on 8.0+)"
        return speedup_note(precision, self.gpu)

    def tf32_note(self) -> str:
        """One line on TF32 for the doctor and the reports."""
        if self.tf32_active:
            return tf32_note(self.gpu)
        if not self.tf32_flag:
            return "TF32: disabled (float32 runs in full float32)"
        return "TF32: enabled but unused here (needs compute capability 8.0+)"

    def simulated_tag(self) -> str:
        """`` (simulated by MPBENCH_FAKE_GPU)`` when simulated, else empty."""
        return f" (simulated by {FAKE_GPU_ENV})" if self.simulated else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpus": [gpu.to_dict() for gpu in self.gpus],
            "gpu_simulated": self.simulated,
            "tf32_enabled": self.tf32_flag,
        }


def tf32_note(gpu: GpuInfo | None) -> str:
    name = gpu.name if gpu else "this GPU"
    return (
        f"TF32: float32 matmuls and convolutions run as TF32 on {name} (TensorFlow's default on "
        "compute capability 8.0+: 10-bit mantissa); "
        "tf.config.experimental.enable_tensor_float_32_execution(False) for true float32"
    )


def capability() -> Capability:
    """What every device-dependent decision is made for; raises ``ValueError`` (one line) when
    ``MPBENCH_FAKE_GPU`` is malformed. Read afresh each call: tests set the variable."""
    real = visible_gpus()
    fake = os.environ.get(FAKE_GPU_ENV)
    gpus, simulated = (real, False) if fake is None else (parse_fake_gpu(fake), True)
    return Capability(gpus, simulated, real, backend.tf32_enabled())


def machine_record() -> dict[str, Any]:
    """:func:`machine_summary` with the GPUs decisions were made for and ``gpu_simulated``."""
    record = machine_summary()
    record.update(capability().to_dict())
    return record
