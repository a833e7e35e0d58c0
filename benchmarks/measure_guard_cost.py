"""What does the main job's loss guard cost per step? ``python benchmarks/measure_guard_cost.py``

Trains the same compiled small model with ``model.fit`` under three callback sets, interleaved
round by round so that the machine's drift hits each alike: no guard, the guard reading the loss
on the training thread every step (``off_thread=False``, as a cluster worker runs it and as every
configuration ran it before), and the run's guard (async-safe). Prints each set's median steady
ms/step over the rounds (the first epoch of each fit is compilation and is left out) and the
ratios to no guard, with the backend and the load average.

On TensorFlow Keras reads every batch's logs on the training thread whatever the callbacks, so
the two guards differ only by what the hook itself costs; on JAX and torch the async-safe guard
lets Keras run the hooks off the training thread and the host runs ahead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from mpcore.precision.modes import RunConfig, applied
from mpcore.probe import backend
from mpcore.run.callbacks import make_loss_guard
from mpcore.train.fit import build_compiled
from mpcore.train.settings import TrainSettings


class EpochClock(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    config = RunConfig("float32", "off")
    sets = {
        "no guard": lambda: [],
        "guard on the training thread": lambda: [make_loss_guard(config.name, off_thread=False)],
        "guard, async-safe": lambda: [make_loss_guard(config.name)],
    }
    count = args.steps * args.batch_size
    rng = np.random.default_rng(0)
    x = rng.random((count, args.image_size, args.image_size, 3), dtype=np.float32)
    y = np.arange(count) % 5
    times: dict[str, list[float]] = {name: [] for name in sets}
    with applied(config):
        settings = TrainSettings(model="small", image_size=args.image_size)
        for round_ in range(args.rounds):
            # Rotate the order every round: no set always runs first or last.
            names = list(sets)[round_ % 3 :] + list(sets)[: round_ % 3]
            for name in names:
                model = build_compiled(config, settings)
                clock = EpochClock()
                model.fit(
                    x,
                    y,
                    batch_size=args.batch_size,
                    epochs=3,
                    verbose=0,
                    callbacks=[*sets[name](), clock],
                )
                times[name].append(1000 * statistics.median(clock.seconds[1:]) / args.steps)
    base = statistics.median(times["no guard"])
    print(
        f"backend {backend.name()}, load average {os.getloadavg()[0]:.1f}, "
        f"{args.rounds} interleaved rounds of {args.steps} steps, batch {args.batch_size}"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:30s} {median:7.2f} ms/step ({min(values):.2f}-{max(values):.2f})  "
            f"{median / base:.3f}x no guard"
        )


if __name__ == "__main__":
    main()
