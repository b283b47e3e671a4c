"""The error tree of dmhub_async, and the one table that maps an answer to a class.

::

    DMHubError
     +-- InvalidRequestError (also ValueError)   bad input caught before sending; nothing sent
     +-- TokenStoreError  store                  a token store failed, was too slow, or is unsafe
     +-- APIConnectionError                      no answer: refused, reset, DNS
     |    +-- APITimeoutError (also TimeoutError)
     +-- APIError  status, code, description     the service answered with an error
          +-- AuthenticationError                bad appid/secret, token refused after one refresh
          +-- NotFoundError                      404, or 40201 naming a missing customer
          +-- RateLimitError  retry_after
          +-- ServerError                        5xx
          +-- ResponseDecodeError                a body that is not the JSON the contract promises
          +-- ResponseTooLargeError              a body over the client's max_response_size

No message, attribute, ``repr`` or chained cause carries the access token or the secret: every
error redacts its own message and text attributes as it is made
(:func:`dmhub_async._redact.redact`, against the secrets of every live client), so no path that
builds one can skip it; and aiohttp's own exceptions, which carry the full URL, are never
chained raw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ._redact import masked_headers, redact

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "DMHubError",
    "InvalidRequestError",
    "NotFoundError",
    "RateLimitError",
    "ResponseDecodeError",
    "ResponseTooLargeError",
    "ServerError",
    "TokenStoreError",
]


def _redacted(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class DMHubError(Exception):
    """The root of every error dmhub_async raises.

    Every one pickles, attributes and all: a task queue (arq, Celery, Ray) sends a failed
    task's error back that way.
    """

    def __init__(self, *args: Any) -> None:
        # A service may echo the URL, and so the token, into anything: mask it on the way in.
        super().__init__(*map(_redacted, args))

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own pickling calls the class with ``args`` alone, which the errors with
        # keyword-only attributes (``status``, ``store``) refuse: a shard's APIError sent back
        # by an arq worker could not be read, and the coordinator stopped on a traceback.
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type[DMHubError], args: tuple[Any, ...], state: dict[str, Any]) -> DMHubError:
    """An error as pickled: its class, its args and its attributes, as they were (redacted)."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidRequestError(DMHubError, ValueError):
    """Bad input, caught before anything was sent."""


class TokenStoreError(DMHubError):
    """A token store failed, did not answer in time, or is unsafe to use; ``store`` names it.

    ``unsafe`` is true for a store the client refuses to use (a token file another user owns or
    can read, a symbolic link) or can never lock or write (a read-only file system, a Redis
    that refuses its password): that is an error to fix, not an outage to ride out.
    """

    store: str
    unsafe: bool

    def __init__(self, message: str, *, store: str, unsafe: bool = False) -> None:
        super().__init__(message)
        self.store = store
        self.unsafe = unsafe


#: How the hint of a request that got no connection through the environment's proxy begins
#: (:class:`APIConnectionError`'s ``_hint``): the command line names the proxy by it.
THROUGH_PROXY = ": no connection through the proxy the environment names"
#: How the hint of a request the environment's proxy itself did not answer begins.
NO_PROXY_CONNECTION = ": no connection to the proxy the environment names"

#: How the hint of a request whose host's lookup got no answer begins (EAI_AGAIN: this machine
#: offline, its DNS server down): the command line says it as it is, not as a host not found.
NO_DNS_ANSWER = ": the DNS server gave no answer"


class APIConnectionError(DMHubError):
    """The service gave no answer: refused, reset, DNS failure.

    ``outcome_unknown`` is true when the request may have reached the service and changed data
    (a create whose answer was lost): it was not repeated, so check before you try again.
    """

    method: str | None
    path: str | None
    outcome_unknown: bool
    #: The request never left (refused, DNS): nothing of it reached the service.
    _not_sent: bool = False
    #: Another attempt would fail the same way (a certificate not trusted, a proxy that wants
    #: its user and password): not retried.
    _final: bool = False
    #: What the message ends in, said of a connection never made (where, what to check):
    #: the command line says it in its own words.
    _hint: str = ""

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = _redacted(path)
        self.outcome_unknown = outcome_unknown


class APITimeoutError(APIConnectionError, TimeoutError):
    """The service did not answer in time."""


class APIError(DMHubError):
    """The service answered with an error: ``status``, ``code`` and ``description``.

    Also ``status_code`` (the same as ``status``), ``headers``, ``body`` (its start, redacted)
    and ``request_id`` when the service sent one.

    ``code`` is the body's ``error_code``, as an ``int`` when it is numeric (the live service
    sends both ``40004`` and ``"40004"``), else the string, else ``None``; ``description`` its
    ``error_description``. Either text is kept up to 1,000 characters (then ``...``).
    ``retry_after`` is the wait in seconds a ``Retry-After`` header asked for (429 and 503),
    else ``None``.
    """

    status: int
    code: int | str | None
    description: str | None
    method: str | None
    path: str | None
    outcome_unknown: bool
    retry_after: float | None
    headers: dict[str, str]
    body: str | None
    request_id: str | None

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: int | str | None = None,
        description: str | None = None,
        method: str | None = None,
        path: str | None = None,
        outcome_unknown: bool = False,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        #: The answer's headers (a ``Location`` may hold the token: values are redacted, and
        #: names: a proxy echoing the request's parameters as headers named one after it).
        self.headers = dict(masked_headers(headers or {}).items())  # each key's last
        #: The start of the answer's body (up to 1,000 characters), redacted.
        self.body = _redacted(body)
        #: The id the service gave the request (``X-Request-Id`` and the like), if any.
        self.request_id = _redacted(request_id)
        self.status = status
        self.code = _redacted(code)
        self.description = _redacted(description)
        self.method = method
        self.path = _redacted(path)
        self.outcome_unknown = outcome_unknown

    @property
    def status_code(self) -> int:
        """``status``, by the name most HTTP libraries give it."""
        return self.status

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"description={self.description!r})"
        )


class AuthenticationError(APIError):
    """Bad appid or secret, or a token the service refused again after one refresh."""


class NotFoundError(APIError):
    """The customer does not exist (HTTP 404, or 40201 on a single-customer call: get,
    update, delete, binding an identity)."""


class RateLimitError(APIError):
    """The service is throttling: HTTP 429 (a 503 is a :class:`ServerError`, retried alike).

    ``retry_after`` is the wait in seconds the service asked for, or ``None``.
    """


class ServerError(APIError):
    """The service failed: HTTP 5xx."""


class ResponseDecodeError(APIError):
    """The body is not the JSON the contract promises (HTML, truncated, wrong shape)."""


class ResponseTooLargeError(APIError):
    """The body is larger than the client's ``max_response_size``: not read, not retried."""


#: What a :class:`ResponseTooLargeError` advises, a setting of the client's (the command line,
#: which takes no such setting, says what it can do instead).
RAISE_MAX_RESPONSE_SIZE: Final = ". Raise max_response_size if the service really sends that much"
#: What a :class:`ResponseTooLargeError` of one customer asked for by its id (the final
#: check's, the owner's look-up's: no smaller request holds it) says after the customer's id,
#: before :data:`RAISE_MAX_RESPONSE_SIZE`; the command line advises no smaller page for it.
ALONE_BY_ID: Final = " alone, asked for by its id"


# The one table from status to class; body codes come first (see error_for).
_BY_STATUS: Mapping[int, type[APIError]] = {
    401: AuthenticationError,
    404: NotFoundError,
    429: RateLimitError,
}


def coerce_code(code: object) -> int | str | None:
    """An ``error_code`` as an int when numeric: the service sends ``40004`` and ``"40004"``."""
    if code is None or isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, float) and code.is_integer():
        return int(code)  # 0.0 is success and 40001.0 is 40001, as the numbers they are
    text = str(code).strip()
    try:
        return int(text)
    except ValueError:
        return text or None


def error_class(
    status: int,
    code: int | str | None,
    *,
    auth_codes: frozenset[int | str] = frozenset(),
    not_found_codes: frozenset[int | str] = frozenset(),
) -> type[APIError]:
    """The class for an error answer: the body's code first, then the HTTP status."""
    if code is not None:
        if code in auth_codes:
            return AuthenticationError
        if code in not_found_codes:
            return NotFoundError
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls
    if status >= 500:
        return ServerError
    return APIError


#: What the message of a refused token request adds: the service's own words ("the params is
#: illegal") never said that the app id and secret were what it refused. An error code on a
#: 2xx is the live service's refusal of the credentials; a 4xx may as well be no token
#: endpoint at that base URL.
CREDENTIALS_REFUSED = " (the app id and secret were refused: check app_id and secret)"
TOKEN_REQUEST_REFUSED = " (the token request was refused: check base_url, app_id and secret)"
#: What the message of a token refused on a ``/v1`` call adds when the client can do no more:
#: the service's words ("access_token expired", "invalid access_token") said not what to check.
STATIC_TOKEN_REFUSED = (
    " (the access_token the client was given was refused: give a current one, or app_id and"
    " secret for the client to fetch its own)"
)
REFUSED_AFTER_REFRESH = (
    " (refused again with a token fetched just now: the clients, processes and machines using"
    " this app id must share one token store, as each token fetched revokes the last)"
)
#: What the message of an answer read as "no such record" (a call's ``not_found_codes``) adds:
#: the service's own words for a missing customer, 40201 "permission is not enough", alone
#: sent the reader of a log line to the app's permissions, not to the id.
NOT_FOUND_BY_CODE = " (DM Hub's answer for an id that does not exist or was deleted: check the id)"


#: aiohttp's failures of a TLS handshake with the service (a certificate not trusted, an
#: answer not in TLS): something answered, so neither the address nor the service being down
#: is to blame, and the command line says so in the library's words.
TLS_FAILURES = frozenset({"ClientConnectorCertificateError", "ClientConnectorSSLError"})


def without_token_hint(message: str) -> str:
    """``message`` without the hint a refused token request's ends in (or a ``/v1`` call's
    token refused for good): for the command line and the sharded export's report, which say
    what to check in their own words (the environment's variables, a worker's environment)."""
    for hint in (
        CREDENTIALS_REFUSED,
        TOKEN_REQUEST_REFUSED,
        STATIC_TOKEN_REFUSED,
        REFUSED_AFTER_REFRESH,
    ):
        message = message.replace(hint, "")
    return message
