"""mpbench: what mixed precision and XLA buy in training speed, and whether they are safe.

Commands: ``run`` trains one model under each precision x XLA configuration (each in its own
process) and prints a side-by-side table; ``report`` re-renders a saved run or a pytest-benchmark
file; ``doctor`` says what to expect from this machine; ``numerics`` shows what a float16 cast
does to a model's gradients with and without loss scaling.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # imported lazily at run time: TensorFlow loads only when a command needs it
    from mpcore.training import TrainSettings

#: Exit status for bad usage or bad input (argparse's convention).
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
CACHE_ENV = "MPBENCH_CACHE"
VALIDATION_FRACTION = 0.2


class UsageError(Exception):
    """Bad options or input: printed as one ``mpbench: error: ...`` line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclasses.dataclass(frozen=True)
class Profile:
    """Defaults of ``mpbench run`` for one kind of machine."""

    model: str
    image_size: int
    batch_size: int
    epochs: int
    xla: tuple[str, ...]
    synthetic_per_class: int


PROFILES: dict[str, Profile] = {
    # The seed article's experiment: ResNet50 at 224x224, batch 80, 5 epochs.
    "seed": Profile("resnet50", 224, 80, 5, ("off", "jit", "auto"), 120),
    # Small enough that all four precisions finish in well under 3 minutes on a 2-core CPU.
    # XLA stays off: on a CPU its compilation costs more than it saves at this size.
    "quick": Profile("small", 48, 16, 4, ("off",), 60),
}


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hold back what TensorFlow's C++ side writes to stderr while it loads (CUDA probing
    chatter that ignores ``TF_CPP_MIN_LOG_LEVEL``); replay it if loading fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_tensorflow() -> None:
    """Import TensorFlow and probe the GPUs quietly, once, before any command uses them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_native_stderr():
        from mpcore.machine import visible_gpus

        visible_gpus()


def cache_dir() -> Path:
    """Where generated data is cached: ``$MPBENCH_CACHE``, else ``$XDG_CACHE_HOME/mpbench``,
    else ``~/.cache/mpbench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mpbench"


def parse_names(values: Sequence[str] | None, valid: Sequence[str], option: str) -> list[str]:
    """Names from repeated and/or comma-separated values; ``all`` means every valid name."""
    if not values:
        return []
    names: list[str] = []
    for value in values:
        for name in filter(None, (part.strip() for part in value.split(","))):
            if name == "all":
                names.extend(valid)
            elif name in valid:
                names.append(name)
            else:
                raise UsageError(f"unknown {option} value {name!r}; valid: {', '.join(valid)}, all")
    return list(dict.fromkeys(names))


def choose_profile(requested: str | None, gpu_count: int) -> tuple[str, str]:
    """The profile name and the reason it was chosen."""
    if requested:
        return requested, "chosen with --profile"
    if gpu_count:
        return "seed", f"{gpu_count} GPU(s) visible to TensorFlow (use --profile quick to go small)"
    return "quick", "no GPU visible to TensorFlow, so the small model at a small size on the CPU"


def default_out() -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / stamp
    suffix = 1
    while out.exists():
        suffix += 1
        out = Path("runs") / f"{stamp}-{suffix}"
    return out


# --------------------------------------------------------------------------------------------
# mpbench run


def _synthetic_root(profile: Profile, per_class: int | None, image_size: int, seed: int) -> Path:
    from mpcore.synthetic import MARKER, write_synthetic_ships

    count = per_class or profile.synthetic_per_class
    # Images are drawn at the training size (at least 32 px) so resizing does not blur them.
    size = max(32, image_size)
    root = cache_dir() / f"synthetic-ships-{count}x{size}px-seed{seed}"
    if not (root / MARKER).is_file():
        print(f"data: generating {5 * count} synthetic ship images ({size} px), once", flush=True)
    try:
        return write_synthetic_ships(root, per_class=count, image_size=size, seed=seed)
    except OSError as error:
        raise UsageError(
            f"cannot write the synthetic data set to {root}: {error.strerror or error} "
            f"(set {CACHE_ENV} to a writable folder)"
        ) from None
    except ValueError as error:
        raise UsageError(f"--synthetic-per-class: {error}") from None


def _check_weights(model: str, image_size: int, weights: str) -> str:
    """Fail early, in the parent, on a weights file every worker would fail on."""
    from mpcore.models import WeightsError, build_model
    from mpcore.modes import RunConfig, applied

    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"--weights: file not found: {weights}")
        if not os.access(path, os.R_OK):
            raise UsageError(f"--weights: file not readable: {weights}")
        weights = str(path.resolve())
    try:
        with applied(RunConfig("float32", "off")):
            build_model(model, image_size, weights=weights)
    except WeightsError as error:
        raise UsageError(f"--weights: {error}") from None
    return weights


def _prepare_out(args: argparse.Namespace) -> Path:
    from mpcore.runner import RESULTS_FILE

    out = Path(args.out) if args.out else default_out()
    holds_run = (out / RESULTS_FILE).is_file()
    if args.resume and not holds_run:
        raise UsageError(f"--resume: {out} holds no {RESULTS_FILE} to resume")
    if holds_run and not args.resume:
        raise UsageError(
            f"--out {out} already holds a run ({RESULTS_FILE}); "
            "pass --resume to continue it or choose a new folder"
        )
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    return out


def _settings(args: argparse.Namespace, profile: Profile) -> TrainSettings:
    """The run's ``TrainSettings``: the options given, the profile's values for the rest."""
    from mpcore.models import model_spec
    from mpcore.training import TrainSettings

    model = args.model or profile.model
    try:
        spec = model_spec(model)
    except ValueError as error:
        raise UsageError(f"--model: {error}") from None
    # A model chosen with --model gets its own default size, not the profile's model's.
    image_size = args.image_size or (None if args.model else profile.image_size)
    image_size = image_size or spec.default_image_size
    if image_size < spec.min_image_size:
        raise UsageError(
            f"--image-size {image_size} is too small for model {model} "
            f"(minimum {spec.min_image_size})"
        )
    try:
        return TrainSettings(
            model=model,
            image_size=image_size,
            batch_size=args.batch_size or profile.batch_size,
            epochs=args.epochs or profile.epochs,
            seed=args.seed,
            weights=_check_weights(model, image_size, args.weights) if args.weights else None,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


def _data(
    args: argparse.Namespace, profile: Profile, settings: TrainSettings
) -> tuple[Path, dict[str, Any]]:
    """The data set's root and its description for ``results.json``, validated and split as
    every worker will split it."""
    from mpcore.data import (
        DataError,
        describe_bad_images,
        find_bad_images,
        read_ship_index,
        stratified_split,
        without_images,
    )

    synthetic = args.data in (None, "synthetic")
    root = (
        _synthetic_root(profile, args.synthetic_per_class, settings.image_size, args.seed)
        if synthetic
        else Path(args.data)
    )
    try:
        index = read_ship_index(root)
        # Decode every image now: a corrupt one would otherwise fail a worker mid-epoch, and
        # every configuration after it, with a TensorFlow error naming no file.
        bad = find_bad_images(index)
        if bad and not args.skip_bad_images:
            raise UsageError(
                f"{describe_bad_images(bad)}; fix or remove them, or pass --skip-bad-images"
            )
        if bad:
            print(f"data: leaving out {describe_bad_images(bad)}", flush=True)
            index = without_images(index, bad)
        train_index, validation_index = stratified_split(index, VALIDATION_FRACTION, args.seed)
    except DataError as error:
        raise UsageError(str(error)) from None
    if settings.batch_size > len(train_index):
        raise UsageError(
            f"--batch-size {settings.batch_size} is larger than the training split "
            f"({len(train_index)} images of {len(index)})"
        )
    return root.resolve(), {
        "root": str(root.resolve()),
        "synthetic": synthetic,
        "images": len(index),
        "train_images": len(train_index),
        "validation_images": len(validation_index),
        "class_counts": index.class_counts(),
        "skipped_images": [{"path": image.path, "reason": image.reason} for image in bad],
    }


@dataclasses.dataclass(frozen=True)
class Distribution:
    """How ``mpbench run`` distributes each configuration (``--strategy``, ``--workers``,
    ``--cpu-replicas``) and how many replicas that is, when known before training."""

    strategy: str
    workers: int
    cpu_replicas: int
    replicas: int | None
    #: False on the hosts of a multi-host cluster other than the chief (their results are
    #: not the run's).
    chief: bool = True
    task_index: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _distribution(args: argparse.Namespace, gpu_count: int) -> Distribution:
    """Validate the distribution options together; one usage error for a bad combination."""
    from mpcore.distribute import StrategyError, is_chief, parse_strategy, read_tf_config

    try:
        strategy = parse_strategy(args.strategy or ("multiworker" if args.workers else "none"))
    except StrategyError as error:
        raise UsageError(f"--strategy: {error}") from None
    if args.workers and strategy != "multiworker":
        raise UsageError(
            f"--workers {args.workers} runs local multiworker workers; it cannot be combined "
            f"with --strategy {strategy}"
        )
    if args.cpu_replicas and strategy != "mirrored":
        raise UsageError("--cpu-replicas splits the CPU for --strategy mirrored only")
    if args.cpu_replicas and gpu_count:
        raise UsageError(
            f"--cpu-replicas: {gpu_count} GPU(s) are visible and --strategy mirrored uses them; "
            "choose GPUs with CUDA_VISIBLE_DEVICES instead"
        )
    if strategy == "mirrored":
        replicas = args.cpu_replicas or gpu_count or 1
        return Distribution(strategy, 0, args.cpu_replicas or 0, replicas)
    if strategy != "multiworker":
        return Distribution(strategy, 0, 0, 1)
    if args.workers:
        return Distribution(strategy, args.workers, 0, args.workers * max(gpu_count, 1))
    try:
        tf_config = read_tf_config()  # fail here, not in every worker
    except StrategyError as error:
        raise UsageError(str(error)) from None
    index = int(tf_config["task"]["index"])
    return Distribution(strategy, 0, 0, None, chief=is_chief(tf_config), task_index=index)


def _planned_configs(configs: Sequence[Any], distribution: Distribution) -> list[dict[str, str]]:
    """Each configuration as planned: under a strategy, first without one (the one-replica
    baseline its scaling efficiency is measured against), then under the strategy."""
    planned: list[dict[str, str]] = []
    for config in configs:
        planned.append(config.to_dict())
        if distribution.strategy != "none":
            planned.append({**config.to_dict(), "strategy": distribution.strategy})
    return planned


def cmd_run(args: argparse.Namespace) -> int:
    load_tensorflow()
    from mpcore.machine import visible_gpus

    profile_name, reason = choose_profile(args.profile, len(visible_gpus()))
    print(f"profile {profile_name}: {reason}", flush=True)
    profile = PROFILES[profile_name]
    distribution = _distribution(args, len(visible_gpus()))
    if not distribution.chief:
        # Every host trains (the cluster needs all of them); the chief's results are the run's.
        args.out = str(Path(args.out or default_out()) / f"worker-{distribution.task_index}")
        print(f"worker {distribution.task_index}: not the chief; its copy goes to {args.out}")

    from mpcore import report, runner
    from mpcore.machine import machine_summary
    from mpcore.modes import PRECISIONS, XLA_MODES, RunConfig

    precisions = parse_names(args.precision, PRECISIONS, "--precision") or list(PRECISIONS)
    xla_modes = parse_names(args.xla, XLA_MODES, "--xla") or list(profile.xla)
    settings = _settings(args, profile)
    out = _prepare_out(args)
    root, data = _data(args, profile, settings)
    replicas = distribution.replicas or 1
    global_batch = settings.batch_size * replicas
    if global_batch > data["train_images"]:
        raise UsageError(
            f"--batch-size {settings.batch_size} x {replicas} replicas is a global batch larger "
            f"than the training split ({data['train_images']} images)"
        )
    if distribution.workers and data.get("skipped_images"):
        # The local workers (mpcore.distribute) read the whole index: they cannot leave images out.
        raise UsageError(
            "--skip-bad-images is not supported with --workers; remove the undecodable images "
            "from the data set"
        )
    validation = data["validation_images"]
    if validation < global_batch and validation % replicas:
        # Keras builds the model from the first validation batch reduced across the replicas,
        # which fails (AddN of unequal shapes) when that batch splits unevenly.
        raise UsageError(
            f"the validation split ({validation} images) is smaller than the global batch "
            f"({global_batch}) and does not split evenly over {replicas} replicas, which Keras "
            "cannot evaluate under tf.distribute; use a smaller --batch-size or more data"
        )
    try:
        runner.check_writable_folder(out)
    except runner.RunSetupError as error:
        raise UsageError(str(error)) from None
    print(
        f"data: {'synthetic ship set' if data['synthetic'] else 'ship set'} at {root} "
        f"({data['train_images']} training, {data['validation_images']} validation images)",
        flush=True,
    )

    configs = [RunConfig(p, x) for p in precisions for x in xla_modes]
    plan = runner.RunPlan(
        out=out,
        data_root=root,
        settings=settings.to_dict(),
        configs=_planned_configs(configs, distribution),
        validation_fraction=VALIDATION_FRACTION,
        verbose=1 if sys.stdout.isatty() else 2,
        cpu_replicas=distribution.cpu_replicas,
        workers=distribution.workers,
        skipped_images=[image["path"] for image in data["skipped_images"]],
    )
    try:
        if args.resume:
            document = runner.resumable_document(out / runner.RESULTS_FILE, plan)
        else:
            document = runner.new_document(
                plan,
                profile=profile_name,
                profile_reason=reason,
                data=data,
                machine=machine_summary(),
                command=["mpbench", *args.argv],
            )
    except runner.RunSetupError as error:
        raise UsageError(str(error)) from None
    document["distribution"] = distribution.to_dict()
    if distribution.strategy != "none":
        print(
            f"strategy {distribution.strategy}: "
            + (f"{distribution.workers} local worker(s), " if distribution.workers else "")
            + (f"{distribution.replicas} replica(s), " if distribution.replicas else "")
            + f"batch {settings.batch_size} per replica; each configuration also runs without "
            "a strategy (one replica) for the scaling efficiency",
            flush=True,
        )
    print(
        f"{len(plan.configs)} configuration(s): {', '.join(plan.names)}; "
        f"model {settings.model}, {settings.image_size} px, batch {settings.batch_size}, "
        f"{settings.epochs} epoch(s); output in {out}",
        flush=True,
    )
    completed = runner.run_all(plan, document, announce=lambda line: print(line, flush=True))

    print()
    print(report.run_table(document))
    files = report.render_run(document, out)
    print(f"\nwritten to {out}: {runner.RESULTS_FILE}, " + ", ".join(f.name for f in files))
    print(f"compare the runs in TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    if not completed:
        print(
            f"interrupted: {len(document['configurations'])} of {len(plan.configs)} "
            "configuration(s) "
            f"finished; continue with: mpbench run --resume --out {out} (and the same options)"
        )
        return EXIT_INTERRUPTED
    failed = [r["name"] for r in document["configurations"] if r["status"] != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)} (reasons in the table and in {out / 'logs'})")
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# mpbench report, doctor, numerics


def cmd_report(args: argparse.Namespace) -> int:
    from mpcore import report

    try:
        kind, document, source = report.load(args.path)
    except report.ReportError as error:
        raise UsageError(str(error)) from None
    out = Path(args.out) if args.out else source.parent
    try:
        if kind == "run":
            table = report.run_table(document)
            files = report.render_run(document, out)
        else:
            load_tensorflow()  # the benchmark suite's table module imports mpcore.modes
            table, files = report.render_benchmark(document, out)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise UsageError(
            f"{source}: a field is missing or malformed ({type(error).__name__}: {error})"
        ) from None
    except OSError as error:
        raise UsageError(f"cannot write to {out}: {error.strerror or error}") from None
    print(table)
    print(f"\nfrom {source}; written to {out}: " + ", ".join(f.name for f in files))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    load_tensorflow()
    from mpcore.doctor import run_doctor
    from mpcore.models import MODELS

    if args.model is not None and args.model not in MODELS:
        raise UsageError(f"unknown --model {args.model!r}; valid: {', '.join(MODELS)}")
    return run_doctor(args.model, args.batch_size, args.image_size)


def generated_batch(model: str, image_size: int, batch_size: int, seed: int) -> tuple[Any, Any]:
    """A batch of synthetic ships (classes in turn), preprocessed for ``model``."""
    import numpy as np

    from mpcore.models import model_spec
    from mpcore.synthetic import render_ship

    rng = np.random.default_rng(seed)
    labels = np.arange(batch_size, dtype=np.int32) % 5
    images = np.stack([np.asarray(render_ship(int(label), image_size, rng)) for label in labels])
    return model_spec(model).preprocess(images.astype(np.float32)), labels


def _percent(fraction: float) -> str:
    """A percentage that keeps small non-zero fractions visible (0.0004%, not 0.00%)."""
    return f"{100 * fraction:.3g}%"


def cmd_numerics(args: argparse.Namespace) -> int:
    load_tensorflow()
    import json

    import keras

    from mpcore.models import build_model, model_spec
    from mpcore.modes import RunConfig, applied
    from mpcore.numerics import gradient_census, plot_log2_histogram
    from mpcore.training import compile_for, current_loss_scale

    try:
        image_size = args.image_size or model_spec(args.model).default_image_size
        if image_size < model_spec(args.model).min_image_size:
            raise ValueError(
                f"--image-size {image_size} is too small for model {args.model} "
                f"(minimum {model_spec(args.model).min_image_size})"
            )
    except ValueError as error:
        raise UsageError(str(error)) from None
    out = Path(args.out) if args.out else Path("runs") / f"numerics-{args.model}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {out}: {error.strerror or error}") from None

    float32 = RunConfig("float32", "off")
    with applied(float32):
        keras.utils.set_random_seed(args.seed)
        # The census needs float32 gradients: it asks what a float16 cast would do to them.
        model = compile_for(build_model(args.model, image_size), float32, learning_rate=1e-3)
        batch = generated_batch(args.model, image_size, args.batch_size, args.seed)
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
        optimizer.build(model.trainable_variables)
        scales = [1.0, current_loss_scale(optimizer) or 1.0]
        reports = [gradient_census(model, batch, loss_scale=s, dtype=args.dtype) for s in scales]

    print(
        f"gradient census: model {args.model}, {image_size} px, batch of {args.batch_size} "
        f"generated ships, cast to {args.dtype}"
    )
    files = []
    for scale, census in zip(scales, reports, strict=True):
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
    summary.write_text(json.dumps([census.to_dict() for census in reports], indent=2))
    files.append(summary)
    print(f"written to {out}: " + ", ".join(Path(f).name for f in files))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    load_tensorflow()
    from mpcore.check_cli import run
    from mpcore.loader import LoadError

    try:
        return run(args)
    except LoadError as error:
        raise UsageError(str(error)) from None


# --------------------------------------------------------------------------------------------
# Parser and entry point


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


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
        metavar="DIR|synthetic",
        help="ship data set in the seed layout (DIR/train/train.csv, DIR/train/images/); "
        f"default: a generated synthetic set cached in ${CACHE_ENV} or ~/.cache/mpbench",
    )
    run.add_argument("--model", help="small or resnet50 (default: from the profile)")
    run.add_argument(
        "--precision",
        nargs="+",
        metavar="NAME",
        help="float32, mixed_float16, mixed_bfloat16, amp_rewrite, or all (default: all)",
    )
    run.add_argument(
        "--xla",
        nargs="+",
        metavar="MODE",
        help="off, jit, auto, or all (default: seed profile all, quick profile off)",
    )
    run.add_argument("--epochs", type=positive_int)
    run.add_argument("--batch-size", type=positive_int)
    run.add_argument("--image-size", type=positive_int, help="square image side in pixels")
    run.add_argument("--weights", metavar="FILE", help="initial weights file, or imagenet")
    run.add_argument("--seed", type=int, default=0, help="random seed (data split, init, order)")
    run.add_argument("--out", metavar="DIR", help="output folder (default: runs/<timestamp>)")
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
    report.set_defaults(handler=cmd_report)

    doctor = commands.add_parser(
        "doctor", help="versions, devices, and whether mixed precision should speed up here"
    )
    doctor.add_argument("--model", help="also list its layers that are not multiples of 8")
    doctor.add_argument("--batch-size", type=positive_int, help="check it is a multiple of 8")
    doctor.add_argument("--image-size", type=positive_int)
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
    numerics.add_argument("--seed", type=int, default=0)
    numerics.add_argument("--out", metavar="DIR", help="default: runs/numerics-<model>")
    numerics.set_defaults(handler=cmd_numerics)

    from mpcore.check_cli import add_parser as add_check_parser  # issue 14: all logic there

    add_check_parser(commands, positive_int).set_defaults(handler=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpbench`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.handler(args)
    except UsageError as error:
        print(f"mpbench {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"mpbench {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into a reader that stopped early (``| head``): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
