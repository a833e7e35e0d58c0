"""The bench layer: the training-step harness, the benchmark tables and the pytest plugin.

``benchmarks/conftest.py`` only loads :mod:`mpcore.bench.plugin`; the plugin can also be loaded
anywhere with ``pytest -p mpcore.bench.plugin``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def onednn_setting(args: Sequence[str], benchmarks: str) -> str:
    """``TF_ENABLE_ONEDNN_OPTS`` for a pytest session given ``args``: on (``"1"``, TensorFlow's
    own default on x86) when every path given lies in the ``benchmarks`` folder, else off.

    The tests keep one float32 code path with it off; the benchmarks must time what a user's
    TensorFlow does, and without oneDNN bfloat16 on a CPU runs emulated, 5-10x slower than
    float32 where oneDNN runs it at about float32's speed (docs/statistics.md)."""
    root = os.path.join(os.path.abspath(benchmarks), "")
    paths = [os.path.abspath(arg.split("::")[0]) for arg in args if not arg.startswith("-")]
    paths = [path for path in paths if os.path.exists(path)]
    inside = [os.path.join(path, "").startswith(root) for path in paths]
    return "1" if inside and all(inside) else "0"
