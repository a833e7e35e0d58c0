"""``mpbench run``: validate the options into a plan, run it, print the table.

Every option is checked here, in the parent, before any worker starts: a problem is one
:class:`~mpcore.face.common.UsageError` line and nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpcore.face.common import (
    UsageError,
    cache_dir,
    check_batch_fits,
    check_batch_in_split,
    load_tensorflow,
    parse_names,
    quiet_native_stderr,
    train_settings,
)
from mpcore.face.run_backend import (
    backend_xla,
    check_backend_options,
    keras_backend,
)
from mpcore.face.run_distribution import Distribution, parse_distribution
from mpcore.face.run_guard import (
    check_resumed,
    locked_out,
    refuse_if_locked,
    removed_on_failure,
)
from mpcore.face.run_options import AUTO, check_repeat_options, describe_repeats, plan_options
from mpcore.names import DEFAULT_PRECISIONS, PRECISIONS, VALIDATION_FRACTION, XLA_MODES
from mpcore.run.process import EXIT_INTERRUPTED, EXIT_TERMINATED, terminated
from mpcore.run.stats import planned_repeats

if TYPE_CHECKING:  # imported lazily at run time: TensorFlow loads only when a command needs it
    from mpcore.train.settings import TrainSettings


@dataclasses.dataclass(frozen=True)
class Profile:
    """Defaults of ``mpbench run`` for one kind of machine."""

    model: str
    image_size: int
    batch_size: int
    epochs: int
    xla: tuple[str, ...]
    synthetic_per_class: int
    #: Interleaved runs of each configuration (``--repeats``): the fewest that can decide the
    #: run's comparisons at a 5% family-wise error rate (docs/statistics.md).
    repeats: int = 6
    #: Whether ``--control`` (the A/A row) is on by default.
    control: bool = False


PROFILES: dict[str, Profile] = {
    # The seed article's experiment: ResNet50 at 224x224, batch 80, 5 epochs.
    # The A/A control adds one row to twelve (8% more time) where GPU users decide on speedups.
    "seed": Profile("resnet50", 224, 80, 5, ("off", "jit", "auto"), 120, control=True),
    # Small enough that all four precisions finish in well under 3 minutes on a 2-core CPU.
    # XLA stays off: on a CPU its compilation costs more than it saves at this size.
    # Five repeats, the fewest that can decide its 3 comparisons: 20 workers of about 5.5 s
    # plus the warm-up, about 2 minutes at a load average near 2 (docs/statistics.md).
    "quick": Profile("small", 48, 16, 4, ("off",), 60, repeats=5),
}


def choose_profile(
    requested: str | None, gpu_count: int, model: str | None = None
) -> tuple[str, str]:
    """The profile name and the reason it was chosen (``model``: the one ``--model`` names,
    which replaces the profile's)."""
    if requested:
        return requested, "chosen with --profile"
    if gpu_count:
        return "seed", f"{gpu_count} GPU(s) visible to TensorFlow (use --profile quick to go small)"
    if model:
        return (
            "quick",
            f"no GPU visible to TensorFlow, so the CPU's short settings for --model {model}",
        )
    return "quick", "no GPU visible to TensorFlow, so the small model at a small size on the CPU"


def default_out() -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / stamp
    suffix = 1
    while out.exists():
        suffix += 1
        out = Path("runs") / f"{stamp}-{suffix}"
    return out


def _synthetic_root(profile: Profile, per_class: int | None, image_size: int, seed: int) -> Path:
    from mpcore.data.synthetic import MARKER, write_synthetic_ships

    count = per_class or profile.synthetic_per_class
    # Images are drawn at the training size (at least 32 px) so resizing does not blur them.
    size = max(32, image_size)
    root = cache_dir() / f"synthetic-ships-{count}x{size}px-seed{seed}"
    if not (root / MARKER).is_file():
        print(f"data: generating {5 * count} synthetic ship images ({size} px), once", flush=True)
    try:
        with removed_on_failure(root):
            return write_synthetic_ships(root, per_class=count, image_size=size, seed=seed)
    except OSError as error:
        raise UsageError(
            f"cannot write the synthetic data set to {root}: {error.strerror or error} "
            f"(set $MPBENCH_CACHE to a writable folder)"
        ) from None
    except ValueError as error:
        raise UsageError(f"--synthetic-per-class: {error}") from None


def _check_weights(model: str, image_size: int, weights: str) -> str:
    """Fail early, in the parent, on a weights file every worker would fail on."""
    from mpcore.models.registry import WeightsError, build_model
    from mpcore.precision.modes import RunConfig, applied

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


def _out_folder(args: argparse.Namespace, distribution: Distribution) -> Path:
    """The run folder, checked against ``--resume``; a non-chief host writes its copy of the
    run into ``OUT/worker-INDEX``."""
    from mpcore.run.schema import RESULTS_FILE

    out = Path(args.out) if args.out else default_out()
    if not distribution.chief:
        # Every host trains (the cluster needs all of them); the chief's results are the run's.
        out = out / f"worker-{distribution.task_index}"
        print(f"worker {distribution.task_index}: not the chief; its copy goes to {out}")
    refuse_if_locked(out)
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
    from mpcore.face import own_run
    from mpcore.models.registry import model_spec

    if own_run.is_user_model(args.model):  # a .keras file or package.module:factory
        return own_run.user_settings(args, profile)
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
    check_batch_fits(args.batch_size or profile.batch_size, image_size)
    weights = _check_weights(model, image_size, args.weights) if args.weights else None
    return train_settings(args, profile, model=model, image_size=image_size, weights=weights)


def _data(
    args: argparse.Namespace, profile: Profile, settings: TrainSettings
) -> tuple[Path, dict[str, Any]]:
    """The data set's root and its description for ``results.json``, validated and split as
    every worker will split it."""
    from mpcore.data.ships import (
        DataError,
        describe_bad_images,
        find_bad_images,
        fingerprint,
        read_ship_index,
        stratified_split,
        without_images,
    )
    from mpcore.face import own_run
    from mpcore.user.ownmodel import is_array_data

    if is_array_data(args.data):  # a user's model on its own arrays
        return own_run.array_data(args, settings)
    synthetic = args.data in (None, "synthetic")
    root = (
        _synthetic_root(profile, args.synthetic_per_class, settings.image_size, args.seed)
        if synthetic
        else Path(args.data)
    )
    try:
        index = read_ship_index(root)
        # Decode every image now: a corrupt one would otherwise fail a worker mid-epoch, and
        # every configuration after it, with a TensorFlow error naming no file. libjpeg writes
        # its complaints straight to stderr: held back, as the bad images are named below.
        with quiet_native_stderr():
            bad = find_bad_images(index)
        identity = fingerprint(index)
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
    check_batch_in_split(settings.batch_size, len(train_index), len(index))
    return root.resolve(), {
        "root": str(root.resolve()),
        "synthetic": synthetic,
        "images": len(index),
        "train_images": len(train_index),
        "validation_images": len(validation_index),
        "class_counts": index.class_counts(),
        "skipped_images": [{"path": image.path, "reason": image.reason} for image in bad],
        "fingerprint": identity,
    }


def _check_float8_model(model: str) -> None:
    """Refuse ``float8`` for a model with nothing for it to quantize, before any worker starts."""
    from mpcore.face import own_run
    from mpcore.models.registry import model_spec

    if own_run.is_user_model(model):
        return  # checked with the model itself (own_run.user_settings)
    if not model_spec(model).float8_layers:
        raise UsageError(
            f"--precision float8: model {model} has no Dense or EinsumDense layer besides its "
            "head, so float8 would change nothing (try --model small or vit_tiny)"
        )


def _check_batches(batch_size: int, data: dict[str, Any], distribution: Distribution) -> None:
    """Refuse global batches the split cannot serve under the distribution."""
    replicas = distribution.replicas or 1
    global_batch = batch_size * replicas
    if global_batch > data["train_images"]:
        raise UsageError(
            f"--batch-size {batch_size} x {replicas} replicas is a global batch larger "
            f"than the training split ({data['train_images']} images)"
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


def cmd_run(args: argparse.Namespace) -> int:
    check_repeat_options(args)
    check_backend_options(args)  # before anything imports the backend's framework
    with contextlib.ExitStack() as held:  # the run folder's lock, released however we leave
        return _run(args, held)


def _run(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    if keras_backend() == "tensorflow":
        load_tensorflow()
    from mpcore import report
    from mpcore.probe.capability import capability, machine_record
    from mpcore.probe.machine import visible_gpus
    from mpcore.run import files, schema
    from mpcore.run import plan as planning

    gpu_count = len(visible_gpus())  # placement: the devices a strategy can mirror over
    try:
        decided = capability()  # decisions: the GPUs, simulated or not
    except ValueError as error:
        raise UsageError(str(error)) from None
    profile_name, reason = choose_profile(args.profile, decided.gpu_count, args.model)
    if not args.profile:
        reason += decided.simulated_tag()
    print(f"profile {profile_name}: {reason}", flush=True)
    profile = PROFILES[profile_name]
    distribution = parse_distribution(args, gpu_count)
    precisions = parse_names(args.precision, PRECISIONS, "--precision") or list(DEFAULT_PRECISIONS)
    xla_modes = parse_names(args.xla, XLA_MODES, "--xla") or backend_xla(profile.xla)
    comparisons = len(precisions) * len(xla_modes) * (1 + (distribution.strategy != "none")) - 1
    try:
        repeats = planned_repeats(
            None if args.repeats == AUTO else args.repeats, profile.repeats, comparisons
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    largest = args.batch_size == "max"
    if args.memory_limit is not None and not largest:
        raise UsageError("--memory-limit is the budget of --batch-size max; give both")
    if largest:
        args.batch_size = None  # the profile's, until the search has found one
    settings = _settings(args, profile)
    if largest:
        from mpcore.face.maxbatch_cmd import largest_batch_for_run

        settings = largest_batch_for_run(settings, args.memory_limit)
        args.batch_size = settings.batch_size
    if "float8" in precisions:
        _check_float8_model(settings.model)
    out = _out_folder(args, distribution)
    root, data = _data(args, profile, settings)
    _check_batches(settings.batch_size, data, distribution)
    created = not out.exists()
    try:
        files.check_writable_folder(out)
    except files.RunSetupError as error:
        raise UsageError(str(error)) from None
    held.enter_context(locked_out(out, args.resume, created))
    from mpcore.data.ships import layout_of

    found = layout_of(root)  # which of the two ship layouts (none for a user's arrays)
    shipped = not data["synthetic"] and (Path(root) / found.csv).is_file()
    layout = f"layout {found.describe()}; " if shipped else ""
    arrays = settings.image_size is None  # a user's model on its own arrays, not images
    kind = "arrays" if arrays else "synthetic ship set" if data["synthetic"] else "ship set"
    print(
        f"data: {kind} at {root} ({layout}{data['train_images']} training, "
        f"{data['validation_images']} validation {'samples' if arrays else 'images'})",
        flush=True,
    )
    modes = [{"precision": p, "xla": x} for p in precisions for x in xla_modes]
    plan = planning.RunPlan(
        out=out,
        data_root=root,
        settings=settings.to_dict(),
        skipped_images=[image["path"] for image in data["skipped_images"]],
        cpu_replicas=distribution.cpu_replicas,
        workers=distribution.workers,
        **plan_options(args, repeats, profile.control, modes, distribution.strategy),
    )
    try:
        if args.resume:
            document = plan.resumed_document(distribution.to_dict())
            check_resumed(document, data, plan.names, out)
        else:
            document = plan.new_document(
                profile=profile_name,
                profile_reason=reason,
                data=data,
                machine=machine_record(),
                command=["mpbench", *args.argv],
            )
    except files.RunSetupError as error:
        raise UsageError(str(error)) from None
    document["distribution"] = distribution.to_dict()
    if distribution.strategy != "none":
        print(distribution.describe(settings.batch_size), flush=True)
    print(
        f"{len(plan.configs)} configuration(s): {', '.join(plan.names)}; "
        f"model {settings.model}, "
        + (f"{settings.image_size} px, " if settings.image_size is not None else "")
        + f"batch {settings.batch_size}, "
        f"{settings.epochs} epoch(s)" + describe_repeats(plan) + f"; output in {out}",
        flush=True,
    )
    try:
        completed = planning.run_all(plan, document, announce=lambda line: print(line, flush=True))
        # Judged once: results.json's statistics, the table, the CSV and the plot all read it.
        judged = report.judge(document, args.band)
        document["statistics"] = report.run_statistics(document, judged=judged)
        files.save_results(plan.results_path, document, print)
    except files.ResultsUnsavable as error:
        print(f"mpbench run: error: {error}", file=sys.stderr)
        return 1

    print()
    print(report.run_table(document, judged=judged))
    files = report.render_run(document, out, judged=judged)
    print(f"\nwritten to {out}: {schema.RESULTS_FILE}, " + ", ".join(f.name for f in files))
    if (out / "tensorboard").is_dir():
        print(f"compare the runs in TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    if not completed:
        print(
            f"{'terminated (SIGTERM)' if terminated() else 'interrupted'}: "
            f"{len(document['configurations'])} of {len(plan.configs)} "
            "configuration(s) "
            f"finished; continue with: mpbench run --resume --out {out} (and the same options)"
        )
        return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
    failed = [r["name"] for r in document["configurations"] if r["status"] != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)} (reasons in the table and in {out / 'logs'})")
        return 1
    return 0
