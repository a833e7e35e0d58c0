"""Measured math throughput per device and dtype: what ``mpbench doctor --measure`` rests on.

A square matmul and one 3x3 convolution are timed in float32, float16 and bfloat16 on each
device TensorFlow can place work on (every GPU, else the CPU). The problem is sized adaptively:
the float32 matmul grows until one call takes :data:`TARGET_SECONDS`, so a fast GPU gets a large
problem and a loaded CPU a small one; every dtype then times the same shapes, so the ratios
compare like with like. Ops are dispatched eagerly (distinct calls, so grappler cannot merge
them) and the clock stops when a scalar reduced from the last result has been copied to the
host, which waits for the device's queue.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import tensorflow as tf

from mpcore.probe.devices import device_peak
from mpcore.probe.machine import GpuInfo

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: Seconds one float32 matmul should take once sized; a GPU reaches its cap first.
TARGET_SECONDS = 0.05
#: Largest matmul side tried; float32 at 8192 is 1.1 TFLOP per call.
MAX_SIDE = 8192
#: Each dtype's timing stops after this many seconds (at least two calls are timed).
BUDGET_SECONDS = 0.4

_PEAK_FIELD = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclasses.dataclass(frozen=True)
class Timing:
    """One op in one dtype on one device."""

    op: str
    dtype: str
    shape: str
    flops: int
    seconds: float | None
    tflops: float | None
    peak_tflops: float | None
    error: str | None = None

    @property
    def fraction_of_peak(self) -> float | None:
        if self.tflops is None or not self.peak_tflops:
            return None
        return self.tflops / self.peak_tflops

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fraction_of_peak": self.fraction_of_peak}


def _finish(result: tf.Tensor) -> None:
    """Wait until ``result`` has been computed: copy one scalar of it to the host."""
    tf.reshape(result, [-1])[0].numpy()


def _time(call, budget: float | None = None) -> float:
    """Median seconds of one call: one untimed warm-up, then calls until ``budget`` is spent."""
    budget = BUDGET_SECONDS if budget is None else budget
    _finish(call())
    times: list[float] = []
    while len(times) < 2 or (sum(times) < budget and len(times) < 20):
        start = time.perf_counter()
        _finish(call())
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def matmul_side(device: str, target: float | None = None, limit: int = MAX_SIDE) -> int:
    """The float32 matmul side (a multiple of 128) whose one call takes about ``target``."""
    target = TARGET_SECONDS if target is None else target
    side = 256
    with tf.device(device):
        while side < limit:
            a = tf.random.normal([side, side])
            seconds = _time(lambda a=a: tf.linalg.matmul(a, a), budget=0.0)
            if seconds >= target:
                break
            # Time grows as side**3: jump most of the way, at most 4x the side at once.
            grow = min(4.0, max(1.25, (target / max(seconds, 1e-6)) ** (1 / 3)))
            side = min(limit, int(side * grow) // 128 * 128)
    return side


def _peak(device_name: str | None, dtype: str, tf32: bool) -> float | None:
    peak = device_peak(device_name)
    if peak is None:
        return None
    if dtype == "float32" and tf32 and peak.tf32 is not None:
        return peak.tf32
    return getattr(peak, _PEAK_FIELD[dtype])


def _measure_op(op: str, shape: str, flops: int, make, dtype: str, peak: float | None) -> Timing:
    try:
        call = make(tf.as_dtype(dtype))
        seconds = _time(call)
    except (tf.errors.OpError, TypeError, ValueError) as error:
        # e.g. no kernel for the dtype on this device: say so instead of failing the report.
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        return Timing(op, dtype, shape, flops, None, None, peak, f"{type(error).__name__}: {first}")
    return Timing(op, dtype, shape, flops, seconds, flops / seconds / 1e12, peak)


def measure_device(
    device: str, device_name: str | None, tf32: bool, side: int | None = None
) -> list[Timing]:
    """Matmul and 3x3 convolution timings in every dtype of :data:`DTYPES` on ``device``."""
    side = side or matmul_side(device)
    # The convolution does about as much work as the matmul: batch x 56 x 56 x 128 -> 128.
    channels, hw = 128, 56
    batch = max(1, round(side**3 / (hw * hw * channels * channels * 9)))
    conv_flops = 2 * batch * hw * hw * channels * channels * 9
    timings = []
    with tf.device(device):
        a32 = tf.random.normal([side, side])
        x32 = tf.random.normal([batch, hw, hw, channels])
        k32 = tf.random.normal([3, 3, channels, channels], stddev=0.05)
        for dtype in DTYPES:
            peak = _peak(device_name, dtype, tf32)

            def matmul(dt, a32=a32):
                a = tf.cast(a32, dt)
                return lambda: tf.linalg.matmul(a, a)

            def conv(dt, x32=x32, k32=k32):
                x, k = tf.cast(x32, dt), tf.cast(k32, dt)
                return lambda: tf.nn.conv2d(x, k, strides=1, padding="SAME")

            timings.append(
                _measure_op("matmul", f"{side}x{side}x{side}", 2 * side**3, matmul, dtype, peak)
            )
            shape = f"{batch}x{hw}x{hw}x{channels} * 3x3x{channels}x{channels}"
            timings.append(_measure_op("conv3x3", shape, conv_flops, conv, dtype, peak))
    return timings


def ratios(timings: list[Timing], op: str) -> dict[str, float | None]:
    """``{"float16": x, "bfloat16": y}``: each dtype's TFLOP/s over float32's for ``op``."""
    rate = {t.dtype: t.tflops for t in timings if t.op == op}
    base = rate.get("float32")
    return {
        dtype: (rate[dtype] / base if base and rate.get(dtype) else None)
        for dtype in DTYPES
        if dtype != "float32"
    }


def measure_all(devices: list[tuple[str, GpuInfo | None]], tf32: bool) -> list[dict[str, Any]]:
    """One entry per ``(TensorFlow device, its GPU or None for the CPU)``: timings and ratios."""
    results = []
    for device, gpu in devices:
        tf32_here = tf32 and gpu is not None and gpu.supports_bfloat16
        timings = measure_device(device, gpu.name if gpu else None, tf32_here)
        results.append(
            {
                "device": device,
                "name": gpu.name if gpu else "CPU",
                "tf32": tf32_here,
                "timings": [t.to_dict() for t in timings],
                "ratios": {op: ratios(timings, op) for op in ("matmul", "conv3x3")},
            }
        )
    return results
