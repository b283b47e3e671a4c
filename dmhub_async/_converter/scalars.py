"""Scalars in and out: what one wire value becomes, and what one Python value is written as.

In (lenient: the service's JSON as it comes, docs/contract.md "Customer model"):
- timestamps: ``2017-06-01T12:12:12Z`` (the contract's form), no offset (taken as UTC), any
  ``+hh:mm`` offset (its minutes below 60: ``+05:99`` is refused), fractional seconds (past
  microseconds rounded to the nearest, half up, as msgspec reads them), a lower-case ``t`` or
  ``z``, full-width digits (read as their ASCII digits, :func:`ascii_digits`), on every supported
  Python (3.10's ``fromisoformat`` knows neither ``Z`` nor arbitrary fractions, 3.11's no
  ``z``); always an aware UTC ``datetime``.
- ``Decimal``: from a JSON string, int or float, a float through its shortest ``repr`` so
  ``0.1`` gives ``Decimal("0.1")``.
- ``Gender``: null or 0 is ``UNKNOWN``, 1 and 2 (or their strings) the others; anything else
  is no known gender (``None`` here; the structure hook keeps the raw value in ``extra``).
- a number sent for a text field is kept as its text; ``"123"`` for an int is read.

A value of the wrong shape raises ``TypeError`` or ``ValueError``.

Out (what the service expects): timestamps as ``...Z`` in UTC, a ``Decimal`` as a JSON number
when no digit is lost (:func:`decimal_to_json`), a ``Gender`` as its int.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Final, TypeVar

from ..models import Gender

T = TypeVar("T")

UTC: Final = timezone.utc

# ---------------------------------------------------------------------------------------------
# In
# ---------------------------------------------------------------------------------------------


def to_str(v: Any) -> str | None:
    """A wire value for a ``str | None`` field (a number the service sends is kept as text)."""
    if v is None or v.__class__ is str:
        return v
    if isinstance(v, str | int | float | Decimal):
        return str(v)
    raise TypeError(f"expected a string, got {type(v).__name__}")


def to_int(v: Any) -> int | None:
    """A wire value for an ``int | None`` field; accepts ``"123"`` (identity ``customerId``)."""
    if v is None or v.__class__ is int:
        return v
    if isinstance(v, bool):
        raise TypeError("expected an integer, got a bool")
    if isinstance(v, float | Decimal):
        if isinstance(v, Decimal) and beyond_json(v):  # 1e1000000: int() would take minutes
            raise ValueError(f"expected an integer, got {v:.3e}")
        if v != int(v):
            raise ValueError(f"expected an integer, got {v!r}")
        return int(v)
    if isinstance(v, str):
        # ASCII digits only: int() also took " 12 ", "+12", "1_000" and full-width digits, so a
        # lookup answered "１２" was customer 12.
        if INT_TEXT.match(v) is None:
            raise ValueError(f"expected an integer, got {v[:40]!r}")
        return int(v)
    if isinstance(v, int):
        return int(v)
    raise TypeError(f"expected an integer, got {type(v).__name__}")


INT_TEXT: Final = re.compile(r"-?[0-9]{1,4300}\Z")


def required(read: Callable[[Any], T | None]) -> Callable[[Any], T]:
    """``read`` for a field that may not be null (``CustomerIdentity.customer_id``): a null
    binding was read as customer None, which a lookup then gave as "not found"."""

    def read_required(v: Any) -> T:
        if v is None:
            raise TypeError("expected a value, got null")
        value = read(v)
        assert value is not None
        return value

    return read_required


_BOOL_STRINGS: Final = {"true": True, "false": False, "1": True, "0": False}


def to_bool(v: Any) -> bool | None:
    """A wire value for a ``bool | None`` field; accepts 0/1 and ``"true"``/``"false"``."""
    if v is None or v.__class__ is bool:
        return v
    if v.__class__ is int and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.lower() in _BOOL_STRINGS:
        return _BOOL_STRINGS[v.lower()]
    raise ValueError(f"expected a boolean, got {v!r}")


def to_decimal(v: Any) -> Decimal | None:
    """A wire number or string as a ``Decimal``; a float goes through its shortest ``repr``.

    ValueError for NaN and the infinities (``"NaN"``, ``"sNaN"``, ``"-Infinity"``): no amount,
    and JSON has no such number, so the SDK refuses them everywhere else; read as text, they
    were ``Decimal("NaN")``, which no sum, comparison or write takes."""
    if v is None:
        return v
    if v.__class__ is Decimal:
        d = v
    elif v.__class__ is float:
        # repr() is the shortest string that round-trips: 0.1 -> "0.1", not 0.1000000000000000055
        d = Decimal(repr(v))
    elif isinstance(v, bool) or not isinstance(v, int | str):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    else:
        try:
            d = Decimal(v)
        except InvalidOperation:  # its words were "[<class 'decimal.ConversionSyntax'>]"
            raise ValueError(f"expected a number, got {str(v)[:40]!r}") from None
    if not d.is_finite():
        raise ValueError(f"expected a finite number, got {str(v)[:40]!r}")
    return d


def to_dict(v: Any) -> dict[str, Any]:
    """A JSON object for a ``dict`` field (``attr``); null is an empty dict."""
    if v is None:
        return {}
    if isinstance(v, Mapping):
        return dict(v)
    raise TypeError(f"expected an object, got {type(v).__name__}")


GENDERS: Final[dict[Any, Gender]] = {
    None: Gender.UNKNOWN,
    0: Gender.UNKNOWN,
    1: Gender.MALE,
    2: Gender.FEMALE,
    "0": Gender.UNKNOWN,
    "1": Gender.MALE,
    "2": Gender.FEMALE,
}


def to_gender(v: Any) -> Gender | None:
    """The ``Gender`` of a wire value, or None when the value is no known gender."""
    if isinstance(v, bool | dict | list):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return GENDERS.get(v)


# "t" as "T" and "z" as "Z" (RFC 3339, section 5.6): 3.11's fromisoformat takes any separator
# but no "z", so "2024-01-02t03:04:05z" was read on 3.10 alone, "...t03:04:05.5Z" on 3.11 alone.
_TS_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


def ascii_digits(text: str) -> str:
    """``text`` with each decimal digit of another script (full-width ``２``, as Chinese input
    methods type it; Arabic-Indic ``٢``) as its ASCII digit; ``text`` itself when all ASCII.

    ``fromisoformat`` reads ASCII digits alone, and the fallback reader all of them: a day
    written ``２０２４-０１-０２`` was a filter's midnight, not the whole day ``2024-01-02`` is.
    """
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(char)) if char.isdecimal() else char for char in text)


#: A fraction of a second whose seventh digit rounds it up to the next microsecond.
_ROUNDS_UP: Final = re.compile(r"[.,]\d{6}[5-9]")
_MICROSECOND: Final = timedelta(microseconds=1)


def _a_microsecond_on(moment: datetime, s: str) -> datetime:
    try:
        return moment + _MICROSECOND
    except OverflowError:  # 9999-12-31T23:59:59.9999995: no datetime holds the next one
        raise ValueError(f"not a timestamp: {s!r} rounds past the year 9999") from None


def from_iso(s: str) -> datetime:
    """``datetime.fromisoformat(s)``, a fraction past microseconds rounded to the nearest (half
    up), as msgspec reads it; ``fromisoformat`` drops those digits.

    The contract's timestamps are to the second, so this is a form of the lenient readers'
    alone; the typed page reader (msgspec) reads a timestamp in C, and rounds: one reading on
    every path, whichever reads the record."""
    moment = datetime.fromisoformat(s)
    # Seven digits of fraction after 15 characters at the least (20240102T030405.1234567)
    if len(s) > 22 and _ROUNDS_UP.search(s):
        return _a_microsecond_on(moment, s)
    return moment


def parse_timestamp_slow(s: str) -> datetime:
    """Parse what ``datetime.fromisoformat`` of this Python refuses (3.10: ``Z``, odd fractions)."""
    m = _TS_RE.fullmatch(ascii_digits(s).strip())
    if m is None:
        raise ValueError(f"not a timestamp: {s!r}")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    frac = frac or "0"
    micro = int(frac[:6].ljust(6, "0"))
    tzinfo = UTC
    if tz and tz not in ("Z", "z"):
        digits = tz[1:].replace(":", "")
        if int(digits[2:] or 0) >= 60:  # "+05:99" is no offset (see check_offset)
            raise ValueError(f"not a timestamp: {s!r} has no such offset")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        tzinfo = timezone(-offset if tz[0] == "-" else offset)
    dt = datetime(
        int(year),
        int(month),
        int(day),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micro,
        tzinfo=tzinfo,
    )
    if frac[6:7] >= "5":  # rounded, as from_iso does
        dt = _a_microsecond_on(dt, s)
    return dt if tzinfo is UTC else dt.astimezone(UTC)


#: Python >= 3.11: ``fromisoformat`` reads the contract's ``...Z`` form, in C.
PY311: Final = sys.version_info >= (3, 11)


def parse_timestamp(s: str) -> datetime:
    """Parse a wire timestamp to an aware UTC ``datetime`` (no offset means UTC)."""
    if not PY311 and s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    try:
        dt = from_iso(s)
    except ValueError:
        digits = ascii_digits(s)  # off the hot path: the service writes ASCII
        return parse_timestamp(digits) if digits != s else parse_timestamp_slow(s)
    tz = dt.tzinfo
    if tz is UTC:
        return dt
    if tz is None:
        return dt.replace(tzinfo=UTC)
    check_offset(s)
    return dt.astimezone(UTC)


#: The minutes and seconds of the offset that ends a timestamp (``+05:30``, ``-0800``).
_OFFSET_WRITTEN: Final = re.compile(r"[+-]\d{2}(?::?(\d{2})(?::?(\d{2})(?:[.,]\d+)?)?)?\s*\Z")


def timestamp_as_written(s: str) -> datetime:
    """A timestamp to write as it is written: aware when it names an offset (or ``Z``), else
    naive, its wall time for the writer to place in a zone; ValueError when unreadable."""
    s = ascii_digits(s)
    try:
        moment = from_iso(s[:-1] + "+00:00" if s[-1:] in ("Z", "z") else s)
    except ValueError:
        moment = parse_timestamp_slow(s)  # raises ValueError when it is no timestamp
        match = _TS_RE.fullmatch(s.strip())
        assert match is not None  # parse_timestamp_slow read it
        if not match.group(8):
            return moment.replace(tzinfo=None)
    if moment.tzinfo is not None:
        check_offset(s)
    return moment


def check_offset(s: str) -> None:
    """ValueError when the offset that ends ``s`` has 60 minutes or seconds or more.

    ``fromisoformat`` (and the fallback reader) take ``"+05:99"`` as +06:39, where msgspec
    refuses it: a filter went out 99 minutes off for a typo, and an answer holding it was a
    time 99 minutes off on every path that reads it the lenient way (msgspec's refusal sent
    the record there), where it is refused naming the record and the field.
    """
    offset = _OFFSET_WRITTEN.search(s)
    if offset is not None and any(int(part or 0) >= 60 for part in offset.groups()):
        raise ValueError(f"not a timestamp: {s!r} has no such offset")


def to_utc(dt: datetime) -> datetime:
    """An aware UTC ``datetime`` from any ``datetime`` (naive is taken as UTC)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def to_datetime(v: Any) -> datetime | None:
    """A wire timestamp (or null) as an aware UTC ``datetime`` (or None)."""
    if v is None:
        return None
    if type(v) is str:
        return parse_timestamp(v)
    if isinstance(v, datetime):
        return to_utc(v)
    raise TypeError(f"expected a timestamp string, got {type(v).__name__}")


# ---------------------------------------------------------------------------------------------
# Out
# ---------------------------------------------------------------------------------------------


def format_timestamp(dt: datetime) -> str:
    """An aware (or naive, taken as UTC) ``datetime`` as the wire's ``2017-06-01T12:12:12Z``."""
    tz = dt.tzinfo
    if tz is UTC:
        return dt.isoformat()[:-6] + "Z"  # drop "+00:00"
    if tz is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.isoformat() + "Z"


def number_to_wire(value: Decimal | int | float | str | None) -> Any:
    """An amount to write (``annual_revenue``) as a JSON number: a ``Decimal`` per
    :func:`decimal_to_json`, a string of a number (checked first) read as a ``Decimal``."""
    if isinstance(value, str):
        value = Decimal(value)
    return decimal_to_json(value) if isinstance(value, Decimal) else value


def timestamp_to_wire(value: datetime | str | None) -> str | None:
    """A time to write (a ``datetime`` or a timestamp the client reads) in the wire's form, to
    the second: ``2017-06-01T20:12:12.25+08:00`` goes out as ``2017-06-01T12:12:12Z``.

    The contract's form has no fraction and the service keeps seconds: a ``datetime.now()``
    went out with its microseconds, a form the contract does not promise the service reads.
    """
    if value is None:
        return None
    moment = parse_timestamp(value) if isinstance(value, str) else value
    return format_timestamp(moment.replace(microsecond=0))


def json_to_wire(value: Any) -> Any:
    """JSON data to write (``attr``): each ``datetime`` in the wire's form and each ``Decimal``
    as the JSON number it is, in dicts, lists and tuples; any other value as it is.

    Not cattrs's hooks by runtime class: they made objects of an attrs model, a dataclass or
    an Enum (its value) and sent them, where ``dm.request`` refuses them and the README says a
    body holds only what JSON carries. Left as they are, the request's check refuses them by
    name before anything is sent. A value that holds itself raises RecursionError, as cattrs did.
    """
    if isinstance(value, dict):
        return {key: json_to_wire(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_to_wire(item) for item in value]
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, Decimal):
        return decimal_to_json(value)
    return value


#: The most digits of an integer a request body carries (Python's own limit for int <-> str).
MAX_INT_DIGITS: Final = 4300


def beyond_json(d: Decimal) -> bool:
    """Whether JSON cannot carry ``d`` exactly: NaN, an infinity, or an integer of more than
    :data:`MAX_INT_DIGITS` digits (told from its exponent, before ``int()`` spends on it)."""
    return not d.is_finite() or d.adjusted() >= MAX_INT_DIGITS


def decimal_to_json(d: Decimal) -> int | float | Decimal:
    """A ``Decimal`` as the JSON number it is, every digit kept.

    The service expects JSON numbers (docs/contract.md "Customer model": ``annualRevenue``
    is a decimal): an integral value becomes an ``int``, else a ``float`` when that float
    reads back as the same decimal (``Decimal(repr(float(d))) == d``), else (more digits than
    a float holds) the ``Decimal`` itself, which the request body's encoder
    (:func:`dmhub_async._json.dumps`) writes as its digits, a JSON number. It went out as a
    JSON string, ``"12345678901234567.89"``: text in an ``attr``, not the contract's number.
    NaN, the infinities and integers of more than :data:`MAX_INT_DIGITS` digits stay
    ``Decimal``s too, which the request's check refuses by name: ``"NaN"`` was sent as a
    string, and ``int(Decimal("1E+1000000"))`` held the event loop for half a minute.
    """
    if beyond_json(d):
        return d
    if d == d.to_integral_value():
        return int(d)
    f = float(d)
    if Decimal(repr(f)) == d:
        return f
    return d
