"""Measured math throughput per device and dtype: what ``mpbench doctor --measure`` rests on.

A square matmul and one 3x3 convolution are timed in float32, float16 and bfloat16 on each
device TensorFlow can place work on (every GPU, else the CPU). The problem is sized adaptively:
the float32 matmul grows until one call takes :data:`TARGET_SECONDS`, so a fast GPU gets a large
problem and a loaded CPU a small one; every dtype then times the same shapes, so the ratios
compare like with like, and the dtypes are sampled in turn, so a shared machine's changing load
falls on each alike. Ops are dispatched eagerly (distinct calls, so grappler cannot merge
them) and the clock stops when a scalar reduced from the last result has been copied to the
host, which waits for the device's queue.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from mpcore.probe.backend import tf  # doctor --measure times TensorFlow ops
from mpcore.probe.machine import GpuInfo
from mpcore.probe.peaks import device_peak

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: Seconds one float32 matmul should take once sized; a GPU reaches its cap first.
TARGET_SECONDS = 0.05
#: Largest matmul side tried; float32 at 8192 is 1.1 TFLOP per call.
MAX_SIDE = 8192
#: Each dtype's timing stops after this many seconds (at least two samples are timed).
BUDGET_SECONDS = 0.4
#: A timed sample repeats a short call until it lasts about this long (one wait per sample).
SAMPLE_SECONDS = 0.02

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


def _sample(call, repeat: int) -> float:
    """Seconds per call of ``repeat`` calls back to back and one wait at the end."""
    start = time.perf_counter()
    for _ in range(repeat - 1):
        call()
    _finish(call())
    return (time.perf_counter() - start) / repeat


def _repeat(call) -> int:
    """Calls per sample: one untimed warm-up says how many last :data:`SAMPLE_SECONDS`, so the
    wait's own latency does not inflate a fast GPU's short calls."""
    seconds = _sample(call, 1)
    return max(1, min(50, int(SAMPLE_SECONDS / max(seconds, 1e-6))))


def time_interleaved(calls: dict[str, Any], budget: float | None = None) -> dict[str, float]:
    """Best seconds per call of each of ``calls``, sampled in turn (one sample of each per
    round) so that a shared machine's changing load falls on every dtype alike; rounds go on
    until ``budget`` seconds per call are spent (at least two rounds, at most twenty)."""
    budget = BUDGET_SECONDS if budget is None else budget
    repeats = {name: _repeat(call) for name, call in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    spent = 0.0
    rounds = 0
    while rounds < 2 or (spent < budget * len(calls) and rounds < 20):
        for name, call in calls.items():
            seconds = _sample(call, repeats[name])
            times[name].append(seconds)
            spent += seconds * repeats[name]
        rounds += 1
    # The fastest sample, as timeit advises: the slower ones measure the neighbours.
    return {name: min(samples) for name, samples in times.items()}


def _time(call, budget: float | None = None) -> float:
    return time_interleaved({"call": call}, budget)["call"]


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


def _error(error: Exception) -> str:
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}"


def _measure_op(
    op: str, shape: str, flops: int, make, device_name: str | None, tf32: bool
) -> list[Timing]:
    """One op in every dtype, timed interleaved; a dtype without a kernel here gets its error."""
    calls, errors = {}, {}
    for dtype in DTYPES:
        try:
            calls[dtype] = make(tf.as_dtype(dtype))
            _finish(calls[dtype]())  # fails here when the device has no kernel for the dtype
        except (tf.errors.OpError, TypeError, ValueError) as error:
            calls.pop(dtype, None)
            errors[dtype] = _error(error)
    seconds = time_interleaved(calls) if calls else {}
    timings = []
    for dtype in DTYPES:
        peak = _peak(device_name, dtype, tf32)
        if dtype in errors:
            timings.append(Timing(op, dtype, shape, flops, None, None, peak, errors[dtype]))
        else:
            took = seconds[dtype]
            timings.append(Timing(op, dtype, shape, flops, took, flops / took / 1e12, peak))
    return timings


def measure_device(
    device: str, device_name: str | None, tf32: bool, side: int | None = None
) -> list[Timing]:
    """Matmul and 3x3 convolution timings in every dtype of :data:`DTYPES` on ``device``."""
    side = side or matmul_side(device)
    # The convolution does about as much work as the matmul: batch x 56 x 56 x 128 -> 128.
    channels, hw = 128, 56
    batch = max(1, round(side**3 / (hw * hw * channels * channels * 9)))
    conv_flops = 2 * batch * hw * hw * channels * channels * 9
    with tf.device(device):
        a32 = tf.random.normal([side, side])
        x32 = tf.random.normal([batch, hw, hw, channels])
        k32 = tf.random.normal([3, 3, channels, channels], stddev=0.05)

        def matmul(dt):
            a = tf.cast(a32, dt)
            return lambda: tf.linalg.matmul(a, a)

        def conv(dt):
            x, k = tf.cast(x32, dt), tf.cast(k32, dt)
            return lambda: tf.nn.conv2d(x, k, strides=1, padding="SAME")

        shape = f"{batch}x{hw}x{hw}x{channels} * 3x3x{channels}x{channels}"
        return [
            *_measure_op("matmul", f"{side}x{side}x{side}", 2 * side**3, matmul, device_name, tf32),
            *_measure_op("conv3x3", shape, conv_flops, conv, device_name, tf32),
        ]


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
