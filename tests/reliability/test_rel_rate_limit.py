"""Scenario 13: ``rate_limit=R`` holds on the wire, and is reached when there is work.

The simulator stamps every request it receives with the fake clock the client also runs on.
That clock works as the ``clock`` fixture's, with one change (:class:`IdleClock`): a sleeper
wakes only while no request is in flight, so a request reaches the simulator at the very moment (on
the fake clock) the rate limiter let it go, and the stamps are exact, not "roughly when".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dmhub_async import DMHubClient
from dmhub_async.testing import DMHubSimulator

CALLS = 300
WORKERS = 50


class IdleClock:
    """A fake clock like the ``clock`` fixture's (its earliest sleeper wakes first, and the
    clock jumps to its wake time), whose sleepers also wait until no request is in flight."""

    def __init__(self, start: float = 0.0) -> None:  # at 0, float steps stay exact to 1e-9
        self.now = start
        self.in_flight = 0
        self._wakes: list[float] = []
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_start.append(self._started)
        self.trace.on_request_end.append(self._ended)
        self.trace.on_request_exception.append(self._ended)

    async def _started(self, *args: Any) -> None:
        self.in_flight += 1

    async def _ended(self, *args: Any) -> None:
        self.in_flight -= 1

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = self.now + max(0.0, seconds)
        self._wakes.append(wake)
        try:
            settled = 0
            while settled < 10:  # ten turns in a row, idle, as the earliest sleeper
                await asyncio.sleep(0)
                idle = not self.in_flight and min(self._wakes) >= wake
                settled = settled + 1 if idle else 0
            self.now = max(self.now, wake)
        finally:
            self._wakes.remove(wake)


def busiest_second(stamps: list[float], rate: int) -> int:
    """The most requests stamped within any window of 1 s (closed at its start, open at its end)."""
    stamps = sorted(stamps)
    best, j = 0, 0
    for i, start in enumerate(stamps):
        while j < len(stamps) and stamps[j] < start + 1 - 1e-9:
            j += 1
        best = max(best, j - i)
    return best


@pytest.mark.parametrize(("rate", "fault_rate"), [(20, 0.0), (5, 0.1)])
async def test_scenario_13_rate_limit_held_and_reached(
    connect: Callable[..., DMHubClient], rate: int, fault_rate: float
) -> None:
    """Scenario 13: 300 calls from 50 tasks, 8 in flight, ``rate_limit=R``: no second on the
    wire holds more than R requests, and the whole run goes at R (at least 0.9 R). With 10%
    503s, the retries queue for the same limiter: the rate still holds."""
    idle = IdleClock()
    async with (
        DMHubSimulator(customers=50, seed=13) as sim,
        aiohttp.ClientSession(trace_configs=[idle.trace]) as session,
    ):
        stamps: list[float] = []

        def stamp(request: web.Request) -> None:
            stamps.append(idle())

        sim.on_request(stamp)
        sim.faults.rate, sim.faults.kinds = fault_rate, ("503",)
        queue = list(range(CALLS))

        async def worker() -> None:
            while queue:
                queue.pop()
                assert await dm.customers.count() == 50

        async with connect(
            sim,
            session=session,
            rate_limit=rate,
            max_concurrency=8,
            max_retries=8,
            clock=idle,
            sleep=idle.sleep,
        ) as dm:
            await asyncio.gather(*(worker() for _ in range(WORKERS)))

    assert len(stamps) == CALLS + 1 + sim.counters.faults["503"]  # the token request too
    assert fault_rate == 0 or sim.counters.faults["503"] > 0
    assert busiest_second(stamps, rate) == rate  # at R, never above
    observed = (len(stamps) - 1) / (max(stamps) - min(stamps))
    assert 0.9 * rate <= observed <= rate * (1 + 1e-9)
