"""The face layer: the ``mpbench`` command line, the reports and ``mpbench doctor``.

Thin commands over the layers below; :mod:`mpcore.report` imports no TensorFlow.
"""
