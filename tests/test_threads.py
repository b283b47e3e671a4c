"""The SDK's blocking file work on threads of its own (dmhub_async/_threads.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

from dmhub_async import _threads
from dmhub_async._threads import file_work, on_thread


async def test_file_work_stalled_for_good_leaves_the_loops_default_executor_free() -> None:
    # A filesystem stalled for good holds each call's thread for ever. On the loop's default
    # executor, a few such calls (token reads and writes, export commits: at most 32 threads,
    # min(32, cores + 4)) filled it, and asyncio.to_thread and aiohttp's DNS lookups
    # (loop.getaddrinfo) of the whole service waited behind them for as long.
    loop = asyncio.get_running_loop()
    released = threading.Event()
    stalled = [asyncio.ensure_future(on_thread(lambda: released.wait(30))) for _ in range(20)]
    stalled += [asyncio.ensure_future(file_work(lambda: released.wait(30))) for _ in range(20)]
    try:
        await asyncio.sleep(0)  # every call handed to a thread
        addresses = await asyncio.wait_for(loop.getaddrinfo("127.0.0.1", 80), 10)
        assert addresses
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "ran"), 10) == "ran"
    finally:
        released.set()
        assert await asyncio.gather(*stalled) == [True] * 40  # each ends once it can


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_process_has_file_threads_of_its_own() -> None:
    # The parent's file threads are not in a forked child (a prefork server that imported and
    # used the SDK first): work handed to them there would have waited for ever.
    asyncio.run(file_work(lambda: None))  # the parent's pool, with a thread
    pid = os.fork()
    if pid == 0:  # the child: 0 when its file work ran, within the time allowed
        code = 1
        try:
            signal.alarm(10)
            code = 0 if asyncio.run(file_work(lambda: "ran")) == "ran" else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


async def test_work_cancelled_twice_is_still_waited_for() -> None:
    # Cancelled once, on_thread waits for its thread; cancelled again as it waits (a task
    # that asyncio.gather cancels, then its caller too, as export_sharded's Ctrl-C does), it
    # returned at once: an export's output was closed, cut back to its last checkpoint, while
    # the page's commit went on and wrote a checkpoint past it (a part one page shorter than
    # its checkpoint said, left out whole by a merge of what there was).
    started, release = threading.Event(), threading.Event()
    finished = threading.Event()

    def work() -> None:
        started.set()
        release.wait(30)
        finished.set()

    task = asyncio.ensure_future(on_thread(work))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
    ended_with_the_thread: list[bool] = []
    task.add_done_callback(lambda _: ended_with_the_thread.append(finished.is_set()))
    for _ in range(2):
        task.cancel()
        for _ in range(5):  # the loop runs the task's cancellation through
            await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert ended_with_the_thread == [True]


async def test_work_done_as_it_is_cancelled_is_undone_before_the_caller_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The thread done as the cancellation came (a timeout due as an export's output opened):
    # the undo was left for a later turn of the loop, after the caller had gone on. An
    # export retried at once was refused as in use "by another export", this process
    # itself, its lock still held; the lock files and work file were still there.
    loop = asyncio.get_running_loop()
    running: asyncio.Future[str] = loop.create_future()
    monkeypatch.setattr(_threads, "_on_file_thread", lambda work: running)
    undone: list[str] = []
    seen_by_the_caller: list[list[str]] = []

    async def caller() -> None:
        try:
            await on_thread(lambda: "opened", undone.append)
        except asyncio.CancelledError:
            seen_by_the_caller.append(list(undone))  # what a retry made now would find
            raise

    task = asyncio.ensure_future(caller())
    await asyncio.sleep(0)  # the caller waits for the thread
    running.set_result("opened")  # the thread done...
    task.cancel()  # ...and the timeout due, in the same turn of the loop
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert seen_by_the_caller == [["opened"]]
    assert undone == ["opened"]  # once
