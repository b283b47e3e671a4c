"""Keep the access token and the secret out of every message, log line and chained cause.

The token rides in the query string of every call (docs/contract.md, "Transport and
authentication") and the secret in the token request's, so any URL is a secret until redacted.
"""

from __future__ import annotations

import contextlib
import functools
import re
import weakref
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import quote

MASK = "***"


class SecretHolder(Protocol):
    """Something that knows secrets in use: a client's session (its secret and tokens)."""

    @property
    def secrets(self) -> Iterable[str | None]: ...


_holders: weakref.WeakSet[SecretHolder] = weakref.WeakSet()


def watch(holder: SecretHolder) -> None:
    """Mask ``holder``'s secrets in every error from now on, for as long as it lives."""
    _holders.add(holder)


def live_secrets() -> list[str | None]:
    """The secrets of every live holder: what every error message is redacted against."""
    return [secret for holder in list(_holders) for secret in holder.secrets]


_SECRET_PARAMS = re.compile(r"((?:access_token|secret)=)[^&#\s'\"]*", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with ``access_token=``/``secret=`` values and every known secret masked.

    A secret is masked raw and URL-encoded too, in any mix (yarl leaves ``/`` as is in a query
    value but encodes ``+``), as it appears when a service or a proxy echoes the query back.
    """
    text = _SECRET_PARAMS.sub(r"\g<1>" + MASK, text)
    for secret in (*secrets, *live_secrets()):
        if secret and len(secret) >= 4:
            text = _secret_pattern(secret).sub(MASK, text)
    return text


@functools.lru_cache(maxsize=64)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    """Matches ``secret`` with each character that URL encoding may change either way."""
    parts = []
    for char in secret:
        if char.isascii() and (char.isalnum() or char in "-._~"):
            parts.append(re.escape(char))  # never encoded
            continue
        forms = {re.escape(char)}
        # An undecodable byte from the environment arrives as a lone surrogate; other lone
        # surrogates cannot be sent in a URL at all.
        with contextlib.suppress(UnicodeEncodeError):
            forms.add(re.escape(quote(char, safe="", errors="surrogateescape")))
        if char == " ":
            forms.add(r"\+")
        parts.append("(?:" + "|".join(sorted(forms, key=len, reverse=True)) + ")")  # longest first
    # Case-insensitive for the hex digits of %2b/%2B; masking a case variant too is harmless.
    return re.compile("".join(parts), re.IGNORECASE)


class RedactedCause(Exception):
    """Stands in for a third-party exception (aiohttp's carry the URL) in a ``__cause__`` chain."""

    def __init__(self, err: BaseException, secrets: Iterable[str | None] = ()) -> None:
        self.original_type = f"{type(err).__module__}.{type(err).__qualname__}"
        super().__init__(f"{type(err).__name__}: {redact(str(err), secrets)}")
