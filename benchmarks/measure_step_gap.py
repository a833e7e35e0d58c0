"""Why is the custom step faster than ``fit``'s? ``python benchmarks/measure_step_gap.py``

Builds, in one process and under one precision at a time, several training steps of the same
model on the same resident batch and times them interleaved (variant A round, B round, ... then
again), so drift and load hit every variant alike. Each variant removes or adds one difference
between :func:`mpcore.train.custom_step.make_train_step` and Keras's train function:

- ``custom``: our step on resident tensors (what ``--mp-step custom`` times);
- ``custom+metrics``: our step plus the loss tracker and the accuracy metric Keras updates;
- ``custom+iterator``: our step fed by ``get_next`` of a ``from_tensors(...).repeat()`` iterator;
- ``fit``: ``model.train_function`` on that iterator, compiled with ``metrics=["accuracy"]``
  (what ``fit`` runs per step, and ``--mp-step fit``);
- ``fit-nometrics``: the same, compiled without metrics;
- ``fit-spe10``: the same as ``fit`` with ``steps_per_execution=10``;
- ``model.fit``: ``fit`` itself for one epoch of that many steps on the dataset, timed by
  :class:`mpcore.train.fit.EpochTimer` (its callbacks and per-epoch iterator included);
- with ``--determinism``, every variant again under TensorFlow op determinism (which
  ``mpbench run`` turns on where no GPU is visible).

Prints the median ms/step of each variant, its range, the median over rounds of its ratio to
``custom`` in the same round (paired, so load that changes between rounds cancels) and the load
average. ``--variants`` picks some (``custom`` is always timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import tensorflow as tf

from mpcore.bench.stepbench import resident_batch, sync_device
from mpcore.precision.modes import RunConfig, applied
from mpcore.train.custom_step import make_train_step
from mpcore.train.fit import EpochTimer, build_compiled
from mpcore.train.settings import TrainSettings, op_determinism


def _load() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def variants(
    config: RunConfig, settings: TrainSettings, steps: int, chosen: set[str]
) -> dict[str, Callable]:
    """name -> a round of ``steps`` steps ending in one loss read and a device sync; a round
    returns its seconds."""
    images, labels = resident_batch(settings.batch_size, settings.resolved_image_size, 5, "/CPU:0")
    made: dict[str, Callable] = {}

    def custom(with_metrics: bool = False, from_iterator: bool = False) -> Callable:
        keras.utils.set_random_seed(settings.seed)
        model = build_compiled(config, settings)
        step = make_train_step(
            model, model.optimizer, keras.losses.SparseCategoricalCrossentropy(), False
        )
        tracker = keras.metrics.Mean()
        accuracy = keras.metrics.SparseCategoricalAccuracy()

        @tf.function
        def step_with_metrics(x, y):
            loss = step(x, y)
            tracker.update_state(loss)
            accuracy.update_state(y, model(x, training=False))  # an extra forward: upper bound
            return loss

        run = step_with_metrics if with_metrics else step
        iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())

        @tf.function
        def step_on_iterator(it):
            x, y = next(it)
            return step(x, y)

        def round_() -> float:
            start = time.perf_counter()
            for _ in range(steps):
                loss = step_on_iterator(iterator) if from_iterator else run(images, labels)
            float(loss)
            sync_device()
            return time.perf_counter() - start

        return round_

    def fit(metrics: bool = True, steps_per_execution: int = 1) -> Callable:
        spe = max(steps_per_execution, 1)  # 0: model.fit itself, one step per execution
        keras.utils.set_random_seed(settings.seed)
        model = build_compiled(config, settings)
        if not metrics or spe != 1:
            model.compile(
                optimizer=model.optimizer,
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"] if metrics else None,
                jit_compile=False,
                steps_per_execution=spe,
            )
        data = tf.data.Dataset.from_tensors((images, labels)).repeat()
        iterator = iter(model.distribute_strategy.experimental_distribute_dataset(data))
        model.make_train_function()

        def round_() -> float:
            start = time.perf_counter()
            for _ in range(steps // spe):
                logs = model.train_function(iterator)
            float(logs["loss"])
            sync_device()
            return time.perf_counter() - start

        def fit_epoch() -> float:
            timer = EpochTimer()
            model.fit(
                data, epochs=1, steps_per_epoch=steps, callbacks=[timer], shuffle=False, verbose=0
            )
            return timer.seconds[0]

        return fit_epoch if steps_per_execution == 0 else round_

    makers = {
        "custom": custom,
        "custom+metrics": lambda: custom(with_metrics=True),
        "custom+iterator": lambda: custom(from_iterator=True),
        "fit": fit,
        "fit-nometrics": lambda: fit(metrics=False),
        "fit-spe10": lambda: fit(steps_per_execution=10),
        "model.fit": lambda: fit(steps_per_execution=0),
    }
    for name, make in makers.items():
        if name == "custom" or not chosen or name in chosen:
            made[name] = make()
    return made


def measure(
    precision: str, settings: TrainSettings, steps: int, rounds: int, det: bool, chosen: set[str]
) -> None:
    config = RunConfig(precision, "off")
    with applied(config), op_determinism(det):
        rounds_of = variants(config, settings, steps, chosen)
        for run in rounds_of.values():  # trace and warm up
            run()
            run()
        times: dict[str, list[float]] = {name: [] for name in rounds_of}
        for _ in range(rounds):
            for name, run in rounds_of.items():
                times[name].append(1000 * run() / steps)
    base = statistics.median(times["custom"])
    print(f"\n{precision}, op determinism {'on' if det else 'off'} (load {_load()})")
    for name, values in times.items():
        median = statistics.median(values)
        spread = f"{min(values):.1f}-{max(values):.1f}"
        paired = statistics.median(v / c for v, c in zip(values, times["custom"], strict=True))
        print(
            f"  {name:16s} {median:7.2f} ms/step  ({spread})  x{median / base:.2f} of custom, "
            f"paired x{paired:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="float32,mixed_float16")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--determinism", action="store_true", help="also under op determinism")
    parser.add_argument("--variants", default="", help="comma-separated variants (default all)")
    args = parser.parse_args()
    settings = TrainSettings(model="small", image_size=args.image_size, batch_size=args.batch)
    print(f"load before: {_load()}")
    for precision in args.precision.split(","):
        for det in (False, True) if args.determinism else (False,):
            chosen = set(filter(None, args.variants.split(",")))
            measure(precision, settings, args.steps, args.rounds, det, chosen)


if __name__ == "__main__":
    main()
