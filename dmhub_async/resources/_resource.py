"""The base of every resource: the session it sends through."""

from __future__ import annotations

from .._session import Session

__all__ = ["Resource"]


class Resource:
    """A collection of the API, reached through one client's session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._session!r})"
