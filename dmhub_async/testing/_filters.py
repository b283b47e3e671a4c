"""The list and count filters of ``GET /v1/customers``, and how a row is tested against them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ._fields import Row
from ._seeded_rows import iso


@attrs.frozen
class Filters:
    """The list and count filters of ``GET /v1/customers``, parsed; times in epoch seconds."""

    stage: str | None = None
    source: str | None = None
    mobile: str | None = None
    email: str | None = None
    gender: int | None = None
    id_list: frozenset[int] | None = None
    created_from: int | None = None
    created_to: int | None = None
    updated_from: int | None = None
    updated_to: int | None = None

    def is_empty(self) -> bool:
        """Whether no filter is set."""
        return self == NO_FILTERS


NO_FILTERS = Filters()


def in_range(value: int, low: int | None, high: int | None) -> bool:
    """Whether ``value`` lies between the bounds given (each inclusive)."""
    # Both bounds inclusive, to the second (docs/contract.md "list": dateCreatedFrom/To).
    return (low is None or value >= low) and (high is None or value <= high)


def sort_key(field: str) -> Callable[[Row], tuple[Any, ...]]:
    """The sort key of a list page sorted by ``field``."""

    # Nulls first when ascending, as the service's SQL ordering does; ties broken by id.
    def key(row: Row) -> tuple[Any, ...]:
        value = row.get(field)
        if value is None:
            return (0, 0, row["id"])
        return (1, value, row["id"])

    return key


def row_matches(row: Row, f: Filters) -> bool:
    """Whether a customer's wire dict passes the filters."""
    if f.stage is not None:
        if f.stage == "_empty":
            if row["stage"]:
                return False
        elif row["stage"] != f.stage:
            return False
    if f.source is not None and row["source"] != f.source:
        return False
    if f.gender is not None and (row["gender"] or 0) != f.gender:
        return False
    if f.mobile is not None and row["mobile"] != f.mobile:
        return False
    if f.email is not None and row["email"] != f.email:
        return False
    # Timestamps share one fixed-width format, so they compare as strings.
    if f.created_from is not None and row["dateCreated"] < iso(f.created_from):
        return False
    if f.created_to is not None and row["dateCreated"] > iso(f.created_to):
        return False
    if f.updated_from is not None and row["lastUpdated"] < iso(f.updated_from):
        return False
    return f.updated_to is None or row["lastUpdated"] <= iso(f.updated_to)
