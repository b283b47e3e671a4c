"""Scenarios 5 to 8: tokens revoked, refreshed ahead of expiry, refused for good, unobtainable.

The simulator keeps one active token per appid, as the live service does (docs/contract.md,
"Transport and authentication"); ``sim.counters`` counts the token requests it served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from dmhub_async import (
    APIConnectionError,
    AuthenticationError,
    DMHubClient,
    ServerError,
)
from dmhub_async.testing import DMHubSimulator

TOKEN_ROUTE = "/security/accesstoken"
AUTH_CODES = (40001, 40014, 42001)  # replaced or revoked, invalid, expired


def token_requests(sim: DMHubSimulator) -> int:
    return sim.counters.requests[TOKEN_ROUTE]


def api_requests(sim: DMHubSimulator) -> int:
    return sum(n for route, n in sim.counters.requests.items() if route.startswith("/v1/"))


# -- scenario 5 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("revoke_after", [0, 50])
async def test_scenario_5_token_revoked_under_200_concurrent_calls(
    connect: Callable[..., DMHubClient], revoke_after: int
) -> None:
    """Scenario 5: the token revoked with 200 calls in flight (at once, or after the first 50
    reached the service): exactly one token request, and all 200 calls succeed."""
    async with (
        DMHubSimulator(customers=300, seed=5) as sim,
        connect(sim, max_concurrency=200) as dm,
    ):
        await dm.customers.count()
        assert token_requests(sim) == 1
        ids = sim.customer_ids()[:200]
        sim.revoke_tokens(after_requests=revoke_after)
        got = await asyncio.gather(*(dm.customers.get(i) for i in ids))
        assert dm.stats.token_fetches == 2
    assert [c.id for c in got] == ids
    assert token_requests(sim) - 1 == 1  # one refresh for 200 callers
    refused = sim.counters.errors[40001]
    assert refused > 100  # most calls were in flight with the revoked token ...
    assert api_requests(sim) == 1 + 200 + refused  # ... and each retried once, no more


# -- scenario 6 ---------------------------------------------------------------------------------

THREE_HOURS = 3 * 3600.0


async def test_scenario_6_three_hours_of_calls_never_see_an_auth_error(
    connect: Callable[..., DMHubClient], clock: Any
) -> None:
    """Scenario 6: 3 simulated hours of calls from 4 workers, simulator and client on one fake
    clock (tokens live 7200 s, refreshed 300 s ahead): no call fails, no call ever carries an
    expired token (no 42001 on the wire), and 2 tokens do for 3 hours: the second is fetched
    in the last 300 s of the first's life, before it expired.

    The refresh revokes the old token (one active token per appid), so a call in flight with
    it at that moment gets 40001 and is retried with the new one: at most one a worker.
    """
    async with DMHubSimulator(customers=500, seed=6, clock=clock) as sim:
        fetched_at: list[float] = []

        def note_token(request: web.Request) -> None:
            if request.path == TOKEN_ROUTE:
                fetched_at.append(clock() - started)

        sim.on_request(note_token)
        started = clock()
        calls = 0

        async def worker(n: int) -> None:
            nonlocal calls
            step = 31.0 + 17 * n  # each worker at its own pace: calls overlap at every moment
            while clock() - started < THREE_HOURS:
                if n % 2:
                    await dm.customers.get(sim.customer_ids()[n])
                else:
                    await dm.customers.list(max_items=20).to_list()
                calls += 1
                await clock.sleep(step)

        async with connect(sim) as dm:
            await asyncio.gather(*(worker(n) for n in range(4)))

    assert clock() - started >= THREE_HOURS
    assert calls > 400
    assert sim.counters.errors[42001] == 0  # never an expired token
    assert sim.counters.errors[40014] == 0
    assert sim.counters.errors[40001] <= 3  # in flight during the refresh, retried
    assert sim.counters.tokens_issued == 2
    assert fetched_at[0] == 0
    assert 7200 - 300 <= fetched_at[1] < 7200


# -- scenario 7 ---------------------------------------------------------------------------------


async def test_scenario_7_token_refused_for_good_is_one_refresh_one_retry(
    connect: Callable[..., DMHubClient],
) -> None:
    """Scenario 7: every token the service hands out is refused: ``AuthenticationError`` after
    one refresh and one retry (2 API requests, 1 new token), for each call: not a loop."""
    async with DMHubSimulator(customers=10, seed=7) as sim:

        def revoke_every_token(request: web.Request) -> None:
            if request.path.startswith("/v1/"):
                sim.revoke_tokens()

        async with connect(sim, max_retries=4) as dm:
            sim.on_request(revoke_every_token)
            for call in range(1, 4):
                with pytest.raises(AuthenticationError) as caught:
                    await dm.customers.count()
                assert caught.value.code == 40001
                assert api_requests(sim) == 2 * call
                # The first token, then one refresh a call (the refused one is kept until then).
                assert token_requests(sim) == 1 + call


async def test_scenario_7_credentials_revoked_is_one_token_request(
    connect: Callable[..., DMHubClient],
) -> None:
    """Scenario 7: the secret is rotated and the token revoked: the call's refresh is refused
    (40004 on HTTP 200): ``AuthenticationError`` after 1 API request and 1 token request."""
    async with DMHubSimulator(customers=10, seed=7) as sim, connect(sim, max_retries=4) as dm:
        await dm.customers.count()
        sim.tokens.secret = "rotated-secret"
        sim.revoke_tokens()
        api, tokens = api_requests(sim), token_requests(sim)
        with pytest.raises(AuthenticationError) as caught:
            await dm.customers.count()
    assert caught.value.code == 40004
    assert api_requests(sim) - api == 1
    assert token_requests(sim) - tokens == 1  # a refused secret is not retried


# -- scenario 8 ---------------------------------------------------------------------------------

CALLERS = 100


@pytest.mark.parametrize("kinds", [("503",), ("500", "502", "504", "html"), ("reset",)])
async def test_scenario_8_token_endpoint_down_is_one_fetch_for_100_callers(
    connect: Callable[..., DMHubClient], kinds: tuple[str, ...]
) -> None:
    """Scenario 8: the token endpoint fails every time: 100 callers share one fetch of
    max_retries + 1 = 5 attempts, and all fail with its error; not 100 fetches, not 500
    requests. (A reset may be re-sent once by aiohttp itself, unseen by the client.)"""
    async with DMHubSimulator(customers=10, seed=8) as sim:
        sim.faults.paths = (TOKEN_ROUTE,)
        sim.faults.kinds, sim.faults.rate = kinds, 1.0
        async with connect(sim, max_retries=4) as dm:
            results = await asyncio.gather(
                *(dm.customers.count() for _ in range(CALLERS)), return_exceptions=True
            )
            assert dm.stats.token_fetches == 1
            assert dm.stats.requests == 5  # the token request's 5 attempts, and nothing else
            assert dm.stats.retries == 4
    assert all(isinstance(r, (ServerError, APIConnectionError)) for r in results)
    assert 5 <= token_requests(sim) <= 10
    assert api_requests(sim) == 0


async def test_scenario_8_token_endpoint_back_after_two_failures(
    connect: Callable[..., DMHubClient],
) -> None:
    """Scenario 8: the token endpoint fails twice (503, then a reset), then works: 100
    callers wait on one fetch of 3 attempts, one token is issued, all 100 calls succeed."""
    async with DMHubSimulator(customers=10, seed=8) as sim:
        sim.faults.paths = (TOKEN_ROUTE,)
        sim.faults.script(["503", "reset"])
        async with connect(sim, max_retries=4) as dm:
            results = await asyncio.gather(*(dm.customers.count() for _ in range(CALLERS)))
            assert dm.stats.token_fetches == 1
            assert dm.stats.requests - CALLERS <= 3 + 1  # 3 attempts (a reset may cost 2)
            assert dm.stats.requests - CALLERS == 1 + dm.stats.retries
    assert results == [10] * CALLERS
    assert sim.counters.tokens_issued == 1
    assert api_requests(sim) == CALLERS
