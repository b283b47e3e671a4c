"""One page of a paginated listing."""

from __future__ import annotations

from typing import Generic, TypeVar

import attrs

__all__ = ["Page"]

T = TypeVar("T")


@attrs.frozen
class Page(Generic[T]):
    """One page of results: its items in server order and its 1-based page number."""

    items: list[T]
    number: int
    has_next: bool
    total_records: int | None = None
    total_pages: int | None = None
