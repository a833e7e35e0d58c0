"""`mpbench run` on the JAX and torch Keras backends: which XLA modes and strategies map there.

TensorFlow-only modes (grappler's rewrite, auto-clustering) are refused in one line, as the
benchmarks refuse them; ``--strategy mirrored`` on JAX is ``keras.distribution.DataParallel``
(``mpcore.train.keras_dist``). No TensorFlow here.
"""

from __future__ import annotations

import argparse
import os

from mpcore.face.common import UsageError
from mpcore.names import PRECISIONS, XLA_MODES, parse_names
from mpcore.probe.backend import TENSORFLOW_ONLY, TENSORFLOW_ONLY_PRECISIONS, TENSORFLOW_ONLY_XLA
from mpcore.train.placement import cpu_replicas_problem


def keras_distribution(args: argparse.Namespace, gpu_count: int) -> tuple[str, int, int]:
    """The distribution on JAX: ``mirrored`` is ``keras.distribution.DataParallel`` over the
    visible devices (``--cpu-replicas N``: N host devices), with the TensorFlow path's replica
    and global-batch rules; what has no Keras counterpart here is refused in one line. Returns
    the strategy, the CPU replicas asked for (0: none) and the replica count."""
    from mpcore.names import STRATEGIES

    backend = keras_backend()
    strategy = args.strategy or ("multiworker" if args.workers else "none")
    if strategy not in STRATEGIES:
        raise UsageError(
            f"--strategy: unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
        )
    if strategy == "none":
        if args.cpu_replicas:
            raise UsageError(f"--cpu-replicas {cpu_replicas_problem(args.cpu_replicas, 'none', 0)}")
        return strategy, 0, 1
    if strategy != "mirrored" or backend != "jax":
        raise UsageError(
            f"--strategy {strategy} is not available on the {backend} Keras backend: only "
            "mirrored on JAX maps (keras.distribution.DataParallel over the visible devices); "
            "multi-worker clusters are tf.distribute's"
        )
    problem = cpu_replicas_problem(args.cpu_replicas, strategy, gpu_count)
    if problem:
        raise UsageError(f"--cpu-replicas {problem}")
    replicas = args.cpu_replicas or gpu_count or 1
    return strategy, args.cpu_replicas or 0, replicas


def keras_backend() -> str:
    """The Keras backend this command will run on, read as Keras reads it, without importing
    Keras (a refusal must not need the backend's framework installed)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def backend_xla(modes: tuple[str, ...]) -> list[str]:
    """A profile's XLA modes less those the Keras backend lacks (auto-clustering off TensorFlow)."""
    if keras_backend() == "tensorflow":
        return list(modes)
    return [xla for xla in modes if xla not in TENSORFLOW_ONLY_XLA]


def check_backend_modes(precisions: list[str], xla_modes: list[str]) -> None:
    """Refuse, in one line, a precision or XLA mode only TensorFlow has (on JAX or torch), with
    the reason the benchmarks give."""
    backend = keras_backend()
    if backend == "tensorflow":
        return
    for precision in precisions:
        if precision in TENSORFLOW_ONLY_PRECISIONS:
            raise UsageError(
                f"--precision {precision}: {precision} (grappler's rewrite) is "
                f"{TENSORFLOW_ONLY}; the backend is {backend}"
            )
    for xla in xla_modes:
        if xla in TENSORFLOW_ONLY_XLA:
            raise UsageError(
                f"--xla {xla}: XLA {xla} (auto-clustering) is {TENSORFLOW_ONLY}; "
                f"the backend is {backend}"
            )


def check_backend_options(args: argparse.Namespace) -> None:
    """:func:`check_backend_modes` for the ``--precision`` and ``--xla`` given."""
    try:
        check_backend_modes(
            parse_names(args.precision, PRECISIONS, "--precision"),
            parse_names(args.xla, XLA_MODES, "--xla"),
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
