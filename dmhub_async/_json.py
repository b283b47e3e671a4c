"""JSON on the hot path: orjson when it can, the standard library when it cannot.

Decoding is most of the cost of reading a page (benchmarks/bench_converter.py): orjson does it
in about half the time of ``json.loads``. A body it refuses falls back rather than fails (NaN
and Infinity, which the standard library reads, are refused there too: not JSON). Worse, it
reads every number into 64 bits: an integer beyond them comes back as a float, rounded
(``12345678901234567890123`` as ``1.2345678901234568e+22``), and so does a decimal with more
digits than a float holds (``12345678901234567.89`` as ``1.2345678901234568e+16``). A body that
may hold such a number is therefore decoded by ``json.loads``, which keeps every integer's
digits and hands each other number to :func:`exact_number`: a float when the float is the same
decimal, else a ``Decimal``. Finding out costs a scan of one byte in four
(:func:`_may_lose_digits`), about a tenth of orjson's own time. Writing is the mirror image:
orjson refuses integers beyond 64 bits, so those are handed to it as their digits, and so is a
``Decimal`` (a JSON number).

:func:`raw_rows` splits a page into each row's bytes as the service sent them, for a writer
that keeps them as they came (the export): with msgspec installed it never decodes a row,
about a third of the cost of decoding and re-encoding every one (benchmarks/bench_export.py).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Final, NamedTuple

import orjson

try:  # optional: the `fast` extra; without it raw_rows decodes and re-encodes each row
    import msgspec
except ImportError:  # pragma: no cover - exercised by tests that hide msgspec
    msgspec = None  # type: ignore[assignment]
else:
    if not issubclass(msgspec.DecodeError, ValueError):  # pragma: no cover - tests/test_packaging
        # Before msgspec 0.21 its errors are no ValueError, which the readers catch: an older one
        # (installed for another library, not by the extra) is left unused, not let raise them.
        msgspec = None  # type: ignore[assignment]

#: Whether msgspec is used (installed, and 0.21 or newer): the converter's page readers ask too.
HAS_MSGSPEC: Final = msgspec is not None

__all__ = ["HAS_MSGSPEC", "RawRows", "dumps", "dumps_line", "exact_number", "loads", "raw_rows"]

#: Every fourth byte: a run of 16 or more digits (and points) leaves four in a row in the
#: sample, and a timestamp (``2017-06-01T12:12:12.123``: a separator every 3 bytes, and 3 to 6
#: digits after the point) never does.
_STRIDE: Final = 4
_RUN: Final = b"0000"
#: Digits and the decimal point to b"0", every other byte to b" ".
_DIGITS_TO_ZERO: Final = bytes(0x30 if 0x30 <= b <= 0x39 or b == 0x2E else 0x20 for b in range(256))
#: A number literal orjson rounds: an integer below -2**63 (19 digits and a sign) or of 20
#: digits and more (2**64 - 1 has 20 digits too: :func:`_within_64_bits` tells those apart by
#: their value first); a decimal of 16 digits or more, counting from its first digit (a float
#: holds 15; some of 16 and 17 read back the same, and exact_number keeps those floats), with a
#: point or an exponent; a negative exponent of 16 digits or more (``1e-5318196142216656``,
#: which orjson reads as 0.0; a positive one past a float's range it refuses).
_LOSSY: Final = re.compile(rb"-(?:\d{19}|(?<=[eE]-)\d{16})|\d{20}|(?=[\d.]{17})\d*\.\d|\d{16}[eE]")

#: Digits and points in a row that every literal ``_LOSSY`` matches holds.
_LONG_RUN: Final = _RUN * 4
#: Digits and points to b"0"; what a number's digits follow in JSON (whitespace, ``:``, ``,``
#: and ``[`` before a number; ``-``, ``+``, ``e`` and ``E`` within one) to b" "; every other
#: byte (a quote, an escaped one, another letter, UTF-8) to b'"': digits after it are text.
_NUMBER_MARKS: Final = bytes(
    0x30 if 0x30 <= b <= 0x39 or b == 0x2E else 0x20 if b in b" \t\n\r:,[-+eE" else 0x22
    for b in range(256)
)
#: A run ``_LONG_RUN`` long that may be a number's: the body's first bytes, or after a b" ".
_NUMBER_RUN: Final = b" " + _LONG_RUN
#: Digits to b"0"; what an integer follows (whitespace, ``:``, ``,``, ``[``) to b" ", its sign
#: to b"-"; a point, ``e``, ``E`` and ``+`` (a decimal's, an exponent's) to b"."; every other
#: byte to b'"'. A run ``_NUMBER_RUN`` finds is an integer of 16 digits or more when it shows
#: here as ``_INTEGER_RUN`` or ``_NEGATIVE_RUN``, each of its bytes at the same place.
_INTEGER_MARKS: Final = bytes(
    0x30
    if 0x30 <= b <= 0x39
    else 0x20
    if b in b" \t\n\r:,["
    else 0x2D
    if b == 0x2D
    else 0x2E
    if b in b".eE+"
    else 0x22
    for b in range(256)
)
_INTEGER_RUN: Final = b" " + _LONG_RUN
_NEGATIVE_RUN: Final = b"-" + _LONG_RUN
#: Such an integer orjson may not read exactly: 20 digits and more (2**64 is 20 digits), 19 and
#: more after a sign (-2**63 is 19), each told by its value (:func:`_within_64_bits`); and 16
#: digits and more followed by a point or an exponent: a decimal.
_PAST_64_BITS: Final = b" " + _RUN * 5
_PAST_64_BITS_NEGATIVE: Final = _NEGATIVE_RUN + b"000"
_DECIMAL_RUN: Final = _LONG_RUN + b"."
#: The digits of the largest integer orjson reads exactly, and of the least after its sign.
_LARGEST: Final = b"%d" % (2**64 - 1)
_LEAST: Final = b"%d" % 2**63
#: 16 digits and more after an exponent's sign (its ``e`` is marked as a point): no integer.
_EXPONENT_RUN: Final = b"." + _NEGATIVE_RUN

#: An integer of 16 to 20 digits, or of 16 to 19 after a sign, that is a whole literal: after
#: what a number follows, before what ends one (no point, exponent or further digit).
_LONE_INTEGER: Final = re.compile(rb"[ \t\n\r:,\[](-?\d{16,20})[ \t\n\r,\]}]")
#: The most such a literal of 20 bytes may be, its bytes of one length ordered as its values.
_MOST_OF_20: Final = {0x2D: b"-%d" % 2**63}

#: The shortest body ``_LOSSY`` can match in (17 digits and a point or an exponent).
_SHORTEST_LOSSY: Final = 17

#: Past one run of ``0000`` in the sample per this many bytes of body, a regex search at each
#: (a turn of a Python loop, about 4 us) costs more than one pass over the whole body (about
#: 50 ns a byte): a body thick with digits (8-digit ids) had 230,000 runs a MB, and a 64 MiB
#: one held the event loop for 41 s, where orjson reads it in 0.34 s.
_DENSE: Final = 1024


def _may_lose_digits(body: bytes) -> bool:
    """Whether ``body`` has a number literal that orjson would read as a rounded float.

    Never a false negative for a literal of many digits: any 16 consecutive bytes hold four
    multiples of four, so every such literal (16 digits and more, or 17 digits and points)
    shows as ``0000`` in the sample; each such place is then checked exactly. Not looked for:
    a short literal whose exponent is below a float's range (``1e-400``; one of 16 digits and
    more is a run like any other), which orjson reads as ``0.0`` (or a subnormal float):
    finding ``e-`` in a 100 KB page costs about 160 us, nearly orjson's whole read (185 us),
    for a number no customer field holds. Digits inside
    a string after a quote or a letter (an ID-card or a bank card number) are told apart: in a
    body orjson reads, a number's digits follow whitespace, ``:``, ``,``, ``[`` or its own sign,
    point or exponent. Those after a space may give a false positive, which costs only speed.
    Where such places are many, the whole body is checked in one pass instead: the cost stays
    linear, a few times orjson's at most.
    """
    sample = body[::_STRIDE].translate(_DIGITS_TO_ZERO)
    searches = len(body) // _DENSE  # worth making one place at a time; then one pass
    at = sample.find(_RUN)
    if at != -1 and sample.count(_RUN, at) > searches:  # each is a place: one pass at once
        searches = 0
    while at != -1:
        if not searches:
            # Every literal _LOSSY matches has 16 digits and points in a row: most such bodies
            # have none (ids, keys of digits) or only within strings (ID-card numbers), found
            # at C speed; the others, one regex pass.
            return _lossy_in(body)
        end = sample.find(b" ", at + 4)  # where the run of the sample ends: no digit there
        if at > 0 and end != -1 and end - at <= 5 and sample[at - 1] == 0x20:
            # A run of 4 or 5 sampled bytes (a snowflake id, a 20-digit one, on every row) is
            # all the digits and points between body bytes (at - 1) * 4 and end * 4, no digit
            # or point either: in those bytes (and the one before, a sign's), one lone integer
            # of 16 digits and more leaves no room for another run of 16. Told by its own
            # digits at C speed (an integer orjson reads: of 19 digits or fewer, or of 20 no
            # more than 2**64 - 1, or 19 after a sign no less than -2**63), about a tenth of a
            # look at the 92 bytes around it.
            lone = _LONE_INTEGER.search(body, (at - 1) * _STRIDE - 1, end * _STRIDE + 1)
            if lone is not None:
                digits = lone[1]
                if len(digits) < 20 or (
                    len(digits) == 20 and digits <= _MOST_OF_20.get(digits[0], _LARGEST)
                ):
                    at = sample.find(_RUN, end)
                    continue
        searches -= 1
        start = at * _STRIDE
        # The run holds bytes start to start + 12; any literal it is part of shows within 40
        # bytes either side (a longer one is looked at again from its next sampled byte). A
        # literal _LOSSY matches has 16 digits and points in a row: a place without (a mobile
        # with its country code, 13 digits; a time in milliseconds) is passed by at C speed,
        # where a regex search cost a page of one such number a row 0.7 times orjson's read.
        # A run after a quote or a letter (an ID-card or a bank card number in a string, on
        # every row of some pages) is text in any body orjson reads: passed by too.
        if _lossy_in(body[max(0, start - 40) : start + 52]):
            return True
        at = sample.find(_RUN, at + 1)
    return False


def _lossy_in(text: bytes) -> bool:
    """Whether ``text`` (a body, or the bytes around a place of one) holds a literal ``_LOSSY``
    matches where a number's digits may be.

    Each run of 16 digits and points that may be a number's is told apart at C speed when it is
    an integer orjson reads exactly (``"extId": 1580000000000000123``, a snowflake id on every
    row): when every one shows as an integer of 16 digits or more, of at most 19 (18 after a
    sign) or within 64 bits by its value (:func:`_within_64_bits`), followed by no point or
    exponent, and none is a negative exponent's digits (``1e-5318196142216656``, which orjson
    reads as 0.0), no regex search is made; else one decides. A run at the start of ``text``
    (maybe cut from its literal) goes to the regex; one whose end is cut off, counted an integer
    here, is whole around its next place (or is the body's end: a body cut within a number is
    no JSON).
    """
    marked = text.translate(_NUMBER_MARKS)
    runs = marked.count(_NUMBER_RUN)
    if marked.startswith(_LONG_RUN):
        runs = -1  # no integer counted below: the regex decides
    elif not runs:
        return False
    integers = text.translate(_INTEGER_MARKS)
    negatives = integers.count(_NEGATIVE_RUN)  # an exponent's run after its sign too
    if (
        integers.count(_INTEGER_RUN) + negatives == runs
        and _DECIMAL_RUN not in integers
        and (not negatives or _EXPONENT_RUN not in integers)
        and _within_64_bits(text, integers)
    ):
        return False
    return _LOSSY.search(text) is not None


def _within_64_bits(text: bytes, integers: bytes) -> bool:
    """Whether each integer of 20 digits (19 after a sign) ``integers`` marks in ``text`` is one
    orjson reads exactly, from -2**63 to 2**64 - 1 (an id on every row): none longer, none
    beyond by its value (an exponent's digits, no integer, are told apart before).

    A comparison of its digits at each (about 2k instructions with the loop's turn); more than
    a few and one per 128 bytes (a body of little but such ids), the regex decides as it did
    before: there the turns of this loop would cost about what json.loads's read costs. A run
    whose end is cut off is whole around its next place, as in :func:`_lossy_in`.
    """
    for run, longer, most in (
        (_PAST_64_BITS, _PAST_64_BITS + b"0", _LARGEST),
        (_PAST_64_BITS_NEGATIVE, _PAST_64_BITS_NEGATIVE + b"0", _LEAST),
    ):
        at = integers.find(run)
        if at == -1:
            continue
        if integers.count(run, at) > 4 + len(text) // 128 or integers.find(longer, at) != -1:
            return False
        size = len(run)
        at = 1  # each run's first digit
        for before in integers.split(run)[:-1]:
            at += len(before)
            if text[at : at + size - 1] > most:  # digits of one length: ordered as their values
                return False
            at += size
    return True


def exact_number(text: str) -> float | Decimal:
    """A JSON number other than an integer (its text): a float when the float is that very
    decimal (``0.1``, ``1e16``), else a ``Decimal`` of every digit (``12345678901234567.89``,
    and ``1e400``, which no float holds).

    ValueError for a number whose exponent is beyond even a ``Decimal``'s
    (``1e99999999999999999999``): ``Decimal`` raises ``InvalidOperation``, no ValueError, and
    the readers, which take a ValueError for a body that is not JSON, let it out raw.
    """
    value = float(text)
    try:
        exact = Decimal(text)
    except InvalidOperation:
        shown = text if len(text) <= 40 else f"{text[:40]}..."
        raise ValueError(f"the number {shown} is beyond what a Decimal holds") from None
    return value if Decimal(repr(value)) == exact else exact


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def loads(body: bytes | str) -> Any:
    """Decode a JSON body, every number exactly (but one whose exponent is below a float's
    range, ``1e-400``: see :func:`_may_lose_digits`); ValueError when it is not JSON.

    Integers are ints of any size; any other number is a float, or a ``Decimal`` where a float
    would lose a digit (:func:`exact_number`). ``NaN`` and ``Infinity``, which the standard
    library writes but JSON has not, are refused as orjson and msgspec refuse them: read, they
    were the JSONL export's ``null`` without msgspec (the page refused with it), the CSV's
    ``nan``, and ``Decimal("NaN")`` in a model, which no write sends back.
    """
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if len(raw) < _SHORTEST_LOSSY or not _may_lose_digits(raw):  # "[]": no call
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    # raises ValueError (UnicodeDecodeError too) when not JSON
    return json.loads(body, parse_float=exact_number, parse_constant=_not_json)


def _decimal_text(value: Any) -> Any:
    """orjson's ``default``: a finite ``Decimal`` as its digits, a JSON number.

    Its digits by ``Decimal.__str__``, not ``str()``: a subclass's own (a money type's
    ``"%.2f"``, a currency sign) went out as another number, or as no JSON at all.
    """
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(Decimal.__str__(value).encode())
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _plain(obj: Any) -> Any:
    """``obj`` as orjson writes it the standard library's way: every integer beyond 64 bits
    as its digits, a float or a str of a subclass (numpy's ``float64``, a ``StrEnum`` key) as
    the float or text it is, a tuple of a subclass (a named tuple) as a list."""
    if isinstance(obj, dict):
        return {str.__str__(k) if isinstance(k, str) else k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        # Its digits as json.dumps writes them, whatever its class's str() says (a typed id's
        # "Account#1180..." went out as the body, no JSON); ValueError past 4,300 digits.
        return orjson.Fragment(int.__repr__(obj).encode())
    if isinstance(obj, float) and type(obj) is not float:
        return float(obj)
    return obj


def dumps(obj: Any, *, option: int = 0) -> bytes:
    """``obj`` as compact UTF-8 JSON, non-ASCII as is, integers of any size and ``Decimal``s
    exactly (as JSON numbers); TypeError for what JSON cannot hold (a NaN ``Decimal``)."""
    try:
        return orjson.dumps(obj, default=_decimal_text, option=option)
    except TypeError:  # an integer beyond 64 bits, a key that is not a string, a subclass
        # Keys as the standard library writes them (1 as "1", True as "true").
        option |= orjson.OPT_NON_STR_KEYS
        return orjson.dumps(_plain(obj), default=_decimal_text, option=option)


def dumps_line(obj: Any) -> bytes:
    """``obj`` as one UTF-8 JSON line, non-ASCII as is, ending in a newline."""
    return dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


class RawRows(NamedTuple):
    """A page split for a writer: each row's JSON bytes, its ``id``, and the page's other keys."""

    rows: list[bytes]
    """Each row as one line of JSON without the newline: the bytes the service sent."""
    ids: list[Any]
    """Each row's ``id`` (None when it has none), decoded exactly."""
    page: dict[str, Any]
    """The other keys of the page (``records``, ``total``, ``error_code``...), decoded."""


if msgspec is not None:

    class _Id(msgspec.Struct, gc=False):  # untracked: never in a cycle, so no collections
        id: Any = None

    _page_decoder: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
    _rows_decoder: Final = msgspec.json.Decoder(list[msgspec.Raw])
    _ids_decoder: Final = msgspec.json.Decoder(list[_Id])
    _value_decoder: Final = msgspec.json.Decoder(float_hook=exact_number)


def raw_rows(body: bytes, key: str = "rows", page_keys: tuple[str, ...] | None = None) -> RawRows:
    """The rows of a page (the list under ``key``) as their own bytes; ValueError if not JSON.

    With msgspec, no row is decoded but for its id, so a row is written exactly as it came
    (integers of any size, number forms, key order). A row the service spread over several
    lines is written again on one, so each stays one line of JSON Lines. A missing or null
    ``key`` gives no rows; a page that is not an object, rows that are not a list or not
    objects, and bytes that are not UTF-8 (``"\\xff"``, a surrogate's CESU-8) raise
    ValueError. ``page_keys``: the other keys wanted, if not all (with msgspec, the page is
    then read in two passes rather than four, about twice as fast).
    """
    if msgspec is None:
        return _raw_rows_decoding(body, key)
    try:  # nothing added to a page read: 3.11's try is a NOP (a raise alone costs)
        if not body.isascii():  # ASCII is UTF-8: about 80k instructions a page of 100 to know
            # msgspec checks the text it decodes and skips the rest unread, so a row it hands
            # out as it came may hold bytes that are no UTF-8, which every other reader refuses
            # (JSON is UTF-8) and the JSONL export wrote. No check in the standard library costs
            # less than this decode (about 480k instructions a Chinese page of 100, 12% of the
            # export's per page; translate and split, 1.6M). Each row is a slice of the page:
            # one check.
            body.decode("utf-8")  # raises UnicodeDecodeError, a ValueError
        if page_keys is not None:
            rows_of, ids_of = _page_decoders(key, page_keys)
            page = rows_of.decode(body)  # raises msgspec.DecodeError, a ValueError
            rows = [bytes(row) for row in getattr(page, key) or ()]
            ids = [row.id for row in getattr(ids_of.decode(body), key) or ()]  # rows are objects
            others = {k: v for k in page_keys if (v := getattr(page, k)) is not msgspec.UNSET}
        else:
            found = _page_decoder.decode(body)
            raw = found.pop(key, None)
            rows, ids = [], []
            if raw is not None and bytes(raw) != b"null":
                rows = [bytes(row) for row in _rows_decoder.decode(raw)]
                ids = [row.id for row in _ids_decoder.decode(raw)]  # raises if a row is no object
            others = {k: _value_decoder.decode(v) for k, v in found.items()}
    except ValueError:
        # A UTF-8 byte order mark before the page, which msgspec refuses: json.loads reads past
        # it, and so list(), list_rows() and the CSV export did, while the JSONL export stopped.
        if body.startswith(_BOM) and not body.startswith(_BOM, len(_BOM)):  # one, as json's
            return raw_rows(body[len(_BOM) :], key, page_keys)
        raise
    if b"\n" in body or b"\r" in body:  # within a JSON string they are escaped: a row's only
        rows = [_row_line(loads(row)) if b"\n" in row or b"\r" in row else row for row in rows]
    return RawRows(rows, ids, others)


def _row_line(row: dict[str, Any]) -> bytes:
    """A decoded row as one line of JSON, without the newline.

    orjson writes at most 255 levels of nesting, which it reads (up to 1024): a deeper row,
    read, is written by the standard library (its floats as ``repr`` writes them, ``1e+16``
    for ``1e16``), which goes as deep as Python's recursion limit. A ``Decimal`` in such a row,
    or what neither can write, raises orjson's TypeError (a lone surrogate) or RecursionError.
    """
    try:
        return dumps_line(row)[:-1]
    except (TypeError, RecursionError) as err:
        try:
            return json.dumps(
                row, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
        except (TypeError, ValueError, RecursionError):
            raise err from None


#: The UTF-8 byte order mark, which a server may put before its answer.
_BOM: Final = b"\xef\xbb\xbf"

_page_structs: dict[tuple[str, tuple[str, ...]], tuple[Any, Any]] = {}


def _page_decoders(key: str, page_keys: tuple[str, ...]) -> tuple[Any, Any]:
    """msgspec decoders of a page: its rows as Raw with the ``page_keys``, and the rows' ids."""
    found = _page_structs.get((key, page_keys))
    if found is None:
        rows = msgspec.defstruct(
            "RawPage",
            [(key, list[msgspec.Raw] | None, None), *((k, Any, msgspec.UNSET) for k in page_keys)],
            kw_only=True,
            gc=False,
        )
        ids = msgspec.defstruct("IdsPage", [(key, list[_Id] | None, None)], kw_only=True, gc=False)
        found = _page_structs[key, page_keys] = (
            msgspec.json.Decoder(rows),
            msgspec.json.Decoder(ids),
        )
    return found


def _raw_rows_decoding(body: bytes, key: str) -> RawRows:
    """:func:`raw_rows` without msgspec: decode the page, encode each row again."""
    page = loads(body)
    if not isinstance(page, dict):
        raise ValueError("the page is not a JSON object")
    data = page.pop(key, None)
    data = [] if data is None else data
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{key!r} is not a list of objects")
    try:  # a NOP on 3.11: each row costs what it did
        lines = [dumps_line(row)[:-1] for row in data]
    except (TypeError, RecursionError):  # a row orjson cannot write: one at a time
        lines = list(map(_row_line, data))
    return RawRows(lines, [row.get("id") for row in data], page)
