"""The bench layer: the training-step harness, the benchmark tables and the pytest plugin.

``benchmarks/conftest.py`` only loads :mod:`mpcore.bench.plugin`; the plugin can also be loaded
anywhere with ``pytest -p mpcore.bench.plugin``.
"""
