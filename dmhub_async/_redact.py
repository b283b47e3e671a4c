"""Keep the access token and the secret out of every message, log line and chained cause.

The token rides in the query string of every call (CONTRACT.md, "Transport and
authentication") and the secret in the token request's, so any URL is a secret until redacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

_SECRET_PARAMS = re.compile(r"((?:access_token|secret)=)[^&#\s'\"]*", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with ``access_token=``/``secret=`` values and every known secret masked."""
    text = _SECRET_PARAMS.sub(r"\g<1>" + MASK, text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text


class RedactedCause(Exception):
    """Stands in for a third-party exception (aiohttp's carry the URL) in a ``__cause__`` chain."""

    def __init__(self, err: BaseException, secrets: Iterable[str | None] = ()) -> None:
        self.original_type = f"{type(err).__module__}.{type(err).__qualname__}"
        super().__init__(f"{type(err).__name__}: {redact(str(err), secrets)}")
