"""``python -m shibajax`` runs the command line (same as the ``shibajax`` command)."""

import sys

from shibajax.cli import main

sys.exit(main())
