"""Facts about this machine and software stack, recorded beside every result."""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from importlib import metadata
from typing import Any

from mpcore.probe import backend
from mpcore.probe.backend import tf


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """One GPU as TensorFlow sees it."""

    name: str
    compute_capability: tuple[int, int] | None

    @property
    def has_tensor_cores(self) -> bool:
        return self.compute_capability is not None and self.compute_capability >= (7, 0)

    @property
    def supports_bfloat16(self) -> bool:
        return self.compute_capability is not None and self.compute_capability >= (8, 0)

    @property
    def supports_float8(self) -> bool:
        """FP8 tensor cores: Ada (8.9) and Hopper (9.0) onwards."""
        return self.compute_capability is not None and self.compute_capability >= (8, 9)

    @property
    def capability(self) -> str | None:
        """The compute capability as NVIDIA writes it (``"7.5"``), None when unknown."""
        cc = self.compute_capability
        return f"{cc[0]}.{cc[1]}" if cc else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compute_capability": self.capability}


@functools.cache
def visible_gpus() -> tuple[GpuInfo, ...]:
    """GPUs visible to the Keras backend (TensorFlow's detection on TensorFlow), with name and
    compute capability (detected once)."""
    if not backend.is_tensorflow():
        return tuple(GpuInfo(name, cc) for name, cc in backend.accelerators())
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (RuntimeError, ValueError):
            details = {}
        cc = details.get("compute_capability")
        gpus.append(GpuInfo(details.get("device_name", device.name), tuple(cc) if cc else None))
    return tuple(gpus)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, Any]:
    """Versions of Python, the Keras backend, TensorFlow (with its CUDA/cuDNN build, None where
    the backend is not TensorFlow), Keras, NumPy and mpbench."""
    build = tf.sysconfig.get_build_info() if backend.is_tensorflow() else {}
    return {
        "python": platform.python_version(),
        **backend.identity(),
        "tensorflow": tf.__version__ if backend.is_tensorflow() else _version("tensorflow"),
        "keras": _version("keras"),
        "numpy": _version("numpy"),
        "mpbench": _version("mpbench"),
        "cuda_build": build.get("cuda_version"),
        "cudnn_build": build.get("cudnn_version"),
    }


def machine_summary() -> dict[str, Any]:
    """Host, CPU count, GPUs, TF32 state and software versions, as a JSON-ready dict."""
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [gpu.to_dict() for gpu in visible_gpus()],
        "tf32_enabled": backend.tf32_enabled(),
        "versions": software_versions(),
    }
