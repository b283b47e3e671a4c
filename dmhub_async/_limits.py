"""Client-wide limits: requests in flight and requests per second."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ._exceptions import DMHubError, InvalidRequestError
from ._validate import check_number, short

__all__ = [
    "Closing",
    "Limits",
    "RateLimiter",
    "SharedLimit",
    "UnlessClosed",
    "cancelling",
    "client_closed",
]

T = TypeVar("T")


class SharedLimit(Protocol):
    """A rate limit a client can use: ``await acquire()`` before each request."""

    async def acquire(self) -> None: ...


def client_closed() -> DMHubError:
    """The error of a call to a closed client, or of one the close ended."""
    return DMHubError("this DMHubClient is closed: make a new one")


class Closing:
    """Ends the waits of a client's calls (a backoff, a rate turn) as soon as it is closed.

    They waited it out, then raised the closed error: a Retry-After of a minute, or a queue of
    rate turns (20 calls at 2 a second: 10 s), held a service's shutdown that long.

    A derived client's (``with_options``) has its ``parent``'s: its waits end when either
    closes, and its own close leaves the parent's calls alone.
    """

    def __init__(
        self, sleep: Callable[[float], Awaitable[None]], parent: Closing | None = None
    ) -> None:
        self._sleep = sleep
        self._parent = parent
        self._closed = False
        #: Done when the client closes; made by the first wait, in that wait's event loop.
        self._signal: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        """Whether this client, or the one it was derived from, was closed."""
        return self._closed or (self._parent is not None and self._parent.closed)

    def derive(self) -> Closing:
        """The closing of a client derived from this one."""
        return Closing(self._sleep, self)

    def close(self) -> None:
        """End every wait now, with the closed error, and every later one at once."""
        self._closed = True
        signal = self._signal
        if signal is not None and not signal.done() and not signal.get_loop().is_closed():
            signal.set_result(None)

    async def sleep(self, seconds: float) -> None:
        """``sleep(seconds)``, cut short by the close."""
        await self.wait(self._sleep(seconds))

    def _signals(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Future[None]]:
        """This closing's signal in ``loop``, and its parents'."""
        signals = []
        closing: Closing | None = self
        while closing is not None:
            signal = closing._signal
            if signal is None or signal.get_loop() is not loop:
                signal = closing._signal = loop.create_future()
            signals.append(signal)
            closing = closing._parent
        return signals

    async def wait(self, waiting: Awaitable[T]) -> T:
        """``waiting``'s result, or the closed error as soon as the client closes.

        The close cancels ``waiting`` from a callback on the closing's signals, and this caller,
        awaiting it, then raises the closed error, once ``waiting`` has cleaned up (a rate turn
        given back). Awaited directly, a finished ``waiting`` wakes the caller as a bare
        ``await`` would: ``asyncio.wait`` over it and the signals cost a turn of the event loop
        and some 40k instructions more on every wait (a short-lived client's token, 3%).
        """
        task = asyncio.ensure_future(waiting)
        if self.closed:
            task.cancel()
            raise client_closed()
        signals = self._signals(asyncio.get_running_loop())
        ended = False

        def end(_: object) -> None:
            nonlocal ended
            if not task.done():
                ended = task.cancel()

        for signal in signals:
            signal.add_done_callback(end)
        try:
            return await task
        except asyncio.CancelledError:
            task.add_done_callback(_retrieved)  # whatever it ended with, nobody will ask
            if not ended or cancelling():  # this caller's own cancellation: its, not a close
                raise
            raise client_closed() from None
        finally:
            for signal in signals:
                signal.remove_done_callback(end)


def cancelling() -> bool:
    """Whether the running task was asked to cancel (3.11+; before, no telling: no)."""
    current = asyncio.current_task()
    cancelling = getattr(current, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark ``task``'s outcome seen: an error it ended with after its caller left is no
    "Task exception was never retrieved" in the log."""
    if not task.cancelled():
        task.exception()


class UnlessClosed:
    """A shared limit (:class:`SharedLimit`) whose wait for a place the client's close ends."""

    def __init__(self, limit: SharedLimit, closing: Closing) -> None:
        self.limit = limit
        self._closing = closing

    async def acquire(self) -> None:
        """The shared limit's ``acquire()``, or the closed error as soon as the client closes.

        An ``acquire`` that returns no awaitable (a plain function) is InvalidRequestError,
        naming it, before anything is sent: asyncio's raw TypeError named nothing.
        """
        waiting = self.limit.acquire()
        if not inspect.isawaitable(waiting):
            raise InvalidRequestError(
                f"rate_limit's acquire() returned {short(waiting)}, not an awaitable: it must be"
                " an async function (async def acquire(self) -> None)"
            )
        await self._closing.wait(waiting)


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
        what = "a number of requests per second"
        check_number("rate_limit", rate, 0, inclusive=False, what=what)  # inf: no wait at all
        self.interval = 1 / rate  # not 1.0 / rate: 1.0 / 10**400 raises OverflowError
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        #: Slots given back by callers cancelled while they waited, the earliest first.
        self._free: list[float] = []
        #: The clock's last reading, and how far it has stepped back in all: slots are kept
        #: on the clock's time plus that, a timeline that never goes back.
        self._read = float("-inf")
        self._stepped_back = 0.0

    def _now(self) -> float:
        """The clock now, less its steps back so far.

        The client's clock is the wall clock (``time.time``), which NTP steps back (a VM
        restored, a laptop waking): the next slot was then that far ahead of it, and every
        request waited the step (an hour) for its turn. A step forward costs nothing: the
        next slot is now.
        """
        read = self._clock()
        if read < self._read:
            self._stepped_back += self._read - read
        self._read = read
        return read + self._stepped_back

    async def acquire(self) -> None:
        """Wait for this caller's slot; a caller cancelled while waiting gives it back."""
        now = self._now()
        free = self._free
        while free and free[0] < now:  # passed: taken now, it could follow a neighbour closely
            heapq.heappop(free)
        if free:
            slot = heapq.heappop(free)  # one of the sequence's own slots: spaced as they are
        else:
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            try:
                await self._sleep(slot - now)
            except asyncio.CancelledError:
                # The next caller takes this slot: ten calls timed out in a row (each a slot
                # before the last) pushed the next one 5 s out at 2 a second.
                if self._next == slot + self.interval:
                    self._next = slot
                else:
                    heapq.heappush(free, slot)
                raise


class Limits:
    """Holds one of ``max_concurrency`` in-flight slots (first come, first served), after the rate.

    A semaphore of its own rather than ``asyncio.Semaphore``: a free slot is taken by
    :meth:`take` without a coroutine, where the semaphore's ``acquire`` ran one and three
    calls more (``locked()``, a generator and ``any()``) on every request.
    """

    def __init__(self, max_concurrency: int, rate: SharedLimit | None) -> None:
        self._free = max_concurrency
        self._rate = rate
        #: Callers waiting for a slot, in order; a slot given back goes to the first.
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a slot at once if one is free, none is waited for and no rate applies."""
        if self._free and self._rate is None and not self._waiters:
            self._free -= 1
            return True
        return False

    def queued(self) -> bool:
        """Whether :meth:`acquire` would wait for a slot (not only for the rate)."""
        return not self._free or bool(self._waiters)

    async def acquire(self) -> None:
        """Wait for a slot, then for the rate; :meth:`release` gives the slot back."""
        if self._free and not self._waiters:
            self._free -= 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                else:  # handed a slot, then cancelled before it could use it: pass it on
                    self.release()
                raise
        if self._rate is not None:
            try:
                await self._rate.acquire()
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        """Give back the slot :meth:`take` or :meth:`acquire` took: to the first waiter if any.

        Synchronous: no coroutine on every call.
        """
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # not cancelled while it waited
                waiter.set_result(None)
                return
        self._free += 1
