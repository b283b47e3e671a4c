"""Shared fixtures: a hand-driven clock, the aioresponses mock, a token endpoint, clients.

No test really sleeps or reaches the network: the clock only moves when a test advances it or a
client "sleeps" on it, and every HTTP call is answered by aioresponses.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from _helpers import BASE
from aioresponses import CallbackResult, aioresponses

from dmhub_async import DMHubClient, MemoryTokenStore, RetryPolicy

#: The base URL every client built by ``make_client`` talks to.
BASE_URL = BASE
TOKEN_URL = re.compile(r"^https://api\.dmhub\.test/security/accesstoken\?.*$")


class FakeClock:
    """Wall-clock seconds that move only by hand or by ``sleep``, which records each wait.

    ``sleep`` keeps virtual time: the earliest sleeper wakes first, once the other tasks have
    had their turns, and the clock then jumps to its wake time. So concurrent sleepers see the
    times they would see for real, and no test waits.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.waits: list[float] = []
        self._wakes: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        wake = self.now + max(0.0, seconds)
        self._wakes.append(wake)
        try:
            settled = 0
            while settled < 10:  # ten turns in a row as the earliest sleeper: the rest are idle
                await asyncio.sleep(0)
                settled = settled + 1 if min(self._wakes) >= wake else 0
            self.now = max(self.now, wake)
        finally:
            self._wakes.remove(wake)


class TokenEndpoint:
    """``/security/accesstoken`` on the mock: hands out ``tok-1``, ``tok-2``, ... in turn."""

    def __init__(self, api: aioresponses, expires_in: int = 7200) -> None:
        self.issued: list[str] = []
        self.expires_in = expires_in
        api.get(TOKEN_URL, callback=self._answer, repeat=True)

    def _answer(self, url: Any, **kwargs: Any) -> CallbackResult:
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        return CallbackResult(
            payload={"error_code": 0, "access_token": token, "expires_in": self.expires_in}
        )


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock; pass ``clock=clock, sleep=clock.sleep`` to a client."""
    return FakeClock()


@pytest.fixture
def api() -> Iterator[aioresponses]:
    """Every aiohttp request in the test goes to this mock (``api.requests`` records them)."""
    with aioresponses() as mock:
        yield mock


@pytest.fixture
def tokens(api: aioresponses) -> TokenEndpoint:
    """A working token endpoint on ``api``."""
    return TokenEndpoint(api)


@pytest.fixture
async def make_client(clock: FakeClock) -> AsyncIterator[Callable[..., DMHubClient]]:
    """Build clients on the fake clock with exact waits (no jitter) and a private token store.

    ``max_retries=`` and the other ``RetryPolicy`` settings given here build the policy. Every
    client is closed at the end of the test.
    """
    clients: list[DMHubClient] = []
    policy_args = ("max_retries", "initial_delay", "max_delay", "retry_after_cap", "budget")

    def make(**kwargs: Any) -> DMHubClient:
        policy = {name: kwargs.pop(name) for name in policy_args if name in kwargs}
        kwargs.setdefault("retry", RetryPolicy(jitter=lambda ceiling: ceiling, **policy))
        if "access_token" not in kwargs:
            kwargs.setdefault("app_id", "app-1")
            kwargs.setdefault("secret", "secret-1")
        kwargs.setdefault("base_url", BASE_URL)
        kwargs.setdefault("token_store", MemoryTokenStore())
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        client = DMHubClient(**kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
