"""Calls run side by side: all at once (:func:`together`), or a few at a time (:func:`bounded`);
one call bounded in time, its caller's cancellation never lost (:func:`within`); a clean-up run
to its end however often its caller is cancelled (:func:`to_the_end`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

__all__ = ["bounded", "to_the_end", "together", "within"]

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741


async def together(calls: Iterable[Awaitable[T]]) -> list[T]:
    """The results of ``calls``, run at once. The first failure (or the caller's cancellation)
    cancels the others, and waits for them: with ``asyncio.gather`` alone they went on in the
    background, retries and all (up to n - 1 of them a round), holding the client's slots."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # nothing, for those done
        await asyncio.gather(*tasks, return_exceptions=True)


async def bounded(call: Callable[[I], Awaitable[T]], items: Sequence[I], at_most: int) -> list[T]:
    """``[await call(item) for item in items]``, ``at_most`` calls in flight (a task each, not
    one a call: a count of 3,000,000 listed ids is 6,360 requests), failing as :func:`together`."""
    results: dict[int, T] = {}
    next_items = iter(enumerate(items))

    async def worker() -> None:
        for index, item in next_items:  # shared: each item taken by one worker
            results[index] = await call(item)

    await together(worker() for _ in range(min(at_most, len(items))))
    return [results[index] for index in range(len(items))]


async def within(call: Awaitable[T], timeout: float | None) -> T:
    """``await call``, or :class:`asyncio.TimeoutError` once ``timeout`` seconds have passed
    (``call`` cancelled first); a cancel of the caller raised, always.

    ``asyncio.wait_for`` on Python 3.10 and 3.11 returns ``call``'s result to a caller
    cancelled in the loop's turn that ended ``call`` (CPython gh-86296, fixed by 3.12's
    rewrite): the caller went on as if never cancelled (a worker's SIGTERM did not stop it).
    ``asyncio.timeout`` (3.11) awaits ``call`` in the caller's own task, where the cancel
    cannot miss it; 3.10 has :func:`_within_task`.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await call
    return await _within_task(call, timeout)  # pragma: no cover - 3.10


async def _within_task(call: Awaitable[T], timeout: float | None) -> T:
    """:func:`within` for Python 3.10: ``call`` in a task of its own, as ``asyncio.wait_for``
    runs it, but the caller's cancel raised even when ``call`` ended in the same turn (its
    result dropped: the caller stops). Not the ``async_timeout`` package that aiohttp brings
    on 3.10: its timeout, landing in the turn of a cancel, turns the cancel into a
    ``TimeoutError`` (a Redis command's tries then tried again); ``asyncio.wait``'s timeout
    cancels nothing, so a cancel is never mistaken for it."""
    task = asyncio.ensure_future(call)
    try:
        await asyncio.wait((task,), timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()  # nothing, if it ended in this turn
        await _ended(task)
        raise
    if not task.done():  # the timeout
        task.cancel()
        await _ended(task)  # as wait_for: not running on once this returns
        if task.cancelled():
            raise asyncio.TimeoutError from None
    return task.result()  # a call that ended as the timeout came: its result, or its error


async def _ended(task: asyncio.Future[T]) -> None:
    """Once ``task`` has ended; an error it ended with, left unraised, not logged as unseen."""
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()


async def to_the_end(call: Awaitable[T]) -> T:
    """``await call``, run to its end however often the caller is cancelled meanwhile, the
    cancellation raised after: a clean-up (closing connections) that a cancel must not cut.

    A second cancel (a task group's after an ``asyncio.timeout``'s) or anyio's cancel scope,
    which cancels its task again at every turn of the loop until it leaves the scope, cut a
    close short, its connections left open for the collector to find. ``call`` must end on
    its own in bounded time (a close bounded by its socket timeouts), as
    :func:`~dmhub_async._threads.on_thread`'s work is waited for.
    """
    task = asyncio.ensure_future(call)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as err:
            cancelled = err
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # seen: the caller's cancellation is what it raises
        raise cancelled
    return task.result()
