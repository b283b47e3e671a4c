"""Where clients that share an appid keep its one token: the protocol, memory and Redis.

The file store is in ``_token_file.py``.

A store only keeps tokens and lends a lock; when to use it is :class:`~dmhub_async._auth.
TokenManager`'s business. Every store error is a :class:`TokenStoreError` naming the store,
never a raw OS or Redis exception (docs/reliability.md, "Token stores").
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

import attrs
from typing_extensions import Self

from ._exceptions import (
    NO_DNS_ANSWER,
    NO_PROXY_CONNECTION,
    THROUGH_PROXY,
    InvalidRequestError,
    TokenStoreError,
)
from ._redact import no_colon_hint, redact, redis_secret
from ._redis_send import (
    redis_refusal,
    redis_words,
    redis_words_shown,
    require_redis_extra,
    sending_cancellably,
    start_without_password,
)
from ._validate import (
    PERCENT_ENCODE,
    REDIS_MAX_SECONDS,
    check_number,
    check_redis_options,
    check_text,
    password_misread,
    redis_url_error,
    sendable_token,
    settings_forgotten_if_refused,
    shown_even_half_made,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.lock import Lock as RedisLock

__all__ = [
    "DEFAULT_STORE",
    "MemoryTokenStore",
    "RedisTokenStore",
    "Token",
    "TokenStore",
]

log = logging.getLogger("dmhub_async")

#: How long a token lives when the service does not say (docs/contract.md: 7200 s).
DEFAULT_LIFETIME = 7200.0


@attrs.frozen
class Token:
    """An access token, the epoch second it expires at, and (when known) when it was issued."""

    value: str = attrs.field(repr=False)
    expires_at: float
    issued_at: float | None = None

    @property
    def lifetime(self) -> float | None:
        """Seconds from issue to expiry, when the issue time is known."""
        return None if self.issued_at is None else self.expires_at - self.issued_at

    def to_json(self) -> dict[str, Any]:
        """The token as a JSON-safe mapping, for stores."""
        data: dict[str, Any] = {"access_token": self.value, "expires_at": self.expires_at}
        if self.issued_at is not None:
            data["issued_at"] = self.issued_at
        return data

    @classmethod
    def from_json(cls, data: Any) -> Token | None:
        """A token read back from a store, or None when the entry is unusable."""
        try:
            value = data["access_token"]
            issued = data.get("issued_at")
            expires_at = float(data["expires_at"])
            issued_at = None if issued is None else float(issued)
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
            # OverflowError: an integer no float holds. Raised, it failed every read of the
            # store, which was then never written again: each process fetched a token of its
            # own on every refusal, revoking the others', for as long as they ran.
            return None
        # Checked as a token from the service is (read_token): one too long for a URL failed
        # every call with HTTP 400 and, as no call was refused, was never replaced; a control
        # character, an empty value or a list str()-ed was sent, and the call refused.
        if not sendable_token(value) or not math.isfinite(expires_at):
            return None
        if issued_at is not None and not math.isfinite(issued_at):
            return None
        return cls(value, expires_at, issued_at)


@attrs.frozen
class FetchFailure:
    """A token fetch that failed after its retries, as a store keeps it beside the token, so
    that the other clients sharing it raise the same error at once instead of each running a
    whole backoff of its own against a token endpoint that is down (``TokenManager``).

    ``error`` names the error's class (one of :data:`SHARED_FAILURES`), ``status`` and
    ``code`` are an :class:`~dmhub_async.APIError`'s; ``failed_at`` and ``until`` are epoch
    seconds. Never the error's message: nothing the service or a proxy wrote is kept.
    ``hint``: what a fetch that got no connection met, by its name in :data:`FAILURE_HINTS`
    (the DNS server gave no answer), else None: the clients it holds say it as the fetch did.
    """

    error: str
    status: int | None
    code: int | None
    failed_at: float
    until: float
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-safe mapping, for stores."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> FetchFailure | None:
        """A record read back from a store, or None when the entry is unusable."""
        try:
            error, status, code = data["error"], data["status"], data["code"]
            failed_at, until = float(data["failed_at"]), float(data["until"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        # A kind that is no text (a list, an object) is none: it was looked up in a frozenset,
        # TypeError (unhashable) out of the store's get_failure.
        if not isinstance(error, str) or error not in SHARED_FAILURES:
            return None
        if not math.isfinite(failed_at + until):
            return None
        if not all(n is None or (type(n) is int and abs(n) < 10**9) for n in (status, code)):
            return None
        hint = data.get("hint") if isinstance(data, dict) else None  # none of older releases
        if not isinstance(hint, str) or hint not in FAILURE_HINTS:
            hint = None
        return cls(error, status, code, failed_at, until, hint)


#: The failures of a token fetch that a store records: those the retries met (the service
#: failing or throttling, no answer, garbage), never refused credentials or a local error.
SHARED_FAILURES = frozenset(
    {
        "ServerError",
        "RateLimitError",
        "ResponseDecodeError",
        "APIConnectionError",
        "APITimeoutError",
    }
)


#: What a token fetch that got no connection met, by the name a :class:`FetchFailure` keeps,
#: and how its error's ``_hint`` begins: said again by the clients the failure holds (they said
#: "no answer" alone, and the command line blamed the base URL of a DNS server down).
FAILURE_HINTS = {
    "no_dns_answer": NO_DNS_ANSWER,
    "no_proxy_connection": NO_PROXY_CONNECTION,
    "through_proxy": THROUGH_PROXY,
}


@runtime_checkable
class TokenStore(Protocol):
    """Where clients that share an appid keep their one token."""

    async def get(self, key: str) -> Token | None:
        """The stored token for ``key``, or None."""

    async def set(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key``."""

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """A lock that one refresher holds while it fetches a new token for ``key``."""


class RecordsFetchFailures(Protocol):
    """What a store may do besides :class:`TokenStore`'s own: keep a :class:`FetchFailure` beside
    a key's token. Optional: a store without it works as before, each client running its own
    backoff when the token endpoint is down. The memory, file and Redis stores have it. Found
    by its two methods (``TokenManager``), not by ``isinstance``: that costs some 4 us a check."""

    async def get_failure(self, key: str) -> FetchFailure | None:
        """The failure recorded for ``key``, or None."""

    async def set_failure(self, key: str, failure: FetchFailure) -> None:
        """Record ``failure`` for ``key`` (callers hold :meth:`TokenStore.lock`)."""


K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")


def loop_table(
    tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[K, V]],
    loop: asyncio.AbstractEventLoop,
) -> dict[K, V]:
    """``loop``'s own table in ``tables``, made on its first use.

    A closed loop's table is dropped then: its asyncio locks refer to their loop once a caller
    waited on one, so the weak key never died and every ``asyncio.run()`` whose callers met at
    a lock stayed in memory for the life of the process (some 7 KB each). Here a loop is let
    go when the next new loop comes.
    """
    table = tables.get(loop)
    if table is None:
        drop_closed_loops(tables)
        table = tables[loop] = {}
    return table


def drop_closed_loops(tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]) -> None:
    """Forget what ``tables`` keeps for loops now closed (see :func:`loop_table`)."""
    for closed in [other for other in tables if other.is_closed()]:
        del tables[closed]


class PerLoop(Generic[V]):
    """One ``V`` (a Redis connection pool and what uses it) for each event loop of the process,
    made at its first use on a loop and closed as that loop ends.

    redis.asyncio's connections and its pool's lock belong to the loop that opened them. A
    store or limiter made once (at import, in a service's settings) and used by each
    ``asyncio.run()`` of a job scheduler, or by threads each running their own loop, failed
    in every loop but the first (RuntimeError: "attached to a different loop", "Event loop is
    closed"), or waited until the client's timeout; the token store's clients then fetched
    tokens of their own, revoking the others'.

    A loop's ``V`` is closed by an async generator of that loop, which ``asyncio.run()`` (and
    any loop's ``shutdown_asyncgens()``) closes as it ends; a loop closed without it has its
    ``V`` let go when the next loop comes, as :func:`loop_table` does.
    """

    def __init__(self, make: Callable[[], V], close: Callable[[V], Awaitable[None]]) -> None:
        self._make = make
        self._close = close
        self._reset()
        _ALL_PER_LOOP.add(self)

    def _reset(self) -> None:
        self._guard = threading.Lock()
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[V, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()

    async def get(self) -> V:
        """The running loop's ``V``, made now if it has none."""
        loop = asyncio.get_running_loop()
        made = self._by_loop.get(loop)
        if made is not None:
            return made[0]
        value = self._make()
        closer = self._close_at_loop_end(value)
        # It runs to its yield at once (nothing before it awaits), and is the loop's to close.
        await closer.__anext__()
        with self._guard:
            drop_closed_loops(self._by_loop)
            self._by_loop[loop] = (value, closer)
        return value

    async def _close_at_loop_end(self, value: V) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            try:
                await self._close(value)
            except Exception as err:  # a close that fails leaves its connections to the GC
                log.debug("closing the Redis connections of an event loop failed: %r", err)

    async def aclose(self) -> None:
        """Close the running loop's ``V`` now (another loop's closes as that loop ends)."""
        with self._guard:
            made = self._by_loop.pop(asyncio.get_running_loop(), None)
        if made is not None:
            await made[1].aclose()


class ProcessLocks:
    """Locks by key for the whole process: every event loop of it (threads each running
    ``asyncio.run()``), not only one.

    An asyncio lock is bound to one loop: clients on loops of their own each took their own
    lock and fetched a token each, revoking the others' (8 threads: 9 to 17 tokens, calls
    failed). Here a loop's callers queue on its asyncio lock, and the one at the head takes the
    key's thread lock, polled so that waiting never blocks its loop.
    """

    def __init__(self) -> None:
        self._reset()
        _ALL_PROCESS_LOCKS.add(self)

    def _reset(self) -> None:
        self._guard = threading.Lock()
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()
        self._threads: dict[str, threading.Lock] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """``key``'s lock, held by this task alone in the process."""
        loop = asyncio.get_running_loop()
        with self._guard:
            in_loop = loop_table(self._by_loop, loop).setdefault(key, asyncio.Lock())
            in_process = self._threads.setdefault(key, threading.Lock())
        async with in_loop:
            # (An asyncio.Event cannot wake it: the holder may run on another loop.)
            while not in_process.acquire(blocking=False):  # noqa: ASYNC110 - see above
                await asyncio.sleep(_THREAD_LOCK_POLL)
            try:
                yield
            finally:
                in_process.release()


#: Seconds between tries of a lock a client on another event loop holds (a token fetch).
_THREAD_LOCK_POLL = 0.005

_ALL_PROCESS_LOCKS: weakref.WeakSet[ProcessLocks] = weakref.WeakSet()
_ALL_PER_LOOP: weakref.WeakSet[PerLoop[Any]] = weakref.WeakSet()


def _reset_after_fork() -> None:
    """In a forked child, every store's locks (and Redis connections) start anew: a lock one
    of the parent's threads held when the process forked was copied held, by a thread the child
    does not have, and the child's every refresh waited the whole lock wait (330 s by default),
    then fetched a token of its own, revoking the others'."""
    for locks in list(_ALL_PROCESS_LOCKS):
        locks._reset()
    # The parent's connections are the parent's: a child that used them would share a
    # socket with it (and with its siblings). Left to the GC, which closes only the child's
    # copies of them.
    for per_loop in list(_ALL_PER_LOOP):
        per_loop._reset()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reset_after_fork)


class MemoryTokenStore:
    """Tokens in this process's memory: the default, shared by every client of the process,
    on any of its event loops (threads)."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._failures: dict[str, FetchFailure] = {}
        self._locks = ProcessLocks()

    async def get(self, key: str) -> Token | None:
        """The stored token for ``key``, or None."""
        return self._tokens.get(key)

    async def set(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key``."""
        self._tokens[key] = token
        self._failures.pop(key, None)

    async def get_failure(self, key: str) -> FetchFailure | None:
        """The failed fetch recorded for ``key``, or None."""
        return self._failures.get(key)

    async def set_failure(self, key: str, failure: FetchFailure) -> None:
        """Record a failed fetch for ``key``."""
        self._failures[key] = failure

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """The process's lock for ``key``, whatever event loop the caller runs on."""
        return self._locks.hold(key)

    def __repr__(self) -> str:
        return f"MemoryTokenStore(keys={len(self._tokens)})"


DEFAULT_STORE = MemoryTokenStore()


_REDIS_SCHEMES = ("redis", "rediss", "unix")
#: Seconds between redis-py's tries of a lock another holds (its ``Lock(sleep=0.1)``).
_REDIS_LOCK_POLL = 0.1
#: The suffix of the Redis key of a key's failed fetch (the lock's is ``:lock``).
_FAILED = ":failed"


async def _close_redis(client: Redis) -> None:
    await client.aclose()


def _check_async_client(client: object) -> None:
    """A ``redis.asyncio`` client, or InvalidRequestError: a sync ``redis.Redis`` (or anything
    else) failed at the first call, and the client went on without the store.

    A cluster's client (``RedisCluster``: a lock, but no one Redis's connection pool) was
    taken, and every token fetch raised a raw AttributeError out of the call (the store's
    repr in its own error), where the transaction the store writes a token in could never run.
    """
    import redis

    if (
        isinstance(client, redis.Redis)
        or not callable(getattr(client, "lock", None))
        or not hasattr(client, "connection_pool")
    ):
        cluster = "RedisCluster" in type(client).__name__
        raise InvalidRequestError(
            f"client must be a redis.asyncio.Redis, not {type(client).__module__}."
            f"{type(client).__qualname__}"
            + (
                ": the store writes a token and its record in one transaction, which a"
                " cluster's client cannot send; give it a Redis that is not a cluster (a client"
                " of one, or its redis:// URL)"
                if cluster
                else ""
            )
        )


#: The characters of what Redis said kept in a store's error, as of a service's description:
#: a Redis (a proxy, another service on its port) refusing with a megabyte of words put them
#: all in the error, every log line of it, masked whole each time.
_SAID_TEXT = 1000
#: The characters of what Redis said masked, of which ``_SAID_TEXT`` are said.
_MASKED_TEXT = 4096

#: The start of ``RedisTokenStore``'s keys, unless told another (``prefix``).
REDIS_TOKEN_PREFIX = "dmhub_async:token:"


class RedisTokenStore:
    """Tokens in Redis, with a Redis lock: processes on many machines share them.

    The lock lives ``lock_ttl`` seconds and is extended while its holder fetches, so it outlives
    a fetch however long its retries take, and frees itself soon after a holder that died.
    ``lock_timeout`` bounds the wait for it; None (the default) sets no bound of the store's
    own: a client waits as long as the holder's token fetch may take, retries included (a fixed
    60 s sent every waiting process to fetch its own token, revoking the others', once a slow
    token answer was retried past a minute). Needs the ``redis`` extra
    (``pip install 'dmhub-async[redis]'``).

    Who closes what: a store made from a ``url`` owns its connections, and :meth:`aclose` (or
    ``async with``) closes them; a ``client`` passed in stays its caller's to close. A
    :class:`~dmhub_async.DMHubClient` never closes the store it is given, since other clients may
    share it.
    """

    @settings_forgotten_if_refused
    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        prefix: str = REDIS_TOKEN_PREFIX,
        lock_timeout: float | None = None,
        lock_ttl: float = 10.0,
        socket_timeout: float = 10.0,
    ) -> None:
        seconds = "a number of seconds"
        if lock_timeout is not None:
            check_number("lock_timeout", lock_timeout, 0, inclusive=True, finite=True, what=seconds)
        # At most what Redis keeps: it would refuse the lock, and every fetch go unshared.
        kept = "a number of seconds Redis can keep"
        check_number("lock_ttl", lock_ttl, 0, inclusive=False, high=REDIS_MAX_SECONDS, what=kept)
        check_number(
            "socket_timeout", socket_timeout, 0, inclusive=False, finite=True, what=seconds
        )
        # A prefix Redis cannot take failed every call: each client then fetched its own token,
        # revoking the others' (the store's whole point).
        if not isinstance(prefix, str):
            raise InvalidRequestError(f"prefix must be a str, not {type(prefix).__name__}")
        check_text("RedisTokenStore", "prefix", prefix)
        if client is None:
            if url is None:
                raise InvalidRequestError("RedisTokenStore needs a url or a client")
            if not isinstance(url, str) or urlsplit(url).scheme not in _REDIS_SCHEMES:
                # Never the URL itself in the message: it may hold the password.
                raise InvalidRequestError(
                    "RedisTokenStore needs a redis://, rediss:// or unix:// URL"
                )
            require_redis_extra("RedisTokenStore", "redis", "redis.asyncio")
            from redis.asyncio import Redis

            def connect() -> Redis:
                made: Redis = Redis.from_url(
                    url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
                )
                # A caller's cancel (its request's timeout) as a command is sent: not dropped.
                sending_cancellably(made.connection_pool)
                return made

            try:
                client = connect()  # never connected: the settings, for checks and repr
            except ValueError as err:
                raise redis_url_error("RedisTokenStore", url, err) from None
            check_redis_options("RedisTokenStore", url, client.connection_pool)
            # A password cut short by a "/" (not percent-encoded): its start is read as the
            # port, which the repr and redis-py's words named ("None:45123", "connecting to
            # localhost:45123"): neither is said.
            misread = password_misread(url)
            # Connections of each event loop's own (PerLoop): a store made once serves a job
            # scheduler's every asyncio.run(), and threads each running their own loop.
            self._per_loop: PerLoop[Redis] | None = PerLoop(connect, _close_redis)
        else:
            _check_async_client(client)
            self._per_loop = None
            misread = False
        self._misread = misread
        self._redis = client
        self._prefix = prefix
        self._lock_timeout = lock_timeout
        self._lock_ttl = lock_ttl
        #: Whether Redis has run the lock's scripts for this store (see :meth:`_check_scripts`).
        self._scripts_run = False

    async def _client(self) -> Redis:
        """The client of the running event loop: the one passed in, or this loop's own."""
        return self._redis if self._per_loop is None else await self._per_loop.get()

    def _error(self, doing: str, err: Exception) -> TokenStoreError:
        if isinstance(err, RuntimeError) and "loop" in str(err) and self._per_loop is None:
            # redis.asyncio's "Event loop is closed", "attached to a different loop": said so
            # (a raw RuntimeError, logged as "failed: RuntimeError", said nothing of why).
            return TokenStoreError(
                f"{self!r}: {doing} failed: the redis client given as client= belongs to another "
                "event loop (an earlier asyncio.run(), another thread's), whose connections it "
                "holds: make it in this loop, or give the store a URL, RedisTokenStore(url), "
                "which opens connections of each event loop's own",
                store=repr(self),
            )
        from redis.exceptions import (
            AuthenticationError,
            AuthenticationWrongNumberOfArgsError,
            InvalidResponse,
            NoPermissionError,
            ResponseError,
        )

        # A refusal over a unix socket, as over TCP: a client given (client=) has redis-py's
        # own connections, not the SDK's (see redis_refusal).
        err = redis_refusal(err)

        # Redis's words, not redis-py's for a command of a pipeline (the token's write is a
        # transaction), which quoted the command with every argument: the token's key and
        # record; and they may quote the password sent (see start_without_password).
        # Its start alone (a megabyte of quotes took seconds to look for the password in),
        # masked before it is cut to what is said (a secret cut at the edge is no longer known).
        words = redis_words(err)
        said = start_without_password(words, self._password(), _MASKED_TEXT)
        if len(said) > _SAID_TEXT or len(words) > _MASKED_TEXT:
            said = redact(said)[:_SAID_TEXT] + "..."
        message = f"{self!r}: {doing} failed: {type(err).__name__}: {said}"
        if self._misread:
            message = f"{self!r}: {doing} failed: {type(err).__name__}: {PERCENT_ENCODE}"
        # Refused for good (a password missing or wrong, an ACL user without the commands, a
        # database the server does not have): an error to fix. Taken for an outage, each
        # process fetched a token of its own on every refusal, revoking the others' (4
        # processes, 3 s: 181 tokens).
        refused = (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError)
        if isinstance(err, refused) or said.startswith("DB index is out of range"):
            if isinstance(err, AuthenticationError):
                message += no_colon_hint(self._password())
            message += (
                "; no process can share a token through it: give the store a user, password"
                " and database that Redis takes"
            )
            return TokenStoreError(message, store=repr(self), unsafe=True)
        if isinstance(err, ResponseError) and "unknown command" in said.lower():
            # Disabled or renamed (EVAL and EVALSHA, as hardening guides advise), or a proxy
            # that lacks it: taken for an outage, each process fetched a token of its own on
            # every refusal, revoking the others' (two clients taking turns: a token a call).
            message += (
                "; Redis does not know that command (disabled, renamed, or a proxy without it):"
                " no process can share a token through it: give the store a Redis that runs"
                " GET, SET, MULTI and scripts (EVALSHA)"
            )
            return TokenStoreError(message, store=repr(self), unsafe=True)
        if isinstance(err, InvalidResponse):
            # Another service on that port (a web server, a port mistyped): taken for an
            # outage, each process fetched a token of its own on every refusal, revoking the
            # others' (two clients taking turns: a token a call).
            message += (
                "; it does not answer as a Redis does (another service on that port?): no"
                " process can share a token through it: give the store a Redis's URL"
            )
            return TokenStoreError(message, store=repr(self), unsafe=True)
        return TokenStoreError(message, store=repr(self))

    def _password(self) -> str | None:
        """The password redis-py sends (its connection pool's; see redis_secret), or None."""
        pool = getattr(self._redis, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", {})
        return redis_secret(kwargs.get("password"), kwargs.get("username"))

    def _said(self, err: BaseException) -> str:
        """What Redis (or redis-py) said of ``err``, fit to show in a log line: a Redis that
        lost AUTH (restarted with it renamed away, a proxy without it) quotes the password
        sent as the store connects again, while its lock is held."""
        return redis_words_shown(err, self._password())

    async def get(self, key: str) -> Token | None:
        """The stored token for ``key``, or None."""
        return await self._read(self._prefix + key, Token.from_json)

    async def _read(self, name: str, parse: Callable[[Any], R | None]) -> R | None:
        """``parse`` of the JSON at Redis key ``name``, or None (none there, or garbage)."""
        from redis.exceptions import RedisError, ResponseError

        try:
            raw = await (await self._client()).get(name)
        except ResponseError as err:
            if str(err).startswith("WRONGTYPE"):
                # A list, a hash... at the token's key holds no token: the next one replaces
                # it (SET takes any key). Raised, every read failed, the key was never written
                # again, and each process fetched a token of its own on every refusal.
                return None
            raise self._error("GET", err) from None
        except (RedisError, OSError, RuntimeError) as err:
            raise self._error("GET", err) from None
        if raw is None:
            return None
        try:
            return parse(json.loads(raw))
        except (ValueError, RecursionError):  # nested past the parser's depth: garbage too
            return None

    async def set(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key``; Redis drops it once it has expired."""
        from redis.exceptions import RedisError

        # As long as the token lives, counted from now (its issue was a moment ago): it was at
        # least 7,200 s, and a 300 s token stayed in Redis, expired, for almost two hours. The
        # service's default lifetime when the lifetime is unknown or out of reason (a NaN
        # failed the SET).
        lifetime = token.lifetime
        if lifetime is None or not 0 < lifetime <= REDIS_MAX_SECONDS:
            lifetime = DEFAULT_LIFETIME
        try:
            # With the failure recorded beside it gone, as the file and memory stores drop it:
            # kept to its TTL, it failed a fetch after this token's refusal with the old error.
            async with (await self._client()).pipeline(transaction=True) as both:
                both.set(self._prefix + key, json.dumps(token.to_json()), ex=math.ceil(lifetime))
                both.delete(self._prefix + key + _FAILED)
                await both.execute()
        except (RedisError, OSError, RuntimeError) as err:
            raise self._error("SET", err) from None

    async def get_failure(self, key: str) -> FetchFailure | None:
        """The failed fetch recorded for ``key``, or None: a key of its own beside the token's,
        which Redis drops when the record's hold ends."""
        return await self._read(self._prefix + key + _FAILED, FetchFailure.from_json)

    async def set_failure(self, key: str, failure: FetchFailure) -> None:
        """Record a failed fetch for ``key``, kept by Redis until the record's hold ends (by
        Redis's clock: a machine whose clock is ahead holds no other back for longer)."""
        from redis.exceptions import RedisError

        hold = max(1, math.ceil((failure.until - failure.failed_at) * 1000))
        try:
            await (await self._client()).set(
                self._prefix + key + _FAILED, json.dumps(failure.to_json()), px=hold
            )
        except (RedisError, OSError, RuntimeError) as err:
            raise self._error("SET", err) from None

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """A Redis lock on ``key``, extended while held, freed on its own should its holder die."""
        from redis.exceptions import LockError, RedisError

        name = self._prefix + key + ":lock"
        lock = (await self._client()).lock(
            name,
            timeout=self._lock_ttl,
            blocking_timeout=self._lock_timeout,
            thread_local=False,
        )
        if not self._scripts_run:
            await self._check_scripts(lock)
        # The lock's token, ours before Redis has it: a take cut short (a cancel, a timeout)
        # after Redis set the key and before its answer came left a lock nobody held, which
        # every other process waited the whole lock_ttl for.
        token = uuid.uuid4().hex.encode()
        loop = asyncio.get_running_loop()
        deadline = None if self._lock_timeout is None else loop.time() + self._lock_timeout
        try:
            acquired = await lock.acquire(token=token, blocking=False)
            if not acquired:  # another's, or a key no holder left: see _check_expires
                await self._check_expires(name)
                if deadline is None or deadline - loop.time() > _REDIS_LOCK_POLL:
                    acquired = await lock.acquire(token=token)
            if not acquired and deadline is not None:
                # redis-py gives up once its next poll (every 0.1 s) would fall past the
                # timeout: up to a poll early, and under a poll it never waited at all (0.05 s
                # was one try), each time saying "not had in" the whole of it. A last try at
                # the deadline waits as long as asked.
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                acquired = await lock.acquire(token=token, blocking=False)
        except (RedisError, OSError, RuntimeError) as err:
            await self._release_taken(lock, token)
            raise self._error("taking the lock", err) from None
        except asyncio.CancelledError:
            await self._release_taken(lock, token)
            raise
        if not acquired:  # only with a lock_timeout: without, redis-py waits until it is had
            raise TokenStoreError(
                f"{self!r}: the lock was not had in {self._lock_timeout or 0:g} s",
                store=repr(self),
            )
        keeper = asyncio.ensure_future(self._keep(lock))
        try:
            yield
        finally:
            keeper.cancel()
            try:
                await lock.release()
            except (LockError, RedisError, OSError) as err:
                # The token is fetched and stored by now: a lost lock must not fail the call.
                log.warning(
                    "%r: releasing the lock failed (%s); it expires on its own",
                    self,
                    self._said(err),
                )
            except asyncio.CancelledError:
                # Cancelled before Redis had it (its asyncio.run() ending, a timeout): the lock
                # stayed for its ttl, and every other client waited that long for a lock nobody
                # held. Released all the same, by a task of its own (asyncio.run() cancels the
                # tasks it had when it ended, not this one), waited for.
                await self._release_taken(lock, token)
                raise
            finally:
                await asyncio.wait([keeper])

    async def _check_expires(self, name: str) -> None:
        """TokenStoreError (``unsafe``) if the lock's key ``name`` never expires: every holder
        sets it with an expiry, so no client of a store left it (a copy of the data that dropped
        expiries, another program), and nobody would ever release it.

        Each client waited the whole lock wait for it (330 s by default) at every token refresh,
        for as long as the key was there, then fetched a token without the store, revoking the
        others', its WARNING saying the store "did not answer".
        """
        from redis.exceptions import NoPermissionError, ResponseError

        try:
            left = await (await self._client()).pttl(name)
        except NoPermissionError:
            return  # a user without PTTL: the wait for the lock says the rest, as before
        except ResponseError as err:
            if "unknown command" not in str(err).lower():
                raise
            # A Redis (or proxy) without PTTL, which the store does not need otherwise: it was
            # refused for good, "give the store a Redis that runs GET, SET, MULTI and scripts",
            # which it does. Waited for as before.
            return
        if left == -1:
            raise TokenStoreError(
                f"{self!r}: the lock's key {name!r} never expires, so no client left it (a copy"
                " of the data that dropped expiries, another program) and none would ever"
                " release it: delete that key",
                store=repr(self),
                unsafe=True,
            )

    async def _check_scripts(self, lock: RedisLock) -> None:
        """TokenStoreError (``unsafe``, before the lock is taken and a token fetched) if Redis
        refuses the scripts that release and extend ``lock``; once a store, as they run.

        The lock is taken with a SET, and released and extended by scripts (EVALSHA): an ACL
        user with GET and SET and no scripts took it and never released it ("releasing the lock
        failed ...; it expires on its own", a WARNING a fetch), so every token refresh of every
        process waited the lock's whole ttl for a lock nobody held, and a fetch that outlasted
        it was not kept from others' (each token revoking the one before).
        """
        from redis.exceptions import LockNotOwnedError, RedisError

        try:
            # A token nobody holds the lock with: the release script runs and releases nothing.
            await lock.do_release(b"dmhub-async:no-holder:" + uuid.uuid4().hex.encode())
        except LockNotOwnedError:
            pass  # what a release script that ran says of a lock it was not given the token of
        except (RedisError, OSError, RuntimeError) as err:
            raise self._error("taking the lock", err) from None
        self._scripts_run = True

    async def _release_taken(self, lock: RedisLock, token: bytes) -> None:
        """Release ``lock`` if Redis has it with ``token``, by a task of its own that a cancel of
        the caller's does not cut short, waited for (see :meth:`lock`'s release)."""
        await asyncio.wait([asyncio.ensure_future(self._release(lock, token))])

    async def _release(self, lock: RedisLock, token: Any) -> None:
        """Release ``lock``, held with ``token``, unless it is released already."""
        from redis.exceptions import LockError, RedisError

        try:
            await lock.do_release(token)
        except (LockError, RedisError, OSError) as err:
            log.debug("%r: releasing the lock again failed (%s)", self, self._said(err))

    async def _keep(self, lock: RedisLock) -> None:
        """Extend ``lock`` to its full ttl every third of it, until cancelled; a failed extension
        is tried again every tenth of it, until the lock is another's or gone.

        It stopped at the first failure (a Redis restarting, a failover, a connection dropped):
        the lock expired a ttl later while its holder still fetched, and another process took
        it and fetched too, each token revoking the one before.
        """
        from redis.exceptions import LockError, LockNotOwnedError, RedisError

        ttl = self._lock_ttl
        failing = False
        while True:
            await asyncio.sleep(ttl / 10 if failing else ttl / 3)
            try:
                await lock.reacquire()
            except LockNotOwnedError as err:  # expired, or taken by another: nothing to extend
                log.warning("%r: extending the lock failed (%s)", self, self._said(err))
                return
            except (LockError, RedisError, OSError) as err:
                if not failing:  # once a streak: every tenth of a ttl would flood the log
                    log.warning(
                        "%r: extending the lock failed (%s); trying again", self, self._said(err)
                    )
                failing = True
            else:
                if failing:
                    log.info("%r: the lock is extended again", self)
                failing = False

    async def aclose(self) -> None:
        """Close the connections of a store made from a URL (a ``client`` passed in is left open).

        Those of the running event loop: a store made from a URL has connections of each loop
        it is used on, and another loop's close as that loop ends (``asyncio.run()`` ends it so).
        Closing twice is fine, and the store may be used again after.
        """
        if self._per_loop is not None:
            await self._per_loop.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @shown_even_half_made
    def __repr__(self) -> str:
        if self._misread:
            return f"RedisTokenStore(the URL given, prefix={self._prefix!r})"
        kwargs = self._redis.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"RedisTokenStore({where!s}/{kwargs.get('db', 0)}, prefix={self._prefix!r})"
