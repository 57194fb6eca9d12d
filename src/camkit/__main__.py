"""``python -m camkit`` = the ``camkit`` command."""
import sys

from .cli import main

sys.exit(main())
