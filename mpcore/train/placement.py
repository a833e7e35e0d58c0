"""Where a strategy's replicas go: the ``--cpu-replicas`` rule shared by ``mpbench run`` and the
benchmark plugin. Imports nothing heavy, so the command line can check it before TensorFlow."""

from __future__ import annotations


def cpu_replicas_problem(cpu_replicas: int | None, strategy: str, gpu_count: int) -> str | None:
    """Why splitting the CPU into ``cpu_replicas`` logical devices cannot serve ``strategy``
    here, or None if it can (or nothing is asked). Shared by ``mpbench run --cpu-replicas`` and
    the benchmark plugin's ``--mp-cpu-replicas``."""
    if not cpu_replicas:
        return None
    if strategy != "mirrored":
        return "splits the CPU for the mirrored strategy only"
    if gpu_count:
        return (
            f"{gpu_count} GPU(s) are visible and the mirrored strategy uses them; choose GPUs "
            "with CUDA_VISIBLE_DEVICES instead"
        )
    return None
