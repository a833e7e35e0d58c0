"""The probe layer: machine facts, NVML telemetry, datasheet peaks, benchmark skip reasons and
the Keras backend.

Below the core: it knows GPUs and software versions, not precision modes or training.
"""
