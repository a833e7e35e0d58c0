"""Facts about this machine and software stack, recorded beside every result."""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from importlib import metadata
from typing import Any

import tensorflow as tf


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
    """GPUs visible to TensorFlow, with name and compute capability (detected once)."""
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
    """Versions of Python, TensorFlow (with its CUDA/cuDNN build), Keras, NumPy and mpbench."""
    build = tf.sysconfig.get_build_info()
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
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
        "tf32_enabled": tf.config.experimental.tensor_float_32_execution_enabled(),
        "versions": software_versions(),
    }
