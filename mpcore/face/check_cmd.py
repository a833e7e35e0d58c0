"""``mpbench check MODEL``: is mixed precision safe for a user's model? Table, JSON and a PNG.

All of the command lives here: :func:`add_parser` registers it on the CLI's subparsers and
:func:`run` executes it, raising :class:`mpcore.user.loader.LoadError` (one line, exit status 2 in
the CLI) for a model or data it cannot use. The exit status is the report's: 0 safe (with or without
loss scaling), 1 error findings. Nothing here imports TensorFlow until :func:`run` is called.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from mpcore.face.common import (
    UsageError,
    check_activations_fit,
    load_tensorflow,
    positive_int,
    seed_int,
)
from mpcore.names import HALF_PRECISIONS

#: The policies ``--precision`` accepts (mpcore.check.api.CHECK_PRECISIONS, without importing it).
PRECISION_CHOICES: tuple[str, ...] = HALF_PRECISIONS
#: Rows of the per-layer table in the terminal (every layer is in check.json).
TABLE_LAYERS = 10


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``check`` command to ``subparsers``; its handler is :func:`run`."""
    parser = subparsers.add_parser(
        "check",
        help="is mixed precision safe for your model? policy audit, per-layer numerics, "
        "loss-scale window, first inf/NaN",
        description="Check a Keras model under mixed precision on one batch: policy audit, "
        "float32 shadow comparison per layer, gradient census and loss-scale window, first "
        "non-finite layer, verdict. Exit status 0 safe, 1 error findings, 2 bad input.",
    )
    parser.add_argument("model", help="a .keras file or package.module:factory")
    parser.add_argument(
        "--data",
        metavar="SPEC",
        help="a seed-layout folder, an .npz with x and y, or package.module:fn returning (x, y) "
        "or a tf.data.Dataset (default: a seeded random batch shaped by the model)",
    )
    parser.add_argument("--loss", metavar="NAME", help="a Keras loss name (default: compiled)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISION_CHOICES,
        default=["mixed_float16"],
        metavar="NAME",
        help="mixed_float16 (default) and/or mixed_bfloat16",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="passed to a factory asking; the image side of the random batch of a model whose "
        "input size is unknown, e.g. (None, None, 3) (default 8)",
    )
    parser.add_argument("--num-classes", type=positive_int, help="passed to a factory asking")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the random batch")
    parser.add_argument(
        "--steps",
        type=positive_int,
        metavar="N",
        help="train a copy N real steps on the batch under each policy before judging (the "
        "loss scale it reaches, skipped steps); default: judge at initialisation",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", metavar="DIR", help="default: runs/check-<model>")
    parser.set_defaults(handler=cmd_check)
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    """``mpbench check``: bad input (a :class:`mpcore.user.loader.LoadError`) is one usage line."""
    load_tensorflow()  # before anything imports Keras, so its start-up logging stays quiet
    from mpcore.user.loader import LoadError

    try:
        return run(args)
    except LoadError as error:
        raise UsageError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    """Run ``mpbench check``; bad input raises :class:`mpcore.user.loader.LoadError`."""
    from mpcore.check.api import check
    from mpcore.user.loader import LoadError, load_model

    loaded = load_model(args.model, image_size=args.image_size, num_classes=args.num_classes)
    check_activations_fit(loaded.model, args.batch_size)
    out = Path(args.out) if args.out else Path("runs") / f"check-{Path(args.model).stem}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LoadError(f"--out {out}: {error.strerror or error}") from None
    # Under --json stdout carries the one document: anything else printed on the way (Keras,
    # the user's data function) goes to stderr.
    copies: dict[str, Any] = {}  # each precision's model as checked, for its memory
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        report = check(
            loaded,
            args.data,
            loss=args.loss,
            batch_size=args.batch_size,
            precisions=list(dict.fromkeys(args.precision)),
            seed=args.seed,
            steps=args.steps or 0,
            unknown_size=args.image_size,
            copies=copies,
        )
        document = report.to_dict()
        document["predicted_memory"], document["predicted_memory_note"] = predicted_memory(
            loaded,
            [item["precision"] for item in document["precisions"]],
            document["batch_size"],
            document["inputs"],
            copies,
        )
    (out / "check.json").write_text(json.dumps(document, indent=2))
    files = [out / "check.json"]
    files += [plot_precision(document, item, out) for item in document["precisions"]]
    written = f"written to {out}: " + ", ".join(f.name for f in files)
    if args.json:
        print(json.dumps(document, indent=2))
        print(written, file=sys.stderr)
    else:
        print(render(document))
        print(written)
    return report.exit_status


# --------------------------------------------------------------------------------------------
# Terminal report


def _number(value: Any, fmt: str) -> str:
    return "inf/NaN" if value is None else format(value, fmt)


def _percent(value: float | None) -> str:
    return "inf/NaN" if value is None else ("0" if value == 0 else f"{100 * value:.3g}%")


def _own(row: dict[str, Any]) -> float:
    """A row's own error for sorting: inf/NaN first; the accumulated one where there is none."""
    value = row.get("own_error")
    value = row["relative_error"] if value is None else value
    return math.inf if value is None else value


def _power(exponent: int | None) -> str:
    return "none" if exponent is None else f"2^{exponent}"


def _training_line(training: dict[str, Any] | None) -> str:
    if not training:
        return "judged at initialisation, on one batch (--steps N trains N real steps first)"
    scales = training["loss_scales"]
    scale = f": loss scale {scales[0]:g} -> {scales[-1]:g}" if scales else ""
    return (
        f"judged after {training['steps']} training steps on this batch "
        f"({training['optimizer']}){scale}, {training['skipped_steps']} of {training['steps']} "
        "steps skipped"
    )


def render(document: dict[str, Any]) -> str:
    """The terminal report of a :meth:`mpcore.check.api.CheckReport.to_dict` document."""
    from tabulate import tabulate

    lines = [
        f"model {document['model']} ({document['source']}): {document['parameters']:,} "
        f"parameters, {document['forward_flops'] / 1e9:.3g} GFLOPs per sample forward",
        f"batch of {document['batch_size']} from {document['data']}; loss {document['loss']}",
        f"per-layer rows: {document.get('layers_shown') or 'every layer of the graph'}",
    ]
    for item in document["precisions"]:
        lines += ["", *_render_precision(item, tabulate)]
    lines += _render_memory(
        document.get("predicted_memory") or {}, document.get("predicted_memory_note")
    )
    return "\n".join(lines)


def predicted_memory(
    loaded: Any,
    precisions: list[str],
    batch_size: int,
    inputs: list[dict[str, Any]],
    copies: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """:func:`mpcore.models.memory.predict_memory` of the model under float32 and each checked
    precision (the converted clone, as the check runs it: the one in ``copies``, the check's own,
    where there is one, not made again), by precision; a model without a graph of known sizes
    (subclassed, fully convolutional) is counted on one sample shaped like the batch's
    ``inputs``. The second item says why there is no prediction, if there is none."""
    import numpy as np

    from mpcore.models.memory import predict_memory
    from mpcore.precision.modes import RunConfig, applied
    from mpcore.user.ownmodel import under_precision
    from mpcore.user.spec import first_line

    parts = [np.zeros((1, *item["shape"][1:]), item["dtype"]) for item in inputs]
    sample = parts[0] if len(parts) == 1 else parts
    estimates = {}
    for precision in dict.fromkeys(["float32", *precisions]):
        with applied(RunConfig(precision, "off")):
            model = (copies or {}).get(precision)
            model = under_precision(loaded, precision) if model is None else model
            try:
                estimates[precision] = predict_memory(model, batch_size, sample=sample).to_dict()
            except Exception as error:  # the user's call() may raise anything on zeros
                # No prediction is not a failed check: the report says why it has none.
                return {}, first_line(error)
    return estimates, None


def _render_memory(estimates: dict[str, Any], note: str | None = None) -> list[str]:
    """How much activation memory each half precision saves per sample, predicted."""
    from mpcore.train.maxbatch import format_bytes

    full = estimates.get("float32")
    if not full:
        return ["", f"predicted memory: not shown ({note})"] if note else []
    lines = ["", "predicted memory (model alone; mpbench maxbatch measures it):"]
    for precision, estimate in estimates.items():
        saved = full["activation_bytes_per_sample"] - estimate["activation_bytes_per_sample"]
        lines.append(
            f"  {precision}: {format_bytes(estimate['activation_bytes_per_sample'])} of "
            f"activations per sample, {format_bytes(estimate['fixed_bytes'])} fixed"
            + (
                f"; saves {format_bytes(saved)} of activations per sample"
                if precision != "float32"
                else ""
            )
        )
    return lines


def _render_precision(item: dict[str, Any], tabulate: Any) -> list[str]:
    dtype, window, census = item["dtype"], item["window"], item["census"]
    how = "converted clone, float32 outputs" if item["converted"] else "the model as built"
    counts: dict[str, list[str]] = {}
    for row in item["layers"]:
        counts.setdefault(row["compute_dtype"], []).append(row["name"])
    computes = "; ".join(
        f"{kind} {len(names)} layer{'s' if len(names) > 1 else ''}"
        + (f" ({', '.join(names[:4])})" if len(names) <= 4 else "")
        for kind, names in counts.items()
    )
    overall, at_one = census["overall"], census["overall_at_1"]
    lines = [
        f"== {item['precision']} ({how}) ==",
        f"compute dtypes: {computes}",
        f"loss: float32 {_number(item['loss_float32'], '.5g')}, {dtype} "
        f"{_number(item['loss_half'], '.5g')}; output relative error "
        f"{_percent(item['output_error'])}",
        f"gradients cast to {dtype}: at loss scale {census['loss_scale']:g}"
        + (f" ({census['loss_scale_source']})" if census.get("loss_scale_source") else "")
        + ": "
        f"{_percent(overall['underflow'])} flush to zero, {_percent(overall['overflow'])} "
        f"overflow; at scale 1 {_percent(at_one['underflow'])} flush to zero",
        f"loss-scale window: {_power(window['low'])}..{_power(window['high'])} (no overflow, "
        f"under 1% flushed); dynamic scaling settles near {_power(window['settle'])}; judged "
        f"on the {window.get('based_on', 'weight gradients')}",
        _training_line(item.get("training")),
    ]
    first = item["first_nonfinite"]
    lines.append(
        "first inf/NaN: none (forward, and backward at loss scale 1)"
        if first is None
        else f"first inf/NaN: layer {first['layer']} in the {first['pass_name']} pass "
        f"(finite values there span [{first['low']:.3g}, {first['high']:.3g}])"
    )
    if item["findings"]:
        rows = [
            [f["severity"], f["layer"] or "(model)", f["message"], f["fix"]]
            for f in item["findings"]
        ]
        lines += ["", tabulate(rows, ["severity", "layer", "finding", "fix"], maxcolwidths=48)]
    named = {f["layer"] for f in item["findings"]}
    # The layer that loses precision is the one whose own error is large; the accumulated error
    # of every layer after it is large too.
    worst = sorted(item["layers"], key=lambda r: -_own(r))
    chosen = {r["name"] for r in worst[:TABLE_LAYERS]} | (named & {r["name"] for r in worst})
    table = [
        [
            r["name"],
            r["class_name"],
            r["compute_dtype"],
            _percent(r["flop_share"]),
            _number(r["amax"], ".3g"),
            _percent(r["overflow"]),
            _percent(r["underflow"]),
            "-" if r.get("own_error") is None else _percent(r["own_error"]),
            _percent(r["relative_error"]),
        ]
        for r in item["layers"]
        if r["name"] in chosen
    ]
    if table:
        lines += [
            "",
            f"layers named above and the {TABLE_LAYERS} with the largest own error (all "
            f"{len(item['layers'])} in check.json); own: the layer alone in {dtype} on the "
            "float32 input, accum.: fed the half model's own outputs",
            tabulate(
                table,
                [
                    "layer",
                    "class",
                    "compute",
                    "FLOPs",
                    "amax",
                    "overflow",
                    "flushed",
                    "own err",
                    "accum. err",
                ],
            ),
        ]
    lines += ["", f"verdict ({item['precision']}): {item['verdict']}"]
    return lines


# --------------------------------------------------------------------------------------------
# Figure


def plot_precision(document: dict[str, Any], item: dict[str, Any], out: Path) -> Path:
    """Per-layer amax, overflow/flush fractions and relative error, and the loss-scale curve,
    for one policy, to ``out/check_<precision>.png``."""
    from matplotlib.figure import Figure

    from mpcore.face.plots import tight_layout

    rows = item["layers"]
    positions = list(range(len(rows)))
    finite = [r["relative_error"] if r["relative_error"] is not None else math.nan for r in rows]
    largest = {"float16": 65504.0, "bfloat16": 3.3895e38}[item["dtype"]]
    figure = Figure(figsize=(12, 11), dpi=100)
    axes_grid = figure.subplots(4, 1, height_ratios=(1, 1, 1.4, 1))
    amax, fractions, error, window = axes_grid
    amax.sharex(error)
    fractions.sharex(error)
    amax.semilogy(positions, [max(r["amax"] or 0.0, 1e-30) for r in rows], ".-", lw=0.8)
    amax.axhline(largest, color="#8e44ad", ls="--", label=f"{item['dtype']} max {largest:.5g}")
    amax.set_ylabel("float32 amax")
    amax.legend(loc="upper left", fontsize="small")
    fractions.plot(positions, [100 * r["overflow"] for r in rows], ".-", label="overflow")
    fractions.plot(positions, [100 * r["underflow"] for r in rows], ".-", label="flushed to zero")
    fractions.set_ylabel(f"% of activations\ncast to {item['dtype']}")
    fractions.legend(loc="upper left", fontsize="small")
    error.semilogy(
        positions,
        [max(e, 1e-12) for e in finite],
        ".-",
        lw=0.8,
        color="#c0392b",
        label="accumulated",
    )
    own = [r.get("own_error") for r in rows]
    error.semilogy(
        positions,
        [max(e, 1e-12) if e is not None else math.nan for e in own],
        "x",
        color="#2c3e50",
        label="own (the layer alone on the float32 input)",
    )
    error.legend(loc="upper left", fontsize="small")
    error.set_ylabel("relative error\nvs float32")
    error.set_xlabel("layer (execution order)")
    first = item["first_nonfinite"]
    names = [r["name"] for r in rows]
    for axes in (amax, fractions, error):
        axes.grid(alpha=0.3)
        if first is not None and first["layer"] in names:
            axes.axvline(names.index(first["layer"]), color="#c0392b", ls=":", lw=1.5)
    step = max(1, len(rows) // 40)
    error.set_xticks(positions[::step], names[::step], rotation=60, fontsize=6, ha="right")
    for axes in (amax, fractions):
        axes.tick_params(labelbottom=False)
    curve = item["window"]["curve"]
    if curve:
        exponents = [point[0] for point in curve]
        window.plot(exponents, [100 * p[1] for p in curve], label="gradients flushed to zero")
        window.plot(exponents, [100 * p[2] for p in curve], label="gradients overflowing")
        if item["window"]["low"] is not None:
            window.axvspan(item["window"]["low"], item["window"]["high"], color="#cfe3c4")
        window.set_xlabel("log2 loss scale")
        window.set_ylabel("% of gradient values")
        window.legend(loc="upper center", fontsize="small")
    figure.suptitle(
        f"{document['model']} under {item['precision']}: {item['verdict']}"[:140], fontsize=10
    )
    tight_layout(figure)  # without the placeholder engine savefig would draw twice
    path = out / f"check_{item['precision']}.png"
    figure.savefig(path)
    return path
