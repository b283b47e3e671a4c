"""Requests and answers as plain data: bytes in, data or :class:`APIError` out, no I/O.

What a call sends (:class:`Request`) and what its answer means (:func:`read_response`) are
decided here, testable without an event loop or a server; the session layer (``_session``)
only carries them over the network. See docs/architecture.md.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import aiohttp
import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from . import _json
from ._exceptions import (
    CREDENTIALS_REFUSED,
    NO_DNS_ANSWER,
    NO_PROXY_CONNECTION,
    NOT_FOUND_BY_CODE,
    RAISE_MAX_RESPONSE_SIZE,
    THROUGH_PROXY,
    TOKEN_REQUEST_REFUSED,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    NotFoundError,
    ResponseDecodeError,
    ResponseTooLargeError,
    coerce_code,
    error_class,
)
from ._redact import MASK, SHORTEST_MASKED, masked_headers, redact
from ._retry import FINAL_5XX, REQUEST_TIMEOUT, longest_retry_after
from ._token_stores import Token
from ._validate import MAX_SETTING_LENGTH, printable, sendable_token
from ._version import __version__

__all__ = [
    "DEFAULT_AUTH_ERROR_CODES",
    "HEADERS",
    "PERSONAL_PARAMS",
    "RETRY_AFTER_STATUSES",
    "TOKEN_PATH",
    "USER_AGENT",
    "APIResponse",
    "Decode",
    "Request",
    "connection_error",
    "date_of",
    "decode_error",
    "error_of",
    "read_response",
    "read_token",
    "token_request",
]

#: Body codes meaning "this token is no longer valid" (docs/contract.md, "Errors": undocumented
#: by the service, so configurable).
DEFAULT_AUTH_ERROR_CODES: frozenset[int | str] = frozenset({40001, 40014, 42001})
TOKEN_PATH = "/security/accesstoken"
#: What a token's lifetime is taken to be when the answer does not say (docs/contract.md).
DEFAULT_TOKEN_LIFETIME = 7200.0
#: The longest ``expires_in`` taken as given (30 days); beyond it, or not positive, the default.
MAX_TOKEN_LIFETIME = 30 * 86400.0
#: Sent with every request, so that the service's operators can tell who calls.
USER_AGENT = f"dmhub-async/{__version__} aiohttp/{aiohttp.__version__}"
#: What every request without a body carries (a session the client makes sends them itself).
HEADERS = {"User-Agent": USER_AGENT}
_JSON_HEADERS = {**HEADERS, "Content-Type": "application/json; charset=utf-8"}


#: Query parameters whose values are personal data (docs/contract.md, "list" and "query
#: identities"): a mobile number, an e-mail address, a WeChat openid. Log lines and reprs name
#: them but never quote their values; the rest (page, rows, stage, ids) tells requests apart.
PERSONAL_PARAMS = frozenset({"mobile", "email", "identityValue"})
_MASKED_PARAMS = PERSONAL_PARAMS | {"secret", "access_token"}


def _masked(params: Mapping[str, str]) -> dict[str, str]:
    return {k: MASK if k in _MASKED_PARAMS else v for k, v in params.items()}


def _redact_params(params: Mapping[str, str] | None) -> str:
    return repr(_masked(params)) if params else repr(params)


#: A caller's reader of a successful body: bytes to what the call returns, and the body's
#: top-level keys other than the records (``error_code`` among them, when there is one), so that
#: an error answered on HTTP 200 is still found. ValueError when it cannot read the body.
Decode = Callable[[bytes], tuple[Any, Mapping[str, Any]]]


@attrs.define
class Request:
    """One API call, before the token is added: what the retry loop repeats.

    Not changed once made (nothing here or in the session sets a field), but not frozen
    either: a frozen attrs class sets each field through ``object.__setattr__``, and every
    request and page makes one (0.6 us against 0.2 us, measured with timeit).
    """

    method: str
    path: str
    #: The token request's query holds the secret, a lookup's a person's identity: masked.
    params: Mapping[str, str] | None = attrs.field(default=None, repr=_redact_params)
    json: Any = None
    #: Safe to repeat when the first answer was lost (GET, PUT, DELETE, upserts).
    idempotent: bool = True
    #: Body codes that mean "no such record" for this call (40201 on a single-customer read).
    not_found_codes: frozenset[int | str] = frozenset()
    #: Reads a successful body in place of ``_json.loads`` (a page straight into models, say);
    #: errors are found and built as ever (:func:`read_response`). Before ``authenticated``:
    #: a call's fields, the first seven, make its Request (``Session.request``).
    decode: Decode | None = attrs.field(default=None, repr=False, eq=False)
    authenticated: bool = True

    def describe(self) -> str:
        """``METHOD /path?query`` without the token or a personal value (``PERSONAL_PARAMS``)."""
        query = f"?{redact(urlencode(_masked(self.params), safe=MASK))}" if self.params else ""
        return f"{self.method} {self.path}{query}"

    def query(self, token: str | None) -> dict[str, str]:
        """The query string to send: the params, and the token (docs/contract.md, "Transport")."""
        if token is None:
            return dict(self.params) if self.params else {}
        return {**self.params, "access_token": token} if self.params else {"access_token": token}

    def body(self) -> tuple[bytes | None, Mapping[str, str]]:
        """The encoded JSON body (None when there is none) and the headers to send."""
        if self.json is None:
            return None, HEADERS
        # Every digit of an integer beyond 64 bits or a Decimal, as a JSON number.
        return _json.dumps(self.json), _JSON_HEADERS


#: Headers a service or its gateway may name a request by, for its operators to look it up.
REQUEST_ID_HEADERS = ("X-Request-Id", "X-Trace-Id", "Request-Id")


def request_id(headers: Mapping[str, str]) -> str | None:
    """The request id an answer carries, if any (see ``REQUEST_ID_HEADERS``)."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


@attrs.frozen
class APIResponse:
    """A successful answer: status, headers, decoded body, and the retries it took.

    ``dm.last_response`` is the latest one the calling task received. Its ``headers`` have the
    token and the secret masked (a header quoting the request URL held the token).
    """

    status: int
    headers: Mapping[str, str] = attrs.field(
        repr=False, converter=masked_headers
    )  # on read, not as it arrives
    #: The decoded JSON; for a request with ``decode`` (a list's page), what that made of it.
    data: Any = attrs.field(repr=False)
    retries: int = 0

    def __reduce__(self) -> tuple[Callable[..., APIResponse], tuple[Any, ...]]:
        # Pickled and copied with its headers as a plain CIMultiDict (masked already; made read
        # only again as it is rebuilt): aiohttp's read-only view of them does not pickle, so an
        # answer sent to another process (arq pickles a job's result) failed with "can't pickle
        # multidict._multidict.CIMultiDictProxy objects".
        return (_rebuilt, (self.status, CIMultiDict(self.headers), self.data, self.retries))

    @property
    def status_code(self) -> int:
        """``status``, by the name most HTTP libraries give it."""
        return self.status

    @property
    def request_id(self) -> str | None:
        """The id the service gave this request (``X-Request-Id`` and the like), if any."""
        return request_id(self.headers)


def _rebuilt(status: int, headers: CIMultiDict[str], data: Any, retries: int) -> APIResponse:
    """An :class:`APIResponse` unpickled or copied: its headers read-only again, as the answer's
    were (a copy's could be changed in place)."""
    return APIResponse(status, CIMultiDictProxy(headers), data, retries)


def date_of(answer: APIResponse | None) -> str | None:
    """The ``Date`` of ``answer`` (the service's time as it answered, by the clock that stamps
    its customers' creation), None without an answer or a ``Date``."""
    return None if answer is None else answer.headers.get("Date")


def token_request(app_id: str, secret: str) -> Request:
    """The token request (docs/contract.md, "Transport and authentication")."""
    return Request(
        "GET",
        TOKEN_PATH,
        {"grant_type": "client_credentials", "appid": app_id, "secret": secret},
        authenticated=False,
    )


def _no_token(problem: str) -> ResponseDecodeError:
    return ResponseDecodeError(
        f"GET {TOKEN_PATH} -> {problem}", status=200, method="GET", path=TOKEN_PATH
    )


def read_token(data: Any, started: float) -> Token:
    """The token in a token answer fetched at ``started``, or ResponseDecodeError."""
    token = data.get("access_token") if isinstance(data, dict) else None
    # Refused, the answer is dropped before the error is raised: the token the service has
    # just issued (valid, and revoking the one before it) stayed in this frame's variables,
    # which an error tracker records with the traceback.
    if not isinstance(token, str) or not token:  # a list or an object was str()-ed and sent
        del data, token
        raise _no_token("a body without access_token")
    if not sendable_token(token):  # as an access_token given to the client is checked
        del data, token
        raise _no_token(
            "an access_token that cannot be sent (not printable, or longer than "
            f"{MAX_SETTING_LENGTH} bytes URL-encoded)"
        )
    if len(token) < SHORTEST_MASKED:  # quoted back in an error, it would be shown whole
        del data, token
        raise _no_token(
            f"an access_token of fewer than {SHORTEST_MASKED} characters, too short to be masked"
            " in errors (DM Hub's are 32)"
        )
    lifetime = data.get("expires_in")
    if isinstance(lifetime, bool):  # true was float()-ed to 1 s: a fetch a second
        lifetime = None
    try:
        expires_in = float(lifetime or DEFAULT_TOKEN_LIFETIME)
    except (TypeError, ValueError, OverflowError):
        expires_in = DEFAULT_TOKEN_LIFETIME
    # Out of reason, the default: a negative or NaN lifetime made every call fetch a token
    # (revoking the others'), and a huge one a token Redis would not store (then not shared).
    if not 0 < expires_in <= MAX_TOKEN_LIFETIME:
        expires_in = DEFAULT_TOKEN_LIFETIME
    return Token(token, started + expires_in)


#: 303 See Other: the request was carried out, its result is elsewhere (RFC 9110, 15.4.4).
SEE_OTHER = 303
#: The statuses whose Retry-After :func:`read_response` reads (against its ``now``).
RETRY_AFTER_STATUSES = frozenset({429, 503})


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
    answers errors on HTTP 200 (docs/contract.md, "Errors").

    With ``request.decode``, a 2xx body is read by it and what it returns is the result, unless
    the keys it returns hold an error code, which raises as ever. A body it refuses is read
    again as JSON (an error's path): one that is not JSON, or holds an error code, raises as it
    would without ``decode``; otherwise ResponseDecodeError with ``decode``'s message.
    """
    # The usual answer (a 2xx JSON body without an error code, no decode) is read by the session
    # before it calls this (Session._send, a call less on every request): tried here again, an
    # error's body was decoded three times.
    data = None
    decoded = True
    refused: str | None = None  # why request.decode could not read a 2xx body
    if request.decode is not None and 200 <= status < 300:
        try:
            value, data = request.decode(body)
        except (ValueError, RecursionError) as err:
            refused = str(err)
        else:
            if error_of(data, secrets)[0] is None:
                return value
    if data is not None:
        pass  # an error code among the keys request.decode read: built below
    elif body.strip():
        try:
            data = _json.loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError too
            decoded = False  # RecursionError: nested deeper than the decoders go ([[[[...)
    elif 200 <= status < 300 and refused is None:
        return None  # 204 on delete, or an empty success

    if request.path == TOKEN_PATH:
        # A token answer that is an error may still hold a token: its access_token field is
        # masked by name, and the same token quoted elsewhere (the description, any other
        # field, a header) went out whole in the message, .description, .body, .headers and
        # .request_id.
        issued = _issued_tokens(request, headers, body, data)
        if issued:
            secrets = (*secrets, *issued)
            # Still read in any case, every line kept: a plain dict lost a lower-case
            # Retry-After and X-Request-Id (HTTP/2's, Envoy's).
            headers = CIMultiDict((name, redact(value, issued)) for name, value in headers.items())
    code, description = error_of(data, secrets)
    if 200 <= status < 300 and code is None:
        if not decoded or refused is not None:
            raise build_error(
                ResponseDecodeError,
                request,
                status,
                None,
                _snippet(body, secrets) if not decoded else redact(refused or "", secrets),
                headers=headers,
                body=_body_text(body, secrets),
            )
        return data

    # Bad appid or secret (on HTTP 200 live); not a 429 (throttled) nor a 408 (the server timed
    # the connection out): neither says anything of the credentials. Nor a 1xx taken for the
    # final answer (a 101): it was "status < 300", and blamed on the app id and secret.
    credentials = 200 <= status < 300 or (
        400 <= status < 500 and status not in (REQUEST_TIMEOUT, 429)
    )
    hint = ""
    if request.path == TOKEN_PATH and credentials:
        cls: type[APIError] = AuthenticationError
        hint = CREDENTIALS_REFUSED if status < 300 else TOKEN_REQUEST_REFUSED
    else:
        cls = error_class(
            status, code, auth_codes=auth_codes, not_found_codes=request.not_found_codes
        )
        if cls is NotFoundError and code in request.not_found_codes:  # by its code, not a 404
            hint = NOT_FOUND_BY_CODE
    if 300 <= status < 400:
        # Not followed: the token (and on the token request, the secret) rides in the query,
        # which a redirect to another host would hand over (docs/reliability.md, "Hostile
        # server").
        description = (
            f"a redirect to {_origin(headers.get('Location'))}, not followed: requests carry "
            "credentials, which must not go to another address"
        )
    if description is None and not decoded:
        description = _snippet(body, secrets)
    retry_after = None
    if status in RETRY_AFTER_STATUSES:
        # aiohttp keeps every header line; .get() is the first alone (see longest_retry_after).
        getall = getattr(headers, "getall", None)
        values = getall("Retry-After", ()) if getall else [headers.get("Retry-After", "")]
        # A date is the service's clock's: measured from its Date, not this machine's clock.
        retry_after = longest_retry_after(values, now, headers.get("Date"))
    raise build_error(
        cls,
        request,
        status,
        code,
        description,
        retry_after=retry_after,
        hint=hint,
        headers=headers,
        body=_body_text(body, secrets),
    )


def _issued_tokens(
    request: Request, headers: Mapping[str, str], body: bytes, data: Any
) -> tuple[str, ...]:
    """What a token answer outside the contract's shape may hold of the token just issued,
    which no client knows yet: a string ``access_token``; one named otherwise
    (``accessToken``, ``Access-Token``) or in a list (``["..."]``); and, quoted as text (a
    gateway's page, a cut answer, a description), a run of 32 lower-case hexadecimal
    characters, the shape of the service's tokens (docs/contract.md), unless it is the
    answer's request id (or trace id: any header named for one, ``REQUEST_ID_HEADERS`` and
    those of gateways, ``X-Kong-Request-Id``, ``traceparent``..., see :func:`_id_runs`) or
    the app id, which a user needs to act. Each was in the message, ``.description`` and
    ``.body`` whole."""
    found: list[str] = []
    if isinstance(data, Mapping):
        for name, value in data.items():
            if isinstance(name, str) and _TOKEN_NAME.fullmatch(name):
                values = value if isinstance(value, list) else [value]
                found += [v for v in values if isinstance(v, str) and v]
        said = data.get("error_description")
        texts = [str(said)[:_ERROR_TEXT]] if said is not None else []
    else:
        texts = []
    texts.append(body[:4096].decode("utf-8", "replace"))  # what _body_text quotes
    # Each request id header's, not the first alone: a trace id beside an X-Request-Id; and
    # the runs in any header a gateway names a request or trace id by (X-Kong-Request-Id,
    # X-B3-TraceId, traceparent), which its page quotes: masked, the id was lost.
    known: set[str | None] = {headers.get(name) for name in REQUEST_ID_HEADERS}
    known.update(
        run for name, value in headers.items() if _ID_HEADER.search(name) for run in _id_runs(value)
    )
    known.add((request.params or {}).get("appid"))
    found += (run for text in texts for run in _TOKEN_SHAPE.findall(text) if run not in known)
    return tuple(dict.fromkeys(found))


def _id_runs(value: str) -> Iterator[str]:
    """The runs of the token's shape an id header's ``value`` holds: as it is, and made of its
    groups of hex digits between dashes, joined (AWS's ``Root=1-5759e988-bd862e3f...``, a
    UUID), which a page quotes as 32 digits (the trace id's W3C form, a UUID without its
    dashes): masked as a token just issued, the id was lost in the body, ``.headers``
    (``Root=1-***-***``) and ``.request_id``."""
    yield from _TOKEN_SHAPE.findall(value)
    for dashed in _DASHED_HEX.findall(value):
        groups = dashed.split("-")
        ends = list(itertools.accumulate(map(len, groups), initial=0))
        after = {end: i for i, end in enumerate(ends)}  # the groups before each end
        for first, start in enumerate(ends):
            last = after.get(start + 32)
            if last is not None:
                yield "".join(groups[first:last])


#: Groups of lower-case hex digits between dashes (``5759e988-bd862e3f...``), alone.
_DASHED_HEX: Final = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]+(?:-[0-9a-f]+)+(?![0-9A-Za-z])")
#: A token answer's field names for the token: ``access_token``, ``accessToken``, ``Access-Token``.
_TOKEN_NAME: Final = re.compile(r"access[_-]?token", re.IGNORECASE)
#: Names of headers a gateway sends a request or a trace id in (``X-Kong-Request-Id``,
#: ``X-B3-TraceId``, ``traceparent``, ``X-Cloud-Trace-Context``, ``X-Correlation-Id``...).
_ID_HEADER: Final = re.compile(
    r"request-?id|trace-?id|traceparent|trace-context|correlation-?id", re.IGNORECASE
)
#: A token as the service's look (docs/contract.md: 32 lower-case hexadecimal characters), alone.
_TOKEN_SHAPE: Final = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{32}(?![0-9A-Za-z])")


def error_of(data: Any, secrets: Iterable[str | None]) -> tuple[int | str | None, str | None]:
    """A decoded body's ``error_code`` (None for none, or 0) and its redacted description."""
    kind = type(data)
    if kind is list or not (kind is dict or isinstance(data, Mapping)) or "error_code" not in data:
        return None, None  # (the usual types first: the ABC's isinstance costs more than the rest)
    code = coerce_code(data.get("error_code"))
    if code == 0:
        return None, None
    if isinstance(code, str) and len(code) > _ERROR_TEXT:
        code = _text_start(code, secrets, _ERROR_TEXT)
    raw = data.get("error_description")
    return code, _text_start(str(raw), secrets, _ERROR_TEXT) if raw is not None else None


#: The characters of an error's description (or textual code) kept: the service's are a line.
#: Kept whole, 10 MB of one was the message of the error (every log line of it), and masking
#: secrets in it held the event loop 2.7 s.
_ERROR_TEXT = 1000


def too_large(request: Request, status: int, limit: int) -> APIError:
    """The error for an answer whose body is over ``limit`` bytes (it is not read further)."""
    description = (
        f"the answer is larger than max_response_size ({limit:,} bytes): not read"
        f"{RAISE_MAX_RESPONSE_SIZE}"
    )
    return build_error(ResponseTooLargeError, request, status, None, description)


def _origin(location: str | None) -> str:
    """``scheme://host:port`` of a ``Location``: where a redirect points, without the query."""
    if not location:
        return "nowhere (no Location)"
    try:
        parts = urlsplit(location)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "an unreadable Location"
    if not host:
        return "the same host"
    if ":" in host:  # IPv6, bracketed as in a URL: "https://::1:8443" hid which part is the port
        host = f"[{host}]"
    scheme = f"{parts.scheme}:" if parts.scheme else ""  # "//host": the request's own scheme
    return f"{scheme}//{host}" + (f":{port}" if port else "")


def _body_text(body: bytes, secrets: Iterable[str | None], limit: int = 1000) -> str | None:
    """The start of a body as text, up to ``limit`` characters, redacted."""
    if not body:
        return None
    start = body[:4096].decode("utf-8", "replace")
    return _text_start(start, secrets, limit, cut=len(body) > 4096)


def _text_start(text: str, secrets: Iterable[str | None], limit: int, *, cut: bool = False) -> str:
    """The start of a text the service sent, up to ``limit`` characters, redacted; ``...``
    when more followed (``cut``: more than ``text`` holds). Only its first 4,096 characters
    are masked: masking costs a loop turn each."""
    # Redact before cutting: a secret cut in half at the edge would no longer be recognised,
    # and its first half would leak.
    redacted = redact(text[:4096], secrets)
    more = cut or len(redacted) > limit or len(text) > 4096
    return redacted[:limit] + ("..." if more else "")


def _snippet(body: bytes, secrets: Iterable[str | None]) -> str:
    """A short quote of a body that is not JSON, for an error's description."""
    text = _body_text(body, secrets, limit=120) or ""
    return (
        "not JSON: "
        + repr(text.removesuffix("...").strip().replace("\n", " "))
        + ("..." if text.endswith("...") else "")
    )


def build_error(
    cls: type[APIError],
    request: Request,
    status: int,
    code: int | str | None,
    description: str | None,
    *,
    retry_after: float | None = None,
    hint: str = "",
    headers: Mapping[str, str] | None = None,
    body: str | None = None,
) -> APIError:
    """The error for an answer, saying whether a write's outcome is unknown; ``hint`` ends
    its message (what to check)."""
    message = f"{request.method} {request.path} -> HTTP {status}"
    # The service's words as one line that no terminal obeys (an escape sequence, a line
    # break): the message reaches terminals and logs; the attributes keep them as sent.
    if code is not None:
        message += f", error_code {printable(str(code))}"
    if description:
        message += f": {printable(description)}"
    if retry_after is not None:
        message += f" (Retry-After {retry_after:g}s)"
    # A write whose answer failed may still have been applied: don't repeat it blindly.
    # 429 and 503 are refusals: nothing was written, nor on a FINAL_5XX. A 4xx is final anyway,
    # and so is an error_code on a 2xx: the service answered, and said no. A 2xx we cannot
    # read is unknown, and so is a 303 See Other, which says the request was carried out and
    # points to its result (RFC 9110, 15.4.4), not followed here (a create said nothing of it,
    # and repeated made two); the other redirects say to send it elsewhere.
    unknown = not request.idempotent and (
        ((status < 300 or status == SEE_OTHER) and code is None)
        or (status >= 500 and status != 503 and status not in FINAL_5XX)
    )
    if unknown:
        # Said in the message too (the README's promise), which is what a log, an error
        # tracker's title or the CLI's line shows: the attribute alone went unseen.
        message += (
            "; the write may have been applied, so the outcome is unknown: check before"
            " trying again"
        )
    message += hint
    return cls(
        message,
        status=status,
        code=code,
        description=description,
        method=request.method,
        path=request.path,
        outcome_unknown=unknown,
        retry_after=retry_after,
        headers=headers,
        body=body,
        request_id=request_id(headers) if headers else None,
    )


def decode_error(
    request: Request,
    status: int,
    headers: Mapping[str, str],
    data: Any,
    description: str,
    secrets: Iterable[str | None],
) -> APIError:
    """The :class:`ResponseDecodeError` of a success answer, read as JSON, that holds no record
    of the shape asked (``{}`` for a customer): as :func:`read_response` builds one for a body
    its decode refused, the request, the answer's headers and request id, the start of the
    answer and, for a write that is not safe to repeat, ``outcome_unknown`` (it was answered,
    so it may have been applied)."""
    try:
        body = _body_text(_json.dumps(data), secrets)
    except (TypeError, ValueError):
        body = None
    return build_error(
        ResponseDecodeError,
        request,
        status,
        None,
        redact(description, secrets),
        headers=headers,
        body=body,
    )


def connection_error(
    request: Request,
    *,
    timeout: bool,
    not_sent: bool,
    kind: str,
    where: str | None = None,
    status: int | None = None,
    proxied: bool = False,
    reason: str | None = None,
    no_dns_answer: bool = False,
    not_http: str | None = None,
) -> APIConnectionError:
    """The error for a request that got no answer; says when a write's outcome is unknown.

    ``not_sent``: it never reached the service (refused, DNS, no connection within
    ``connect_timeout``, a proxy that refused the tunnel); ``kind`` names the failure;
    ``where``: the base URL, which a request never sent is said to have found no connection
    to, and what to check; ``status``: a proxy's answer to the tunnel's CONNECT; ``reason``:
    why a TLS handshake failed (OpenSSL's words: "self-signed certificate"); ``no_dns_answer``:
    the lookup of the host got no answer (not that there is no such host); ``not_http``: what
    aiohttp's parser found wrong in an answer, "not HTTP (Bad status line)" or "HTTP beyond the
    client's limits (...)", said with ``where`` (it was "failed (ClientResponseError)"). Such
    an answer is none the client could read: retried as a connection lost after sending.
    """
    unknown = not request.idempotent and not not_sent
    message = f"{request.method} {request.path} " + ("timed out" if timeout else f"failed ({kind})")
    if not_http is not None and where and not timeout:
        message = f"{request.method} {request.path} failed: the answer from {where} was {not_http}"
    hint = (
        connection_hint(kind, where, status, proxied, reason, no_dns_answer)
        if not_sent and where
        else ""
    )
    message += hint
    if unknown:
        message += (
            "; the request may have reached the service, so its outcome is unknown and it was"
            " not repeated: check before trying again"
        )
    cls = APITimeoutError if timeout else APIConnectionError
    error = cls(message, method=request.method, path=request.path, outcome_unknown=unknown)
    error._not_sent = not_sent
    error._hint = hint
    # What a retry cannot mend: a certificate this machine does not trust, or a proxy that
    # refused the tunnel with a 4xx (407: its user and password), not a 408 or 429.
    error._final = kind == "ClientConnectorCertificateError" or (
        kind == "ClientHttpProxyError" and status is not None and status in _PROXY_FINAL
    )
    return error


#: A proxy's answers to a tunnel's CONNECT that the same CONNECT would get again.
_PROXY_FINAL = frozenset(range(400, 500)) - {408, 425, 429}


def connection_hint(
    kind: str,
    where: str,
    status: int | None = None,
    proxied: bool = False,
    reason: str | None = None,
    no_dns_answer: bool = False,
) -> str:
    """What a request that found no connection adds to its message: where it went, and what
    to check. "GET /security/accesstoken failed (ClientConnectorError)" named neither.

    ``proxied``: sent through the proxy the environment names, which any connection it did
    not get in time was the proxy's to give (the base URL's host is the proxy's to find).
    ``reason``: a TLS failure's own words (OpenSSL's). ``no_dns_answer``: the host's lookup
    got no answer (EAI_AGAIN: this machine offline, its DNS server down), which says nothing of
    the host: "was not found (is base_url right?)" sent the user to check a right URL."""
    said = f" ({printable(reason)})" if reason else ""
    if kind == "ClientConnectorCertificateError":
        # The service answered, with a certificate this machine does not trust: "no connection
        # to ... (is the service up?)" sent the user to check what was not wrong.
        return (
            f": the TLS certificate of {where} is not trusted{said}: a proxy or antivirus that"
            " inspects TLS needs its CA certificate trusted (SSL_CERT_FILE)"
        )
    if kind == "ClientConnectorSSLError":  # something answered, not in TLS (an http:// port)
        return f": the TLS handshake with {where} failed{said}: does it serve https there?"
    if kind == "ClientProxyConnectionError":  # the base URL was never reached, nor blamed
        return (
            f"{NO_PROXY_CONNECTION} (HTTPS_PROXY, HTTP_PROXY or the system's): is it right and up?"
        )
    if kind == "ClientHttpProxyError":  # it answered the tunnel's CONNECT: nor blamed either
        said = f"HTTP {status}" if status else "an error"
        check = ": check its user and password" if status == 407 else ": is it right?"
        return (
            ": the proxy the environment names (HTTPS_PROXY, HTTP_PROXY or the system's) refused"
            f" the connection to the service with {said}{check}"
        )
    if proxied:  # the base URL was never reached, nor blamed
        return (
            f"{THROUGH_PROXY} (HTTPS_PROXY, HTTP_PROXY or the system's): is it right and up, and"
            " does it reach the service?"
        )
    if no_dns_answer:
        return (
            f"{NO_DNS_ANSWER} for the host of {where} (is this machine online, its DNS server"
            " reachable?)"
        )
    if kind == "ClientConnectorDNSError":
        return f": the host of {where} was not found (is base_url right?)"
    return f": no connection to {where} (is base_url right, and the service up?)"
