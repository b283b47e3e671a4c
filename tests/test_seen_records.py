"""SeenRecords.fresh keeps what the record-by-record rule keeps, and leaves the page read alone."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from dmhub_async._seen_records import SeenRecords


def by_rule(keys: list[int | None], last: int | None, ascending: bool) -> tuple[list[int], int]:
    """The rule, record by record: a record is fresh when it has no key or comes after the last
    fresh one; returns the indexes of the fresh records and the last key yielded."""
    fresh = []
    for i, k in enumerate(keys):
        if k is None:
            fresh.append(i)
        elif last is None or (k > last if ascending else k < last):
            fresh.append(i)
            last = k
    return fresh, last  # type: ignore[return-value]


@given(
    keys=st.lists(st.one_of(st.none(), st.integers(-5, 40)), max_size=30),
    last=st.one_of(st.none(), st.integers(-5, 40)),
    ascending=st.booleans(),
)
@example(keys=[1, 2, 3], last=None, ascending=True)  # the common page: all fresh
@example(keys=[3, 2, 1], last=4, ascending=False)
@example(keys=[1, 2, 2, 3], last=None, ascending=True)  # a repeat inside the page
@example(keys=[2, 3], last=2, ascending=True)  # the first record yielded already
@example(keys=[1, 3, 3], last=2, ascending=True)  # one the earlier walk's, one a repeat
@example(keys=[1, None, 2], last=0, ascending=True)  # a record without a key
@example(keys=[], last=5, ascending=True)
def test_fresh_keeps_what_the_rule_keeps(
    keys: list[int | None], last: int | None, ascending: bool
) -> None:
    items = [{"id": k, "n": i} for i, k in enumerate(keys)]
    seen: SeenRecords[dict[str, Any]] = SeenRecords(
        lambda row: row["id"], "ascending" if ascending else "descending", resume_after=last
    )

    fresh, repeats = seen.fresh(items)

    expected, expected_last = by_rule(keys, last, ascending)
    assert [row["n"] for row in fresh] == expected
    # A record at or before where the earlier walk stopped is that walk's, read again by a
    # resume's check of the page before its start: not a repeat of the service's (a resumed
    # export reported a page of duplicates where the service repeated nothing).
    before_the_mark = [
        k
        for k in keys
        if k is not None and last is not None and (k <= last if ascending else k >= last)
    ]
    assert repeats == len(keys) - len(expected) - len(before_the_mark)
    assert seen.last_key == expected_last
    fresh.clear()
    assert len(items) == len(keys)  # the walk may cut what it got: never the page it read


@given(
    keys=st.lists(st.one_of(st.none(), st.integers(-5, 40)), max_size=30),
    last=st.one_of(st.none(), st.integers(-5, 40)),
    ascending=st.booleans(),
)
@example(keys=[1, 2, 3], last=None, ascending=True)
@example(keys=[1, 2, 2, 3], last=0, ascending=True)
def test_fresh_given_the_keys_keeps_what_it_keeps_by_the_key_function(
    keys: list[int | None], last: int | None, ascending: bool
) -> None:
    # list_rows() hands the walk the ids its reader read (RawPage.keys): the same records.
    items = [{"id": k, "n": i} for i, k in enumerate(keys)]
    dedupe = "ascending" if ascending else "descending"
    by_key: SeenRecords[dict[str, Any]] = SeenRecords(lambda row: row["id"], dedupe, last)
    given_keys: SeenRecords[dict[str, Any]] = SeenRecords(lambda row: row["id"], dedupe, last)

    assert given_keys.fresh(items, list(keys)) == by_key.fresh(items)
    assert given_keys.last_key == by_key.last_key


def test_a_record_without_a_key_is_never_a_repeat_in_set_mode_either() -> None:
    # The set kept None once, and every later record without a key was dropped as a repeat:
    # statistics sorted by a score, from a service that left "id" out, gave 1 record of 7.
    seen: SeenRecords[dict[str, Any]] = SeenRecords(lambda row: row.get("id"), "set")
    page = [{"n": 1}, {"id": 5, "n": 2}, {"n": 3}, {"id": 5, "n": 4}, {"id": None, "n": 5}]
    fresh, repeats = seen.fresh(page)
    assert [row["n"] for row in fresh] == [1, 2, 3, 5]
    assert repeats == 1
    fresh, repeats = seen.fresh([{"n": 6}, {"id": 5, "n": 7}])
    assert [row["n"] for row in fresh] == [6]
    assert repeats == 1


async def test_statistics_without_ids_sorted_by_a_score_all_come_through(
    api: Any, tokens: Any, make_client: Any
) -> None:
    from _helpers import url

    items = [{"customerId": 100 + i, "totalScore": 10 - i} for i in range(7)]
    api.get(url("/v1/customerStatistics"), payload={"items": items, "meta": {"hasNext": False}})
    dm = make_client()
    got = await dm.customer_statistics.list(sort_by="total_score", page_size=10).to_list()
    assert [s.customer_id for s in got] == [100 + i for i in range(7)]
