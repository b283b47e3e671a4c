"""``python -m dmhub_async.cli``: the same as ``dmhub-async``."""

import sys

from . import main

sys.exit(main())
