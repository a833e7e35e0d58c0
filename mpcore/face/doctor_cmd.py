"""``mpbench doctor``: what to expect from each mode on this machine, optionally measured."""

from __future__ import annotations

import argparse

from mpcore.face.common import UsageError, load_tensorflow


def cmd_doctor(args: argparse.Namespace) -> int:
    load_tensorflow()
    from mpcore.face.doctor import run_doctor
    from mpcore.models.registry import MODELS

    if args.model is not None and args.model not in MODELS:
        raise UsageError(f"unknown --model {args.model!r}; valid: {', '.join(MODELS)}")
    try:
        return run_doctor(
            args.model, args.batch_size, args.image_size, measured=args.measure, as_json=args.json
        )
    except ValueError as error:  # a malformed MPBENCH_FAKE_GPU
        raise UsageError(str(error)) from None
