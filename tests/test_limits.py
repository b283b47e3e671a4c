"""``Limits``: the client's in-flight slots, first come first served, through cancellations.

The request path takes a free slot with ``take()`` (no coroutine) and waits with ``acquire()``
otherwise; these tests hold both to what ``asyncio.Semaphore`` promised before them: never more
than ``max_concurrency`` holders, waiters served in order, and no slot lost or made up when a
waiter is cancelled, before or after its slot was handed to it.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from dmhub_async._limits import Limits, RateLimiter


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_take_takes_free_slots_only() -> None:
    limits = Limits(2, None)
    assert limits.take()
    assert limits.take()
    assert not limits.take()
    limits.release()
    assert limits.take()


async def test_waiters_get_released_slots_in_the_order_they_came() -> None:
    limits = Limits(1, None)
    assert limits.take()
    served: list[int] = []

    async def waiter(i: int) -> None:
        await limits.acquire()
        served.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(4)]
    await settle()
    assert served == []
    assert not limits.take()  # a caller who comes later does not jump the queue
    for expected in range(4):
        limits.release()
        await settle()
        assert served == list(range(expected + 1))
    await asyncio.gather(*tasks)
    limits.release()
    assert limits.take()


async def test_a_waiter_cancelled_before_its_turn_loses_no_slot() -> None:
    limits = Limits(1, None)
    assert limits.take()
    first = asyncio.create_task(limits.acquire())
    second = asyncio.create_task(limits.acquire())
    await settle()
    first.cancel()
    await settle()
    limits.release()  # goes to the second waiter, past the cancelled one
    await asyncio.wait_for(second, 1)
    assert first.cancelled()
    assert not limits.take()  # the second holds it
    limits.release()
    assert limits.take()


async def test_a_waiter_cancelled_after_its_slot_was_handed_to_it_passes_it_on() -> None:
    limits = Limits(1, None)
    assert limits.take()
    first = asyncio.create_task(limits.acquire())
    second = asyncio.create_task(limits.acquire())
    await settle()
    limits.release()  # handed to the first...
    first.cancel()  # ...which is cancelled before it runs again
    await settle()
    assert first.cancelled()
    await asyncio.wait_for(second, 1)  # the slot went on to the second
    limits.release()
    assert limits.take()
    assert not limits.take()  # one slot, never two


@pytest.mark.parametrize("slots", [1, 3, 8])
async def test_never_more_holders_than_slots(slots: int) -> None:
    limits = Limits(slots, None)
    holding = most = done = 0

    async def call(i: int) -> None:
        nonlocal holding, most, done
        if not limits.take():
            await limits.acquire()
        holding += 1
        most = max(most, holding)
        for _ in range(i % 4):  # held over a few steps of the loop, some not at all
            await asyncio.sleep(0)
        holding -= 1
        limits.release()
        done += 1

    await asyncio.gather(*(call(i) for i in range(100)))
    assert (most, done, holding) == (slots, 100, 0)
    assert [limits.take() for _ in range(slots + 1)] == [True] * slots + [False]


async def test_with_a_rate_every_slot_waits_for_the_rate() -> None:
    class Rate:
        calls = 0

        async def acquire(self) -> None:
            Rate.calls += 1

    limits = Limits(2, Rate())
    assert not limits.take()  # the rate must be awaited: never taken at once
    await limits.acquire()
    await limits.acquire()
    assert Rate.calls == 2
    assert not limits.take()


async def test_a_failed_rate_gives_the_slot_back() -> None:
    class Rate:
        calls = 0

        async def acquire(self) -> None:
            Rate.calls += 1
            if Rate.calls == 1:
                raise asyncio.CancelledError  # the caller cancelled while it waited its turn

    limits = Limits(1, Rate())
    with pytest.raises(asyncio.CancelledError):
        await limits.acquire()
    await asyncio.wait_for(limits.acquire(), 1)  # the one slot was given back, not lost
    assert Rate.calls == 2


@pytest.mark.parametrize("order", ["oldest first", "newest first", "every other"])
async def test_turns_given_back_by_cancelled_callers_are_taken_by_the_next(order: str) -> None:
    # wait_for() with one timeout cancels the oldest first: each gave back a slot before the
    # last, and only the last was taken again. Ten timed-out calls at 2 a second pushed the
    # next one 5 s out.
    now = 0.0
    waits: list[float] = []
    never = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await never.wait()

    rate = RateLimiter(2, clock=lambda: now, sleep=sleep)
    await rate.acquire()  # slot 0, at once
    waiting = [asyncio.ensure_future(rate.acquire()) for _ in range(10)]  # 0.5 .. 5.0
    await asyncio.sleep(0)
    assert waits == [0.5 * i for i in range(1, 11)]
    cancelled = {
        "oldest first": waiting,
        "newest first": waiting[::-1],
        "every other": waiting[::2],
    }[order]
    for task in cancelled:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    now = 0.1
    waits.clear()
    late = [asyncio.ensure_future(rate.acquire()) for _ in range(len(cancelled))]
    await asyncio.sleep(0)
    # The turns given back, from the earliest: never two closer than the interval.
    kept = sorted(0.5 * (i + 1) for i, t in enumerate(waiting) if t not in cancelled)
    taken = sorted(round(now + w, 9) for w in waits)
    assert taken == sorted(0.5 * (i + 1) for i, t in enumerate(waiting) if t in cancelled)
    slots = sorted([*kept, *taken])
    assert all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(slots))
    for task in [*late, *(t for t in waiting if t not in cancelled)]:
        task.cancel()
    await asyncio.gather(*late, *waiting, return_exceptions=True)


class _SyncAcquire:
    """A shared limit whose acquire() is no async function: it returns None."""

    def acquire(self) -> None:
        return None


async def test_a_shared_limit_whose_acquire_is_not_async_is_refused_by_name() -> None:
    # It passed the client's check (callable) and failed the first call with asyncio's raw
    # TypeError "An asyncio.Future, a coroutine or an awaitable is required", naming nothing.
    from dmhub_async import DMHubClient, InvalidRequestError

    async with DMHubClient(
        access_token="tok", base_url="http://127.0.0.1:9", rate_limit=_SyncAcquire()
    ) as dm:
        with pytest.raises(InvalidRequestError, match=r"^rate_limit's acquire\(\) returned None"):
            await dm.request("GET", "/v1/customers/1")
        assert dm.stats.requests == 0


@pytest.mark.parametrize(("waiting", "turn"), [(0, 0.3), (3, 0.4)])
async def test_the_wall_clock_stepping_back_costs_no_wait_of_its_step(
    waiting: int, turn: float
) -> None:
    # The client's clock is the wall clock (time.time): NTP stepping it back an hour (a VM
    # restored, a laptop waking) left the next turn an hour ahead of it, and the next request
    # (every one after it too) waited an hour for it.
    now = 1_000.0
    waits: list[float] = []
    never = asyncio.Event()
    blocking = False

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if blocking:
            await never.wait()

    rate = RateLimiter(10, clock=lambda: now, sleep=sleep)
    for _ in range(3):
        await rate.acquire()  # turns at 1000.0, 1000.1, 1000.2
    blocking = True
    asleep = [asyncio.ensure_future(rate.acquire()) for _ in range(waiting)]  # .3, .4, .5
    await settle()
    now -= 3600.0  # NTP steps the clock back an hour
    if asleep:
        asleep[1].cancel()  # a caller that gives its turn (1000.4) back after the step
        await settle()
    waits.clear()
    late = asyncio.ensure_future(rate.acquire())
    await settle()
    # The next free turn, as if the clock had not moved: never an hour out.
    assert waits == [pytest.approx(turn)]
    for task in [late, *asleep]:
        task.cancel()
    await asyncio.gather(late, *asleep, return_exceptions=True)
