"""The real redis-server of the tests (``dmhub_async.testing._redis``, which benchmarks use too),
and the check that a Redis test leaves no connection open."""

from __future__ import annotations

import contextlib
import gc
import sys
import warnings
from collections.abc import Iterator

import pytest

from dmhub_async import RedisRateLimiter, RedisTokenStore
from dmhub_async.testing._redis import (
    PORT_TRIES,
    REDIS_SERVER,
    SKIP_REASON,
    PortTaken,
    RedisServer,
    free_port,
    listened_on,
    redis_server,
    server_port,
)

__all__ = [
    "PORT_TRIES",
    "REDIS_SERVER",
    "SKIP_REASON",
    "PortTaken",
    "RedisServer",
    "collector_paused",
    "free_port",
    "leaks_collected",
    "listened_on",
    "no_leaks",
    "rate_turn",
    "redis_server",
    "server_port",
    "store_get",
]


def leaks_collected() -> list[str]:
    """Collect garbage now and say what it finalised that was left open.

    redis-py (and asyncio) warn with a ``ResourceWarning`` when a connection is finalised
    unclosed; with warnings as errors that is an exception in ``__del__``, which Python reports
    as "unraisable". Both are caught here, where pytest would report them against whichever
    test happens to be running when the collector passes.
    """
    leaks: list[str] = []

    def unraisable(args: sys.UnraisableHookArgs) -> None:
        leaks.append(f"{args.err_msg or 'Exception ignored in'}: {args.object!r}: {args.exc_value}")

    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):  # an object freed by one pass may free others in the next
                gc.collect()
    finally:
        sys.unraisablehook = hook
    return [f"{w.category.__name__}: {w.message}" for w in caught] + leaks


@contextlib.contextmanager
def collector_paused() -> Iterator[list[str]]:
    """No automatic garbage collection in the block: what it leaves in reference cycles on
    purpose (the sockets of ended event loops) is finalised at its end by ``leaks_collected()``,
    whose findings fill the list yielded, on every Python. On 3.10, whose frames are objects
    the collector counts, a pass came within such a block, or just after it, and pytest
    reported the ResourceWarning as "unraisable"; 3.11 and 3.13 passed by luck."""
    found: list[str] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield found
    finally:
        found += leaks_collected()  # before the collector is back, or its first pass finds them
        if enabled:
            gc.enable()


@contextlib.contextmanager
def no_leaks() -> Iterator[None]:
    """Fail the test if its garbage holds an unclosed connection (an autouse fixture of the
    Redis test modules wraps each test in this).

    Garbage from before the test is collected first, the usual way (pytest reports it), so
    that what is found after is this test's own; the objects left are then frozen (out of the
    collector's sight), so that the passes after the test look at its own objects alone, not
    at the whole suite's heap again (four passes a test over some 300,000 objects).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
        leaks = leaks_collected()
    finally:
        gc.unfreeze()
    if leaks:
        pytest.fail("left open by this test:\n" + "\n".join(leaks), pytrace=False)


async def store_get(url: str) -> None:
    """One read of a :class:`RedisTokenStore` at ``url``: what a token store's refusal is."""
    async with RedisTokenStore(url) as store:
        await store.get("key")


async def rate_turn(url: str) -> None:
    """One turn of a :class:`RedisRateLimiter` at ``url``: what a shared limit's refusal is."""
    limiter = RedisRateLimiter(url, 5)
    try:
        await limiter.acquire()
    finally:
        await limiter.aclose()
