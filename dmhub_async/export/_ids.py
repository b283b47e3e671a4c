"""The ids an export has written, in bounded memory: 8 bytes an id, a million in 8 MB."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Hashable

__all__ = ["IdSet"]

_INT64 = range(-(2**63), 2**63)


class IdSet:
    """A set of ids that arrive mostly ascending (the walk goes by id).

    Ascending 64-bit ids go to a sorted ``array('q')`` (membership by bisection); the few
    that do not (recovered out of order, or beyond 64 bits) to a plain set.
    """

    def __init__(self) -> None:
        self._ascending = array("q")
        self._others: set[Hashable] = set()

    def add(self, customer_id: Hashable) -> None:
        """Record ``customer_id`` (a repeat is harmless)."""
        ascending = self._ascending
        if (
            type(customer_id) is int
            and customer_id in _INT64
            and (not ascending or customer_id > ascending[-1])
        ):
            ascending.append(customer_id)  # the walk's ids: ascending, so no search needed
        elif customer_id not in self:
            self._others.add(customer_id)

    def __contains__(self, customer_id: object) -> bool:
        if type(customer_id) is int and customer_id in _INT64:
            ascending = self._ascending
            k = bisect_left(ascending, customer_id)
            if k < len(ascending) and ascending[k] == customer_id:
                return True
        return customer_id in self._others

    def __len__(self) -> int:
        return len(self._ascending) + len(self._others)
