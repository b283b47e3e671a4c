"""AsyncPaginator: walks page-numbered listings in order, once per record, with prefetch.

The service pages by number (offset), in two shapes: ``{"rows", "records", "total"}`` for
customers and ``{"items", "meta": {"records", "total", "hasNext"}}`` for statistics
(CONTRACT.md, "Operations"). A record inserted or deleted behind the cursor shifts every later
page ("Pagination hazards"), so the walk

* drops repeats by key (with an ``id`` sort, by comparing with the last key: O(1) memory);
* re-reads from far enough back, up to the current page again, when ``records`` changed
  between the reads of two pages (in the order reads complete, prefetched ones included),
  which catches the records a delete behind the cursor shifted back across a page boundary
  (not when as many records were inserted as deleted between two reads: the count looks
  unchanged; the export reconciles with ``count`` for that);
* refuses a page that repeats the previous one, instead of looping for ever.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Generic, Literal, TypeVar

import attrs

from ._exceptions import InvalidRequestError, ResponseDecodeError
from ._validate import short
from .models.page import Page

__all__ = ["AsyncPaginator", "PaginatorStats", "RawPage"]

T = TypeVar("T")

#: How repeats are recognised: by order of an ascending or descending key (O(1) memory), by a
#: set of every key seen (memory grows with the walk), or not at all.
Dedupe = Literal["ascending", "descending", "set", "none"]
#: Pages one drift repair (see _walk) may step back before it carries on unverified.
_MAX_REREADS = 32


@attrs.frozen
class RawPage(Generic[T]):
    """A page as one request returned it; ``None`` where the service did not say."""

    items: list[T]
    has_next: bool | None = None
    total_records: int | None = None
    total_pages: int | None = None


#: Fetches page ``number`` of ``size`` items; calls ``on_retry`` for each retry it makes.
PageFetcher = Callable[[int, int, Callable[[], None]], Awaitable[RawPage[T]]]


@attrs.define
class PaginatorStats:
    """What a walk has done: pages fetched, items yielded, repeats dropped, retries made."""

    pages: int = 0
    items: int = 0
    duplicates: int = 0
    retries: int = 0
    refetches: int = 0
    #: Pages taken after a drift repair ran out of re-reads: a record may have slipped by.
    unverified: int = 0


class AsyncPaginator(Generic[T]):
    """``async for item in paginator``: every item once, in server order.

    Also :meth:`pages` for whole pages, :meth:`to_list`, ``.checkpoint`` (the next page to
    fetch, for ``start_page`` of a later walk) and ``.stats``.
    """

    def __init__(
        self,
        fetch: PageFetcher[T],
        *,
        page_size: int,
        start_page: int = 1,
        max_items: int | None = None,
        concurrency: int = 1,
        key: Callable[[T], Hashable] | None = None,
        dedupe: Dedupe = "none",
        resume_after: Any = None,
    ) -> None:
        for name, value, low in (
            ("page_size", page_size, 1),
            ("start_page", start_page, 1),
            ("concurrency", concurrency, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidRequestError(f"{name} must be an int >= {low}, not {short(value)}")
        if max_items is not None and (
            isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0
        ):
            raise InvalidRequestError(
                f"max_items must be an int >= 0 or None, not {short(max_items)}"
            )
        if dedupe != "none" and key is None:
            raise InvalidRequestError("dedupe needs a key")
        self._fetch = fetch
        self.page_size = page_size
        self.start_page = start_page
        self.max_items = max_items
        self.concurrency = concurrency
        self._key = key
        self._dedupe = dedupe
        self._last_key: Any = resume_after
        self._seen: set[Hashable] = set()
        self.checkpoint = start_page
        self.stats = PaginatorStats()
        self._started = False
        # Rows a page the service serves, learned from the first page of a walk without
        # totals (None until then): see _is_last.
        self._served: int | None = None
        self._tasks: dict[int, asyncio.Task[tuple[RawPage[T], int]]] = {}
        # Bumped whenever a read (in the order reads complete, fetched ahead or not) reports
        # another ``records`` than the read before it: two pages read in the same epoch saw
        # the same count all along, even when other reads completed in between.
        self._epoch = 0
        self._seen_total: int | None = None

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iter_items()

    async def _iter_items(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.items:
                yield item

    async def to_list(self) -> list[T]:
        """Every item of the walk, in order."""
        return [item async for item in self]

    async def aclose(self) -> None:
        """Cancel the pages still in flight (``break`` leaves them to the garbage collector)."""
        await self._cancel_all()

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_retry(self) -> None:
        self.stats.retries += 1

    def _launch(self, number: int) -> None:
        self._tasks[number] = asyncio.ensure_future(self._read(number))

    async def _read(self, number: int) -> tuple[RawPage[T], int]:
        """Page ``number`` and the epoch it was read in (see ``_epoch``)."""
        raw = await self._fetch(number, self.page_size, self._on_retry)
        total = raw.total_records
        if total is not None:
            if self._seen_total is not None and total != self._seen_total:
                self._epoch += 1
            self._seen_total = total
        return raw, self._epoch

    def _keep(self, items: list[T]) -> list[T]:
        """The items not seen before, in order; repeats are counted, not yielded."""
        if self._dedupe == "none" or self._key is None:
            return items
        kept: list[T] = []
        key = self._key
        if self._dedupe == "set":
            for item in items:
                k = key(item)
                if k in self._seen:
                    self.stats.duplicates += 1
                else:
                    self._seen.add(k)
                    kept.append(item)
            return kept
        ascending = self._dedupe == "ascending"
        last: Any = self._last_key
        for item in items:
            current: Any = key(item)
            if current is None:
                kept.append(item)
            elif last is not None and (current <= last if ascending else current >= last):
                self.stats.duplicates += 1
            else:
                kept.append(item)
                last = current
        self._last_key = last
        return kept

    async def pages(self) -> AsyncGenerator[Page[T], None]:
        """Yield whole pages in order; a page's ``items`` hold only records not seen before."""
        if self._started:
            raise InvalidRequestError("a paginator walks once: call list() again for a new walk")
        self._started = True
        try:
            async for page in self._walk():
                yield page
        finally:
            await self._cancel_all()

    async def _walk(self) -> AsyncIterator[Page[T]]:
        number = self.start_page  # the next page to yield
        scheduled = number  # the next page to launch
        last_page: int | None = None  # known from totals
        effective_size = self.page_size  # the service may serve fewer than asked
        previous_epoch: int | None = None  # the epoch the page before was read in
        previous_keys: tuple[Any, ...] | None = None
        remaining = self.max_items
        if remaining == 0:
            return
        while True:
            # Keep up to `concurrency` pages in flight, never past a known last page, and no
            # more than max_items can still use.
            ahead = self.concurrency
            if remaining is not None:
                ahead = min(ahead, max(1, math.ceil(remaining / effective_size)))
            if ahead == 1 and not self._tasks:
                # One page at a time needs no task: it saves a task and a loop turn a page.
                raw, epoch = await self._read(number)
                scheduled = number + 1
            else:
                while scheduled < number + ahead and (last_page is None or scheduled <= last_page):
                    self._launch(scheduled)
                    scheduled += 1
                if number not in self._tasks:  # totals said this page should not exist; it does
                    self._launch(number)
                    scheduled = number + 1
                raw, epoch = await self._tasks.pop(number)
            self.stats.pages += 1

            # A page's signature: its length and its first and last keys. Pages of distinct
            # records cannot share one; a page served twice does.
            keys = self._signature(raw.items)
            # (Unless records changed in between: then a delete can shift a whole page back.)
            if keys and previous_keys == keys and epoch == previous_epoch:
                raise ResponseDecodeError(
                    f"page {number} repeats page {number - 1}: the service ignored the page"
                    " number, so the walk stops rather than loop",
                    status=200,
                )
            previous_keys = keys

            if (
                previous_epoch is not None
                and epoch != previous_epoch
                and number > self.start_page
                and not self._overlaps(raw.items)
            ):
                # Records changed between the reads of the page before and this one, and this
                # page does not reach back to what was yielded: a delete behind the cursor may
                # have shifted records back across the boundary ("Pagination hazards"). Step
                # back until a page overlaps what was yielded, then forward to this page again;
                # a page is taken only when it overlaps what was yielded or was read in the
                # same epoch as the page taken before it, so no record slips between two reads.
                # Pages fetched ahead were read before all this: cancel them, fetch them after.
                await self._cancel_all()
                scheduled = number + 1
                repaired, raw, epoch = await self._repair(number, raw, epoch, previous_epoch)
                for page in repaired:
                    remaining = self._count(page, remaining)
                    if page.items:
                        yield page
                    if remaining == 0:
                        return
            previous_epoch = epoch

            if raw.items and len(raw.items) < self.page_size and number == self.start_page:
                effective_size = len(raw.items)
            if raw.total_pages is not None:
                last_page = raw.total_pages
            elif raw.total_records is not None:
                last_page = max(1, math.ceil(raw.total_records / effective_size))
            done = self._is_last(raw, number, last_page)
            page = self._emit(raw, number, has_next=not done)
            remaining = self._count(page, remaining)
            yield page
            # The consumer is done with this page only once it asks for the next.
            self.checkpoint = number + 1
            if done or remaining == 0:
                return
            number += 1

    async def _repair(
        self, number: int, raw: RawPage[T], epoch: int, taken_epoch: int
    ) -> tuple[list[Page[T]], RawPage[T], int]:
        """Re-read back from page ``number`` until the walk is contiguous again.

        Returns the pages before ``number`` to yield (their new items only), and page
        ``number`` as read last with its epoch. Gives up after ``_MAX_REREADS`` reads
        (``stats.unverified``): records changing under every read cannot be pinned down.
        """
        repaired: list[Page[T]] = []
        held: dict[int, tuple[RawPage[T], int]] = {}  # the latest read of pages stepped over
        again, budget = number, _MAX_REREADS
        while True:
            contiguous = epoch == taken_epoch or self._overlaps(raw.items)
            if not contiguous and again > self.start_page and budget:
                held[again] = (raw, epoch)
                again, budget = again - 1, budget - 1
                self.stats.refetches += 1
                raw, epoch = await self._read(again)
                continue
            if not contiguous:
                self.stats.unverified += 1
            if again == number:
                return repaired, raw, epoch
            repaired.append(self._emit(raw, again, has_next=True))
            taken_epoch, again = epoch, again + 1
            kept = held.pop(again, None)
            if kept is not None and kept[1] == taken_epoch:
                raw, epoch = kept  # read in the same epoch as the page just taken
            else:
                self.stats.refetches += 1
                raw, epoch = await self._read(again)

    def _overlaps(self, items: list[T]) -> bool:
        """Whether ``items`` reach back to what the walk already yielded (no gap before them).

        An empty page overlaps nothing; without dedupe there is nothing to compare with, so
        every page is taken as it comes.
        """
        if self._key is None or self._dedupe == "none":
            return True
        if not items:
            return False
        if self._dedupe == "set":
            return any(self._key(item) in self._seen for item in items)
        first, last = self._key(items[0]), self._last_key
        if first is None or last is None:
            return True
        return bool(first <= last) if self._dedupe == "ascending" else bool(first >= last)

    def _signature(self, items: list[T]) -> tuple[Any, ...] | None:
        if self._key is None or not items:
            return None
        return (len(items), self._key(items[0]), self._key(items[-1]))

    def _emit(self, raw: RawPage[T], number: int, *, has_next: bool) -> Page[T]:
        items = self._keep(raw.items)
        return Page(items, number, has_next, raw.total_records, raw.total_pages)

    def _count(self, page: Page[T], remaining: int | None) -> int | None:
        if remaining is not None and len(page.items) > remaining:
            del page.items[remaining:]
        self.stats.items += len(page.items)
        return None if remaining is None else remaining - len(page.items)

    def _is_last(self, raw: RawPage[T], number: int, last_page: int | None) -> bool:
        if not raw.items:
            return True
        if raw.has_next is not None:
            return not raw.has_next
        if last_page is not None:
            return number >= last_page
        # No totals: a page shorter than the service serves is the last. A short first page
        # is ambiguous: the end, or the service capping the page size (CONTRACT.md, "list":
        # above 100 may be capped). Its length is taken as the size served, and the next page
        # tells (empty: the end); with concurrency > 1 that page is already in flight.
        if self._served is None:
            self._served = len(raw.items)
            return False
        return len(raw.items) < self._served
