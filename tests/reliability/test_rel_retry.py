"""Scenarios 2, 3 and 4: Retry-After, the backoff schedule and budget, writes whose answer is lost.

Faults come from the simulator's scripts; the waits are the ones the client asked the fake
clock for (``clock.waits``), in order.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from dmhub_async import (
    APIConnectionError,
    DMHubClient,
    Identity,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from dmhub_async.testing import DMHubSimulator

TRIALS = 40


@pytest.fixture
async def sim() -> AsyncIterator[DMHubSimulator]:
    async with DMHubSimulator(customers=50, seed=2) as simulator:
        yield simulator


def list_requests(sim: DMHubSimulator) -> int:
    return sim.counters.routes["GET /v1/customers/count"]


def jitter_cap(retry_after: float) -> float:
    """The most the client adds to a Retry-After, so that clients don't all come back at once."""
    return min(1.0, 0.1 * retry_after)


# -- scenario 2 ---------------------------------------------------------------------------------


async def test_scenario_2_retry_after_seconds_honoured_in_every_trial(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], clock: Any
) -> None:
    """Scenario 2: ``Retry-After: N`` gives a wait in ``[N, N + min(1, N/10)]``, 40 of 40 trials,
    with the client's real (random) jitter."""
    rng = random.Random(2)
    async with connect(sim) as dm:
        await dm.customers.count()  # the token, first
        for _ in range(TRIALS):
            retry_after = rng.randint(0, 60)
            sim.faults.retry_after = retry_after
            sim.faults.script(["429"])
            clock.waits.clear()
            assert await dm.customers.count() == 50
            [wait] = clock.waits
            assert retry_after <= wait <= retry_after + jitter_cap(retry_after)
    assert sim.counters.faults["429"] == TRIALS


async def test_scenario_2_retry_after_http_date_honoured_in_every_trial(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], clock: Any
) -> None:
    """Scenario 2: ``Retry-After`` as an HTTP date, 40 of 40 trials.

    The simulator writes the date from the real clock, to the second (RFC 9110 dates have no
    fractions), so this client reads the real clock too, and the wait may come out up to 1 s
    short of the delay the simulator meant: ``[N - 1, N + min(1, N/10)]``.
    """
    rng = random.Random(3)
    async with connect(sim, clock=time.time) as dm:
        await dm.customers.count()
        for _ in range(TRIALS):
            retry_after = rng.randint(2, 60)
            sim.faults.retry_after = retry_after
            sim.faults.script(["429-http-date"])
            clock.waits.clear()
            assert await dm.customers.count() == 50
            [wait] = clock.waits
            assert retry_after - 1 <= wait <= retry_after + jitter_cap(retry_after)
    assert sim.counters.faults["429-http-date"] == TRIALS


@pytest.mark.parametrize("kind", ["429", "429-http-date"])
async def test_scenario_2_retry_after_over_the_cap_is_one_request_and_an_error(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], clock: Any, kind: str
) -> None:
    """Scenario 2: a Retry-After above the cap (60 s): one request, no wait, and a
    ``RateLimitError`` whose ``retry_after`` says how long the service asked for."""
    async with connect(sim, clock=time.time) as dm:
        await dm.customers.count()
        before = list_requests(sim)
        sim.faults.retry_after = 600
        sim.faults.script([kind])
        with pytest.raises(RateLimitError) as caught:
            await dm.customers.count()
    assert list_requests(sim) - before == 1
    assert clock.waits == []
    assert caught.value.retry_after is not None
    assert 599 <= caught.value.retry_after <= 600
    assert caught.value.status == 429


# -- scenario 3 ---------------------------------------------------------------------------------


async def test_scenario_3_exact_schedule_with_jitter_stubbed(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], clock: Any
) -> None:
    """Scenario 3: with jitter stubbed to the ceiling, the waits are exactly 0.5, 1, 2, 4, 8, 8 s
    (doubling from 0.5, capped at 8), and max_retries + 1 attempts in all."""
    policy = RetryPolicy(max_retries=6, jitter=lambda ceiling: ceiling)
    async with connect(sim, retry=policy) as dm:
        await dm.customers.count()
        sim.faults.script(["503"] * 6)
        clock.waits.clear()
        assert await dm.customers.count() == 50
        assert clock.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]

        sim.faults.script(["503"] * 7)
        before = list_requests(sim)
        clock.waits.clear()
        with pytest.raises(ServerError):
            await dm.customers.count()
        assert clock.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
        assert list_requests(sim) - before == 7  # max_retries + 1
        assert dm.stats.retries == 12


async def test_scenario_3_every_jittered_wait_in_bounds(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], clock: Any
) -> None:
    """Scenario 3: with the real full jitter, retry n waits in ``[0, min(8, 0.5 * 2**(n-1))]``,
    in every one of 40 calls of 6 retries each; and the waits do vary."""
    async with connect(sim, max_retries=6) as dm:
        await dm.customers.count()
        waits: list[list[float]] = []
        for _ in range(TRIALS):
            sim.faults.script(["503", "500", "502", "504", "html", "reset"])
            clock.waits.clear()
            assert await dm.customers.count() == 50
            waits.append(list(clock.waits))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    for call in waits:
        assert len(call) == 6
        assert all(0 <= wait <= ceiling for wait, ceiling in zip(call, ceilings, strict=True))
    assert len({call[5] for call in waits}) == TRIALS  # jitter: no two calls wait alike


async def test_scenario_3_total_budget_per_call(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], clock: Any
) -> None:
    """Scenario 3: a 10 s budget per call, each attempt taking 3 s (on the fake clock): the call
    gives up before a wait would end past the budget: 3 attempts, 0.5 s and 1 s waits, 13.5 s
    in all (the budget plus the last attempt's own time), though 20 retries were allowed."""
    policy = RetryPolicy(max_retries=20, budget=10.0, jitter=lambda ceiling: ceiling)

    def slow(request: web.Request) -> None:
        if request.path.startswith("/v1/"):
            clock.advance(3.0)

    async with connect(sim, retry=policy) as dm:
        await dm.customers.count()
        sim.on_request(slow)
        sim.faults.rate, sim.faults.kinds = 1.0, ("503",)
        before, started = list_requests(sim), clock()
        with pytest.raises(ServerError):
            await dm.customers.count()
    assert list_requests(sim) - before == 3
    assert clock.waits[-2:] == [0.5, 1.0]
    assert clock() - started == pytest.approx(3 + 0.5 + 3 + 1 + 3)
    assert clock() - started <= policy.budget + 3.0


# -- scenario 4 ---------------------------------------------------------------------------------


def creates(sim: DMHubSimulator) -> int:
    return sim.counters.routes["POST /v1/customers"]


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("reset-after-write", APIConnectionError),
        ("truncated", APIConnectionError),  # cut short of Content-Length, as a network cuts
        ("500", ServerError),
    ],
)
async def test_scenario_4_a_lost_create_answer_is_not_repeated(
    sim: DMHubSimulator,
    connect: Callable[..., DMHubClient],
    kind: str,
    error: type[Exception],
) -> None:
    """Scenario 4: a plain create (no mobile or email to match on) whose answer is lost after
    the service may have stored it: sent once, not repeated, and the error says the outcome
    is unknown. (The simulator did store it for the first two: one customer, not two.)"""
    async with connect(sim, max_retries=4) as dm:
        await dm.customers.count()
        sim.faults.paths = ("POST /v1/customers",)
        sim.faults.script([kind])
        with pytest.raises(error) as caught:
            await dm.customers.create(name="小D", remark="lost answer")
    assert creates(sim) == 1  # not repeated
    assert caught.value.outcome_unknown  # type: ignore[attr-defined]
    stored = 1 if kind != "500" else 0
    assert sim.customers_count() == 50 + stored
    if kind == "reset-after-write":
        assert "outcome is unknown" in str(caught.value)


@pytest.mark.parametrize("kind", ["reset-after-write", "truncated", "500", "429", "503"])
async def test_scenario_4_a_create_safe_to_repeat_is_retried_into_one_customer(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], kind: str
) -> None:
    """Scenario 4, the other side: a create with a mobile (the service matches on it) and an
    upsert by identity are safe to repeat: retried, they leave exactly one customer."""
    async with connect(sim) as dm:
        await dm.customers.count()
        sim.faults.paths = ("POST /v1/*",)
        sim.faults.script([kind])
        made = await dm.customers.create(name="小D", mobile="18612341234")
        sim.faults.script([kind])
        upserted = await dm.customers.create_with_identities(
            [Identity("wechat", "o-lost-answer")], name="小羊"
        )
        sim.faults.script([kind])
        again = await dm.customers.create_with_identities([Identity("wechat", "o-lost-answer")])
    assert sim.customers_count() == 52
    assert upserted.id == again.id != made.id
    # Each was retried once: the simulator drops only what aiohttp itself re-sends (not a POST).
    assert sim.counters.routes["POST /v1/customers"] == 2
    assert sim.counters.routes["POST /v1/customerandidentities"] == 4


async def test_one_scripted_reset_after_write_costs_one_retry(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient]
) -> None:
    async with connect(sim, max_retries=1) as dm:
        await dm.customers.count()
        sim.faults.paths = ("POST /v1/customers",)
        sim.faults.script(["reset-after-write"])
        await dm.customers.create(name="小D", mobile="18612341234")
    assert creates(sim) == 2
