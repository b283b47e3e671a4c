"""The walk's decisions on plain lists: no event loop, no server.

A test plays the service with a function from page number to ``RawPage`` and drives a
``WalkPlan`` the way ``AsyncPaginator`` does, one read at a time; it sees which pages the plan
asks for and which records it yields.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from dmhub_async import ResponseDecodeError
from dmhub_async._pagination_plan import (
    MAX_READS_WITHOUT_PROGRESS,
    MAX_STEPS_BACK,
    RawPage,
    WalkPlan,
)
from dmhub_async._seen_records import Dedupe, SeenRecords

Serve = Callable[[int], RawPage[int]]


def plan_for(
    page_size: int = 10, dedupe: Dedupe = "ascending", resume_after: Any = None, **kw: Any
) -> WalkPlan[int]:
    return WalkPlan(SeenRecords(int, dedupe, resume_after), page_size=page_size, **kw)


def drive(plan: WalkPlan[int], serve: Serve, limit: int = 500) -> tuple[list[int], list[int]]:
    """The records the plan yields and the pages it read, reading one page at a time."""
    got: list[int] = []
    reads: list[int] = []
    for _ in range(limit):
        if plan.finished:
            return got, reads
        number = plan.next_page
        raw = serve(number)
        reads.append(number)
        for page in plan.take(number, raw, plan.note_read(number, raw)):
            got.extend(page.items)
    raise AssertionError(f"no end after {limit} reads")


def pages_of(ids: list[int], size: int = 10, *, totals: bool = True) -> Serve:
    """Serve ``ids`` (read when asked: a test may change the list) ``size`` a page."""

    def serve(number: int) -> RawPage[int]:
        items = ids[(number - 1) * size : number * size]
        if not totals:
            return RawPage(items)
        return RawPage(items, None, len(ids), -(-len(ids) // size))

    return serve


# -- repeats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dedupe", "pages", "fresh", "repeats"),
    [
        ("ascending", [[1, 2, 3], [3, 4, 5], [5, 6]], [[1, 2, 3], [4, 5], [6]], 2),
        ("descending", [[9, 8, 7], [7, 6], [6, 5]], [[9, 8, 7], [6], [5]], 2),
        ("set", [[2, 1, 3], [3, 5, 1], [4]], [[2, 1, 3], [5], [4]], 2),
        ("none", [[1, 2], [2, 3]], [[1, 2], [2, 3]], 0),
    ],
)
def test_seen_records_drop_what_was_yielded(
    dedupe: Dedupe, pages: list[list[int]], fresh: list[list[int]], repeats: int
) -> None:
    seen = SeenRecords(int, dedupe)
    results = [seen.fresh(page) for page in pages]
    assert [items for items, _ in results] == fresh
    assert sum(dropped for _, dropped in results) == repeats


def test_resume_after_drops_what_a_previous_walk_yielded() -> None:
    # Dropped, and not counted as repeats: the previous walk's records, read again by the
    # resume's check of the page before its start, were never served twice. 14 is.
    seen = SeenRecords(int, "ascending", resume_after=12)
    assert seen.fresh([10, 11, 12, 13, 14, 14]) == ([13, 14], 1)


def test_a_page_served_twice_is_refused() -> None:
    plan = plan_for()
    with pytest.raises(ResponseDecodeError, match="page 2 repeats page 1"):
        drive(plan, lambda number: RawPage(list(range(1, 11)), None, 50, 5))


# -- the last page ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serve", "reads"),
    [
        # totals: 25 records are 3 pages of 10
        (pages_of(list(range(1, 26))), [1, 2, 3]),
        # hasNext says stop on page 2, though the pages are full and the totals say more
        (lambda n: RawPage(list(range(n * 10 - 9, n * 10 + 1)), n < 2, 1000, 100), [1, 2]),
        # no totals: the short page 3 ends the walk
        (pages_of(list(range(1, 26)), totals=False), [1, 2, 3]),
        # no totals and a short first page: the end, or the service's cap? page 2 tells
        (pages_of(list(range(1, 8)), totals=False), [1, 2]),
        # an empty page ends any walk
        (lambda n: RawPage([], None, 1000, 100), [1]),
    ],
)
def test_the_walk_ends_where_the_service_says(serve: Serve, reads: list[int]) -> None:
    got, read = drive(plan_for(), serve)
    assert read == reads
    assert got == sorted(set(got))


def test_a_capped_page_size_is_learned_from_the_first_page() -> None:
    """Asked 20 a page, the service serves 10: 45 records are 5 pages, not 3."""
    ids = list(range(1, 46))
    got, reads = drive(plan_for(page_size=20), pages_of(ids, size=10))
    assert (got, reads) == (ids, [1, 2, 3, 4, 5])


def test_max_items_truncates_and_ends() -> None:
    got, reads = drive(plan_for(max_items=15), pages_of(list(range(1, 101))))
    assert (got, reads) == (list(range(1, 16)), [1, 2])


# -- how far ahead to read -------------------------------------------------------------------


def test_read_ahead_waits_for_the_start_page_then_stops_at_the_known_last() -> None:
    plan = plan_for()
    serve = pages_of(list(range(1, 46)))  # 5 pages
    assert plan.last_page_to_request(16) == 1  # the start page tells the totals: alone
    plan.note_read(1, serve(1))
    assert plan.last_page_to_request(16) == 5  # known from page 1's totals, before it is taken
    plan.take(1, serve(1), 0)
    assert plan.last_page_to_request(2) == 3  # the window
    assert plan.last_page_to_request(16) == 5


def test_read_ahead_stops_at_a_short_page_read_out_of_order() -> None:
    plan = plan_for()
    serve = pages_of(list(range(1, 46)), totals=False)
    plan.note_read(1, serve(1))
    assert plan.last_page_to_request(16) == 16  # no totals: the window
    plan.note_read(5, serve(5))
    assert plan.last_page_to_request(16) == 5  # page 5 is short: the last


def test_read_ahead_asks_no_more_pages_than_max_items_can_use() -> None:
    plan = plan_for(max_items=25)
    serve = pages_of(list(range(1, 1001)))
    plan.take(1, serve(1), plan.note_read(1, serve(1)))
    assert plan.last_page_to_request(16) == 3  # 15 more records: pages 2 and 3


@pytest.mark.parametrize("inserted", [1, 3])
def test_records_met_again_as_many_as_signed_up_behind_leave_the_walk_verified(
    inserted: int,
) -> None:
    # Sorted by a field other than the id (set mode), customers signed up behind the cursor
    # shift the rest forward: the next page meets as many records again as the count grew by.
    # The inserts explain every repeat, so no record can have slipped past: the walk is not
    # flagged unverified (an export so flagged runs its final check, a walk of every id).
    ids = list(range(1, 31))
    serve = pages_of(ids)
    served: list[int] = []

    def inserting(number: int) -> RawPage[int]:
        served.append(number)
        if len(served) == 2:
            ids[:0] = range(100, 100 + inserted)
        return serve(number)

    plan = plan_for(dedupe="set")
    got, _ = drive(plan, inserting)
    assert got == list(range(1, 31))
    assert (plan.stats.duplicates, plan.stats.unverified) == (inserted, 0)


# -- drift -----------------------------------------------------------------------------------


def test_a_delete_behind_the_cursor_steps_back_one_page() -> None:
    ids = list(range(1, 31))
    serve = pages_of(ids)
    served: list[int] = []

    def deleting(number: int) -> RawPage[int]:
        served.append(number)
        if len(served) == 2:
            del ids[:3]  # 11, 12, 13 move onto page 1, already read
        return serve(number)

    plan = plan_for()
    got, reads = drive(plan, deleting)
    assert got == list(range(1, 31))
    # Page 2 no longer reaches back to page 1's last id: page 1 again, which does, then on;
    # page 2 was read after the delete (the same count as page 1's re-read): not read again.
    assert reads == [1, 2, 1, 3]
    assert (plan.stats.refetches, plan.stats.unverified) == (1, 0)


def test_a_delete_of_more_than_a_page_steps_back_further() -> None:
    ids = list(range(1, 61))
    serve = pages_of(ids)
    served: list[int] = []

    def deleting(number: int) -> RawPage[int]:
        served.append(number)
        if len(served) == 3:
            del ids[:15]  # 21-35 move back onto pages 1 and 2, already read
        return serve(number)

    got, reads = drive(plan_for(), deleting)
    assert got == list(range(1, 61))
    # Back to page 1, which reaches back; pages 2 and 3 as stepped over (read after the
    # delete, like page 1's re-read), then on.
    assert reads == [1, 2, 3, 2, 1, 4, 5]


def test_a_repair_out_of_steps_back_says_the_walk_may_be_short() -> None:
    # 350 customers (35 pages) deleted behind the cursor before page 40 is read: the repair
    # steps back MAX_STEPS_BACK pages, none reaching back to 390, the last yielded, and takes
    # the page it stopped on as it is. 391 to 420 shifted back past it, unread: the walk must
    # say it may be short (stats.unverified), not end as if whole.
    ids = list(range(1, 1001))
    serve = pages_of(ids)
    served: list[int] = []

    def deleting(number: int) -> RawPage[int]:
        served.append(number)
        if len(served) == 40:
            del ids[:350]
        return serve(number)

    plan = plan_for()
    got, reads = drive(plan, deleting)
    assert reads[39:41] == [40, 39]
    assert plan.stats.refetches >= MAX_STEPS_BACK
    assert set(range(391, 421)) - set(got)  # what the flag is for
    assert plan.stats.unverified == 1


def test_a_delete_then_an_insert_behind_the_cursor_during_a_repair_loses_nothing() -> None:
    # Page 3 read after a delete behind (120 slips back onto page 2), page 2 read again after
    # an insert behind (120 back on page 3): page 2 comes back as first taken, yet page 3 as
    # read before the insert lacks 120. It was taken all the same: 120 was never yielded.
    ids = list(range(100, 130))
    serve = pages_of(ids)
    served: list[int] = []

    def churn(number: int) -> RawPage[int]:
        served.append(number)
        if len(served) == 3:
            ids.remove(105)
        if len(served) == 4:
            ids.insert(0, 50)
        return serve(number)

    plan = plan_for()
    got, reads = drive(plan, churn)
    assert set(ids) - {50} <= set(got)
    assert reads == [1, 2, 3, 2, 3]
    assert plan.stats.unverified == 0


def test_a_page_read_ahead_before_an_insert_behind_the_cursor_is_read_again() -> None:
    # Reading ahead (concurrency 2), page 3 comes back before page 2, and a sign-up at the
    # front of a descending walk lands between the two reads: 111, last on page 2 before it,
    # is first on page 3 after it, in neither read. Page 2 read again comes back as taken,
    # which took page 3 as read before the insert: 111 was never yielded.
    ids = list(range(130, 100, -1))  # descending: 130 ... 101
    serve = pages_of(ids)
    plan = plan_for(dedupe="descending")
    got: list[int] = []

    def read_and_take(number: int) -> None:
        raw = serve(number)
        got.extend(
            i for page in plan.take(number, raw, plan.note_read(number, raw)) for i in page.items
        )

    read_and_take(1)
    page_3 = serve(3)
    early = plan.note_read(3, page_3)
    ids.insert(0, 131)  # a sign-up: the newest id, first in a descending walk
    read_and_take(2)
    got.extend(i for page in plan.take(3, page_3, early) for i in page.items)
    rest, _ = drive(plan, serve)
    assert set(range(101, 131)) <= set(got + rest)
    assert plan.stats.unverified == 0


def test_an_unchanged_count_takes_pages_as_they_come() -> None:
    # Page 2 starts past page 1's end (a record missing), but the count did not change: no
    # delete can have shifted anything (a gap in the ids is not a sign).
    serve: Serve = lambda n: RawPage([[1, 2], [5, 6], [7]][n - 1], None, 5, 3)  # noqa: E731
    got, reads = drive(plan_for(page_size=2), serve)
    assert (got, reads) == ([1, 2, 5, 6, 7], [1, 2, 3])


# -- pages that make no progress (issue 12 item 3) -------------------------------------------


def test_pages_in_a_cycle_stop_the_walk() -> None:
    """Page 3 serves page 1 again, page 4 page 2, and so on: A, B, A, B."""
    serve = pages_of(list(range(1, 21)))
    plan = plan_for()
    with pytest.raises(ResponseDecodeError, match="no new record"):
        drive(plan, lambda n: RawPage(serve(2 - n % 2).items, None, 1000, 100))
    # The first two pages were new; then a bounded run of repeats.
    assert plan.stats.pages == 2 + MAX_READS_WITHOUT_PROGRESS


def test_one_page_served_again_under_a_changing_count_stops_the_walk() -> None:
    """The count changes with every read, which defeats the repeat check by signature."""
    plan = plan_for()
    with pytest.raises(ResponseDecodeError, match="no new record"):
        drive(plan, lambda n: RawPage(list(range(1, 11)), None, 1000 + n, 200))
    assert plan.stats.pages <= 1 + MAX_READS_WITHOUT_PROGRESS


def test_pages_far_past_the_totals_stop_the_walk() -> None:
    """New records on every page, and hasNext true, while the totals say 5 pages."""
    plan = plan_for()
    with pytest.raises(ResponseDecodeError, match="far past the 5 pages"):
        drive(plan, lambda n: RawPage(list(range(n * 10 - 9, n * 10 + 1)), True, 50, 5))
    assert plan.stats.pages == 2 * 5 + MAX_READS_WITHOUT_PROGRESS + 1


@pytest.mark.parametrize("deleted", [0, 1, 35, 321, 4000, 5999])
@pytest.mark.parametrize("dedupe", ["ascending", "descending"])
def test_a_resumed_walk_finds_its_place_however_far_deletes_moved_it(
    deleted: int, dedupe: Dedupe
) -> None:
    """Stopped after 6,000 of 10,000 (page 601 next, 10 a page), resumed after ``deleted`` of
    the records it had yielded were deleted. It stepped back 32 pages at most, then went on
    unverified: past 320 deletes every record between its place and page 601 was skipped
    (3,600 of 4,000 at 4,000 deletes). It searches back now, however far: a page at a time,
    then galloping and bisecting; with nothing moved it reads one page more, as it did."""
    ids = list(range(1, 10_001)) if dedupe == "ascending" else list(range(10_000, 0, -1))
    kept = ids[:6000]
    gone = set(kept[:deleted])
    survivors = [i for i in ids if i not in gone]
    plan = plan_for(dedupe=dedupe, resume_after=kept[-1], start_page=601)
    got, reads = drive(plan, pages_of(survivors))
    assert got == ids[6000:]
    assert plan.stats.unverified == 0
    pages = 400  # of the records after the place: each read once
    shifted = -(-deleted // 10)
    if deleted == 0:
        assert reads[:3] == [601, 600, 601 + 1]  # one read more, and the rest in order
    search = len(reads) - pages  # the reads that found the place
    assert search <= 2 + 4 + 2 * math.log2(shifted + 1), reads[:40]


@pytest.mark.parametrize("first_size", [2, 50])
def test_a_walk_resumed_at_a_checkpoint_of_another_page_size_reads_everything_after(
    first_size: int,
) -> None:
    """A checkpoint counts pages of the walk's own size: resumed at another, page 51 of 20 a
    page (1,000 read) is page 51 of 100 (5,000 and after): 32 steps back fell short and 800
    records were skipped. Read at a smaller size, the place lies ahead: no record is lost
    there, each page before it is read and dropped."""
    ids = list(range(1, 10_001))
    kept = ids[: 50 * first_size]
    plan = plan_for(page_size=10, resume_after=kept[-1], start_page=51)
    got, _ = drive(plan, pages_of(ids), limit=2000)
    assert got == ids[len(kept) :]
    assert plan.stats.unverified == 0


def test_a_walk_resumed_from_an_early_page_is_progress() -> None:
    """``resume_after`` far ahead of ``start_page``: many pages of nothing new, none again."""
    ids = list(range(1, 1001))
    plan = plan_for(resume_after=900)
    got, reads = drive(plan, pages_of(ids))
    assert got == list(range(901, 1001))
    assert len(reads) == 100
