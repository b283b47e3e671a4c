"""A call bounded in time whose caller's cancel is never lost (``dmhub_async._tasks.within``).

``asyncio.wait_for`` on Python 3.10 and 3.11 drops a cancel of its caller that lands in the
loop's turn that ends the awaited call (CPython gh-86296): a worker's SIGTERM did not stop it.
Each test here makes the two land together by construction, not by luck of timing. Both ways
of :func:`within` are tried on every Python: ``asyncio.timeout`` (3.11 on) and the task of
:func:`_within_task` (3.10).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dmhub_async import _tasks

WAYS = [pytest.param(_tasks._within_task, id="task")]
if hasattr(asyncio, "timeout"):
    WAYS.append(pytest.param(_tasks.within, id="asyncio.timeout"))

Within = Callable[[Awaitable[Any], "float | None"], Awaitable[Any]]


class Asked:
    """A call that answers what the test gives it, once the test gives it."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.ended: list[str] = []

    async def call(self) -> str:
        self.asked.set()
        try:
            return await self.answer
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise


@pytest.mark.parametrize("within", WAYS)
async def test_a_cancel_landing_as_the_call_answers_stops_the_caller(within: Within) -> None:
    asked = Asked()
    went_on: list[str] = []

    async def caller() -> None:
        went_on.append(await within(asked.call(), 60))

    task = asyncio.ensure_future(caller())
    await asked.asked.wait()
    # In one turn, as a signal handler's cancel in the turn a Redis answer is read.
    asked.answer.set_result("answer")
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert went_on == []  # wait_for (3.10, 3.11): ["answer"], the cancel lost


@pytest.mark.parametrize("within", WAYS)
async def test_a_cancel_stops_the_call_before_the_caller_goes(within: Within) -> None:
    asked = Asked()
    task = asyncio.ensure_future(within(asked.call(), 60))
    await asked.asked.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert asked.ended == ["cancelled"]


@pytest.fixture
async def loop_clock() -> AsyncIterator[list[float]]:
    """The running loop's clock, moved by the test: ``clock[0]`` is the time it tells."""
    loop = asyncio.get_running_loop()
    clock = [1000.0]
    loop.time = lambda: clock[0]  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        del loop.time


@pytest.mark.parametrize("within", WAYS)
async def test_a_timeout_cancels_the_call_and_says_so(within: Within, loop_clock) -> None:
    asked = Asked()
    task = asyncio.ensure_future(within(asked.call(), 5))
    await asked.asked.wait()
    loop_clock[0] += 5

    with pytest.raises(asyncio.TimeoutError):
        await task
    assert asked.ended == ["cancelled"]


@pytest.mark.parametrize("within", WAYS)
@pytest.mark.parametrize("cancel_first", [False, True])
async def test_a_cancel_landing_with_the_timeout_is_a_cancel(
    within: Within, loop_clock, cancel_first: bool
) -> None:
    # A TimeoutError instead would be a Redis command's failed try, tried again: the cancel
    # lost (the async_timeout package on 3.10 does that when its timeout comes first).
    asked = Asked()
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(within(asked.call(), 5))
    await asked.asked.wait()
    # Due in the same turn once the clock reaches 1005.5, each in its time's order.
    loop.call_at(1004.5 if cancel_first else 1005.5, task.cancel)
    loop_clock[0] = 1005.5

    with pytest.raises(asyncio.CancelledError):
        await task
    assert asked.ended == ["cancelled"]


@pytest.mark.parametrize("within", WAYS)
async def test_an_answer_or_error_in_time_is_the_callers(within: Within) -> None:
    async def answer() -> str:
        await asyncio.sleep(0)
        return "answer"

    async def fail() -> str:
        await asyncio.sleep(0)
        raise ConnectionResetError("peer went away")

    assert await within(answer(), 60) == "answer"
    assert await within(answer(), None) == "answer"
    with pytest.raises(ConnectionResetError, match="peer went away"):
        await within(fail(), 60)
