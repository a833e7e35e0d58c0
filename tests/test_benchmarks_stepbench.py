"""The training-step harness: isolation on failure, one round's work, the GPU memory path."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import keras
import pytest
import tensorflow as tf
from traces import counted_steps

import mpcore.bench.stepbench
from mpcore.bench.stepbench import MemoryProbe, PreparedStep, prepared_step, throughput_fields
from mpcore.precision.modes import RunConfig, amp_rewrite_enabled, autoclustering_enabled
from mpcore.train.fit import EpochTimer
from mpcore.train.settings import TrainSettings

TINY = TrainSettings(model="small", image_size=16, batch_size=4)


@pytest.mark.slow
def test_a_round_runs_its_steps_and_the_step_is_timed_apart() -> None:
    config = RunConfig("mixed_float16", "off")
    with prepared_step(config, TINY, steps_per_round=3) as prepared:
        iterations = prepared.model.optimizer.iterations
        before = int(iterations.numpy())
        assert math.isfinite(prepared.run_round())
        assert int(iterations.numpy()) - before == 3
        assert prepared.compile_seconds > 0
        assert prepared.images.shape == (4, 16, 16, 3) and prepared.labels.dtype == tf.int32
        fields = throughput_fields(prepared, 0.3, "Tesla T4", tf32_enabled=True)
        assert fields["ms_per_step"] == pytest.approx(100.0)
        assert fields["images_per_second"] == pytest.approx(40.0)
        assert fields["peak_tflops"] == 65.0
        assert fields["final_loss_scale"] > 0
    assert prepared.model is None  # released on exit


def test_globals_are_restored_when_building_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*args):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(mpcore.bench.stepbench, "build_compiled", out_of_memory)
    policy = keras.mixed_precision.dtype_policy().name
    with (
        pytest.raises(tf.errors.ResourceExhaustedError),
        prepared_step(RunConfig("amp_rewrite", "auto"), TINY, 1),
    ):
        pass
    assert keras.mixed_precision.dtype_policy().name == policy
    assert not amp_rewrite_enabled() and not autoclustering_enabled()


def test_steps_per_round_must_be_positive() -> None:
    with pytest.raises(ValueError, match="steps per round"), prepared_step(RunConfig(), TINY, 0):
        pass


def test_gpu_memory_probe_degrades_to_unknown_without_a_gpu(monkeypatch) -> None:
    # Without NVML and on a GPU TensorFlow does not have, whatever this machine holds.
    monkeypatch.setattr("mpcore.probe.telemetry.nvml", lambda: None)
    with MemoryProbe(on_gpu=True, device="GPU:99") as probe:
        pass
    assert probe.fields["peak_memory_source"] == "tensorflow"
    assert probe.fields["peak_memory_bytes"] is None
    assert probe.fields["nvml_peak_used_bytes"] is None
    assert probe.fields["peak_rss_bytes"] > 0


class _SpyLoss:
    """A loss tensor stand-in that records when the round reads its value."""

    def __init__(self, calls: list[str], value: float) -> None:
        self.calls, self.value = calls, value

    def __float__(self) -> float:
        self.calls.append("read")
        return self.value


def test_a_round_syncs_once_after_its_last_step_and_returns_a_float(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the device sync or the loss read, a timer around a round would time the host's
    dispatch on a GPU, not the device: the calls are spied on, in order. ``run_round`` is the
    same for both step kinds and needs no model: a prepared step is made around a spy."""
    calls: list[str] = []
    monkeypatch.setattr(mpcore.bench.stepbench, "sync_device", lambda: calls.append("sync"))

    def step() -> _SpyLoss:
        calls.append("step")
        return _SpyLoss(calls, 0.25 * calls.count("step"))

    prepared = PreparedStep(
        config=RunConfig(),
        settings=TINY,
        model=None,
        step=step,
        images=None,
        labels=None,
        steps_per_round=3,
        compile_seconds=0.0,
        amp_rewrite_on=False,
        autoclustering_on=False,
    )
    value = prepared.run_round()
    assert type(value) is float and value == 0.75  # the last step's loss, read
    steps = calls.count("step")
    assert calls[:steps] == ["step"] * 3
    assert sorted(calls[steps:]) == ["read", "sync"]  # exactly once each, after the last step
    calls.clear()
    prepared.run_round()
    assert calls.count("sync") == 1  # once per round
    # With steps_per_execution 3, one call is three steps: a round of 3 calls it once.
    calls.clear()
    dataclasses.replace(prepared, steps_per_execution=3).run_round()
    assert calls.count("step") == 1 and calls.count("sync") == 1


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_the_fit_step_is_kerass_train_function(steps_per_execution: int) -> None:
    with (
        counted_steps() as traces,
        prepared_step(
            RunConfig("mixed_float16", "off"),
            TINY,
            steps_per_round=6,
            kind="fit",
            steps_per_execution=steps_per_execution,
        ) as prepared,
    ):
        model = prepared.model
        assert prepared.describe()["step"] == "fit"
        assert model.steps_per_execution == steps_per_execution
        before = int(model.optimizer.iterations.numpy())
        assert math.isfinite(prepared.run_round())
        assert int(model.optimizer.iterations.numpy()) - before == 6
        # model.fit reuses the very train function the harness times.
        train_function = model.train_function
        model.fit(
            tf.data.Dataset.from_tensors((prepared.images, prepared.labels)).repeat(),
            epochs=1,
            steps_per_epoch=steps_per_execution,
            shuffle=False,
            verbose=0,
        )
        assert model.train_function is train_function
        # Traced once, in the first step: the optimizer's slots and loss scale and the metrics'
        # totals exist before it (build_before_tracing), or the first step would trace twice.
        assert traces["train_step"] == 1


def test_steps_per_execution_must_divide_the_round() -> None:
    with (
        pytest.raises(ValueError, match="must be positive and divide"),
        prepared_step(RunConfig(), TINY, 5, kind="fit", steps_per_execution=2),
    ):
        pass


# A measured experiment, not a unit of behaviour: 11 interleaved rounds of real timings, which
# beside another test's load (pytest -n) measure that load. CI runs it in its acceptance session.
@pytest.mark.acceptance(reason="11 interleaved rounds of real step timings (about 40 s)")
def test_the_fit_steps_time_agrees_with_model_fits_own() -> None:
    """The harness's ``fit`` step times what ``model.fit`` takes per step, within 15%.

    States a CPU fact (pinned to the CPU): the small model at 48 px, batch 16, float32, XLA off.
    Rounds of the harness and epochs of ``model.fit`` (the same model, batch and compiled train
    function; timed by its own epoch callback, the epoch's closing sync included) alternate, the
    order flipping every round, so drift and other processes' load hit both alike; medians.
    """
    settings = TrainSettings(model="small", image_size=48, batch_size=16)
    steps, rounds = 20, 11
    harness: list[float] = []
    timer = EpochTimer()
    with (
        tf.device("/CPU:0"),
        prepared_step(RunConfig(), settings, steps_per_round=steps, kind="fit") as prepared,
    ):
        data = tf.data.Dataset.from_tensors((prepared.images, prepared.labels)).repeat()

        def fit_epoch(callbacks: list) -> None:
            prepared.model.fit(
                data, epochs=1, steps_per_epoch=steps, callbacks=callbacks, shuffle=False, verbose=0
            )

        def harness_round() -> None:
            start = time.perf_counter()
            prepared.run_round()
            harness.append((time.perf_counter() - start) / steps)

        prepared.run_round()  # warm both paths up, untimed
        fit_epoch([])
        for index in range(rounds):
            first, second = (harness_round, lambda: fit_epoch([timer]))[:: 1 - 2 * (index % 2)]
            first()
            second()
    fitted = [seconds / steps for seconds in timer.seconds]
    ms_harness, ms_fit = 1000 * statistics.median(harness), 1000 * statistics.median(fitted)
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[0]
    print(f"harness fit step {ms_harness:.2f} ms/step, model.fit {ms_fit:.2f} ms/step, load {load}")
    assert abs(ms_harness - ms_fit) <= 0.15 * ms_fit, (ms_harness, ms_fit, load)
