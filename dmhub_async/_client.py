"""The :class:`DMHubClient` facade: settings, the environment, and the resources.

Every call goes down to the session layer (``_session``), which the resources and the paginator
use directly; see docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import tzinfo
from types import TracebackType
from typing import Any, Final, cast

import aiohttp
import attrs
import yarl
from typing_extensions import Self

from ._auth import DEFAULT_STORE, TokenStore
from ._exceptions import InvalidRequestError, coerce_code
from ._limits import SharedLimit
from ._query_time import zone_setting
from ._retry import RetryPolicy
from ._sansio import DEFAULT_AUTH_ERROR_CODES, USER_AGENT, APIResponse
from ._session import ClientStats, Session, env_proxy, is_loopback
from ._validate import (
    check_codes,
    check_flag,
    check_number,
    check_request,
    check_settings,
    is_collection,
    may_hold_password,
    misnamed_variables,
    settings_forgotten_if_refused,
    short,
    shown_even_half_made,
)
from .resources.customer_statistics import CustomerStatisticsResource
from .resources.customers import Customers
from .resources.identities import Identities

__all__ = [
    "DEFAULT_AUTH_ERROR_CODES",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RESPONSE_SIZE",
    "ClientStats",
    "DMHubClient",
    "check_client",
]

DEFAULT_BASE_URL = "https://api.convertlab.com"
#: An export page is well under 1 MB; a body far larger is a broken or hostile server.
DEFAULT_MAX_RESPONSE_SIZE = 64 * 1024 * 1024
#: ``request()``'s default: no code means "not found" (told apart without a check).
_NO_CODES: frozenset[int | str] = frozenset()


class DMHubClient:
    """An async client for the DM Hub customer API: ``async with DMHubClient(...) as dm:``.

    Args:
        app_id: the app id; defaults to ``$DMHUB_APP_ID``.
        secret: the app secret; defaults to ``$DMHUB_SECRET``.
        access_token: a token to use as is, instead of fetching one (then neither app_id and
            secret nor ``DMHUB_APP_ID``/``DMHUB_SECRET`` are used: no token is fetched).
        base_url: defaults to ``$DMHUB_BASE_URL``, else ``https://api.convertlab.com``.
        session: an ``aiohttp.ClientSession`` to use; the client never closes it.
        timeout: seconds for one attempt of one request, all in (finite, like the two below).
        connect_timeout: seconds to open a connection (within ``timeout``), or None.
        read_timeout: seconds to wait for the next bytes of an answer, or None.
        max_retries: retries after a failed attempt (see :class:`RetryPolicy`).
        max_concurrency: requests in flight at once, across the whole client.
        rate_limit: requests per second across the whole client (any positive number;
            ``inf`` waits for nothing), or None; or a limit shared with other clients
            (:class:`RedisRateLimiter`: every worker of a fleet).
            The client never closes a shared limit or a store: whoever made one closes it.
        token_store: where clients sharing an appid share its one token
            (:class:`MemoryTokenStore` per process by default).
        auth_error_codes: body ``error_code`` values that mean the token is no longer valid.
        retry: a full :class:`RetryPolicy`; overrides ``max_retries``.
        clock: wall-clock seconds (``time.time``); inject for tests.
        sleep: the sleep used for backoff and rate limiting (``asyncio.sleep``); inject for tests.
        max_response_size: the largest answer body read, in bytes (64 MiB); a larger one
            raises :class:`ResponseTooLargeError` as soon as it is seen.
        allow_insecure_http: accept an ``http://`` base URL that is not on this machine, or
            one on it that a ``session`` passed in sends through a proxy reached by plain http
            (the secret and the token would cross the network in clear text). This machine's
            is reached directly, past the proxies of the environment.
        timezone: the zone of time filters given without an offset: a ``tzinfo`` or an IANA
            name (``"Asia/Shanghai"``); a pytz zone is read as the zone it names (not its
            local mean time). Unset, they are read as UTC with a
            :class:`NaiveDatetimeWarning`. A ``date_join`` written without an offset is read
            in it too (unset: UTC).

    Raises:
        InvalidRequestError: no credentials, or a bad setting.
    """

    # A setting refused leaves none of the settings among the frames' variables: a Redis URL
    # given as token_store (DMHUB_TOKEN_STORE's spelling) or rate_limit kept its password there.
    @settings_forgotten_if_refused
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
        rate_limit: float | SharedLimit | None = None,
        token_store: TokenStore | None = None,
        auth_error_codes: Iterable[int | str] = DEFAULT_AUTH_ERROR_CODES,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        allow_insecure_http: bool = False,
        timezone: tzinfo | str | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> None:
        # The environment's values are checked as the arguments are (a secret with a line
        # break, or of 6,000 characters, was sent), and named as what they came from.
        env = os.environ
        try:
            # Once: an iterator was used up by its check, and token refresh then knew no code.
            auth_error_codes = (
                tuple(auth_error_codes) if is_collection(auth_error_codes) else auth_error_codes
            )
            if access_token is not None and (app_id or secret):
                # Which would win? The credentials did, and the token was never used.
                raise InvalidRequestError(
                    "pass access_token, or app_id and secret, not both: a token is used as is, "
                    "credentials fetch their own"
                )
            app_id_from = "app_id" if app_id else "DMHUB_APP_ID"
            secret_from = "secret" if secret else "DMHUB_SECRET"
            if access_token is None:  # a token given is used as is: not the environment's fetch
                app_id = app_id or env.get("DMHUB_APP_ID") or None
                secret = secret or env.get("DMHUB_SECRET") or None
            base_url = base_url or env.get("DMHUB_BASE_URL") or None
            check_settings(
                {app_id_from: app_id, secret_from: secret, "access_token": access_token},
                base_url,
                {  # the timeouts: _timeout, below
                    "max_retries": (max_retries, 0, True, int),
                    "max_concurrency": (max_concurrency, 1, True, int),
                    "max_response_size": (max_response_size, 1, True, int),
                    # A limit shared with other clients (RedisRateLimiter) is an object, not a rate.
                    "rate_limit": (
                        None if hasattr(rate_limit, "acquire") else rate_limit,
                        0,
                        False,
                        float,
                    ),
                },
                auth_error_codes,
                optional=frozenset({"rate_limit"}),
            )
            # "false" or "no" (a setting read as text) is true: plain http went through unasked.
            check_flag("DMHubClient", "allow_insecure_http", allow_insecure_http)
            self.app_id = app_id
            if not access_token and not (self.app_id and secret):
                # DMHUB_APPID set for DMHUB_APP_ID: named, the user saw both "set".
                unset = ("DMHUB_APP_ID",) * (not self.app_id) + ("DMHUB_SECRET",) * (not secret)
                raise InvalidRequestError(
                    "no credentials: pass app_id and secret (or access_token), "
                    f"or set DMHUB_APP_ID and DMHUB_SECRET{misnamed_variables(env, unset)}"
                )
            self.base_url = _lower_scheme((base_url or DEFAULT_BASE_URL).rstrip("/"))
            if not self.base_url.startswith(("http://", "https://")):
                raise InvalidRequestError(
                    f"base_url must start with http:// or https://: {self.base_url!r}"
                )
            if self.base_url.startswith("http://") and not (
                allow_insecure_http or is_loopback(self.base_url)
            ):
                raise InvalidRequestError(
                    f"base_url {self.base_url!r} is plain http: the secret and the access token "
                    "travel in the query string of every request, readable by anyone on the way. "
                    "Use https://, or pass allow_insecure_http=True if you must"
                )
            _check_objects(retry, token_store, session, clock, sleep, rate_limit)
            if (
                session is not None
                and not allow_insecure_http
                and self.base_url.startswith("http://")
                and _proxied_in_clear(session, self.base_url)
            ):
                # Let through above as this machine's: a session of the caller's that sends it
                # through a proxy reached by plain http gives the proxy the secret and the token.
                raise InvalidRequestError(
                    f"base_url {self.base_url!r} is plain http, and the session passed in sends "
                    "it through a proxy over plain http (its proxy=, or trust_env=True and "
                    "HTTP_PROXY): the secret and the access token travel in the query string, "
                    "readable by the proxy and anyone on the way to it. Pass a session without "
                    "that proxy, name the host in NO_PROXY, or pass allow_insecure_http=True if "
                    "you must"
                )
            client_timeout = _timeout(timeout, connect_timeout, read_timeout)
            #: The zone of naive time filters (None: UTC, with a warning): see ``_query_time``.
            self.timezone: tzinfo | None = zone_setting(timezone)
            clock = clock or time.time
            sleep = sleep or asyncio.sleep
            self.retry_policy = retry or RetryPolicy(max_retries=max_retries)
            self._session = Session(
                self.base_url,
                app_id=self.app_id,
                secret=secret,
                access_token=access_token,
                token_store=token_store if token_store is not None else DEFAULT_STORE,
                http=session,
                timeout=client_timeout,
                max_concurrency=max_concurrency,
                max_response_size=max_response_size,
                rate_limit=rate_limit,
                policy=self.retry_policy,
                auth_codes=frozenset(coerce_code(c) or c for c in auth_error_codes),
                clock=clock,
                sleep=sleep,
            )
            self.stats: ClientStats = self._session.stats
            self._build_resources()
        except BaseException as err:
            # A setting refused (a misconfiguration, reported to an error tracker as the
            # program starts): the secret and the token (one from DMHUB_SECRET in no frame
            # of the caller's) and os.environ were in this frame's variables, and in those of
            # the checks it called, for the tracker to record (see Session._send). So was a
            # base_url refused for the password or query it holds (one from DMHUB_BASE_URL too).
            traceback.clear_frames(err.__traceback__)
            del secret, access_token, base_url, env, err
            raise

    def _build_resources(self) -> None:
        self.customers = Customers(self._session, timezone=self.timezone)
        self.identities = Identities(self._session)
        self.customer_statistics = CustomerStatisticsResource(self._session)

    def with_options(
        self,
        *,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Self:
        """A client with other per-call options that shares this one's connections and token.

        Cheap: nothing is opened or fetched. ``await dm.with_options(timeout=5).customers.get(1)``.
        Unset options keep this client's. Closing the derived client leaves this one open, and
        ends its own calls still waiting (a backoff, a rate turn, the token store's lock, a body
        half read), and those of the clients derived from it, with the "closed" error, as
        :meth:`aclose` does; a request already waiting for its answer's first bytes runs on to
        that answer, which its call returns, or to its timeout (its connection is this client's,
        which only this one's close ends).

        Raises:
            InvalidRequestError: a bad option.
        """
        derived = copy.copy(self)
        policy = retry
        if policy is None and max_retries is not None:  # checked by RetryPolicy as it is made
            policy = attrs.evolve(self.retry_policy, max_retries=max_retries)
        client_timeout = None
        if timeout is not None or connect_timeout is not None or read_timeout is not None:
            current = self._session.timeout
            client_timeout = _timeout(
                timeout if timeout is not None else current.total,
                connect_timeout if connect_timeout is not None else current.sock_connect,
                read_timeout if read_timeout is not None else current.sock_read,
            )
        if extra_headers is not None:
            extra_headers = _checked_headers(extra_headers)
        _check_retry(retry)
        derived._session = self._session.derive(
            timeout=client_timeout, policy=policy, headers=extra_headers
        )
        derived.retry_policy = derived._session.policy
        derived._build_resources()
        return derived

    @property
    def last_response(self) -> APIResponse | None:
        """The latest successful answer the calling task received through this client.

        Its ``status_code``, ``headers``, ``request_id`` and decoded ``data``; None before the
        first. Per task, so concurrent calls in other tasks do not replace it.
        """
        return self._session.last_response

    @shown_even_half_made
    def __repr__(self) -> str:
        return f"DMHubClient(base_url={self.base_url!r}, app_id={self.app_id!r})"

    async def __aenter__(self) -> Self:
        self._session.check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's own HTTP session (a passed-in session is left open).

        Calls still under way raise :class:`DMHubError` ("closed") at once: one waiting out a
        retry's backoff, a rate-limit turn (``rate_limit``, a shared one too) or the token
        store's lock (another client's token fetch), or reading an answer through the client's
        own session. A write cut short after it was sent (its answer half read, or its retry's
        wait after an attempt that may have been applied) raises :class:`APIConnectionError`
        with ``outcome_unknown=True``. Nothing of the client's runs after it returns: a token
        fetch waiting for the store's lock ends, one whose request is under way is awaited (its
        token stored for the other processes).
        """
        await self._session.aclose()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._session.closed

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
        not_found_codes: Iterable[int | str] = _NO_CODES,
    ) -> Any:
        """Send one API call with retries, and return its decoded JSON body (None for 204).

        ``method`` is one of GET, POST, PUT, PATCH and DELETE; ``path`` starts with ``/`` and
        is joined to the client's ``base_url``; ``params`` values are strings (or ints).
        ``idempotent``: whether a call whose answer was lost may be sent again; by default,
        by its method (GET, PUT and DELETE may; a POST or PATCH is sent once and raises with
        ``outcome_unknown``, as ``customers.create`` does). ``not_found_codes``: the body's
        ``error_code`` values (ints or strings, ``{40201}`` or ``["40201"]``) that mean "no
        such customer" (40201 on the customer routes), raised as ``NotFoundError`` and not
        retried.

        Raises:
            InvalidRequestError: a call that cannot be sent as it is (an unknown method, a path
                to another host, NaN in ``json``, a URL over 8 KB...), before anything is sent.
            APIError: the service answered with an error (a subclass says which).
            APIConnectionError: no answer, after the retries the policy allows.
        """
        method, query = check_request(method, path, params, json)
        if idempotent is None:
            # By the method: a POST repeated after a lost answer made two customers.
            idempotent = method not in ("POST", "PATCH")
        elif not isinstance(idempotent, bool):
            raise InvalidRequestError(
                f"request(): idempotent must be True, False or None, not {short(idempotent)}"
            )
        if not_found_codes is not _NO_CODES:
            not_found_codes = check_codes("request(): not_found_codes", not_found_codes)
        return await self._session.request(
            method,
            path,
            params=query,
            json=json,
            idempotent=idempotent,
            not_found_codes=cast("frozenset[int | str]", not_found_codes),
        )


def _check_objects(
    retry: object, token_store: object, session: object, clock: object, sleep: object, rate: object
) -> None:
    """The settings that are objects, of the kind each must be, or InvalidRequestError now:
    ``token_store="memory"`` (the CLI's spelling), ``retry=5`` or ``clock=5`` failed at the
    first call with a raw AttributeError or TypeError."""
    _check_retry(retry)
    if token_store is not None and not isinstance(token_store, TokenStore):
        given = short(token_store)
        # A Redis URL (the CLI's spelling of a store) may hold its password: the message is
        # logged and shown, and short() keeps the start and end of a long one. Bytes (read
        # from os.environb) or a yarl URL (built with URL.build) as well.
        written = (
            token_store.decode("latin-1")
            if isinstance(token_store, bytes)
            else str(token_store)
            if isinstance(token_store, (str, yarl.URL))
            else ""
        )
        if may_hold_password(written):
            given = (
                f"a {type(token_store).__name__} that may hold a password (not shown):"
                " RedisTokenStore(url)"
            )
        raise InvalidRequestError(
            "token_store must be a TokenStore (MemoryTokenStore(), FileTokenStore(path), "
            f"RedisTokenStore(url)), not {given}"
        )
    if session is not None and not isinstance(session, aiohttp.ClientSession):
        raise InvalidRequestError(f"session must be an aiohttp.ClientSession, not {short(session)}")
    for name, value in (("clock", clock), ("sleep", sleep)):
        if value is not None and not callable(value):
            raise InvalidRequestError(f"{name} must be a function, not {short(value)}")
    if hasattr(rate, "acquire") and not callable(rate.acquire):
        raise InvalidRequestError("rate_limit's acquire must be an async function")


def _check_retry(retry: object) -> None:
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise InvalidRequestError(f"retry must be a RetryPolicy, not {short(retry)}")


#: A header name: an RFC 9110 token.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: Headers the client writes itself, from the request: one given in ``extra_headers`` framed the
#: request otherwise than its body (``Content-Length: 5`` sent five bytes of a create's JSON
#: and the rest as the start of the next request on the connection, the service's 400 "Invalid
#: method"), or sent it elsewhere than ``base_url`` says. (``Accept-Encoding`` is checked on its
#: own: :func:`_check_accept_encoding`.)
_CLIENT_HEADERS: Final = frozenset(
    {
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "expect",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


#: The content codings the client reads an answer in (``_session._decompressor``).
_READABLE_CODINGS: Final = frozenset({"gzip", "x-gzip", "deflate", "identity"})


def _check_accept_encoding(value: str) -> None:
    """An ``Accept-Encoding`` that asks only for codings the client reads, or
    InvalidRequestError.

    The client decompresses answers itself, gzip and deflate alone: asked for ``br`` (or
    ``*``), a service's br answer to a create it had written was refused as "compressed as
    'br', which this client did not ask for", its outcome unknown. One that asks for less
    (``identity``: no compression; ``gzip``) is the caller's to send: it was refused too.
    """
    for item in value.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if not coding:
            continue
        weight = 1.0
        for param in params:
            key, _, number = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(number)
                except ValueError:
                    weight = 1.0  # unreadable: taken as asked for
        if weight != 0 and coding.lower() not in _READABLE_CODINGS:
            raise InvalidRequestError(
                f"extra_headers: Accept-Encoding asks for {short(coding)}, which the client"
                " does not read: it decompresses answers itself, gzip and deflate alone (or"
                " none: identity)"
            )


#: The longest header line (``name: value``) a request may have: nginx reads a line into an
#: 8 KB buffer, aiohttp's server takes a value of at most 8,190 bytes; as the URL is held
#: under 8 KB (``MAX_URL_LENGTH``).
_MAX_HEADER_LINE = 8190


def _checked_headers(headers: object) -> dict[str, str]:
    """The headers to send, or InvalidRequestError now for names and values that cannot be
    sent as given: a line break failed at the call with aiohttp's raw ValueError, a lone
    surrogate went out as an empty value, a name with a space (or a 9 KB value) was sent and
    refused (400).

    A ``User-Agent`` of the caller's goes after the SDK's (``dmhub-async/... aiohttp/...
    my-job/1``), under that one name: it replaced the SDK's, so requests no longer said they
    were the SDK's (the simulator, which tells this client's own retry of a PUT or a DELETE
    from aiohttp's re-send by it, dropped that retry), and spelt ``user-agent`` it went out
    as a second User-Agent line.
    """
    if not isinstance(headers, Mapping):
        raise InvalidRequestError(
            f"extra_headers must be a mapping of names to values, not {short(headers)}"
        )
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise InvalidRequestError(f"extra_headers: {short(name)} is no header name")
        if name.lower() in _CLIENT_HEADERS:
            raise InvalidRequestError(
                f"extra_headers: {name} is the client's to write (the request's framing, or"
                " base_url's host)"
            )
        if not isinstance(value, str) or not value.isprintable() or not value.isascii():
            # isprintable() refuses CR, LF, NUL and lone surrogates; a header is ASCII.
            raise InvalidRequestError(
                f"extra_headers: the value of {name} must be printable ASCII text"
            )
        if name.lower() == "accept-encoding":
            _check_accept_encoding(value)
        if name.lower() == "user-agent":
            name, value = "User-Agent", f"{USER_AGENT} {value}" if value else USER_AGENT
        line = len(name) + len(": ") + len(value)  # ASCII: a byte a character
        if line > _MAX_HEADER_LINE:  # sent, every call was answered 400 by the front
            raise InvalidRequestError(
                f"extra_headers: {name}: its line (name: value) is {line} bytes; at most"
                f" {_MAX_HEADER_LINE}, what common servers and proxies take"
            )
        checked[name] = value
    return checked


def _lower_scheme(url: str) -> str:
    """``url`` with an ``http`` or ``https`` scheme in lower case, as URLs are spelt in any case
    of it (RFC 3986): ``HTTPS://api.convertlab.com`` was refused as starting with neither."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.lower()}{sep}{rest}" if sep and scheme.lower() in ("http", "https") else url


def _proxied_in_clear(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether ``session`` sends a request for ``url`` through a proxy reached by plain http:
    its own ``proxy=`` (aiohttp 3.10 and later), else with ``trust_env`` the environment's,
    which aiohttp reads on every request (by the rules :func:`env_proxy` follows)."""
    proxy = getattr(session, "_default_proxy", None)  # no public name for it
    if proxy is None and session.trust_env:
        proxy = env_proxy(url)
    # A bare host:port is taken as http://, as usable_proxy reads it.
    return proxy is not None and not str(proxy).lower().startswith("https://")


def _timeout(
    total: float | None, connect: float | None, read: float | None
) -> aiohttp.ClientTimeout:
    for name, value in (("timeout", total), ("connect_timeout", connect), ("read_timeout", read)):
        if value is None and name != "timeout":
            continue
        # Finite: aiohttp's timer cannot be set past any float (a raw OverflowError at the
        # first call, blamed on the token store, it was).
        check_number(name, value, 0, inclusive=False, finite=True, what="a number of seconds")
    return aiohttp.ClientTimeout(total=total, sock_connect=connect, sock_read=read)


def check_client(where: str, client: object) -> None:
    """Refuse a ``client`` argument that is no :class:`DMHubClient`, before anything is sent
    or written: None, or the simulator given for the client, was a raw ``AttributeError``
    (``'NoneType' object has no attribute 'customers'``)."""
    if not isinstance(client, DMHubClient):
        raise InvalidRequestError(
            f"{where}(): client must be a DMHubClient (async with DMHubClient(...) as dm), "
            f"not {short(client)}"
        )
