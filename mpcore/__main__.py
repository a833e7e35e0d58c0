"""``python -m mpcore`` is the ``mpbench`` command."""

from mpcore.face.cli import console

console()
