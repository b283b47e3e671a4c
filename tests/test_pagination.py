"""AsyncPaginator driven directly by an in-memory fake server: no HTTP, so hypothesis can run
hundreds of walks a second.

The fake serves a sorted list of integer ids (the items are the ids themselves, deduplicated
ascending as ``dm.customers.list()`` does with its default ``id`` sort), ``min(asked, cap)``
rows a page, and reports its totals in one of the shapes the contract allows.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import math
import random
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dmhub_async import (
    DMHubClient,
    DMHubError,
    InvalidRequestError,
    ResponseDecodeError,
    _pagination,
)
from dmhub_async._pagination import AsyncPaginator, RawPage
from dmhub_async._retry import RETRY_TALLY, RetryTally
from dmhub_async.testing import DMHubSimulator


@pytest.fixture(autouse=True, scope="module", params=["generator", "coroutine"])
def records_handed_over_by(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here walks both ways ``async for`` gets records: an async generator (Python
    3.10 and 3.11) and a coroutine a record (3.12 and later), whichever Python runs them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_pagination, "RECORDS_BY_COROUTINE", request.param == "coroutine")
        yield request.param


Totals = Literal["both", "records", "pages", "has_next", "none"]
TOTALS: tuple[Totals, ...] = ("both", "records", "pages", "has_next", "none")

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class FakeServer:
    """Pages of a list of ids, served like the customer list endpoint, with counters."""

    def __init__(
        self,
        n: int,
        *,
        cap: int | None = None,
        totals: Totals = "both",
        rng: random.Random | None = None,
        latency: float = 0.0,
        mutate: Callable[[FakeServer], None] | None = None,
        fail_page: int | None = None,
        ignore_page_number: bool = False,
        fast_pages: tuple[int, ...] = (),
    ) -> None:
        self.ids = list(range(1, n + 1))
        self.next_id = n + 1
        self.cap = cap
        self.totals = totals
        self.rng = rng
        self.latency = latency
        self.mutate = mutate
        self.fail_page = fail_page
        self.ignore_page_number = ignore_page_number
        self.fast_pages = fast_pages
        self.requests: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0

    async def fetch(self, number: int, size: int) -> RawPage[int]:
        self.requests.append(number)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            # Random interleaving of concurrent fetches (answers come back out of order).
            for _ in range(self.rng.randrange(4) if self.rng else 1):
                await asyncio.sleep(0)
            if self.latency and number not in self.fast_pages:
                await asyncio.sleep(self.latency)
            if self.mutate is not None:
                self.mutate(self)
            if number == self.fail_page:
                raise RuntimeError(f"page {number} failed")
            return self.page(1 if self.ignore_page_number else number, size)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    def page(self, number: int, size: int) -> RawPage[int]:
        served = min(size, self.cap) if self.cap else size
        start = (number - 1) * served
        items = self.ids[start : start + served]
        records = len(self.ids)
        pages = math.ceil(records / served)
        if self.totals == "both":
            return RawPage(items, None, records, pages)
        if self.totals == "records":
            return RawPage(items, None, records, None)
        if self.totals == "pages":
            return RawPage(items, None, None, pages)
        if self.totals == "has_next":
            return RawPage(items, start + served < records, records, pages)
        return RawPage(items)


def walk(server: FakeServer, **kwargs: Any) -> AsyncPaginator[int]:
    kwargs.setdefault("page_size", 10)
    return AsyncPaginator(server.fetch, key=int, dedupe="ascending", **kwargs)


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def settle() -> None:
    """Let the loop finalize abandoned async generators (what happens after a ``break``).

    Python closes an async generator left by ``break`` in a task of its own; its cleanup (which
    cancels the pages in flight) takes a few turns of the loop, never a wait on the network.
    """
    for _ in range(20):
        if not other_tasks():
            return
        await asyncio.sleep(0)


page_sizes = st.integers(1, 40)
caps = st.none() | st.integers(1, 40)
totals_shapes = st.sampled_from(TOTALS)
concurrencies = st.integers(1, 8)


# -- exactness ------------------------------------------------------------------------------


@FAST
@given(
    n=st.integers(0, 250),
    page_size=page_sizes,
    cap=caps,
    totals=totals_shapes,
    concurrency=concurrencies,
    max_items=st.none() | st.integers(0, 300),
    rng=st.randoms(use_true_random=False),
)
async def test_walk_yields_every_record_once_in_order(
    n: int,
    page_size: int,
    cap: int | None,
    totals: Totals,
    concurrency: int,
    max_items: int | None,
    rng: random.Random,
) -> None:
    server = FakeServer(n, cap=cap, totals=totals, rng=rng)
    paginator = walk(server, page_size=page_size, concurrency=concurrency, max_items=max_items)
    got = await paginator.to_list()
    assert got == server.ids[:max_items]
    assert paginator.stats.items == len(got)
    assert paginator.stats.duplicates == 0
    assert not other_tasks()


@FAST
@given(
    n=st.integers(0, 200),
    page_size=page_sizes,
    cap=caps,
    totals=totals_shapes,
    concurrency=st.integers(2, 8),
    rng=st.randoms(use_true_random=False),
)
async def test_concurrent_walk_equals_sequential_walk(
    n: int, page_size: int, cap: int | None, totals: Totals, concurrency: int, rng: random.Random
) -> None:
    async def pages(c: int) -> list[tuple[int, list[int], bool]]:
        server = FakeServer(n, cap=cap, totals=totals, rng=rng)
        paginator = walk(server, page_size=page_size, concurrency=c)
        return [(p.number, p.items, p.has_next) async for p in paginator.pages()]

    sequential = await pages(1)
    assert await pages(concurrency) == sequential
    assert [i for _, items, _ in sequential for i in items] == list(range(1, n + 1))


@FAST
@given(
    n=st.integers(1, 200),
    page_size=page_sizes,
    cap=caps,
    totals=totals_shapes,
    concurrency=concurrencies,
    data=st.data(),
)
async def test_resuming_from_any_checkpoint_completes_the_walk(
    n: int,
    page_size: int,
    cap: int | None,
    totals: Totals,
    concurrency: int,
    data: st.DataObject,
) -> None:
    """Break after k items (or after k whole pages), resume with checkpoint and the last id."""
    server = FakeServer(n, cap=cap, totals=totals)
    first = walk(server, page_size=page_size, concurrency=concurrency)
    got: list[int] = []
    if data.draw(st.booleans(), label="by pages"):
        stop = data.draw(st.integers(1, 20), label="pages")
        async for page in first.pages():
            got.extend(page.items)
            stop -= 1
            if stop == 0:
                break
    else:
        stop = data.draw(st.integers(1, n), label="items")
        async for item in first:
            got.append(item)
            if len(got) == stop:
                break
    await first.aclose()
    second = walk(
        server,
        page_size=page_size,
        concurrency=data.draw(concurrencies, label="concurrency after"),
        start_page=first.checkpoint,
        resume_after=got[-1] if got else None,
    )
    got.extend(await second.to_list())
    assert got == server.ids
    await settle()
    assert not other_tasks()


# -- drift: records inserted and deleted during the walk ------------------------------------


def churn(
    rng: random.Random, deleted: set[int], rate: float = 0.15
) -> Callable[[FakeServer], None]:
    """Before a page is served: most often nothing, else 1-3 inserts (new, larger ids) or 1-3
    deletes, the one or the other: a busy CRM seen between two page reads of an export.
    """

    def mutate(server: FakeServer) -> None:
        if rng.random() >= rate or not server.ids:
            return
        k = rng.randint(1, 3)
        if rng.random() < 0.5:
            server.ids.extend(range(server.next_id, server.next_id + k))
            server.next_id += k
        else:
            for victim in rng.sample(server.ids, min(k, len(server.ids))):
                server.ids.remove(victim)
                deleted.add(victim)

    return mutate


@settings(FAST, max_examples=200)
@given(
    n=st.integers(0, 150),
    page_size=st.integers(3, 20),
    totals=st.sampled_from(("both", "records", "has_next")),
    concurrency=st.just(1) | concurrencies,
    seed=st.integers(0, 2**32),
)
# Deletes of 5 and an insert of 3 between two reads: the net change (-2) under-states the
# shift (5); the walk must step back by what was dropped, not by the net.
@example(n=75, page_size=3, totals="both", concurrency=8, seed=1755)
async def test_walk_under_inserts_and_deletes_loses_and_repeats_nothing(
    n: int, page_size: int, totals: Totals, concurrency: int, seed: int
) -> None:
    """Every record that existed throughout the walk arrives, once, in id order.

    The fake server changes its list as a page request is served: new customers get larger ids
    (they join the end of an id-sorted walk), deletes remove random existing ones. A delete
    behind the cursor shifts later records back across a page boundary; the paginator notices
    that ``records`` changed between the reads of two pages (in the order reads complete,
    prefetched ones included) and re-reads from far enough back, backing up again when records
    change during the re-read.

    Known limits (what this defence cannot see, so the changes here stay realistic: on 15% of
    requests, one kind of change each, instead of churn on every request):

    * as many inserts as deletes between two reads, with no read in between to see the
      intermediate count: ``records`` looks unchanged and the shifted records are skipped
      (``test_balanced_churn_is_invisible_to_the_walk``);
    * records changing on nearly every request: the re-read backs up at most 32 times, then
      carries on (so the changes here come from a seeded ``random.Random``, not from
      hypothesis, which would find the unlucky streak of churn on every request);
    * concurrent walks order reads by completion, not by when the server served them.

    Only a final ``count`` reconciliation, as the export job does, reveals such a loss.
    """
    rng = random.Random(seed)
    deleted: set[int] = set()
    server = FakeServer(n, totals=totals, rng=rng)
    initial = list(server.ids)
    server.mutate = churn(rng, deleted)
    paginator = walk(server, page_size=page_size, concurrency=concurrency)
    got = await paginator.to_list()
    assert got == sorted(set(got)), "out of order or repeated"
    survivors = [i for i in initial if i not in deleted]
    missing = sorted(set(survivors) - set(got))
    assert not missing
    assert set(got) <= set(initial) | set(range(n + 1, server.next_id))
    assert not other_tasks()


@settings(FAST, max_examples=200)
@given(
    n=st.integers(1, 400),
    page_size=st.integers(1, 20),
    resumed_size=st.none() | st.integers(1, 20),
    stop=st.integers(1, 400),
    share_deleted=st.floats(0, 1),
    concurrency=concurrencies,
    churning=st.booleans(),
    seed=st.integers(0, 2**32),
)
async def test_a_resumed_walk_after_deletes_behind_it_loses_and_repeats_nothing(
    n: int,
    page_size: int,
    resumed_size: int | None,
    stop: int,
    share_deleted: float,
    concurrency: int,
    churning: bool,
    seed: int,
) -> None:
    """Stopped after ``stop`` records, resumed from its checkpoint (at another page size,
    sometimes) after any share of what it yielded was deleted, with inserts and deletes
    during the resumed walk too: every record after the resume point that existed
    throughout arrives, once, in order. A resume stepped back 32 pages at most, then skipped
    every record between its place and its start page."""
    rng = random.Random(seed)
    server = FakeServer(n, totals="both")
    first = walk(server, page_size=page_size, max_items=min(stop, n))
    kept = await first.to_list()
    for victim in rng.sample(kept, int(share_deleted * len(kept))):
        server.ids.remove(victim)
    deleted: set[int] = set()
    after = [i for i in server.ids if i > kept[-1]]
    if churning:
        server.mutate = churn(rng, deleted)
    second = walk(
        server,
        page_size=resumed_size or page_size,
        concurrency=concurrency,
        start_page=first.checkpoint,
        resume_after=kept[-1],
    )
    got = await second.to_list()
    assert got == sorted(set(got)), "out of order or repeated"
    assert all(i > kept[-1] for i in got)
    missing = sorted(set(after) - deleted - set(got))
    assert not missing
    assert second.stats.unverified == 0 or churning
    assert not other_tasks()


@pytest.mark.xfail(strict=True, reason="known limit: equal inserts and deletes leave records")
async def test_balanced_churn_is_invisible_to_the_walk() -> None:
    """Between pages 1 and 2 one record behind the cursor is deleted and one is inserted."""
    server = FakeServer(20, totals="both")
    served = 0

    def mutate(server: FakeServer) -> None:
        nonlocal served
        served += 1
        if served == 2:
            server.ids.remove(1)
            server.ids.append(server.next_id)
            server.next_id += 1

    server.mutate = mutate
    got = await walk(server, page_size=10).to_list()
    assert 11 in got  # shifted from page 2 to page 1 after page 1 was read: skipped


async def test_delete_behind_the_cursor_triggers_a_reread() -> None:
    server = FakeServer(30, totals="both")
    served = 0

    def mutate(server: FakeServer) -> None:
        nonlocal served
        served += 1
        if served == 2:
            del server.ids[:3]  # 11, 12, 13 move onto page 1, already read

    server.mutate = mutate
    paginator = walk(server, page_size=10)
    got = await paginator.to_list()
    assert got == list(range(1, 31))
    # Page 2 no longer reaches back to page 1's last id: page 1 again, which does; page 2's
    # read came after the delete too (same epoch), so it is taken without a third read.
    assert paginator.stats.refetches == 1
    assert paginator.stats.duplicates > 0
    assert server.requests == [1, 2, 1, 3]


class StaleCountServer(FakeServer):
    """A server whose totals lag its rows: ``records`` stays what it was at the start."""

    def page(self, number: int, size: int) -> RawPage[int]:
        raw = super().page(number, size)
        return RawPage(raw.items, None, 30, 3)


class StaleRecordsServer(FakeServer):
    """A server whose ``records`` lags its rows (25 all along) and that says no page count."""

    def page(self, number: int, size: int) -> RawPage[int]:
        raw = super().page(number, size)
        return RawPage(raw.items, None, 25, None)


def _deletes_first_at_third_read(deleted: int) -> Callable[[FakeServer], None]:
    """A ``FakeServer.mutate`` that deletes the first ``deleted`` customers as the third page
    read is served (behind the cursor of a walk one page at a time)."""
    served = 0

    def mutate(server: FakeServer) -> None:
        nonlocal served
        served += 1
        if served == 3:
            del server.ids[:deleted]

    return mutate


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_an_empty_page_before_the_reported_total_counts_as_unverified(
    concurrency: int,
) -> None:
    # 10 customers deleted behind the cursor, and a count that did not move (a cache, a
    # replica): page 3 came back empty while the totals still said 30 records in 3 pages. The
    # walk ended there, 21 to 30 (shifted onto page 2, read already) never yielded, and
    # stats.unverified == 0: nothing told the caller the walk may be short.
    server = StaleCountServer(30)
    server.mutate = _deletes_first_at_third_read(10)
    paginator = walk(server, page_size=10, concurrency=concurrency)
    got = await paginator.to_list()
    assert got == list(range(1, 21))  # what a walk can see (the walk still ends on it)
    assert paginator.stats.unverified == 1


async def test_an_empty_last_page_the_records_alone_say_holds_some_counts_as_unverified() -> None:
    # records=25 at 10 a page, no page count: page 3 holds 21 to 25. Five deleted behind the
    # cursor and a count that did not move: page 3 came back empty, 21 to 25 shifted onto page
    # 2 (read already), and the walk must say it may be short.
    server = StaleRecordsServer(25)
    server.mutate = _deletes_first_at_third_read(5)
    paginator = walk(server, page_size=10)
    assert await paginator.to_list() == list(range(1, 21))
    assert paginator.stats.unverified == 1


async def test_an_empty_first_page_of_a_walk_with_records_counts_as_unverified() -> None:
    server = StaleCountServer(0)  # no rows, while the totals say 30 records
    paginator = walk(server, page_size=10)
    assert await paginator.to_list() == []
    assert paginator.stats.unverified == 1


async def test_an_empty_page_the_totals_agree_with_is_no_unverified_page() -> None:
    # The last page read empty where the totals say there is none (records 0; a resume or
    # an id_list batch past the end): a walk's plain end.
    for server, start in ((FakeServer(0), 1), (FakeServer(30), 4), (FakeServer(30), 9)):
        paginator = walk(server, page_size=10, start_page=start)
        assert await paginator.to_list() == []
        assert paginator.stats.unverified == 0
    # A resume on a short last page: its length is taken as the size served (5, not 10), so
    # the totals (25 records, no page count) seem to promise page 4, which is empty.
    for totals in ("records", "both"):
        paginator = walk(FakeServer(25, totals=totals), page_size=10, start_page=3)
        assert await paginator.to_list() == list(range(21, 26))
        assert paginator.stats.unverified == 0


# -- shapes and endings ---------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_pages_against_the_order_asked_raise_instead_of_dropping_their_records(
    concurrency: int,
) -> None:
    # A service that ignores sord=desc serves 1..10, 11..20: each record after the first was
    # taken for a repeat of one already yielded (descending, a record must come below the
    # last), so a walk of 30 customers yielded 3, with only stats.duplicates to tell.
    server = FakeServer(30)
    paginator = AsyncPaginator(
        server.fetch, key=int, dedupe="descending", page_size=10, concurrency=concurrency
    )
    with pytest.raises(ResponseDecodeError, match=r"^page 1 is not in the order asked"):
        await paginator.to_list()
    assert not other_tasks()


async def test_a_page_repeating_the_previous_one_raises_instead_of_looping() -> None:
    server = FakeServer(50, totals="none", ignore_page_number=True)
    paginator = walk(server, page_size=10, concurrency=3)
    with pytest.raises(ResponseDecodeError, match="repeats page 1"):
        await paginator.to_list()
    # Page 1, then no more than the read-ahead window (2 x concurrency) before the repeat is
    # seen: each reader asks for its next page as soon as it has read one.
    assert len(server.requests) <= 1 + 2 * 3
    assert not other_tasks()


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_has_next_shape_ends_on_has_next_false(concurrency: int) -> None:
    # meta.hasNext says when to stop, even when the pages are full.
    server = FakeServer(30, totals="has_next")
    paginator = walk(server, page_size=10, concurrency=concurrency)
    pages = [p async for p in paginator.pages()]
    assert [p.has_next for p in pages] == [True, True, False]
    assert sum(map(len, (p.items for p in pages)), 0) == 30
    # Page 1 comes alone and tells how many there are: no page past the last is requested.
    assert sorted(server.requests) == [1, 2, 3]


async def test_has_next_true_beyond_the_totals_keeps_walking() -> None:
    class Lying(FakeServer):
        def page(self, number: int, size: int) -> RawPage[int]:
            p = super().page(number, size)
            return RawPage(p.items, p.has_next, 10, 1)  # totals say one page; hasNext wins

    server = Lying(25, totals="has_next")
    assert await walk(server, page_size=10).to_list() == list(range(1, 26))


@pytest.mark.parametrize("totals", TOTALS)
async def test_server_cap_does_not_end_the_walk(totals: Totals) -> None:
    """Asking 200 a page from a service that serves 100 still gets everyone."""
    server = FakeServer(450, cap=100, totals=totals)
    got = await walk(server, page_size=200, concurrency=4).to_list()
    assert got == server.ids


@pytest.mark.parametrize("n", [0, 1, 9, 10, 11, 95, 100])
@pytest.mark.parametrize("concurrency", [1, 2, 4, 8])
async def test_speculative_walk_wastes_at_most_concurrency_minus_one_requests(
    n: int, concurrency: int
) -> None:
    """Without totals the walk ends on a short or empty page, and fetches ahead until then.

    A short first page is ambiguous (the end, or the service capping the page size): the walk
    reads the next page to tell, so a walk of one short page costs two requests.
    """
    server = FakeServer(n, totals="none")
    assert await walk(server, page_size=10, concurrency=concurrency).to_list() == server.ids
    needed = n // 10 + 1  # the short (or empty) page that ends the walk
    if 0 < n < 10:
        needed = 2
    assert sorted(server.requests) == list(range(1, len(server.requests) + 1))
    assert needed <= len(server.requests) <= needed + concurrency - 1


@pytest.mark.parametrize("concurrency", [1, 4, 8])
async def test_known_totals_schedule_no_page_past_the_end(concurrency: int) -> None:
    server = FakeServer(195, totals="both")
    assert await walk(server, page_size=10, concurrency=concurrency).to_list() == server.ids
    assert sorted(server.requests) == list(range(1, 21))


@pytest.mark.parametrize("totals", ["both", "records", "pages", "has_next"])
@pytest.mark.parametrize("concurrency", [2, 8, 64])
async def test_no_page_past_the_known_last_is_requested(totals: Totals, concurrency: int) -> None:
    """A 5-page list at any concurrency costs 5 requests: page 1 alone tells the totals."""
    server = FakeServer(45, totals=totals, latency=0.001)
    assert await walk(server, page_size=10, concurrency=concurrency).to_list() == server.ids
    assert sorted(server.requests) == [1, 2, 3, 4, 5]


async def test_max_items_fetches_only_the_pages_it_needs() -> None:
    server = FakeServer(1000, totals="both")
    got = await walk(server, page_size=10, concurrency=8, max_items=25).to_list()
    assert got == list(range(1, 26))
    assert sorted(server.requests) == [1, 2, 3]


@pytest.mark.parametrize(("max_items", "checkpoint"), [(20, 3), (25, 3), (30, 4)])
async def test_max_items_leaves_the_checkpoint_on_the_first_page_not_all_taken(
    max_items: int, checkpoint: int
) -> None:
    # A walk whose max_items ends on a page boundary took every record of its last page: a
    # later walk from its checkpoint (start_page alone, no resume_after) reads on from the next
    # page, no record twice; only a page max_items cut short is read again.
    server = FakeServer(100, totals="both")
    first = AsyncPaginator(server.fetch, page_size=10, max_items=max_items)
    got = await first.to_list()
    assert first.checkpoint == checkpoint
    rest = AsyncPaginator(server.fetch, page_size=10, start_page=first.checkpoint)
    again = await rest.to_list()
    assert len(got) == max_items
    assert got + again[max_items % 10 :] == server.ids
    assert not set(got) & set(again[max_items % 10 :])


@pytest.mark.parametrize("concurrency", [1, 3, 8])
async def test_concurrency_bounds_requests_in_flight(concurrency: int) -> None:
    server = FakeServer(500, totals="none", latency=0.001)
    assert await walk(server, page_size=10, concurrency=concurrency).to_list() == server.ids
    assert server.max_in_flight == concurrency


async def test_stats_count_pages_items_duplicates_and_retries() -> None:
    async def fetch(number: int, size: int) -> RawPage[int]:
        rows = {1: [1, 2, 3], 2: [3, 4, 5], 3: [6]}[number]  # 3 shifted onto page 2
        tally = RETRY_TALLY.get()
        assert tally is not None
        tally.retries += 1  # one retry each, counted as the client's retry loop counts it
        return RawPage(rows, number < 3, None, None)

    paginator = AsyncPaginator(fetch, page_size=3, key=int, dedupe="ascending")
    assert await paginator.to_list() == [1, 2, 3, 4, 5, 6]
    stats = paginator.stats
    assert (stats.pages, stats.items, stats.duplicates, stats.retries) == (3, 6, 1, 3)


@pytest.mark.parametrize(
    ("dedupe", "rows", "expected"),
    [
        ("descending", [[9, 8, 7], [7, 6, 5], [4]], [9, 8, 7, 6, 5, 4]),
        ("set", [["b", "a", "c"], ["c", "d", "a"], ["e"]], ["b", "a", "c", "d", "e"]),
        ("none", [[1, 2, 3], [3, 4, 5], [6]], [1, 2, 3, 3, 4, 5, 6]),
    ],
)
async def test_dedupe_modes(dedupe: Any, rows: list[list[Any]], expected: list[Any]) -> None:
    async def fetch(number: int, size: int) -> RawPage[Any]:
        return RawPage(rows[number - 1], number < len(rows))

    key = (lambda x: x) if dedupe != "none" else None
    paginator = AsyncPaginator(fetch, page_size=3, key=key, dedupe=dedupe)
    assert await paginator.to_list() == expected


class _Key:
    """A record that is its own key, counted alive by the garbage collector."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and other.n == self.n


@pytest.mark.parametrize("how", ["to_list", "async for"])
async def test_a_failed_walks_error_kept_holds_none_of_the_keys_it_saw(how: str) -> None:
    # A walk that tells repeats by a set (sorted by another field than the id) keeps every key
    # it yielded. Its error, kept (a list of failures, an error tracker), held them all through
    # its traceback's frames: 1.2 MB for 19,400 customers walked by name, for as long as kept.
    async def fetch(number: int, size: int) -> RawPage[_Key]:
        if number == 20:
            raise DMHubError("page 20 failed")
        return RawPage([_Key(n) for n in range((number - 1) * size, number * size)], True)

    async def walk_by_set() -> None:
        paginator = AsyncPaginator(fetch, page_size=50, key=lambda key: key, dedupe="set")
        if how == "to_list":
            await paginator.to_list()
        else:
            async for _ in paginator:
                pass

    kept: list[BaseException] = []
    try:
        await walk_by_set()
    except DMHubError as err:
        kept.append(err)
    gc.collect()
    assert len(kept) == 1
    # Of the 950 yielded, those the plan compares a page with (the first and the last of each
    # recent page, for a repair's steps back) are still held, not the walk's every key.
    assert sum(isinstance(o, _Key) for o in gc.get_objects()) < 100


class GatedServer:
    """Pages of ``size`` ids whose answers wait for the test: page 1 at once, each other page
    until its gate opens; ``log`` says when each request went out and each answer came."""

    def __init__(self, pages: int, size: int = 10) -> None:
        self.pages = pages
        self.size = size
        self.log: list[tuple[str, int]] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.requested: dict[int, asyncio.Event] = {}

    def gate(self, number: int) -> asyncio.Event:
        return self.gates.setdefault(number, asyncio.Event())

    def sent(self, number: int) -> asyncio.Event:
        return self.requested.setdefault(number, asyncio.Event())

    async def fetch(self, number: int, size: int) -> RawPage[int]:
        self.log.append(("sent", number))
        self.sent(number).set()
        if number > 1:
            await self.gate(number).wait()
        self.log.append(("read", number))  # as a page is decoded: in the step it came in
        start = (number - 1) * self.size
        return RawPage(list(range(start + 1, start + self.size + 1)), None, None, self.pages)


def tens(number: int) -> RawPage[int]:
    """Page ``number`` of 9 pages of ten ids."""
    return RawPage(list(range(number * 10 - 9, number * 10 + 1)), None, None, 9)


async def walk_into(got: list[int], fetch: Callable[[int, int], Awaitable[RawPage[int]]]) -> None:
    """Walk ``fetch``'s pages of ten, 4 at once, each id into ``got`` as it comes."""
    async for item in AsyncPaginator(fetch, page_size=10, concurrency=4):
        got.append(item)


async def test_a_page_read_ahead_sends_the_next_request_before_other_pages_are_read() -> None:
    # Four answers that come in together: each reader sends its next request in the step that
    # read its page, as a worker of N does, not after every other page has been decoded (a
    # task a page sent all four after the four reads: at 50 ms and 8 at once on two cores,
    # 1.06x the time of 8 aiohttp workers, benchmarks/bench_walk.py).
    server = GatedServer(pages=12)
    paginator = AsyncPaginator(server.fetch, page_size=10, concurrency=4)
    pages = paginator.pages()
    assert (await anext(pages)).number == 1
    waiting = asyncio.ensure_future(anext(pages))  # page 2: requests 2-5 go out
    await server.sent(5).wait()
    del server.log[:]
    for number in (2, 3, 4, 5):
        server.gate(number).set()
    assert (await waiting).number == 2
    assert server.log == [
        ("read", 2), ("sent", 6), ("read", 3), ("sent", 7),
        ("read", 4), ("sent", 8), ("read", 5), ("sent", 9),
    ]  # fmt: skip
    await pages.aclose()
    assert not other_tasks()


class Record:
    """A record a weak reference can follow (an int cannot)."""

    def __init__(self, number: int) -> None:
        self.number = number


async def test_a_reader_holds_no_page_it_has_handed_over_while_it_reads_the_next() -> None:
    # Regression (issue 15, twenty-ninth round): a reader kept the page it had read in a local
    # until its next page came, the consumer long done with it.
    server = GatedServer(pages=12)

    async def fetch(number: int, size: int) -> RawPage[Record]:
        raw = await server.fetch(number, size)
        return RawPage([Record(n) for n in raw.items], None, None, raw.total_pages)

    pages = AsyncPaginator(fetch, page_size=10, concurrency=4).pages()
    for number in (2, 3, 4, 5):
        server.gate(number).set()
    taken: dict[int, list[weakref.ref[Record]]] = {}
    for _ in range(5):
        page = await anext(pages)
        taken[page.number] = [weakref.ref(record) for record in page.items]
    del page
    waiting = asyncio.ensure_future(anext(pages))  # page 6: the consumer is done with 1 to 5
    for number in (6, 7, 8, 9):
        await server.sent(number).wait()  # each reader of 2 to 5 waits for its next page
    # A step of its own: this one began when page 2 came (pages 3 to 5 and requests 6 to 9
    # were ready by then), and the event loop holds the wake-up, page 2's future with it,
    # until the step ends.
    await asyncio.sleep(0)
    gc.collect()
    alive = {number for number, refs in taken.items() if any(ref() for ref in refs)}
    assert alive == {5}  # the page the consumer asked past: its walk's until page 6 comes
    for number in range(6, 13):
        server.gate(number).set()
    assert (await waiting).number == 6
    await pages.aclose()
    assert not other_tasks()


async def test_a_page_an_interrupting_error_ends_goes_to_the_consumer_in_its_turn() -> None:
    # Not an Exception (a KeyboardInterrupt's kind, hypothesis' StopTest): raised where the
    # consumer reaches its page, after the pages before it, as a task a page raised it.
    class Interrupt(BaseException):
        pass

    async def fetch(number: int, size: int) -> RawPage[int]:
        await asyncio.sleep(0)
        if number == 3:
            raise Interrupt
        return tens(number)

    got: list[int] = []
    with pytest.raises(Interrupt):
        await walk_into(got, fetch)
    assert got == list(range(1, 21))
    assert not other_tasks()


async def test_after_a_slow_page_as_many_pages_are_in_flight_as_the_concurrency() -> None:
    # Page 2 is slow: the other reader reads 3-5, the window's end (2 x 2 pages), and stops.
    # When 2 comes the consumer takes 2-5 in one step and asks for 6 and 7. The reader of 2,
    # done too, still counted until its task's callback ran after that step: only 6 went
    # out, the walk at half its concurrency until 6 came back.
    server = GatedServer(pages=40)
    paginator = AsyncPaginator(server.fetch, page_size=10, concurrency=2)
    got: list[int] = []

    async def consume() -> None:
        async for page in paginator.pages():
            got.append(page.number)

    consumer = asyncio.ensure_future(consume())
    for number in (3, 4, 5):
        server.gate(number).set()
    await server.sent(5).wait()
    for _ in range(5):
        await asyncio.sleep(0)
    assert got == [1]
    assert [n for event, n in server.log if event == "sent"] == [1, 2, 3, 4, 5]
    server.gate(2).set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert got == [1, 2, 3, 4, 5]
    assert [n for event, n in server.log if event == "sent"] == [1, 2, 3, 4, 5, 6, 7]
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    assert not other_tasks()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_a_ctrl_c_or_exit_in_a_page_read_ahead_stops_the_loop_at_once(
    stop: type[BaseException],
) -> None:
    # asyncio lets these two out of the task they are raised in, at once (a Ctrl-C while a
    # page read ahead is decoded, a sys.exit() in a hook): a task a page did. A reader kept it
    # for the consumer's turn, which here came three pages later (40 records, not 10), and
    # never came for a walk that ended before it (the page dropped, the Ctrl-C with it).
    page_2_may_come = asyncio.Event()

    async def fetch(number: int, size: int) -> RawPage[int]:
        await asyncio.sleep(0)
        if number == 2:
            await page_2_may_come.wait()
        if number == 5:
            page_2_may_come.set()  # the consumer would have it in the next turn
            raise stop
        return tens(number)

    got: list[int] = []
    errors: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        consumer = loop.create_task(walk_into(got, fetch))
        with pytest.raises(stop):
            loop.run_until_complete(consumer)
        assert got == list(range(1, 11))
        consumer.cancel()  # what asyncio.run() does next
        loop.run_until_complete(asyncio.wait([consumer]))
        assert consumer.cancelled()
        assert not asyncio.all_tasks(loop)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    gc.collect()
    assert errors == []


async def test_a_walk_closed_from_another_task_still_gives_the_page_its_consumer_waits_for() -> (
    None
):
    # The consumer is waiting for page 2 (read ahead) when another task closes the walk: the
    # pages further ahead are cancelled, page 2 arrives, and no CancelledError reaches a
    # consumer nobody cancelled.
    server = GatedServer(pages=12)
    paginator = AsyncPaginator(server.fetch, page_size=10, concurrency=4)
    pages = paginator.pages()
    assert (await anext(pages)).number == 1
    waiting = asyncio.ensure_future(anext(pages))
    await server.sent(5).wait()
    await paginator.aclose()
    assert ("read", 3) not in server.log
    server.gate(2).set()
    assert (await waiting).items == list(range(11, 21))
    await pages.aclose()
    assert not other_tasks()


# -- cancellation ---------------------------------------------------------------------------


async def test_a_consumer_cancelled_as_its_page_arrives_leaves_no_read_of_the_next_behind() -> None:
    # The reader of page 2 sets its result, asks for page 6 and, in that step, the consumer is
    # cancelled (its wake-up already due): the page is dropped with the walk, and page 6, now
    # that reader's page, is cancelled too, not left reading with nobody to take it.
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    server = GatedServer(pages=12)

    async def fetch(number: int, size: int) -> RawPage[int]:
        if number == 6:
            consumer.cancel()
        return await server.fetch(number, size)

    got: list[int] = []

    async def consume() -> None:
        async for page in AsyncPaginator(fetch, page_size=10, concurrency=4).pages():
            got.append(page.number)

    consumer = asyncio.ensure_future(consume())
    await server.sent(5).wait()
    server.gate(2).set()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert got == [1]
    assert ("sent", 6) in server.log
    assert not other_tasks()
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


async def test_the_retries_of_pages_dropped_mid_read_are_counted_by_the_walk_and_its_tally() -> (
    None
):
    # Each read counts a retry as it is sent (as the client does). Page 3's reader goes on to
    # page 6; then the walk is cancelled with 2, 4, 5 and 6 under way: their retries count in
    # the walk's stats and in the tally kept around it (an export's), as those of 1 and 3.
    server = GatedServer(pages=12)

    async def fetch(number: int, size: int) -> RawPage[int]:
        tally = RETRY_TALLY.get()
        assert tally is not None
        tally.retries += 1
        return await server.fetch(number, size)

    paginator = AsyncPaginator(fetch, page_size=10, concurrency=4)
    around = RetryTally()

    async def consume() -> None:
        RETRY_TALLY.set(around)
        async for _ in paginator.pages():
            pass

    consumer = asyncio.ensure_future(consume())
    await server.sent(5).wait()
    server.gate(3).set()
    await server.sent(6).wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert not other_tasks()
    assert (paginator.stats.pages, paginator.stats.retries, around.retries) == (1, 6, 6)


def test_the_records_are_handed_over_as_the_fixture_says(records_handed_over_by: str) -> None:
    # Else one of the two ways would go untested on this Python, whatever the fixture says.
    records = aiter(walk(FakeServer(3)))
    assert inspect.isasyncgen(records) == (records_handed_over_by == "generator")


@pytest.mark.parametrize("concurrency", [1, 4, 8])
async def test_break_leaves_no_task_behind(concurrency: int) -> None:
    server = FakeServer(1000, totals="both", latency=0.001)
    paginator = walk(server, concurrency=concurrency)
    async for item in paginator:
        if item == 25:
            break
    await settle()
    assert not other_tasks()
    assert paginator.checkpoint == 3
    if concurrency > 1:
        assert server.cancelled > 0  # the pages fetched ahead were cancelled, not awaited


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory: 3.12+")
@pytest.mark.parametrize("stop_at", [None, 25])
async def test_a_walk_under_an_eager_task_factory(stop_at: int | None) -> None:
    # An eager task runs its first step as it is made: a reader may read pages and move on, or
    # end, before the walk notes it. Every record once, in order, within the bounds, and
    # nothing left behind, a break too.
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
    try:
        for seed in range(8):
            # Some reads never suspend (no turn of the loop at all), every fifth page is slow.
            fast = tuple(n for n in range(1, 31) if n % 5)
            server = FakeServer(
                300, totals="both", rng=random.Random(seed), latency=0.05, fast_pages=fast
            )
            paginator = walk(server, concurrency=4)
            got = []
            async for item in paginator:
                got.append(item)
                if item == stop_at:
                    break
            await settle()
            assert got == server.ids[: stop_at or len(server.ids)]
            assert server.max_in_flight <= 4
            assert server.in_flight == 0
            assert not other_tasks()
            assert paginator._in_flight == 0  # no place in the pool lost or counted twice
    finally:
        loop.set_task_factory(None)


async def test_aclose_cancels_pages_in_flight_at_once() -> None:
    server = FakeServer(1000, totals="both", latency=0.05, fast_pages=(1, 2))
    paginator = walk(server, concurrency=8)
    async for page in paginator.pages():
        if page.number == 2:
            break
    # Page 1 came alone; then 2-9 were requested (and 10 as soon as 2 came back).
    in_flight = server.in_flight
    assert in_flight >= 7
    await paginator.aclose()
    assert server.in_flight == 0
    assert server.cancelled == in_flight  # cancelled, not awaited (50 ms each)


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_aclose_from_another_task_ends_the_walk_with_an_error(concurrency: int) -> None:
    """README: ``aclose()`` ends a walk. From another task it stopped only the pages read
    ahead: the consumer went on to the end a page at a time, the cancelled pages requested
    again. Ending quietly would pass for a complete walk; the consumer gets the page it waits
    for, then the error a closed client's calls get (DMHubError)."""
    server = GatedServer(pages=100)
    server.gate(2).set()
    paginator = AsyncPaginator(server.fetch, page_size=10, concurrency=concurrency)
    got: list[int] = []

    async def consume() -> None:
        async for item in paginator:
            got.append(item)

    consumer = asyncio.create_task(consume())
    await server.sent(3).wait()  # the consumer waits for page 3
    await paginator.aclose()
    sent = [entry for entry in server.log if entry[0] == "sent"]
    server.gate(3).set()
    with pytest.raises(DMHubError, match="closed") as caught:
        await asyncio.wait_for(consumer, 10)
    assert not isinstance(caught.value, InvalidRequestError)
    assert got == list(range(1, 31))  # pages 1 to 3: nothing past the page it waited for
    assert [entry for entry in server.log if entry[0] == "sent"] == sent  # no page asked since
    assert paginator.checkpoint == 4  # where a new walk reads on
    assert repr(paginator).startswith("<AsyncPaginator ended")
    assert not other_tasks()


async def test_aclose_before_the_walk_ends_it_before_any_request() -> None:
    # to_list() after aclose() walked every page, one at a time.
    server = FakeServer(100, totals="both")
    paginator = walk(server, concurrency=8)
    await paginator.aclose()
    with pytest.raises(DMHubError, match="closed"):
        await paginator.to_list()
    assert server.requests == []


async def test_max_items_leaves_no_task_behind() -> None:
    server = FakeServer(1000, totals="none", latency=0.001)
    got = await walk(server, concurrency=8, max_items=35).to_list()
    assert got == list(range(1, 36))
    assert not other_tasks()
    assert server.in_flight == 0


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_an_error_from_one_page_cancels_the_others(concurrency: int) -> None:
    server = FakeServer(1000, totals="both", latency=0.001, fail_page=3)
    got: list[int] = []

    async def consume() -> None:
        async for item in walk(server, concurrency=concurrency):
            got.append(item)

    with pytest.raises(RuntimeError, match="page 3 failed"):
        await consume()
    assert got == list(range(1, 21))
    assert not other_tasks()
    assert server.in_flight == 0


async def test_cancelling_the_consumer_cancels_the_fetches() -> None:
    server = FakeServer(1000, totals="both", latency=0.01)

    async def consume() -> None:
        async for _ in walk(server, concurrency=8):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.025)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert not other_tasks()
    assert server.in_flight == 0


# -- bad values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"page_size": 0},
        {"page_size": -5},
        {"page_size": 2.5},
        {"page_size": True},
        {"concurrency": 0},
        {"concurrency": 65},
        {"concurrency": 10**9},
        {"start_page": 0},
        {"max_items": -1},
        {"max_items": "10"},
    ],
)
def test_bad_paging_values_are_refused_before_any_request(kwargs: dict[str, Any]) -> None:
    server = FakeServer(10)
    with pytest.raises(InvalidRequestError):
        walk(server, **kwargs)
    assert server.requests == []


async def test_a_paginator_walks_once() -> None:
    server = FakeServer(5)
    paginator = walk(server)
    assert await paginator.to_list() == [1, 2, 3, 4, 5]
    with pytest.raises(InvalidRequestError, match="walks once"):
        await paginator.to_list()


@pytest.mark.parametrize("walk_of", ["list_rows", "statistics", "a long id_list"])
async def test_a_paginator_walked_again_names_no_call_the_caller_did_not_make(walk_of: str) -> None:
    # It said "call list() again" to a caller of list_rows() or of the statistics' list().
    async with (
        DMHubSimulator(customers=3, seed=3) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        paginator: Any = {
            "list_rows": lambda: dm.customers.list_rows(),
            "statistics": lambda: dm.customer_statistics.list(),
            "a long id_list": lambda: dm.customers.list_rows(id_list=range(1, 3000)),
        }[walk_of]()
        await paginator.to_list()
        with pytest.raises(InvalidRequestError) as caught:
            await paginator.to_list()
    assert str(caught.value) == (
        "a paginator walks once: call the method that made it again for a new walk"
    )


async def test_pages_held_while_one_is_slow_are_up_to_twice_the_concurrency() -> None:
    # The README said an export holds at most `concurrency` pages; while one page is slow the
    # other workers go on reading, and up to 2 * concurrency pages (read, and waiting for it)
    # are held: the memory a user sizes must count them.
    concurrency, slow = 2, 2
    server = FakeServer(1000, totals="both", latency=0.05, fast_pages=(1, *range(3, 101)))
    paginator = walk(server, concurrency=concurrency)
    pages = paginator.pages()
    assert (await pages.__anext__()).number == 1
    waiting = asyncio.ensure_future(pages.__anext__())  # for page 2, the slow one
    for _ in range(100):  # the loop turns the other worker needs to read all it may
        await asyncio.sleep(0)
    held = [n for n in server.requests if n > slow]  # answered: only page 2 is out
    assert not waiting.done()
    assert server.in_flight == 1
    assert concurrency < len(held) <= 2 * concurrency, server.requests
    waiting.cancel()
    await paginator.aclose()


@pytest.mark.parametrize("concurrency", [0, 65, 1.5, True])
async def test_a_bad_concurrency_is_refused_in_one_wording_wherever_it_is_given(
    concurrency: Any, tmp_path: Any
) -> None:
    # Three wordings: a walk said "must be an int >= 1" or "must be at most 64 ...", a lookup
    # "must be an int from 1 to 64", a worker "must be an int" or "must be <= 64". One now.
    from dmhub_async.export import export_customers
    from dmhub_async.shards._queue import worker

    said = f"concurrency must be an int from 1 to 64, not {concurrency!r}"

    async def drained(walk: Any) -> None:
        async for _ in walk:
            pass

    async with DMHubClient("app", "s3cret", base_url="http://127.0.0.1:9") as dm:
        calls = {
            "list": lambda: drained(dm.customers.list(concurrency=concurrency)),
            "list_rows": lambda: drained(dm.customers.list_rows(concurrency=concurrency)),
            "statistics": lambda: drained(dm.customer_statistics.list(concurrency=concurrency)),
            "lookup_many": lambda: dm.identities.lookup_many([], concurrency=concurrency),
            "lookup_iter": lambda: drained(dm.identities.lookup_iter([], concurrency=concurrency)),
            "export": lambda: export_customers(dm, tmp_path / "out.jsonl", concurrency=concurrency),
        }
        for name, call in calls.items():
            with pytest.raises(InvalidRequestError) as caught:
                await call()
            assert str(caught.value).endswith(said), name
        assert dm.stats.requests == 0
    with pytest.raises(InvalidRequestError) as caught:
        worker("redis://127.0.0.1:1/0", concurrency=concurrency)
    assert str(caught.value) == f"worker(): {said}"


async def test_a_paginator_shows_where_its_walk_is_in_its_repr() -> None:
    # repr() of a walk (a debugger, a log line) was "<...AsyncPaginator object at 0x...>".
    async with (
        DMHubSimulator(customers=250, app_id="repr-app", secret="repr-secret-x") as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        walk = dm.customers.list(page_size=100, concurrency=2, mobile="13800138000")
        assert repr(walk) == (
            "<AsyncPaginator not started: page_size=100, concurrency=2, checkpoint=1, "
            "pages=0, items=0>"
        )
        pages = walk.pages()
        await pages.__anext__()
        assert repr(walk).startswith("<AsyncPaginator walking: page_size=100, concurrency=2")
        await pages.aclose()
        everyone = dm.customers.list(page_size=100)
        assert len(await everyone.to_list()) == 250
        assert repr(everyone) == (
            "<AsyncPaginator ended: page_size=100, concurrency=1, checkpoint=4, pages=3, items=250>"
        )
        # A long id list is walked in batches, as one paginator: it shows as one too.
        batched = dm.customers.list(id_list=sim.customer_ids() + list(range(1, 3000)))
        assert repr(batched).startswith("<AsyncPaginator not started: page_size=100")
        assert len(await batched.to_list()) == 250
        assert repr(batched).startswith("<AsyncPaginator ended: page_size=100")
        shown = repr(walk) + repr(everyone) + repr(batched)
        assert "0x" not in shown
        assert "repr-secret-x" not in shown
        assert "13800138000" not in shown
