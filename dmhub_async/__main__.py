"""``python -m dmhub_async``: the same as ``dmhub-async``."""

import sys

from .cli import main

sys.exit(main())
