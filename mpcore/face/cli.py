"""mpbench: what mixed precision and XLA buy in training speed, and whether they are safe.

Commands: ``run`` trains one model under each precision x XLA configuration (each in its own
process) and prints a side-by-side table; ``report`` re-renders a saved run or a pytest-benchmark
file; ``doctor`` says what to expect from this machine; ``numerics`` shows what a float16 cast
does to a model's gradients with and without loss scaling; ``check`` says whether mixed
precision is safe for a user's own model; ``profile`` times each layer of a model in float32 and
half precision; ``compare`` says what changed between two saved runs, noise taken into account;
``maxbatch`` finds the largest batch each precision fits.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from mpcore.face import check_cmd, compare_cmd, maxbatch_cmd, profile_cmd
from mpcore.face.common import (
    CACHE_ENV,
    EXIT_USAGE,
    OneLineParser,
    UsageError,
    positive_int,
    prepare_process,
    seed_int,
    target_text,
)
from mpcore.face.doctor_cmd import cmd_doctor
from mpcore.face.numerics_cmd import cmd_numerics
from mpcore.face.report_cmd import cmd_report
from mpcore.face.run_cmd import PROFILES, cmd_run
from mpcore.face.run_options import (
    DEFAULT_BUDGET_MINUTES,
    MAX_REPEATS,
    budget_minutes,
    repeats_value,
)
from mpcore.names import DEFAULT_PRECISIONS, PRECISIONS
from mpcore.run.process import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    exit_now,
    sigterm_as_interrupt,
)


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="mpbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = commands.add_parser(
        "run",
        help="train under each configuration, print the table, write results and plots",
        description="Train one model under each precision x XLA configuration, each in its own "
        "process, and compare them side by side.",
    )
    run.add_argument(
        "--data",
        metavar="DIR|synthetic|FILE.npz|MOD:FN",
        help="ship data set in the seed layout (DIR/train/train.csv, DIR/train/images/) or the "
        "article repository's (DIR/train.csv, DIR/train/), or for "
        "your own --model arrays: an .npz with x and y, or package.module:fn returning (x, y); "
        f"default: a generated synthetic set cached in ${CACHE_ENV} or ~/.cache/mpbench",
    )
    run.add_argument(
        "--model",
        help="a registry model: small, resnet50 or vit_tiny (default: from the profile), or your "
        "own: a .keras file or package.module:factory (docs/own-model.md)",
    )
    run.add_argument(
        "--precision",
        nargs="+",
        metavar="NAME",
        help=f"{', '.join(PRECISIONS)}, or all (default: {', '.join(DEFAULT_PRECISIONS)}; "
        "float8 runs only when named or with all)",
    )
    run.add_argument(
        "--xla",
        nargs="+",
        metavar="MODE",
        help="off, jit, auto, or all (default: seed profile all, quick profile off)",
    )
    run.add_argument("--epochs", type=positive_int, help="epochs (with --target: at most)")
    run.add_argument(
        "--target",
        type=target_text,
        metavar="METRIC=VALUE",
        help="train each configuration until a logged metric reaches VALUE (val_accuracy=0.9, "
        "val_loss<=0.3; --epochs at most), each repeat with its own seed; the table adds epochs "
        "and time to target and whether an epoch count exceeds the baseline's",
    )
    run.add_argument(
        "--batch-size",
        type=maxbatch_cmd.batch_size_or_max,
        help="a positive integer, or max: the largest batch float32 fits, less a 10%% margin "
        "(mpbench maxbatch's search, docs/maxbatch.md)",
    )
    run.add_argument(
        "--memory-limit",
        type=maxbatch_cmd.memory_size,
        metavar="SIZE",
        help="with --batch-size max on a CPU (required there): the memory budget, e.g. 2GiB",
    )
    run.add_argument("--image-size", type=positive_int, help="square image side in pixels")
    run.add_argument("--weights", metavar="FILE", help="initial weights file, or imagenet")
    run.add_argument(
        "--seed", type=seed_int, default=0, help="random seed (data split, init, order)"
    )
    run.add_argument("--out", metavar="DIR", help="output folder (default: runs/<timestamp>)")
    run.add_argument(
        "--repeats",
        type=repeats_value,
        metavar="N|auto",
        help=f"train each configuration N times (at most {MAX_REPEATS}), interleaved, after an "
        "untimed warm-up; the table gives the median ms/step (min-max) and each speedup's "
        "interval and verdict (default: from the profile, 5 for quick, 6 for seed); auto: the "
        "profile's rounds, then more until every comparison is decided or --budget is spent",
    )
    run.add_argument(
        "--budget",
        type=budget_minutes,
        metavar="MINUTES",
        help="with --repeats auto: the minutes the whole run may take (default: "
        f"{DEFAULT_BUDGET_MINUTES:g})",
    )
    run.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        help="also run the baseline float32+xla_off a second time as its own interleaved row, "
        "'float32+xla_off (A/A)': the machine's own noise floor (default: on for the seed "
        "profile, off for quick)",
    )
    run.add_argument(
        "--quiet",
        action="store_true",
        help="hide Keras's per-epoch lines; the progress lines between runs stay",
    )
    run.add_argument(
        "--band",
        type=compare_cmd.band_percent,
        default="3",  # a string, so argparse passes it through the type as it would "--band 3"
        metavar="PCT",
        help="speedups within +-PCT percent are reported as no practical difference (default 3)",
    )
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out, skipping finished ones"
    )
    run.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out (and list) images that cannot be decoded instead of stopping",
    )
    run.add_argument(
        "--strategy",
        metavar="NAME",
        help="tf.distribute strategy: none (default), mirrored (every GPU, or --cpu-replicas "
        "logical CPUs), multiworker (TF_CONFIG on every host); each configuration also runs "
        "without one, for the scaling efficiency",
    )
    run.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="train each configuration on N local worker processes (implies multiworker)",
    )
    run.add_argument(
        "--cpu-replicas",
        type=positive_int,
        metavar="N",
        help="without a GPU, split the CPU into N logical devices for --strategy mirrored "
        "(shows the mechanics on a CPU; the devices share its cores, so no speedup)",
    )
    run.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="seed: ResNet50 224 px batch 80, 5 epochs; quick: small CNN 48 px batch 16, "
        "4 epochs (default: seed with a GPU, quick without)",
    )
    run.add_argument(
        "--synthetic-per-class",
        type=positive_int,
        metavar="N",
        help="images per class of the generated data set (default: from the profile)",
    )
    run.set_defaults(handler=cmd_run)

    report = commands.add_parser(
        "report",
        help="re-render the table and plots of a saved run or a pytest-benchmark file",
    )
    report.add_argument(
        "path", help="run folder or results.json, pytest-benchmark JSON, or a .benchmarks folder"
    )
    report.add_argument("--out", metavar="DIR", help="where to write (default: beside the input)")
    report.add_argument(
        "--band",
        type=compare_cmd.band_percent,
        metavar="PCT",
        help="judge the speedups with this band instead of the run's own --band",
    )
    report.set_defaults(handler=cmd_report)

    doctor = commands.add_parser(
        "doctor", help="versions, devices, and whether mixed precision should speed up here"
    )
    doctor.add_argument("--model", help="also list its layers that are not multiples of 8")
    doctor.add_argument("--batch-size", type=positive_int, help="check it is a multiple of 8")
    doctor.add_argument("--image-size", type=positive_int)
    doctor.add_argument(
        "--measure",
        action="store_true",
        help="time matmuls and a 3x3 convolution in float32/float16/bfloat16 on each device",
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON document instead")
    doctor.set_defaults(handler=cmd_doctor)

    numerics = commands.add_parser(
        "numerics",
        help="float16 underflow/overflow census of a model's gradients, with and without "
        "loss scaling",
    )
    numerics.add_argument("--model", choices=("small", "resnet50"), default="small")
    numerics.add_argument("--image-size", type=positive_int)
    numerics.add_argument("--batch-size", type=positive_int, default=8)
    numerics.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    numerics.add_argument("--seed", type=seed_int, default=0)
    numerics.add_argument("--out", metavar="DIR", help="default: runs/numerics-<model>")
    numerics.set_defaults(handler=cmd_numerics)

    check_cmd.add_parser(commands)
    profile_cmd.add_parser(commands)
    compare_cmd.add_parser(commands)
    maxbatch_cmd.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``mpbench ARGV`` in this process: its exit status (the console script is :func:`console`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        prepare_process()
        with sigterm_as_interrupt():
            return args.handler(args)
    except UsageError as error:
        print(f"mpbench {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        print(f"mpbench {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"mpbench {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into a reader that stopped early (``| head``): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def console() -> NoReturn:
    """The ``mpbench`` console script and ``python -m mpcore``: :func:`main` in a process of its
    own, which ends without the interpreter's teardown (:func:`mpcore.run.process.exit_now`)."""
    code = main()
    exit_now(code if isinstance(code, int) else int(code is not None))


if __name__ == "__main__":
    console()
