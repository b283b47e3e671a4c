"""The session layer: the token, the limits, the retry loop, and aiohttp: the only I/O.

Resources and the paginator send through a :class:`Session`; what a request is and what its
answer means is decided in ``_sansio``, how often to try in ``_retry``. Secrets are kept out of
every error and log line (``_redact``). See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import ipaddress
import logging
import os
import re
import select
import socket
import sys
import time
import traceback
import urllib.request
import weakref
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, cast
from urllib.parse import urlsplit

import aiohttp
import attrs
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from backoff.types import Details
from yarl import URL

from . import _json
from ._auth import (
    MemoryTokenStore,
    Token,
    TokenManager,
    TokenStore,
    legacy_token_key,
    secret_fingerprint,
    token_key,
)
from ._exceptions import (
    REFUSED_AFTER_REFRESH,
    STATIC_TOKEN_REFUSED,
    APIConnectionError,
    APIError,
    AuthenticationError,
    DMHubError,
    InvalidRequestError,
    ResponseDecodeError,
    ServerError,
)
from ._last_response import last_response, remember_response
from ._limits import Closing, Limits, RateLimiter, SharedLimit, UnlessClosed, client_closed
from ._redact import RedactedCause
from ._redact import watch as redact_watch
from ._retry import FINAL_5XX, REQUEST_TIMEOUT, RETRY_TALLY, RetryPolicy, retrying
from ._sansio import (
    HEADERS,
    RETRY_AFTER_STATUSES,
    TOKEN_PATH,
    APIResponse,
    Decode,
    Request,
    build_error,
    connection_error,
    error_of,
    read_response,
    read_token,
    token_request,
    too_large,
)
from ._validate import printable, refused_ipv4, resolvable_url

__all__ = ["ClientStats", "Session"]

logger = logging.getLogger("dmhub_async")
#: How many times a call refused after its token's refresh is sent again, each time with a
#: token another process stored since (it took the token): bounded, so that two processes
#: taking turns revoke no call's token for ever.
TAKEN_TOKEN_RESENDS: Final = 2


@attrs.define
class ClientStats:
    """What a client has done so far."""

    requests: int = 0
    retries: int = 0
    token_fetches: int = 0
    #: Requests the service answered, whatever the status: none means it was never reached.
    #: Last: 0.1's fields keep their places (``ClientStats(5, 1, 2)`` as 0.1 read it).
    responses: int = 0


@attrs.define
class _Call:
    """One call's progress through its attempts."""

    request: Request
    retries: int = 0
    refreshed: bool = False
    #: Sends with a token another process stored after the refreshed one was refused.
    taken: int = 0
    #: A write's earlier attempt got no answer it could read, and may have been applied.
    maybe_applied: bool = False


def _note_write_failure(call: _Call, err: DMHubError) -> None:
    """Remember a write's attempt that may have been applied; mark a later refusal unknown.

    A DELETE whose 204 was lost is repeated (it is idempotent), and the repeat's "no such
    customer" (40201) was raised as a plain NotFoundError: the caller was told the customer
    did not exist, when the first attempt had deleted it. A GET writes nothing: not noted.
    """
    if call.request.method == "GET":
        return
    if _may_have_applied(err):
        call.maybe_applied = True
    elif (
        isinstance(err, APIError)
        and not isinstance(err, ServerError | ResponseDecodeError)
        and call.maybe_applied
        and err.status != REQUEST_TIMEOUT
    ):
        # A 408 refused this attempt unread, as a 503 does: the call goes on (_given_up marks
        # the error it ends with).
        _mark_unknown(err)


def _may_have_applied(err: DMHubError) -> bool:
    """Whether the attempt that failed with ``err`` may have been carried out: its answer was
    lost after it was sent, or was a 5xx other than a refusal (503 and FINAL_5XX), or a 2xx we
    could not read."""
    if isinstance(err, APIConnectionError):
        return not err._not_sent
    if isinstance(err, ServerError | ResponseDecodeError):
        return not (err.status == 503 or err.status in FINAL_5XX)
    return False


def _mark_unknown(err: APIError | APIConnectionError, *, itself: bool = False) -> None:
    """Say in ``err`` that an earlier attempt of its write may have been applied, or, with
    ``itself``, the attempt that failed with it: said of an update sent once and answered 500,
    "an earlier attempt got no answer" sent the reader looking for a retry never made."""
    if err.outcome_unknown:
        return
    err.outcome_unknown = True
    said = "the write" if itself else "an earlier attempt got no answer and"
    err.args = (
        f"{err}; {said} may have been applied, so the outcome is unknown: check before trying"
        " again",
        *err.args[1:],
    )


def _say_what_to_check(err: DMHubError, hint: str | None = None) -> None:
    """End the message of ``err``, a ``/v1`` call's token refused when the client can do no
    more about it, with what to check (``hint``; by default: refused after its refresh).

    The service's words alone ("access_token expired" just after a fetch) sent the reader of
    a log nowhere, where the command line named the usual cause, another process fetching
    tokens for the app id with a store of its own.
    """
    if isinstance(err, AuthenticationError) and err.path != TOKEN_PATH:
        hint = hint or REFUSED_AFTER_REFRESH
        if err.args and isinstance(err.args[0], str) and hint not in err.args[0]:
            err.args = (err.args[0] + hint, *err.args[1:])


def _given_up(call: _Call, err: DMHubError) -> DMHubError:
    """The error a write's call ends with, after an attempt that may have been applied, marked
    so: a retry refused (503), lost, or unable to get a token was raised as if nothing had been
    sent, and a delete that had deleted looked as if it never went out.

    A token fetch's error is every waiting caller's (one fetch for all): marked, it is a copy.
    Any other DMHubError stopped a retry before it was sent (a shared rate limit's Redis gone):
    it has no ``outcome_unknown`` to set, and its "no request was sent" spoke of the retry
    alone, so it becomes the cause of an APIConnectionError that says so.
    """
    if not call.maybe_applied:
        return err
    if not isinstance(err, APIError | APIConnectionError):
        request = call.request
        unsent = APIConnectionError(
            f"{request.method} {request.path}: {err}; an earlier attempt got no answer and may"
            " have been applied, so the outcome is unknown: check before trying again",
            method=request.method,
            path=request.path,
            outcome_unknown=True,
        )
        unsent.__cause__ = err
        return unsent
    if err.outcome_unknown:
        return err
    if _from_token_request(err):
        err = copy.copy(err)
        _mark_unknown(err)  # the token request's failure: the write's was an earlier attempt
        return err
    _mark_unknown(err, itself=_may_have_applied(err))
    return err


#: An answer as the request path passes it up: the fields of its :class:`APIResponse`
#: (status, headers, data, retries). Not the APIResponse itself: making that frozen class
#: costs about 6k instructions, 1.3% of a lookup, and ``request()`` returns the data alone;
#: ``last_response`` makes it when it is read (:func:`_built`).
_Answer = tuple[int, Mapping[str, str], Any, int]
#: A call's fields, :class:`Request`'s first seven (method, path, params, json, idempotent,
#: not_found_codes, decode): what a call whose token is held sends without making its
#: ``Request``.
_Fields = tuple[str, str, Mapping[str, str] | None, Any, bool, frozenset[int | str], Decode | None]
_NO_FIELDS: _Fields = ("", "", None, None, True, frozenset(), None)


def _built(answer: tuple[Any, ...]) -> APIResponse:
    """The :class:`APIResponse` of an answer remembered as its fields (see ``_Answer``)."""
    return APIResponse(*answer)


@attrs.frozen
class _TokenFetch:
    """A client's token fetch, equal to another's with the same retry policy and timeout: the
    clients ``with_options`` makes for a call or two share one fetch when their settings do.

    ``fetch`` is its session's method, held weakly: the session holds this and so does its
    token manager, which the session holds (a cycle, left for the collector, once the client
    was closed). Only a fetch its own session began calls it (the manager is always handed
    the caller's), and that fetch holds the session until it ends (``TokenManager.refresh``'s
    ``owner``), however soon the client is closed and dropped."""

    policy: RetryPolicy
    timeout: aiohttp.ClientTimeout
    fetch: weakref.WeakMethod[Callable[[], Awaitable[Token]]] = attrs.field(eq=False)

    def __call__(self) -> Awaitable[Token]:
        fetch = self.fetch()
        assert fetch is not None  # called by its session only (see above)
        return fetch()


def _closed_after_write(request: Request) -> APIConnectionError:
    """The error of a write the client's close ended after an attempt that may have been
    applied (its answer cut short, or a retry's wait after a 500): the plain "closed" error
    said nothing of the write it may have made."""
    return APIConnectionError(
        f"{request.method} {request.path} got no answer: the client was closed; an attempt may"
        " have been applied, so the outcome is unknown: check before trying again",
        method=request.method,
        path=request.path,
        outcome_unknown=True,
    )


def _from_token_request(err: BaseException) -> bool:
    # A failed token request had its own retries: repeating them here would multiply them.
    return getattr(err, "path", None) == TOKEN_PATH


def _mirror_keys(token_store: TokenStore, base_url: str, app_id: str) -> tuple[str, ...]:
    """The keys a token this client fetches is also written under: 0.1's, in a store other
    processes may share, 0.1 ones among them (see legacy_token_key).

    None where that key could be one of this version's, which join the base URL, the app id
    and the secret's fingerprint by "|": an app id holding a "|" and another's fingerprint
    (``app-a|<app-a's fingerprint>``) had its token copied under another tenant's very key,
    and that tenant's client took it and sent it, reading the first one's customers. Only
    such a key is skipped: skipping every one with a "|" more (``sim|app``) made a rolling
    upgrade's 0.1 and new processes revoke each other's token again, 74 tokens for 120 calls.
    """
    legacy = legacy_token_key(base_url, app_id)
    if isinstance(token_store, MemoryTokenStore) or _could_be_a_token_key(legacy):
        return ()
    return (legacy,)


def _could_be_a_token_key(key: str) -> bool:
    """Whether ``key`` has the form of :func:`token_key`'s: two "|" or more, the last before
    a fingerprint (16 lower-case hexadecimal digits)."""
    rest, _, last = key.rpartition("|")
    return "|" in rest and len(last) == _FINGERPRINT_LENGTH and all(c in _HEX_DIGITS for c in last)


_FINGERPRINT_LENGTH: Final = len(secret_fingerprint("", ""))
_HEX_DIGITS: Final = frozenset("0123456789abcdef")


@attrs.define
class _Connection:
    """What a client and the clients derived from it (``with_options``) share."""

    http: aiohttp.ClientSession | None
    owns_http: bool
    max_concurrency: int
    #: Ends the calls' waits (backoffs, rate turns) when the client is closed.
    closing: Closing
    #: The root client's timeouts: the default of the session made here.
    timeout: aiohttp.ClientTimeout
    closed: bool = False
    #: The event loop of the first call: aiohttp's session and asyncio's locks belong to it.
    loop: asyncio.AbstractEventLoop | None = None
    #: The proxy the environment names for the base URL, for the session made here. Neither
    #: it nor its password in the repr: a frame's ``conn`` (check_open's, aclose()'s) showed
    #: both to an error tracker that records each frame's variables (Sentry's default).
    proxy: str | None = attrs.field(default=None, repr=False)
    #: Its password, if it has one: masked in every error, as the secret is.
    proxy_password: str | None = attrs.field(default=None, repr=False)
    #: The answers whose bodies are being read, for the close to end.
    reading: set[aiohttp.ClientResponse] = attrs.Factory(set)
    #: The derived sessions (``with_options``) alive, whose answers the close ends too.
    derived: weakref.WeakSet[Session] = attrs.Factory(weakref.WeakSet)


#: The tasks that close the HTTP session of a client whose close was cancelled (aclose).
_CLOSERS: set[asyncio.Future[None]] = set()


def _end_reads(responses: Iterable[aiohttp.ClientResponse]) -> None:
    """End the reads of these answers' bodies with the "closed" connection error, at once
    (aiohttp's close drops their connections but never tells the readers)."""
    for resp in list(responses):  # a reader woken here may leave its set while this runs
        resp.content.set_exception(aiohttp.ClientConnectionError("the client was closed"))


async def _slot_unless_closed(limits: Limits, closing: Closing) -> None:
    """A slot of ``limits``, waited for until ``closing`` closes: a derived client's own close
    ends its wait, as the parent's ends the parent's (those queued behind a session passed in's
    requests, which run on, too).

    The wait runs in a task of its own: a caller cancelled (a timeout, a task group) in the
    turn that task was handed the slot left with the slot taken, never given back, and once
    ``max_concurrency`` were lost so every call of every client sharing them waited forever.
    """
    acquiring = asyncio.ensure_future(limits.acquire())
    try:
        await closing.wait(acquiring)
    except BaseException:
        if acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None:
            limits.release()  # taken for a caller that has gone: the next one's
        raise


class Session:
    """Sends :class:`Request` s to one base URL: token, limits, retries, errors, aiohttp.

    Built by :class:`DMHubClient` from its settings; ``http`` is None until the first request
    when the client makes its own ``aiohttp.ClientSession``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        app_id: str | None,
        secret: str | None,
        access_token: str | None,
        token_store: TokenStore,
        http: aiohttp.ClientSession | None,
        timeout: aiohttp.ClientTimeout,
        max_concurrency: int,
        max_response_size: int,
        rate_limit: float | SharedLimit | None,
        policy: RetryPolicy,
        auth_codes: frozenset[int | str],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.base_url = base_url
        self.app_id = app_id
        self._secret = secret
        self._static_token = access_token
        closing = Closing(sleep)  # the close ends the calls' waits: backoffs and rate turns
        self._conn = _Connection(http, http is None, max_concurrency, closing, timeout)
        #: Ends this client's calls' waits: the connection's, or a derived client's own.
        self._closing = closing
        #: The answers this client is reading, for its close to end: a derived client's are
        #: its own (the root's close ends them too), the root's the connection's.
        self._reading = self._conn.reading
        self._timeout = timeout
        self._headers: Mapping[str, str] = {}
        self._max_response_size = max_response_size
        limiter: SharedLimit | None = None
        if hasattr(rate_limit, "acquire"):  # a limit shared with others: RedisRateLimiter
            limiter = UnlessClosed(cast(SharedLimit, rate_limit), closing)
        elif rate_limit is not None:
            limiter = RateLimiter(rate_limit, clock=clock, sleep=closing.sleep)
        self._limits = Limits(max_concurrency, limiter)
        self.policy = policy
        self._auth_codes = auth_codes
        self._clock = clock
        self.derived = False
        self.stats = ClientStats()
        self._current_token: str | None = None
        redact_watch(self)
        self._tokens: TokenManager | None = None
        #: How this client fetches a token: by its own retries and timeout (see derive()).
        self._token_fetch = _TokenFetch(policy, timeout, weakref.WeakMethod(self._fetch_token))
        #: A derived client's fetch runs here, made at its first: see _fetch_shared_token().
        self._fetcher: Session | None = None
        if app_id and secret:
            self._tokens = TokenManager(
                token_key(base_url, app_id, secret),
                token_store,
                self._token_fetch,
                clock,
                timeout=timeout.total or 30.0,
                lock_wait=_fetch_budget(timeout.total or 30.0, policy),
                mirror_keys=_mirror_keys(token_store, base_url, app_id),
            )
        self._build_retries()

    def _build_retries(self) -> None:
        clock, sleep, on_backoff = self._clock, self._closing.sleep, Session._on_backoff
        #: ``_send_call(session, call)``: the call's attempts; ``_go_on_call(rest, started,
        #: session, call)``: those after a first attempt that ``request()`` sent itself (see
        #: _retry.retrying). The session is an argument, not bound in: loops holding its bound
        #: ``_attempt`` made a cycle with it (it holds them), and a closed client's session,
        #: token manager, limits and store (about 98 objects) waited for the collector.
        self._send_call, self._go_on_call = retrying(
            Session._attempt,
            self.policy,
            clock=clock,
            sleep=sleep,
            on_backoff=on_backoff,
            giveup=_from_token_request,
        )
        self._send_token_request = retrying(
            Session._attempt, self.policy, clock=clock, sleep=sleep, on_backoff=on_backoff
        )[0]

    def derive(
        self,
        *,
        timeout: aiohttp.ClientTimeout | None = None,
        policy: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Session:
        """A session with other settings that shares this one's connection, token and limits."""
        derived = copy.copy(self)
        derived.derived = True
        # Its own close ends its own calls' waits and reads (the parent's close, all of them).
        derived._closing = self._closing.derive()
        derived._reading = set()
        self._conn.derived.add(derived)
        if timeout is not None:
            derived._timeout = timeout
        if policy is not None:
            derived.policy = policy
        if headers:
            derived._headers = {**self._headers, **headers}
        # A token it fetches is fetched by its own retries and timeout: the parent's sent 5 token
        # requests of up to 30 s each for a client told max_retries=0, timeout=5.
        derived._fetcher = None
        derived._token_fetch = _TokenFetch(
            derived.policy, derived._timeout, weakref.WeakMethod(derived._fetch_shared_token)
        )
        derived._build_retries()  # its loops must call the derived session, not this one
        redact_watch(derived)
        return derived

    def __repr__(self) -> str:
        return f"Session(base_url={self.base_url!r}, app_id={self.app_id!r})"

    @property
    def timeout(self) -> aiohttp.ClientTimeout:
        """The timeouts of one attempt."""
        return self._timeout

    @property
    def max_concurrency(self) -> int:
        """Requests in flight at most, over this client and those derived from it."""
        return self._conn.max_concurrency

    @property
    def http(self) -> aiohttp.ClientSession | None:
        """The aiohttp session: None until the first request when the client makes its own."""
        return self._conn.http

    @property
    def closed(self) -> bool:
        """Whether the client (or one it was derived from, at any remove) was closed."""
        return self._conn.closed or self._closing.closed

    @property
    def last_response(self) -> APIResponse | None:
        """The latest answer the calling task received through this session."""
        latest: APIResponse | None = last_response(self, _built)
        return latest

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """The secret and the tokens this session uses: masked in every error."""
        return (self._secret, self._static_token, self._current_token, self._conn.proxy_password)

    async def aclose(self) -> None:
        """Close the HTTP session if this layer made it (a passed-in one is left open).

        A derived session leaves it open: it belongs to the session it was derived from.
        """
        if self.derived:
            # Closed, it said open and worked. Its calls waiting out a backoff, a Retry-After, a
            # rate turn or the token store's lock waited it all out: only the parent's close
            # ended them. (The connection it shares stays open for the others.)
            self._closing.close()
            # Its own answers, and those of the clients derived from it (closed with it: their
            # closings are this one's children). Theirs were read on to their timeout.
            _end_reads(r for d in list(self._conn.derived) if d._closing.closed for r in d._reading)
            return
        conn = self._conn
        elsewhere = conn.loop is not None and conn.loop is not asyncio.get_running_loop()
        if elsewhere and conn.owns_http and conn.http is not None:
            # Its connections are the other loop's: closed from here, it returned as if done
            # and left their sockets open. Said, as a call from here says it; and nothing is
            # changed while that loop can still close it, as the message says to (closed here,
            # its own loop's calls failed, and its close there found nothing left to close).
            if conn.loop is not None and conn.loop.is_closed():
                conn.closed = True
                conn.closing.close()
                conn.http = None
            raise DMHubError(
                "this DMHubClient was used in another event loop (an earlier "
                "asyncio.run()?) and must be closed there: its connections are that loop's,"
                " and are left open. Make and close the client inside the coroutine you run"
                ", e.g. `async with DMHubClient() as dm:` in main()"
            )
        conn.closed = True
        conn.closing.close()
        # A token fetch still waiting for the store's lock ends now; one under way is awaited
        # below (its request's answer before the session's close, the rest after): it went on
        # after aclose() returned, took the lock and read the store once another process let
        # go of it.
        flight = self._tokens.stop() if self._tokens is not None else None
        if conn.owns_http and conn.http is not None:
            if flight is not None and self._tokens is not None:
                try:
                    await self._tokens.answered(flight)  # its request, before the session ends it
                except BaseException:
                    # This close cancelled as it waited for that answer (a task group's cancel,
                    # an anyio cancel scope around `async with`, which cancels the close too):
                    # the session was left open for good, its connections with it, and the
                    # client said closed. A task closes it once the answer is in (one
                    # attempt's timeout at most), the token still stored for the others.
                    closer = asyncio.ensure_future(self._close_http_after(flight))
                    if not closer.done():
                        _CLOSERS.add(closer)  # held: a task only the loop refers to may vanish
                        closer.add_done_callback(_CLOSERS.discard)
                    raise
            await self._close_http()
        if flight is not None and self._tokens is not None:
            await self._tokens.ended(flight)  # not cancelled with this close: it stores its token

    async def _close_http(self) -> None:
        """Close the HTTP session this layer made, once (a second close finds none)."""
        conn = self._conn
        http, conn.http = conn.http, None
        if http is None:
            return
        # aiohttp's close drops their connections but never tells the readers: a call half
        # way through an answer waited for the rest until its timeout (30 s by default).
        _end_reads([*conn.reading, *(r for d in list(conn.derived) for r in d._reading)])
        await http.close()

    async def _close_http_after(self, flight: asyncio.Future[str]) -> None:
        """Close the HTTP session once ``flight``'s token request is answered (see aclose);
        at once if this task is cancelled (the loop ending)."""
        try:
            if self._tokens is not None:
                await self._tokens.answered(flight)
        finally:
            await self._close_http()

    def check_open(self) -> None:
        """Raise DMHubError when closed, or when called from another event loop."""
        conn = self._conn
        if conn.closed or (self.derived and self._closing.closed):  # a root's is conn.closed
            raise client_closed()
        loop = asyncio.get_running_loop()
        if conn.loop is not loop:
            if conn.loop is not None:
                raise DMHubError(
                    "this DMHubClient was used in another event loop (an earlier "
                    "asyncio.run()?), whose connections cannot be used in this one: make the "
                    "client inside the coroutine you run, e.g. `async with DMHubClient() as dm:` "
                    "in main(), once per asyncio.run()"
                )
            if not conn.owns_http and getattr(conn.http, "_loop", loop) is not loop:
                # aiohttp's raw "RuntimeError: Event loop is closed" came out of the first
                # call, past `except DMHubError`, and nothing was sent.
                raise DMHubError(
                    "the aiohttp session passed as session= was made in another event loop (an"
                    " earlier asyncio.run()?), whose connections cannot be used in this one:"
                    " make it inside the coroutine you run, with the client"
                )
            conn.loop = loop

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        idempotent: bool = True,
        not_found_codes: frozenset[int | str] = frozenset(),
        decode: Decode | None = None,
        remembered: bool = True,
    ) -> Any:
        """The decoded JSON body of one call, with retries (None for an empty answer).

        ``decode``: reads a successful body in its place (:attr:`Request.decode`: a list's
        page straight into models). A walk's pages take this way, not :meth:`send`'s: with
        the token held, no ``_Call``, retry loop or ``APIResponse`` a page (about 17k
        instructions a page; issue 15's thirty-fourth round).
        ``remembered=False``: not kept as the calling task's ``last_response``, for a task of
        the SDK's own that no caller can read it from (lookup_many's workers, lookup_iter's
        lookups, a walk's readers ahead): keeping it cost about 4k instructions a lookup, and
        a reader's kept a page it had handed over alive until its next page came.
        """
        # send(), written out: a coroutine less on every call.
        conn = self._conn
        if conn.closed or conn.loop is not asyncio.get_running_loop() or self.derived:
            self.check_open()  # check_open(), its usual case written out: a call less a call
        # The call's start, for its retry budget, is also the "now" the token is held at:
        # the clock read once on a successful call, not three times (about 0.7k instructions).
        started = self._clock()
        tokens = self._tokens
        if tokens is None:
            token = self._static_token
        elif token := tokens.held(started):  # fresh, the usual case: see _attempt
            self._current_token = token
        call: _Call | None = None
        fields: _Fields = (method, path, params, json, idempotent, not_found_codes, decode)
        try:
            if token is None:  # none held: _attempt takes the store's, or a new one
                call = _Call(Request(*fields))
                answer: _Answer = await self._send_call(self, call)
            else:
                # With the token held, the first attempt is sent from here: no _Call, retry
                # loop or _attempt to pass through: about 7k instructions of a lookup's 414k
                # (benchmarks.bench_instructions --question 4c).
                # No Request either: _send makes one only if a log line, an error or a body
                # needs it (about 2.6k instructions a call).
                # A failure goes on as in _attempt (_after_failed_send) and then in the retry
                # loop (_go_on_call), as if _send_call had made this attempt.
                failed: list[DMHubError] | None = None
                try:
                    answer = await self._send(None, token, 0, fields)
                except DMHubError as err:
                    failed = [err]
                if failed is not None:
                    call = _Call(Request(*fields))
                    rest = self._after_failed_send(call, failed, token)
                    answer = await self._go_on_call(rest, started, self, call)
        except DMHubError as err:
            del token  # not among the variables an error tracker records (see _send)
            assert call is not None  # every DMHubError here came from a call's attempts
            ended = self._ended(call, err)
            try:
                raise ended from ended.__cause__ or err.__cause__  # a redacted stand-in, or None
            finally:
                del ended  # not held by this frame, which its traceback holds (a cycle)
        except BaseException:
            del token
            raise
        if remembered:
            remember_response(self, answer)  # an APIResponse once dm.last_response is read
        return answer[2]

    async def send(self, request: Request, *, remembered: bool = True) -> APIResponse:
        """The answer to ``request``, with retries; an :class:`APIError` or connection error.

        ``remembered=False``: not kept as the calling task's ``last_response`` (a walk's
        readers ahead, see :meth:`request`).
        """
        response = APIResponse(*await self.answer(request, remembered=False))
        if remembered:
            remember_response(self, response)
        return response

    async def answer(self, request: Request, *, remembered: bool = True) -> _Answer:
        """:meth:`send`'s answer as its fields (``_Answer``), remembered as they are: its
        :class:`APIResponse`, whose headers are masked as it is made (about 220k instructions
        of a count's 640k), is made only when ``dm.last_response`` is read."""
        self.check_open()
        call = _Call(request)
        try:
            answer: _Answer = await self._send_call(self, call)
        except DMHubError as err:
            ended = self._ended(call, err)
            try:
                raise ended from ended.__cause__ or err.__cause__  # a redacted stand-in, or None
            finally:
                del ended  # not held by this frame, which its traceback holds (a cycle)
        if remembered:
            remember_response(self, answer)  # an APIResponse once dm.last_response is read
        return answer

    def _ended(self, call: _Call, err: DMHubError) -> DMHubError:
        """The error a call ends with: ``err``, or for a write that may have been applied, one
        that says so (:func:`_given_up`; the client's close, :func:`_closed_after_write`)."""
        if (
            call.maybe_applied
            and (type(err) is DMHubError or isinstance(err, APIConnectionError))
            and self.closed
        ):
            # A connection error too: the close cut the write's connection (aiohttp's
            # ServerDisconnectedError), which blamed the service for the caller's own close.
            return _closed_after_write(call.request)
        return _given_up(call, err)

    @staticmethod
    def _on_backoff(details: Details) -> None:
        # Every retry, the token request's included: stats.requests counts their attempts too.
        session: Session = details["args"][0]  # an argument: see _build_retries
        call: _Call = details["args"][1]
        err = details["exception"]  # type: ignore[typeddict-item]
        call.retries += 1
        session.stats.retries += 1
        tally = RETRY_TALLY.get()
        if tally is not None and call.request.authenticated:  # not a token fetch's
            tally.retries += 1
        logger.info(
            "retrying %s after %s (retry %d of %d) in %.2fs",
            call.request.describe(),
            f"HTTP {err.status} {type(err).__name__}"
            if isinstance(err, APIError)
            else type(err).__name__,
            call.retries,
            session.policy.max_retries,
            details["wait"],
        )

    async def _attempt(self, call: _Call) -> _Answer:
        request = call.request
        if not request.authenticated:
            return await self._send(request, None, call.retries)
        tokens = self._tokens
        token: str | None = None
        try:
            if tokens is None:
                assert self._static_token is not None
                token = self._static_token
            else:  # fresh, the usual case, without a coroutine; else the store's or a new one
                token = self._current_token = tokens.held() or await self._refresh(tokens, None)
            try:
                return await self._send(request, token, call.retries)
            except DMHubError as err:
                failed = [err]
            return await self._after_failed_send(call, failed, token)
        except BaseException:
            del token  # not among the variables an error tracker records (see _send)
            raise

    async def _after_failed_send(
        self, call: _Call, failed: list[DMHubError], token: str
    ) -> _Answer:
        """The rest of an attempt of ``call`` whose send with ``token`` failed: a refused token
        is refreshed once and the call sent again; refused again, it is sent with the token
        another process has stored since, if there is one (:meth:`TokenManager.taken_since`),
        at most :data:`TAKEN_TOKEN_RESENDS` times; any other error is raised (a write's noted:
        :func:`_note_write_failure`). The error is taken out of ``failed``, so that no frame of
        its own traceback holds it.

        Awaited once out of the ``except`` that caught the error: a later one (the refresh's,
        the resend's) has no earlier one as its context.
        """
        try:
            tokens = self._tokens
            # docs/contract.md: a refused token is refreshed once and the call retried once.
            if not isinstance(failed[0], AuthenticationError):
                _note_write_failure(call, failed[0])
                raise failed.pop()
            if tokens is None:
                _say_what_to_check(failed[0], STATIC_TOKEN_REFUSED)
                raise failed.pop()
            if call.refreshed:  # an attempt after a retry, refused: as a resend refused
                given = await self._taken_since(call, tokens, token)
                if given is None:
                    _say_what_to_check(failed[0])
                    raise failed.pop()
                token = given
            else:
                call.refreshed = True
                failed.clear()
                token = self._current_token = await self._refresh(tokens, token)
            while True:
                failed.clear()
                try:
                    return await self._send(call.request, token, call.retries)
                except DMHubError as err:  # the send after a refresh may be applied as well
                    failed.append(err)
                if isinstance(failed[0], AuthenticationError):
                    given = await self._taken_since(call, tokens, token)
                    if given is not None:
                        token = given
                        continue
                _say_what_to_check(failed[0])
                _note_write_failure(call, failed[0])
                raise failed.pop()
        except BaseException:
            del token  # not among the variables an error tracker records (see _send)
            raise

    async def _taken_since(self, call: _Call, tokens: TokenManager, refused: str) -> str | None:
        """The token another process has stored since ``refused``, the call's token after its
        refresh, was refused (:meth:`TokenManager.taken_since`), while the call may still be
        sent again with one; else None."""
        try:
            if call.taken >= TAKEN_TOKEN_RESENDS:
                return None
            call.taken += 1
            policy = self.policy  # a store that does not answer is waited for as a retry is
            waits = (policy.jitter(policy.ceiling(n)) for n in range(1, policy.max_retries + 1))
            given = await tokens.taken_since(
                refused, self._token_fetch, self._closing, self._closing.sleep, waits, self
            )
            if given is not None:
                self._current_token = given
            return given
        except BaseException:
            del refused  # the refused token: not for an error tracker (see _send)
            raise

    async def _refresh(self, tokens: TokenManager, stale: str | None) -> str:
        """``tokens.refresh(stale)``, ended by the client's close: the store's lock may be
        another process's for minutes. The fetch itself goes on (it ends at that lock or at its
        request): cut short, a token fetched and not yet stored would leave every other process
        with a revoked one."""
        try:
            return await tokens.refresh(stale, self._token_fetch, self._closing, self)
        except BaseException:
            del stale  # the refused token: not for an error tracker (see _send)
            raise

    async def _fetch_shared_token(self) -> Token:
        """A derived client's token fetch, ended by the root's close only, as the root's is.

        The fetch is every waiting client's (one flight for all: the parent's, and a twin's
        made with the same settings): cut by this client's own close, their calls failed with
        "closed", their clients open. This client's callers stop waiting at its close
        (:meth:`_refresh`); the fetch goes on, and its token is stored for the others.
        """
        fetcher = self._fetcher
        if fetcher is None:
            fetcher = self._fetcher = copy.copy(self)
            fetcher._closing, fetcher._reading = self._conn.closing, self._conn.reading
            fetcher._build_retries()
        return await fetcher._fetch_token()

    async def _fetch_token(self) -> Token:
        assert self.app_id is not None
        assert self._secret is not None
        self.stats.token_fetches += 1
        started = self._clock()
        answer: _Answer = await self._send_token_request(
            self, _Call(token_request(self.app_id, self._secret))
        )
        try:
            return read_token(answer[2], started)
        except BaseException:
            del answer  # the token just issued, which read_token refused: see its `del`
            raise

    def _http_session(self) -> aiohttp.ClientSession:
        conn = self._conn
        if conn.http is None:
            # First: a proxy it refuses leaves no session made without it. Plain http to this
            # machine goes straight there: DMHubClient takes such a base URL without
            # allow_insecure_http because nobody can overhear it, and a proxy would read the
            # secret and the token in clear text (nor could one elsewhere reach this loopback).
            if self.base_url.startswith("http://") and is_loopback(self.base_url):
                conn.proxy = None
            else:
                conn.proxy = usable_proxy(env_proxy(self.base_url))
            conn.proxy_password = URL(conn.proxy).password if conn.proxy else None
            conn.http = aiohttp.ClientSession(
                timeout=conn.timeout,  # the root client's: a derived one's are passed (_send)
                connector=_Connector(limit=conn.max_concurrency),
                # The encodings _read decompresses itself, checking that each stream ends.
                headers={**HEADERS, "Accept-Encoding": "gzip, deflate"},
                auto_decompress=False,
            )
        return conn.http

    async def _send(
        self,
        request: Request | None,
        token: str | None,
        retries: int,
        fields: _Fields = _NO_FIELDS,
    ) -> _Answer:
        """One attempt: ``request``, or, None, the call of ``fields`` (:class:`Request`'s first
        seven), whose :class:`Request` is made only if a body, a log line or an error needs it: a
        lookup's usual answer needs none (2.6k instructions a call)."""
        if request is None:
            method, path, params, json, _, _, decode = fields
        else:
            method, path, params, json = request.method, request.path, request.params, request.json
            decode = request.decode
        # request.query(token), written out: a call less a request.
        if token is None:
            query = dict(params) if params else {}
        else:
            query = {**params, "access_token": token} if params else {"access_token": token}
        if json is None:  # request.body(), written out: a call less a request
            body: bytes | None = None
            headers: Mapping[str, str] = HEADERS
        else:
            if request is None:
                request = Request(*fields)
            body, headers = request.body()
        sent_headers: Mapping[str, str] | None = headers
        if self._headers:
            sent_headers = {**headers, **self._headers}
        elif headers is HEADERS and self._conn.owns_http:
            # The session made here sends them as its default headers: aiohttp merges a
            # request's own headers in Python, about 10k instructions a call.
            sent_headers = None
        failure: BaseException | None = None
        resp: aiohttp.ClientResponse | None = None
        limits = self._limits
        try:
            if limits.take():  # a free slot, the usual case, without a coroutine
                pass
            elif self.derived or limits.queued():
                # Queued behind the calls in flight, or the limits the parent's: the close ends
                # the wait. A session passed in runs its requests to their end (up to
                # `timeout`), and a call queued behind one, never to be sent, waited that long
                # after aclose().
                await _slot_unless_closed(limits, self._closing)
            else:
                await limits.acquire()  # a free slot, then a rate turn (which the close ends)
        except BaseException:
            # Closed, cancelled, or a shared limit's error (its Redis away) while waiting: the
            # token and the query (a token request's: the secret) were in this frame's
            # variables, for an error tracker to record (see the failure's `del` below).
            del token, query, params
            raise
        once: _SentOnce | None = None
        unusable = False
        try:
            if method in _WRITES and not self._conn.owns_http:
                # The client's own connections ask their idle socket themselves (_Handler): a close
                # that came is seen there without these turns of the loop.
                await _read_pending_closes()
            # The client may have been closed while this request queued for its slot.
            if self._conn.closed or (self.derived and self._closing.closed):
                self.check_open()
            http = self._conn.http or self._http_session()  # made at the first request
            if method in _RESENT_BY_AIOHTTP and _MIDDLEWARES:
                once = _SentOnce()
            started = time.perf_counter()
            self.stats.requests += 1
            try:
                # Awaited, not entered: `async with` ran four coroutines more a call (aiohttp's
                # context managers, entered and left), about 4k instructions. The answer is
                # released below as leaving the block does.
                url = self.base_url + path
                if once is not None:  # a PUT or a DELETE: sent once (see _SentOnce)
                    resp = await http.request(
                        method,
                        url,
                        params=query,
                        data=body,
                        headers=sent_headers,
                        timeout=self._timeout,
                        allow_redirects=False,
                        proxy=self._conn.proxy,
                        raise_for_status=False,
                        # Given for a request, they stand in for the session's: a session of
                        # the caller's keeps its own, outside this one.
                        middlewares=(*getattr(http, "_middlewares", ()), once),
                    )
                elif (
                    body is None
                    and sent_headers is None
                    and self._conn.owns_http
                    and self._timeout is self._conn.timeout
                    and self._conn.proxy is None
                ):
                    # The session made here, as it was made: the keywords below are its
                    # defaults. aiohttp collects each keyword passed in a dict and binds it
                    # again: about 3.5k instructions a call for the five left out.
                    resp = await http.request(method, url, params=query, allow_redirects=False)
                else:
                    resp = await http.request(
                        method,
                        url,
                        params=query,
                        data=body,
                        headers=sent_headers,
                        timeout=self._timeout,  # a passed-in session has its own default
                        allow_redirects=False,  # see read_response: credentials stay here
                        proxy=self._conn.proxy,
                        # read_response maps the status: a session of the caller's made with
                        # raise_for_status=True turned a 404 into a connection error, retried.
                        raise_for_status=False,
                    )
                # Read it all before the release: a retry never holds a connection.
                reading = self._reading
                reading.add(resp)  # for aclose() to end
                try:
                    status, resp_headers = resp.status, resp.headers
                    length = resp.content_length
                    if (
                        length is not None
                        and length <= self._max_response_size
                        and "Content-Encoding" not in resp_headers
                    ):
                        payload = await resp.read()  # its declared length, within the limit
                    else:
                        if request is None:
                            request = Request(*fields)
                        payload = await self._read(request, resp)
                finally:
                    reading.discard(resp)
                    resp.release()
                    # What leaving aiohttp's block does: waits for the task that writes the
                    # request's body, which for a body-less request, or one sent whole, is
                    # done by the answer's end (aiohttp's `_writer` None): a coroutine less.
                    if resp._writer is not None:
                        await resp.wait_for_close()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
                failure = err
            except RuntimeError:
                # aiohttp's "Session is closed", before anything is sent: a session passed in
                # that its owner closed. Raised below, out of this block (its frames hold the
                # token).
                if not http.closed:
                    raise
                unusable = True
        except BaseException as err:  # closed, cancelled, too large: see the failure's `del`
            # below. The frames it came up through are done: aiohttp's (a cancellation's: the
            # query, the URL), _read's (the answer, its URL) held the token; this one's, still
            # running, is left alone by clear_frames.
            traceback.clear_frames(err.__traceback__)
            del token, query, params, resp, err, once
            raise
        finally:
            limits.release()
        # The token this request carried: by the time its answer comes back another call may
        # have refreshed it, so self._current_token is not enough. (self.secrets written out:
        # a property call and a tuple less on every request.)
        secrets = (
            self._secret,
            self._static_token,
            self._current_token,
            self._conn.proxy_password,
            token,
        )
        if unusable:
            del token, query, params, secrets, resp, once
            raise DMHubError(
                f"{method} {path}: the aiohttp session passed as session= is closed, so nothing"
                " was sent: close it after the client (the client never closes a session it"
                " did not open)"
            )
        if failure is not None:
            if request is None:
                request = Request(*fields)
            # Raised outside the except block, from a redacted stand-in: aiohttp's exceptions
            # carry the URL, and so the token; they must not ride along as cause or context.
            logger.debug(
                "%s failed: %s (%.1f ms)",
                request.describe(),
                type(failure).__name__,
                (time.perf_counter() - started) * 1000,
            )
            error = connection_error(
                request,
                timeout=isinstance(failure, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)),
                # Refused, DNS, or no connection open within connect_timeout: aiohttp raises
                # ConnectionTimeoutError only around opening one, before a byte is sent; or,
                # within `timeout`, a plain timeout that landed there (_timed_out_opening).
                not_sent=isinstance(failure, _NOT_SENT)
                or _failed_opening(failure)
                or (
                    isinstance(failure, asyncio.TimeoutError)
                    and self._conn.owns_http
                    and _timed_out_opening(failure)
                ),
                kind=type(failure).__name__,
                where=self.base_url,
                status=getattr(failure, "status", None),
                proxied=self._conn.proxy is not None and self._conn.owns_http,
                reason=_tls_reason(failure),
                no_dns_answer=_no_dns_answer(failure),
                not_http=_not_http(failure),
            )
            cause = RedactedCause(failure, secrets)
            # An error tracker records the variables of each frame of a traceback (Sentry's
            # default): the token, the secret (a token request's parameters) and aiohttp's
            # error and answer (their URL) must not be among this one's.
            del token, query, params, secrets, failure, resp, once
            raise error from cause
        self.stats.responses += 1
        if logger.isEnabledFor(logging.DEBUG):  # describe() encodes the query: not for nothing
            if request is None:
                request = Request(*fields)
            elapsed_ms = (time.perf_counter() - started) * 1000
            logger.debug("%s -> %d (%.1f ms)", request.describe(), status, elapsed_ms)
        if 200 <= status < 300:
            # The usual answer, read here: a call less a request, and no Request made for it;
            # a page's too, by its decode, with the body's keys beside its records (about 4k
            # instructions a page). Any other answer (not JSON, not what decode reads, an
            # error code) is read_response's to read and build.
            try:
                if decode is None:
                    data = keys = _json.loads(payload)
                else:
                    data, keys = decode(payload)
            except (ValueError, RecursionError):
                pass
            else:
                if type(keys) is list or error_of(keys, secrets)[0] is None:
                    return status, resp_headers, data, retries
                # An error's body, which may quote the token: not among this frame's variables
                # (see above); read_response reads it again, masked.
                del data, keys
        if request is None:
            request = Request(*fields)
        try:
            data = read_response(
                request,
                status,
                resp_headers,
                payload,
                auth_codes=self._auth_codes,
                # Only a 429's or a 503's Retry-After needs it (an HTTP date): not read for
                # every answer.
                now=self._clock() if status in RETRY_AFTER_STATUSES else 0.0,
                secrets=secrets,
            )
        except DMHubError as err:
            # The error has what it needs of the body; the locals of the frames in its
            # traceback (this one's and read_response's) held all of it, up to
            # max_response_size, for as long as the error was kept (return_exceptions=True,
            # a list of failures, an error tracker). read_response's are finished frames;
            # this one, still running, is left alone by clear_frames.
            traceback.clear_frames(err.__traceback__)
            # Nor the secrets (see above), nor the answer's headers: a redirect's Location
            # quotes the query it was sent, the token in it (http:// sent on to https://).
            del payload, resp, resp_headers, token, query, params, secrets
            raise
        return status, resp_headers, data, retries

    async def _read(self, request: Request, resp: aiohttp.ClientResponse) -> bytes:
        """A body ``_send`` cannot read in one go (declared too large, chunked or compressed),
        or ResponseTooLargeError as soon as it passes ``max_response_size``.

        A body sent compressed (``Content-Encoding``) to the client's own session (which
        leaves it to this) is decompressed here, and refused (ResponseDecodeError) unless its
        stream ends as it should; a session passed in decompresses as it was made to."""
        limit = self._max_response_size
        length = resp.content_length
        if length is not None and length > limit:
            raise too_large(request, resp.status, limit)
        inflate: Any = None  # a zlib decompressor, when the body is still compressed
        encoding = resp.headers.get("Content-Encoding")  # a chunked page's only step more
        if encoding is not None and not getattr(self._conn.http, "auto_decompress", True):
            try:
                inflate = _decompressor(request, resp.status, encoding)
            except ResponseDecodeError:
                # The status tells an error answer's class (a 429's Retry-After, a 500's
                # retry): its body, unreadable, only its description.
                if 200 <= resp.status < 300:
                    raise
                return b""
        body = bytearray()  # chunked or compressed: the size is known only by reading
        received = corrupt = False
        gzipped = inflate is not None and inflate is not _SNIFF  # not deflate, not identity
        members = 1  # the gzip members begun (see below)
        async for chunk in resp.content.iter_chunked(1 << 16):
            if inflate is not None and chunk:
                received = True
                if inflate is _SNIFF:
                    inflate = _deflate_of(chunk)
                # One byte past the limit at most: a bomb of 8 KB is not inflated to gigabytes.
                try:
                    chunk = inflate.decompress(chunk, limit + 1 - len(body))
                    # A gzip body is a series of members (RFC 1952, 2.2), as a gateway that
                    # compresses as it streams may send it, and aiohttp reads them all: each
                    # after the first was left unread, the answer refused as "cut short (or
                    # followed by more)". Each is read by a decompressor of its own, within
                    # the same limit (a max_length of 0 would be none: not asked for).
                    while (
                        gzipped
                        and inflate.eof
                        and inflate.unused_data
                        and len(body) + len(chunk) <= limit
                    ):
                        members += 1
                        if members > _GZIP_MEMBERS:
                            # Empty members inflate to nothing, so the limit never stops
                            # them: a megabyte of them costs 0.3 s of the event loop.
                            raise zlib.error("more gzip members than an answer is split into")
                        rest, inflate = inflate.unused_data, zlib.decompressobj(zlib.MAX_WBITS | 16)
                        chunk += inflate.decompress(rest, limit + 1 - len(body) - len(chunk))
                except zlib.error:
                    # Not valid data of its encoding (a wrong byte, a wrong CRC): zlib's own
                    # error came out of every call, past `except DMHubError`.
                    corrupt = True
                    break
            body += chunk
            if len(body) > limit:
                # Not kept in this frame's locals: the error's traceback holds them for as
                # long as the error is kept, and this body is what the limit refused.
                del body, chunk
                raise too_large(request, resp.status, limit)
        if corrupt:
            del body, chunk  # not for an error tracker (see above)
            if not 200 <= resp.status < 300:
                return b""  # the status tells an error answer's class, as an unknown encoding's
            raise build_error(
                ResponseDecodeError,
                request,
                resp.status,
                None,
                f"the answer's {printable(encoding or '')!r} stream is corrupt: not read",
            )
        if received and not (inflate.eof and not inflate.unused_data) and 200 <= resp.status < 300:
            del body  # not for an error tracker (see above)
            raise build_error(
                ResponseDecodeError,
                request,
                resp.status,
                None,
                f"the answer's {printable(encoding or '')!r} stream is cut short (or followed by"
                " more): not read, its start would have been taken for all of it",
            )
        return bytes(body)


#: Stands for a ``deflate`` decompressor not yet made: the first byte tells which it is.
_SNIFF: Any = object()
#: The most gzip members an answer is read in (RFC 1952 allows any number): more is refused
#: as corrupt. A gateway that compresses as it streams begins one a flush, a few an answer;
#: a stream of empty ones never reaches ``max_response_size``.
_GZIP_MEMBERS: Final = 1024


def _decompressor(request: Request, status: int, encoding: str) -> Any:
    """A zlib decompressor for a body sent with this ``Content-Encoding`` (``_SNIFF`` for
    ``deflate``; None for ``identity``), or ResponseDecodeError for one this client did not ask
    for (its ``Accept-Encoding``) and cannot read.

    aiohttp's own does not check that a gzip stream ends: cut short (a gateway's, or a
    close-delimited answer's lost end), its start was read as the whole, a count of 12,345 for
    1,234,567."""
    name = encoding.strip().lower()
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if name == "deflate":
        return _SNIFF
    if name in ("", "identity"):
        return None
    raise build_error(
        ResponseDecodeError,
        request,
        status,
        None,
        f"the answer is compressed as {printable(encoding)!r}, which this client did not ask for"
        " (it takes gzip and deflate) and cannot read",
    )


def _deflate_of(first: bytes) -> Any:
    """The decompressor of a ``deflate`` body: with the zlib header RFC 9110 asks for, or
    without it, as some servers send it (aiohttp tells them apart the same way)."""
    return zlib.decompressobj(zlib.MAX_WBITS if first[0] & 0x0F == 8 else -zlib.MAX_WBITS)


#: c-ares's codes of a lookup that got no answer (ARES_ESERVFAIL, ARES_ECONNREFUSED "Could not
#: contact DNS servers", ARES_ETIMEOUT "Timeout while contacting DNS servers"), which aiodns's
#: DNSError carries first.
_ARES_NO_ANSWER = (3, 11, 12)


def _no_dns_answer(failure: BaseException) -> bool:
    """Whether ``failure`` is a host lookup that got no answer ("Temporary failure in name
    resolution", EAI_AGAIN: this machine offline, its DNS server down), which says nothing of
    whether the host exists.

    aiohttp looks hosts up with aiodns where it is installed (``aiohttp[speedups]``), which says
    it as ``OSError(None, "Could not contact DNS servers")`` from aiodns's ``DNSError``: no
    errno, and "was not found (is base_url right?)" sent the user to check a right URL."""
    if not isinstance(failure, aiohttp.ClientConnectorError):
        return False
    os_error = failure.os_error
    if getattr(os_error, "errno", None) == socket.EAI_AGAIN:
        return True
    dns_error = getattr(sys.modules.get("aiodns.error"), "DNSError", None)  # imported if used
    cause = os_error.__cause__
    if cause is None or not (isinstance(dns_error, type) and isinstance(cause, dns_error)):
        return False
    return bool(cause.args) and cause.args[0] in _ARES_NO_ANSWER


def _tls_reason(failure: BaseException) -> str | None:
    """Why a TLS handshake failed, in OpenSSL's words ("self-signed certificate", "wrong
    version number"), or None for any other failure."""
    if isinstance(failure, aiohttp.ClientConnectorCertificateError):
        return getattr(failure.certificate_error, "verify_message", None) or None
    if isinstance(failure, aiohttp.ClientConnectorSSLError):
        reason = getattr(failure.os_error, "reason", None)
        return reason.lower().replace("_", " ") if isinstance(reason, str) else None
    return None


def _not_http(failure: BaseException) -> str | None:
    """What aiohttp's parser found wrong in an answer, said after "was": no HTTP (a status
    line of another protocol, a header without a colon) or HTTP past the limits aiohttp reads
    (a header line over its 8190 bytes, which it was said not to be), in its words up to the
    bytes it quotes ("not HTTP (Bad status line)"); None for any other failure."""
    if not isinstance(failure, aiohttp.ClientResponseError):
        return None
    if not isinstance(failure.__cause__, HttpProcessingError):
        return None
    # Up to a quote that opens (not the apostrophe of "can't", which cut its words short).
    said = re.split(r"""[:\n]|(?<!\w)['"]|\bb['"]""", str(failure.message), maxsplit=1)[0].strip()
    said = printable(said) or "unreadable"
    # By aiohttp's words: the client's protocol raises its parser's errors as one class.
    if said.startswith("Got more than "):  # "... bytes when reading: <the line>", cut there
        return f"HTTP beyond the client's limits ({said} a line)"
    if said.startswith("Too many "):  # headers, trailers
        return f"HTTP beyond the client's limits ({said})"
    return f"not HTTP ({said})"


#: What aiohttp raises for a request that never left: refused, DNS, and (from aiohttp 3.10,
#: the SDK takes 3.9) no connection opened within ``connect_timeout``.
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    # The proxy's answer to the CONNECT of an https base URL (407: its user and password),
    # before the tunnel to the service was open: a create was said to have maybe been applied.
    aiohttp.ClientHttpProxyError,
    *(getattr(aiohttp, name) for name in ("ConnectionTimeoutError",) if hasattr(aiohttp, name)),
)


#: The writes aiohttp sends again by itself, at once, when the connection drops before an
#: answer (its IDEMPOTENT_METHODS; a GET too, left to it): see :class:`_SentOnce`.
_RESENT_BY_AIOHTTP = frozenset({"PUT", "DELETE"})
#: The requests that may change data, sent on a pooled connection only once the loop has read
#: the closes that came in (:func:`_read_pending_closes`).
_WRITES = frozenset({"POST", "PATCH"}) | _RESENT_BY_AIOHTTP
#: Whether this aiohttp takes a request's own middlewares (3.12 and later).
_MIDDLEWARES = "middlewares" in inspect.signature(aiohttp.ClientSession._request).parameters


def sends_once(method: str) -> bool:
    """Whether aiohttp would send a ``method`` request again by itself, and the client stops
    it (the simulator tells aiohttp's re-sends from the client's own retries by it)."""
    return _MIDDLEWARES and method in _RESENT_BY_AIOHTTP


class _SentOnce:
    """An aiohttp middleware that lets a request be sent once: aiohttp sends a PUT or a DELETE
    again by itself, at once and unseen, when its connection drops before an answer (a reset,
    a server gone), although the service may have carried it out.

    A delete so applied and sent again was answered "no such customer" (40201), raised as a
    plain NotFoundError, the customer gone by the caller's own delete; an update sent with
    ``idempotent=False`` reached the service twice, its error saying "it was not repeated".
    The second send fails as the first did: the retry loop decides, knowing that the first
    may have been applied (:func:`_note_write_failure`).
    """

    __slots__ = ("failure",)

    def __init__(self) -> None:
        self.failure: BaseException | None = None

    async def __call__(
        self,
        request: aiohttp.ClientRequest,
        handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]],
    ) -> aiohttp.ClientResponse:
        if self.failure is not None:
            raise self.failure
        try:
            return await handler(request)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as err:
            self.failure = err
            raise


class _Handler(ResponseHandler):
    """aiohttp's protocol of a connection, which a pooled connection the server has sent
    something on since its last answer tells unfit for reuse.

    An idle keep-alive connection has nothing to say: bytes on it are an answer nobody asked
    for (a second answer a proxy or a server left behind the first) or its close. aiohttp
    parsed such an answer into the idle connection's queue, or left it in the socket, and the
    next request on it read it as its own: ``get(2)`` returned another customer, an update
    the answer of the call before it, and every later call on the connection the one before
    its own.

    The check is aiohttp's own question, :meth:`is_connected`, which its connector asks of a
    pooled connection exactly as it would hand it out (and of idle ones as it sweeps its
    pool, aiohttp 3.9 to 3.14): one that says no is closed there, and the request takes
    another, or a new one. Nothing on the way of a call but that: an override of the
    connector's ``connect`` cost a coroutine layer and a lookup a call (about 7k
    instructions, 1.8% of a lookup). aiohttp's ``Connection.closed`` asks it too, which no
    code of aiohttp's reads and the client's requests never do.
    """

    #: What tells whether bytes wait in this connection's socket (its own poll), made at the
    #: first reuse. A class default, not set in ``__init__``: a new connection costs nothing.
    _readable: Callable[[int], object] | None = None

    def is_connected(self) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        readable = self._readable
        if readable is None:
            readable = self._readable = _readable_of(transport)
        # Parsed by the loop into the queue (aiohttp's should_close counts it, and a close it
        # read), or still in the socket (the loop busy with other work since they came).
        return not (self.should_close or readable(0))


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, its connections' protocol the client's own (:class:`_Handler`)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        handler: Any = functools.partial(_Handler, loop=self._loop)
        self._factory = handler


def _readable_of(transport: asyncio.BaseTransport) -> Callable[[int], object]:
    """What tells whether bytes wait in ``transport``'s socket, unread (the loop has not
    turned since they came, busy with other work): called with 0, something true when they
    do. A connection with no socket to ask is taken as spoken on."""
    sock = transport.get_extra_info("socket")
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return lambda _: True
    if not hasattr(select, "poll"):  # Windows: select() takes any socket there
        return lambda _: select.select([fd], [], [], 0)[0]
    poll = select.poll()  # this connection's own, its socket registered once
    poll.register(fd, select.POLLIN)
    return poll.poll


#: Where a request waits for its connection: aiohttp's connect.
_CONNECT: Final = aiohttp.BaseConnector.connect.__code__


def _failed_opening(failure: BaseException) -> bool:
    """Whether ``failure`` came up from aiohttp's connect, where the request waits for its
    connection: nothing of it was sent. A proxy that closed the connection on the tunnel's
    ``CONNECT`` (denying the host), or answered it with no HTTP, raised a plain
    ServerDisconnectedError or ClientResponseError from there, taken for a failure after the
    request went out: a create said its outcome unknown, and was not sent again. Read from the
    failure's traceback on failure alone: nothing on the way of a call."""
    tb = failure.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _CONNECT:
            return True
        tb = tb.tb_next
    return False


def _timed_out_opening(failure: BaseException) -> bool:
    """Whether ``failure``, the attempt's ``timeout`` run out (a plain timeout), ran out while
    the request waited for its connection: nothing was sent then. Without ``connect_timeout``
    aiohttp raises it from the cancellation that landed in its connect (its cause, or its
    context), which a host taking no connection (its queue full, a SYN dropped) leaves it in;
    it was taken for a timeout after the request went out, a write's outcome unknown. Read
    from the cancellation's traceback on failure alone: nothing on the way of a call."""
    landed = failure.__cause__ or failure.__context__
    tb = landed.__traceback__ if isinstance(landed, asyncio.CancelledError) else None
    while tb is not None:
        if tb.tb_frame.f_code is _CONNECT:
            return True
        tb = tb.tb_next
    return False


async def _read_pending_closes() -> None:
    """Let the event loop read what has arrived on idle pooled connections, so that aiohttp
    drops those the server has closed before it hands one to the next request.

    A server's or load balancer's close (a keep-alive timeout, or a close after each answer
    without ``Connection: close``) is only seen when the loop reads the connection's FIN:
    a create sent right after the previous answer, or after a spell of work that kept the
    loop from turning, took the closed connection, met its reset, and failed with
    ``outcome_unknown`` although it never reached the service. httpx and urllib3 check an idle
    socket before reusing it, as the client's own connector does (:class:`_Handler`); aiohttp
    trusts the loop to have read it, so a session passed in takes these. Two turns: the first
    queues the read of any socket that is ready, after this task; the second runs after it.
    """
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _fetch_budget(attempt: float, policy: RetryPolicy) -> float:
    """The longest a token fetch may take, retries and their waits included: what a client
    waits for the store's lock while another client fetches.

    A wait is a backoff's (up to ``max_delay``) or a ``Retry-After``'s (up to
    ``retry_after_cap``): counted without the latter, the waiters gave up on a holder that
    honoured a token endpoint's 429 and fetched their own tokens, revoking the one it stored.
    """
    wait = max(policy.max_delay, policy.retry_after_cap)
    longest = (policy.max_retries + 1) * attempt + policy.max_retries * wait
    return min(longest, policy.budget + attempt) if policy.budget is not None else longest


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine: plain http cannot be overheard there.

    A loopback address, or ``localhost`` itself (``/etc/hosts``). Not a name under
    ``.localhost``: glibc sends it to DNS, which may answer with any host's address.
    """
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def env_proxy(url: str) -> str | None:
    """The proxy ``HTTPS_PROXY``/``HTTP_PROXY`` name for ``url``, unless ``NO_PROXY`` spares it.

    Read once, when the client makes its HTTP session: aiohttp's ``trust_env=True`` would look
    both up, and ``~/.netrc`` too, in a worker thread on every request (0.6 ms of CPU each).
    urllib's rules throughout; where the proxies come from the environment alone (POSIX but
    macOS), only its ``*_proxy`` variables are read (:func:`environment_proxies`).
    """
    parts = urlsplit(url)
    if urllib.request.getproxies is urllib.request.getproxies_environment:
        proxy = environment_proxies().get(parts.scheme)
    else:  # macOS and Windows: the system's settings too, as urllib reads them
        proxy = urllib.request.getproxies().get(parts.scheme)
    # With no proxy for the scheme (the usual case) the bypass rules cannot change the answer.
    if proxy is None or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def usable_proxy(proxy: str | None) -> str | None:
    """The proxy as aiohttp takes it (``host:port`` as ``http://host:port``, as urllib and
    requests read it), or InvalidRequestError, before anything is sent, for one it cannot use,
    never quoting it: it may hold a password. A mistyped port used to fail every request with
    aiohttp's InvalidURL, the password in its message, retried as if the service were down."""
    if proxy is None:
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    where = "the proxy the environment names (HTTPS_PROXY, HTTP_PROXY or the system's)"
    try:
        url = resolvable_url(proxy)
    except (ValueError, UnicodeError):
        raise InvalidRequestError(f"{where} is not a URL") from None
    port, host = url.port, url.host
    if url.scheme not in ("http", "https") or not host or port is None:
        raise InvalidRequestError(f"{where} must be an http:// or https:// URL with a host")
    if refused_ipv4(host):  # "not a canonical IPv4 address" at every request, retried
        raise InvalidRequestError(
            f"{where} has an IPv4 address written otherwise than as four decimal numbers (no"
            " leading zero), which aiohttp refuses to connect to"
        )
    return proxy


def environment_proxies() -> dict[str, str]:
    """``urllib.request.getproxies_environment()``: the same passes over the same variables,
    in the same order, but only those it can use.

    urllib reads every variable of the environment twice, decoding each name and value: about
    0.55M instructions with 35 of them, 0.72M in a benchmark's child, for each client made.
    Its rules, kept: any ``<scheme>_proxy`` in any case, then the all-lowercase ones over
    those (an empty one removes the scheme), and no upper-case ``HTTP_PROXY`` in a CGI script
    (CVE-2016-1000110: a request's ``Proxy:`` header becomes it).
    """
    environ = os.environ
    # (name, scheme, value) of each variable named <scheme>_proxy in any case, in order.
    found = [
        (name, lowered[:-6], environ[name])
        for name in environ
        if (lowered := name.lower())[-6:] == "_proxy"
    ]
    proxies = {scheme: value for _, scheme, value in found if value}
    if "REQUEST_METHOD" in environ:
        proxies.pop("http", None)
    for name, scheme, value in found:
        if name[-6:] == "_proxy":  # a lower-case suffix: these win over the others
            if value:
                proxies[scheme] = value
            else:
                proxies.pop(scheme, None)
    return proxies
