"""The figures of a run: time against loss, learning curves, step-time bars, GPU telemetry.

matplotlib's object API (``Figure``) only, so no global pyplot state or GUI backend is involved.
No TensorFlow here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

MIB = 1024 * 1024


def _colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(count)]


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def _marker(position: int) -> dict[str, Any]:
    """A distinct marker per configuration, shrinking along the list, so configurations with
    identical values (amp_rewrite is float32 on a CPU) show as nested shapes, not one."""
    return {
        "marker": _MARKERS[position % len(_MARKERS)],
        "markersize": max(4.0, 11.0 - 1.5 * position),
    }


def tight_layout(figure: Figure) -> None:
    """``figure.tight_layout()``, leaving no layout engine behind: ``tight_layout`` sets a
    placeholder engine, and ``savefig`` draws a figure that has an engine once more before the
    real draw (for constrained layout to run), a whole draw for nothing here, about a sixth of
    a figure's cost; the saved image is the same, byte for byte."""
    figure.tight_layout()
    figure.set_layout_engine(None)


def _save(figure: Figure, path: Path) -> Path:
    tight_layout(figure)
    figure.savefig(path, dpi=110)
    return path


def _ok_records(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in document.get("configurations", []) if r.get("status") == "ok"]


def machine_label(machine: dict[str, Any]) -> str:
    """The machine a run was measured on, for a figure: its GPUs, else its CPU count and host."""
    gpus = [gpu.get("name") for gpu in machine.get("gpus") or [] if isinstance(gpu, dict)]
    if gpus:
        return ", ".join(str(name) for name in gpus)
    return f"{machine.get('cpu_count')} CPUs, no GPU ({machine.get('host')})"


def subtitle(document: dict[str, Any]) -> str:
    """What a figure measured and where: a figure measured on one machine says which."""
    settings = document.get("settings", {})
    return (
        f"model {settings.get('model')}, {settings.get('image_size')} px, "
        f"batch {settings.get('batch_size')}, {settings.get('epochs')} epochs; "
        f"on {machine_label(document.get('machine') or {})}"
    )


def plot_time_vs_loss(document: dict[str, Any], path: Path) -> Path:
    """The seed's comparison: total training time against final training loss."""
    records = _ok_records(document)
    figure = Figure(figsize=(7.5, 5))
    axes = figure.subplots()
    for position, (record, colour) in enumerate(zip(records, _colours(len(records)), strict=True)):
        result = record["result"]
        axes.plot(
            sum(result["epoch_seconds"]),
            result["loss"][-1],
            linestyle="none",
            color=colour,
            markerfacecolor="none" if position else colour,
            markeredgewidth=2,
            label=record["name"],
            **_marker(position),
        )
    axes.set_xlabel("training time, all epochs (s)")
    axes.set_ylabel("final training loss")
    axes.set_title(f"Training time vs final loss\n{subtitle(document)}", fontsize=11)
    axes.grid(alpha=0.3)
    if records:
        axes.legend(fontsize=8, loc="best", title="configuration", title_fontsize=8)
        axes.margins(0.2)
    return _save(figure, path)


def plot_curves(document: dict[str, Any], path: Path) -> Path:
    """Loss and accuracy per epoch, training (solid) and validation (dashed), per configuration."""
    records = _ok_records(document)
    figure = Figure(figsize=(12, 4.8))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for position, (record, colour) in enumerate(zip(records, _colours(len(records)), strict=True)):
        result = record["result"]
        epochs = range(1, len(result["loss"]) + 1)
        name = record["name"]
        style = {"color": colour, **_marker(position), "markerfacecolor": "none"}
        loss_axes.plot(epochs, result["loss"], "-", label=f"{name} train", **style)
        loss_axes.plot(epochs, result["val_loss"], "--", label=f"{name} val", **style)
        # A user's model trained with a loss other than one cross-entropy records no accuracy.
        if len(result.get("accuracy") or []) == len(epochs):
            accuracy_axes.plot(epochs, result["accuracy"], "-", label=f"{name} train", **style)
        if len(result.get("val_accuracy") or []) == len(epochs):
            accuracy_axes.plot(epochs, result["val_accuracy"], "--", label=f"{name} val", **style)
    accuracy = any(record["result"].get("accuracy") for record in records)
    loss_axes.set_title("Loss per epoch (solid: training, dashed: validation)", fontsize=10)
    loss_axes.set_ylabel("sparse categorical cross-entropy" if accuracy else "the model's loss")
    accuracy_axes.set_title(
        "Accuracy per epoch (solid: training, dashed: validation)"
        if accuracy
        else "no accuracy recorded (the model's loss is not one cross-entropy)",
        fontsize=10,
    )
    accuracy_axes.set_ylabel("accuracy (fraction correct)")
    accuracy_axes.set_ylim(0, 1.02)
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    if records and accuracy:
        accuracy_axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.suptitle(f"Learning curves: {subtitle(document)}", fontsize=11)
    return _save(figure, path)


def plot_bars(
    labels: list[str],
    values: list[float],
    speedups: list[float | None],
    path: Path,
    title: str,
    xlabel: str,
    unit: str = "ms",
    points: list[list[float]] | None = None,
    intervals: list[tuple[float, float] | None] | None = None,
) -> Path:
    """Horizontal bars of a time per configuration, each annotated with its speedup (and its
    interval); ``points``: every repeat's time, drawn as dots over its bar."""
    figure = Figure(figsize=(8, 1.2 + 0.55 * max(1, len(labels))))
    axes = figure.subplots()
    positions = range(len(labels))
    axes.barh(positions, values, color=_colours(len(labels)))
    axes.set_yticks(list(positions), labels, fontsize=9)
    axes.invert_yaxis()
    spans = intervals or [None] * len(labels)
    repeats = points or [[] for _ in labels]
    for position, value, speedup, span in zip(positions, values, speedups, spans, strict=True):
        note = f"{value:.1f} {unit}"
        if speedup is not None:
            note += f"  ({speedup:.2f}x" + (f", {span[0]:.2f}-{span[1]:.2f}" if span else "") + ")"
        right = max([value, *repeats[position]])  # right of the bar and of its dots
        axes.text(right, position, "  " + note, va="center", fontsize=9)
    label: str | None = "a repeat"  # on the first row drawn only: one legend entry
    for position, times in enumerate(repeats):
        if len(times) > 1:
            axes.plot(times, [position] * len(times), "o", color="black", markersize=3.5,
                      alpha=0.7, label=label)  # fmt: skip
            label = None
    if label is None:
        axes.legend(fontsize=8, loc="upper right")
    axes.set_xlabel(xlabel)
    axes.set_title(title, fontsize=11)
    longest = max([*values, *(t for times in repeats for t in times)], default=1.0)
    axes.set_xlim(0, longest * 1.45 or 1.0)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def plot_gpu_telemetry(document: dict[str, Any], path: Path) -> Path | None:
    """GPU memory used and utilisation over time per configuration; None without samples."""
    records = [r for r in _ok_records(document) if (r.get("telemetry") or {}).get("gpu_series")]
    if not records:
        return None
    figure = Figure(figsize=(10, 6.5))
    memory_axes, utilisation_axes = figure.subplots(2, 1, sharex=True)
    for record, colour in zip(records, _colours(len(records)), strict=True):
        series = record["telemetry"]["gpu_series"]
        times = [row["t"] for row in series]
        memory = [
            row["memory_used_bytes"] / MIB if row["memory_used_bytes"] is not None else math.nan
            for row in series
        ]
        utilisation = [
            row["utilization_percent"] if row["utilization_percent"] is not None else math.nan
            for row in series
        ]
        memory_axes.plot(times, memory, color=colour, label=record["name"])
        utilisation_axes.plot(times, utilisation, color=colour, label=record["name"])
    memory_axes.set_ylabel("device memory used (MiB)")
    memory_axes.set_title("GPU memory used (NVML)", fontsize=10)
    utilisation_axes.set_ylabel("GPU utilisation (%)")
    utilisation_axes.set_ylim(0, 105)
    utilisation_axes.set_title("GPU utilisation (NVML)", fontsize=10)
    utilisation_axes.set_xlabel("seconds since the configuration started (model build included)")
    for axes in (memory_axes, utilisation_axes):
        axes.grid(alpha=0.3)
    memory_axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.suptitle(f"GPU telemetry during training: {subtitle(document)}", fontsize=11)
    return _save(figure, path)
