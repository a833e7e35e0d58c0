"""Device peaks, capability skip decisions and FLOP counting behind the benchmarks suite."""

from __future__ import annotations

import keras
import pytest

from mpcore.models.flops import forward_flops, training_flops_per_step
from mpcore.names import PRECISIONS, XLA_MODES
from mpcore.precision.modes import RunConfig, applied
from mpcore.probe.machine import GpuInfo
from mpcore.probe.peaks import FAKE_GPU_ENV, device_peak, parse_fake_gpu, peak_tflops
from mpcore.probe.skips import NO_GPU_REASON, skip_reason, speedup_note

T4 = GpuInfo("Tesla T4", (7, 5))
A100 = GpuInfo("NVIDIA A100-SXM4-40GB", (8, 0))
P100 = GpuInfo("Tesla P100-PCIE-16GB", (6, 0))


@pytest.mark.parametrize(
    ("reported", "table_name"),
    [
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-16GB", "V100 SXM2"),
        ("Tesla V100-PCIE-32GB", "V100 PCIe"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
    ],
)
def test_device_names_match_their_datasheet_entry(reported: str, table_name: str) -> None:
    assert device_peak(reported).name == table_name


@pytest.mark.parametrize("reported", ["NVIDIA A10G", "NVIDIA L40S", "Tesla P100-PCIE-16GB", ""])
def test_unlisted_devices_have_no_peak(reported: str) -> None:
    assert device_peak(reported) is None


def test_peak_follows_precision_and_tf32() -> None:
    a100, t4 = device_peak(A100.name), device_peak(T4.name)
    assert peak_tflops(a100, "float32", tf32_enabled=True) == 156.0
    assert peak_tflops(a100, "float32", tf32_enabled=False) == 19.5
    assert peak_tflops(a100, "mixed_bfloat16", tf32_enabled=True) == 312.0
    assert peak_tflops(t4, "float32", tf32_enabled=True) == 8.1  # Turing has no TF32
    assert peak_tflops(t4, "mixed_float16", tf32_enabled=True) == 65.0
    assert peak_tflops(t4, "amp_rewrite", tf32_enabled=True) == 65.0
    assert peak_tflops(t4, "mixed_bfloat16", tf32_enabled=True) is None
    assert peak_tflops(None, "float32", tf32_enabled=True) is None


def test_fake_gpu_values_parse_or_fail_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_fake_gpu("Tesla T4@7.5") == (T4,)
    assert parse_fake_gpu(" none ") == ()
    with pytest.raises(ValueError, match=FAKE_GPU_ENV) as error:
        parse_fake_gpu("T4")
    assert "\n" not in str(error.value)


def test_without_gpu_every_combination_is_skipped_with_the_reason() -> None:
    for precision in PRECISIONS:
        for xla in XLA_MODES:
            assert skip_reason(precision, xla, None) == NO_GPU_REASON


def test_t4_skips_only_bfloat16_and_float8() -> None:
    for precision in PRECISIONS:
        reason = skip_reason(precision, "jit", T4)
        if precision == "mixed_bfloat16":
            assert reason == "mixed_bfloat16 needs compute capability 8.0+ (Tesla T4 has 7.5)"
        elif precision == "float8":
            assert reason == (
                "no FP8 tensor cores: float8 needs compute capability 8.9+ (Tesla T4 has 7.5)"
            )
        else:
            assert reason is None


def test_a100_serves_every_combination_but_float8() -> None:
    for precision in PRECISIONS:
        for xla in XLA_MODES:
            reason = skip_reason(precision, xla, A100)
            assert (reason is None) == (precision != "float8"), (precision, xla, reason)


def test_hopper_serves_float8() -> None:
    h100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))
    assert all(skip_reason(p, x, h100) is None for p in PRECISIONS for x in XLA_MODES)


def test_pre_volta_skips_the_rewrite_and_flags_float16() -> None:
    assert "no-op below compute capability 7.0" in skip_reason("amp_rewrite", "off", P100)
    assert skip_reason("mixed_float16", "off", P100) is None
    assert "float16 speedup not expected" in speedup_note("mixed_float16", P100)
    assert speedup_note("mixed_float16", T4) is None


def test_cpu_possible_combinations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    runnable = {
        (p, x) for p in PRECISIONS for x in XLA_MODES if skip_reason(p, x, None, allow_cpu=True)
    }
    expected_skips = {("amp_rewrite", x) for x in XLA_MODES} | {(p, "auto") for p in PRECISIONS}
    assert runnable == expected_skips
    assert skip_reason("amp_rewrite", "off", None, True) == (
        "grappler auto_mixed_precision is a no-op without a GPU"
    )
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_cpu_global_jit")
    assert skip_reason("float32", "auto", None, allow_cpu=True) is None


def test_forward_flops_counts_conv_and_dense_multiply_adds() -> None:
    with applied(RunConfig()):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(5)(x))
        conv = 2 * (8 * 8 * 4) * (3 * 3 * 3)
        dense = 2 * 5 * 4
        assert forward_flops(model) == conv + dense
        assert training_flops_per_step(model, batch_size=10) == 3 * 10 * (conv + dense)


@pytest.mark.slow
def test_resnet50_flops_match_the_published_figure() -> None:
    """He et al. (2016), Table 1: ResNet-50 is 3.8e9 multiply-adds at 224x224."""
    from mpcore.models.registry import build_model

    with applied(RunConfig()):
        multiply_adds = forward_flops(build_model("resnet50", 224)) / 2
    assert 3.7e9 < multiply_adds < 4.2e9


#: Every entry's dense figures, from the datasheets cited in mpcore.probe.peaks (fp32, tf32,
#: fp16, bf16). Where a datasheet prints only the sparse figure (marked *), dense is half of it.
DATASHEET_DENSE = {
    "T4": (8.1, None, 65.0, None, None),
    "V100 PCIe": (14.0, None, 112.0, None, None),
    "V100 SXM2": (15.7, None, 125.0, None, None),
    "A10": (31.2, 62.5, 125.0, 125.0, None),
    "A100": (19.5, 156.0, 312.0, 312.0, None),
    "L4": (30.3, 120 / 2, 242 / 2, 242 / 2, 485 / 2),
    "H100 PCIe": (51.0, 756 / 2, 1513 / 2, 1513 / 2, 3026 / 2),
    "H100 NVL": (60.0, 835 / 2, 1671 / 2, 1671 / 2, 3341 / 2),
    "H100 SXM": (67.0, 989 / 2, 1979 / 2, 1979 / 2, 3958 / 2),
    "H200 NVL": (60.0, 835 / 2, 1671 / 2, 1671 / 2, 3341 / 2),
    "H200 SXM": (67.0, 989 / 2, 1979 / 2, 1979 / 2, 3958 / 2),
}


def test_every_device_entry_has_its_datasheet_dense_figures() -> None:
    from mpcore.probe.peaks import DEVICE_PEAKS

    table = {
        peak.name: (peak.fp32, peak.tf32, peak.fp16, peak.bf16, peak.fp8)
        for _, peak in DEVICE_PEAKS
    }
    assert table == DATASHEET_DENSE
    assert device_peak("NVIDIA H100 80GB HBM3").fp16 == 989.5  # not the sparse 1979
