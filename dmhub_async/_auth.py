"""Access tokens: held in memory, shared through a store, refreshed once per flight.

The service keeps one active token per appid: fetching a new one revokes the last
(docs/contract.md, "Transport and authentication"). So every client that shares an appid must
share one token through a :class:`TokenStore`, and a refresh must happen once however many
callers find the token refused at the same moment (single flight). Each client holds the token
in memory and goes to the store only when it nears expiry or is refused; how a failing store is
ridden out is in docs/reliability.md, "Token stores".
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Final, TypeVar, cast
from urllib.parse import urlsplit

from . import _exceptions
from ._exceptions import (
    NO_DNS_ANSWER,
    APIConnectionError,
    APIError,
    AuthenticationError,
    DMHubError,
    InvalidRequestError,
    TokenStoreError,
)
from ._limits import cancelling, client_closed
from ._retry import RetryPolicy
from ._sansio import RETRY_AFTER_STATUSES, TOKEN_PATH, connection_hint
from ._tasks import within
from ._token_file import FileTokenStore
from ._token_stores import (
    DEFAULT_STORE,
    FAILURE_HINTS,
    SHARED_FAILURES,
    FetchFailure,
    MemoryTokenStore,
    RecordsFetchFailures,
    RedisTokenStore,
    Token,
    TokenStore,
)
from ._validate import sendable_token

if TYPE_CHECKING:
    from ._limits import Closing

__all__ = [
    "DEFAULT_STORE",
    "FileTokenStore",
    "MemoryTokenStore",
    "RedisTokenStore",
    "Token",
    "TokenManager",
    "TokenStore",
    "legacy_token_key",
    "token_key",
]

log = logging.getLogger("dmhub_async")
T = TypeVar("T")

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: The refresh margin is at most this share of a token's lifetime (a 300 s token: 75 s).
MARGIN_SHARE = 0.25
#: After a refresh ahead of expiry failed (the store or the token endpoint), a client that still
#: holds a valid token tries again only after this share of the refresh margin, so that a down
#: or frozen store costs one wait, not one a call.
RENEW_PAUSE_SHARE = 0.1
#: The longest a failed token fetch recorded in the store holds the other clients back (the
#: default ``retry_after_cap``): a record that claims more (a clock far ahead) is not believed.
MAX_FAILURE_HOLD = 60.0


def normalise_base_url(base_url: str) -> str:
    """``scheme://host[:port]/path`` in one spelling: lower case, no default port, no end slash.

    Only the spelling: two host names of one service (``localhost`` and ``127.0.0.1``) stay two.
    """
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""  # lower case, IPv6 brackets off
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        raise InvalidRequestError(f"base_url has a bad port: {base_url!r}") from None
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def secret_fingerprint(app_id: str, secret: str) -> str:
    """A one-way fingerprint of the secret: tells secrets apart, reveals nothing of them."""
    digest = hashlib.sha256(b"dmhub_async token key\0%s\0%s" % (app_id.encode(), secret.encode()))
    return digest.hexdigest()[:16]


def token_key(base_url: str, app_id: str, secret: str) -> str:
    """The store key of an appid's token: the normalised base URL, the appid, the fingerprint.

    A client with a wrong secret gets a key of its own, so it fetches (and fails) instead of
    using the token that the right secret obtained.
    """
    return f"{normalise_base_url(base_url)}|{app_id}|{secret_fingerprint(app_id, secret)}"


def legacy_token_key(base_url: str, app_id: str) -> str:
    """The key dmhub-async 0.1 kept an appid's token under: the base URL as given (less a
    final ``/``) and the appid.

    A token this version fetches is written there too (:class:`TokenManager`'s
    ``mirror_keys``), so that 0.1 processes sharing the store take it after a refusal instead
    of fetching their own, which revoked this version's, which fetched again, and so on for
    every call while both ran (a rolling upgrade). Only written, never read: a token found
    there carries no fingerprint of the secret that fetched it.
    """
    return f"{base_url.rstrip('/')}|{app_id}"


async def _waited(flight: asyncio.Future[str], closing: Closing | None) -> str:
    """``flight``'s token, shielded: one caller's cancellation, or its client's close (which
    ends this wait at once), must not cancel the fetch the others wait on.

    The close ends the wait through ``closing`` here, on the shield itself: wrapping the whole
    refresh instead cost a task and an ``asyncio.wait`` a refresh (130k instructions, 5% of a
    short-lived client's call).
    """
    if closing is None:
        return await asyncio.shield(flight)
    try:
        return await closing.wait(asyncio.shield(flight))
    except asyncio.CancelledError:
        if flight.cancelled() and closing.closed and not cancelling():
            # The close stopped the fetch (TokenManager.stop) before its signal reached this
            # wait: the caller was not cancelled, its client was closed.
            raise client_closed() from None
        raise


class TokenManager:
    """One client's token: held in memory, shared through the store, refreshed single flight.

    ``timeout`` bounds every store call (get, set, taking and releasing the lock). A store that
    fails or is too slow, or a refresh ahead of expiry that fails, never fails a call while a valid
    token is held (the call goes on with it); with no valid token the client fetches one without
    the store and logs a WARNING (docs/reliability.md, "Token stores"). A store that is unsafe to
    use is an error.
    """

    def __init__(
        self,
        key: str,
        store: TokenStore,
        fetch: Callable[[], Awaitable[Token]],
        clock: Callable[[], float],
        *,
        refresh_margin: float = 300.0,
        timeout: float = 30.0,
        lock_wait: float | None = None,
        mirror_keys: tuple[str, ...] = (),
    ) -> None:
        self._key = key
        #: Keys a token this manager fetches is also written under (:func:`legacy_token_key`).
        self._mirror_keys = mirror_keys
        #: How long to wait for the store's lock: another client's whole fetch, retries
        #: included (it was one attempt's ``timeout``: a token answer slow enough to be retried
        #: sent every waiter to fetch its own, revoking the others', on a healthy store).
        self._lock_wait = timeout if lock_wait is None else max(timeout, lock_wait)
        self._store = store
        self._fetch = fetch
        self._clock = clock
        self._max_margin = refresh_margin
        self._timeout = timeout
        self._held: Token | None = None
        #: When the held token stops being fresh (``_fresh``), worked out once, when it is set.
        self._fresh_until = float("-inf")
        self._renew_paused_until = float("-inf")
        self._flight: asyncio.Future[str] | None = None
        #: The fetch in flight has asked for its token: a close waits for it to be stored.
        self._fetching = False
        #: ... and has it: only its writes to the store are left (see ended()).
        self._fetched = False
        #: How the fetch in flight makes its token (the fetch of the client that started it).
        self._flight_fetch: Callable[[], Awaitable[Token]] = fetch
        #: The held token was fetched without the store (it failed), or the store did not take
        #: it: the store's may be older.
        self._unshared = False
        #: ... and the store answered, and did not take it (refused its lock or its write: a
        #: Redis full under noeviction): a store that holds no token after a refusal keeps none,
        #: and lost none (:meth:`taken_since`).
        self._unkept = False
        #: The store answered the read of the fetch in flight (``_shared``), and its write did
        #: not go unanswered.
        self._store_read = False
        #: The failed fetch this manager last recorded in the store: its own callers (a
        #: ``with_options`` client's retries) are not held back by it.
        self._recorded: FetchFailure | None = None
        #: The store, if it keeps failed fetches' records (:class:`RecordsFetchFailures`), else
        #: None: found once, by its methods (``isinstance`` of a runtime protocol cost some 4 us,
        #: about 40k instructions, on each token fetched: bench_instructions --question 4s).
        self._failures: RecordsFetchFailures | None = (
            cast("RecordsFetchFailures", store)
            if callable(getattr(store, "get_failure", None))
            and callable(getattr(store, "set_failure", None))
            else None
        )

    def _margin(self, token: Token) -> float:
        lifetime = token.lifetime
        if lifetime is None:
            return self._max_margin
        return min(self._max_margin, lifetime * MARGIN_SHARE)

    def _fresh(self, token: Token) -> bool:
        return self._clock() < token.expires_at - self._margin(token)

    def _valid(self, token: Token) -> bool:
        return self._clock() < token.expires_at

    def held(self, now: float | None = None) -> str | None:
        """The held token while it is fresh (or valid while renewal pauses), else None: then
        :meth:`refresh` gives the store's or a new one.

        Synchronous, for the request path: most calls find the token fresh, and need no
        coroutine to learn it. ``now``: the manager's clock, read already by the caller.
        """
        held = self._held
        if held is None:
            return None
        if now is None:
            now = self._clock()
        if now < self._fresh_until or (now < held.expires_at and now < self._renew_paused_until):
            return held.value
        return None

    async def refresh(
        self,
        stale: str | None,
        fetch: Callable[[], Awaitable[Token]] | None = None,
        closing: Closing | None = None,
        owner: object = None,
    ) -> str:
        """A token other than ``stale``: one fetch however many callers ask at once.

        ``fetch`` (the manager's own by default) makes the token if this caller starts the
        fetch: a client made by ``with_options`` fetches by its own retries and timeout. A
        caller that waited on a fetch made another way (``fetch`` compares unequal), which
        failed (but for refused credentials or an unsafe store) or whose client was closed,
        fetches its own way, once. ``closing`` (the caller's client's) ends this caller's wait
        when that client closes; the fetch goes on for the others. ``owner`` is held by the
        fetch this caller starts until it ends: the client whose ``fetch`` it is, which holds
        that method weakly (see _session._TokenFetch) and may be dropped by then.
        """
        try:
            fetch = self._fetch if fetch is None else fetch
            waited_on_another = False  # once: each failed fetch must not start one more for ever
            kept_stale = False  # once too: see below
            token: str | None = None
            while True:
                held = self._held
                if (
                    stale is not None
                    and held is not None
                    and held.value != stale
                    and self._valid(held)
                ):
                    return held.value  # another caller has replaced the refused token already
                flight = self._flight
                if flight is None or (kept_stale and flight.done()):
                    flight = self._flight = asyncio.ensure_future(self._renew(stale, fetch, owner))
                    self._flight_fetch = fetch
                    flight.add_done_callback(self._land)
                    return await _waited(flight, closing)  # never ``stale``: see _renew
                if self._flight_fetch != fetch and not waited_on_another:
                    # Another client's fetch (with_options: fewer retries, a shorter timeout): its
                    # failure is no answer by this caller's policy, which then tries its own, once.
                    waited_on_another = True
                    try:
                        token = await _waited(flight, closing)
                    except DMHubError as err:
                        # Credentials refused, or a store unsafe to use: the same for any fetch;
                        # this caller's client closed: no fetch of its own.
                        if (
                            isinstance(err, AuthenticationError)
                            or getattr(err, "unsafe", False)
                            or (closing is not None and closing.closed)
                        ):
                            raise
                        continue  # a failure its retries met, or that client closed meanwhile
                else:
                    token = await _waited(flight, closing)
                if stale is None or token != stale or kept_stale:
                    return token
                # A refresh ahead of expiry that failed (the store, the token endpoint) goes on
                # with the held token: the very one this caller found refused. Taken, the call
                # was sent with it again, refused again, and failed with AuthenticationError:
                # this caller renews on its own, once (with the store down, without it).
                kept_stale = True
        except BaseException:
            del stale, token  # the refused token: not among the variables an error tracker records
            raise

    async def taken_since(
        self,
        refused: str,
        fetch: Callable[[], Awaitable[Token]] | None = None,
        closing: Closing | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        waits: Iterable[float] = (),
        owner: object = None,
    ) -> str | None:
        """After ``refused``, the token a refresh gave a call, was refused too: the token that
        another client or process has put in the store since (it took the token: each one
        fetched revokes the last), else None, and the refusal stands.

        Two workers sharing a Redis that restarted without its data each fetched a token, the
        second revoking the first's before the call it was fetched for was sent again with it:
        that call failed with 40001, its one refresh spent, the newest token in the store.

        Nothing is fetched while the store holds a token (``refused`` itself: refused for good;
        or one issued before it) or cannot be read: a token fetched then would revoke the
        other's, which would fetch again, and so on. A store that holds none (it lost its data)
        is refreshed as usual, under its lock, and the token stored for the others to take.

        A store that fails is read again after each of ``waits`` (seconds, through ``sleep``):
        a Redis restarting is back a moment later. Read once alone, a call refused while both
        processes had fetched without it failed, the store back and empty. One that failed
        only at its timeout (frozen) is not read again: each read would wait that long.
        """
        try:
            pauses, loop = iter(waits), asyncio.get_running_loop()
            while True:
                held = self._held
                if held is not None and held.value != refused and self._valid(held):
                    return held.value  # another caller of this client took a newer one already
                flight = self._flight
                if flight is not None:  # a refresh under way: its token, unless the refused
                    token = await _waited(flight, closing)
                    return None if token == refused else token
                asked = loop.time()
                try:
                    # Ended by the client's close, as a refresh's wait for the store is: a store
                    # that did not answer held a closed client's call for its whole timeout.
                    read = self._call(self._store.get(self._key))
                    stored = self._given(await (read if closing is None else closing.wait(read)))
                    break
                except TokenStoreError as err:
                    if err.unsafe:
                        raise
                    # One that took its whole timeout to fail (frozen), or timed out of its
                    # own (a Redis whose host stopped answering: its socket_timeout), is not
                    # read again: each read would wait that long.
                    frozen = _timed_out(err) or loop.time() - asked >= self._timeout
                    pause = None if frozen else next(pauses, None)
                    if pause is None or sleep is None:
                        log.debug("%s; the token refused after its refresh is not replaced", err)
                        return None
                await sleep(pause)
            if stored is None:
                if self._unkept:
                    # A store that took no token holds none: not one that lost it. A token
                    # fetched here revoked every other process's, and the call was sent twice
                    # more: a token refused for good cost 3 tokens a call, not 1.
                    log.debug("%r keeps no token: the token refused is not replaced", self._store)
                    return None
                return await self.refresh(refused, fetch, closing, owner)
            if not self._usable(stored, refused):
                return None
            self._held, self._unshared, self._unkept = stored, False, False
            self._fresh_until = stored.expires_at - self._margin(stored)
            self._renew_paused_until = float("-inf")
            return stored.value
        except BaseException:
            del refused  # as in refresh()
            raise

    def stop(self) -> asyncio.Future[str] | None:
        """End the fetch in flight if it still waits for the store (its lock may be another
        process's for minutes), and return it, for the client's close to await: the close
        leaves nothing running. One that has asked for its token is left to store it, or to
        fail, without which every other process would hold a revoked token.
        """
        flight = self._flight
        if flight is None or flight.done():
            return None
        if not self._fetching:
            flight.cancel()
        return flight

    async def answered(self, flight: asyncio.Future[str]) -> None:
        """Wait for ``flight`` (:meth:`stop`'s) while its token request may be under way, up to
        one request's timeout: the client's close, which ends its HTTP session and so the
        request, waits for the answer first. Cut, the answer was lost, and the token the
        service had issued by then (revoking every other process's) was stored for no one.
        A fetch waiting out a retry's backoff ends with the close (its wait ends), and so
        this wait with it."""
        if self._fetching and not self._fetched and not flight.done():  # fetched: no request
            await asyncio.wait((flight,), timeout=self._timeout)

    async def ended(self, flight: asyncio.Future[str]) -> None:
        """Wait for ``flight`` (:meth:`stop`'s) to end, as long as it can take when its store
        answers: one stopped, a store call's timeout; one that asked for its token, the fetch's
        budget and a timeout for each write; one that has its token, a timeout for each write.
        Past that it is left, with a warning.

        A store on a file system that stops answering (an NFS server away) holds its thread for
        good, and the fetch waits for it however often it is cancelled (:func:`.on_thread`):
        the client's close awaited it, and hung for good.
        """
        writes = 2 + len(self._mirror_keys)  # the token, its mirrors, the lock's release
        if flight.cancelled() or not self._fetching:
            limit = self._timeout
        elif self._fetched:
            # The token is in hand, only its writes are left: the whole fetch's budget (241 s
            # with timeout=0.2 and 4 retries) held the close for a write that never returned.
            limit = writes * self._timeout
        else:
            limit = self._lock_wait + writes * self._timeout
        done, _ = await asyncio.wait((flight,), timeout=limit)
        if not done:
            log.warning(
                "%r did not answer in %g s as the client closed: its token fetch is left to "
                "end when it does",
                self._store,
                limit,
            )

    def _land(self, flight: asyncio.Future[str]) -> None:
        if self._flight is flight:
            self._flight = None
            self._fetching = self._fetched = False
        if not flight.cancelled():
            flight.exception()  # mark retrieved: every waiter has seen it already

    async def _renew(
        self, stale: str | None, fetch: Callable[[], Awaitable[Token]], owner: object = None
    ) -> str:
        # ``owner``: held by this frame while the fetch runs (see refresh).
        try:
            held = self._held
            keep = held if held is not None and held.value != stale and self._valid(held) else None
            self._store_read = False
            try:
                token, shared = await self._shared(stale, fetch)
            except DMHubError as err:
                if keep is not None:
                    # Ahead of expiry: a store or token endpoint that fails costs no call while the
                    # held token is valid; try again after a pause, not on every call.
                    self._renew_paused_until = (
                        self._clock() + self._margin(keep) * RENEW_PAUSE_SHARE
                    )
                    log.warning("%s; going on with the token held, valid until it expires", err)
                    return keep.value
                if not isinstance(err, TokenStoreError) or err.unsafe:
                    raise
                log.warning(
                    "%s; fetching a token without the store: other processes that share this appid"
                    " may find theirs revoked until the store is back",
                    err,
                )
                token = await self._fetch_new(fetch)
                # Read, and its lock refused: a store that keeps no token (not one down, nor one
                # that went down since its read: a Redis restarting, back empty).
                unkept = self._store_read and not _unanswered(err)
                self._held, self._unshared, self._unkept = token, True, unkept
            else:
                unkept = not shared and self._store_read
                self._held, self._unshared, self._unkept = token, not shared, unkept
            self._fresh_until = token.expires_at - self._margin(token)
            self._renew_paused_until = float("-inf")
            return token.value
        except BaseException:
            del stale  # as in refresh()
            raise

    def _usable(self, token: Token | None, stale: str | None) -> bool:
        if token is None or token.value == stale or not self._fresh(token):
            return False
        if not sendable_token(token.value):
            # From a store of the user's own (the file and Redis stores check as they read):
            # a 10 KB one failed every call with HTTP 400 and, never refused, was never replaced.
            return False
        held = self._held
        # A stored token issued before the one this client fetched while the store was down (or
        # could not write) is older: the service revoked it when ours was issued. Taken, it
        # spent the one refresh of a refused call on a dead token, and the call failed with the
        # store back and well.
        return not (
            self._unshared
            and held is not None
            and held.issued_at is not None
            and token.issued_at is not None
            and token.issued_at < held.issued_at
        )

    async def _shared(
        self, stale: str | None, fetch: Callable[[], Awaitable[Token]]
    ) -> tuple[Token, bool]:
        """The store's token if usable, else a new one fetched under the store's lock; and
        whether the store has it (a new one it failed to take has not).

        A new token the store did not take leaves the store's older one there, which the service
        revoked as it issued ours: it is no token to take after ours is refused (``_unshared``,
        see :meth:`_usable`). Taken, it spent a refused call's one refresh on a dead token, and
        the call failed with AuthenticationError (a token file on a full disk: 3 of 10 calls of
        two processes taking turns).
        """
        try:
            token = self._given(await self._call(self._store.get(self._key)))
            self._store_read = True
            if token is not None and self._usable(token, stale):
                return token, True
            async with self._locked():
                # Another client or process may have refreshed while we waited for the lock, or
                # failed to (its record).
                token, usable, failure = await self._call(self._read_locked(stale))
                if usable and token is not None:
                    return token, True
                if failure is not None:
                    self._raise_recent_failure(token, failure)
                try:
                    token = await self._fetch_new(fetch)
                except DMHubError as err:
                    await self._record_failure(err, fetch)
                    raise
                shared = False
                try:
                    await self._call(self._store.set(self._key, token))
                    shared = True  # the copies under the keys of 0.1 are for 0.1's processes
                    for key in self._mirror_keys:
                        await self._call(self._store.set(key, token))
                except TokenStoreError as err:
                    log.warning("%s; the new token is held but not shared", err)
                    # Down since its read (a restart): no store that answers and keeps none.
                    self._store_read = not _unanswered(err)
                return token, shared
        except BaseException:
            del stale  # as in refresh()
            raise

    async def _read_locked(
        self, stale: str | None
    ) -> tuple[Token | None, bool, FetchFailure | None]:
        """The store's token, whether it is usable (found here once, not again by the caller) and,
        when it is not and the store keeps them, the record of a failed fetch: one store call's
        timeout for the two reads (another cost a short-lived client some 40k instructions,
        bench_instructions --question 4s)."""
        token = self._given(await self._store.get(self._key))
        if token is not None and self._usable(token, stale):
            return token, True, None
        store = self._failures
        if store is None:
            return token, False, None  # none kept (a store of the user's own): its own backoff
        try:
            failure = await store.get_failure(self._key)
        except Exception as err:  # the record saves load; without it the fetch goes on
            said = err if isinstance(err, TokenStoreError) else f"{store!r}: {type(err).__name__}"
            log.debug("%s; reading a failed token fetch's record", said)
            return token, False, None
        # A record of a store of the user's own that is none: no hold, as none recorded.
        return token, False, failure if isinstance(failure, FetchFailure) else None

    def _given(self, token: object) -> Token | None:
        """``token`` as the store's ``get`` gave it: None or a :class:`Token` whose value is
        text and whose times are numbers, else TokenStoreError (``unsafe``: no wait mends a
        store's code).

        A store of the user's own that gave its JSON (a forgotten ``Token.from_json``), the
        bare value, or a Token whose time is text worked while it was empty, then failed
        every call of the next client, and of the first as its token neared expiry, with a raw
        AttributeError or TypeError from inside the SDK that named no store. One whose Token
        held bytes (redis-py's answer, not decoded) was never usable, so passed over at every
        refresh: each client fetched a token of its own, revoking the others'.
        """
        if token is None or (
            isinstance(token, Token)
            and isinstance(token.value, str)
            and _is_time(token.expires_at)
            and (token.issued_at is None or _is_time(token.issued_at))
        ):
            return token
        if isinstance(token, Token):
            if not isinstance(token.value, str):
                name = "value"
            elif not _is_time(token.expires_at):
                name = "expires_at"
            else:
                name = "issued_at"
            what = f"a Token whose {name} is a {type(getattr(token, name)).__name__}"
        else:
            what = f"a {type(token).__name__}"  # never the value: it may be the token
        del token
        raise TokenStoreError(
            f"{self._store!r}: get gave {what}, not a Token or None: no client can share a"
            " token through it; make its get return Token.from_json() of what its set stored",
            store=repr(self._store),
            unsafe=True,
        )

    def _raise_recent_failure(self, stored: Token | None, failure: FetchFailure) -> None:
        """Raise the failure that another client's fetch met a moment ago, as the store
        recorded it, while its hold lasts: N processes that took the lock in turn each ran a
        whole backoff against a token endpoint that was down (N x (max_retries + 1) requests,
        the last waiting for every other's backoff before its own)."""
        if failure == self._recorded:
            return
        now = self._clock()
        if not now < failure.until <= now + MAX_FAILURE_HOLD:
            return
        if not 0 < failure.until - failure.failed_at <= MAX_FAILURE_HOLD:
            # A hold no client records (failed a day, or 1e300 s, before its end, or after
            # it): out of reason, as an "until" an hour ahead is. Raised, it said "failed
            # 1000...0 s ago" (301 digits), or "0 s ago" of a failure dated after its end.
            return
        issued = None if stored is None else stored.issued_at
        if issued is not None and issued >= failure.failed_at:
            return  # a token fetched since (by a process of a release that keeps no record)
        raise _shared_failure(failure, now, repr(self._store))

    async def _record_failure(self, err: DMHubError, fetch: Callable[[], Awaitable[Token]]) -> None:
        """Record ``err``, the failure a fetch met after its retries, in the store for the hold
        its next backoff would have lasted (the ``Retry-After`` the service asked for, if it
        did; at most :data:`MAX_FAILURE_HOLD`): the clients that wait for the lock raise it at
        once instead of each running its own backoff. Never the error's message."""
        store = self._failures
        if type(err).__name__ not in SHARED_FAILURES or store is None:
            return
        policy = getattr(fetch, "policy", None)  # a client's fetch: its retry policy
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None:
            hold = float(retry_after)
        elif isinstance(policy, RetryPolicy):
            hold = policy.ceiling(policy.max_retries + 1)
        else:
            return  # a fetch of no known policy: no backoff to bound the hold by
        hold = min(hold, MAX_FAILURE_HOLD)
        if not hold > 0:
            return
        status = err.status if isinstance(err, APIError) else None
        code = err.code if isinstance(err, APIError) and type(err.code) is int else None
        said = getattr(err, "_hint", "")
        hint = next((name for name, words in FAILURE_HINTS.items() if said.startswith(words)), None)
        now = self._clock()
        failure = FetchFailure(type(err).__name__, status, code, now, now + hold, hint)
        self._recorded = failure
        try:
            await self._call(store.set_failure(self._key, failure))
        except TokenStoreError as store_err:
            log.debug("%s; recording a failed token fetch", store_err)

    async def _fetch_new(self, fetch: Callable[[], Awaitable[Token]]) -> Token:
        self._fetching = True  # from here, a close waits for the token to be stored: see stop()
        started = self._clock()
        token = await fetch()
        self._fetched = True
        if token.issued_at is None:
            token = Token(token.value, token.expires_at, started)
        return token

    async def _call(self, op: Awaitable[T], timeout: float | None = None) -> T:
        """``op`` within the timeout; its failure a :class:`TokenStoreError` naming the store."""
        timeout = self._timeout if timeout is None else timeout
        try:
            # Not asyncio.wait_for: on 3.10 it dropped the close's cancel landing as the store
            # answered, and the fetch went on after the close. On 3.11 in this task rather than a
            # new one: some 65k instructions less a store call (five of them for a token fetched).
            return await within(op, timeout)
        except TokenStoreError:
            raise
        except asyncio.TimeoutError:
            raise TokenStoreError(
                f"{self._store!r} did not answer in {timeout:g} s", store=repr(self._store)
            ) from None
        except Exception as err:  # a store of the user's making
            if isinstance(err, TypeError) and not inspect.isawaitable(op):
                # Its get or set not async: taken for a store failing for a moment, each client
                # fetched a token of its own, revoking the others', for as long as they ran.
                raise TokenStoreError(
                    f"{self._store!r}: get or set gave a {type(op).__name__}, not an awaitable:"
                    " a TokenStore's get, set and lock are async; no client can share a token"
                    " through it",
                    store=repr(self._store),
                    unsafe=True,
                ) from None
            raise TokenStoreError(
                f"{self._store!r} failed: {type(err).__name__}", store=repr(self._store)
            ) from None

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """The store's lock, taken and released within the timeout.

        Releasing it cannot fail the call: by then the token is fetched (Redis frees a lost lock
        on its own).
        """
        lock: AbstractAsyncContextManager[None] = self._store.lock(self._key)
        if not (hasattr(lock, "__aenter__") and hasattr(lock, "__aexit__")):
            # A store of the user's own: an ``async def lock`` without @asynccontextmanager, a
            # thread's lock. It failed every call with a raw AttributeError naming no store.
            what = type(lock).__name__
            if asyncio.iscoroutine(lock):
                lock.close()  # never awaited: no RuntimeWarning
            raise TokenStoreError(
                f"{self._store!r}: lock() gave a {what}, not an async context manager (async"
                " with): no client can share a token through it; make it one"
                " (@contextlib.asynccontextmanager)",
                store=repr(self._store),
                unsafe=True,
            )
        await self._call(lock.__aenter__(), self._lock_wait)
        try:
            yield
        except BaseException:
            await self._release(lock, *sys.exc_info())
            raise
        await self._release(lock, None, None, None)

    async def _release(self, lock: AbstractAsyncContextManager[None], *exc_info: object) -> None:
        try:
            await self._call(lock.__aexit__(*exc_info))  # type: ignore[arg-type]
        except TokenStoreError as err:
            log.warning("%s; its lock was not released and frees itself", err)


#: What a client held by another's failed fetch says it met, by the name its record keeps
#: (:data:`FAILURE_HINTS`): as the fetch said it, but its base URL, which the record keeps not.
#: Without, "no answer" was read as of a service down (the command line: "is DMHUB_BASE_URL
#: right?") when it was the DNS server that gave none, or the environment's proxy.
_HELD_HINTS: Final = {
    "no_dns_answer": (
        f"{NO_DNS_ANSWER} for its host (is this machine online, its DNS server reachable?)"
    ),
    # The proxy's, which names no base URL: as the fetch's own words (connection_hint).
    "no_proxy_connection": connection_hint("ClientProxyConnectionError", ""),
    "through_proxy": connection_hint("ClientConnectorError", "", proxied=True),
}


def _unanswered(err: BaseException) -> bool:
    """Whether the store call that raised ``err`` got no answer (a connection refused or lost,
    its timeout: a Redis down or restarting), not a refusal of a store that answers (a Redis
    full under noeviction)."""
    # Not any OSError: a token file on a full disk answers its reads and keeps no token.
    return _store_met(err, (ConnectionError, TimeoutError), ("ConnectionError", "TimeoutError"))


def _timed_out(err: BaseException) -> bool:
    """Whether the store call that raised ``err`` waited out a timeout, the client's or the
    store's own (a Redis whose host stopped answering fails at its ``socket_timeout``), not
    one refused at once (a Redis restarting). Also what the store's exception was raised from:
    over a unix socket, redis-py says a connect's handshake that timed out as a ConnectionError
    raised from its TimeoutError."""
    return _store_met(err, (TimeoutError,), ("TimeoutError",), raised_from=True)


def _store_met(
    err: BaseException,
    kinds: tuple[type[BaseException], ...],
    redis_kinds: tuple[str, ...],
    *,
    raised_from: bool = False,
) -> bool:
    """Whether the store's own exception (the context of ``err``, its TokenStoreError; with
    ``raised_from``, or what that was raised from) is of ``kinds`` (``asyncio.TimeoutError``
    with ``TimeoutError``: 3.10's is its own), or of redis-py's classes named ``redis_kinds``."""
    if TimeoutError in kinds:
        kinds = (*kinds, asyncio.TimeoutError)
    redis_errors = sys.modules.get("redis.exceptions")  # imported by any Redis store that failed
    if redis_errors is not None:
        kinds = (*kinds, *(getattr(redis_errors, name) for name in redis_kinds))
    seen = err.__context__
    return isinstance(seen, kinds) or (
        raised_from and seen is not None and isinstance(seen.__cause__, kinds)
    )


def _is_time(value: object) -> bool:
    """Whether ``value`` is a number of epoch seconds a clock's reading can be compared with."""
    return isinstance(value, (int, float))


def _shared_failure(failure: FetchFailure, now: float, store: str) -> DMHubError:
    """The error of a token fetch another client made and recorded, raised as its own was: the
    same class, status and code, and a message that says where it failed and for how long no
    token request is sent."""
    cls = getattr(_exceptions, failure.error)
    if failure.status is not None:
        what = f"HTTP {failure.status}"
        if failure.code is not None:
            what += f", error_code {failure.code}"
    else:
        what = "no answer" if cls is APIConnectionError else "no answer in time"
    ago, left = max(0.0, now - failure.failed_at), failure.until - now
    # What the fetch met, said as it said it (without its base URL, which the record keeps
    # not): "no answer" alone was read as of a service down (the CLI: "is DMHUB_BASE_URL
    # right?") when it was the DNS server that gave none.
    hint = _HELD_HINTS.get(failure.hint or "", "")
    # Of a host no DNS server named, not "a token endpoint that is down": nothing reached it.
    down = "to a token endpoint that is down"
    why = "while the token endpoint cannot be reached" if hint else down
    message = (
        f"GET {TOKEN_PATH} -> {what}: failed {ago:.0f} s ago in another client or process"
        f" sharing the token store {store}, after its retries; not sent again for"
        f" {math.ceil(left):.0f} s, so that clients waiting for the token add no load {why}"
        f"{hint}"
    )
    if issubclass(cls, APIError):
        # The wait the message says, where an answer's Retry-After would be (429 and 503): a
        # caller that waits err.retry_after before its next call had None to wait.
        retry_after = max(0.0, left) if failure.status in RETRY_AFTER_STATUSES else None
        error: DMHubError = cls(
            message,
            status=failure.status or 0,
            code=failure.code,
            method="GET",
            path=TOKEN_PATH,
            retry_after=retry_after,
        )
    else:
        error = cls(message, method="GET", path=TOKEN_PATH)
        if isinstance(error, APIConnectionError):
            error._hint = hint
    return error
