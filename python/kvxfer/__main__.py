"""``python -m kvxfer``: the ``kvxfer`` command."""

import sys

from .cli import main

sys.exit(main())
