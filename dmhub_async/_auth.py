"""Access tokens: fetch, cache, share and refresh them, once per flight.

The service keeps one active token per appid: fetching a new one revokes the last
(CONTRACT.md, "Transport and authentication"). So every client that shares an appid must share
one token through a :class:`TokenStore`, and a refresh must happen once however many callers
find the token refused at the same moment (single flight).
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import filelock

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "FileTokenStore",
    "MemoryTokenStore",
    "RedisTokenStore",
    "Token",
    "TokenManager",
    "TokenStore",
]


@attrs.frozen
class Token:
    """An access token and the wall-clock time (epoch seconds) it expires at."""

    value: str = attrs.field(repr=False)
    expires_at: float

    def to_json(self) -> dict[str, Any]:
        """The token as a JSON-safe mapping, for stores."""
        return {"access_token": self.value, "expires_at": self.expires_at}

    @classmethod
    def from_json(cls, data: Any) -> Token | None:
        """A token read back from a store, or None when the entry is unusable."""
        try:
            return cls(str(data["access_token"]), float(data["expires_at"]))
        except (KeyError, TypeError, ValueError):
            return None


@runtime_checkable
class TokenStore(Protocol):
    """Where clients that share an appid keep their one token."""

    async def get(self, key: str) -> Token | None:
        """The stored token for ``key``, or None."""

    async def set(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key``."""

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """A lock that one refresher holds while it fetches a new token for ``key``."""


class _LoopLocks:
    """asyncio locks by key, one set per event loop (a lock is bound to the loop that uses it)."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()

    def get(self, key: str) -> asyncio.Lock:
        locks = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        lock = locks.get(key)
        if lock is None:
            lock = locks[key] = asyncio.Lock()
        return lock


class MemoryTokenStore:
    """Tokens in this process's memory: the default, shared by every client of the process."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._locks = _LoopLocks()

    async def get(self, key: str) -> Token | None:
        """The stored token for ``key``, or None."""
        return self._tokens.get(key)

    async def set(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key``."""
        self._tokens[key] = token

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """An asyncio lock for ``key`` in the running loop."""
        return _hold(self._locks.get(key))

    def __repr__(self) -> str:
        return f"MemoryTokenStore(keys={len(self._tokens)})"


@asynccontextmanager
async def _hold(lock: asyncio.Lock) -> AsyncIterator[None]:
    async with lock:
        yield


DEFAULT_STORE = MemoryTokenStore()


class FileTokenStore:
    """Tokens in a JSON file (mode 0600), file-locked: processes on one machine share them."""

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 60.0) -> None:
        self.path = Path(path)
        self._file_lock = filelock.AsyncFileLock(
            str(self.path) + ".lock", timeout=lock_timeout, thread_local=False
        )
        self._locks = _LoopLocks()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.path)

    async def get(self, key: str) -> Token | None:
        """The stored token for ``key``, or None."""
        return Token.from_json(self._read().get(key))

    async def set(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key`` (callers hold :meth:`lock`)."""
        data = self._read()
        data[key] = token.to_json()
        self._write(data)

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """This process's lock for ``key``, then the file lock that other processes see."""
        async with self._locks.get(key), self._file_lock:
            yield

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"


class RedisTokenStore:
    """Tokens in Redis, with a Redis lock: processes on many machines share them.

    Needs the ``redis`` extra (``pip install 'dmhub-async[redis]'``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        prefix: str = "dmhub_async:token:",
        lock_timeout: float = 60.0,
    ) -> None:
        if client is None:
            if url is None:
                raise ValueError("RedisTokenStore needs a url or a client")
            from redis.asyncio import Redis

            client = Redis.from_url(url)
        self._redis = client
        self._prefix = prefix
        self._lock_timeout = lock_timeout

    async def get(self, key: str) -> Token | None:
        """The stored token for ``key``, or None."""
        raw = await self._redis.get(self._prefix + key)
        if raw is None:
            return None
        try:
            return Token.from_json(json.loads(raw))
        except ValueError:
            return None

    async def set(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key``; Redis drops it when it expires."""
        await self._redis.set(self._prefix + key, json.dumps(token.to_json()), ex=7200)

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """A Redis lock on ``key`` that expires on its own should its holder die."""
        async with self._redis.lock(
            self._prefix + key + ":lock",
            timeout=self._lock_timeout,
            blocking_timeout=self._lock_timeout,
        ):
            yield

    async def aclose(self) -> None:
        """Close the Redis connection pool."""
        await self._redis.aclose()

    def __repr__(self) -> str:
        return f"RedisTokenStore(prefix={self._prefix!r})"


class TokenManager:
    """One client's view of its appid's token: cached, refreshed ahead of expiry, single flight."""

    def __init__(
        self,
        key: str,
        store: TokenStore,
        fetch: Callable[[], Awaitable[Token]],
        clock: Callable[[], float],
        *,
        refresh_margin: float = 300.0,
    ) -> None:
        self._key = key
        self._store = store
        self._fetch = fetch
        self._clock = clock
        self._margin = refresh_margin
        self._flight: asyncio.Future[str] | None = None

    def _fresh(self, token: Token | None) -> bool:
        return token is not None and self._clock() < token.expires_at - self._margin

    async def token(self) -> str:
        """A token that is valid for at least the refresh margin."""
        token = await self._store.get(self._key)
        if token is not None and self._fresh(token):
            return token.value
        return await self.refresh(stale=token.value if token else None)

    async def refresh(self, stale: str | None) -> str:
        """A token other than ``stale``: one fetch however many callers ask at once."""
        if self._flight is None:
            self._flight = asyncio.ensure_future(self._refresh(stale))
            self._flight.add_done_callback(self._land)
        # shield: one caller's cancellation must not cancel the fetch the others wait on.
        return await asyncio.shield(self._flight)

    def _land(self, flight: asyncio.Future[str]) -> None:
        if self._flight is flight:
            self._flight = None
        if not flight.cancelled():
            flight.exception()  # mark retrieved: every waiter has seen it already

    async def _refresh(self, stale: str | None) -> str:
        async with self._store.lock(self._key):
            # Another client or process may have refreshed while we waited for the lock.
            token = await self._store.get(self._key)
            if token is not None and token.value != stale and self._fresh(token):
                return token.value
            token = await self._fetch()
            await self._store.set(self._key, token)
            return token.value
