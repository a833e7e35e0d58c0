"""The training-step harness: isolation on failure, one round's work, the GPU memory path."""

from __future__ import annotations

import math

import keras
import pytest
import tensorflow as tf

import mpcore.bench.stepbench
from mpcore.bench.stepbench import MemoryProbe, prepared_step, throughput_fields
from mpcore.modes import RunConfig, amp_rewrite_enabled, autoclustering_enabled
from mpcore.training import TrainSettings

TINY = TrainSettings(model="small", image_size=16, batch_size=4)


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
    def out_of_memory(config, settings):
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
