"""``python -m camkit.cli`` = the ``camkit`` command."""
import sys

from . import main

sys.exit(main())
