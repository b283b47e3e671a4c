"""Blocking file work off the event loop, on threads of its own, finished or undone when its
caller gives up."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["file_work", "on_thread"]

T = TypeVar("T")


async def on_thread(work: Callable[[], T], undo: Callable[[T], object] | None = None) -> T:
    """``work()`` on a file thread, so that a filesystem that stalls (an NFS server away, a
    saturated disk) or a long read holds this call, never the event loop and every other
    coroutine of the service with it.

    Cancelled meanwhile (a timeout, a shutdown), it waits for the thread all the same and
    ``undo``es what the work did, however that wait ends, then raises: a token written after
    its caller let go of the lock could put an older one over a newer, a lock taken after the
    caller gave up would be held by nobody, an export's output opened then would keep its
    locks.
    """
    running = _on_file_thread(work)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        # A class, not a closure: a closure's cells are made at every call, every page.
        undo_once = _UndoOnce(undo)
        running.add_done_callback(undo_once)  # before the wait ends
        # Cancelled again as it waits (asyncio.gather cancels its tasks, then their caller
        # cancels them too: export_sharded stopped), it waits all the same: it returned, and
        # an export's output was cut back to its last checkpoint while the page's commit
        # wrote the next one, past the data.
        while not running.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([running])
        # Undone now, not at a later turn of the loop: the work done as the cancellation came,
        # the caller went on first, and an export retried at once found its own lock held.
        try:
            undo_once(running)
        except Exception as err:  # reported as the callback's was: the cancellation is raised
            asyncio.get_running_loop().call_exception_handler(
                {"message": "undoing cancelled file work failed", "exception": err}
            )
        raise


async def file_work(work: Callable[[], T]) -> T:
    """``work()`` on a file thread; cancelled, the caller goes at once (a read: nothing to
    undo), the thread ends when the filesystem lets it."""
    return await _on_file_thread(work)


class _UndoOnce(Generic[T]):
    """``undo`` of what a future's work did (:func:`_undone`), done once: by the future's
    callback or by the cancelled caller, whichever comes first."""

    def __init__(self, undo: Callable[[T], object] | None) -> None:
        self._undo = undo
        self._done = False

    def __call__(self, running: asyncio.Future[T]) -> None:
        if not self._done:
            self._done = True
            _undone(self._undo, running)


def _undone(undo: Callable[[T], object] | None, running: asyncio.Future[T]) -> None:
    """``undo`` of what ``running`` did, if it did it; its error, if any, marked seen."""
    if running.cancelled() or running.exception() is not None:
        return
    if undo is not None:
        undo(running.result())


def _on_file_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """``work()`` (in the caller's context, as ``asyncio.to_thread`` runs it) on a file thread.

    File threads are the SDK's own, not the loop's default executor: a filesystem stalled for
    good holds each call's thread for ever, and a few such calls (token stores, exports)
    filled the default pool (``min(32, cores + 4)`` threads), where ``asyncio.to_thread`` and
    aiohttp's DNS lookups (``loop.getaddrinfo``) of the whole service then waited behind them.
    """
    context = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(_file_threads(), context.run, work)


_pool: ThreadPoolExecutor | None = None
_pool_made = threading.Lock()


def _file_threads() -> ThreadPoolExecutor:
    """This process's file threads, made when first needed."""
    global _pool
    with _pool_made:
        if _pool is None:
            size = min(32, (os.cpu_count() or 1) + 4)  # as the default executor's
            _pool = ThreadPoolExecutor(size, thread_name_prefix="dmhub-file")
        return _pool


def _forget_file_threads() -> None:
    """In a process forked from one that had file threads (a prefork server): none of them
    is in it, nor a lock one of them held, and work handed to them would wait for ever."""
    global _pool, _pool_made
    _pool, _pool_made = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_file_threads)
