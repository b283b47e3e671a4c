"""Client-wide limits: requests in flight and requests per second."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

__all__ = ["Limits", "RateLimiter", "SharedLimit"]


class SharedLimit(Protocol):
    """A rate limit a client can use: ``await acquire()`` before each request."""

    async def acquire(self) -> None: ...


class RateLimiter:
    """Spaces requests ``1/rate`` seconds apart: smooth, no bursts, shared by all callers.

    Each caller reserves the next free slot and sleeps until it comes, so the rate is met
    exactly when there is work and never exceeded. (aiolimiter's leaky bucket lets a full
    second's worth through at once, and cannot be driven by an injected clock in tests.)
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        if not rate > 0:
            raise ValueError(
                f"rate_limit must be a positive number of requests per second, not {rate!r}"
            )
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")

    async def acquire(self) -> None:
        """Wait for this caller's slot; a caller cancelled while waiting gives it back."""
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            try:
                await self._sleep(slot - now)
            except asyncio.CancelledError:
                # Unless a later caller reserved a slot after this one, the next caller takes
                # this slot: a hundred timed-out waits must not push the next call 10 s out.
                # (A slot in the middle of the queue is lost: the rate is under-used for one
                # interval, never exceeded.)
                if self._next == slot + self.interval:
                    self._next = slot
                raise


class Limits:
    """``async with limits:`` holds one of ``max_concurrency`` in-flight slots, after the rate."""

    def __init__(self, max_concurrency: int, rate: SharedLimit | None) -> None:
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._rate = rate

    async def acquire(self) -> None:
        """Wait for a slot, then for the rate; :meth:`release` gives the slot back."""
        await self._semaphore.acquire()
        if self._rate is not None:
            try:
                await self._rate.acquire()
            except BaseException:
                self._semaphore.release()
                raise

    def release(self) -> None:
        """Give back the slot :meth:`acquire` took (synchronous: no coroutine on every call)."""
        self._semaphore.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
