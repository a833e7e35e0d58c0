"""``mpbench maxbatch MODEL``: the largest batch each precision fits, and the memory per sample.

:func:`add_parser` registers the command; :func:`cmd_maxbatch` runs it. MODEL is loaded as
``check`` and ``profile`` load it (a registry name, a ``.keras`` file or
``package.module:factory``); per precision x XLA mode,
:func:`mpcore.train.maxbatch.search_max_batch` runs its trials, each in a fresh process
(:mod:`mpcore.bench.batchtrial`). On a GPU a batch does not fit when the device runs out of
memory; a CPU has no device limit, so there ``--memory-limit`` is required and a batch fits when
the trial process's peak RSS stays under it. The report says which of the two it did. Beside
each measured memory per sample it prints the prediction from the model alone
(:mod:`mpcore.models.memory`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mpcore.face.common import (
    UsageError,
    float_option,
    load_tensorflow,
    parse_names,
    positive_int,
)
from mpcore.names import BASELINE_PRECISION, PRECISIONS, config_name

#: What is searched without ``--precision``: on a GPU float32 and both half precisions; on a
#: CPU float32 and mixed_bfloat16 (a CPU computes float16 by converting it, so no one trains
#: in it there, and each trial on a CPU costs seconds).
GPU_PRECISIONS: tuple[str, ...] = ("float32", "mixed_float16", "mixed_bfloat16")
CPU_PRECISIONS: tuple[str, ...] = ("float32", "mixed_bfloat16")
XLA_CHOICES: tuple[str, ...] = ("off", "jit")


def batch_size_or_max(text: str) -> int | str:
    """An argparse type: a positive batch size, or ``max`` (``mpbench run --batch-size max``)."""
    if text == "max":
        return text
    return positive_int(text)


def margin_fraction(text: str) -> float:
    """An argparse type: a fraction in 0..1 (1 excluded), e.g. 0.1."""
    return float_option(text, lambda value: 0 <= value < 1, "in 0..1 (1 excluded)")


def memory_size(text: str) -> int:
    """An argparse type: a memory size such as 2GiB (:func:`parse_memory_size`)."""
    from mpcore.train.maxbatch import parse_memory_size

    try:
        return parse_memory_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``maxbatch`` command to ``subparsers``; its handler is :func:`cmd_maxbatch`."""
    from mpcore.train.maxbatch import DEFAULT_MARGIN, DEFAULT_UPPER

    parser = subparsers.add_parser(
        "maxbatch",
        help="the largest batch each precision fits (GPU: until out of memory; CPU: under "
        "--memory-limit), the memory per sample measured and predicted",
        description="Find, per precision x XLA mode, the largest batch whose training step "
        "runs: powers of two until the first that does not fit, then a binary search, each "
        "trial in a fresh process. A GPU's limit is its memory (TensorFlow's out-of-memory "
        "error); a CPU has none, so --memory-limit is required there.",
    )
    parser.add_argument("model", help="small, resnet50, vit_tiny, a .keras file or pkg.mod:factory")
    parser.add_argument(
        "--precision",
        nargs="+",
        metavar="NAME",
        help=f"{', '.join(PRECISIONS)}, or all (default: {', '.join(GPU_PRECISIONS)} on a GPU, "
        f"{', '.join(CPU_PRECISIONS)} on a CPU); float32 is always searched, as the baseline",
    )
    parser.add_argument("--xla", nargs="+", metavar="MODE", help="off, jit, or all (default: off)")
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="image side of a registry model (default: its own) or of a factory that takes "
        "image_size; a .keras file keeps its own",
    )
    parser.add_argument(
        "--memory-limit",
        type=memory_size,
        metavar="SIZE",
        help="memory budget, e.g. 2GiB or 1500MB: the largest batch whose measured peak stays "
        "under it (required on a CPU, where it is the trial process's peak RSS; on a GPU, "
        "TensorFlow's peak device memory, for a smaller card than this one)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=2,
        help="training steps per trial after the first (compiling) one (default: 2)",
    )
    parser.add_argument(
        "--start-batch",
        type=positive_int,
        default=1,
        metavar="N",
        help="first batch of the powers of two (default: 1)",
    )
    parser.add_argument(
        "--max-batch",
        type=positive_int,
        default=DEFAULT_UPPER,
        metavar="N",
        help=f"upper bound of the search (default: {DEFAULT_UPPER})",
    )
    parser.add_argument(
        "--margin",
        type=margin_fraction,
        default=DEFAULT_MARGIN,
        metavar="FRACTION",
        help="share of the largest batch given up for safety in the recommended batch "
        f"(default: {DEFAULT_MARGIN})",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=cmd_maxbatch)
    return parser


def require_tensorflow(what: str) -> None:
    """The trials build TensorFlow steps (and read TensorFlow's out-of-memory error and memory
    counter): refuse another Keras backend in one line."""
    from mpcore.probe import backend

    if not backend.is_tensorflow():
        raise UsageError(
            f"{what} runs its trials on the TensorFlow backend; KERAS_BACKEND is {backend.name()}"
        )


def limit_sentence(on_gpu: bool, device: str, limit: int | None) -> str:
    """Which limit the search used, in words."""
    from mpcore.train.maxbatch import format_bytes

    if limit is None:
        return f"limit: {device}'s own memory (a batch fits unless TensorFlow runs out of memory)"
    where = (
        "TensorFlow's peak device memory"
        if on_gpu
        else "the trial process's peak resident memory (RSS: runtime, model and step); a CPU "
        "has no device limit"
    )
    return f"limit: a memory budget of {format_bytes(limit)} on {where}"


def predictions(
    loaded: Any, spec: str, precisions: list[str], batch: int, image_size: int | None = None
) -> dict[str, Any]:
    """The predicted memory (:mod:`mpcore.models.memory`) of the model under each precision; a
    user's model without a graph of known sizes (subclassed, fully convolutional) is counted on
    one random sample (``image_size`` for its unknown sides), and one that cannot be counted
    has no prediction."""
    from mpcore.models.memory import predict_memory
    from mpcore.models.registry import build_model
    from mpcore.precision.modes import RunConfig, applied
    from mpcore.user.ownmodel import is_user_model, under_precision

    sample = None
    if is_user_model(spec):
        from mpcore.user.data import random_batch, resolve_loss

        loss, _ = resolve_loss(loaded.model, None)
        sample = random_batch(loaded.model, 1, loss, unknown_size=image_size)[0]
    estimates = {}
    for precision in precisions:
        if precision == "float8":
            continue  # quantized at compile time; its dtypes are not the built model's
        with applied(RunConfig(precision, "off")):
            if is_user_model(spec):
                model = under_precision(loaded, precision)
            else:
                model = build_model(spec, loaded.model.input_shape[1])
            try:
                estimates[precision] = predict_memory(model, batch, sample=sample)
            except ValueError:  # the search measured it; a prediction is an extra
                continue
    return estimates


def cmd_maxbatch(args: argparse.Namespace) -> int:
    from mpcore.train.maxbatch import format_bytes

    precisions = parse_names(args.precision, PRECISIONS, "--precision")
    xla_modes = parse_names(args.xla, XLA_CHOICES, "--xla") or ["off"]
    if args.start_batch > args.max_batch:
        raise UsageError(f"--start-batch {args.start_batch} is above --max-batch {args.max_batch}")
    require_tensorflow("mpbench maxbatch")
    load_tensorflow()
    from mpcore.bench.batchtrial import launch_trial, trial_spec
    from mpcore.face.profile_cmd import load
    from mpcore.probe.capability import capability
    from mpcore.train.maxbatch import search_max_batch

    found = capability()
    # The memory is where the arithmetic runs: a GPU MPBENCH_FAKE_GPU simulates does not count.
    on_gpu = bool(found.real_gpus)
    if not on_gpu and args.memory_limit is None:
        raise UsageError(
            "a CPU has no device memory limit to run out of: give --memory-limit (e.g. 2GiB), "
            "the budget the trial process's peak memory must stay under"
        )
    default = GPU_PRECISIONS if on_gpu else CPU_PRECISIONS
    precisions = list(dict.fromkeys([BASELINE_PRECISION, *(precisions or default)]))
    device = f"GPU:0 ({found.real_gpus[0].name})" if on_gpu else "CPU"
    loaded = load(args.model, args.image_size)
    image_size = args.image_size
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    say(f"model {args.model}, device {device}")
    say(limit_sentence(on_gpu, device, args.memory_limit))

    results: dict[str, Any] = {}
    for precision in precisions:
        for xla in xla_modes:
            name = config_name(precision, xla)

            def trial(batch: int, precision: str = precision, xla: str = xla) -> Any:
                return launch_trial(
                    trial_spec(
                        args.model, image_size, precision, xla, batch, args.steps, args.memory_limit
                    )
                )

            def log(result: Any, name: str = name) -> None:
                verdict = "fits" if result.fits else f"does not fit ({result.reason})"
                say(
                    f"  {name} batch {result.batch}: {verdict}, peak "
                    f"{format_bytes(result.peak_bytes)}"
                    + (f", {result.seconds:.1f} s" if result.seconds is not None else "")
                    + (f" - {result.detail}" if not result.fits and result.detail else "")
                )

            results[name] = search_max_batch(
                trial, upper=args.max_batch, start=args.start_batch, margin=args.margin, log=log
            )
    batch_for_prediction = max([r.batch for r in results.values()] + [1])
    estimates = predictions(loaded, args.model, precisions, batch_for_prediction, args.image_size)
    document = summary(
        args.model, device, on_gpu, args.memory_limit, args.steps, results, estimates
    )
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(render(document))
    if all(entry["batch"] < 1 for entry in document["configurations"].values()):
        return 1
    return 0


def summary(
    model: str,
    device: str,
    on_gpu: bool,
    limit: int | None,
    steps: int,
    results: dict[str, Any],
    estimates: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of a search: per configuration its result and prediction."""
    from mpcore.names import BASELINE_XLA
    from mpcore.train.maxbatch import ratio_phrase

    configurations = {}
    for name, result in results.items():
        precision, _, xla = name.partition("+xla_")
        entry = result.to_dict()
        baseline = results.get(config_name(BASELINE_PRECISION, xla)) or results.get(
            config_name(BASELINE_PRECISION, BASELINE_XLA)
        )
        entry["precision"], entry["xla"] = precision, xla
        entry["ratio_to_float32"] = (
            result.batch / baseline.batch if baseline and baseline.batch and result.batch else None
        )
        entry["ratio_sentence"] = (
            ratio_phrase(precision, result.batch, baseline.batch) if baseline else ""
        )
        estimate = estimates.get(precision)
        entry["predicted"] = estimate.to_dict() if estimate else None
        configurations[name] = entry
    return {
        "model": model,
        "device": device,
        "limit": "device_out_of_memory" if limit is None else "memory_budget",
        "memory_limit_bytes": limit,
        "peak_measured_as": ("tensorflow_peak" if on_gpu else "process_peak_rss"),
        "steps_per_trial": steps + 1,
        "configurations": configurations,
    }


def render(document: dict[str, Any]) -> str:
    """The terminal table of a :func:`summary` document."""
    from tabulate import tabulate

    from mpcore.train.maxbatch import format_bytes

    rows = []
    for name, entry in document["configurations"].items():
        predicted = entry["predicted"]
        measured = entry["bytes_per_sample"]
        per_sample = predicted["activation_bytes_per_sample"] if predicted else None
        rows.append(
            [
                name,
                entry["batch"] if not entry["hit_upper"] else f">= {entry['batch']} (bound)",
                entry["recommended_batch"],
                format_bytes(entry["peak_bytes"]),
                format_bytes(measured),
                format_bytes(per_sample),
                f"{measured / per_sample:.2f}" if measured and per_sample else "-",
                f"{entry['ratio_to_float32']:.2f}x" if entry["ratio_to_float32"] else "-",
                len(entry["trials"]),
            ]
        )
    headers = [
        "configuration",
        "largest batch",
        f"run (margin {next(iter(document['configurations'].values()))['margin']:.0%})",
        "peak at it",
        "per sample measured",
        "per sample predicted",
        "measured/predicted",
        "vs float32",
        "trials",
    ]
    lines = [tabulate(rows, headers=headers, disable_numparse=True)]
    for entry in document["configurations"].values():
        if entry["precision"] != BASELINE_PRECISION and entry["ratio_sentence"]:
            lines.append(f"{entry['ratio_sentence']} (XLA {entry['xla']})")
    lines.append(
        "per sample measured: the slope of the peaks of the trials that fit against their batch; "
        "predicted: activations kept for the backward pass, from the model alone"
    )
    return "\n".join(lines)


def largest_batch_for_run(settings: Any, memory_limit: int | None) -> Any:
    """``mpbench run --batch-size max``: ``settings`` with the batch float32 fits (without XLA)
    less the margin, found by the search on ``settings``' model and image size. Every
    configuration trains at that one batch, so their steps compare at the same batch; float32
    is searched because it is the baseline (a half precision fits at least as much on a GPU).
    On a CPU ``memory_limit`` is required."""
    import dataclasses

    from mpcore.bench.batchtrial import launch_trial, trial_spec
    from mpcore.probe.capability import capability
    from mpcore.train.maxbatch import format_bytes, search_max_batch

    require_tensorflow("--batch-size max")
    on_gpu = bool(capability().real_gpus)
    if not on_gpu and memory_limit is None:
        raise UsageError(
            "--batch-size max on a CPU needs --memory-limit (e.g. 2GiB): a CPU has no device "
            "memory limit to run out of"
        )
    print(
        f"--batch-size max: searching the largest float32 batch of {settings.model}; "
        + limit_sentence(on_gpu, "the GPU", memory_limit),
        flush=True,
    )

    def trial(batch: int) -> Any:
        return launch_trial(
            trial_spec(
                settings.model, settings.image_size, "float32", "off", batch, 2, memory_limit
            )
        )

    def log(result: Any) -> None:
        verdict = "fits" if result.fits else f"does not fit ({result.reason})"
        print(
            f"  batch {result.batch}: {verdict}, peak {format_bytes(result.peak_bytes)}", flush=True
        )

    result = search_max_batch(trial, log=log)
    if result.batch < 1:
        first = result.trials[0]
        raise UsageError(
            f"--batch-size max: not even batch 1 of {settings.model} fits ({first.reason}: "
            f"{first.detail})"
        )
    print(
        f"--batch-size max: float32 fits {result.batch}; training every configuration at "
        f"{result.recommended} (less the {result.margin:.0%} margin)",
        flush=True,
    )
    return dataclasses.replace(settings, batch_size=result.recommended)
