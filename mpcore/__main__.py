"""``python -m mpcore`` is the ``mpbench`` command."""

import sys

from mpcore.face.cli import main

sys.exit(main())
