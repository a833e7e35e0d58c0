"""What every ``mpbench`` command shares: the one-line usage error, option types, quiet loading.

Bad options or input end a command with one ``mpbench CMD: error: ...`` line on stderr and exit
status 2 (argparse's convention), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from mpcore import names

#: Exit status for bad usage or bad input (argparse's convention).
EXIT_USAGE = 2
CACHE_ENV = "MPBENCH_CACHE"


class UsageError(Exception):
    """Bad options or input: printed as one ``mpbench: error: ...`` line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


#: Seeds TensorFlow, NumPy and the data split accept alike.
MAX_SEED = 2**32 - 1


def seed_int(text: str) -> int:
    """An argparse type: a seed in 0..2**32-1 (NumPy's limit), named by argparse's option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED}, got {value}")
    return value


#: A batch of input images as float32 may take at most this share of the machine's memory.
INPUT_MEMORY_SHARE = 0.25


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def float_option(
    text: str, accepted: Callable[[float], bool], wanted: str, unit: str = ""
) -> float:
    """The body of an argparse type for a number: ``text`` as a float that ``accepted`` allows,
    else one line saying what was wanted and what was received (``must be WANTED, got TEXT``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number{unit}") from None
    if not accepted(value):
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


def target_text(text: str) -> str:
    """``--target``: checked (:func:`mpcore.train.target.parse_target`), kept as written."""
    from mpcore.train.target import parse_target

    try:
        return parse_target(text).text()
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--target ")) from None


def check_batch_fits(batch_size: int, image_size: int, batch_option: str = "--batch-size") -> None:
    """Refuse a batch whose float32 input tensor alone (batch x side x side x 3 x 4 bytes) is
    over :data:`INPUT_MEMORY_SHARE` of physical memory: it could never train here, and trying
    allocates until the machine swaps or the process is killed."""
    limit = INPUT_MEMORY_SHARE * physical_memory_bytes()
    needed = batch_size * image_size * image_size * 3 * 4
    if needed <= limit:
        return
    largest = int((limit / (batch_size * 12)) ** 0.5)
    gib = 2**30
    raise UsageError(
        f"{batch_option} {batch_size} with --image-size {image_size}: one batch is "
        f"{needed / gib:,.1f} GiB as float32, more than {INPUT_MEMORY_SHARE:.0%} of this "
        f"machine's {physical_memory_bytes() / gib:.1f} GiB memory"
        + (f" (largest image size at this batch: {largest} px)" if largest >= 1 else "")
    )


#: A batch's activations (float32 and half passes, and their gradients) may take at most this
#: share of the machine's memory in ``check`` and ``profile``.
ACTIVATION_MEMORY_SHARE = 0.5
#: Copies of every activation a check or profile step holds at once: the float32 and half
#: forward passes and a gradient for each.
ACTIVATION_COPIES = 4


def _elements(shape: Sequence[int | None], unknown: int) -> int:
    return math.prod(unknown if d is None else int(d) for d in shape[1:])


def activation_elements(model: Any, unknown: int = 8) -> int:
    """Values one sample puts through ``model``: its inputs and every layer's outputs (a size the
    graph leaves open counts as ``unknown``, the random batch's choice); a model without a graph
    counts its inputs only."""
    total = 0
    try:
        total += sum(_elements(t.shape, unknown) for t in model.inputs)
        for layer in model.layers:
            try:
                outputs = _flat(layer.output)
            except (AttributeError, ValueError, RuntimeError):  # a shared or unbuilt layer
                continue
            total += sum(_elements(t.shape, unknown) for t in outputs)
    except (AttributeError, ValueError, TypeError):
        pass
    return max(total, 1)


def _flat(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [t for item in value.values() for t in _flat(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flat(item)]
    return [value]


def check_activations_fit(model: Any, batch_size: int) -> None:
    """Refuse a ``--batch-size`` whose activations (4 bytes a value, :data:`ACTIVATION_COPIES`
    copies) would exceed :data:`ACTIVATION_MEMORY_SHARE` of physical memory, before anything is
    allocated: trying would swap the machine or end in an allocation traceback."""
    per_sample = activation_elements(model) * 4 * ACTIVATION_COPIES
    limit = ACTIVATION_MEMORY_SHARE * physical_memory_bytes()
    if batch_size * per_sample <= limit:
        return
    gib = 2**30
    largest = int(limit // per_sample)
    raise UsageError(
        f"--batch-size {batch_size}: the activations of one batch need about "
        f"{batch_size * per_sample / gib:,.1f} GiB, more than {ACTIVATION_MEMORY_SHARE:.0%} of "
        f"this machine's {physical_memory_bytes() / gib:.1f} GiB memory"
        + (f" (largest batch here: about {largest:,})" if largest >= 1 else "")
    )


def check_batch_in_split(batch_size: int, train: int, total: int, unit: str = "images") -> None:
    """Refuse a batch larger than the training split (of ``total`` ``unit``) in one line."""
    if batch_size > train:
        raise UsageError(
            f"--batch-size {batch_size} is larger than the training split "
            f"({train} {unit} of {total})"
        )


def train_settings(args: argparse.Namespace, profile: Any, **fields: Any) -> Any:
    """``mpbench run``'s :class:`~mpcore.train.settings.TrainSettings`: ``fields`` (the model, its
    image size, weights) plus the options given, the ``profile``'s values for the rest; a value
    the settings refuse is one usage line."""
    from mpcore.train.settings import TrainSettings

    try:
        return TrainSettings(
            batch_size=args.batch_size or profile.batch_size,
            epochs=args.epochs or profile.epochs,
            seed=args.seed,
            target=getattr(args, "target", None),
            **fields,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


def parse_names(values: Sequence[str] | None, valid: Sequence[str], option: str) -> list[str]:
    """:func:`mpcore.names.parse_names` with its error as a :class:`UsageError`."""
    try:
        return names.parse_names(values, valid, option)
    except ValueError as error:
        raise UsageError(str(error)) from None


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
    """Import TensorFlow and Keras and probe the GPUs quietly, once, before any command uses
    them: call it before the first import of anything that imports Keras."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_native_stderr():
        import keras  # noqa: F401  (its start-up logging lands in the sink too)

        from mpcore.probe.machine import visible_gpus

        visible_gpus()


#: The Keras backends and the module each needs installed.
KERAS_BACKENDS: dict[str, str] = {
    "tensorflow": "tensorflow",
    "jax": "jax",
    "torch": "torch",
    "numpy": "numpy",
    "openvino": "openvino",
}


def check_keras_backend() -> None:
    """Refuse a ``KERAS_BACKEND`` that Keras does not know or whose framework is not installed,
    before Keras is imported (importing it would end in a traceback)."""
    backend = os.environ.get("KERAS_BACKEND")
    if not backend:
        return
    module = KERAS_BACKENDS.get(backend.lower())
    if module is None:
        raise UsageError(
            f"KERAS_BACKEND={backend!r} is not a Keras backend "
            f"(valid: {', '.join(KERAS_BACKENDS)}); unset it to use tensorflow"
        )
    if importlib.util.find_spec(module) is None:
        raise UsageError(
            f"KERAS_BACKEND={backend!r} but {module} is not installed: install it or unset "
            "KERAS_BACKEND to use tensorflow"
        )


def working_folder_on_path() -> None:
    """Put the working folder first on ``sys.path``, as ``python -m`` does, so that
    ``mpbench check mod:fn`` imports ``mod`` from where the user stands (the console script
    puts only its own folder there)."""
    here = os.getcwd()
    if not any(entry in ("", here) for entry in sys.path):
        sys.path.insert(0, here)


def prepare_process() -> None:
    """What every command needs before it imports anything: TensorFlow's start-up logging
    quietened, the Keras backend checked, the working folder importable."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    working_folder_on_path()
    check_keras_backend()


def cache_dir() -> Path:
    """Where generated data is cached: ``$MPBENCH_CACHE``, else ``$XDG_CACHE_HOME/mpbench``,
    else ``~/.cache/mpbench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mpbench"
