"""Blocking file work off the event loop, finished or undone when its caller gives up."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TypeVar

__all__ = ["on_thread"]

T = TypeVar("T")


async def on_thread(work: Callable[[], T], undo: Callable[[T], object] | None = None) -> T:
    """``work()`` on a thread, so that a filesystem that stalls (an NFS server away, a
    saturated disk) or a long read holds this call, never the event loop and every other
    coroutine of the service with it.

    Cancelled meanwhile (a timeout, a shutdown), it waits for the thread all the same and
    ``undo``es what the work did, however that wait ends, then raises: a token written after
    its caller let go of the lock could put an older one over a newer, a lock taken after the
    caller gave up would be held by nobody, an export's output opened then would keep its
    locks.
    """
    running = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        running.add_done_callback(functools.partial(_undone, undo))  # before the wait ends
        await asyncio.wait([running])
        raise


def _undone(undo: Callable[[T], object] | None, running: asyncio.Future[T]) -> None:
    """``undo`` of what ``running`` did, if it did it; its error, if any, marked seen."""
    if running.cancelled() or running.exception() is not None:
        return
    if undo is not None:
        undo(running.result())
