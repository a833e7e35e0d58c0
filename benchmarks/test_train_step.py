"""Training-step throughput of every precision x XLA combination (parametrized by the plugin).

The ``prepared`` fixture (:mod:`mpcore.bench.plugin`) builds the combination and its step
(``--mp-step``: ``fit``, Keras's compiled train function, by default; ``custom``, mpcore's own)
in isolation and times its first step (tracing, XLA compilation) on its own clock. A timed round
is ``--mp-steps`` compiled steps on one batch (the ``fit`` step reads it from a host-side
``from_tensors(batch).repeat()`` dataset, as ``fit`` would; the ``custom`` step takes it as
resident tensors) ending in a device synchronisation; ``--mp-warmup-rounds`` untimed rounds come
first. On JAX and torch (``KERAS_BACKEND``) the step is Keras's own compiled train function
(:mod:`mpcore.bench.backendstep`).
"""

from __future__ import annotations

import math

from mpcore.bench.stepbench import MemoryProbe, PreparedStep, throughput_fields
from mpcore.precision.modes import RunConfig
from mpcore.probe import backend
from mpcore.user.ownmodel import is_user_model, verify


def test_train_step(
    benchmark, bench_options, combination: RunConfig, prepared: PreparedStep, speedup_caveat
) -> None:
    options = bench_options
    benchmark.group = options.group_of(prepared.kind)
    benchmark.extra_info["note"] = speedup_caveat
    benchmark.extra_info.update(prepared.describe())
    benchmark.extra_info.update(backend.identity())  # backend and backend_version
    # The mode still holds right before timing (a user's model where the check applies to it).
    checked = verify(prepared.model, combination)
    assert checked or is_user_model(options.model), f"{options.model}: mode not checked"
    benchmark.extra_info["mode_checked"] = checked
    with MemoryProbe(on_gpu=options.real_gpu) as memory:
        last_loss = benchmark.pedantic(
            prepared.run_round,
            rounds=options.rounds,
            warmup_rounds=options.warmup_rounds,
            iterations=1,
        )
    benchmark.extra_info.update(memory.fields)
    if options.memory == "fresh" and not options.real_gpu and options.strategy == "none":
        # The session's RSS peak only grows down the rows: measure this row on its own.
        from mpcore.bench.batchtrial import fresh_memory_fields, trial_spec

        benchmark.extra_info.update(
            fresh_memory_fields(
                trial_spec(
                    options.model,
                    options.image_size,
                    combination.precision,
                    combination.xla,
                    options.batch,
                    options.steps,
                    None,
                    prepared.kind,
                )
            )
        )
    if benchmark.stats is not None:  # None under --benchmark-disable: one untimed round
        benchmark.extra_info.update(
            throughput_fields(
                prepared,
                benchmark.stats.stats.median,
                options.device_name,
                backend.tf32_enabled(),
            )
        )
    assert math.isfinite(last_loss), f"{combination.name}: training loss is {last_loss}"
