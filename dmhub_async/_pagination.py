"""AsyncPaginator: walks page-numbered listings in order, once per record, with prefetch.

The service pages by number, in two shapes: ``{"rows", "records", "total"}`` for customers and
``{"items", "meta": {"records", "total", "hasNext"}}`` for statistics (docs/contract.md,
"Operations"). What to yield, which page to read and when to stop is decided by a
:class:`~dmhub_async._pagination_plan.WalkPlan` (no I/O, tested on plain lists); this module
only carries it out: it reads pages, up to ``concurrency`` at once, and yields what the plan
says, in order.

Reading ahead works like a pool of ``concurrency`` workers: as soon as a read completes, the
next page is requested, without waiting for the consumer to take the pages before it (one slow
page then holds up nothing but itself). Pages read ahead wait in memory for their turn: at most
``2 * concurrency`` pages are requested ahead of the page the consumer waits for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Final, Generic, TypeVar

from ._exceptions import InvalidRequestError
from ._pagination_plan import PaginatorStats, RawPage, WalkPlan
from ._retry import RETRY_TALLY, RetryTally
from ._seen_records import Dedupe, SeenRecords
from ._validate import MAX_CONCURRENCY, check_concurrency, short
from .models.page import Page

__all__ = ["MAX_CONCURRENCY", "AsyncPaginator", "Dedupe", "PaginatorStats", "RawPage"]

T = TypeVar("T")

# MAX_CONCURRENCY (from _validate, which checks it): the highest ``concurrency`` a walk takes.
# Beyond a few dozen pages in flight a walk gets no faster (the client's own
# ``max_concurrency``, 16 by default, and the service's rate limit bound it), while every page
# in flight or waiting its turn holds memory (up to ``2 * concurrency`` pages of up to 100
# records) and a connection.

#: Fetches page ``number`` of ``size`` items.
PageFetcher = Callable[[int, int], Awaitable[RawPage[T]]]

_Read = tuple[RawPage[T], int]  # a page as read, and the epoch it was read in


#: A paginator walked again: it said "call list() again" to a caller of list_rows() or of the
#: statistics' list() alike.
WALKS_ONCE: Final = "a paginator walks once: call the method that made it again for a new walk"


class AsyncPaginator(Generic[T]):
    """``async for item in paginator``: every item once, in server order.

    Also :meth:`pages` for whole pages, :meth:`to_list`, ``.checkpoint`` (the next page to
    fetch, for ``start_page`` of a later walk with ``resume_after`` the last item's key; the
    page ``max_items`` cut short, when it did) and ``.stats``.
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
        for name, value, low in (("page_size", page_size, 1), ("start_page", start_page, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidRequestError(f"{name} must be an int >= {low}, not {short(value)}")
        check_concurrency(concurrency)  # worded as lookup_many's, an export's and worker()'s
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
        self.checkpoint = start_page
        self._plan = WalkPlan(
            SeenRecords(key, dedupe, resume_after),
            page_size=page_size,
            start_page=start_page,
            max_items=max_items,
        )
        self._started = False
        self._closed = False
        self._ahead: dict[int, asyncio.Task[_Read[T]]] = {}  # pages requested ahead, by number
        self._in_flight = 0
        self._next_to_request = start_page

    @property
    def stats(self) -> PaginatorStats:
        """What the walk has done so far: pages, items, repeats dropped, re-reads, retries."""
        return self._plan.stats

    @stats.setter
    def stats(self, stats: PaginatorStats) -> None:  # walks chained into one share a tally
        self._plan.stats = stats

    def __repr__(self) -> str:
        # The default was "<dmhub_async._pagination.AsyncPaginator object at 0x...>": nothing
        # of the walk. Where it is and what it has done; never a filter (a mobile, an email).
        started = self._started or getattr(self, "_walked", False)  # a BatchWalk's flag
        state = "ended" if self._closed else "walking" if started else "not started"
        stats = self.stats
        return (
            f"<AsyncPaginator {state}: page_size={self.page_size}, "
            f"concurrency={self.concurrency}, checkpoint={self.checkpoint}, "
            f"pages={stats.pages}, items={stats.items}>"
        )

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
        self._closed = True
        await self._cancel_ahead()

    async def pages(self) -> AsyncGenerator[Page[T], None]:
        """Yield whole pages in order; a page's ``items`` hold only records not seen before."""
        if self._started:
            raise InvalidRequestError(WALKS_ONCE)
        self._started = True
        try:
            plan = self._plan
            while not plan.finished:
                number = plan.next_page
                if plan.repairing:  # what was read ahead was read before the change: stale
                    await self._cancel_ahead()
                    read = await self._read(number)
                else:
                    read = await self._read_in_order(number)
                for page in plan.take(number, *read):
                    yield page
                    # The consumer is done with this page only once it asks for the next;
                    # with the rest of a page max_items cut short, a resume reads it again.
                    self.checkpoint = page.number + (page.number != plan.cut_short)
        finally:
            self._closed = True
            await self._cancel_ahead()

    async def _read(self, number: int) -> _Read[T]:
        """Page ``number``, and the epoch the plan puts its read in.

        Its retries are counted once it is read, as its answer says; cancelled (a page read
        ahead, dropped) or failed, as far as it had gone (:class:`RetryTally`). A tally kept
        around the walk (an export's, which says them even when it fails) gets them too.
        """
        tally = RetryTally()
        outer = RETRY_TALLY.get()
        kept = RETRY_TALLY.set(tally)
        try:
            raw = await self._fetch(number, self.page_size)
        except BaseException:
            self.stats.retries += tally.retries
            raise
        finally:
            RETRY_TALLY.reset(kept)
            if outer is not None:
                outer.retries += tally.retries
        self.stats.retries += raw.retries
        return raw, self._plan.note_read(number, raw)

    async def _read_in_order(self, number: int) -> _Read[T]:
        """Page ``number``, the next in order: requested ahead already, or now."""
        if self.concurrency > 1:  # one page at a time needs no task: it saves a task a page
            self._request_ahead()
        task = self._ahead.pop(number, None)
        if task is None:
            # Not worth a task (one page at a time, the start page), or a page the totals
            # said should not exist and the service says does.
            self._next_to_request = max(self._next_to_request, number + 1)
            return await self._read(number)
        return await task

    def _request_ahead(self) -> None:
        """Request pages, in order, while fewer than ``concurrency`` are in flight."""
        plan = self._plan
        if self._in_flight >= self.concurrency or self._closed or plan.finished or plan.repairing:
            return
        self._next_to_request = max(self._next_to_request, plan.next_page)
        last = plan.last_page_to_request(2 * self.concurrency)
        if last == plan.next_page and not self._ahead:
            return  # one page to read: the consumer reads it without a task
        while self._in_flight < self.concurrency and self._next_to_request <= last:
            number = self._next_to_request
            task = asyncio.ensure_future(self._read(number))
            task.add_done_callback(self._on_read_done)
            self._ahead[number] = task
            self._in_flight += 1
            self._next_to_request = number + 1

    def _on_read_done(self, task: asyncio.Task[_Read[T]]) -> None:
        self._in_flight -= 1
        if not task.cancelled() and task.exception() is None:
            self._request_ahead()  # a worker free: the next page, before the consumer asks

    async def _cancel_ahead(self) -> None:
        tasks = list(self._ahead.values())
        self._ahead.clear()
        self._next_to_request = 0  # from the plan's next page again
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
