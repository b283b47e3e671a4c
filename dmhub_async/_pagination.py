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
import contextvars
import sys
import traceback
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterator,
)
from typing import Any, Final, Generic, TypeVar, cast

from ._exceptions import DMHubError, InvalidRequestError
from ._pagination_plan import PaginatorStats, RawPage, WalkPlan
from ._retry import RETRY_TALLY, RetryTally
from ._seen_records import Dedupe, SeenRecords
from ._validate import (
    MAX_CONCURRENCY,
    _as_int,
    check_concurrency,
    short,
    shown_even_half_made,
)
from .models.page import Page

__all__ = [
    "MAX_CONCURRENCY",
    "READING_AHEAD",
    "AsyncPaginator",
    "Dedupe",
    "PaginatorStats",
    "RawPage",
    "walk_closed",
]

T = TypeVar("T")

# MAX_CONCURRENCY (from _validate, which checks it): the highest ``concurrency`` a walk takes.
# Beyond a few dozen pages in flight a walk gets no faster (the client's own
# ``max_concurrency``, 16 by default, and the service's rate limit bound it), while every page
# in flight or waiting its turn holds memory (up to ``2 * concurrency`` pages of up to 100
# records) and a connection.

#: Reads page ``number`` of ``size`` records; its retries are counted in :data:`RETRY_TALLY`
#: as they are made (the client's retry loop does).
PageFetcher = Callable[[int, int], Awaitable[RawPage[T]]]

_Read = tuple[RawPage[T], int]  # a page as read, and the epoch it was read in

#: True in a walk's readers ahead (:meth:`AsyncPaginator._reader`), tasks of the walk's own:
#: a page fetch reads it to leave the answer out of that task's ``last_response``, which no
#: caller can read, and which kept a page the consumer was done with alive until the reader's
#: next page came (up to ``concurrency`` pages more than the ``2 * concurrency`` ahead).
READING_AHEAD: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "dmhub_async_reading_ahead", default=False
)


#: How ``async for`` gets a walk's records. An async generator's ``yield`` hands each record
#: over as a StopIteration; from Python 3.12 every exception is made whole as it is raised, and
#: a record returned by a coroutine (:class:`_Records`) costs less: a walk's page of 100 typed
#: customers counts 50k instructions fewer on 3.12 and 3.13, and 49k-52k more on 3.10 and 3.11
#: (benchmarks/HISTORY.md, issue 15's thirtieth round). The tests walk both ways on any Python.
RECORDS_BY_COROUTINE: bool = sys.version_info >= (3, 12)


#: A paginator walked again: it said "call list() again" to a caller of list_rows() or of the
#: statistics' list() alike.
WALKS_ONCE: Final = "a paginator walks once: call the method that made it again for a new walk"


def walk_closed() -> DMHubError:
    """The error of a walk ended by ``aclose()`` before its end, as a closed client's calls
    raise theirs: a walk that ended quietly would pass for a complete one (an export's file
    short of customers it never read), and one that went on read them a page at a time."""
    return DMHubError(
        "this walk was closed (paginator.aclose()) before its end: the records after its"
        " checkpoint were not read; a new walk from start_page=paginator.checkpoint reads them"
    )


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
        # Plain ints, as a customer id is taken: an int subclass's str (its repr, CustomerId(7))
        # went out as rows= and page=, and numpy's int64 was refused; a bool or a float (one
        # giving an __index__ too) is not one.
        numbers = []
        for name, value in (("page_size", page_size), ("start_page", start_page)):
            number = _as_int(value)
            if number is None or number < 1:
                raise InvalidRequestError(f"{name} must be an int >= 1, not {short(value)}")
            numbers.append(number)
        page_size, start_page = numbers
        # worded as lookup_many's, an export's and worker()'s
        concurrency = check_concurrency(concurrency)
        if max_items is not None:
            items = _as_int(max_items)
            if items is None or items < 0:
                raise InvalidRequestError(
                    f"max_items must be an int >= 0 or None, not {short(max_items)}"
                )
            max_items = items
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
        self._ahead: dict[int, asyncio.Future[_Read[T]]] = {}  # pages requested ahead, by number
        # The readers at work, each with the future of the page it reads (see _reader): the
        # pages in flight.
        self._readers: dict[asyncio.Task[None], asyncio.Future[_Read[T]]] = {}
        self._next_to_request = start_page

    @property
    def _in_flight(self) -> int:
        """Pages requested ahead and not read yet: a reader each."""
        return len(self._readers)

    @property
    def stats(self) -> PaginatorStats:
        """What the walk has done so far: pages, items, repeats dropped, re-reads, retries."""
        return self._plan.stats

    @stats.setter
    def stats(self, stats: PaginatorStats) -> None:  # walks chained into one share a tally
        self._plan.stats = stats

    @shown_even_half_made
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
        if RECORDS_BY_COROUTINE:
            return _Records(self.pages())
        return self._iter_items()

    async def _iter_items(self) -> AsyncIterator[T]:
        page: Page[T] | None  # declared only: nothing is done until the walk fails
        item: T | None
        try:
            async for page in self.pages():
                for item in page.items:
                    yield item
        except BaseException:
            page = item = None  # the last page's records: see pages()
            raise

    async def to_list(self) -> list[T]:
        """Every item of the walk, in order."""
        items: list[T] = []
        page: Page[T] | None  # declared only: nothing is done until the walk fails
        try:
            async for page in self.pages():  # no async step a record
                items += page.items
        except BaseException:
            del items  # the records so far, and the last page's: see pages()
            page = None
            raise
        return items

    async def aclose(self) -> None:
        """End the walk: cancel the pages still in flight (``break`` leaves them to the garbage
        collector). A consumer still walking (in another task) gets the page it waits for,
        then :class:`DMHubError`, as does one that starts the walk after it."""
        self._closed = True
        await self._cancel_ahead()

    async def pages(self) -> AsyncGenerator[Page[T], None]:
        """Yield whole pages in order; a page's ``items`` hold only records not seen before."""
        if self._started:
            raise InvalidRequestError(WALKS_ONCE)
        self._started = True
        read: _Read[T] | None  # declared only: nothing is done until the walk fails
        page: Page[T] | None
        try:
            plan = self._plan
            while not plan.finished:
                if self._closed:  # by aclose(), from another task or before the walk began
                    raise walk_closed()
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
        except BaseException as err:
            # The pages read, dropped before the error goes on: their records, and whatever a
            # service put in them (an echo of the request, the token in its URL), stayed in
            # the variables of this frame and of the plan's that refused a page, which an
            # error tracker records with the traceback. Those frames are done (clear_frames
            # leaves this one, still running, alone).
            traceback.clear_frames(err.__traceback__)
            read = page = None
            raise
        finally:
            self._closed = True
            self._plan.seen.forget()  # a walk that ends walks no more: see forget()
            await self._cancel_ahead()

    async def _read(self, number: int) -> _Read[T]:
        """Page ``number``, and the epoch the plan puts its read in.

        Its retries are counted as its request makes them (:class:`RetryTally`, which the
        client's retry loop adds to): read, cancelled (a page read ahead, dropped) or failed,
        as far as it had gone. A tally kept around the walk (an export's, which says them even
        when it fails) gets them too.
        """
        tally = RetryTally()
        outer = RETRY_TALLY.get()
        kept = RETRY_TALLY.set(tally)
        try:
            raw = await self._fetch(number, self.page_size)
        finally:
            RETRY_TALLY.reset(kept)
            self.stats.retries += tally.retries
            if outer is not None:
                outer.retries += tally.retries
        return raw, self._plan.note_read(number, raw)

    async def _read_in_order(self, number: int) -> _Read[T]:
        """Page ``number``, the next in order: requested ahead already, or now."""
        if self.concurrency > 1:  # one page at a time needs no reader: it saves a task
            self._request_ahead()
        future = self._ahead.pop(number, None)
        if future is None:
            # Not worth a reader (one page at a time, the start page), or a page the totals
            # said should not exist and the service says does.
            self._next_to_request = max(self._next_to_request, number + 1)
            return await self._read(number)
        return await future

    def _request_ahead(self) -> None:
        """Start readers, in order, while fewer than ``concurrency`` pages are in flight."""
        while self._in_flight < self.concurrency:
            claimed = self._claim()
            if claimed is None:
                return
            reader = asyncio.ensure_future(self._reader(*claimed))
            if not reader.done():
                # Noted here for a reader not started yet (cancelled so, it never runs its
                # body); one an eager task factory started has noted its page itself, perhaps
                # a later one, or ended and left.
                self._readers.setdefault(reader, claimed[1])
            reader.add_done_callback(self._on_reader_done)

    def _on_reader_done(self, reader: asyncio.Task[None]) -> None:
        # Also here, not only in the reader's finally: a reader cancelled before its first
        # step never runs its body.
        self._readers.pop(reader, None)
        if not reader.cancelled():
            reader.exception()  # a Ctrl-C's: its page's future has it too, for the consumer

    def _claim(self) -> tuple[int, asyncio.Future[_Read[T]]] | None:
        """The next page to request now and the future it is read into (in ``_ahead``), or
        None: none is due, or only the page the consumer asks for, which it reads itself."""
        plan = self._plan
        if self._closed or plan.finished or plan.repairing:
            return None
        self._next_to_request = max(self._next_to_request, plan.next_page)
        last = plan.last_page_to_request(2 * self.concurrency)
        number = self._next_to_request
        if number > last or (last == plan.next_page and not self._ahead):
            return None
        self._next_to_request = number + 1
        future: asyncio.Future[_Read[T]] = asyncio.get_running_loop().create_future()
        self._ahead[number] = future
        return number, future

    async def _reader(self, number: int, future: asyncio.Future[_Read[T]]) -> None:
        """Read page ``number`` into ``future``, then each next page due, until none is.

        A worker of the pool: the next request goes out in the step that read the page
        before it. A task a page (until issue 15's twenty-seventh round) sent it a turn of the
        event loop later, after every other page read meanwhile had been decoded: at 50 ms
        and 8 at once, the walk took 1.06x the time of 8 aiohttp workers
        (benchmarks/bench_walk.py). A page's error (or a BaseException) goes to its future,
        which the consumer raises when it gets there, and this reader stops; a
        KeyboardInterrupt or SystemExit also leaves the event loop at once, as it did from a
        task a page (kept for the consumer's turn, a Ctrl-C came pages later, or never).
        """
        reader = cast("asyncio.Task[None]", asyncio.current_task())
        READING_AHEAD.set(True)  # in this task's own context: its answers are not remembered
        try:
            while True:
                self._readers[reader] = future
                try:
                    read = await self._read(number)
                except asyncio.CancelledError:
                    future.cancel()
                    raise
                except BaseException as err:
                    if not future.done():
                        future.set_exception(err)
                    if isinstance(err, (KeyboardInterrupt, SystemExit)):
                        raise  # out of the loop at once, as asyncio lets them out of any task
                    return
                if future.done():  # cancelled by its consumer, who is leaving the walk
                    return
                future.set_result(read)
                # Not held while the next page is read: the consumer may be done with it by
                # then (a page a reader, up to ``concurrency`` pages past the window).
                del read
                claimed = self._claim()
                if claimed is None:
                    return
                number, future = claimed
        finally:
            # Freed in this step: the consumer woken by this reader's last page runs before
            # the task's done callbacks, and asked for pages with the reader still counted,
            # leaving a place in the pool empty until its next page came (1 of 2 after a slow
            # page).
            self._readers.pop(reader, None)

    async def _cancel_ahead(self) -> None:
        """Drop the pages read ahead: cancel those not read yet (their readers too), and
        retrieve the error of one that failed, never to be raised."""
        futures = list(self._ahead.values())
        self._ahead.clear()
        self._next_to_request = 0  # from the plan's next page again
        for future in futures:
            if not future.cancel() and not future.cancelled():
                future.exception()
        # A reader of a page the consumer took and is waiting for is left to finish it (a
        # walk closed from another task: that page still arrives); one whose page was
        # cancelled, here or by its consumer's cancellation, is cancelled.
        readers = [reader for reader, page in self._readers.items() if page.cancelled()]
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.gather(*readers, return_exceptions=True)


class _Records(Generic[T]):
    """The records of a walk's pages, one ``__anext__`` a record (see RECORDS_BY_COROUTINE).

    Left before its end (``break``), it holds the pages generator and the rest of its page, as
    the async generator did: dropped, the pages generator is closed by the event loop's clean-up
    of abandoned generators, which cancels the pages in flight.
    """

    __slots__ = ("_items", "_pages")

    def __init__(self, pages: AsyncGenerator[Page[T], None]) -> None:
        self._pages = pages
        self._items: Iterator[T] = iter(())

    def __aiter__(self) -> _Records[T]:
        return self

    async def __anext__(self) -> T:
        for item in self._items:
            return item
        while True:  # a page with no record new to the walk has none to give
            self._items = items = iter((await anext(self._pages)).items)
            for item in items:
                return item
