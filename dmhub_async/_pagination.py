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
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Generic, Literal, TypeVar

import attrs

from ._exceptions import InvalidRequestError, ResponseDecodeError
from .models.page import Page

__all__ = ["AsyncPaginator", "PaginatorStats", "RawPage"]

T = TypeVar("T")

#: How repeats are recognised: by order of an ascending or descending key (O(1) memory), by a
#: set of every key seen (memory grows with the walk), or not at all.
Dedupe = Literal["ascending", "descending", "set", "none"]
#: How often one re-read (see _walk) backs up again when records keep changing under it.
_MAX_BACKUPS = 8


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
                raise InvalidRequestError(f"{name} must be an int >= {low}, not {value!r}")
        if max_items is not None and (
            isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0
        ):
            raise InvalidRequestError(f"max_items must be an int >= 0 or None, not {max_items!r}")
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
        # Records that vanished up to each epoch (the sum of every drop in ``records`` seen
        # between reads): how far a delete behind the cursor may have shifted pages back.
        # The net change would hide a delete that an insert made up for.
        self._dropped: list[int] = [0]

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
                self._dropped.append(self._dropped[-1] + max(0, self._seen_total - total))
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

    async def pages(self) -> AsyncIterator[Page[T]]:
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
                and self._dedupe != "none"
                and number > self.start_page
            ):
                # Records changed between the reads of the page before and this one: a delete
                # behind the cursor shifts records back across the boundary ("Pagination
                # hazards"). Re-read from far enough back (the repeats it brings are dropped)
                # up to this page again, backing up again whenever records change between two
                # reads. Pages fetched ahead were read before: cancel them, fetch them after.
                await self._cancel_all()
                scheduled = number + 1
                again = number - self._back(previous_epoch, epoch, effective_size)
                again = max(self.start_page, again)
                backups = _MAX_BACKUPS
                while True:
                    self.stats.refetches += 1
                    fresh, fresh_epoch = await self._read(again)
                    if fresh_epoch != epoch and backups and again > self.start_page:
                        backups -= 1
                        back = self._back(epoch, fresh_epoch, effective_size)
                        again = max(self.start_page, again - back)
                        raw, epoch = fresh, fresh_epoch
                        continue
                    raw, epoch = fresh, fresh_epoch
                    if again == number:
                        break  # this page, read again after the pages before it
                    page = self._emit(fresh, again, has_next=True)
                    remaining = self._count(page, remaining)
                    if page.items:
                        yield page
                    if remaining == 0:
                        return
                    again += 1
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

    def _signature(self, items: list[T]) -> tuple[Any, ...] | None:
        if self._key is None or not items:
            return None
        return (len(items), self._key(items[0]), self._key(items[-1]))

    def _emit(self, raw: RawPage[T], number: int, *, has_next: bool) -> Page[T]:
        items = self._keep(raw.items)
        return Page(items, number, has_next, raw.total_records, raw.total_pages)

    def _back(self, before: int, after: int, size: int) -> int:
        """Pages to step back for the records dropped between two epochs (at least 1)."""
        dropped = abs(self._dropped[after] - self._dropped[before])
        return max(1, math.ceil(dropped / size))

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
