"""Input checks that run before anything is sent: bad input never reaches the service.

Every public call either sends a well-formed request or raises :class:`InvalidRequestError`
before anything is sent, not even a token request. Field limits are the contract's
(``docs/contract.md``, "Customer model" and "Identities"); the API gives no size limits for a
URL, so every URL is kept under :data:`MAX_URL_LENGTH` (what common proxies take), and a body
holds only what JSON can carry exactly (``docs/reliability.md``, "Bad input").
"""

from __future__ import annotations

import functools
import math
import operator
import os
import re
import reprlib
import socket
import sys
import traceback
import types
import typing
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from itertools import islice
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from yarl import URL

from ._converter import scalars
from ._converter.scalars import timestamp_as_written
from ._exceptions import InvalidRequestError, coerce_code
from ._redact import MASK
from .models.customer import CustomerFields
from .models.gender import Gender
from .models.identity import Identity

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_QUERY_LENGTH",
    "MAX_URL_LENGTH",
    "arguments_forgotten_if_refused",
    "at_index",
    "check_concurrency",
    "check_customer_fields",
    "check_id",
    "check_identities",
    "check_identity",
    "check_json",
    "check_not_mangled",
    "check_number",
    "check_paging",
    "check_password_read",
    "check_path_type",
    "check_query",
    "check_request",
    "check_settings",
    "check_text",
    "mangled_value",
    "misnamed_variables",
    "pasted_around",
    "printable",
    "query_length",
    "resolvable_url",
    "settings_forgotten_if_refused",
    "short",
    "shown_even_half_made",
    "unnameable",
    "white_space_around",
]

MAX_IDENTITY_TYPE = 32
MAX_IDENTITY_VALUE = 128
MAX_IDENTITY_NAME = 256
MAX_ADDRESS = 512
_ADDRESSES = ("home_address", "office_address")
#: The reference's ``Integer`` (``employeeNumber``), a 32-bit int, where ids are ``Long``.
INT32_RANGE: typing.Final = (-(2**31), 2**31 - 1)

#: The longest URL a request may have: 8 KB is what common proxies and servers take.
MAX_URL_LENGTH = 8192
#: Bytes (percent-encoded) a call's own query parameters may take: the rest of
#: MAX_URL_LENGTH is kept for the base URL, the path, the token and the paging parameters.
MAX_QUERY_LENGTH = 6144
#: Bytes (percent-encoded) a credential or the base URL may take: with the query above,
#: the path and the paging parameters, a URL stays under MAX_URL_LENGTH.
MAX_SETTING_LENGTH = 512
#: Bytes (percent-encoded) the path of a ``DMHubClient.request`` may take: what MAX_URL_LENGTH
#: leaves beside the longest base URL, query and token, and the ``?`` and ``&access_token=``
#: between them (1,009). It was 1,024, and the longest call made a URL of 8,207 bytes.
MAX_PATH_LENGTH = (
    MAX_URL_LENGTH - 2 * MAX_SETTING_LENGTH - MAX_QUERY_LENGTH - len("?&access_token=")
)


def sendable_token(value: object) -> bool:
    """Whether ``value`` can be sent as an access token: text, not empty, printable, and
    within MAX_SETTING_LENGTH bytes URL-encoded.

    One check for a token from the service and one read back from a store: it goes out in
    every URL (a line break, 200 KB), and every error masks each run of 8 of its characters
    (a 4 MB one held the event loop 4.5 s and kept 545 MB, for each error).
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_SETTING_LENGTH
        and value.isprintable()
        and len(quote(value, safe="")) <= MAX_SETTING_LENGTH
    )


#: The methods ``DMHubClient.request`` sends (the API's, docs/contract.md).
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
#: Nesting a body may have: custom fields are flat in practice; a cycle is refused by it.
MAX_JSON_DEPTH = 64
#: Digits an integer in a body may have (Python's own limit for writing one as text).
MAX_INT_DIGITS = scalars.MAX_INT_DIGITS
_INT_BOUND = 10**MAX_INT_DIGITS
#: The longest time Redis keeps a key for: past about 9.2e15 s it refuses the expiry (a lock's
#: life, a rate limit's window), and the call that sets it fails.
REDIS_MAX_SECONDS = 1e15


def _typed_userinfo(url: str) -> str:
    """A URL's user and password as typed: all before the last ``@`` after the scheme.

    Wider than what ``urlsplit`` reads as the user and password: a ``/``, ``#`` or ``?`` not
    percent-encoded in a password ends the netloc there, and the password's start is read as
    the host and port, its rest as the path (``redis://:Ab12/cd@host``).
    """
    return url.partition("://")[2].rpartition("@")[0]


#: What to do about a password read as a host, a port and a path (see :func:`_typed_userinfo`).
PERCENT_ENCODE = "a password's /, #, ? or @ must be percent-encoded: %2F, %23, %3F, %40"


def password_misread(url: str) -> bool:
    """Whether ``url`` may hold a password cut short by a ``/``, ``#`` or ``?`` in it (its ``@``
    past the netloc ``urlsplit`` reads): a URL refused is then said to need it encoded."""
    try:
        return bool(_typed_userinfo(url)) and "@" not in urlsplit(url).netloc
    except ValueError:
        return bool(_typed_userinfo(url))


def redis_where(url: str) -> str:
    """The Redis a URL names, for messages: scheme, host, port and database, never a password."""
    if password_misread(url):
        return "the URL given"  # a password read as host, port and path: not shown
    try:
        parts = urlsplit(url)
        if "@" in parts.path:  # a user and password a slash short of "//" (redis:/:PASSWORD@
            return "the URL given"  # HOST), read as the path: not shown
        if parts.scheme.lower() == "unix":  # a socket's path, its database in the query: it
            # was "unix://localhost:6379/PATH", a host and port that are not where Redis is
            db = parse_qs(parts.query).get("db", [""])[0]
            return f"unix://{parts.path}" + (f"?db={db}" if db.isdigit() else "")
        return f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path}"
    except ValueError:  # a port out of range
        return "the URL given"


def redis_url_error(owner: str, url: str, err: Exception) -> InvalidRequestError:
    """redis-py's refusal of a URL (a query value it cannot read, a port out of range) as
    InvalidRequestError: it was a raw ValueError. Its text only when no password is in it,
    nor a value it quotes from what was typed as the password (read as the port)."""
    text = str(err)
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    typed = _typed_userinfo(url)
    quoted = [value for value in re.findall(r"'([^']*)'", text) if value]
    if (password and password in text) or any(value in typed for value in quoted):
        text = "a value it cannot read"
        if typed:
            text += f" ({PERCENT_ENCODE})"
    return InvalidRequestError(f"{owner}: redis-py cannot read the URL: {text}")


def check_redis_options(owner: str, url: str, pool: Any) -> None:
    """Build one connection of redis-py's ``pool`` (no I/O) to check the URL's options now:
    redis-py passes a query option it does not know (``?timeout=5``) to the connection, a
    TypeError at the first command, which a token store met as an outage (every process then
    fetching a token of its own, revoking the others') and a queue as a raw traceback.

    Any error building it is the URL's: redis-py refuses a ``?protocol=`` it does not speak
    with its own ConnectionError, which came raw out of RedisTokenStore and RedisRateLimiter
    (the CLI's ``--token-store`` a traceback) and which the queue said as a Redis it could
    not reach; one that is no number ends redis-py's check in an UnboundLocalError."""
    try:
        pool.connection_class(**pool.connection_kwargs)
    except Exception as err:
        if isinstance(err, NameError):  # redis-py's own defect: its words say nothing
            err = ValueError("a query option's value is not one it takes")
        raise redis_url_error(owner, url, err) from None
    check_password_read(owner, url)
    check_database(owner, url)


#: A ``redis://`` URL's path that names its database (or none: database 0).
_DATABASE_PATH = re.compile(r"/?(?:[0-9]+/?)?")


def check_database(owner: str, url: str) -> None:
    """InvalidRequestError for a ``redis://`` or ``rediss://`` URL whose path is no database's
    number: redis-py reads its digits alone, and any other path as database 0, so a store on
    ``redis://HOST/tokens`` kept its tokens in database 0 (``/1/2`` was database 12), without a
    word. arq (a queue worker) refuses them. One naming its database in its query (``?db=2``)
    is taken whatever its path: redis-py and arq read the database there, the path not at all
    (``redis://HOST/x?db=2``, database 2 in both, was refused)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # pragma: no cover - redis-py read it: urlsplit does too
        return
    if (
        parts.scheme.lower() in ("redis", "rediss")
        and not parse_qs(parts.query).get("db")
        and not _DATABASE_PATH.fullmatch(unquote(parts.path))
    ):
        raise InvalidRequestError(
            f"{owner}: the URL's path must be a database's number: redis://HOST:PORT/DB"
        )


def check_password_read(owner: str, url: str) -> None:
    """InvalidRequestError for a ``redis://`` or ``rediss://`` URL that redis-py reads, but
    whose password a ``/``, ``#`` or ``?`` not percent-encoded cut short: its ``@`` is in the
    path or the fragment (neither ever holds one), or the host before it is empty (the
    ``redis://:PASSWORD@HOST`` form, its password's start read as the port).

    Read so, the URL named localhost at that port and no password: a Redis there without one
    took the connection, and the tokens went to it, unauthenticated, without a word. An ``@``
    in the query with a host before it is left alone: a TLS file's path may hold one.
    """
    _check_socket_userinfo(owner, url)
    if not password_misread(url):
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # pragma: no cover - redis-py read it: urlsplit does too
        return
    if parts.scheme.lower() not in ("redis", "rediss"):
        return  # a socket's path may hold an @
    if not host or "@" in parts.path or "@" in parts.fragment:
        raise InvalidRequestError(
            f"{owner}: the URL's @ comes after its host, port or database, so its password "
            f"would not be sent ({PERCENT_ENCODE})"
        )


def _check_socket_userinfo(owner: str, url: str) -> None:
    """InvalidRequestError for a ``unix:`` URL a slash short of ``unix://`` whose user and
    password are read as the socket's path (``unix:/:PASSWORD@/run/redis.sock``): no password
    was sent, and the path, shown in the repr, each warning of the store and each error
    (redis-py's "connecting to /:PASSWORD@/run/redis.sock"), held it. A socket's path with an
    ``@`` within a name (``unix:///run/redis@main/redis.sock``) is left alone."""
    try:
        parts = urlsplit(url)
    except ValueError:  # pragma: no cover - redis-py read it: urlsplit does too
        return
    if parts.scheme.lower() == "unix" and not parts.netloc and "@/" in parts.path:
        raise InvalidRequestError(
            f"{owner}: the URL's user and password go after unix://, as in"
            " unix://:PASSWORD@/PATH: a slash short, they were read as the socket's path"
        )


#: Page numbers and sizes are 32-bit ints on the service's side.
MAX_PAGE_NUMBER = 2**31 - 1
#: The most pages or lookups in flight in one walk (``concurrency``): the paginator's cap.
MAX_CONCURRENCY = 64


_Shown = TypeVar("_Shown")


def shown_even_half_made(repr_of: Callable[[_Shown], str]) -> Callable[[_Shown], str]:
    """A ``__repr__`` that never raises: ``<DMHubClient (not made)>`` for an object whose
    ``__init__`` refused its settings before it set what its repr shows.

    That half-made object is among the variables of the refusing frame, which an error
    tracker records with ``repr()`` (``capture_locals=True``; ``unittest --locals``): the repr
    raised AttributeError there, and the report of the InvalidRequestError failed in its place.
    """

    @functools.wraps(repr_of)
    def shown(self: _Shown) -> str:
        try:
            return repr_of(self)
        except AttributeError:
            return f"<{type(self).__name__} (not made)>"

    return shown


_Made = TypeVar("_Made")
_Settings = ParamSpec("_Settings")


def settings_forgotten_if_refused(
    init: Callable[Concatenate[_Made, _Settings], None],
) -> Callable[Concatenate[_Made, _Settings], None]:
    """An ``__init__`` whose refusal leaves none of its settings among the variables of the
    error's traceback, which an error tracker records (``capture_locals=True``), its half-made
    object alone (shown by :func:`shown_even_half_made`).

    A Redis URL refused, or one whose other setting was (``lock_ttl=-1``), left its password in
    the variables of the ``__init__`` and of the checks it called; a pool made of a URL redis-py
    refuses (``?protocol=9``) was there too, whose repr raised, and the tracker's report failed.
    """

    @functools.wraps(init)
    def made(self: _Made, /, *args: _Settings.args, **kwargs: _Settings.kwargs) -> None:
        handled = sys.exc_info()[1]
        try:
            init(self, *args, **kwargs)
        except BaseException as err:
            _frames_cleared(err, handled)
            del args, kwargs, err, handled
            raise

    return made


def _frames_cleared(err: BaseException, handled: BaseException | None) -> None:
    """The ended frames of ``err``'s traceback cleared (not the running one), and of every error
    it was raised from or while handling, up to ``handled``, the caller's own (its frames are
    the caller's to keep).

    A refusal raised ``from None`` still holds the error it replaced (``__context__``), which
    ``TracebackException(capture_locals=True)`` records: redis-py's frames that read the URL,
    and a connection it refused half-made (``?timeout=5``), whose repr raised AttributeError:
    the tracker's report failed in place of the InvalidRequestError's."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        each = todo.pop()
        if each is handled or id(each) in seen:
            continue
        seen.add(id(each))
        traceback.clear_frames(each.__traceback__)
        todo.extend(chained for chained in (each.__cause__, each.__context__) if chained)


_Made_by = TypeVar("_Made_by")


def arguments_forgotten_if_refused(
    make: Callable[_Settings, _Made_by],
) -> Callable[_Settings, _Made_by]:
    """A function that makes something of its settings (``worker()``), whose refusal leaves none
    of them among the variables of the error's traceback: see
    :func:`settings_forgotten_if_refused`, for an ``__init__``."""

    @functools.wraps(make)
    def made(*args: _Settings.args, **kwargs: _Settings.kwargs) -> _Made_by:
        handled = sys.exc_info()[1]
        try:
            return make(*args, **kwargs)
        except BaseException as err:
            _frames_cleared(err, handled)
            del args, kwargs, err, handled
            raise

    return made


#: A ``password=`` value of a URL's query, in a str quoted in an error.
_PASSWORD_PARAM = re.compile(r"(?<=password=)[^&#\s'\"]+", re.IGNORECASE)


def _without_url_password(text: str) -> str:
    """``text`` with what may be a URL's password masked: all from its first ``://`` to its
    last ``@`` (``redis://:PASSWORD@HOST``, one written without its colon or holding a ``/``
    too), and a ``password=`` value. In one pass: a pattern up to the last ``@`` took seconds
    on a str of many ``://`` after its ``@`` (each tried to the end)."""
    after = text.find("://") + 3
    at = text.rfind("@")
    if 3 <= after <= at:
        text = f"{text[:after]}{MASK}{text[at:]}"
    return _PASSWORD_PARAM.sub(MASK, text)


def may_hold_password(text: str) -> bool:
    """Whether ``text`` (a URL given where it was not due, or mistyped) may hold a password: a
    user and password before an ``@``, or a ``password=`` of a query, which redis-py reads too.
    Such a text is masked or named, never quoted whole, where a refusal says what was given."""
    return "@" in text or "password=" in text.lower()


def short(value: object) -> str:
    """``repr(value)`` cut to a readable length, for error messages; never raises. A str's
    URL password is masked (:func:`_without_url_password`): a Redis URL given for a setting
    by a slip (``rate_limit="redis://..."``, for ``RedisRateLimiter(url, rate)``) was quoted,
    its password whole in a short one (the cut is in the middle), its end in a ``?password=``."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr fails past 4300 digits
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str) and may_hold_password(value):
        value = _without_url_password(value)
    try:
        return reprlib.repr(value)
    except Exception:  # a broken __repr__ must not replace the error being reported
        return f"a {type(value).__name__}"


def printable(text: str) -> str:
    """``text`` as one line a terminal shows and never obeys: a control character (an escape
    sequence's ESC, a line break), a format character (a right-to-left override) or a line
    separator is written escaped (``\\x1b``, ``\\r``, ``\\u202e``), as ``repr`` writes it;
    spaces (the ideographic one included) and every letter stay as they are.

    For the service's words in an error message (an ``error_description``) and the CLI's lines.
    """
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or unicodedata.category(char) == "Zs" else repr(char)[1:-1]
        for char in text
    )


def check_flag(method: str, name: str, value: object) -> None:
    """``value`` is True or False: ``progress="no"`` was read as true."""
    if type(value) is not bool:
        raise InvalidRequestError(f"{method}(): {name} must be True or False, not {short(value)}")


def check_text(method: str, name: str, value: str) -> str:
    """``value`` if it can be sent as UTF-8; a lone surrogate (``"\\udcff"``) cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidRequestError(
            f"{method}(): {name} holds a lone surrogate ({value[err.start]!r} at {err.start}),"
            " which cannot be sent as UTF-8"
        ) from None
    return value


def check_no_controls(method: str, name: str, text: str) -> None:
    """Refuse a control character in a value matched against the service's data: sent as
    ``%0A`` or ``%09`` (a line's end or a TSV's tab, read from a file), it matches nothing.

    A byte order mark too: the start of a "CSV UTF-8" file read as ``utf-8``, not
    ``utf-8-sig`` (or of a second file joined to the first), sent as ``%EF%BB%BF``; and the
    invisible marks of :data:`_INVISIBLE`, which copied text carries.
    """
    if any(char < " " or "\x7f" <= char <= "\x9f" for char in text):
        raise InvalidRequestError(f"{method}(): {name} holds a control character")
    if "\ufeff" in text:
        raise InvalidRequestError(
            f"{method}(): {name} holds a byte order mark (U+FEFF), the start of a UTF-8 file:"
            " one read as utf-8 rather than utf-8-sig, or files joined together?"
        )
    if not text.isascii():
        mark = _INVISIBLE.search(text)
        if mark is not None:
            raise InvalidRequestError(
                f"{method}(): {name} holds an invisible mark (U+{ord(mark.group()):04X}), as text"
                " copied from a contact card, a web page or a chat carries: remove it"
            )


#: Invisible direction and zero-width marks, which no mobile, e-mail, id or stage holds and
#: copying text brings along (a Windows contact card wraps a number in U+202A ... U+202C):
#: sent, they matched no one. Not the joiners U+200C and U+200D, parts of emoji and scripts.
_INVISIBLE: typing.Final = re.compile(
    "[\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069]"
)


def query_length(params: Mapping[str, str]) -> int:
    """The length of ``params`` as a query string, every reserved character percent-encoded.

    An upper bound of what any encoder writes (yarl leaves ``,`` as is, urllib does not).
    """
    return len(urlencode(params, safe="", quote_via=quote))


def check_query(method: str, params: Mapping[str, str]) -> None:
    """Refuse query parameters that cannot be sent as they are, or make too long a URL."""
    for name, value in params.items():
        # The name too (request()'s are the caller's): it was a raw UnicodeEncodeError.
        check_text(method, f"a parameter's name ({short(name)})", name)
        check_text(method, name, value)
    length = query_length(params)
    if length > MAX_QUERY_LENGTH:
        raise InvalidRequestError(
            f"{method}(): the filters take {length} bytes of URL; at most {MAX_QUERY_LENGTH}"
            f" (a URL is kept under {MAX_URL_LENGTH} bytes)"
        )


def check_request(
    method: object, path: object, params: object, json: Any
) -> tuple[str, Mapping[str, str] | None]:
    """``DMHubClient.request``'s call: its method (upper case) and its query as strings.

    The typed methods check their own input; this is the escape hatch's, so that it too sends
    a well-formed request or nothing: a known method, a path on the client's service, a query
    and a body that can be sent exactly, a URL under :data:`MAX_URL_LENGTH`. The usual call
    (ASCII, short) is told at a glance, about 1 us; anything else is checked in full.
    """
    if type(method) is not str or method not in METHODS:  # a list is not hashable: type first
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise InvalidRequestError(
                f"request(): method must be one of {', '.join(sorted(METHODS))}, "
                f"not {short(method)}"
            )
        method = method.upper()
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
        # No other host: "//host/x" or "http://host/x" would not be the client's service.
        raise InvalidRequestError(
            f"request(): path must be a str starting with one /, like '/v1/customers', "
            f"not {short(path)}"
        )
    if "?" in path or "#" in path:  # "?access_token=x" went out beside the client's own
        raise InvalidRequestError(
            "request(): path holds a query or a fragment: pass the query as params="
        )
    # ASCII and printable: no lone surrogate, no control character, at most 3 bytes a character.
    if not (path.isascii() and path.isprintable() and 3 * len(path) <= MAX_PATH_LENGTH):
        check_text("request", "path", path)
        if any(c < " " or c == "\x7f" for c in path):
            raise InvalidRequestError("request(): path holds a control character")
        if len(quote(path, safe="/")) > MAX_PATH_LENGTH:
            raise InvalidRequestError(f"request(): path is longer than {MAX_PATH_LENGTH} bytes")
    if "." in path or "%" in path:
        _check_no_dot_segment(path)
    query = None if params is None else _request_query(params)
    if json is not None:
        check_json("request", "json", json)
    return method, query


def _check_no_dot_segment(path: str) -> None:
    """Refuse a ``request()`` path with a ``.`` or ``..`` segment, percent-encoded or not.

    The URL library resolves them before sending: ``/v1/customers/1/../2`` (an id of
    ``"1/../2"`` in a path built with it) went out as ``/v1/customers/2``, and
    ``/v1/customers/%2e%2e/x`` as ``/v1/x``, while errors and logs named the path as given.
    A segment whose start before a ``;`` is one (``..;``) too: a Java server reads it so.
    """
    for segment in unquote(path).split("/"):
        if segment.partition(";")[0] in (".", ".."):
            raise InvalidRequestError(
                "request(): path holds a . or .. segment, which would be resolved before it is"
                " sent (another path than the one given): give the path it stands for"
            )


def _request_query(params: object) -> Mapping[str, str]:
    """``params`` with every value a str (an int written out), checked as :func:`check_query`."""
    if type(params) is not dict and not isinstance(params, Mapping):  # the ABC's check is slow
        raise InvalidRequestError(f"request(): params must be a mapping, not {short(params)}")
    query: dict[str, str] | None = None
    size = 0
    ascii_only = True
    for name, value in params.items():
        if type(name) is not str:
            if isinstance(name, str):  # aiohttp's istr, a CIMultiDict's names
                return _request_query_of_text(params)
            raise InvalidRequestError(f"request(): a param name must be a str, not {short(name)}")
        if (length := len(name)) == 12 and name.casefold() == "access_token":
            # Replaced by the client's own without a word: a call meant for another app's
            # token (another tenant's) was answered with this client's customers. In any case
            # too ("ACCESS_TOKEN"): sent beside the client's own, for a service that reads
            # names in any case to take either.
            raise InvalidRequestError(
                # Worded so that the masking of every error message leaves it whole: a name
                # then ": " or "=" reads as a secret's value ("access_token: ***").
                "request(): params hold an access_token parameter, which the client does not"
                " take: the client sends its own token with every call; for another token, make"
                " a client with it (DMHubClient's access_token argument)"
            )
        if type(value) is not str:
            if isinstance(value, str):  # a str enum (StrEnum)
                return _request_query_of_text(params)
            number = value if type(value) is int else _as_int(value)
            # -2**63 too, the least (its bit_length is 64).
            if number is None or not -0x8000000000000000 <= number <= 0x7FFFFFFFFFFFFFFF:
                raise InvalidRequestError(
                    f"request(): param {short(name)} must be a str or a 64-bit int, "
                    f"not {short(value)}"
                )
            if query is None:
                query = dict(params)
            query[name] = value = int.__repr__(number)  # its digits, whatever its class's str
        size += length + len(value) + 2
        ascii_only = ascii_only and name.isascii() and value.isascii()
    if type(params) is not dict:
        _check_one_value_a_name(params)
    checked: Mapping[str, str] = query if query is not None else params
    if not (ascii_only and 3 * size <= MAX_QUERY_LENGTH):  # else it fits whatever it holds
        check_query("request", checked)
    return checked


def _as_int(value: object) -> int | None:
    """``value`` as the int it is, or None: an int subclass, or an integer of a class of its
    own (numpy's ``int64``, any ``numbers.Integral``) through ``__index__``; not a bool, nor a
    float whose class gives an ``__index__`` (it went out cut to its int part), nor what an
    ``__index__`` giving a bool stands for (True went out as "1")."""
    if isinstance(value, (bool, float)):
        return None
    if isinstance(value, int):  # a plain int of an int subclass, whatever its own __index__
        return operator.index(value)
    try:  # the class's own, as index() calls it: index() makes a bool it gives 1 or 0
        number = type(value).__index__(value)  # type: ignore[attr-defined]
    except Exception:  # no integer (a float, numpy's bool_), or an __index__ of its own
        return None  # failing otherwise (pandas' NA...): refused by the caller naming it
    if type(number) is int:
        return number
    if isinstance(number, bool) or not isinstance(number, int):  # index() refuses a non-int
        return None
    return operator.index(number)  # an int subclass: the plain int index() gives of it


def _request_query_of_text(params: Mapping[str, object]) -> Mapping[str, str]:
    """:func:`_request_query` of ``params`` holding a str of a class of its own (aiohttp's
    ``istr``, a CIMultiDict's names; a str enum), each as the text it holds: what aiohttp
    would send of it, and a str as ``request()``'s types say. They were refused, "a param name
    must be a str, not istr 'idList'", of a str."""
    if type(params) is not dict:  # names given twice, before the copy makes them one
        _check_one_value_a_name(params)
    return _request_query(
        {
            str.__str__(name) if isinstance(name, str) else name: (
                str.__str__(value) if isinstance(value, str) else value
            )
            for name, value in params.items()
        }
    )


def _check_one_value_a_name(params: Mapping[str, object]) -> None:
    """Refuse ``params`` that give a name more than one value (a ``MultiDict``, aiohttp's
    and yarl's own way to repeat a name; a web framework's query, werkzeug's ``MultiDict``
    as Flask's ``request.args``, Django's ``QueryDict``, whose ``getlist`` gives them all).

    The query is made a dict of them as it is sent: every value of such a name but one was
    dropped without a word (the first kept, or the last when a value was an int), and the call
    answered for fewer ids than it was given. A framework's query gives each name once in its
    items (the first value): it was sent so, unchecked.
    """
    getlist = getattr(params, "getlist", None)
    seen: set[str] = set()
    for name, value in params.items():
        if (
            name in seen
            or params[name] != value
            or (callable(getlist) and _gives_many(getlist, name))
        ):
            raise InvalidRequestError(
                f"request(): params give {short(name)} more than one value, which the client"
                " sends once: join the values as the service reads them (ids separated by"
                " commas)"
            )
        seen.add(name)


def _gives_many(getlist: Callable[[str], object], name: str) -> bool:
    """Whether ``getlist(name)`` gives more than one value; InvalidRequestError naming the
    param if it raises, or its values do as they are read (it escaped ``request()`` raw)."""
    try:
        return _many(getlist(name))
    except Exception as err:
        raise InvalidRequestError(
            f"request(): params' values of {short(name)} could not be read: their getlist()"
            f" raised {type(err).__name__}; give the params as a dict"
        ) from None


def _many(values: object) -> bool:
    """Whether ``values`` (a ``getlist`` answer) are more than one: a list, or any iterable of
    them (a generator of two was read as no more than one, and one of the two went out)."""
    if isinstance(values, (list, tuple)):
        return len(values) > 1
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        return False
    return next(islice(values, 1, None), _NO_VALUE) is not _NO_VALUE


#: What :func:`_many` reads past the last of a ``getlist`` answer's values.
_NO_VALUE = object()


def check_json(method: str, what: str, value: Any) -> None:
    """Refuse a body value JSON cannot carry exactly: NaN, infinities, lone surrogates,
    integers of more than :data:`MAX_INT_DIGITS` digits, non-string keys, other types, or
    nesting deeper than :data:`MAX_JSON_DEPTH` (a value that holds itself included)."""
    _check_json(method, what, value, 0)


def _check_json(method: str, where: str, value: Any, depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        check_text(method, where, value)
    elif isinstance(value, int):
        if not -_INT_BOUND < value < _INT_BOUND:
            raise InvalidRequestError(
                f"{method}(): {where} is an integer of more than {MAX_INT_DIGITS} digits"
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequestError(f"{method}(): {where} is {value}, which JSON cannot hold")
    elif isinstance(value, Decimal):  # a JSON number of its digits (decimal_to_json)
        if scalars.beyond_json(value):
            huge = f"an integer of more than {MAX_INT_DIGITS} digits"
            what = huge if value.is_finite() else value
            raise InvalidRequestError(f"{method}(): {where} is {what}, which JSON cannot hold")
    elif depth >= MAX_JSON_DEPTH:
        raise InvalidRequestError(
            f"{method}(): {where} is nested more than {MAX_JSON_DEPTH} deep (or holds itself)"
        )
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequestError(f"{method}(): {where} has a key {short(key)}: not a str")
            check_text(method, f"a key of {where}", key)
            _check_json(method, f"{where}[{short(key)}]", item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json(method, f"{where}[{index}]", item, depth + 1)
    else:
        raise InvalidRequestError(
            f"{method}(): {where} is a {type(value).__name__}, which JSON cannot hold"
        )


def check_concurrency(value: object, name: str = "concurrency") -> int:
    """A walk's, a lookup's or a worker's ``concurrency``: an int from 1 to
    :data:`MAX_CONCURRENCY`, refused in one wording wherever it is given (``name``: as the
    caller names it, ``"worker(): concurrency"``). The plain int it is: an integer of a class
    of its own (numpy's ``int64``) is taken as an id is, a bool or a float is not."""
    number = _as_int(value)
    if number is None or not 1 <= number <= MAX_CONCURRENCY:
        raise InvalidRequestError(
            f"{name} must be an int from 1 to {MAX_CONCURRENCY}, not {short(value)}"
        )
    return number


def check_path_type(method: str, name: str, value: object) -> None:
    """A file or directory argument: a ``str`` or an ``os.PathLike`` of one, else
    InvalidRequestError naming it, as ``export_customers`` and ``FileTokenStore`` refuse one
    (bytes, an int, None were a raw TypeError from deep inside ``pathlib``)."""
    if isinstance(value, str) or (
        isinstance(value, os.PathLike) and isinstance(os.fspath(value), str)
    ):
        if (why := unnameable(os.fspath(value))) is not None:
            # a raw "ValueError: embedded null byte" or UnicodeEncodeError out of the first
            # look at it (export_sharded, merge)
            raise InvalidRequestError(f"{method}(): {name} {os.fspath(value)!r} {why}")
        return
    raise InvalidRequestError(f"{method}(): {name} must be a path, not {type(value).__name__}")


def unnameable(path: str) -> str | None:
    """Why no file can have the name ``path`` (a NUL in it, or a character the file system's
    encoding cannot write: a lone surrogate, half of a character cut in two), or None."""
    if "\x00" in path:
        return "holds a NUL character, which no file name can"
    try:
        os.fsencode(path)
    except UnicodeEncodeError as err:
        return (
            f"holds {path[err.start]!r}, which no file name here can (the file system's"
            f" {sys.getfilesystemencoding()} cannot write it)"
        )
    return None


def check_paging(page_size: object, start_page: object, max_items: object = None) -> None:
    """The ranges of a walk's paging ints (the paginator checks their types)."""
    for name, value, low, high in (
        ("page_size", page_size, 1, MAX_PAGE_NUMBER),
        ("start_page", start_page, 1, MAX_PAGE_NUMBER),
        ("max_items", max_items, 0, None),
    ):
        number = _as_int(value)
        if number is not None and (number < low or (high is not None and number > high)):
            bounds = f"from {low} to {high}" if high is not None else f">= {low}"
            raise InvalidRequestError(f"{name} must be an int {bounds}, not {short(value)}")


def white_space_around(name: str, value: str) -> str | None:
    """Why a credential ``name`` of ``value`` is refused when white space is around it (pasted
    with it, or read from a file with its newline), never quoting it; None when there is none."""
    if value == value.strip():
        return None
    where = "starts" if value[:1].isspace() else "ends"
    return (
        f"{name} {where} with white space (pasted with it?), which no app's credentials hold:"
        " remove it"
    )


#: The credentials' variables by their names' letters (upper case, no ``_`` or ``-``), and
#: the misspellings a user makes of them (the service's own word is ``appid``).
_CREDENTIAL_VARIABLES: typing.Final[Mapping[str, str]] = {
    "DMHUBAPPID": "DMHUB_APP_ID",
    "DMHUBSECRET": "DMHUB_SECRET",
    "DMHUBAPPSECRET": "DMHUB_SECRET",
}


def misnamed_variables(environ: Mapping[str, str], unset: Iterable[str]) -> str:
    """`` (DMHUB_APPID is set: did you mean DMHUB_APP_ID?)`` for each variable of ``unset``
    that a variable set in ``environ`` misspells (its case, its underscores, ``APP_SECRET``),
    or ``""``. Only names are said, never a value."""
    wanted = set(unset)
    said = [
        f"{name} is set: did you mean {meant}?"
        for name, value in sorted(environ.items())
        if value
        and (meant := _CREDENTIAL_VARIABLES.get(re.sub(r"[_-]", "", name.upper())))
        and meant in wanted
        and name != meant
    ]
    return f" ({'; '.join(said)})" if said else ""


def pasted_around(name: str, value: str) -> str | None:
    """Why a credential ``name`` of ``value`` is refused as pasted: white space around it
    (:func:`white_space_around`), or quotes (``"..."`` or ``'...'``, or a chat's curled or
    full-width ones), never quoting it; None when there are neither.

    A ``.env`` file's ``DMHUB_SECRET="..."`` read by a loader that keeps the quotes (``export
    $(cat .env)``, docker's ``--env-file``) was sent with them: the service refused it, and
    "check app_id and secret" sent the user to a file that showed the right value.
    """
    if spaced := white_space_around(name, value):
        return spaced
    if len(value) < 2 or value[-1] not in _QUOTES_CLOSED_BY.get(value[0], ""):
        return None
    how = "read from a .env file" if value[0] in "\"'" else "pasted from a chat or a document"
    return (
        f"{name} is in quotes ({value[0]}...{value[-1]}: {how} with them?), which no app's"
        " credentials hold: remove them"
    )


#: Quotes by the one that opens them (each of the characters that may close them): a .env
#: file's, and those a chat or a document curls (WeChat, Word; both ends closing, as Swedish
#: and Finnish write them; German and Polish low-high ones) or a Chinese input method types
#: (full-width, corner brackets), and guillemets (French, Russian; German and Danish the other
#: way round), which a credential pasted from them was sent with.
_QUOTES_CLOSED_BY: typing.Final[Mapping[str, str]] = {
    '"': '"',
    "'": "'",
    "\u201c": "\u201d",  # “ ”
    "\u2018": "\u2019",  # ‘ ’
    "\u201d": "\u201d",  # ” ”
    "\u2019": "\u2019",  # ’ ’
    "\u201e": "\u201c\u201d",  # „ “ and „ ”
    "\u201a": "\u2018\u2019",  # ‚ ‘ and ‚ ’
    "\u00ab": "\u00bb",  # « »
    "\u00bb": "\u00ab",  # » «
    "\u2039": "\u203a",  # ‹ ›
    "\u203a": "\u2039",  # › ‹
    "\uff02": "\uff02",  # ＂ ＂
    "\uff07": "\uff07",  # ＇ ＇
    "\u300c": "\u300d",  # 「 」
    "\u300e": "\u300f",  # 『 』
}


def check_settings(
    credentials: Mapping[str, object],
    base_url: object,
    numbers: Mapping[str, tuple[object, float, bool, type]],
    auth_error_codes: object,
    optional: frozenset[str] = frozenset(),
) -> None:
    """The client's settings: strings that can be sent, a base URL, numbers in range.

    ``numbers`` maps a setting to ``(value, lowest, whether the lowest is allowed, int or
    float)``; None is refused but for the settings named ``optional``. No message repeats a
    credential.
    """
    for name, value in credentials.items():
        if value is not None and not isinstance(value, str):
            raise InvalidRequestError(f"{name} must be a string, not {type(value).__name__}")
        if isinstance(value, str) and (spaced := pasted_around(name, value)):
            # Pasted with a space (a tenant's settings from a sheet or a form): sent, the
            # service refused it, and the AuthenticationError said to check app_id and secret,
            # where nothing showed the space. As the command line refuses DMHUB_APP_ID and
            # DMHUB_SECRET, never quoting the value. Before the check below: a secret read
            # from a file with its newline was "a character that cannot be sent", not where.
            raise InvalidRequestError(spaced)
        if isinstance(value, str) and not value.isprintable():
            raise InvalidRequestError(f"{name} holds a character that cannot be sent")
        if isinstance(value, str) and len(quote(value, safe="")) > MAX_SETTING_LENGTH:
            raise InvalidRequestError(f"{name} is longer than {MAX_SETTING_LENGTH} bytes")
    if base_url is not None:
        _check_base_url(base_url)
    for name, (value, low, inclusive, kind) in numbers.items():
        if value is None and name in optional:
            continue
        check_number(name, value, low, inclusive=inclusive, kind=kind)
    check_codes("auth_error_codes", auth_error_codes)


def check_codes(name: str, codes: object) -> frozenset[int | str]:
    """Body ``error_code`` values as a set to look an answer's code up in, each read as the
    answer's is (:func:`coerce_code`: ``"40201"`` is 40201), or InvalidRequestError.

    ``request(not_found_codes={"40201"})`` never matched the answer's 40201, and one that was
    no collection (``40201``) was sent, then raised a raw TypeError on the error answer.
    """
    items = tuple(typing.cast(Iterable[object], codes)) if is_collection(codes) else None
    if items is None or not all(
        isinstance(code, (int, str)) and not isinstance(code, bool) for code in items
    ):
        raise InvalidRequestError(f"{name} must be a list of ints or strings, not {short(codes)}")
    return frozenset(coerce_code(code) or typing.cast("int | str", code) for code in items)


def check_number(
    name: str,
    value: object,
    low: float,
    *,
    inclusive: bool,
    kind: type = float,
    finite: bool = False,
    what: str | None = None,
    high: float | None = None,
) -> None:
    """A setting that is a number (``kind`` int: an int) above ``low`` (or at it, ``inclusive``),
    and at most ``high`` if given.

    ``finite``: a float must hold it and it is not infinite; a timeout beyond that made the
    first call fail with a raw OverflowError. ``what`` names the number (``"a number of
    seconds"``). Every message writes the value with :func:`short`: writing an integer of
    5,000 digits raises ValueError.
    """
    allowed = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed) or value != value:
        what = what or ("an int" if kind is int else "a number")
        raise InvalidRequestError(f"{name} must be {what}, not {short(value)}")
    number = typing.cast(float, value)
    if number < low or (number == low and not inclusive):
        bound = ">=" if inclusive else ">"
        raise InvalidRequestError(f"{name} must be {bound} {low}, not {short(value)}")
    if finite and not _finite(number):
        raise InvalidRequestError(f"{name} must be finite, not {short(value)}")
    if high is not None and number > high:
        raise InvalidRequestError(f"{name} must be <= {high:g}, not {short(value)}")


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond any float
        return False


def resolvable_url(text: str) -> URL:
    """``text`` as a URL whose port and host a resolver takes; ValueError (a bad IPv6
    literal, port or host) or UnicodeError otherwise. Its host is decoded from punycode
    (``xn--abc`` raised a raw UnicodeError at the first call) and encoded to IDNA as
    ``socket.getaddrinfo`` does: an empty label (``a..b``) or one over 63 characters failed
    every call with a raw UnicodeError."""
    url = URL(text)
    _ = url.port, url.host
    (url.raw_host or "").encode("idna")
    return url


def refused_ipv4(host: str) -> bool:
    """Whether aiohttp refuses to connect to ``host``: an IPv4 address in a legacy form
    (``127.1``, ``2130706433``, ``0177.0.0.1``), which the resolver maps onto an address and
    aiohttp (3.14, not 3.9) refuses at every request, "not a canonical IPv4 address"."""
    if ":" in host or not host.replace(".", "").isdigit():
        return False
    from aiohttp import helpers  # loaded with the client already

    canonical = getattr(helpers, "is_canonical_ipv4_address", None)
    return canonical is not None and not canonical(host)


#: Where a call's own path starts in a base URL that holds one: a resource of the contract's
#: under /v1, or the token endpoint.
_CALL_PATH = re.compile(
    r"/(?:v1/(?:customers|customeridentities|customerandidentities|customerstatistics)"
    r"|security/accesstoken)(?=/|$)",
    re.IGNORECASE,
)


def _check_base_url(base_url: object) -> None:
    if not isinstance(base_url, str):
        raise InvalidRequestError(f"base_url must be a string, not {type(base_url).__name__}")
    check_text("DMHubClient", "base_url", base_url)
    if len(quote(base_url, safe=":/")) > MAX_SETTING_LENGTH:
        raise InvalidRequestError(f"base_url is longer than {MAX_SETTING_LENGTH} bytes")
    if "?" in base_url or "#" in base_url:  # never quoted: a query may hold the secret
        # A bare "?" or "#" passed the check below (an empty query), and every call went to /.
        raise InvalidRequestError("base_url must have no query or fragment (no ? or #)")
    if base_url != base_url.strip() or " " in base_url:
        raise InvalidRequestError("base_url must hold no spaces")
    if "@" in re.split(r"[/?#]", base_url.partition("://")[2], maxsplit=1)[0]:  # never quoted
        raise InvalidRequestError(
            "base_url must hold no user or password (user:password@host): DM Hub takes the app"
            " id and secret, and the URL is shown in reprs, errors and a sharded export's"
            " manifest"
        )
    try:
        url = resolvable_url(base_url)
    except (ValueError, UnicodeError):  # a bad IPv6 literal, port, or host name
        raise InvalidRequestError(f"base_url is not a URL: {short(base_url)}") from None
    port, host = url.port, url.host
    if url.scheme not in ("http", "https") or not host or not port:  # None, or 0
        raise InvalidRequestError(
            f"base_url must be http:// or https:// and a host: {short(base_url)}"
        )
    if url.query_string or url.fragment:
        raise InvalidRequestError(f"base_url must have no query or fragment: {short(base_url)}")
    if refused_ipv4(host):
        # Taken, and every call failed as aiohttp refused it, retried as "no connection to ...
        # (is base_url right, and the service up?)", the token request first.
        try:
            written = f" ({host} is {socket.inet_ntoa(socket.inet_aton(host))})"
        except OSError:  # no address at all (1.2.3.4.5)
            written = ""
        raise InvalidRequestError(
            f"base_url's host {short(host)} is an IPv4 address written otherwise than as four"
            " decimal numbers (no leading zero), which aiohttp refuses to connect to: write it"
            f" so{written}"
        )
    after_scheme = base_url.partition("://")[2]
    path = after_scheme[len(after_scheme.split("/", 1)[0]) :]
    if call := _CALL_PATH.search(path):
        # A call's URL copied whole from the contract (.../v1/customers): the token request
        # went to /v1/customers/security/accesstoken, refused "invalid access_token", which
        # blamed the credentials (the command line: another process's token too).
        raise InvalidRequestError(
            "base_url is the service's root, not a call's URL (the client adds /v1/... to each"
            " call, and /security/accesstoken to the token request): pass"
            f" {short(base_url[: len(base_url) - len(path) + call.start()])}"
        )
    root = base_url.rstrip("/")
    if root[-3:].lower() == "/v1":
        # Copied from the contract ("every call is under /v1"): the calls went to /v1/v1/...
        # and the token request, not under /v1, failed with "invalid access_token".
        raise InvalidRequestError(
            "base_url is the service's root, without /v1 (the client adds it to each call,"
            f" and the token request is not under it): pass {short(root[:-3])}"
        )


def _runtime_types(hint: Any) -> tuple[type, ...]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _runtime_types(arg))
    if origin is not None:
        return (origin,)
    return () if hint is type(None) else (hint,)


#: The Python types each writable field takes, read off the ``CustomerFields`` TypedDict.
FIELD_TYPES: Mapping[str, tuple[type, ...]] = {
    name: _runtime_types(hint) for name, hint in typing.get_type_hints(CustomerFields).items()
}


def check_customer_fields(method: str, fields: Mapping[str, Any] | CustomerFields) -> None:
    """Refuse unknown keywords (TypeError) and values of the wrong type or size."""
    values = typing.cast(Mapping[str, Any], fields)
    for name in values:
        value: Any = values[name]
        allowed = FIELD_TYPES.get(name)
        if allowed is None:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")
        if value is None:
            continue
        if not _is_instance(value, allowed):
            expected = " or ".join(t.__name__ for t in allowed)
            raise InvalidRequestError(
                f"{method}(): {name} must be {expected} or None, not {type(value).__name__}"
            )
        if name == "gender" and value not in tuple(Gender):
            raise InvalidRequestError(f"{method}(): gender must be 0, 1 or 2, not {short(value)}")
        if name == "employee_number" and not INT32_RANGE[0] <= value <= INT32_RANGE[1]:
            # Sent, the service could not read it (and the simulator stored it): refused here.
            low, high = INT32_RANGE
            raise InvalidRequestError(
                f"{method}(): employee_number must be from {low} to {high} (a 32-bit integer),"
                f" not {short(value)}"
            )
        if name in _ADDRESSES and len(value) > MAX_ADDRESS:
            raise InvalidRequestError(
                f"{method}(): {name} is {len(value)} characters; at most {MAX_ADDRESS}"
            )
        if name in _MATCHED_ON:
            # The service matches a create on them: a number copied from a contact card (its
            # invisible marks) or read with its line's end matched no one and made a second
            # customer, whose mobile the filters then refused to look for. So did a mobile a
            # float wrote (13800138000.0).
            check_no_controls(method, name, value)
            check_not_mangled(method, name, value)
        if name == "attr" and not all(isinstance(k, str) for k in value):
            raise InvalidRequestError(f"{method}(): attr keys must be strings")
        if name == "date_join":
            _check_timestamp(method, name, value)
        if name == "annual_revenue" and isinstance(value, str):
            _check_amount_text(method, value)


#: The fields a create is matched on (docs/contract.md "create"), checked as filters are.
_MATCHED_ON: typing.Final = frozenset({"mobile", "email"})

#: A JSON number's text: what an amount given as a string may be.
_NUMBER: typing.Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _check_amount_text(method: str, text: str) -> None:
    """An ``annual_revenue`` given as text: a JSON number's, which a ``Decimal`` holds (it is
    sent as one), or InvalidRequestError.

    Sent as it was, a JSON string the service refused after the request (or took: Python's
    Decimal reads "1_000" and "Infinity"). A number whose exponent no Decimal holds
    (``"1e-9999999999999999999999"``) was a raw ``decimal.InvalidOperation`` from inside
    the converter, no DMHubError and no ValueError, naming no field.
    """
    if not _NUMBER.fullmatch(text):
        raise InvalidRequestError(
            f"{method}(): annual_revenue must be a number (or its text, such as '1000.50'),"
            f" not {short(text)}"
        )
    try:
        Decimal(text)
    except InvalidOperation:
        raise InvalidRequestError(
            f"{method}(): annual_revenue must be a number a Decimal holds, not {short(text)}"
        ) from None


def _check_timestamp(method: str, name: str, value: datetime | str) -> None:
    """A time the wire can carry (in UTC) and the client can read back, or InvalidRequestError.

    A string went out as it was, and one the client cannot read (``"garbage"``) made the answer
    to a create unreadable, after the customer was written; a datetime with no UTC form (year 1
    at +23:00) was a raw OverflowError.
    """
    try:
        if isinstance(value, str):  # read as it is written: "+05:99" refused, as a filter's
            value = timestamp_as_written(check_text(method, name, value))
        if value.tzinfo is not None:
            value.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # UnicodeError is a ValueError
        raise InvalidRequestError(
            f"{method}(): {name} must be a time in UTC's range, as a datetime or a timestamp "
            f"like 2017-06-01T12:12:12Z, not {short(value)}"
        ) from None


def _is_instance(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in allowed:
        return False  # True is an int to Python, not an employee number to DM Hub
    return isinstance(value, allowed)


def check_id(method: str, customer_id: object) -> int:
    """A customer id as a plain int, or InvalidRequestError (ids are 64-bit ints on the wire).

    Plain: an int subclass of the caller's (a typed id whose ``__repr__`` is its own) went out
    as its text, ``/v1/customers/CustomerId(7)``, which the service could only refuse. An
    integer of a class of its own (numpy's ``int64``, read from a data frame) is taken as the
    int its ``__index__`` gives, as a param of ``request()`` is; a bool is refused.
    """
    number = customer_id if type(customer_id) is int else _as_int(customer_id)
    if number is None:
        raise InvalidRequestError(
            f"{method}(): a customer id must be an int, not {type(customer_id).__name__}"
        )
    if number < 0 or number >= 2**63:
        raise InvalidRequestError(
            f"{method}(): customer id {short(customer_id)} is out of range: ids are 64-bit,"
            " from 0 to 2**63 - 1"
        )
    return number


def check_identity(method: str, identity: object) -> Identity:
    """``identity`` if it is an :class:`Identity` within the contract's limits."""
    if not isinstance(identity, Identity):
        raise InvalidRequestError(
            f"{method}(): expected an Identity(type, value), not {type(identity).__name__}"
        )
    kind, value = identity.type, identity.value
    if (  # the usual identity at a glance: ASCII (so no lone surrogate), within the limits
        type(kind) is str
        and type(value) is str
        and identity.name is None
        and 0 < len(value) <= MAX_IDENTITY_VALUE
        and value.isascii()
        and not value.isspace()  # nor blank: see below
    ):
        if kind == "mobile":
            # ASCII digits alone: printable, and no number in scientific notation. (The type
            # is the contract's own: within the limits.)
            if value.isdigit():
                return identity
        elif (
            0 < len(kind) <= MAX_IDENTITY_TYPE
            and kind.isascii()
            and kind == kind.strip()  # nor blank, nor padded: see below
            and kind.isprintable()  # ASCII that is not: a control character (a tab, a NUL)
            and value.isprintable()
            and "+" not in value  # no number in scientific notation (mangled_value)
            and (kind != "email" or value == value.strip())  # nor a padded one (likewise)
        ):
            return identity
    for what, text, limit in (
        ("type", identity.type, MAX_IDENTITY_TYPE),
        ("value", identity.value, MAX_IDENTITY_VALUE),
    ):
        if not isinstance(text, str) or not text:
            raise InvalidRequestError(f"{method}(): identity {what} must be a non-empty string")
        if len(text) > limit:
            raise InvalidRequestError(
                f"{method}(): identity {what} is {len(text)} characters; at most {limit}"
            )
        check_text(method, f"identity {what}", text)
        check_no_controls(method, f"identity {what}", text)
        if text.isspace():
            # A blank cell read with its padding (" ", a full-width "\u3000"): bound by an
            # upsert, every row with one matched the customer of the first, and overwrote it.
            raise InvalidRequestError(f"{method}(): identity {what} is blank (spaces only)")
    if kind != kind.strip():
        # Read from a sheet with its padding ("mobile "): sent, and "not found", the customer
        # holding the value reported as none. No service's type has any; quoted: a type is no
        # personal data.
        raise InvalidRequestError(
            f"{method}(): identity type {kind.strip()!r} has white space around it, which no"
            " identity type holds: remove it"
        )
    if identity.name is not None:
        if not isinstance(identity.name, str) or len(identity.name) > MAX_IDENTITY_NAME:
            raise InvalidRequestError(
                f"{method}(): identity name must be a string of at most {MAX_IDENTITY_NAME}"
                " characters"
            )
        check_text(method, "identity name", identity.name)
    mangled = mangled_value(kind, value, text=_AS_TEXT)
    if mangled:  # its type, not its value: an identity is personal data
        raise InvalidRequestError(f"{method}(): identity value of type {kind} {mangled}")
    return identity


def check_not_mangled(method: str, name: str, value: str) -> None:
    """Refuse a ``mobile`` or ``email`` (a filter's, a field's) :func:`mangled_value` finds."""
    mangled = mangled_value(name, value, text=_AS_TEXT)
    if mangled:  # its name, not its value: personal data
        raise InvalidRequestError(f"{method}(): {name} {mangled}")


#: A number as Excel and WPS write one too long for them (12 digits and more): 1.38001E+10;
#: as Python and pandas write a float of 17 digits and more: 6.22848e+18.
_SCIENTIFIC: typing.Final = re.compile(r"[0-9](\.[0-9]+)?[eE]\+[0-9]{2,}")
#: A number written as a decimal (Excel's General format, a float's str()): 13800138000.0.
_DECIMAL: typing.Final = re.compile(r"\+?[0-9]+\.0+")
#: The full-width forms of ASCII, and the ideographic full stop.
_FULL_WIDTH: typing.Final = re.compile("[\uff01-\uff5e\u3002]")
#: How a program keeps a column of numbers as the text it holds.
_AS_TEXT: typing.Final = "read the column as text, not as numbers (pandas: dtype=str)"


def mangled_value(kind: str, value: str, *, text: str) -> str | None:
    """Why ``value``, an identity's of type ``kind`` (or the ``mobile`` or ``email`` of a
    filter or a customer), is one no service holds, a number a spreadsheet or a float
    changed, or an address typed in full-width (None: it is not).

    Each was looked up as it was and "not found": a customer holding the number reported as
    none. Scientific notation is any type's (a member card number; no identity is written
    so); the rest a ``mobile``'s, which is digits (an ``+86`` allowed): a ``.0``, Excel's text
    mark ``'``, a formula, or full-width digits (１３８) typed with a Chinese input method; or
    an ``email``'s (an address may hold Chinese, 王@例子.中国, never ＠ or 。). ``text`` is the
    advice that keeps a number's digits, in the words of where it was read. The CLI's
    ``lookup --in``, :func:`check_identity`, the filters and :func:`check_customer_fields`
    share it.
    """
    if "+" in value and _SCIENTIFIC.fullmatch(value):
        return f"is in scientific notation (1.38E+10): its digits are lost; {text}"
    if kind in _MATCHED_ON and value != value.strip():
        # " 13800000000", pasted: a filter matched no one, and a create (matched on it) or a
        # binding made a second customer, whose number the filters then refused to look for.
        return "starts or ends with a space"
    if kind == "email":
        if _FULL_WIDTH.search(value):
            return "holds full-width characters (＠, ．, 。): type them half-width (@, .)"
        return None
    if kind != "mobile" or (value.isdigit() and value.isascii()):
        return None
    if _DECIMAL.fullmatch(value):
        return f"ends in .0 (a number written as a decimal): give the digits alone; {text}"
    if value.startswith("'"):
        return "starts with an apostrophe (Excel's mark for text): remove it"
    if value.startswith("="):
        return 'is a formula (="..."): give the digits alone'
    if not value.isascii():
        return "holds full-width or other non-ASCII characters: give ASCII digits (0-9)"
    return None


def is_collection(value: object) -> bool:
    """Whether ``value`` is an iterable of items, not a str, bytes or Identity (iterable too)."""
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, Identity))


def at_index(
    err: InvalidRequestError, method: str, index: int, name: str = "identities"
) -> InvalidRequestError:
    """``err`` naming the item of the input ``name`` it is about by its index (its value may
    be personal data; among thousands of identities, "identity value of type mobile" named
    none, among 300,000 ids read from a file "a customer id must be an int")."""
    prefix = f"{method}(): "
    message = str(err).removeprefix(prefix)
    return InvalidRequestError(f"{prefix}{name}[{index}]: {message}")


def check_identities(method: str, identities: Iterable[Identity]) -> list[Identity]:
    """A non-empty list of valid identities, each given once (by type and value)."""
    if not is_collection(identities):
        raise InvalidRequestError(f"{method}(): identities must be a list of Identity")
    checked: list[Identity] = []
    places: dict[Identity, int] = {}
    for index, identity in enumerate(identities):
        try:
            checked.append(check_identity(method, identity))
        except InvalidRequestError as err:
            # Its place among them, as lookup_many's: which of a user's identities it was,
            # without its value (personal data). "identity value must be a non-empty string"
            # named none of them.
            raise at_index(err, method, index) from None
        # The same type and value twice went out as given: the contract says nothing of what
        # the service does with it, and one of two names was dropped without a word.
        first = places.setdefault(checked[-1], index)
        if first != index:
            raise InvalidRequestError(
                f"{method}(): identities[{first}] and identities[{index}] are the same "
                f"{checked[-1].type} identity (type and value): give each identity once"
            )
    if not checked:
        raise InvalidRequestError(f"{method}(): at least one identity is needed")
    return checked
