"""Fixtures of the reliability scenarios: clients on the fake clock against the simulator.

Every scenario talks real HTTP to a `DMHubSimulator` on 127.0.0.1; only time is fake. The
``clock`` fixture (``tests/conftest.py``) is the client's clock and its sleep, so backoff,
``Retry-After`` and the rate limiter never really wait, and every wait is recorded. Helpers
that tests import live in ``rel_support.py`` (a conftest cannot be imported by name).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from _redis import RedisServer

from dmhub_async import DMHubClient, MemoryTokenStore, RedisTokenStore
from dmhub_async.testing import DMHubSimulator


@pytest.fixture
async def connect(clock: Any) -> AsyncIterator[Callable[..., DMHubClient]]:
    """``connect(sim, **kwargs)``: a client of ``sim`` on the fake clock, with its own token store.

    Each client is closed at the end of the test (a scenario closes its own earlier, to check).
    """
    clients: list[DMHubClient] = []

    def make(sim: DMHubSimulator, **kwargs: Any) -> DMHubClient:
        kwargs.setdefault("token_store", MemoryTokenStore())
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        client = DMHubClient(sim.app_id, sim.secret, base_url=sim.url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def redis_store(redis: RedisServer) -> AsyncIterator[Callable[..., RedisTokenStore]]:
    """``redis_store(**kwargs)``: a ``RedisTokenStore`` on this test's Redis, closed at the end
    (before the server stops), whether the test passes or not."""
    stores: list[RedisTokenStore] = []

    def make(**kwargs: Any) -> RedisTokenStore:
        stores.append(RedisTokenStore(redis.url, **kwargs))
        return stores[-1]

    yield make
    for store in stores:
        await store.aclose()
