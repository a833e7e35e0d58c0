"""The figure of a gradient census: :func:`plot_log2_histogram` draws the log2-magnitude histogram
of :class:`mpcore.precision.census.GradientCensus` (Figure 3 of Micikevicius et al., "Mixed
Precision Training", ICLR 2018) with the target format's representable range marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpcore.precision.census import GradientCensus, float_format


def _power_of_two_label(value: float) -> str:
    exponent = np.log2(value)
    return f"2^{int(exponent)}" if exponent == int(exponent) and exponent != 0 else f"{value:g}"


def plot_log2_histogram(report: GradientCensus, path: str | Path, title: str | None = None) -> Path:
    """Draw ``report``'s log2-magnitude histogram to a PNG at ``path`` and return the path.

    Bars are the percentage of gradient values per power of two (log scale), with a separate bar
    for exact zeros; the target format's subnormal and normal ranges are shaded and the bins a
    cast flushes to zero or to infinity are coloured.
    """
    # A bare Figure renders with Agg and leaves pyplot's global state (backend, open figures) alone.
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fmt = float_format(report.dtype)
    histogram = report.histogram
    subnormal_edge = int(np.log2(fmt.smallest_subnormal))
    normal_edge = int(np.log2(fmt.smallest_normal))
    overflow_edge = int(np.ceil(np.log2(fmt.overflow_threshold)))
    exponents = np.asarray(histogram.exponents, dtype=np.int64)
    percent = 100.0 * np.asarray(histogram.counts, dtype=np.float64) / max(histogram.total, 1)

    shown = [*histogram.exponents, subnormal_edge - 1, overflow_edge]
    x_low, x_high = min(shown) - 1, max(shown) + 2
    step = 4 * max(1, (x_high - x_low) // 64)  # at most ~16 labelled ticks
    zero_bar = x_low - max(3, step)  # the separate bin for exact zeros, left of a gap

    figure = Figure(figsize=(11, 4.8), dpi=110)
    axes = figure.subplots()
    axes.axvspan(subnormal_edge, normal_edge, color="#f3d9a4", alpha=0.7, zorder=0)
    axes.axvspan(normal_edge, np.log2(fmt.largest), color="#cfe3c4", alpha=0.7, zorder=0)
    # Whole bins below 2**(subnormal_edge - 1) round to zero and whole bins from the overflow
    # edge up round to infinity; the two partial bins at the edges are mostly kept, so they are
    # drawn as representable (the legend's percentages are exact).
    colours = np.where(
        exponents < subnormal_edge - 1,
        "#c0392b",
        np.where(exponents >= overflow_edge, "#8e44ad", "#2c6fbb"),
    )
    axes.bar(exponents + 0.5, percent, width=0.9, color=colours, zorder=2)
    if histogram.zeros:
        zeros_percent = 100.0 * histogram.zeros / max(histogram.total, 1)
        axes.bar(zero_bar + 0.5, zeros_percent, width=0.9 * step / 4, color="#7f7f7f", zorder=2)
    axes.set_yscale("log")
    axes.set_xlim(zero_bar - 0.5, x_high + 0.5)
    first_tick = x_low + (-x_low) % step
    ticks = list(range(first_tick, x_high + 1, step))
    axes.set_xticks([zero_bar + 0.5, *ticks], ["zero", *[str(t) for t in ticks]])
    axes.set_xlabel(
        f"log2 |gradient × loss scale|   (loss scale {_power_of_two_label(report.loss_scale)})"
    )
    axes.set_ylabel(f"% of all {histogram.total:,} gradient values")
    overall = report.overall
    largest = f"{fmt.largest:g}" if fmt.largest < 1e6 else f"{fmt.largest:.3g}"
    axes.legend(
        handles=[
            Patch(color="#cfe3c4", label=f"{fmt.name} normal\n[2^{normal_edge}, {largest}]"),
            Patch(
                color="#f3d9a4",
                label=f"{fmt.name} subnormal\n[2^{subnormal_edge}, 2^{normal_edge})",
            ),
            Patch(color="#2c6fbb", label="representable"),
            Patch(color="#c0392b", label=f"flushed to zero\n{100 * overall['underflow']:.3g}%"),
            Patch(
                color="#8e44ad",
                label=f"overflow to {fmt.overflow_value}\n{100 * overall['overflow']:.3g}%",
            ),
            Patch(color="#7f7f7f", label="exact zeros"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        title=f"cast to {fmt.name}",
    )
    axes.set_title(
        title
        or f"Gradient magnitudes at loss scale {_power_of_two_label(report.loss_scale)}: "
        f"{overall['count']:,} non-zero values, loss {report.loss:.4g}"
    )
    axes.grid(axis="y", alpha=0.3, zorder=1)
    figure.tight_layout()
    # No placeholder layout engine left: savefig would draw the figure twice (see
    # mpcore.face.plots.tight_layout, not imported here: the precision package does not
    # depend on the CLI's).
    figure.set_layout_engine(None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
