"""JSON in and out: orjson's speed, the standard library's exactness (integers of any size)."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dmhub_async import Customer, DMHubClient, _json
from dmhub_async._converter import (
    make_converter,
    read_customer_page,
    read_statistics_page,
    structure_customers,
    structure_statistics_list,
    wire_struct,
)
from dmhub_async.export import export_customers
from dmhub_async.resources._rows import read_rows
from dmhub_async.testing import DMHubSimulator

BIG = [
    2**64,  # one past orjson's largest
    12345678901234567890123,  # the example
    -(2**63) - 1,  # one below orjson's smallest
    10**40,
    -(10**25),
]


@pytest.mark.parametrize("value", BIG)
def test_an_integer_beyond_64_bits_is_read_exactly(value: int) -> None:
    body = json.dumps({"rows": [{"id": 1, "attr": {"big": value}, "score": [value]}]}).encode()
    data = _json.loads(body)
    assert data["rows"][0]["attr"]["big"] == value
    assert type(data["rows"][0]["attr"]["big"]) is int
    assert data["rows"][0]["score"] == [value]
    assert _json.loads(str(value).encode()) == value
    assert _json.loads(str(value)) == value


@pytest.mark.parametrize("value", [2**63 - 1, 2**64 - 1, -(2**63), 9_007_199_254_740_993])
def test_64_bit_integers_stay_exact_too(value: int) -> None:
    assert _json.loads(json.dumps([value]).encode()) == [value]


def test_a_long_digit_string_is_text_not_a_number() -> None:
    body = b'{"mobile": "123456789012345678901234", "id": 7}'
    assert _json.loads(body) == {"mobile": "123456789012345678901234", "id": 7}


@pytest.mark.parametrize("value", BIG)
def test_an_integer_beyond_64_bits_is_written_exactly(value: int) -> None:
    assert json.loads(_json.dumps({"n": value})) == {"n": value}
    assert json.loads(_json.dumps_line({"n": value})) == {"n": value}
    assert _json.dumps_line({"n": value}).endswith(b"\n")


def test_dumps_is_compact_utf8() -> None:
    assert _json.dumps({"name": "小D", "n": [1, None]}) == '{"name":"小D","n":[1,null]}'.encode()
    assert _json.dumps({"n": 2**70}) == b'{"n":1180591620717411303424}'


def test_dumps_writes_subclasses_as_the_standard_library_does() -> None:
    # Request bodies are written by dumps (a Decimal as its digits); what json.dumps took must
    # still go: orjson alone refuses a float subclass (numpy's float64), a str-subclass key and
    # a named tuple.
    class Score(float):
        pass

    class Key(str):
        pass

    class Pair(NamedTuple):
        a: int
        b: str

    data = {"s": Score(1.5), Key("k"): Pair(1, "x"), "d": Decimal("12345678901234567.89")}
    assert _json.dumps(data) == b'{"s":1.5,"k":[1,"x"],"d":12345678901234567.89}'


def test_not_json_is_a_value_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        _json.loads(b"{")
    with pytest.raises(UnicodeDecodeError):
        _json.loads(b"\xff")


class _CountingSearches:
    """``_json._LOSSY`` that counts its searches: each is a turn of a Python loop."""

    def __init__(self) -> None:
        self.searches = 0

    def search(self, body: bytes, *span: int) -> Any:
        self.searches += 1
        return _DIGIT_RUNS.search(body, *span)


_DIGIT_RUNS = _json._LOSSY
MB = 1024 * 1024
#: Bodies thick with runs of digits (or points) that are no number a float would round: the
#: scan for one must not cost a regex search for each (a 64 MiB answer of 8-digit ids held
#: the event loop for 41 s, where orjson reads it in 0.34 s).
DIGIT_THICK = {
    "8-digit ids": b'{"ids":[' + b",".join(b"%d" % (10**7 + i) for i in range(2 * MB // 9)) + b"]}",
    "keys of digits": b"{"
    + b",".join(b'"k%d":1' % (10**6 + i) for i in range(2 * MB // 13))
    + b"}",
    "16-digit strings": b"["
    + b",".join(b'"%d"' % (10**15 + i) for i in range(2 * MB // 19))
    + b"]",
    "points": b'{"x":"' + b"." * (2 * MB) + b'"}',
}


@pytest.mark.parametrize("body", list(DIGIT_THICK.values()), ids=list(DIGIT_THICK))
def test_a_body_thick_with_digits_is_scanned_in_one_pass(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = _CountingSearches()
    monkeypatch.setattr(_json, "_LOSSY", counting)

    assert _json.loads(body) == json.loads(body)
    # A search a KB at most, then one pass: before, 230,000 to 520,000, one per run of digits.
    assert counting.searches <= len(body) // 1024 + 1
    # and a number a float would round is still found there, the page read exactly
    lossy = body[:-1] + (b',"n":' if body.startswith(b"{") else b",") + b"12345678901234567.89"
    lossy += body[-1:]
    read = _json.loads(lossy)
    assert (read["n"] if isinstance(read, dict) else read[-1]) == Decimal("12345678901234567.89")


def _page_of(value: bytes) -> bytes:
    """A page of 100 customers, each with ``value % i`` in its mobile and its attr."""
    rows = (
        b'{"id":%d,"name":"\xe8\xb5\xb5\xe4\xb8\x80","mobile":"%s","annualRevenue":27403.24,'
        b'"dateCreated":"2016-01-01T00:00:50Z","attr":{"sent":%s}}'
        % (3000000000 + i, value % i, value % i)
        for i in range(100)
    )
    return b'{"rows":[' + b",".join(rows) + b'],"records":100,"total":1}'


def _page_whose_attr_holds(field: bytes, value: bytes) -> bytes:
    """:func:`_page_of` a 13-digit mobile, each row's attr holding ``field`` of ``value % i``
    before its own number."""
    body = _page_of(b"86139%08d")
    for i in range(100):
        sent = b'{"sent":86139%08d}' % i
        body = body.replace(sent, b"{" + field % (value % i) + b"," + sent[1:])
    return body


@pytest.mark.parametrize(
    "value",
    [b"86139%08d", b"17171717%05d", b"171717171%06d"],  # 13, 13 and 15 digits: no float rounds
    ids=["a mobile with its country code", "a time in milliseconds", "15 digits"],
)
def test_a_page_of_13_to_15_digit_numbers_costs_no_regex_search(
    value: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each shows as 0000 in the sample one time in four, and a regex search at each cost 0.7
    # times orjson's whole read of the page (callgrind). Only a run of 16 is looked at closely.
    counting = _CountingSearches()
    monkeypatch.setattr(_json, "_LOSSY", counting)
    body = _page_of(value)

    assert _json.loads(body) == json.loads(body)
    assert counting.searches == 0
    # A number a float would round among them is still found, wherever it falls.
    for pad in range(4):
        lossy = body.replace(
            b'"records"', b'"x":"' + b"x" * pad + b'","n":12345678901234567.89,"records"'
        )
        assert _json.loads(lossy)["n"] == Decimal("12345678901234567.89")
    for row in (0, 1, 2, 3, 99):  # and beside one of them, in a row's attr
        at = body.index(b'"attr":{"sent":', body.index(b'"id":%d,' % (3000000000 + row)))
        lossy = body[:at] + b'"attr":{"n":-12345678901234567.5,' + body[at + 8 :]
        assert _json.loads(lossy)["rows"][row]["attr"] == {
            "n": Decimal("-12345678901234567.5"),
            "sent": int(value % row),
        }


#: Strings of 16 to 19 digits a CRM's custom fields hold on every row: no number.
DIGIT_STRINGS = {
    "an ID-card number": b"11010119900307%04d",  # 18 characters
    "one ending in X": b"1101011990030%04dX",
    "a bank card": b"622202123456%07d",  # 19 digits
    "an order number": b"20230101%08d",  # 16 digits
}


@pytest.mark.parametrize("value", list(DIGIT_STRINGS.values()), ids=list(DIGIT_STRINGS))
def test_a_page_of_16_to_19_digit_strings_costs_no_regex_search(
    value: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each is a run of digits after a quote: no number. A regex search at each, then past one
    # a KB a regex pass over the whole page, cost 18 times orjson's read of it.
    counting = _CountingSearches()
    monkeypatch.setattr(_json, "_LOSSY", counting)
    body = _page_whose_attr_holds(b'"idCard":"%s"', value)
    assert body.count(b'"idCard":"') == 100

    assert _json.loads(body) == json.loads(body)
    assert counting.searches == 0
    # A number a float would round among them is still found, wherever it falls.
    for row in (0, 1, 2, 3, 99):
        at = body.index(b'"idCard":"', body.index(b'"id":%d,' % (3000000000 + row)))
        for number in (b"12345678901234567890", b"-1234567890123456789", b"1234567890123456e5"):
            lossy = body[:at] + b'"n":[%s],' % number + body[at:]
            assert _json.loads(lossy)["rows"][row]["attr"]["n"] == [json.loads(number)]
            assert _json.loads(lossy)["rows"][row]["attr"]["idCard"] == (value % row).decode()


#: Integers of 16 to 19 digits written as numbers, one on every row: ids (a snowflake id), all
#: within what orjson reads exactly (-2**63 to 2**64 - 1).
LONG_INTEGERS = {
    "a snowflake id": b"1580000000000%06d",  # 19 digits
    "the largest of 19 digits": b"99999999999999%05d",
    "16 digits": b"10000000000%05d",
    "18 digits, negative": b"-1000000000000%05d",
}


@pytest.mark.parametrize("value", list(LONG_INTEGERS.values()), ids=list(LONG_INTEGERS))
@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
def test_a_page_of_16_to_19_digit_integers_costs_no_regex_search(
    value: bytes, spaced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # orjson reads each exactly. Each place cost a regex search, then past one a KB a regex
    # pass over the whole page: 30 times orjson's read of it.
    counting = _CountingSearches()
    monkeypatch.setattr(_json, "_LOSSY", counting)
    body = _page_whose_attr_holds(b'"extId":%s', value)
    if spaced:
        body = body.replace(b'":', b'": ').replace(b",", b", ")
    assert body.count(b'"extId":') == 100

    assert _json.loads(body) == json.loads(body)
    assert counting.searches == 0
    # A number orjson would round among them is still found, wherever it falls.
    for row in (0, 1, 2, 3, 99):
        at = body.index(b'"extId":', body.index(b"%d," % (3000000000 + row)))
        for number in (
            b"18446744073709551616",  # 2**64: one past orjson's largest
            b"-9223372036854775809",  # one below its smallest
            b"12345678901234567890123",
            b"12345678901234567.89",
            b"1234567.8901234567",
            b"1234567890123456e5",
            b"1234567890123456789E-2",
        ):
            lossy = body[:at] + b'"n":[%s],' % number + body[at:]
            attr = _json.loads(lossy)["rows"][row]["attr"]
            assert _same(attr["n"], [json.loads(number, parse_float=Decimal)])
            assert attr["extId"] == int(value % row)


def test_a_page_of_snowflake_ids_in_lists_costs_no_regex_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As above, the ids in a list ("tagIds": [..., ...]): the first after "[" is an integer
    # orjson reads exactly as much as the second after ",".
    counting = _CountingSearches()
    monkeypatch.setattr(_json, "_LOSSY", counting)
    body = _page_whose_attr_holds(b'"tagIds":[%s,1580000000000000001]', b"1580000000000%06d")
    assert body.count(b'"tagIds":[') == 100

    assert _json.loads(body) == json.loads(body)
    assert counting.searches == 0
    lossy = body.replace(b'"tagIds":[1580000000000000007,', b'"tagIds":[18446744073709551616,')
    assert _json.loads(lossy)["rows"][7]["attr"]["tagIds"] == [2**64, 1580000000000000001]


#: Integers of 20 digits up to 2**64 - 1, and of 19 after a sign down to -2**63: orjson reads
#: each exactly, though only its value tells it from one a digit longer.
VERY_LONG_INTEGERS = {
    "20 digits": b"1000000000000%07d",
    "up to 2**64 - 1": b"184467440737095515%02d",
    "19 digits, negative": b"-1000000000000%06d",
    "down to -2**63": b"-92233720368547757%02d",
}


@pytest.mark.parametrize("value", list(VERY_LONG_INTEGERS.values()), ids=list(VERY_LONG_INTEGERS))
@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
def test_a_page_of_integers_up_to_64_bits_costs_no_regex_search(
    value: bytes, spaced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each place cost a regex search, then past one a KB a regex pass over the page, which
    # found the first such id and had json.loads read the page: 7 times orjson's read of it.
    counting = _CountingSearches()
    monkeypatch.setattr(_json, "_LOSSY", counting)
    body = _page_whose_attr_holds(b'"extId":%s', value)
    body = body.replace(
        b'"records"', b'"ends":[18446744073709551615,-9223372036854775808],"records"'
    )
    if spaced:
        body = body.replace(b'":', b'": ').replace(b",", b", ")
    assert body.count(b'"extId":') == 100

    read = _json.loads(body)
    assert read == json.loads(body)
    assert [row["attr"]["extId"] for row in read["rows"]] == [int(value % i) for i in range(100)]
    assert read["ends"] == [2**64 - 1, -(2**63)]
    assert counting.searches == 0
    # One past either end, or a digit longer, is still read exactly, wherever it falls.
    for row in (0, 1, 2, 3, 99):
        at = body.index(b'"extId":', body.index(b"%d," % (3000000000 + row)))
        for number in (
            b"18446744073709551616",  # 2**64
            b"99999999999999999999",
            b"-9223372036854775809",  # -2**63 - 1
            b"-9999999999999999999",
            b"184467440737095516150",  # (2**64 - 1) * 10
            b"-10000000000000000000",
            b"1.5e-1000000000000000000",  # an exponent of 19 digits is no integer
        ):
            lossy = body[:at] + b'"n":[%s],' % number + body[at:]
            attr = _json.loads(lossy)["rows"][row]["attr"]
            assert _same(attr["n"], [json.loads(number, parse_float=Decimal)])
            assert attr["extId"] == int(value % row)


def _page_of_20_digit_ids(row_size: int, rows: int = 200) -> tuple[bytes, list[int]]:
    """A page of ``rows`` rows of ``row_size`` bytes (and a comma), each a 20-digit id up to
    2**64 - 1 and a name filling the rest, and those ids."""
    ids = [2**64 - 1 - 7919 * i for i in range(rows)]
    made = []
    for i in ids:
        row = b'{"id":%d,"name":"' % i
        made.append(row + b"n" * (row_size - len(row) - 2) + b'"}')
    assert all(len(row) == row_size for row in made)
    return b'{"rows":[' + b",".join(made) + b"]}", ids


@pytest.mark.parametrize(
    ("row_size", "searches"),
    [(124, 1), (135, 0)],  # a 20-digit id every 125 bytes, then every 136 (the budget: 128)
    ids=["denser than one a 128 bytes", "sparser"],
)
def test_20_digit_ids_are_told_by_their_digits_up_to_one_per_128_bytes(
    row_size: int, searches: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each such id is compared with 2**64 - 1 by its digits, a turn of a Python loop: denser
    # than one per 128 bytes, those turns would cost what json.loads's read of the page costs,
    # and one regex search decides instead. Either side, every id is read exactly, and one past
    # 2**64 - 1 among them, anywhere, still sends the page to the exact read.
    counting = _CountingSearches()
    monkeypatch.setattr(_json, "_LOSSY", counting)
    body, ids = _page_of_20_digit_ids(row_size)

    read = _json.loads(body)
    assert [row["id"] for row in read["rows"]] == ids
    assert counting.searches == searches
    for at in (0, 100, 199):
        past = body.replace(b"%d" % ids[at], b"%d" % (2**64 + 7918), 1)  # 20 digits too
        assert len(past) == len(body)
        assert [row["id"] for row in _json.loads(past)["rows"]] == [
            *ids[:at],
            2**64 + 7918,
            *ids[at + 1 :],
        ]


class _CountingWindows:
    """``_json._lossy_in`` that counts the bytes it looks at: each look is a turn of a Python
    loop of about 25k instructions, a look at the whole body about 27 a byte."""

    def __init__(self) -> None:
        self.looks = 0
        self.looked_at = 0

    def __call__(self, text: bytes) -> bool:
        self.looks += 1
        self.looked_at += len(text)
        return _LOOK(text)


_LOOK = _json._lossy_in


@pytest.mark.parametrize(
    ("row_size", "least", "sign"),
    [(1024, 2**64 - 7919 * 1000, b""), (2048, 10**19, b""), (1024, 2**63 - 7919 * 1000, b"-")],
    ids=["20 digits, rows of 1 KB", "20 digits, rows of 2 KB", "19 digits after a sign"],
)
def test_each_20_digit_id_is_told_by_its_own_digits_not_a_look_at_its_bytes_around(
    row_size: int, least: int, sign: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each such id cost two looks at its 92 bytes around (two places of one run), and past one
    # a KB a look at the whole body: a page of 1,000 rows of 1 KB cost 3.4 times its read before
    # 20-digit ids were told by their value, when it went to json.loads at once.
    looks = _CountingWindows()
    monkeypatch.setattr(_json, "_lossy_in", looks)
    ids = [int(sign + b"%d" % (least + 7919 * i)) for i in range(1000)]
    made = []
    for i in ids:
        row = b'{"id":%d,"name":"' % i
        made.append(row + b"n" * (row_size - len(row) - 2) + b'"}')
    body = b'{"rows":[' + b",".join(made) + b"]}"

    assert [row["id"] for row in _json.loads(body)["rows"]] == ids
    assert looks.looked_at == 0
    for at in (0, 500, 999):  # one past either end, anywhere, still sends it to the exact read
        past = -(2**63) - 1 - at if sign else 2**64 + at
        changed = body.replace(b"%d" % ids[at], b"%d" % past, 1)
        assert [row["id"] for row in _json.loads(changed)["rows"]] == [
            *ids[:at],
            past,
            *ids[at + 1 :],
        ]


@pytest.mark.parametrize("tail", [b".5", b"e0", b"E+0"], ids=["point", "exponent", "E+"])
def test_a_number_of_17_digits_and_a_fraction_or_exponent_on_every_row_is_read_exactly(
    tail: bytes,
) -> None:
    # The lone integers told by their own digits (0eaa037) end before what ends a number: a
    # number of 17 digits going on with a point or an exponent, on every row of 1 KB, is no
    # integer, and is read with every digit, not through a float (12345678901234568).
    numbers = [b"%d" % (12345678901234567 + 7919 * i) + tail for i in range(200)]
    made = []
    for number in numbers:
        row = b'{"amount":%s,"name":"' % number
        made.append(row + b"n" * (1024 - len(row) - 2) + b'"}')
    body = b'{"rows":[' + b",".join(made) + b"]}"
    assert [row["amount"] for row in _json.loads(body)["rows"]] == [
        Decimal(number.decode()) for number in numbers
    ]


# --- decimals a float cannot hold: read and written with every digit ------------------------

LOSSY = [
    "12345678901234567.89",  # the CSV export's example: 1.2345678901234568e+16 through a float
    "0.10000000000000001",  # a float reads it as 0.1
    "9007199254740993.0",  # 2**53 + 1: a float has no such value
    "1234567890123456789e-2",  # the digits before an exponent
    "-1.2345678901234567e-5",
    "1e400",  # beyond a float's range: orjson refused it, json.loads gave inf
]


def _exact(value: object) -> Decimal:
    """What a value read from JSON is, as a Decimal: a float through its shortest repr."""
    assert type(value) in (int, float, Decimal)
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", LOSSY)
@pytest.mark.parametrize("pad", range(4))  # the sample takes one byte in four: every alignment
def test_a_decimal_a_float_would_round_is_read_exactly(text: str, pad: int) -> None:
    body = ('{"p":"' + "x" * pad + '","rows":[{"id":1,"attr":{"n":' + text + "}}]}").encode()
    data = _json.loads(body)
    assert data["rows"][0]["attr"]["n"] == Decimal(text)
    assert type(data["rows"][0]["attr"]["n"]) is Decimal
    assert _json.loads(text) == Decimal(text)


@pytest.mark.parametrize(
    "text", ["1E-5318196142216656", "1e-53181961422166566", "-2.5e-531819614221665660"]
)
@pytest.mark.parametrize("pad", range(4))
@pytest.mark.parametrize(
    "row_size", [0, 80, 300], ids=["page under 1 KB", "page of 1 KB", "page of 3 KB"]
)
@pytest.mark.parametrize("first", [2**64 - 1, -(2**63)], ids=["20-digit ids", "negative ids"])
def test_a_number_whose_exponent_has_16_digits_or_more_is_read_exactly(
    text: str, pad: int, row_size: int, first: int
) -> None:
    # A literal of 16 digits in a row is one the reader never misses, whatever else the page
    # holds: one of 19 digits was read exactly, one of 16 to 18 as 0.0 (orjson's underflow)
    # on a page whose 20-digit ids were told by their digits.
    ids = [first - 7919 * i if first > 0 else first + 7919 * i for i in range(10)]
    rows = [b'{"id":%d,"name":"%s","attr":{}}' % (i, b"n" * row_size) for i in ids]
    rows[4] = rows[4].replace(b"{}", b'{"p":"%s","n":%s}' % (b"x" * pad, text.encode()))
    body = b'{"rows":[' + b",".join(rows) + b'],"records":10,"total":1,"page":1}'

    read = _json.loads(body)["rows"]
    assert [row["id"] for row in read] == ids
    assert read[4]["attr"]["n"] == Decimal(text)
    assert type(read[4]["attr"]["n"]) is Decimal
    [row] = read_rows(body)[0][4:5]  # list_rows()' pages
    assert row["attr"]["n"] == Decimal(text)
    assert type(row["attr"]["n"]) is Decimal
    assert _json.loads(text) == Decimal(text)  # a body of the number alone


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.1", 0.1),
        ("1.10", 1.1),
        ("1e16", 1e16),
        ("-0.0", -0.0),
        ("1234567.890123456", 1234567.890123456),  # 16 digits a float holds: still a float
        ("123456789012345678", 123456789012345678),  # an integer of 18 digits: an int
    ],
)
def test_a_number_a_float_holds_is_still_a_float(text: str, value: float) -> None:
    [read] = _json.loads(f"[{text}]".encode())
    assert type(read) is type(value)
    assert read == value


_DECIMALS = st.builds(
    lambda mantissa, exponent: Decimal(mantissa).scaleb(exponent),
    st.integers(-(10**30), 10**30),
    st.integers(-30, 30),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_DECIMALS, st.integers(0, 3), st.booleans())
@example(Decimal("12345678901234567.89"), 0, False)
@example(Decimal("0.1000000000000000055511151231257827"), 1, True)
def test_every_number_is_read_as_the_decimal_it_is(number: Decimal, pad: int, typed: bool) -> None:
    """Whatever its digits and its place in the body: through ``_json.loads`` (list_rows, the
    lenient way) and through the page reader (msgspec's typed decode), as every digit."""
    text = str(number)
    body = ('{"p":"' + "x" * pad + '","rows":[{"id":1,"annualRevenue":' + text + "}]}").encode()
    assert _exact(_json.loads(body)["rows"][0]["annualRevenue"]) == number
    [lenient] = structure_customers(_json.loads(body)["rows"])
    [customer], _ = read_customer_page(body)
    assert lenient.annual_revenue == customer.annual_revenue == number
    extra = body.replace(b"annualRevenue", b"levelScore")  # unknown: kept in extra
    [customer], _ = read_customer_page(extra)
    assert _exact(customer.extra["levelScore"]) == number


@pytest.mark.parametrize("text", ["1e1000000", "-1E+5000", "1e4300", "-1E+4300"])
def test_a_huge_number_for_an_integer_field_is_refused_at_once(text: str) -> None:
    # Read exactly, it is a Decimal of a million digits' exponent: int() of it would take
    # minutes; the field is refused as not an integer. 1e4300, an integer of 4,301 digits,
    # the first past Python's int <-> str limit: a raw ValueError ("Exceeds the limit (4300
    # digits) for integer string conversion") from list() and get() if taken for an int.
    body = ('{"rows":[{"id":1,"employeeNumber":' + text + "}]}").encode()
    with pytest.raises(ValueError, match=r"record 0 \(id 1\), field 'employeeNumber'"):
        read_customer_page(body)


@pytest.mark.parametrize("text", [*LOSSY, "1.50", "-0", "1E+16"])
def test_a_decimal_is_written_as_its_digits(text: str) -> None:
    assert _json.dumps({"n": Decimal(text)}) == b'{"n":' + str(Decimal(text)).encode() + b"}"
    assert _json.loads(_json.dumps_line([Decimal(text), 2**70])) == [_json.loads(text), 2**70]
    with pytest.raises(TypeError):
        _json.dumps([Decimal("NaN")])  # JSON has no NaN


# --- the property: the fast path reads every body as the standard library does --------------

_INTS = st.integers(-(2**63), 2**64 - 1) | st.integers(-(2**80), 2**80) | st.sampled_from(BIG)
_TIMESTAMPS = st.sampled_from(
    [
        "2017-06-01T12:12:12Z",
        "2017-06-01T12:12:12",
        "2017-06-01 12:12:12",
        "2017-06-01T20:12:12+08:00",
        "2017-06-01T20:12:12+0800",
        "2017-06-01T12:12:12.123456Z",
        "2017-06-01T12:12:12.5z",
        " 2017-06-01T12:12:12Z",
        "2017-06-01T12:12:12,25Z",
        "2017-06-01T12:12:12.1234567Z",
        "2017-06-01T12:12:12.9999996Z",
        "2017-06-01T12:12Z",
        "2017-06-01",
    ]
)
# JSON has no NaN or infinity (json.loads reads them, orjson writes them as null): finite floats.
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
_SCALARS = st.none() | st.booleans() | _INTS | _FLOATS | st.text(max_size=8)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_ROWS = st.fixed_dictionaries(
    {},
    optional={
        "id": st.none() | st.integers(0, 2**63 - 1),
        "name": st.none() | st.text(max_size=8) | st.integers(-5, 5),  # a number: kept as text
        "mobileVerified": st.none() | st.booleans() | st.sampled_from([0, 1, "true", "0"]),
        "employeeNumber": st.none() | _INTS,
        "annualRevenue": st.none()
        | _INTS
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.sampled_from(["1.50", "12345678901234567890.12", 1.5]),
        "qq": st.none() | _INTS.map(str),
        "dateJoin": st.none() | _TIMESTAMPS,
        "lastUpdated": st.none() | _TIMESTAMPS,
        "gender": st.none() | st.sampled_from([0, 1, 2, 3, "1"]),
        "attr": st.dictionaries(st.text(max_size=6), _VALUES, max_size=3),
        "ownerId": st.none() | _INTS | st.text(max_size=8),
        "levelScore": _VALUES,  # unknown to the model: kept in extra
    },
)

BIG_ROW = {"id": 1, "employeeNumber": 2**64, "attr": {"n": -(2**63) - 1}, "tags": [10**22]}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(_ROWS, max_size=5))
@example([BIG_ROW])
@example([{"annualRevenue": 12345678901234567890123, "ownerId": 2**64}])
def test_the_fast_path_reads_what_the_standard_library_reads(rows: list[dict[str, Any]]) -> None:
    body = json.dumps({"rows": rows, "total": len(rows)}, ensure_ascii=False).encode()
    data = _json.loads(body)
    exact = json.loads(body)
    assert data == exact
    assert repr(data) == repr(exact)  # 10**22 and 1e22 are equal floats and ints: the types too
    assert structure_customers(data["rows"]) == structure_customers(exact["rows"])
    assert repr(json.loads(_json.dumps(data))) == repr(exact)


_WHITESPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n  "])
#: Runs of digits within strings, beside what may come before and after them there.
_DIGIT_STRING_TEXTS = st.builds(
    '"{}{}{}"'.format,
    st.sampled_from(["", '\\"', "\\\\", "\\n", "x", " ", ":", ",", "[", "-", "e", "0.", "中"]),
    st.integers(10**15, 10**20).map(str),
    st.sampled_from(["", "X", '\\"', "\\\\", ".5", "e5", " "]),
)
#: Numbers a float rounds (and some it does not), and ones of every size.
_NUMBER_LITERALS = (
    st.sampled_from(
        [*LOSSY, "-1234567890123456789", "1234567890123456e5", "1.5e+12345678901234567"]
    )
    | st.integers(-(10**25), 10**25).map(str)
    | _DECIMALS.map(str)
    | _FLOATS.map(repr)
    # Integers about the ends of what orjson reads exactly (-2**63 to 2**64 - 1), of both signs,
    # those of 16 to 20 digits, -0; and decimals of 16 to 19 digits, whatever their point.
    | st.builds(
        lambda end, off, sign: str(sign * (end + off)),
        st.sampled_from([2**63, 2**64]),
        st.integers(-3, 3),
        st.sampled_from([1, -1]),
    )
    | st.integers(10**15, 10**20).map(str)
    | st.integers(-(10**20), -(10**15)).map(str)
    | st.sampled_from(["-0", "0", "-0.0"])
    | st.builds(
        lambda digits, exponent: str(Decimal(digits).scaleb(exponent)),
        st.integers(10**15, 10**19 - 1) | st.integers(-(10**19) + 1, -(10**15)),
        st.integers(-20, 2),
    )
)


def _json_text(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    items = st.lists(st.tuples(_WHITESPACE, inner, _WHITESPACE), max_size=4)
    keys = _DIGIT_STRING_TEXTS | st.just('"k"')
    return st.builds(
        lambda items: "[" + ",".join(a + v + b for a, v, b in items) + "]", items
    ) | st.builds(
        lambda keys, items: (
            "{"
            + ",".join(
                f"{k}{a}:{b}{v}" for k, (a, v, b) in zip(keys[: len(items)], items, strict=True)
            )
            + "}"
        ),
        st.lists(keys, min_size=4, max_size=4, unique=True),
        items,
    )


_DIGIT_PAGES = st.recursive(_DIGIT_STRING_TEXTS | _NUMBER_LITERALS, _json_text, max_leaves=12)


def _same(read: Any, exact: Any) -> bool:
    """Whether ``read`` is what json.loads(parse_float=Decimal) read, every number exactly."""
    if isinstance(exact, dict):
        return (
            isinstance(read, dict)
            and list(read) == list(exact)
            and all(_same(read[k], v) for k, v in exact.items())
        )
    if isinstance(exact, list):
        return isinstance(read, list) and len(read) == len(exact) and all(map(_same, read, exact))
    if isinstance(exact, Decimal):
        return type(read) in (float, Decimal) and _exact(read) == exact
    return type(read) is type(exact) and read == exact


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_DIGIT_PAGES, _WHITESPACE, st.sampled_from([0, 2000, 40000]), st.booleans())
@example('"11010119900307451X"', "", 0, False)
@example("12345678901234567.89", "", 0, False)  # at the body's first byte
@example("12345678901234567.89" + " " * 2100, "", 0, False)  # and in one of 2 KB
@example('["11010119900307451X",12345678901234567.89]', "", 2000, True)
@example('{"a\\"12345678901234567890":"\\"12345678901234567890"}', " ", 40000, False)
@example('{"k":123456789012345678901,"i":"1234567890123456789"}', "", 0, False)
@example('{"i":"1234567890123456789","k":12345678901234567.5}', "", 40000, True)
@example('["1234567890123456789",1234567890123456e5]', "\n", 2000, False)
@example("[9223372036854775807,-9223372036854775808,18446744073709551615,-0]", "", 0, False)
@example("[1580000000000000123,-9223372036854775809]", " ", 2000, True)
@example("[1580000000000000123,18446744073709551616]", "", 40000, False)
@example('{"k":1580000000000000123,"i":1234567890123456.7}', "", 0, False)
@example("1.0000000000000001", "", 0, False)  # a decimal at the body's first byte
@example("[18446744073709551615,-9223372036854775808,1e-1234567890123456789]", "", 0, False)
@example("[18446744073709551615, 18446744073709551616]", " ", 2000, False)  # told by its digits
@example('{"i":-9223372036854775808,"k":-9223372036854775809}', "", 2000, True)
@example("[99999999999999999999,12345678901234567890.5,1234567890123456e7]", "\n", 2000, True)
@example("[1e-1234567890123456789,-1234567890123456789,-12345678901234567890]", "", 2000, False)
@example('["a 18446744073709551616 b",1844674407370955161]', "", 2000, False)
def test_a_page_of_digit_strings_and_numbers_is_read_exactly(
    text: str, space: str, filler: int, filler_first: bool
) -> None:
    """Runs of digits in strings (after a quote, an escaped quote, a letter) are never taken
    for numbers, nor a number for a string: whatever the place, at the body's edges, nested, or
    in a page long enough to be looked at place by place."""
    if filler:  # a body of more than a KB is looked at a place at a time first
        pad = '"' + "p" * filler + '"'
        text = f"[{pad},{text}]" if filler_first else f"[{text},{pad}]"
    body = (space + text + space).encode()
    exact = json.loads(body, parse_float=Decimal)
    assert _same(_json.loads(body), exact)
    assert _same(_json.loads(body.decode()), exact)


# --- end to end: the simulator stores and serves them, list() and the export keep them ------


async def test_a_big_integer_comes_through_list_and_the_export(tmp_path: Path) -> None:
    async with (
        DMHubSimulator(customers=3, seed=5) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url) as dm,
    ):
        created = await dm.customers.create(name="大数", attr={"n": 10**22, "m": -(2**63) - 1})
        assert created.attr == {"n": 10**22, "m": -(2**63) - 1}
        [listed] = [c async for c in dm.customers.list(id_list=[created.id])]
        assert listed.attr == {"n": 10**22, "m": -(2**63) - 1}
        [row] = [r async for r in dm.customers.list_rows(id_list=[created.id])]
        assert row["attr"] == {"n": 10**22, "m": -(2**63) - 1}
        dest = tmp_path / "out.jsonl"
        await export_customers(dm, dest, progress=False, id_list=[created.id])
    line = dest.read_bytes()
    assert b'"n":10000000000000000000000' in line.replace(b" ", b"")
    assert json.loads(line)["attr"]["m"] == -(2**63) - 1


@pytest.mark.parametrize("fast", [True, False], ids=["msgspec", "no msgspec"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_a_long_decimal_comes_through_list_list_rows_and_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool, fmt: str
) -> None:
    # Through a float, 12345678901234567.89 was 12345678901234568 in the model and the rows,
    # and "1.2345678901234568e+16" in the CSV; the simulator could not serve it at all.
    if not fast:  # the export's rows decoded and written again, not split as bytes
        monkeypatch.setattr(_json, "msgspec", None)
    revenue, small = Decimal("12345678901234567.89"), Decimal("0.10000000000000001")
    async with (
        DMHubSimulator(customers=3, seed=5) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url) as dm,
    ):
        made = sim.insert_customer({"name": "大数", "annualRevenue": revenue, "attr": {"r": small}})
        [listed] = [c async for c in dm.customers.list(id_list=[made["id"]])]
        assert (listed.annual_revenue, listed.attr) == (revenue, {"r": small})
        [row] = [r async for r in dm.customers.list_rows(id_list=[made["id"]])]
        assert (row["annualRevenue"], row["attr"]) == (revenue, {"r": small})
        dest = tmp_path / f"out.{fmt}"
        await export_customers(dm, dest, progress=False, id_list=[made["id"]])
    written = dest.read_text("utf-8")
    assert "12345678901234567.89" in written
    assert "0.10000000000000001" in written
    if fmt == "jsonl":
        assert _json.loads(written.encode())["annualRevenue"] == revenue


async def test_a_long_decimal_written_reads_back_exactly() -> None:
    # Written, a Decimal a float would round went out as a JSON string ("12345678901234567.89",
    # not the contract's number) and the simulator read it through a float: the customer came
    # back with 12345678901234568, and an attr value came back as text, not a number.
    revenue, small = Decimal("12345678901234567.89"), Decimal("0.10000000000000001")
    attr = {"r": revenue, "deep": [{"s": small}]}
    async with (
        DMHubSimulator(customers=3, seed=5) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url) as dm,
    ):
        bodies: list[Any] = []

        async def keep(request: Any) -> None:
            if request.can_read_body:
                bodies.append(json.loads(await request.read(), parse_float=Decimal))

        sim.on_request(keep)
        made = await dm.customers.create(name="大数", annual_revenue=revenue, attr=attr)
        assert made.id is not None
        assert (made.annual_revenue, made.attr) == (revenue, attr)
        got = await dm.customers.get(made.id)
        assert (got.annual_revenue, got.attr) == (revenue, attr)
        updated = await dm.customers.update(made.id, annual_revenue="99999999999999999999.99")
        assert updated.annual_revenue == Decimal("99999999999999999999.99")
        assert (await dm.customers.get(made.id)).annual_revenue == updated.annual_revenue
    # Sent as JSON numbers, every digit of them.
    assert bodies[0]["annualRevenue"] == revenue
    assert bodies[0]["attr"] == attr
    assert bodies[1] == {"annualRevenue": Decimal("99999999999999999999.99")}


async def test_a_number_of_a_subclass_with_its_own_str_is_written_as_the_number_it_is() -> None:
    # An integer beyond 64 bits and a Decimal a float would round are written as their digits:
    # by str(), which a subclass of the caller's answers in its own words. The body went out as
    # {"attr":{"n":Account#1180591620717411303424},...}, not JSON, and was refused (400) after
    # it was sent; a Decimal whose str() rounds (a money type's "%.2f") went out as another
    # number without a word.
    class Account(int):
        def __str__(self) -> str:
            return f"Account#{int(self)}"

    class Money(Decimal):
        def __str__(self) -> str:
            return f"{Decimal(self):.2f}"

    number, revenue = Account(2**70), Money("12345678901234567.891")
    async with (
        DMHubSimulator(customers=0) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url) as dm,
    ):
        bodies: list[bytes] = []

        async def keep(request: Any) -> None:
            if request.can_read_body:
                bodies.append(await request.read())

        sim.on_request(keep)
        made = await dm.customers.create(annual_revenue=revenue, attr={"n": [number]})
        assert made.id is not None
        got = await dm.customers.get(made.id)
        answer = await dm.request("POST", "/v1/customers", json={"attr": {"n": number}})
    assert got.attr == {"n": [2**70]}
    assert got.annual_revenue == Decimal("12345678901234567.891")
    assert answer["attr"] == {"n": 2**70}
    assert [json.loads(body, parse_float=Decimal) for body in bodies] == [
        {"annualRevenue": Decimal("12345678901234567.891"), "attr": {"n": [2**70]}},
        {"attr": {"n": 2**70}},
    ]


# --- raw rows: each row's bytes as the service sent them ------------------------------------


def _both_ways(body: bytes) -> list[_json.RawRows]:
    return [_json.raw_rows(body), _json._raw_rows_decoding(body, "rows")]


def test_raw_rows_are_the_bytes_the_service_sent() -> None:
    body = (
        b'{"rows": [{"id": 7, "n": 1.50, "big": 12345678901234567890123}, {"id": 8}], "total": 2}'
    )
    fast = _json.raw_rows(body)
    assert fast.rows == [b'{"id": 7, "n": 1.50, "big": 12345678901234567890123}', b'{"id": 8}']
    assert fast.ids == [7, 8]
    assert fast.page == {"total": 2}
    for split in _both_ways(body):  # with or without msgspec: the same rows, decoded
        assert [json.loads(row) for row in split.rows] == json.loads(body)["rows"]
        assert split.ids == [7, 8]
        assert split.page == {"total": 2}


def test_a_row_over_several_lines_becomes_one_line() -> None:
    body = b'{"rows": [{"id": 1,\n "name": "x"}, {"id": 2}]}'
    for split in _both_ways(body):
        assert all(b"\n" not in row for row in split.rows)
        assert [json.loads(row) for row in split.rows] == [{"id": 1, "name": "x"}, {"id": 2}]


@pytest.mark.parametrize("page_keys", [None, ("records", "total")])
def test_a_page_after_a_byte_order_mark_is_read_as_the_page(
    page_keys: tuple[str, ...] | None,
) -> None:
    # A server may start its UTF-8 answer with a byte order mark, which list(), list_rows()
    # and the CSV export read past (json.loads does): with msgspec, the JSONL export refused
    # the page ("JSON is malformed: invalid character (byte 0)") and stopped.
    page = '{"rows": [{"id": 7, "name": "王", "n": 1.50}, {"id": 8}], "records": 2, "total": 1}'
    plain = _json.raw_rows(page.encode(), "rows", page_keys)
    marked = b"\xef\xbb\xbf" + page.encode()
    for split in (
        _json.raw_rows(marked, "rows", page_keys),
        _json._raw_rows_decoding(marked, "rows"),
    ):
        assert [json.loads(row) for row in split.rows] == json.loads(page)["rows"]
        assert split.ids == [7, 8]
        assert split.page == {"records": 2, "total": 1}
    assert _json.raw_rows(marked, "rows", page_keys) == plain  # the very bytes


@pytest.mark.parametrize("newline", [b"", b"\n"], ids=["one line", "over lines"])
def test_a_row_nested_past_orjsons_limit_is_written(newline: bytes) -> None:
    # orjson writes at most 255 levels: a row it read (list_rows() yields it, the CSV writes
    # it, msgspec hands it out as it came) stopped the JSONL export without msgspec, or with
    # it when spread over lines, as "the answer is not a page of customers: Recursion limit
    # reached".
    deep = b"[" * 300 + b"]" * 300
    body = b'{"rows": [{"id": 1,' + newline + b'"attr": {"v": ' + deep + b'}}], "total": 1}'
    for split in _both_ways(body):
        assert [json.loads(row) for row in split.rows] == json.loads(body)["rows"]
        assert all(b"\n" not in row for row in split.rows)
        assert split.ids == [1]


@pytest.mark.parametrize("body", [b'{"total": 0}', b'{"rows": null}', b'{"rows": []}'])
def test_no_rows(body: bytes) -> None:
    for split in _both_ways(body):
        assert (split.rows, split.ids) == ([], [])


@pytest.mark.parametrize(
    "body",
    [
        b"[1]",
        b'{"rows": [1, 2]}',
        b'{"rows": {}}',
        b"{",
        b"\xff",
        b'{"rows": [{"n": "\xe7\x8e\x8b\xff"}]}',
    ],
)
def test_raw_rows_of_what_is_no_page_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - msgspec's and the stdlib's errors differ
        _json.raw_rows(body)
    with pytest.raises(ValueError):  # noqa: PT011
        _json._raw_rows_decoding(body, "rows")


@pytest.mark.parametrize(
    "text", [b"\xe7\x8e\x8b\xff", b"a\xed\xa0\xbdb"], ids=["a stray byte", "CESU-8"]
)
def test_raw_rows_that_are_no_utf8_are_a_value_error(text: bytes) -> None:
    # msgspec skips the text of a row it hands out as it came, unchecked: the JSONL export wrote
    # such bytes (a stray one after a character, a surrogate's CESU-8: half an emoji encoded
    # alone) and called itself complete. JSON is UTF-8; the readers refuse them.
    body = b'{"rows": [{"id": 1, "name": "\xe7\x8e\x8b"}, {"id": 2, "name": "' + text + b'"}]}'
    with pytest.raises(ValueError, match="can't decode"):
        _json.raw_rows(body, "rows", ("total",))
    with pytest.raises(ValueError, match="can't decode"):
        _json.raw_rows(body)
    assert _json.raw_rows(body.replace(text, "王".encode())).ids == [1, 2]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(_ROWS, max_size=5))
@example([BIG_ROW])
def test_raw_rows_read_back_as_the_page(rows: list[dict[str, Any]]) -> None:
    body = json.dumps({"rows": rows, "records": len(rows)}, ensure_ascii=False).encode()
    for split in _both_ways(body):
        assert repr([json.loads(row) for row in split.rows]) == repr(json.loads(body)["rows"])
        assert split.ids == [row.get("id") for row in rows]
        assert split.page == {"records": len(rows)}


# --- the page reader: bytes to models, msgspec's typed decode or the lenient way -----------


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(_ROWS, max_size=5), st.booleans())
@example([BIG_ROW], True)
@example([{"id": 1, "dateJoin": "2017-06-01T12:12:12.1234567Z", "annualRevenue": 1.5}], False)
def test_the_page_reader_gives_the_records_of_the_lenient_way(
    rows: list[dict[str, Any]], extra_free: bool
) -> None:
    if extra_free:  # then msgspec reads the whole page, else record by record
        rows = [{k: v for k, v in row.items() if k != "levelScore"} for row in rows]
    body = json.dumps({"rows": rows, "records": len(rows)}, ensure_ascii=False).encode()
    models, page = read_customer_page(body)
    assert models == structure_customers(json.loads(body)["rows"])
    assert [repr(m) for m in models] == [
        repr(m) for m in structure_customers(_json.loads(body)["rows"])
    ]
    assert page == {"records": len(rows)}


def test_the_page_reader_without_msgspec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire_struct, "msgspec", None)
    reader = wire_struct.page_reader(Customer, make_converter(), "rows", (), read_customer_page)
    assert reader is read_customer_page  # the fallback itself


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"rows": [{"id": 1}, {"id": 2, "dateJoin": "soon"}]}',
            r"record 1 \(id 2\), field 'dateJoin'",
        ),
        (b'{"rows": [{"id": 1}, {"id": 2, "annualRevenue": "lots"}]}', r"record 1 \(id 2\)"),
        (b'{"rows": [{"id": 1}, 5]}', "record 1 is not an object"),
        (b'{"rows": {}}', "'rows' is not a list"),
        (b"[]", "not a JSON object"),
    ],
)
def test_the_page_reader_names_a_malformed_record(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_customer_page(body)


def test_the_page_reader_keeps_unknown_fields_and_nulls() -> None:
    body = (
        b'{"rows": [{"id": 1, "levelScore": 9, "gender": 7}, {"id": 2, "attr": null}], "total": 1}'
    )
    models, page = read_customer_page(body)
    assert [m.extra for m in models] == [{"levelScore": 9, "gender": 7}, {}]
    assert [m.attr for m in models] == [{}, {}]
    assert page == {"total": 1}
    assert read_customer_page(b'{"rows": null, "total": 0}') == ([], {"total": 0})


def test_a_record_msgspec_refuses_is_read_on_its_own_not_the_whole_page_again() -> None:
    def whole_page_again(body: bytes) -> Any:
        raise AssertionError("the lenient reading of the whole page was not needed")

    reader = wire_struct.page_reader(
        Customer, make_converter(), "rows", ("total",), whole_page_again
    )
    body = b'{"rows": [{"id": 1}, {"id": 2, "levelScore": 9}, {"id": "3", "qq": 5}], "total": 1}'
    models, page = reader(body)
    assert [(m.id, m.qq, m.extra) for m in models] == [
        (1, None, {}),
        (2, None, {"levelScore": 9}),
        (3, "5", {}),
    ]
    assert page == {"total": 1}


def test_the_statistics_page_reader() -> None:
    items = [
        {"id": 1, "customerId": 7, "orderAMT": 0.05, "lastUpdated": "2017-01-22T16:34:03Z"},
        {"id": 2, "customerId": "8", "rfm": "A"},  # a number as text, an unknown field
    ]
    meta = {"records": 2, "total": 1, "hasNext": False}
    body = json.dumps({"items": items, "meta": meta}).encode()
    models, page = read_statistics_page(body)
    assert models == structure_statistics_list(items)
    assert (models[0].order_amt, models[1].customer_id, models[1].extra) == (
        Decimal("0.05"),
        8,
        {"rfm": "A"},
    )
    assert page == {"meta": meta}


# --- what no reader may take: every path refuses the same page, as the SDK's error ----------


def _served_with(monkeypatch: pytest.MonkeyPatch, literal: bytes) -> None:
    """The simulator's answers with the JSON string ``"<RAW>"`` replaced by ``literal``, bytes
    no encoder of ours would write (a number past a Decimal's range, ``NaN``, bad UTF-8)."""
    from aiohttp import web

    from dmhub_async.testing import _app

    def json_response(data: Any, status: int = 200) -> web.Response:
        body = _json.dumps(data).replace(b'"<RAW>"', literal)
        return web.Response(body=body, status=status, content_type="application/json")

    monkeypatch.setattr(_app, "json_response", json_response)


async def _every_read_of(
    literal: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, BaseException | None]:
    """What each way of reading a customer whose ``attr`` holds ``literal`` raised (None when
    it read it): get, dm.request, list, list_rows and both exports, with msgspec's raw rows
    and without them."""
    from dmhub_async import ResponseDecodeError

    raised: dict[str, BaseException | None] = {}
    async with (
        DMHubSimulator(customers=3, seed=5) as sim,
        # An answer that cannot be read is tried again, after a wait: once is the point here.
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url, max_retries=0) as dm,
    ):
        made = sim.insert_customer({"name": "王", "attr": {"v": "<RAW>"}})
        _served_with(monkeypatch, literal)
        calls = {
            "get": lambda: dm.customers.get(made["id"]),
            "request": lambda: dm.request("GET", f"/v1/customers/{made['id']}"),
            "list": lambda: dm.customers.list().to_list(),
            "list_rows": lambda: dm.customers.list_rows().to_list(),
        }
        for fast in (True, False):
            for fmt in ("jsonl", "csv"):
                name = f"export {fmt}{'' if fast else ' without msgspec'}"

                async def export(fmt: str = fmt, fast: bool = fast) -> Any:
                    with monkeypatch.context() as patch:
                        if not fast:
                            patch.setattr(_json, "msgspec", None)
                        dest = tmp_path / f"{fast}.{fmt}"
                        return await export_customers(dm, dest, progress=False)

                calls[name] = export
        for name, read in calls.items():
            try:
                await read()
            except ResponseDecodeError as err:
                raised[name] = err
            else:
                raised[name] = None
    return raised


#: JSON numbers whose exponent is past what a ``Decimal`` holds (its Emax, about 10**18).
BEYOND_DECIMAL = ["1e99999999999999999999", "-1E+99999999999999999999", "1e-99999999999999999999"]


@pytest.mark.parametrize("text", BEYOND_DECIMAL)
def test_a_number_beyond_a_decimal_is_a_value_error(text: str) -> None:
    # Decimal(text) raises InvalidOperation, which is no ValueError: every reader, which takes
    # a ValueError for a body that is not JSON, let it out raw.
    body = ('{"rows":[{"id":1,"annualRevenue":' + text + '}],"total":1}').encode()
    with pytest.raises(ValueError, match="beyond what a Decimal holds"):
        _json.loads(body)
    with pytest.raises(ValueError, match="beyond what a Decimal holds"):
        _json.exact_number(text)
    with pytest.raises(ValueError):  # noqa: PT011 - msgspec's and the stdlib's errors differ
        read_customer_page(body)
    with pytest.raises(ValueError, match="beyond what a Decimal holds"):
        _json._raw_rows_decoding(body, "rows")


def _exponent(marker: str) -> st.SearchStrategy[str]:
    return st.just("") if not marker else st.integers(0, 10**25).map(f"{marker}{{}}".format)


#: JSON number literals of every shape, their exponents far past a float's and a Decimal's.
_NUMBER_TEXTS = st.builds(
    "{}{}{}{}".format,
    st.sampled_from(["", "-"]),
    st.integers(0, 10**30).map(str),
    st.sampled_from(["", ".5", ".000001", ".10000000000000001"]),
    st.sampled_from(["", "e", "E+", "e-"]).flatmap(_exponent),
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(_NUMBER_TEXTS)
@example(BEYOND_DECIMAL[0])
@example(BEYOND_DECIMAL[2])
def test_a_json_number_is_read_or_refused_as_not_json(text: str) -> None:
    """Whatever its size, a number is read, or refused as the ValueError of a body that is
    not JSON, which the readers turn into ResponseDecodeError; nothing else escapes."""
    body = ('{"rows":[{"id":1,"attr":{"n":' + text + "}}]}").encode()
    for read in (_json.loads, read_customer_page, _json.raw_rows):
        with contextlib.suppress(ValueError):
            read(body)


async def test_a_number_beyond_a_decimal_is_the_sdks_error_on_every_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each was a raw decimal.InvalidOperation, no DMHubError (the CLI: a traceback).
    raised = await _every_read_of(BEYOND_DECIMAL[0].encode(), monkeypatch, tmp_path)
    # msgspec's raw rows are written as the service sent them, as a 5,000-digit integer is.
    assert raised.pop("export jsonl") is None
    assert [name for name, err in raised.items() if err is None] == []


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(literal: str) -> None:
    # orjson and msgspec refuse them; the fallback read them (json.loads does), so the paths
    # disagreed: the JSONL export without msgspec wrote null, the CSV nan, get() Decimal("NaN").
    body = ('{"rows":[{"id":1,"annualRevenue":' + literal + "}]}").encode()
    for read in (_json.loads, read_customer_page, _json.raw_rows):
        with pytest.raises(ValueError):  # noqa: PT011 - msgspec's and the stdlib's errors differ
            read(body)
    with pytest.raises(ValueError, match=f"{literal} is not JSON"):
        _json._raw_rows_decoding(body, "rows")


@pytest.mark.parametrize("literal", [b"NaN", b"-Infinity"])
async def test_nan_and_infinity_are_the_sdks_error_on_every_path(
    literal: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    raised = await _every_read_of(literal, monkeypatch, tmp_path)
    assert [name for name, err in raised.items() if err is None] == []


async def test_text_that_is_no_utf8_is_the_sdks_error_on_every_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The JSONL export with msgspec wrote it, a file that is no UTF-8, and called it complete.
    raised = await _every_read_of(b'"\xe7\x8e\x8b\xff"', monkeypatch, tmp_path)
    assert [name for name, err in raised.items() if err is None] == []
    assert not (tmp_path / "True.jsonl").exists()  # nothing written but a work file, gone


async def test_a_surrogates_cesu8_stops_every_export(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The standard library reads it as the lone surrogate it encodes (as it reads "\ud83d"
    # escaped), so get() and list() take it; no export may write it, which UTF-8 cannot hold.
    raised = await _every_read_of(b'"a\xed\xa0\xbdb"', monkeypatch, tmp_path)
    exports = {name: err for name, err in raised.items() if name.startswith("export")}
    assert [name for name, err in exports.items() if err is None] == []
