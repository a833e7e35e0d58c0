"""``python -m mpcore`` is the ``mpbench`` command."""

import sys

from mpcore.cli import main

sys.exit(main())
