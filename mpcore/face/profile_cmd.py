"""``mpbench profile MODEL``: which layers get slower in half precision? Table, JSON and a PNG.

:func:`add_parser` registers the command on the CLI's subparsers; :func:`cmd_profile` runs it.
MODEL is a registry name (``small``, ``resnet50``), a ``.keras`` file or
``package.module:factory``; a model that cannot be loaded is one line naming the spec, exit
status 2. The timing is :mod:`mpcore.bench.layerprofile`'s. Nothing here imports TensorFlow
until the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mpcore.face.common import UsageError, check_activations_fit, load_tensorflow, positive_int
from mpcore.names import HALF_PRECISIONS

HALF_CHOICES: tuple[str, ...] = HALF_PRECISIONS
XLA_CHOICES: tuple[str, ...] = ("off", "jit")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``profile`` command to ``subparsers``; its handler is :func:`cmd_profile`."""
    parser = subparsers.add_parser(
        "profile",
        help="time each layer's forward+backward in float32 and half precision; list the "
        "layers that get slower",
        description="Time each layer of a model in isolation (its own input shape, forward and "
        "backward, compiled, K steps then a device sync) under float32 and each half "
        "precision, with and without XLA; list the layers slower in half precision by the "
        "time they add, beside the whole training step.",
    )
    parser.add_argument("model", help="small, resnet50, a .keras file or package.module:factory")
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="image side of a registry model (default: its own) or of a factory that takes "
        "image_size (default: the factory's); a .keras file keeps its own",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=HALF_CHOICES,
        default=list(HALF_CHOICES),
        metavar="NAME",
        help="half precisions to compare with float32 (default both)",
    )
    parser.add_argument(
        "--xla", nargs="+", choices=XLA_CHOICES, default=list(XLA_CHOICES), metavar="MODE"
    )
    parser.add_argument("--steps", type=positive_int, default=5, help="calls per timed round")
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="timed rounds (the fastest counts)"
    )
    parser.add_argument("--top", type=positive_int, default=15, help="rows of the slower table")
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    parser.add_argument("--out", metavar="DIR", help="default: runs/profile-<model>")
    parser.set_defaults(handler=cmd_profile)
    return parser


def load(spec: str, image_size: int | None) -> Any:
    """The model to profile, loaded under float32: a registry model (built at ``image_size``)
    or a user's; a problem is a :class:`UsageError` naming the spec."""
    from mpcore.models.registry import build_model
    from mpcore.precision.modes import RunConfig, applied
    from mpcore.user.loader import LoadedModel, LoadError
    from mpcore.user.ownmodel import is_user_model, load_float32

    try:
        if not is_user_model(spec):
            with applied(RunConfig("float32", "off")):
                return LoadedModel(build_model(spec, image_size), spec, "registry")
        return load_float32(spec, image_size)
    except (LoadError, ValueError) as error:
        raise UsageError(
            str(error) if isinstance(error, LoadError) else f"{spec}: {error}"
        ) from None


def cmd_profile(args: argparse.Namespace) -> int:
    load_tensorflow()
    import tensorflow as tf

    from mpcore.bench.layerprofile import profile_layers

    # Every layer and configuration is its own tf.function, traced once: not a retracing bug.
    tf.get_logger().setLevel("ERROR")

    loaded = load(args.model, args.image_size)
    check_activations_fit(loaded.model, args.batch_size)
    out = Path(args.out) if args.out else Path("runs") / f"profile-{Path(args.model).stem}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {out}: {error.strerror or error}") from None
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    profile = profile_layers(
        loaded,
        args.batch_size,
        precisions=["float32", *dict.fromkeys(args.precision)],
        xla_modes=list(dict.fromkeys(args.xla)),
        steps=args.steps,
        rounds=args.rounds,
        announce=lambda line: say(f"timed {line}"),
    )
    document = profile.to_dict()
    (out / "profile.json").write_text(json.dumps(document, indent=2))
    files = [out / "profile.json", plot(document, out / "profile.png", args.top)]
    written = f"written to {out}: " + ", ".join(f.name for f in files)
    if args.json:
        print(json.dumps(document, indent=2))
        print(written, file=sys.stderr)
    else:
        print(render(document, args.top))
        print(written)
    return 0


def render(document: dict[str, Any], top: int = 15) -> str:
    """The terminal report of a :meth:`LayerProfile.to_dict` document."""
    from tabulate import tabulate

    layers = document["layers"]
    lines = [
        f"model {document['model']} ({document['source']}): {len(layers)} layers timed in "
        f"isolation (forward+backward), batch {document['batch_size']}, "
        f"{document['steps']} steps x {document['rounds']} rounds (fastest), {document['device']}",
        "",
    ]
    steps = [
        [name, ms, document["layer_sum_ms"][name], document["layer_sum_ms"][name] / ms]
        for name, ms in document["step_ms"].items()
    ]
    lines.append(
        tabulate(
            steps,
            headers=["configuration", "whole step ms", "sum of layers ms", "sum / step"],
            floatfmt=("", ".2f", ".2f", ".2f"),
        )
    )
    lines.append(
        "the whole step adds the loss, the optimizer and casts between layers; XLA may fuse "
        "across layers, which isolation cannot"
    )
    slower = document["slower"]
    lines += [
        "",
        f"layers slower in half precision than in float32 (same XLA mode), by added "
        f"time: {min(top, len(slower))} of {len(slower)} shown",
    ]
    rows = [
        [
            e["layer"],
            e["class"],
            f"{e['precision']}+xla_{e['xla']}",
            e["float32_ms"],
            e["half_ms"],
            e["added_ms"],
            f"{e['ratio']:.2f}x",
            f"{100 * e['share_of_step']:.1f}%",
        ]
        for e in slower[:top]
    ]
    headers = [
        "layer",
        "class",
        "configuration",
        "float32 ms",
        "half ms",
        "added ms",
        "slower",
        "share of step",
    ]
    lines.append(tabulate(rows, headers=headers, floatfmt=".3f") if rows else "(none)")
    return "\n".join(lines)


def plot(document: dict[str, Any], path: Path, top: int = 15) -> Path:
    """Bar charts: the time each slower layer adds, and the whole step beside the layer sum."""
    from matplotlib.figure import Figure

    slower = document["slower"][:top]
    figure = Figure(figsize=(11, 0.35 * max(len(slower), 6) + 1.5), layout="constrained")
    added, steps = figure.subplots(1, 2, width_ratios=(2, 1))
    labels = [
        f"{e['layer']} ({e['precision'].removeprefix('mixed_')}, xla {e['xla']})" for e in slower
    ]
    added.barh(range(len(slower)), [e["added_ms"] for e in slower], color="tab:red")
    added.set_yticks(range(len(slower)), labels, fontsize=8)
    added.invert_yaxis()
    added.set_xlabel("ms added per step in half precision (vs float32)")
    added.set_title(f"{document['model']}: layers slower in half precision", fontsize=10)
    names = list(document["step_ms"])
    positions = range(len(names))
    steps.barh(
        [p - 0.2 for p in positions],
        [document["step_ms"][n] for n in names],
        0.4,
        label="whole step",
    )
    steps.barh(
        [p + 0.2 for p in positions],
        [document["layer_sum_ms"][n] for n in names],
        0.4,
        label="sum of layers",
    )
    steps.set_yticks(list(positions), names, fontsize=8)
    steps.invert_yaxis()
    steps.set_xlabel("ms per step")
    steps.legend(fontsize=8)
    figure.savefig(path, dpi=100)
    return path
