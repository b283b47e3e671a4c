"""Which records a walk has yielded, by key: to drop repeats, and to tell gaps and progress.

The service pages by offset (docs/contract.md, "Pagination hazards"), so a walk meets records
again (an insert behind the cursor shifts later pages forward) and must notice when a page
does not reach back to what it yielded (a delete behind the cursor shifted records back past
the boundary). The walk's plan (``_pagination_plan.WalkPlan``) asks this module both.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Hashable
from typing import Any, Generic, Literal, TypeVar

__all__ = ["Dedupe", "SeenRecords"]

T = TypeVar("T")

#: How repeats are recognised: by order of an ascending or descending key (O(1) memory), by a
#: set of every key seen (memory grows with the walk), or not at all.
Dedupe = Literal["ascending", "descending", "set", "none"]


def _all_after(keys: list[Any], last: Any, ascending: bool) -> bool:
    """Whether every key comes after the one before it, the first after ``last`` (unless None):
    what the record-by-record rule of :meth:`SeenRecords.fresh` finds of a page of records all
    new, in a few C calls rather than a turn of a Python loop a record (about 1k instructions
    each). False, for the loop to decide, when a key is None (it does not compare)."""
    after = operator.gt if ascending else operator.lt
    try:
        return (last is None or bool(after(keys[0], last))) and all(
            map(after, itertools.islice(keys, 1, None), keys)
        )
    except TypeError:  # a None key
        return False


class SeenRecords(Generic[T]):
    """The records a walk has yielded, by key: drops repeats, tells gaps and progress.

    With an ordered key (``ascending``/``descending``) it keeps only the last key yielded;
    with ``set``, every key; with ``none`` (or no key) it recognises nothing.
    """

    def __init__(
        self, key: Callable[[T], Hashable] | None, dedupe: Dedupe, resume_after: Any = None
    ) -> None:
        self.key = key if dedupe != "none" else None
        self.dedupe = dedupe
        self._signature_key = key
        #: The last key yielded (ordered modes): the next record must come after it.
        self.last_key: Any = resume_after
        #: Where an earlier walk stopped: a record at or before it, read again when a resumed
        #: walk checks the page before its start, is that walk's, not one served twice.
        self.resume_mark: Any = resume_after
        self.keys: set[Hashable] = set()
        #: The farthest key any read of this walk reached (ordered modes), yielded or not.
        self.farthest_key: Any = None

    def forget(self) -> None:
        """The walk is over: drop the keys of ``set`` mode, which nothing asks of again. A
        failed walk's error, kept (a list of failures, an error tracker), held every key the
        walk had yielded through its traceback's frames (1.2 MB for 19,400 customers)."""
        self.keys = set()

    def _after(self, key: Any, mark: Any) -> bool:
        """Whether ``key`` comes after ``mark`` in walk order."""
        return bool(key > mark) if self.dedupe == "ascending" else bool(key < mark)

    def fresh(self, items: list[T], keys: list[Any] | None = None) -> tuple[list[T], int]:
        """The items not yielded before, in order, now counted as yielded; and the repeats.

        ``keys``: each item's, when the page's reader took them already.
        """
        key = self.key
        if key is None:
            return items, 0
        fresh: list[T] = []
        if self.dedupe == "set":
            for item in items:
                seen_key = key(item)
                if seen_key is None:  # no key: not a known one, as in the ordered modes
                    fresh.append(item)  # (its None in the set dropped every later one)
                elif seen_key not in self.keys:
                    self.keys.add(seen_key)
                    fresh.append(item)
            return fresh, len(items) - len(fresh)
        ascending = self.dedupe == "ascending"
        last = self.last_key
        if keys is None:
            keys = list(map(key, items))
        if keys and _all_after(keys, last, ascending):  # the usual page, checked in C
            self.last_key = keys[-1]
            return list(items), 0  # a list of its own: the walk may cut it, not the page read
        # A repeat, or a record without a key: record by record (written out, not _after()).
        for k, item in zip(keys, items, strict=True):
            if k is None:  # a record without a key cannot be a known one
                fresh.append(item)
            elif last is None or (k > last if ascending else k < last):
                fresh.append(item)
                last = k
        self.last_key = last
        repeats = len(items) - len(fresh)
        mark = self.resume_mark
        if repeats and mark is not None:  # (rare: a service's repeat, or a resume's step back)
            repeats -= sum(
                1 for item in items if (k := key(item)) is not None and not self._after(k, mark)
            )
        return fresh, repeats

    def reaches_back(self, items: list[T]) -> bool:
        """Whether ``items`` start at or before what was yielded: no record can lie between.

        An empty page reaches nothing; without a key there is nothing to compare with, so
        every page is taken as it comes. In ``set`` mode its first record must have been
        yielded: one further on may have moved there from behind (sorted by a field that
        changed), with records never read before it.
        """
        if self.key is None:
            return True
        if not items:
            return False
        if self.dedupe == "set":
            return self.key(items[0]) in self.keys
        first = self.key(items[0])
        if first is None or self.last_key is None:
            return True
        return not self._after(first, self.last_key)

    def reaches_further(self, items: list[T]) -> bool:
        """Whether a read brings a key never yielded (``set``), or one beyond every key read so
        far (ordered modes); true when records have no key to tell by.

        A walk resumed early (``resume_after`` far ahead of ``start_page``) progresses this
        way while it drops every record; a service serving the same pages again does not.
        """
        if self.key is None or not items:
            return self.key is None
        if self.dedupe == "set":
            return any(self.key(item) not in self.keys for item in items)
        last: Any = self.key(items[-1])  # pages come in key order: the last reaches furthest
        if last is None:
            return True
        if self.farthest_key is None or self._after(last, self.farthest_key):
            self.farthest_key = last
            return True
        return False

    def against_order(self, signature: tuple[Any, ...]) -> bool:
        """Whether a page of this :meth:`signature` runs against the walk's order: its last
        key before its first (ordered modes; a page of one record, or without keys, cannot)."""
        if self.key is None or self.dedupe == "set":
            return False
        _, first, last = signature
        return first is not None and last is not None and first != last and self._after(first, last)

    def signature(self, items: list[T]) -> tuple[Any, ...] | None:
        """A page's length and its first and last keys: pages of distinct records cannot
        share one, a page served twice does (None when there is nothing to compare)."""
        key = self._signature_key
        if key is None or not items:
            return None
        return (len(items), key(items[0]), key(items[-1]))
