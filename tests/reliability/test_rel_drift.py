"""Scenario 10: offset drift. Customers inserted and deleted during a walk by page number.

Before each of 25 page requests (every one, or every other one), the simulator deletes the
12 customers with the lowest ids (behind the cursor of an ascending walk) and inserts 20 with
ids in random gaps (behind the cursor or ahead of it): 500 inserts and 300 deletes in all. A
delete behind the cursor shifts every later page back (a naive walk skips a customer); an
insert behind it shifts them forward (a naive walk repeats one). Early in the walk deletes
behind the cursor outnumber inserts there, later the other way round: both failures happen.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest
from aiohttp import web

from dmhub_async import DMHubClient
from dmhub_async.testing import DMHubSimulator

CUSTOMERS = 6000  # 60 pages: enough requests for the churn even when it skips every other
MUTATED_REQUESTS = 25
INSERTS_EACH, DELETES_EACH = 20, 12


class Churn:
    """Inserts and deletes before each of the first page requests; seeded."""

    def __init__(self, sim: DMHubSimulator, seed: int, every: int) -> None:
        self.sim = sim
        self.every = every
        self.mutations = 0
        self.rng = random.Random(seed)
        self.requests = 0
        self.inserted = 0
        self.deleted: set[int] = set()
        sim.on_request(self)

    def __call__(self, request: web.Request) -> None:
        if request.method != "GET" or request.path != "/v1/customers":
            return
        self.requests += 1
        if self.requests % self.every or self.mutations >= MUTATED_REQUESTS:
            return
        self.mutations += 1
        ids = self.sim.customer_ids()
        for customer_id in ids[:DELETES_EACH]:  # the lowest ids: behind an ascending cursor
            assert self.sim.delete_customer(customer_id)
            self.deleted.add(customer_id)
        ids = ids[DELETES_EACH:]
        taken = set(ids)
        gaps = [i + 1 for i in self.rng.sample(ids[:-1], 3 * INSERTS_EACH) if i + 1 not in taken]
        for customer_id in sorted(set(gaps))[:INSERTS_EACH]:  # anywhere: behind or ahead
            self.sim.insert_customer({"name": "插队客户", "stage": "lead"}, customer_id=customer_id)
            self.inserted += 1


def spaced_ids(sim: DMHubSimulator) -> None:
    """Delete every other seeded customer, so that there are gaps to insert into."""
    for customer_id in sim.customer_ids()[1::2]:
        sim.delete_customer(customer_id)


async def walk(
    connect: Callable[..., DMHubClient], naive: bool, concurrency: int, every: int
) -> tuple[list[int], set[int], Churn]:
    async with DMHubSimulator(customers=2 * CUSTOMERS, seed=10) as sim:
        spaced_ids(sim)
        before = set(sim.customer_ids())
        assert len(before) == CUSTOMERS
        churn = Churn(sim, seed=10, every=every)
        async with connect(sim) as dm:
            if naive:
                got = await naive_walk(dm)
            else:
                got = [c.id async for c in dm.customers.list(concurrency=concurrency)]
        assert (churn.inserted, len(churn.deleted)) == (
            INSERTS_EACH * churn.mutations,
            DELETES_EACH * churn.mutations,
        )
        survivors = before - churn.deleted  # existed from start to end
        return got, survivors, churn


async def naive_walk(dm: DMHubClient) -> list[int]:
    """Page 1, 2, 3 ... by id, until an empty page: no dedupe, no re-read, no totals check."""
    ids: list[int] = []
    page = 1
    while True:
        data = await dm.request(
            "GET", "/v1/customers", params={"rows": "100", "page": str(page), "sidx": "id"}
        )
        if not data["rows"]:
            return ids
        ids += [row["id"] for row in data["rows"]]
        page += 1


def problems(got: list[int], survivors: set[int]) -> tuple[int, int]:
    """(survivors missing, ids repeated)."""
    repeated = sum(n - 1 for n in Counter(got).values() if n > 1)
    return len(survivors - set(got)), repeated


@pytest.mark.parametrize(
    ("every", "concurrency"),
    [
        (1, 1),
        (1, 4),
        (1, 8),
        (2, 1),
        (2, 4),
        (2, 8),
    ],
)
async def test_scenario_10_walk_under_500_inserts_300_deletes(
    connect: Callable[..., DMHubClient], every: int, concurrency: int
) -> None:
    """Scenario 10: the churn before every page request (``every=1``) or every other one
    (``every=2``), 1, 4 or 8 pages fetched ahead: no customer that existed throughout is
    missing, none is repeated ((0, 0)), and ids ascend."""
    got, survivors, churn = await walk(connect, naive=False, concurrency=concurrency, every=every)
    assert churn.mutations == MUTATED_REQUESTS
    assert problems(got, survivors) == (0, 0)
    assert got == sorted(got)


async def test_scenario_10_a_naive_walk_fails_the_same_check(
    connect: Callable[..., DMHubClient],
) -> None:
    """Scenario 10, the control: the same churn under a plain page loop skips 57 customers that
    existed throughout and repeats 42."""
    got, survivors, churn = await walk(connect, naive=True, concurrency=1, every=1)
    assert churn.mutations == MUTATED_REQUESTS  # the churn happened during the walk
    assert problems(got, survivors) == (57, 42)
