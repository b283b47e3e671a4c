"""The simulator's filter index: the same customers as a check of every row, at any time."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from dmhub_async.testing._filter_index import SeededIndex
from dmhub_async.testing._filters import Filters, row_matches
from dmhub_async.testing._pools import SOURCES, STAGES
from dmhub_async.testing._seeded_rows import CREATED_EPOCH
from dmhub_async.testing._store import CustomerStore

HOUR = 3600


def brute_force(store: CustomerStore, f: Filters) -> list[int]:
    """Every live customer checked against the filters, one by one."""
    found = []
    for customer_id in store.ids():
        row = store.get(customer_id)
        assert row is not None
        if row_matches(row, f):
            found.append(customer_id)
    return found


FILTERS = [
    Filters(stage="lead"),
    Filters(stage="_empty"),
    Filters(stage="no-such-stage"),
    Filters(source=SOURCES[1]),
    Filters(gender=0),
    Filters(gender=2, stage="customer"),
    Filters(created_from=CREATED_EPOCH + 10 * HOUR, created_to=CREATED_EPOCH + 20 * HOUR),
    Filters(created_from=CREATED_EPOCH + 10 * HOUR, stage=STAGES[2]),
    Filters(created_to=CREATED_EPOCH + 5 * HOUR, gender=1),
    Filters(created_from=CREATED_EPOCH - HOUR, created_to=CREATED_EPOCH - 1),
    Filters(updated_from=CREATED_EPOCH + 30 * HOUR, source=SOURCES[0]),
]


def change_the_world(store: CustomerStore, step: int) -> None:
    """Edits, deletes, creations and new seeded rows: what the index must keep up with."""
    ids = store.ids()
    store.update(ids[step * 7], {"stage": "lead", "gender": 2}, clear=False)
    store.update(ids[step * 11 + 1], {"stage": None, "source": None}, clear=True)
    store.delete(ids[step * 13 + 2])
    store.create({"name": f"新客户{step}", "stage": "lead", "gender": 0})
    store.create({"name": f"插队{step}", "stage": "customer"}, customer_id=ids[0] - 1 - step)
    store.seed(25)


@pytest.mark.parametrize("f", FILTERS, ids=repr)
def test_an_indexed_query_finds_what_checking_every_row_finds(f: Filters) -> None:
    store = CustomerStore(5, lambda: CREATED_EPOCH + 40 * HOUR)
    store.seed(3000)
    for step in range(4):
        assert list(store.matching_ids(f)) == brute_force(store, f), f"after {step} changes"
        assert store.count(f) == len(brute_force(store, f))
        change_the_world(store, step)


def test_pages_of_a_filtered_walk_are_slices_of_one_answer() -> None:
    store = CustomerStore(1, time.time)
    store.seed(2000)
    f = Filters(stage="lead")
    everyone = brute_force(store, f)
    pages: list[Any] = []
    for offset in itertools.count(0, 100):
        records, rows = store.page(f, "id", False, offset, 100)
        assert records == len(everyone)
        if not rows:
            break
        pages.extend(row["id"] for row in rows)
    assert pages == everyone


def test_the_index_narrows_the_candidates_to_the_answer() -> None:
    # What makes a filtered page cheap: the rows looked at are the rows found, not everyone.
    store = CustomerStore(2, time.time)
    store.seed(5000)
    index = SeededIndex(store._ga, store._gb)
    for f in (Filters(stage="lead"), FILTERS[6], Filters(source=SOURCES[1])):
        candidates, exact = index.candidates(f)
        assert exact
        assert len(candidates) == store.count(f) < 5000
    candidates, exact = index.candidates(Filters(stage="lead", gender=1))
    assert not exact
    assert store.count(Filters(stage="lead", gender=1)) <= len(candidates) < 5000
