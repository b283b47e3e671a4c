"""What every resource shares: its client, and turning answers into models."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._exceptions import ResponseDecodeError

if TYPE_CHECKING:
    from .._client import DMHubClient

T = TypeVar("T")


class Resource:
    """A collection of the API, reached through one client."""

    def __init__(self, client: DMHubClient) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._client!r})"


def decode(structure: Callable[[Any], T], data: Any, what: str) -> T:
    """``structure(data)``, or ResponseDecodeError when the body is not the promised shape."""
    try:
        return structure(data)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ResponseDecodeError(
            f"the answer is not {what}: {err}", status=200, description=str(err)
        ) from None


def rows_of(data: Any, key: str, what: str) -> list[Any]:
    """``data[key]`` as a list (a missing or null key is an empty page)."""
    if not isinstance(data, dict):
        raise ResponseDecodeError(f"the answer is not {what}: expected an object", status=200)
    rows = data.get(key)
    if rows is None:
        return []
    if not isinstance(rows, list):
        raise ResponseDecodeError(f"the answer is not {what}: {key!r} is not a list", status=200)
    return rows


def optional_int(value: Any) -> int | None:
    """A count from a page's totals, or None when absent or not a number."""
    if isinstance(value, bool):
        return None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
