"""GPU and process telemetry. NVML is initialised once per process; every query answers None
when NVML, its driver or the GPU is missing, so callers never need a GPU to run.

Modelled on dask's ``nvml.py``: one place owns initialisation and degrades to "unknown".
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType, TracebackType
from typing import Any

from mpcore.probe.backend import tf

SAMPLE_FIELDS: tuple[str, ...] = (
    "memory_used_bytes",
    "utilization_percent",
    "power_watts",
    "temperature_c",
    "sm_clock_mhz",
)


@functools.cache
def nvml() -> ModuleType | None:
    """The initialised ``pynvml`` module (from ``nvidia-ml-py``), or None if NVML is unusable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # ImportError, NVMLError_LibraryNotFound, driver errors: all mean "unknown"
        return None
    return pynvml


def _query(call: Callable[[ModuleType], Any]) -> Any:
    lib = nvml()
    if lib is None:
        return None
    try:
        return call(lib)
    except Exception:  # a query the device or driver does not support
        return None


def nvml_index(index: int) -> int:
    """NVML's index of TensorFlow's ``GPU:index``. NVML ignores ``CUDA_VISIBLE_DEVICES`` while
    TensorFlow numbers only the visible GPUs, so a list of indices there is followed (exact when
    CUDA enumerates in PCI order, as NVML does: ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, or identical
    GPUs); UUIDs or no list leave the index as it is."""
    entries = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    if index < len(entries) and entries[index].isdigit():
        return int(entries[index])
    return index


def _handle(lib: ModuleType, index: int) -> Any:
    """The NVML handle of TensorFlow's ``GPU:index``."""
    return lib.nvmlDeviceGetHandleByIndex(nvml_index(index))


def device_count() -> int | None:
    return _query(lambda lib: lib.nvmlDeviceGetCount())


def driver_version() -> str | None:
    version = _query(lambda lib: lib.nvmlSystemGetDriverVersion())
    return version.decode() if isinstance(version, bytes) else version


def device_name(index: int = 0) -> str | None:
    name = _query(lambda lib: lib.nvmlDeviceGetName(_handle(lib, index)))
    return name.decode() if isinstance(name, bytes) else name


def memory_total_bytes(index: int = 0) -> int | None:
    return _query(lambda lib: int(lib.nvmlDeviceGetMemoryInfo(_handle(lib, index)).total))


def sample(index: int = 0) -> dict[str, float | None]:
    """One reading of the fields in :data:`SAMPLE_FIELDS` for GPU ``index`` (None = unknown)."""
    return {
        "memory_used_bytes": _query(
            lambda lib: int(lib.nvmlDeviceGetMemoryInfo(_handle(lib, index)).used)
        ),
        "utilization_percent": _query(
            lambda lib: float(lib.nvmlDeviceGetUtilizationRates(_handle(lib, index)).gpu)
        ),
        "power_watts": _query(
            lambda lib: lib.nvmlDeviceGetPowerUsage(_handle(lib, index)) / 1000.0
        ),
        "temperature_c": _query(
            lambda lib: float(lib.nvmlDeviceGetTemperature(_handle(lib, index), 0))
        ),
        "sm_clock_mhz": _query(
            lambda lib: float(lib.nvmlDeviceGetClockInfo(_handle(lib, index), lib.NVML_CLOCK_SM))
        ),
    }


class Sampler:
    """Background sampling of GPU ``index`` every ``interval`` seconds (about 10 Hz by default).

    Use as a context manager; afterwards ``series`` holds ``{"t": seconds, **sample}`` rows and
    :meth:`peak` / :meth:`mean` summarise one field (None when it was never known). Without NVML
    the thread is not started and the series stays empty.
    """

    def __init__(self, index: int = 0, interval: float = 0.1) -> None:
        self.index = index
        self.interval = interval
        self.series: list[dict[str, float | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.series.append({"t": time.perf_counter() - self._start, **sample(self.index)})
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._start = time.perf_counter()
        if nvml() is not None and device_count():
            self._thread = threading.Thread(target=self._run, name="mpbench-nvml", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        _kind: type[BaseException] | None,
        _error: BaseException | None,
        _trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _known(self, field: str) -> list[float]:
        return [row[field] for row in self.series if row.get(field) is not None]

    def peak(self, field: str) -> float | None:
        values = self._known(field)
        return max(values) if values else None

    def mean(self, field: str) -> float | None:
        values = self._known(field)
        return sum(values) / len(values) if values else None

    def summary(self) -> dict[str, Any]:
        """Peak and mean of every field, JSON-ready."""
        return {
            field: {"peak": self.peak(field), "mean": self.mean(field)} for field in SAMPLE_FIELDS
        }


def reset_tf_peak_memory(device: str = "GPU:0") -> None:
    """Reset TensorFlow's peak-memory counter of ``device`` (no-op where it is unsupported)."""
    with contextlib.suppress(ValueError, RuntimeError):
        tf.config.experimental.reset_memory_stats(device)


def tf_peak_memory_bytes(device: str = "GPU:0") -> int | None:
    """TensorFlow's peak allocated bytes on ``device`` since the last reset, or None."""
    try:
        return int(tf.config.experimental.get_memory_info(device)["peak"])
    except (ValueError, RuntimeError, KeyError):
        return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
