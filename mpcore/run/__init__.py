"""The run layer: ``mpbench run``'s plan, worker processes, launcher and results store.

Uses the core (modes, models, data, training, replicas) and the probe (telemetry); used only by
the command line (:mod:`mpcore.face`). Nothing here imports TensorFlow at module level except
:mod:`mpcore.run.worker`, which runs in the worker processes.
"""
