"""The session layer: the token, the limits, the retry loop, and aiohttp: the only I/O.

Resources and the paginator send through a :class:`Session`; what a request is and what its
answer means is decided in ``_sansio``, how often to try in ``_retry``. Secrets are kept out of
every error and log line (``_redact``). See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import attrs
from backoff.types import Details

from ._auth import Token, TokenManager, TokenStore, token_key
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    DMHubError,
)
from ._limits import Limits
from ._redact import RedactedCause
from ._redact import watch as redact_watch
from ._retry import RetryPolicy, retrying
from ._sansio import (
    TOKEN_PATH,
    Request,
    Response,
    read_response,
    read_token,
    token_request,
    too_large,
)

__all__ = ["ClientStats", "Session"]

logger = logging.getLogger("dmhub_async")


@attrs.define
class ClientStats:
    """What a client has done so far."""

    requests: int = 0
    retries: int = 0
    token_fetches: int = 0


@attrs.define
class _Call:
    """One call's progress through its attempts."""

    request: Request
    retries: int = 0
    refreshed: bool = False


def _from_token_request(err: BaseException) -> bool:
    # A failed token request had its own retries: repeating them here would multiply them.
    return getattr(err, "path", None) == TOKEN_PATH


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
        limits: Limits,
        policy: RetryPolicy,
        auth_codes: frozenset[int | str],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.base_url = base_url
        self.app_id = app_id
        self._secret = secret
        self._static_token = access_token
        self.http = http
        self._owns_http = http is None
        self._timeout = timeout
        self._max_concurrency = max_concurrency
        self._max_response_size = max_response_size
        self._limits = limits
        self.policy = policy
        self._auth_codes = auth_codes
        self._clock = clock
        self.closed = False
        self.stats = ClientStats()
        self._current_token: str | None = None
        redact_watch(self)
        self._tokens: TokenManager | None = None
        if app_id and secret:
            self._tokens = TokenManager(
                token_key(base_url, app_id, secret),
                token_store,
                self._fetch_token,
                clock,
                timeout=timeout.total or 30.0,
            )
        self._send_call = retrying(
            self._attempt,
            policy,
            clock=clock,
            sleep=sleep,
            on_backoff=self._on_backoff,
            giveup=_from_token_request,
        )
        self._send_token_request = retrying(
            self._attempt, policy, clock=clock, sleep=sleep, on_backoff=self._on_backoff
        )

    def __repr__(self) -> str:
        return f"Session(base_url={self.base_url!r}, app_id={self.app_id!r})"

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """The secret and the tokens this session uses: masked in every error."""
        return (self._secret, self._static_token, self._current_token)

    async def aclose(self) -> None:
        """Close the HTTP session if this layer made it (a passed-in one is left open)."""
        self.closed = True
        if self._owns_http and self.http is not None:
            http, self.http = self.http, None
            await http.close()

    def check_open(self) -> None:
        """Raise DMHubError when closed."""
        if self.closed:
            raise DMHubError("this DMHubClient is closed: make a new one")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        idempotent: bool = True,
        not_found_codes: frozenset[int | str] = frozenset(),
    ) -> Any:
        """The decoded JSON body of one call, with retries (None for an empty answer)."""
        request = Request(method, path, params, json, idempotent, not_found_codes)
        response = await self.send(request)
        return response.data

    async def send(self, request: Request) -> Response:
        """The answer to ``request``, with retries; an :class:`APIError` or connection error."""
        self.check_open()
        response: Response = await self._send_call(_Call(request))
        return response

    def _on_backoff(self, details: Details) -> None:
        # Every retry, the token request's included: stats.requests counts their attempts too.
        call: _Call = details["args"][0]
        err = details["exception"]  # type: ignore[typeddict-item]
        call.retries += 1
        self.stats.retries += 1
        logger.info(
            "retrying %s after %s (retry %d of %d) in %.2fs",
            call.request.describe(),
            f"HTTP {err.status} {type(err).__name__}"
            if isinstance(err, APIError)
            else type(err).__name__,
            call.retries,
            self.policy.max_retries,
            details["wait"],
        )

    async def _attempt(self, call: _Call) -> Response:
        request = call.request
        if not request.authenticated:
            return await self._send(request, None, call.retries)
        token = await self._token()
        try:
            return await self._send(request, token, call.retries)
        except AuthenticationError:
            # docs/contract.md: a refused token is refreshed once and the call retried once.
            if self._tokens is None or call.refreshed:
                raise
            call.refreshed = True
        token = self._current_token = await self._tokens.refresh(stale=token)
        return await self._send(request, token, call.retries)

    async def _token(self) -> str:
        if self._tokens is None:
            assert self._static_token is not None
            return self._static_token
        token = self._current_token = await self._tokens.token()
        return token

    async def _fetch_token(self) -> Token:
        assert self.app_id is not None
        assert self._secret is not None
        self.stats.token_fetches += 1
        started = self._clock()
        response: Response = await self._send_token_request(
            _Call(token_request(self.app_id, self._secret))
        )
        return read_token(response.data, started)

    def _http_session(self) -> aiohttp.ClientSession:
        if self.http is None:
            self.http = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_concurrency),
                trust_env=True,  # HTTPS_PROXY, HTTP_PROXY, NO_PROXY, as users expect
            )
        return self.http

    async def _send(self, request: Request, token: str | None, retries: int) -> Response:
        self.check_open()
        params = request.query(token)
        body, headers = request.body()
        failure: BaseException | None = None
        async with self._limits:
            # The client may have been closed while this request queued for its slot.
            self.check_open()
            http = self._http_session()
            started = time.perf_counter()
            self.stats.requests += 1
            try:
                async with http.request(
                    request.method,
                    self.base_url + request.path,
                    params=params,
                    data=body,
                    headers=headers,
                    timeout=self._timeout,  # a passed-in session has its own default
                    allow_redirects=False,  # see read_response: credentials stay here
                ) as resp:
                    # Read it all inside the block: a retry never holds a connection.
                    status, resp_headers = resp.status, resp.headers
                    payload = await self._read(request, resp)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
                failure = err
        elapsed_ms = (time.perf_counter() - started) * 1000
        # The token this request carried: by the time its answer comes back another call may
        # have refreshed it, so self._current_token is not enough.
        secrets = (*self.secrets, token)
        if failure is not None:
            # Raised outside the except block, from a redacted stand-in: aiohttp's exceptions
            # carry the URL, and so the token; they must not ride along as cause or context.
            logger.debug(
                "%s failed: %s (%.1f ms)", request.describe(), type(failure).__name__, elapsed_ms
            )
            raise _connection_error(request, failure) from RedactedCause(failure, secrets)
        if logger.isEnabledFor(logging.DEBUG):  # describe() encodes the query: not for nothing
            logger.debug("%s -> %d (%.1f ms)", request.describe(), status, elapsed_ms)
        data = read_response(
            request,
            status,
            resp_headers,
            payload,
            auth_codes=self._auth_codes,
            now=self._clock(),
            secrets=secrets,
        )
        return Response(status, resp_headers, data, retries)

    async def _read(self, request: Request, resp: aiohttp.ClientResponse) -> bytes:
        """The body, or ResponseTooLargeError as soon as it passes ``max_response_size``."""
        limit = self._max_response_size
        length = resp.content_length
        if length is not None and length > limit:
            raise too_large(request, resp.status, limit)
        if length is not None and "Content-Encoding" not in resp.headers:
            return await resp.read()  # its declared length, within the limit
        body = bytearray()  # chunked or compressed: the size is known only by reading
        async for chunk in resp.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > limit:
                raise too_large(request, resp.status, limit)
        return bytes(body)


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
