"""The SDK's blocking file work on threads of its own (dmhub_async/_threads.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

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
        addresses = await asyncio.wait_for(loop.getaddrinfo("127.0.0.1", 80), 2)
        assert addresses
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "ran"), 2) == "ran"
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
