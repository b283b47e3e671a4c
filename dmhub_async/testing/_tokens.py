"""Access tokens as the live service hands them out: one active token per appid."""

from __future__ import annotations

import secrets
from collections.abc import Callable

# The SDK's default "token no longer valid" codes (40001, 40014, 42001), as docs/contract.md
# "Transport and authentication" says.
TOKEN_REVOKED = 40001  # a token that was valid, replaced by a newer one or revoked
TOKEN_INVALID = 40014  # missing, or never issued
TOKEN_EXPIRED = 42001  # older than its ttl

_DESCRIPTIONS = {
    TOKEN_REVOKED: "invalid credential, access_token is invalid or not latest",
    TOKEN_INVALID: "invalid access_token",
    TOKEN_EXPIRED: "access_token expired",
}


class TokenIssuer:
    """Issues and checks the access tokens of one appid."""

    def __init__(self, app_id: str, secret: str, ttl: float, clock: Callable[[], float]) -> None:
        self.app_id = app_id
        self.secret = secret
        self.ttl = ttl
        self.clock = clock
        self._current: str | None = None
        self._expires_at = 0.0
        self._previous: set[str] = set()

    @property
    def current(self) -> str | None:
        """The active token, if one was issued and not revoked."""
        return self._current

    def issue(self) -> str:
        """A new token; the previous one stops working (one active token per appid).

        See docs/contract.md "Transport and authentication".
        """
        self.revoke()
        self._current = secrets.token_hex(16)
        self._expires_at = self.clock() + self.ttl
        return self._current

    def revoke(self) -> None:
        """Make the active token invalid (error 40001) without issuing a new one."""
        if self._current is not None:
            self._previous.add(self._current)
        self._current = None

    def expire(self) -> None:
        """Make the active token expired (error 42001) now, whatever the clock says."""
        self._expires_at = float("-inf")

    def check(self, token: str | None) -> int | None:
        """None if the token is valid, else the error code the service answers with."""
        if token and token == self._current:
            return TOKEN_EXPIRED if self.clock() >= self._expires_at else None
        if token and token in self._previous:
            return TOKEN_REVOKED
        return TOKEN_INVALID

    @staticmethod
    def describe(code: int) -> str:
        """The ``error_description`` sent with a token error code."""
        return _DESCRIPTIONS[code]
