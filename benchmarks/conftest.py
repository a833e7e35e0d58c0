"""The benchmark suite's pytest configuration: it only loads mpbench's plugin.

The plugin (``--mp-*`` options, capability skips, the report tables) lives in
:mod:`mpcore.bench.plugin`, importable and testable on its own (``pytest -p
mpcore.bench.plugin``). A conftest below the root cannot declare ``pytest_plugins``, so its hooks
and fixtures are imported into this module, which pytest registers as a plugin.
"""

from mpcore.bench.plugin import *  # noqa: F403
