"""The Keras backend this process runs on (TensorFlow, JAX or PyTorch), in one place.

Keras 3 runs the same mixed-precision machinery (dtype policies, ``LossScaleOptimizer``, float32
heads) on every backend, so most of mpbench is backend-neutral; what is not lives here: the
backend's name and version, which modes it can serve (grappler's rewrite and XLA
auto-clustering exist only in TensorFlow), its device synchronisation, GPUs, peak memory and TF32
state. :data:`tf` is TensorFlow imported on first use (the pattern of Keras's own
``keras.src.utils.module_utils.LazyModule``): modules write ``from mpcore.probe.backend import tf``
and import TensorFlow only when a TensorFlow-only feature actually runs, so the JAX and torch
paths work where TensorFlow is not installed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import types
from collections.abc import Iterator
from importlib import metadata
from typing import Any

#: The distribution whose version is "the backend's version", per Keras backend name.
DISTRIBUTIONS: dict[str, str] = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
#: Precisions and XLA modes only TensorFlow has (grappler's rewrite, auto-clustering).
TENSORFLOW_ONLY_PRECISIONS: frozenset[str] = frozenset({"amp_rewrite"})
TENSORFLOW_ONLY_XLA: frozenset[str] = frozenset({"auto"})
TENSORFLOW_ONLY = "TensorFlow-only"


class TensorFlowRequiredError(ImportError):
    """A TensorFlow-only feature was used where TensorFlow is not installed."""


class _LazyTensorFlow(types.ModuleType):
    """``tensorflow``, imported at the first attribute access."""

    def __getattr__(self, attribute: str) -> Any:
        try:
            module = importlib.import_module("tensorflow")
        except ImportError as error:
            raise TensorFlowRequiredError(
                f"this feature needs TensorFlow, which is not installed (Keras backend: {name()})"
            ) from error
        return getattr(module, attribute)


tf: Any = _LazyTensorFlow("tensorflow")


def name() -> str:
    """The Keras backend in use: ``tensorflow``, ``jax`` or ``torch`` (``numpy`` is possible)."""
    import keras

    return keras.backend.backend()


def is_tensorflow() -> bool:
    return name() == "tensorflow"


def version() -> str | None:
    """The installed version of the backend's framework (e.g. jax's), None if unknown."""
    try:
        return metadata.version(DISTRIBUTIONS.get(name(), name()))
    except metadata.PackageNotFoundError:
        return None


def identity() -> dict[str, str | None]:
    """``{"backend": name, "backend_version": version}``: recorded beside every result."""
    return {"backend": name(), "backend_version": version()}


def unsupported_reason(precision: str, xla: str) -> str | None:
    """Why this backend cannot run ``precision`` x ``xla``, or None if it can."""
    if is_tensorflow():
        return None
    if precision in TENSORFLOW_ONLY_PRECISIONS:
        return f"{precision} (grappler's rewrite) is {TENSORFLOW_ONLY}; the backend is {name()}"
    if xla in TENSORFLOW_ONLY_XLA:
        return f"XLA {xla} (auto-clustering) is {TENSORFLOW_ONLY}; the backend is {name()}"
    return None


def sync() -> None:
    """Wait for the devices: on TensorFlow every queued operation on every device; on torch the
    CUDA stream; on JAX only queued side effects (a computation is waited for by reading its
    result, which is why a timed round reads the loss before calling this)."""
    backend = name()
    if backend == "tensorflow":
        tf.test.experimental.sync_devices()
    elif backend == "jax":
        import jax

        # Dispatch is asynchronous per array; the barrier waits for queued effects, not arrays.
        jax.effects_barrier()
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def wait_for(values: Any) -> None:
    """Wait until the device has computed ``values`` (arrays or Keras variables), then
    :func:`sync`: on JAX reading a result is the only wait for a computation."""
    if name() == "jax":
        import jax

        jax.block_until_ready([getattr(value, "value", value) for value in values])
    sync()


@functools.cache
def accelerators() -> tuple[tuple[str, tuple[int, int] | None], ...]:
    """``(name, compute capability)`` of each GPU the backend sees (detected once)."""
    backend = name()
    if backend == "jax":
        import jax

        found = []
        for device in jax.devices():
            if device.platform != "gpu":
                continue
            capability = getattr(device, "compute_capability", None)
            cc = tuple(int(part) for part in str(capability).split(".")[:2]) if capability else None
            found.append((device.device_kind, cc or _nvml_capability(len(found))))
        return tuple(found)
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return ()
        return tuple(
            (torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))
            for i in range(torch.cuda.device_count())
        )
    return ()


def _nvml_capability(index: int) -> tuple[int, int] | None:
    """GPU ``index``'s compute capability from NVML, for a jaxlib whose devices do not say it."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    except Exception:  # no NVML, no driver, no such GPU: unknown
        return None
    return int(major), int(minor)


def reset_peak_memory(index: int = 0) -> None:
    """Reset the framework's peak-memory counter of GPU ``index`` where it has one (JAX keeps
    its peak since the process started: no reset exists)."""
    if name() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(index)


def peak_memory_bytes(index: int = 0) -> int | None:
    """The framework's peak allocated bytes on GPU ``index``, or None when it has none."""
    backend = name()
    if backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        stats = gpus[index].memory_stats() if len(gpus) > index else None
        return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated(index)) if torch.cuda.is_available() else None
    return None


def tf32_enabled() -> bool:
    """Whether float32 matrix products may run on TF32 tensor cores on this backend.

    TensorFlow and JAX (default matmul precision) allow it on Ampere and newer; PyTorch only
    when ``torch.backends.cuda.matmul.allow_tf32`` is set.
    """
    backend = name()
    if backend == "tensorflow":
        return bool(tf.config.experimental.tensor_float_32_execution_enabled())
    if backend == "jax":
        import jax

        precision = str(jax.config.jax_default_matmul_precision or "default").lower()
        return bool(accelerators()) and precision in ("default", "tensorfloat32", "bfloat16")
    if backend == "torch":
        import torch

        return bool(torch.backends.cuda.matmul.allow_tf32)
    return False


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Float32 matrix products in true float32 inside the block (TF32 off: TensorFlow and JAX
    use TF32 for float32 on Ampere and newer by default), the setting restored after."""
    backend = name()
    if backend == "tensorflow":
        saved = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        try:
            yield
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(saved)
    elif backend == "jax":
        import jax

        with jax.default_matmul_precision("highest"):
            yield
    elif backend == "torch":
        import torch

        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    else:
        yield
