"""mpcore: mixed-precision training with TensorFlow and Keras 3, measured and checked.

The public API, what a notebook imports (each name is documented in the README):

* :class:`RunConfig`, :func:`applied`, :func:`check_model`: a precision x XLA mode, applying it to
  the process (policy set after the session is cleared, then asserted), verifying a built model;
* :func:`build_model`, :class:`TrainSettings`, :func:`train`: the registry's models and a
  ``model.fit`` run of one configuration into a result record;
* :func:`cast_census`, :func:`gradient_census`: what a half-precision cast does to values and to
  a model's gradients at a loss scale.

The names are imported lazily (PEP 562), so ``import mpcore``, and with it the ``mpbench``
command's ``--help``, argument errors and ``report``, does not pay for importing TensorFlow.
The layers of the package are described in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "RunConfig": "mpcore.precision.modes",
    "applied": "mpcore.precision.modes",
    "check_model": "mpcore.precision.modes",
    "build_model": "mpcore.models.registry",
    "TrainSettings": "mpcore.train.settings",
    "train": "mpcore.train.fit",
    "cast_census": "mpcore.precision.census",
    "gradient_census": "mpcore.precision.census",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mpcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
