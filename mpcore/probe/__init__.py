"""The probe layer: machine facts, NVML telemetry, device peaks and FLOP counting.

Below the core: it knows GPUs and software versions, not precision modes or training.
"""
