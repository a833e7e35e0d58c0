"""``mpbench numerics``: the float16 gradient census of a registry model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpcore.face.common import UsageError, check_batch_fits, load_tensorflow


def _percent(fraction: float) -> str:
    """A percentage that keeps small non-zero fractions visible (0.0004%, not 0.00%)."""
    return f"{100 * fraction:.3g}%"


def cmd_numerics(args: argparse.Namespace) -> int:
    load_tensorflow()
    from mpcore.models.registry import model_spec
    from mpcore.precision.census_plot import plot_log2_histogram
    from mpcore.train.census import loss_scale_census

    spec = model_spec(args.model)
    image_size = args.image_size or spec.default_image_size
    if image_size < spec.min_image_size:
        raise UsageError(
            f"--image-size {image_size} is too small for model {args.model} "
            f"(minimum {spec.min_image_size})"
        )
    check_batch_fits(args.batch_size, image_size)
    out = Path(args.out) if args.out else Path("runs") / f"numerics-{args.model}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {out}: {error.strerror or error}") from None

    censuses = loss_scale_census(args.model, image_size, args.batch_size, args.seed, args.dtype)
    print(
        f"gradient census: model {args.model}, {image_size} px, batch of {args.batch_size} "
        f"generated ships, cast to {args.dtype}"
    )
    files = []
    for scale, census in censuses:
        overall = census.overall
        label = "no loss scaling" if scale == 1.0 else "LossScaleOptimizer's initial scale"
        print(
            f"loss scale {scale:g} ({label}): of {overall['count']:,} non-zero gradient values, "
            f"{_percent(overall['underflow'])} underflow to zero, "
            f"{_percent(overall['subnormal'])} become subnormal, "
            f"{_percent(overall['overflow'])} overflow to infinity"
        )
        path = out / f"gradient_histogram_scale_{scale:g}.png"
        title = f"{args.model}: gradients × {scale:g} ({label}) against the {args.dtype} range"
        files.append(plot_log2_histogram(census, path, title=title))
    summary = out / "numerics.json"
    summary.write_text(json.dumps([census.to_dict() for _, census in censuses], indent=2))
    files.append(summary)
    print(f"written to {out}: " + ", ".join(Path(f).name for f in files))
    return 0
