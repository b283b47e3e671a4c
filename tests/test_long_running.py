"""One client for hours: calls cancelled at any point leak nothing, and a token that expired
during a long idle is fetched once for a burst of calls.

Against the simulator on 127.0.0.1; no test waits for time to pass: the simulator and the client
share a fake clock, and cancellations are placed by turns of the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import Coroutine
from typing import Any

import pytest

from dmhub_async import DMHubClient
from dmhub_async.testing import DMHubSimulator, FakeClock


async def _fail_after(turns: int) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)
    raise LookupError


async def failing_group(calls: list[Coroutine[Any, Any, Any]], turns: int) -> None:
    """``calls`` in a task group with a task that fails after ``turns`` turns of the loop: the
    group cancels those still running (Python 3.10, without TaskGroup: the same by hand)."""
    if sys.version_info >= (3, 11):
        with contextlib.suppress(Exception):  # the group's ExceptionGroup
            async with asyncio.TaskGroup() as group:
                for call in calls:
                    group.create_task(call)
                group.create_task(_fail_after(turns))
        return
    tasks = [asyncio.ensure_future(call) for call in calls]
    with contextlib.suppress(LookupError):
        await _fail_after(turns)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_calls_cancelled_at_any_point_leave_every_slot_and_connection() -> None:
    # Each call is cancelled after 0, 1, 2, ... turns of the loop (waiting for a slot, for
    # the token, writing, reading), by a task's cancel, a timeout or a failing task group; then
    # max_concurrency calls still run at once, no more, and nothing is left behind.
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    clock = FakeClock()
    async with DMHubSimulator(customers=3, clock=clock) as sim:
        ids = sim.customer_ids()
        async with DMHubClient(
            sim.app_id,
            sim.secret,
            base_url=sim.url,
            max_concurrency=4,
            clock=clock,
            sleep=clock.sleep,
        ) as dm:
            for turns in range(40):
                calls = [
                    asyncio.ensure_future(dm.customers.get(ids[0])),
                    asyncio.ensure_future(dm.customers.create(name=f"c{turns}")),
                ]
                for _ in range(turns):
                    await asyncio.sleep(0)
                for call in calls:
                    call.cancel()
                await asyncio.gather(*calls, return_exceptions=True)
                await failing_group([dm.customers.get(ids[1]) for _ in range(6)], turns)

            in_flight = 0
            most = 0
            four_in = asyncio.Event()
            release = asyncio.Event()

            async def hold(request: Any) -> None:
                nonlocal in_flight, most
                if request.path.startswith("/v1/"):
                    in_flight += 1
                    most = max(most, in_flight)
                    if in_flight == 4:
                        four_in.set()
                    await release.wait()
                    in_flight -= 1

            sim.on_request(hold)
            burst = asyncio.gather(*(dm.customers.get(ids[2]) for _ in range(8)))
            try:
                await asyncio.wait_for(four_in.wait(), 10)
            except asyncio.TimeoutError:
                pytest.fail(f"{most} calls at once, not 4: cancelled calls kept slots")
            for _ in range(20):  # room for a fifth, were a slot counted twice
                await asyncio.sleep(0)
            assert most == 4
            release.set()
            assert len(await asyncio.wait_for(burst, 5)) == 8
            connector = dm._session.http.connector if dm._session.http else None
            assert connector is not None
            assert not connector._acquired  # type: ignore[attr-defined]
    gc.collect()  # a task whose exception nobody retrieved says so as it is collected
    assert reported == []


async def test_a_token_expired_during_a_long_idle_is_fetched_once_for_200_calls() -> None:
    clock = FakeClock()
    async with DMHubSimulator(customers=3, clock=clock) as sim:
        ids = sim.customer_ids()
        async with DMHubClient(
            sim.app_id, sim.secret, base_url=sim.url, clock=clock, sleep=clock.sleep
        ) as dm:
            await dm.customers.get(ids[0])
            clock.advance(3 * 3600)  # idle: the token (7,200 s) expired an hour ago
            got = await asyncio.gather(*(dm.customers.get(ids[i % 3]) for i in range(200)))

        assert [c.id for c in got] == [ids[i % 3] for i in range(200)]
        assert sim.counters.tokens_issued == 2
        assert sim.counters.requests["/security/accesstoken"] == 2
        assert (dm.stats.requests, dm.stats.retries) == (203, 0)  # 2 tokens, 201 gets
