"""Data parallelism through Keras's own distribution API (JAX): ``--strategy mirrored`` there.

``keras.distribution.DataParallel`` over the visible devices is the JAX counterpart of
``tf.distribute.MirroredStrategy``: the variables are replicated, every global batch is split
over the devices along its first axis, and the gradients are reduced by XLA (GSPMD) inside the
one compiled step. No TensorFlow: on TensorFlow the worker uses ``mpcore.train.replicas``.
"""

from __future__ import annotations

import os

#: XLA's flag that splits the host into N CPU devices (read when JAX first starts its backend).
HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def host_devices_flags(count: int, flags: str = "") -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the host split into ``count`` CPU devices."""
    kept = [flag for flag in flags.split() if not flag.startswith(HOST_DEVICES_FLAG)]
    return " ".join([*kept, f"{HOST_DEVICES_FLAG}={count}"])


def data_parallel(strategy: str, cpu_replicas: int | None = None) -> int:
    """Set ``DataParallel`` for this process when ``strategy`` is ``mirrored`` and return the
    replica count (1, and nothing set, for ``none``). ``cpu_replicas`` splits the host into that
    many CPU devices first, so call this before JAX has started (the first array or device
    query). Raises ``ValueError`` for a strategy with no Keras counterpart."""
    import keras

    if strategy == "none":
        return 1
    if strategy != "mirrored":
        raise ValueError(f"strategy {strategy!r} has no keras.distribution counterpart")
    if keras.backend.backend() != "jax":
        raise ValueError(
            f"keras.distribution runs on JAX only; the backend is {keras.backend.backend()}"
        )
    if cpu_replicas:
        os.environ["XLA_FLAGS"] = host_devices_flags(cpu_replicas, os.environ.get("XLA_FLAGS", ""))
        import jax

        devices = [f"cpu:{device.id}" for device in jax.devices("cpu")][:cpu_replicas]
        if len(devices) < cpu_replicas:
            raise ValueError(
                f"{cpu_replicas} CPU replicas asked for, JAX has {len(devices)} CPU device(s) "
                "(it had started before XLA_FLAGS was set)"
            )
    else:
        devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return len(devices)


def replicas() -> int:
    """Devices the process-wide Keras distribution splits each batch over (1 without one)."""
    import keras

    if keras.backend.backend() != "jax":
        return 1
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    return int(distribution.device_mesh.devices.size)
