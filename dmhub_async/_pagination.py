"""AsyncPaginator: walks page-numbered listings in order, once per record, with prefetch.

The service pages by number (offset), in two shapes: ``{"rows", "records", "total"}`` for
customers and ``{"items", "meta": {"records", "total", "hasNext"}}`` for statistics
(CONTRACT.md, "Operations"). A record inserted or deleted behind the cursor shifts every later
page ("Pagination hazards"), so the walk

* drops repeats by key (with an ``id`` sort, by comparing with the last key: O(1) memory);
* re-reads the page before when ``records`` changed between two pages, which catches the
  records a delete behind the cursor shifted back across the page boundary;
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
        self._tasks: dict[int, asyncio.Task[RawPage[T]]] = {}

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
        self._tasks[number] = asyncio.ensure_future(
            self._fetch(number, self.page_size, self._on_retry)
        )

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
        previous: RawPage[T] | None = None
        previous_keys: list[Hashable] | None = None
        remaining = self.max_items
        if remaining == 0:
            return
        while True:
            # Keep up to `concurrency` pages in flight, never past a known last page, and no
            # more than max_items can still use.
            ahead = self.concurrency
            if remaining is not None:
                ahead = min(ahead, max(1, math.ceil(remaining / effective_size)))
            while scheduled < number + ahead and (last_page is None or scheduled <= last_page):
                self._launch(scheduled)
                scheduled += 1
            if number not in self._tasks:  # totals said this page should not exist; it does
                self._launch(number)
                scheduled = number + 1
            raw = await self._tasks.pop(number)
            self.stats.pages += 1

            keys = [self._key(i) for i in raw.items] if self._key is not None else None
            if keys and previous_keys == keys:
                raise ResponseDecodeError(
                    f"page {number} repeats page {number - 1}: the service ignored the page"
                    " number, so the walk stops rather than loop",
                    status=200,
                )
            previous_keys = keys

            if (
                previous is not None
                and previous.total_records is not None
                and raw.total_records is not None
                and raw.total_records != previous.total_records
                and self._dedupe != "none"
            ):
                # Records changed between the two reads: a delete behind the cursor shifts
                # records back across the boundary. Re-read the pages before this one (the
                # repeats it brings are dropped) so that none is skipped.
                back = max(
                    1, math.ceil((previous.total_records - raw.total_records) / effective_size)
                )
                for again in range(max(self.start_page, number - back), number):
                    self.stats.refetches += 1
                    fresh = await self._fetch(again, self.page_size, self._on_retry)
                    for page in self._emit(fresh, again, has_next=True):
                        remaining = self._count(page, remaining)
                        if page.items:
                            yield page
                        if remaining == 0:
                            return
            previous = raw

            if raw.items and len(raw.items) < self.page_size and number == self.start_page:
                effective_size = len(raw.items)
            if raw.total_pages is not None:
                last_page = raw.total_pages
            elif raw.total_records is not None:
                last_page = max(1, math.ceil(raw.total_records / effective_size))
            done = self._is_last(raw, number, last_page)
            page = self._emit(raw, number, has_next=not done)[0]
            remaining = self._count(page, remaining)
            yield page
            # The consumer is done with this page only once it asks for the next.
            self.checkpoint = number + 1
            if done or remaining == 0:
                return
            number += 1

    def _emit(self, raw: RawPage[T], number: int, *, has_next: bool) -> list[Page[T]]:
        items = self._keep(raw.items)
        return [Page(items, number, has_next, raw.total_records, raw.total_pages)]

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
        # No totals: a short page is the last (with totals, a short page may be a server cap).
        return len(raw.items) < self.page_size
