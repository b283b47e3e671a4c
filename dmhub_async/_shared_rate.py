"""A rate limit shared by every client on every machine, kept in Redis by ``limits``.

``DMHubClient(rate_limit=50)`` spaces one client's requests. Workers of a fleet each have a
client, so their limits add up; :class:`RedisRateLimiter` is one limit for them all: a moving
window in Redis (the ``limits`` library's, a maintained implementation), so no second of the
limiter's clock (for a fractional rate, no window of its: 5 in 2 s for 2.5), measured from any
instant, holds more grants than the limit, whichever workers send them (at the service, arrival
times shift: docs/sharding.md). Each grant is stamped with its process's ``time.time()``, as
``limits`` does: the machines' clocks must agree (NTP), or a machine whose clock runs ahead
takes most of the turns (docs/sharding.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from ._exceptions import DMHubError, InvalidRequestError
from ._redact import no_colon_hint, redis_password
from ._redis_send import redis_words_shown, require_redis_extra, sending_cancellably
from ._token_stores import PerLoop, loop_table
from ._validate import (
    PERCENT_ENCODE,
    REDIS_MAX_SECONDS,
    check_number,
    check_redis_options,
    check_text,
    password_misread,
    redis_url_error,
    redis_where,
    settings_forgotten_if_refused,
    short,
    shown_even_half_made,
)

__all__ = ["RedisRateLimiter"]

logger = logging.getLogger("dmhub_async")

#: The longest single wait for a free place in the window; the window is re-read after it.
_MAX_WAIT = 1.0
_SPREAD = 0.02
#: The shared rates Redis can keep: a window of at most 10**15 s (past about 9.2e15 s Redis
#: refuses its expiry) and at most 10**15 requests in a second (past about 2**57 its script
#: refuses the count); beyond either, every call failed as if Redis could not be reached.
_MIN_RATE = 1 / REDIS_MAX_SECONDS
_MAX_RATE = 1e15


def check_shared_rate(name: str, rate: object) -> None:
    """A shared rate Redis can keep (see above) in a window (:func:`_window`), or
    InvalidRequestError."""
    what = "a number of requests per second Redis can keep"
    check_number(name, rate, _MIN_RATE, inclusive=True, high=_MAX_RATE, what=what)
    _window(name, float(rate))  # type: ignore[arg-type]  # a number: checked just above


_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], asyncio.Lock]]
_locks = weakref.WeakKeyDictionary()


def _lock_of(where: str, key: str) -> asyncio.Lock:
    """The lock of one shared limit in this process (and event loop)."""
    per_loop = loop_table(_locks, asyncio.get_running_loop())  # closed loops let go
    return per_loop.setdefault((where, key), asyncio.Lock())


async def _disconnect(made: tuple[Any, Any]) -> None:
    await made[0].disconnect()


#: The longest window a rate of more than one request a window is kept in: a window's worth may
#: go at once, so a longer one would let minutes of requests through in a moment.
_MAX_WINDOW = 60


def _window(name: str, rate: float) -> tuple[int, int]:
    """``rate`` requests a second as whole requests per whole seconds, exactly: 2.5/s is 5 per
    2 s, 0.3/s 3 per 10 s, 0.001/s 1 per 1000 s; or InvalidRequestError.

    ``limits`` keeps a window of whole requests in whole seconds. Rounding the count down made
    2.5 a second 2, and 0.3 one every 4 s (0.25): the shortest window that holds the rate whole
    is taken instead (to within a billionth, the float's own noise), and a rate none of up to
    60 s holds, nor one request every whole number of seconds, is refused.
    """
    for seconds in range(1, _MAX_WINDOW + 1):
        amount = round(rate * seconds)
        if amount >= 1 and math.isclose(rate * seconds, amount, rel_tol=1e-9):
            return amount, seconds
    seconds = round(1 / rate)
    if math.isclose(rate * seconds, 1, rel_tol=1e-9):
        return 1, seconds
    raise InvalidRequestError(
        f"{name} {rate:g} is not a whole number of requests in a whole number of seconds up to "
        f"{_MAX_WINDOW} (2.5: 5 in 2 s), nor one request every whole number of seconds (0.001: "
        f"1 in 1000 s), which the shared rate limit keeps: round it"
    )


class RedisRateLimiter:
    """At most ``rate`` requests a second across every client sharing ``url`` and ``key``.

    Pass it as a client's ``rate_limit``::

        limiter = RedisRateLimiter("redis://redis.internal:6379/0", 50, key=app_id)
        async with DMHubClient(rate_limit=limiter) as dm: ...

    Args:
        url: the Redis server, ``redis://[:password@]host:port/db`` (or ``rediss://``, or
            ``unix:///path/to/redis.sock?db=N``).
        rate: requests per second, shared, from 1e-15 to 1e15 (what Redis can keep): a whole
            number of requests in a whole number of seconds up to 60 (2.5: 5 in 2 s, which may
            go at once), or one request every whole number of seconds (0.001).
        key: what the limit is for: clients with the same key and the same ``rate`` share one
            limit (the app id is a good key: the service limits an app, not a process); one
            of another ``rate`` keeps a window of its own.
        timeout: seconds one Redis command may take.
        sleep: the wait between tries (``asyncio.sleep``).

    Raises:
        InvalidRequestError: a bad rate (one no such window holds too), timeout, URL, key (no
            str, or one UTF-8 cannot carry) or sleep (at once, nothing is sent).
    """

    @settings_forgotten_if_refused
    def __init__(
        self,
        url: str,
        rate: float,
        *,
        key: str = "default",
        timeout: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        check_shared_rate("rate", rate)
        check_number(
            "timeout", timeout, 0, inclusive=False, finite=True, what="a number of seconds"
        )
        # Checked here: None was taken as "None", one window for every caller whose setting
        # was unset; a lone surrogate failed each request as a Redis that "cannot be reached";
        # a sleep that is no function was a raw TypeError at the first wait.
        if not isinstance(key, str):
            raise InvalidRequestError(f"key must be a str, not {short(key)}")
        check_text("RedisRateLimiter", "key", key)
        if not callable(sleep):
            raise InvalidRequestError(f"sleep must be a function, not {short(sleep)}")
        # unix:// too: a worker's limit is on the queue's Redis, which may be a socket's (a
        # worker --redis unix://... --rate-limit stopped at its start, the URL refused).
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise InvalidRequestError(
                "the shared rate limit needs a redis://, rediss:// or unix:// URL"
            )
        needed = ("redis", "redis.asyncio", "limits", "limits.aio.storage", "limits.aio.strategies")
        require_redis_extra("RedisRateLimiter", *needed)
        from limits import RateLimitItemPerSecond
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter
        from redis.asyncio import ConnectionPool

        amount, seconds = _window("rate", float(rate))
        self.rate = float(rate)
        self._item = RateLimitItemPerSecond(amount, seconds)
        self._key = f"dmhub_async:{key}"
        self._where = redis_where(url)
        # Masked in Redis's and redis-py's words, as redis-py sends it (percent-decoded).
        self._password = redis_password(url)
        # A password cut short by a "/" (not percent-encoded): its start is read as the port,
        # which redis-py's words name ("connecting to localhost:PORT"): not said.
        self._misread = password_misread(url)
        self._retry: Any = None
        self._retry_on_error: tuple[type[BaseException], ...] = ()

        # Our own pool, so that aclose() can close it (the storage has no close of its own),
        # with timeouts: a frozen Redis must not hold a call for ever.
        def connect() -> ConnectionPool:
            waiting: dict[str, Any] = {}
            if self._retry is not None:  # a queue worker's: its commands' wait (see waiting_as)
                waiting = {"retry": self._retry, "retry_on_error": list(self._retry_on_error)}
            # A caller's cancel as a command is sent (a worker's SIGTERM): not dropped.
            pool: ConnectionPool = sending_cancellably(
                ConnectionPool.from_url(
                    url, socket_timeout=timeout, socket_connect_timeout=timeout, **waiting
                )
            )
            return pool

        def limiter() -> tuple[ConnectionPool, MovingWindowRateLimiter]:
            pool = connect()
            # The storage connects through the pool alone; its URL is read only for a host, a
            # port and a password the pool has already. Given the user's, it refused one without
            # a port (``redis://host/0``) and quoted pieces of a password holding ``@`` and ``,``
            # (or all of the URL) in a raw ConfigurationError.
            storage: Any = RedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix="dmhub_rate",
                connection_pool=pool,  # type: ignore[arg-type]  # passed on to redis-py
            )
            return pool, MovingWindowRateLimiter(storage)

        try:
            settings = connect()  # never connected: the URL's settings, checked
        except ValueError as err:
            raise redis_url_error("the shared rate limit", url, err) from None
        check_redis_options("the shared rate limit", url, settings)
        # Connections of each event loop's own (PerLoop): a limiter made once serves a job
        # scheduler's every asyncio.run(), and threads each running their own loop.
        self._per_loop = PerLoop(limiter, _disconnect)
        self._sleep = sleep

    def waiting_as(self, retry: Any, on: tuple[type[BaseException], ...]) -> None:
        """Its calls tried as ``retry`` (a redis-py ``Retry``) tries them, on the errors ``on``;
        before its first call.

        A queue worker's limiter waits for the queue's Redis as the worker's own commands do: a
        call failing at once failed every shard being exported through a 5 s restart the
        worker rode out without a rate limit. A plain client's call still fails at once.
        """
        self._retry, self._retry_on_error = retry, on

    @shown_even_half_made
    def __repr__(self) -> str:
        return f"RedisRateLimiter({self._where!r}, {self.rate:g}/s)"

    async def aclose(self) -> None:
        """Close the connections to Redis of the running event loop (another loop's close as
        that loop ends: ``asyncio.run()`` ends it so). The limiter may be used again after."""
        await self._per_loop.aclose()

    async def acquire(self) -> None:
        """Wait until one more request fits in the shared window, and take its place."""
        # One caller of this process at a time, for every limiter of the same limit: an entry
        # carries the time its caller read before the round trip, and the moving window assumes
        # entries arrive in that order. Callers racing each other add them out of order, and
        # the window lets a few too many through (23 in a second at a limit of 20).
        _, limiter = await self._per_loop.get()
        async with _lock_of(self._where, self._key):
            while not await self._call(limiter.hit, self._item, self._key):
                stats = await self._call(limiter.get_window_stats, self._item, self._key)
                # A little spread, so the clients of other processes do not all rush at the
                # instant a place frees.
                wait = stats.reset_time - time.time() + random.uniform(0, _SPREAD)
                await self._sleep(min(max(wait, 0.001), _MAX_WAIT))

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        try:
            return await method(*args)
        except Exception as err:  # redis-py's errors, whatever the version
            if isinstance(err, DMHubError):
                raise
            from redis.exceptions import AuthenticationError, ResponseError

            # Its connections are the SDK's (sending_cancellably): a refusal of a unix socket's
            # handshake comes as itself, as over TCP.
            if isinstance(err, (ResponseError, AuthenticationError)):
                # Reached, and refused: Redis's own words say what to fix (full, an ACL user
                # without EVALSHA, a database that does not exist, the password); "cannot be
                # reached" sent the user to the network. A Redis that does not know AUTH quotes
                # the password in them (see without_password).
                said = redis_words_shown(err, self._password)
                if isinstance(err, AuthenticationError):
                    said += no_colon_hint(self._password)
                raise DMHubError(
                    f"the shared rate limit at {self._where} refused the request: "
                    f"{said}: no request was sent"
                ) from None
            # Why, in redis-py's words ("Error 111 connecting to HOST:PORT", "[SSL:
            # CERTIFICATE_VERIFY_FAILED] ..."), as the queue and the token store say it: it was
            # the error's type alone, "(ConnectionError)", whatever was wrong.
            why = redis_words_shown(err, self._password).rstrip(".") or type(err).__name__
            if self._misread:
                why = PERCENT_ENCODE
            raise DMHubError(
                f"the shared rate limit at {self._where} cannot be reached "
                f"({type(err).__name__}: {why}): no request was sent"
            ) from None
