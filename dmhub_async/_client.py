"""The session layer: every call goes through :meth:`DMHubClient.request`.

It injects the token, applies the client-wide limits, retries (``_retry``), maps answers to the
error tree (``_exceptions``) and keeps secrets out of every error and log line (``_redact``).
aiohttp is touched here and nowhere else; building a request and reading an answer are plain
functions (:class:`Request`, :func:`read_response`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import tzinfo
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import attrs

from . import _json
from ._auth import DEFAULT_STORE, Token, TokenManager, TokenStore, token_key
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    DMHubError,
    InvalidRequestError,
    ResponseDecodeError,
    coerce_code,
    error_class,
)
from ._limits import Limits, RateLimiter
from ._query_time import zone_setting
from ._redact import MASK, RedactedCause, redact
from ._retry import CallState, RetryPolicy, parse_retry_after, retrying
from ._validate import check_settings

if TYPE_CHECKING:
    from .resources.customer_statistics import CustomerStatistics
    from .resources.customers import Customers
    from .resources.identities import Identities

__all__ = [
    "DEFAULT_AUTH_ERROR_CODES",
    "DEFAULT_BASE_URL",
    "DMHubClient",
    "Request",
    "read_response",
]

logger = logging.getLogger("dmhub_async")

DEFAULT_BASE_URL = "https://api.convertlab.com"
#: Body codes meaning "this token is no longer valid" (CONTRACT.md: undocumented: configurable).
DEFAULT_AUTH_ERROR_CODES: frozenset[int | str] = frozenset({40001, 40014, 42001})
TOKEN_PATH = "/security/accesstoken"


def _redact_params(params: Mapping[str, str] | None) -> str:
    if not params:
        return repr(params)
    return repr({k: MASK if k in ("secret", "access_token") else v for k, v in params.items()})


@attrs.frozen
class Request:
    """One API call, before the token is added: what the retry loop repeats."""

    method: str
    path: str
    #: The token request's query holds the secret: keep it out of the repr.
    params: Mapping[str, str] | None = attrs.field(default=None, repr=_redact_params)
    json: Any = None
    #: Safe to repeat when the first answer was lost (GET, PUT, DELETE, upserts).
    idempotent: bool = True
    #: Body codes that mean "no such record" for this call (40201 on a single-customer read).
    not_found_codes: frozenset[int | str] = frozenset()
    authenticated: bool = True

    def describe(self) -> str:
        """``METHOD /path?query`` with no token in it."""
        query = f"?{redact(urlencode(self.params))}" if self.params else ""
        return f"{self.method} {self.path}{query}"


def read_response(
    request: Request,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    auth_codes: frozenset[int | str] = DEFAULT_AUTH_ERROR_CODES,
    now: float = 0.0,
    secrets: Iterable[str | None] = (),
) -> Any:
    """The decoded body of a successful answer, or the :class:`APIError` it stands for, raised.

    Any body with a non-zero ``error_code`` is an error whatever the HTTP status: the service
    answers errors on HTTP 200 (CONTRACT.md, "Errors").
    """
    data: Any = None
    decoded = True
    if body.strip():
        try:
            data = _json.loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError too
            decoded = False  # RecursionError: nested deeper than the decoders go ([[[[...)
    elif 200 <= status < 300:
        return None  # 204 on delete, or an empty success

    code: int | str | None = None
    description: str | None = None
    if isinstance(data, dict) and "error_code" in data:
        code = coerce_code(data.get("error_code"))
        if code == 0:
            code = None
        else:
            raw = data.get("error_description")
            description = redact(str(raw), secrets) if raw is not None else None

    if 200 <= status < 300 and code is None:
        if not decoded:
            raise _error(ResponseDecodeError, request, status, None, _snippet(body, secrets))
        return data

    if request.path == TOKEN_PATH and status < 500 and status != 429:
        cls: type[APIError] = AuthenticationError  # bad appid/secret, on HTTP 200 live
    else:
        cls = error_class(
            status, code, auth_codes=auth_codes, not_found_codes=request.not_found_codes
        )
    if description is None and not decoded:
        description = _snippet(body, secrets)
    retry_after = None
    if status in (429, 503):
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
    raise _error(cls, request, status, code, description, retry_after=retry_after)


def _snippet(body: bytes, secrets: Iterable[str | None]) -> str:
    # Redact before cutting: a secret cut in half at the edge would no longer be recognised,
    # and its first half would leak.
    text = redact(body[:4096].decode("utf-8", "replace"), secrets)
    cut = text[:120].strip().replace("\n", " ")
    return f"not JSON: {cut!r}" + ("..." if len(body) > 120 else "")


def _error(
    cls: type[APIError],
    request: Request,
    status: int,
    code: int | str | None,
    description: str | None,
    *,
    retry_after: float | None = None,
) -> APIError:
    message = f"{request.method} {request.path} -> HTTP {status}"
    if code is not None:
        message += f", error_code {code}"
    if description:
        message += f": {description}"
    if retry_after is not None:
        message += f" (Retry-After {retry_after:g}s)"
    # A write whose answer failed may still have been applied: don't repeat it blindly.
    # 429 and 503 are refusals: nothing was written. A 4xx is final anyway, and so is an
    # error_code on a 2xx: the service answered, and said no. A 2xx we cannot read is unknown.
    unknown = not request.idempotent and (
        (status < 300 and code is None) or (status >= 500 and status != 503)
    )
    return cls(
        message,
        status=status,
        code=code,
        description=description,
        method=request.method,
        path=request.path,
        outcome_unknown=unknown,
        retry_after=retry_after,
    )


def _connection_error(request: Request, err: BaseException) -> APIConnectionError:
    """Our error for an aiohttp or timeout failure; says when a write's outcome is unknown."""
    not_sent = isinstance(err, aiohttp.ClientConnectorError)  # refused or DNS: never reached
    unknown = not request.idempotent and not not_sent
    timeout = isinstance(err, (asyncio.TimeoutError, aiohttp.ServerTimeoutError))
    what = "timed out" if timeout else f"failed ({type(err).__name__})"
    message = f"{request.method} {request.path} {what}"
    if unknown:
        message += (
            "; the request may have reached the service, so its outcome is unknown and it was"
            " not repeated: check before trying again"
        )
    cls = APITimeoutError if timeout else APIConnectionError
    return cls(message, method=request.method, path=request.path, outcome_unknown=unknown)


@attrs.define
class ClientStats:
    """What a client has done so far."""

    requests: int = 0
    retries: int = 0
    token_fetches: int = 0


class DMHubClient:
    """An async client for the DM Hub customer API: ``async with DMHubClient(...) as dm:``.

    Args:
        app_id: the app id; defaults to ``$DMHUB_APP_ID``.
        secret: the app secret; defaults to ``$DMHUB_SECRET``.
        access_token: a token to use as is, instead of fetching one.
        base_url: defaults to ``$DMHUB_BASE_URL``, else ``https://api.convertlab.com``.
        session: an ``aiohttp.ClientSession`` to use; the client never closes it.
        timeout: seconds for one attempt of one request.
        max_retries: retries after a failed attempt (see :class:`RetryPolicy`).
        max_concurrency: requests in flight at once, across the whole client.
        rate_limit: requests per second across the whole client, or None.
        token_store: where clients sharing an appid share its one token
            (:class:`MemoryTokenStore` per process by default).
        auth_error_codes: body ``error_code`` values that mean the token is no longer valid.
        retry: a full :class:`RetryPolicy`; overrides ``max_retries``.
        clock: wall-clock seconds (``time.time``); inject for tests.
        sleep: the sleep used for backoff and rate limiting (``asyncio.sleep``); inject for tests.
        timezone: the zone of time filters given without an offset: a ``tzinfo`` or an IANA
            name (``"Asia/Shanghai"``). Unset, they are read as UTC with a
            :class:`NaiveDatetimeWarning`.

    Raises:
        InvalidRequestError: no credentials, or a bad setting.
    """

    def __init__(
        self,
        app_id: str | None = None,
        secret: str | None = None,
        *,
        access_token: str | None = None,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        max_concurrency: int = 16,
        rate_limit: float | None = None,
        token_store: TokenStore | None = None,
        auth_error_codes: Iterable[int | str] = DEFAULT_AUTH_ERROR_CODES,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        timezone: tzinfo | str | None = None,
    ) -> None:
        check_settings(
            {"app_id": app_id, "secret": secret, "access_token": access_token},
            base_url,
            {
                "timeout": (timeout, 0, False, float),
                "max_retries": (max_retries, 0, True, int),
                "max_concurrency": (max_concurrency, 1, True, int),
                "rate_limit": (rate_limit, 0, False, float),
            },
            auth_error_codes,
        )
        self.app_id = app_id or os.environ.get("DMHUB_APP_ID") or None
        self._secret = secret or os.environ.get("DMHUB_SECRET") or None
        self._static_token = access_token
        if not access_token and not (self.app_id and self._secret):
            raise InvalidRequestError(
                "no credentials: pass app_id and secret (or access_token), "
                "or set DMHUB_APP_ID and DMHUB_SECRET"
            )
        self.base_url = (base_url or os.environ.get("DMHUB_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidRequestError(
                f"base_url must start with http:// or https://: {self.base_url!r}"
            )
        if not timeout > 0:
            raise InvalidRequestError(f"timeout must be positive, not {timeout!r}")
        if max_retries < 0:
            raise InvalidRequestError(f"max_retries must be >= 0, not {max_retries!r}")
        if max_concurrency < 1:
            raise InvalidRequestError(f"max_concurrency must be >= 1, not {max_concurrency!r}")
        #: The zone of naive time filters (None: UTC, with a warning): see ``_query_time``.
        self.timezone: tzinfo | None = zone_setting(timezone)
        self._clock = clock or time.time
        self._sleep = sleep or asyncio.sleep
        self.retry_policy = retry or RetryPolicy(max_retries=max_retries)
        self._auth_codes = frozenset(coerce_code(c) or c for c in auth_error_codes)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_concurrency = max_concurrency
        try:
            limiter = (
                RateLimiter(rate_limit, clock=self._clock, sleep=self._sleep)
                if rate_limit is not None
                else None
            )
        except ValueError as err:
            raise InvalidRequestError(str(err)) from None
        self._limits = Limits(max_concurrency, limiter)
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self.stats = ClientStats()
        self._tokens: TokenManager | None = None
        self._current_token: str | None = None
        if self.app_id and self._secret:
            self._tokens = TokenManager(
                token_key(self.base_url, self.app_id, self._secret),
                token_store if token_store is not None else DEFAULT_STORE,
                self._fetch_token,
                self._clock,
                timeout=timeout,
            )
        self._send_with_retries = retrying(
            self._attempt,
            self.retry_policy,
            sleep=self._sleep,
            clock=self._clock,
            describe=lambda call: call.request.describe(),
        )
        from .resources.customer_statistics import CustomerStatistics
        from .resources.customers import Customers
        from .resources.identities import Identities

        self.customers: Customers = Customers(self)
        self.identities: Identities = Identities(self)
        self.customer_statistics: CustomerStatistics = CustomerStatistics(self)

    def __repr__(self) -> str:
        return f"DMHubClient(base_url={self.base_url!r}, app_id={self.app_id!r})"

    async def __aenter__(self) -> DMHubClient:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's own HTTP session (a passed-in session is left open)."""
        self._closed = True
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise DMHubError("this DMHubClient is closed: make a new one")

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_concurrency),
            )
        return self._session

    @property
    def _secrets(self) -> tuple[str | None, ...]:
        return (self._secret, self._static_token, self._current_token)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        idempotent: bool = True,
        not_found_codes: frozenset[int | str] = frozenset(),
        on_retry: Callable[[], None] | None = None,
    ) -> Any:
        """Send one API call with retries, and return its decoded JSON body (None for 204).

        Raises:
            APIError: the service answered with an error (a subclass says which).
            APIConnectionError: no answer, after the retries the policy allows.
        """
        self._check_open()

        def count_retry() -> None:
            self._count_retry()
            if on_retry is not None:
                on_retry()

        call = CallState(
            request=Request(method, path, params, json, idempotent, not_found_codes),
            started=self._clock(),
            on_retry=count_retry,
        )
        return await self._send_with_retries(call)

    def _count_retry(self) -> None:
        # Every retry, the token request's included: stats.requests counts their attempts too.
        self.stats.retries += 1

    async def _attempt(self, call: CallState) -> Any:
        request: Request = call.request
        try:
            token = await self._token() if request.authenticated else None
        except DMHubError:
            call.final = True  # the token request was retried on its own already
            raise
        try:
            return await self._send(request, token)
        except AuthenticationError:
            # CONTRACT.md: a refused token is refreshed once and the call retried once.
            if not request.authenticated or self._tokens is None or call.refreshed:
                raise
            call.refreshed = True
        try:
            token = await self._tokens.refresh(stale=token)
        except DMHubError:
            call.final = True
            raise
        self._current_token = token
        return await self._send(request, token)

    async def _token(self) -> str:
        if self._tokens is None:
            assert self._static_token is not None
            return self._static_token
        token = await self._tokens.token()
        self._current_token = token
        return token

    async def _send(self, request: Request, token: str | None) -> Any:
        self._check_open()
        params = dict(request.params or {})
        if token is not None:
            params["access_token"] = token
        body = None
        headers = {}
        if request.json is not None:
            body = json.dumps(request.json, ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json; charset=utf-8"
        failure: BaseException | None = None
        async with self._limits.slot():
            # The client may have been closed while this request queued for its slot.
            self._check_open()
            session = self._get_session()
            started = time.perf_counter()
            self.stats.requests += 1
            try:
                async with session.request(
                    request.method,
                    self.base_url + request.path,
                    params=params,
                    data=body,
                    headers=headers,
                    timeout=self._timeout,  # a passed-in session has its own default
                ) as resp:
                    # Read it all inside the block: a retry never holds a connection.
                    payload = await resp.read()
                    status, resp_headers = resp.status, resp.headers
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
                failure = err
        elapsed_ms = (time.perf_counter() - started) * 1000
        # The token this request carried: by the time its answer comes back another call may
        # have refreshed it, so self._current_token is not enough.
        secrets = (*self._secrets, token)
        if failure is not None:
            # Raised outside the except block, from a redacted stand-in: aiohttp's exceptions
            # carry the URL, and so the token; they must not ride along as cause or context.
            logger.debug(
                "%s failed: %s (%.1f ms)", request.describe(), type(failure).__name__, elapsed_ms
            )
            raise _connection_error(request, failure) from RedactedCause(failure, secrets)
        if logger.isEnabledFor(logging.DEBUG):  # describe() encodes the query: not for nothing
            logger.debug("%s -> %d (%.1f ms)", request.describe(), status, elapsed_ms)
        return read_response(
            request,
            status,
            resp_headers,
            payload,
            auth_codes=self._auth_codes,
            now=self._clock(),
            secrets=secrets,
        )

    async def _fetch_token(self) -> Token:
        assert self.app_id is not None
        assert self._secret is not None
        request = Request(
            "GET",
            TOKEN_PATH,
            {"grant_type": "client_credentials", "appid": self.app_id, "secret": self._secret},
            authenticated=False,
        )
        self.stats.token_fetches += 1
        started = self._clock()
        data = await self._send_with_retries(
            CallState(request=request, started=started, on_retry=self._count_retry)
        )
        if not isinstance(data, dict) or not data.get("access_token"):
            raise ResponseDecodeError(
                "GET /security/accesstoken -> a body without access_token",
                status=200,
                method="GET",
                path=TOKEN_PATH,
            )
        try:
            expires_in = float(data.get("expires_in") or 7200)
        except (TypeError, ValueError):
            expires_in = 7200.0
        return Token(str(data["access_token"]), started + expires_in)
