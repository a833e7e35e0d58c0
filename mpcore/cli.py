"""The ``mpbench`` command line (minimal until the CLI issue lands)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpbench`` console script."""
    parser = argparse.ArgumentParser(prog="mpbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the small model under float32 and mixed_float16")
    run.add_argument("--epochs", type=int, default=5)
    run.add_argument("--data", default=".mpbench-cache/synthetic-ships")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tabulate import tabulate

    from mpcore.data import read_ship_index, stratified_split
    from mpcore.modes import RunConfig
    from mpcore.synthetic import write_synthetic_ships
    from mpcore.training import TrainSettings, train

    train_index, validation_index = stratified_split(
        read_ship_index(write_synthetic_ships(args.data))
    )
    rows = []
    for precision in ("float32", "mixed_float16"):
        config = RunConfig(precision, "off")
        print(f"== {config.name}", flush=True)
        result = train(
            config, TrainSettings(epochs=args.epochs), train_index, validation_index, verbose=2
        )
        rows.append(
            (
                config.name,
                result.first_epoch_seconds,
                result.ms_per_step,
                result.images_per_second,
                result.loss[-1],
                result.val_accuracy[-1],
            )
        )
    print(
        tabulate(
            rows,
            headers=(
                "configuration",
                "first epoch s",
                "ms/step",
                "images/s",
                "final loss",
                "val accuracy",
            ),
            floatfmt=".3f",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
