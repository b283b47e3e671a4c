"""Constants and helpers shared by the aioresponses unit tests (imported, not fixtures)."""

from __future__ import annotations

import re

BASE = "https://api.dmhub.test"
CUSTOMER = {"id": 1, "name": "x"}


def url(path: str, base: str = BASE) -> re.Pattern[str]:
    """A pattern for ``base + path`` with any query string: aioresponses matches on it."""
    return re.compile("^" + re.escape(base + path) + r"(\?.*)?$")
