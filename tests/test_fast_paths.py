"""The fast paths give what the lenient ones gave: pages read by the caller's decoder.

``list()`` and ``customer_statistics.list()`` read each page's bytes with the converter's page
reader (msgspec's typed decode when installed) through ``Request.decode``; the JSONL export
writes each row's bytes as the service sent them. Same records, same errors, same redaction.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import re
import sys
import time
import urllib.request
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import attrs
import msgspec
import pytest
from _helpers import url
from aioresponses import aioresponses
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_converter import DOC_CUSTOMER, DOC_STATISTICS
from test_json import _ROWS, BIG_ROW
from test_timezones import iso_timestamps

from dmhub_async import (
    APIError,
    AuthenticationError,
    DMHubClient,
    Identity,
    InvalidRequestError,
    ResponseDecodeError,
    ServerError,
    _json,
    _sansio,
    _session,
)
from dmhub_async._converter import (
    lenient_page_reader,
    make_converter,
    read_customer_page,
    read_customer_page_deferred,
    read_statistics_page,
    structure_customers,
    structure_statistics_list,
    to_wire,
    wire_names,
    wire_struct,
)
from dmhub_async._converter.deferred import deferred_rows
from dmhub_async._converter.names import wire_order
from dmhub_async._sansio import Request, read_response
from dmhub_async._session import env_proxy, environment_proxies
from dmhub_async._validate import (
    MAX_IDENTITY_NAME,
    MAX_IDENTITY_TYPE,
    MAX_IDENTITY_VALUE,
    check_identity,
)
from dmhub_async.export import export_customers
from dmhub_async.models import Customer, CustomerStatistics, Gender
from dmhub_async.resources import _pages, customer_statistics, customers, identities
from dmhub_async.testing import DMHubSimulator
from dmhub_async.testing._fields import CUSTOMER_FIELDS, STATISTICS_FIELDS

UTC = timezone.utc
WHAT = "a page of customers"
FAST = _pages.rows_page(read_customer_page, WHAT)
LENIENT = _pages.rows_page(lenient_page_reader(structure_customers, "rows"), WHAT)
#: list(structure="lazy")'s readers: msgspec's, and the lenient way's.
FAST_LAZY = _pages.rows_page(read_customer_page_deferred, WHAT)
LENIENT_LAZY = _pages.rows_page(lenient_page_reader(deferred_rows, "rows"), WHAT)
PAGE = Request("GET", "/v1/customers", {"rows": "100", "page": "1"})


def _read(body: bytes, decode: Any = None, status: int = 200, **kwargs: Any) -> Any:
    request = (
        PAGE if decode is None else Request(PAGE.method, PAGE.path, PAGE.params, decode=decode)
    )
    return read_response(request, status, {}, body, **kwargs)


def _models(pages: list[Any]) -> list[str]:
    """Records as their reprs: ``Decimal('1.50')`` and ``1.5``, ``10**22`` and ``1e22`` differ."""
    return [repr(record) for page in pages for record in page.items]


# --- read_response with a decoder ---------------------------------------------------------


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(_ROWS, max_size=5), st.sampled_from([0, "0", None]))
@example([BIG_ROW], 0)
@example([{"id": 1, "dateJoin": "2017-06-01T12:12:12.1234567Z", "annualRevenue": 1.50}], None)
def test_a_page_read_by_its_decoder_holds_the_records_of_the_lenient_way(
    rows: list[dict[str, Any]], error_code: Any
) -> None:
    page: dict[str, Any] = {"rows": rows, "records": 250, "total": 3}
    if error_code is not None:
        page["error_code"] = error_code  # zero: a success
    body = json.dumps(page, ensure_ascii=False).encode()
    fast, lenient = _read(body, FAST), _read(body, LENIENT)
    assert _models([fast]) == _models([lenient])
    assert fast.items == lenient.items == structure_customers(json.loads(body)["rows"])
    assert (fast.total_records, fast.total_pages) == (250, 3)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(iso_timestamps())
@example(("2024-01-02T23:59:59.9999995Z", datetime(2024, 1, 3, tzinfo=timezone.utc)))
@example(("2024-01-02T03:04:05.1234565+08:00", datetime(2024, 1, 1, 19, 4, 5, 123457, UTC)))
def test_a_timestamp_the_typed_reader_reads_is_the_instant_the_lenient_way_reads(
    written: tuple[str, datetime],
) -> None:
    # msgspec reads a timestamp itself (in C, a fraction past microseconds rounded): every
    # form it takes gives the instant the lenient way gives, aware UTC; those it refuses are
    # read by the lenient way.
    text, instant = written
    body = json.dumps({"rows": [{"id": 1, "dateJoin": text, "lastUpdated": None}]}).encode()
    fast, lenient = _read(body, FAST), _read(body, LENIENT)
    assert [c.date_join for c in fast.items] == [c.date_join for c in lenient.items] == [instant]
    assert fast.items[0].date_join.tzinfo is UTC


# What each answer raises without a decoder must be what it raises with one: the same class and
# the same text, code and body, secrets masked the same way.
ERRORS = {
    "error code on 200": (200, b'{"error_code": 42001, "error_description": "bad token"}'),
    "error code on 200 beside rows": (
        200,
        b'{"rows": [{"id": 1}], "error_code": "40005", "error_description": "tok-secret"}',
    ),
    "error code on 200 beside a malformed row": (
        200,
        b'{"rows": [{"id": 1, "dateJoin": 5}], "error_code": 40005}',
    ),
    "not JSON on 200": (200, b"<html>tok-secret maintenance</html>"),
    "cut short on 200": (200, b'{"rows": [{"id": 1'),
    "HTTP 500 of a page": (500, b'{"rows": [], "error_code": 50000}'),
    "HTTP 502 of HTML": (502, b"<html>bad gateway</html>"),
    "HTTP 400 with a description": (400, b'{"error_code": 40004, "error_description": "tok-x"}'),
}


@pytest.mark.parametrize(("status", "body"), ERRORS.values(), ids=ERRORS.keys())
def test_errors_are_found_and_built_as_without_a_decoder(status: int, body: bytes) -> None:
    caught = []
    for decode in (None, FAST, LENIENT):
        with pytest.raises(APIError) as info:
            _read(body, decode, status, secrets=("tok-secret",))
        caught.append(info.value)
    plain = caught[0]
    assert "tok-secret" not in str(plain)
    for err in caught[1:]:
        assert type(err) is type(plain)
        assert (str(err), err.code, err.body, err.status) == (
            str(plain),
            plain.code,
            plain.body,
            plain.status,
        )


def test_an_error_code_on_200_is_still_the_error_it_names() -> None:
    with pytest.raises(AuthenticationError):
        _read(b'{"rows": [], "error_code": 42001}', FAST)
    with pytest.raises(ServerError):
        _read(b'{"rows": [{"id": 1}]}', FAST, status=503)


@pytest.mark.parametrize("decode", [FAST, LENIENT], ids=["fast", "lenient"])
def test_a_malformed_record_names_the_record_and_the_field(decode: Any) -> None:
    body = b'{"rows": [{"id": 1}, {"id": 2, "dateJoin": "tok-secret"}], "records": 2}'
    with pytest.raises(ResponseDecodeError) as info:
        _read(body, decode, secrets=("tok-secret",))
    text = str(info.value)
    assert text.startswith("GET /v1/customers -> HTTP 200: the answer is not a page of customers")
    assert "record 1 (id 2), field 'dateJoin'" in text
    assert "tok-secret" not in text
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


@pytest.mark.parametrize("decode", [FAST, LENIENT], ids=["fast", "lenient"])
@pytest.mark.parametrize("text", ["NaN", "sNaN", "Infinity", "-Infinity"])
def test_a_decimal_sent_as_nan_or_infinity_names_the_record_and_the_field(
    decode: Any, text: str
) -> None:
    # msgspec and Decimal() both read the text "NaN" as Decimal("NaN"): it was a record's amount
    body = b'{"rows": [{"id": 1}, {"id": 2, "annualRevenue": "%s"}]}' % text.encode()
    with pytest.raises(ResponseDecodeError, match=r"record 1 \(id 2\), field 'annualRevenue'"):
        _read(body, decode)
    body = b'{"items": [{"id": 1, "orderAMT": "%s"}]}' % text.encode()  # statistics' decimals
    with pytest.raises(ResponseDecodeError, match=r"record 0 \(id 1\), field 'orderAMT'"):
        _read(body, STATISTICS if decode is FAST else LENIENT_STATISTICS)


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b'{"rows": {}}', b'{"rows": [1]}', b"null"])
def test_what_is_no_page_is_a_decode_error(body: bytes) -> None:
    for decode in (FAST, LENIENT, FAST_LAZY, LENIENT_LAZY):
        with pytest.raises(ResponseDecodeError, match="not a page of customers"):
            _read(body, decode)


#: Every reader of a customer page: models (msgspec's and the lenient way), dicts, raw rows.
CUSTOMER_READERS = {
    "fast": FAST,
    "lenient": LENIENT,
    "lazy": FAST_LAZY,
    "lazy, lenient": LENIENT_LAZY,
    "rows": _pages.rows_page(customers.read_rows, WHAT, customers.row_ids),  # list_rows()
    "raw rows": _pages.rows_page(customers.read_raw_rows, WHAT),
}
#: Success answers that are no page of customers: read as "no records" (or a total cut to an
#: int), they ended a walk as if it were complete. (The contract: ``{"rows": [...]}``, with
#: ``records`` and ``total`` counts when given.)
NO_CUSTOMER_PAGE = {
    "no rows": b'{"records": "x"}',
    "empty object": b"{}",
    "error code zero alone": b'{"error_code": "0"}',
    "rows null beside a count": b'{"rows": null, "records": 5, "total": 1}',
    "records not a number": b'{"rows": [{"id": 1}], "records": "y"}',
    "total not a number": b'{"rows": [{"id": 1}], "total": "x"}',
    "total a fraction": b'{"rows": [{"id": 1}], "records": 2, "total": 1.5}',
    "records negative": b'{"rows": [{"id": 1}], "records": -3}',
    "total a boolean": b'{"rows": [{"id": 1}], "total": true}',
    "records of full-width digits": b'{"rows": [{"id": 1}], "records": "\\uff11"}',
}


@pytest.mark.parametrize("reader", CUSTOMER_READERS.values(), ids=CUSTOMER_READERS.keys())
@pytest.mark.parametrize("body", NO_CUSTOMER_PAGE.values(), ids=NO_CUSTOMER_PAGE.keys())
def test_a_success_answer_that_is_no_page_of_customers_is_a_decode_error(
    body: bytes, reader: Any
) -> None:
    with pytest.raises(ResponseDecodeError, match="not a page of customers"):
        _read(body, reader)


@pytest.mark.parametrize("reader", CUSTOMER_READERS.values(), ids=CUSTOMER_READERS.keys())
def test_the_pages_the_contract_promises_are_read(reader: Any) -> None:
    empty = _read(b'{"rows": []}', reader)
    assert (empty.items, empty.total_records, empty.total_pages) == ([], None, None)
    last = _read(b'{"rows": [], "records": 0, "total": 0}', reader)
    assert (last.items, last.total_records, last.total_pages) == ([], 0, 0)
    counted = _read(b'{"rows": [{"id": 1}], "records": "7", "total": null}', reader)
    assert (len(counted.items), counted.total_records, counted.total_pages) == (1, 7, None)


@pytest.mark.parametrize("body", [b'{"rows": [{"id": 1}, 5]}', b'{"rows": [null]}'])
def test_a_row_that_is_no_object_is_a_decode_error_of_list_rows(body: bytes) -> None:
    with pytest.raises(ResponseDecodeError, match="customers: a row is not an object"):
        _read(body, CUSTOMER_READERS["rows"])


def test_list_rows_goes_over_a_pages_rows_once_to_read_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a page of list_rows() costs (issue 15): its rows are gone over once, in C, for their
    ids, which also tells a row that is not an object; a pass of its own for their kind
    (isinstance a row) was 23k instructions of a page of 100."""
    passes = 0

    class Rows(list[Any]):
        def __iter__(self) -> Any:
            nonlocal passes
            passes += 1
            return super().__iter__()

    loads = _json.loads

    def counted(body: bytes) -> Any:
        page = loads(body)
        page["rows"] = Rows(page["rows"])
        return page

    monkeypatch.setattr(_json, "loads", counted)
    page = _read(b'{"rows": [{"id": 1}, {"id": 2}], "records": 2}', CUSTOMER_READERS["rows"])
    assert (page.items, page.keys) == ([{"id": 1}, {"id": 2}], [1, 2])
    assert passes == 1


#: Rows whose id is no integer: list() refuses each (ResponseDecodeError); the readers of rows
#: (list_rows(), the export) raised a raw TypeError comparing it with the others, dropped
#: ``true`` as a repeat of 1, or compared ids written as text as text ("10" < "9": dropped).
BAD_ROW_IDS = {
    "text": b'{"rows": [{"id": 1}, {"id": "abc"}, {"id": 3}]}',
    "a boolean": b'{"rows": [{"id": 1}, {"id": true}, {"id": 3}]}',
    "a fraction": b'{"rows": [{"id": 1}, {"id": 2.5}, {"id": 3}]}',
    "a list": b'{"rows": [{"id": 1}, {"id": [2]}, {"id": 3}]}',
    "digits as text": b'{"rows": [{"id": "8"}, {"id": "9"}, {"id": "10"}]}',
}


@pytest.mark.parametrize("body", BAD_ROW_IDS.values(), ids=BAD_ROW_IDS.keys())
@pytest.mark.parametrize("reader", ["rows", "raw rows"])
def test_a_row_whose_id_is_no_integer_is_a_decode_error(body: bytes, reader: str) -> None:
    with pytest.raises(ResponseDecodeError, match=r"record [01]: its id .* is not an integer"):
        _read(body, CUSTOMER_READERS[reader])


@pytest.mark.parametrize("body", BAD_ROW_IDS.values(), ids=BAD_ROW_IDS.keys())
@pytest.mark.parametrize("reader", ["lazy", "lazy, lenient"])
def test_a_lazy_walk_takes_or_refuses_an_id_as_the_eager_one(body: bytes, reader: str) -> None:
    # The walk drops repeats by the ids: read with the page, never deferred.
    try:
        eager = [c.id for c in _read(body, FAST).items]
    except ResponseDecodeError:
        with pytest.raises(ResponseDecodeError, match=r"customers: .*record 1, field 'id'"):
            _read(body, CUSTOMER_READERS[reader])
    else:
        assert [c.id for c in _read(body, CUSTOMER_READERS[reader]).items] == eager == [8, 9, 10]


async def test_list_rows_and_the_export_refuse_ids_that_are_no_integers(
    api: aioresponses, tokens: Any, make_client: Any, tmp_path: Path
) -> None:
    api.get(url("/v1/customers/count"), body=b"3", repeat=True)
    page = b'{"rows": [{"id": "8"}, {"id": "9"}, {"id": "10"}], "records": 3, "total": 1}'
    api.get(url("/v1/customers"), body=page, repeat=True)
    dm = make_client(max_retries=0)
    # Before: [{"id": "8"}, {"id": "9"}], "10" dropped as a repeat ("10" < "9" as text).
    with pytest.raises(ResponseDecodeError, match="not an integer"):
        await dm.customers.list_rows().to_list()
    for fmt in ("jsonl", "csv"):
        with pytest.raises(ResponseDecodeError, match="not an integer"):
            await export_customers(dm, tmp_path / f"out.{fmt}", progress=False)


STATISTICS = _pages.items_page(read_statistics_page, "a page of customer statistics")
LENIENT_STATISTICS = _pages.items_page(
    lenient_page_reader(structure_statistics_list, "items"), "a page of customer statistics"
)
NO_STATISTICS_PAGE = {
    "no items": b'{"meta": {"records": 3, "total": 1, "hasNext": false}}',
    "empty object": b"{}",
    "items null": b'{"items": null, "meta": {"hasNext": true}}',
    "meta not an object": b'{"items": [{"id": 1}], "meta": "x"}',
    "hasNext not a boolean": b'{"items": [{"id": 1}], "meta": {"hasNext": "false"}}',
    "records not a number": b'{"items": [{"id": 1}], "meta": {"records": "x"}}',
    "total a fraction": b'{"items": [{"id": 1}], "meta": {"total": 0.5}}',
}


@pytest.mark.parametrize("body", NO_STATISTICS_PAGE.values(), ids=NO_STATISTICS_PAGE.keys())
def test_a_success_answer_that_is_no_page_of_statistics_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(ResponseDecodeError, match="not a page of customer statistics"):
        _read(body, STATISTICS)


def test_the_statistics_pages_the_contract_promises_are_read() -> None:
    page = _read(b'{"items": [], "meta": {"records": 0, "total": 0, "hasNext": false}}', STATISTICS)
    assert (page.items, page.has_next, page.total_records, page.total_pages) == ([], False, 0, 0)
    bare = _read(b'{"items": [{"id": 1}]}', STATISTICS)
    assert (len(bare.items), bare.has_next, bare.total_records) == (1, None, None)


async def test_a_walk_and_an_export_over_pages_without_rows_raise_not_end(
    api: aioresponses, tokens: Any, make_client: Any, tmp_path: Path
) -> None:
    # Before: list() gave [] and the export wrote an empty file, as for an empty account.
    api.get(url("/v1/customers/count"), body=b"3", repeat=True)
    api.get(url("/v1/customers"), body=b'{"records": "x"}', repeat=True)
    dm = make_client(max_retries=0)
    with pytest.raises(ResponseDecodeError, match="'rows'"):
        await dm.customers.list().to_list()
    with pytest.raises(ResponseDecodeError, match="'rows'"):
        await dm.customers.list_rows().to_list()
    with pytest.raises(ResponseDecodeError, match="'rows'"):
        await export_customers(dm, tmp_path / "out.jsonl", progress=False)


# --- list() through the simulator, with and without msgspec ------------------------------


async def _walks(dm: DMHubClient) -> tuple[list[Any], list[Any]]:
    records = [c async for c in dm.customers.list(page_size=7, concurrency=3)]
    rows = [r async for r in dm.customers.list_rows(page_size=7, concurrency=3)]
    return records, rows


async def test_list_yields_the_same_records_with_and_without_msgspec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        DMHubSimulator(customers=40, seed=15) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url) as dm,
    ):
        sim.insert_customer({"name": "大数 小D", "attr": {"n": 10**22, "m": -(2**63) - 1}})
        sim.insert_customer({"name": "张三", "mobile": "13800000000", "attr": {"x": 1.5}})
        fast, rows = await _walks(dm)
        # The lenient way, as list() read pages before: decode, then structure.
        lenient = lenient_page_reader(structure_customers, "rows")
        monkeypatch.setattr(customers, "read_customer_page", lenient)
        slow, _ = await _walks(dm)
    assert len(fast) == 42
    assert [repr(c) for c in fast] == [repr(c) for c in slow]
    assert fast == structure_customers(rows)
    assert fast[-2].attr == {"n": 10**22, "m": -(2**63) - 1}
    assert all(c.date_created is not None and c.date_created.utcoffset() is not None for c in fast)
    # With msgspec installed (the test extra has it), the fast path is msgspec's typed decode.
    assert wire_struct.msgspec is None or wire_struct.wire_struct(Customer) is not None


# --- list(structure="lazy"): each customer built on its first read ----------------------------

_FIELD_NAMES = [a.name for a in attrs.fields(Customer)]

#: What a user does first with a customer of the walk, and what it gives; each on a lazy one
#: not built yet, and on the eager one.
_FIRST_USES: dict[str, Any] = {
    "every field": lambda c: [repr(getattr(c, name)) for name in _FIELD_NAMES],
    "extra first": lambda c: (repr(c.extra), repr(c.date_join)),
    "==": lambda c: c,  # the lists compared: the lazy customer == the eager one
    "!=": lambda c: _NotEqual(c),
    "repr": repr,
    "attrs.asdict": attrs.asdict,
    "attrs.astuple": attrs.astuple,
    "attrs.evolve": lambda c: (type(e := attrs.evolve(c, name="x")), repr(e)),
    "unstructure": to_wire,
    "pickle": lambda c: pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL),
    "pickled and back": lambda c: repr(pickle.loads(pickle.dumps(c))),
    "copy": lambda c: repr(copy.copy(c)),
    "deepcopy": lambda c: repr(copy.deepcopy(c)),
    "a field written": lambda c: (setattr(c, "name", "written"), repr(c))[1],
    "extra written": lambda c: (setattr(c, "extra", {"k": 1}), repr(c))[1],
}


class _NotEqual:
    def __init__(self, customer: Any) -> None:
        self.customer = customer

    def __eq__(self, other: object) -> bool:  # the != of the two customers, both ways
        assert isinstance(other, _NotEqual)
        return not (self.customer != other.customer) and not (other.customer != self.customer)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(_ROWS, max_size=4))
@example([BIG_ROW])
@example(
    [
        {"id": 1, "dateJoin": "2017-06-01T12:12:12.1234567Z", "annualRevenue": 1.50},
        {"id": 2, "dateJoin": "2017-06-01T20:12:12+08:00", "annualRevenue": "1.50", "gender": 9},
        {"id": 3, "employeeNumber": 2**70, "annualRevenue": "12345678901234567.89", "x": None},
        {"id": 4, "dateJoin": "2017-06-01 12:12:12", "name": 5, "attr": None, "gender": "x"},
    ]
)
def test_a_lazy_customer_is_in_every_way_the_eager_one(rows: list[dict[str, Any]]) -> None:
    body = json.dumps({"rows": rows, "records": 9, "total": 2}, ensure_ascii=False).encode()
    for eager_reader, lazy_reader in ((FAST, FAST_LAZY), (LENIENT, LENIENT_LAZY)):
        eager = _read(body, eager_reader)
        for use, first_use in _FIRST_USES.items():
            lazy = _read(body, lazy_reader)
            assert (lazy.total_records, lazy.total_pages) == (9, 2)
            assert all(isinstance(c, Customer) for c in lazy.items)
            assert [c.id for c in lazy.items] == [c.id for c in eager.items]
            got = [first_use(c) for c in lazy.items]
            assert got == [first_use(copy.deepcopy(c)) for c in eager.items], use
            # Built once used: a Customer in every way from then on.
            assert all(type(c) is Customer for c in lazy.items), use
        assert _models([_read(body, lazy_reader)]) == _models([eager])


@pytest.mark.parametrize("reader", [FAST_LAZY, LENIENT_LAZY], ids=["fast", "lenient"])
def test_a_lazy_customers_numbers_are_every_digit_the_service_sent(reader: Any) -> None:
    body = (
        b'{"rows": [{"id": 1, "annualRevenue": 12345678901234567.89,'
        b' "employeeNumber": 123456789012345678901234567890, "levelScore": 1e400}]}'
    )
    [eager] = _read(body, FAST).items
    [lazy] = _read(body, reader).items
    assert lazy.annual_revenue == Decimal("12345678901234567.89")
    assert lazy.employee_number == 123456789012345678901234567890
    assert repr(lazy) == repr(eager)
    assert lazy.extra == {"levelScore": Decimal("1e400")}


def test_a_lazy_customer_whose_build_is_interrupted_is_built_at_its_next_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A KeyboardInterrupt inside the build left a Customer of a few fields, its `extra` the
    # decoded record (a msgspec Struct), and no build ever again.
    from dmhub_async._converter import deferred

    body = b'{"rows": [{"id": 1, "name": "a", "email": "a@b.c", "tagCount": 2}]}'
    [eager] = _read(body, FAST).items
    [lazy] = _read(body, FAST_LAZY).items
    pending = deferred._EXTRA_SLOT.__get__(lazy)
    fill = deferred._FILLS[type(pending)]

    def interrupted(obj: Any, record: Any) -> None:
        obj.name = "half"
        raise KeyboardInterrupt

    monkeypatch.setitem(deferred._FILLS, type(pending), interrupted)
    with pytest.raises(KeyboardInterrupt):
        lazy.email  # noqa: B018
    monkeypatch.setitem(deferred._FILLS, type(pending), fill)
    assert (lazy.email, lazy.extra) == ("a@b.c", {"tagCount": 2})
    assert type(lazy) is Customer
    assert lazy == eager


@pytest.mark.parametrize("reader", [FAST_LAZY, LENIENT_LAZY], ids=["fast", "lenient"])
def test_a_lazy_customers_first_use_near_the_recursion_limit_leaves_it_readable(
    reader: Any,
) -> None:
    # The caller's stack, not the record: a first use with too few frames left raised the
    # RecursionError inside the build, which took it for a value refused and marked a good
    # record unreadable for good (a private class from then on), or said its field malformed.
    body = json.dumps(
        {"rows": [{"id": 1, "name": "a", "dateJoin": "2017-06-01T20:12:12+08:00", "x": 2}]}
    ).encode()
    [eager] = _read(body, FAST).items
    [lazy] = _read(body, reader).items

    def down() -> None:  # the first use tried at every depth, from the limit up
        with contextlib.suppress(RecursionError):
            down()
        with contextlib.suppress(RecursionError):
            lazy.date_join  # noqa: B018  (ResponseDecodeError: the bug)

    down()
    assert type(lazy) is Customer
    assert lazy.date_join == datetime(2017, 6, 1, 12, 12, 12, tzinfo=UTC)
    assert (lazy == eager, repr(lazy)) == (True, repr(eager))


@pytest.mark.parametrize("reader", [FAST_LAZY, LENIENT_LAZY], ids=["fast", "lenient"])
def test_a_lazy_customer_interrupted_as_its_build_returns_is_built_whole_at_its_next_use(
    reader: Any,
) -> None:
    # A Ctrl+C (here a debugger's or a profiler's trace function raising it) once the build had
    # set `extra`, its last field, and before it returned: the record stayed pending, its
    # `extra` slot now the built extra, which the next use built as the record: every field
    # read None, the values the service sent lost without a word.
    from dmhub_async._converter import deferred

    body = b'{"rows": [{"id": 1, "name": "a", "email": "a@b.c", "tagCount": 2}]}'
    [eager] = _read(body, FAST).items
    [lazy] = _read(body, reader).items

    def trace(frame: Any, event: str, arg: Any) -> Any:
        built = frame.f_locals.get("extra")
        target = frame.f_locals.get("self")
        if (
            event == "line"
            and frame.f_code.co_filename.startswith("<dmhub_async ")
            and isinstance(built, dict)
            and target is lazy
            and deferred._EXTRA_SLOT.__get__(target) is built  # `self.extra = extra` done
        ):
            sys.settrace(previous)
            raise KeyboardInterrupt
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        with pytest.raises(KeyboardInterrupt):
            lazy.email  # noqa: B018
    finally:
        sys.settrace(previous)
    assert (lazy.email, lazy.name, lazy.extra) == ("a@b.c", "a", {"tagCount": 2})
    assert type(lazy) is Customer
    assert lazy == eager


@pytest.mark.parametrize("reader", [FAST_LAZY, LENIENT_LAZY], ids=["fast", "lenient"])
@pytest.mark.parametrize("malformed", [False, True], ids=["readable", "malformed"])
def test_a_lazy_customers_id_written_or_deleted_before_its_first_use_stays_so(
    reader: Any, malformed: bool
) -> None:
    # The id is set with the page, not built: a write or a delete of it built nothing, and
    # the build of the first use set it back to the record's, the caller's write lost.
    row = {"id": 7, "name": "a", "tagCount": 2, **({"annualRevenue": "NaN"} if malformed else {})}
    body = json.dumps({"rows": [row]}).encode()
    [written] = _read(body, reader).items
    written.id = 99
    assert (written.name, written.extra) == ("a", {"tagCount": 2})  # the first use
    assert written.id == 99
    if not malformed:
        [eager] = _read(body, FAST).items
        eager.id = 99
        assert written == eager
        assert repr(written) == repr(eager)
        assert pickle.loads(pickle.dumps(written)).id == 99
    [deleted] = _read(body, reader).items
    del deleted.id
    assert deleted.name == "a"  # the first use
    assert not hasattr(deleted, "id")
    [evolved] = _read(body, reader).items
    evolved.id = None
    assert attrs.evolve(evolved, annual_revenue=None).id is None


@pytest.mark.parametrize("reader", [FAST_LAZY, LENIENT_LAZY], ids=["fast", "lenient"])
@pytest.mark.parametrize("malformed", [False, True], ids=["readable", "malformed"])
def test_a_lazy_customer_whose_id_was_deleted_is_said_a_customer_as_the_eager_one(
    reader: Any, malformed: bool
) -> None:
    # repr and a pickle of an unreadable record, and == of one not built yet, read its id
    # from the slot, which named the private class: "'DeferredCustomer' object has no
    # attribute 'id'", where the eager customer says 'Customer'.
    row = {"id": 7, "name": "a", **({"annualRevenue": "NaN"} if malformed else {})}
    [eager] = _read(json.dumps({"rows": [{"id": 7, "name": "a"}]}).encode(), FAST).items
    del eager.id
    uses: dict[str, Any] = {"==": lambda c: c == Customer(id=7), "pickle": pickle.dumps}
    if malformed:
        uses["repr"] = repr  # a readable one is built first, a Customer then
    for use, first_use in uses.items():
        with pytest.raises(AttributeError) as said:
            first_use(eager)
        [lazy] = _read(json.dumps({"rows": [row]}).encode(), reader).items
        del lazy.id
        with pytest.raises(AttributeError) as info:
            first_use(lazy)
        assert str(info.value) == str(said.value), use
        assert info.value.name == "id", use
        assert info.value.obj is lazy, use


#: Malformed values (wire key, field, value): refused by msgspec and read by the hook, or
#: typed by msgspec and refused by the build.
MALFORMED = {
    "no timestamp": ("dateJoin", "date_join", "tok-secret"),
    "no UTC form": ("dateJoin", "date_join", "9999-12-31T23:00:00-05:00"),
    "NaN": ("annualRevenue", "annual_revenue", "NaN"),
    "no integer": ("employeeNumber", "employee_number", "12a"),
    "no object": ("attr", "attr", [1, 2]),
}


@pytest.mark.parametrize("reader", [FAST_LAZY, LENIENT_LAZY], ids=["fast", "lenient"])
@pytest.mark.parametrize("malformed", list(MALFORMED))
def test_a_lazy_customers_malformed_field_raises_on_its_read_naming_the_record_and_the_field(
    reader: Any, malformed: str
) -> None:
    wire, field, value = MALFORMED[malformed]
    rows = [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b", wire: value, "tagCount": 3, "gender": 1},
        {"id": 3, "name": "c"},
    ]
    body = json.dumps({"rows": rows, "records": 3}).encode()
    with pytest.raises(ResponseDecodeError, match=rf"record 1 \(id 2\), field '{wire}'"):
        _read(body, FAST)  # eager: the page refused
    first, second, third = _read(body, reader).items  # lazy: the page read
    assert (first.name, third.name) == ("a", "c")
    for _ in range(2):  # on every read of it
        with pytest.raises(ResponseDecodeError) as info:
            getattr(second, field)
        text = str(info.value)
        assert f"the record with id 2, field '{wire}'" in text
        assert text.startswith("the answer is not a page of customers: cannot read a Customer")
        assert info.value.__cause__ is None
        assert info.value.__context__ is None
    # The record's other fields still read.
    assert (second.id, second.name, second.gender) == (2, "b", Gender.MALE)
    assert (second.email, second.is_member) == (None, None)  # not sent: the default
    assert second.extra == {"tagCount": 3}
    second.extra = {"k": 1}
    assert second.extra == {"k": 1}
    assert "unreadable" in repr(second)
    with pytest.raises(ResponseDecodeError, match=f"field '{wire}'"):
        pickle.dumps(second)
    with pytest.raises(ResponseDecodeError, match=f"field '{wire}'"):
        assert second == first


async def test_list_lazy_walks_the_records_of_list(monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        DMHubSimulator(customers=40, seed=15) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url) as dm,
    ):
        sim.insert_customer({"name": "大数 小D", "attr": {"n": 10**22, "m": -(2**63) - 1}})
        eager = [c async for c in dm.customers.list(page_size=7, concurrency=3)]
        lazy = [c async for c in dm.customers.list(page_size=7, structure="lazy")]
        pages = [p async for p in dm.customers.list(page_size=7, structure="lazy").pages()]
        with pytest.raises(InvalidRequestError, match="structure must be 'eager' or 'lazy'"):
            dm.customers.list(structure="deferred")  # type: ignore[arg-type]
    assert len(lazy) == 41
    assert [repr(c) for c in lazy] == [repr(c) for c in eager]
    assert [c for page in pages for c in page.items] == eager


class _NoLoads:
    """``_json`` for ``_sansio`` with ``loads`` refused: a page decoded twice would fail."""

    dumps = staticmethod(_json.dumps)

    @staticmethod
    def loads(body: bytes) -> Any:
        raise AssertionError("a page decoded by _json.loads before its reader")


async def test_a_page_is_decoded_once_by_its_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        DMHubSimulator(customers=9, seed=1) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url) as dm,
    ):
        assert await dm.customers.count() == 9  # the token fetched, read as ever
        monkeypatch.setattr(_sansio, "_json", _NoLoads)
        records = await dm.customers.list(page_size=4).to_list()
        rows = await dm.customers.list_rows(page_size=4).to_list()
    assert [c.id for c in records] == [r["id"] for r in rows]
    assert len(records) == 9


async def test_statistics_yield_the_same_records_with_and_without_msgspec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        DMHubSimulator(customers=12, seed=3) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url) as dm,
    ):
        fast = await dm.customer_statistics.list(page_size=4, concurrency=2).to_list()
        lenient = lenient_page_reader(structure_statistics_list, "items")
        monkeypatch.setattr(customer_statistics, "read_statistics_page", lenient)
        slow = await dm.customer_statistics.list(page_size=4, concurrency=2).to_list()
    assert fast
    assert [repr(s) for s in fast] == [repr(s) for s in slow]
    assert read_statistics_page is not lenient


# --- the JSONL export writes the bytes the service sent -------------------------------------

#: Two rows as a service might write them: spaces, keys out of model order, a big integer, a
#: trailing zero, Chinese text, an escaped character and a field the model does not know.
SENT_ROWS = [
    b'{"name": "\xe5\xbc\xa0\xe4\xb8\x89 \xe5\xb0\x8fD", "id": 3, "annualRevenue": 1.50, '
    b'"attr": {"n": 12345678901234567890123, "m": -9223372036854775809}}',
    b'{"id":7,"levelScore":[10000000000000000000000],"jobTitle":"a\\"b\\u00e9"}',
]


async def test_an_exported_jsonl_line_is_the_row_as_the_service_sent_it(
    api: aioresponses, tokens: Any, make_client: Any, tmp_path: Path
) -> None:
    page = b'{"total": 1, "rows": [' + b", ".join(SENT_ROWS) + b'], "records": 2}'
    api.get(url("/v1/customers/count"), body=b"2", repeat=True)
    api.get(url("/v1/customers"), body=page, repeat=True)
    dest = tmp_path / "out.jsonl"

    report = await export_customers(make_client(), dest, progress=False)

    assert (report.exported, report.verified) == (2, None)
    # Before: b'{"name":"张三 小D","id":3,"annualRevenue":1.5,"attr":{"n": ...' (re-encoded).
    assert dest.read_bytes() == b"".join(row + b"\n" for row in SENT_ROWS)


async def test_a_checked_export_writes_every_row_as_the_service_sends_it(tmp_path: Path) -> None:
    async with (
        DMHubSimulator(customers=30, seed=4) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url) as dm,
    ):
        big = sim.insert_customer({"name": "大数", "attr": {"n": 10**22}})
        dest, checkpoint = tmp_path / "out.jsonl", tmp_path / "out.ckpt"
        first = await export_customers(
            dm, dest, page_size=10, progress=False, checkpoint=checkpoint, verify="always"
        )
        written = dest.read_bytes()
        # What the service sends for each customer: its row, compact, as the simulator writes it.
        rows = await dm.customers.list_rows(page_size=100).to_list()
    assert first.verified
    assert written.splitlines() == [_json.dumps(row) for row in rows]
    assert json.loads(written.splitlines()[-1])["attr"] == {"n": 10**22}
    assert json.loads(written.splitlines()[-1])["id"] == big["id"]


# --- unknown keys: learnt by the typed decode, still in extra ----------------------------------

_UNKNOWN = st.dictionaries(
    st.sampled_from(["tagCount", "levelScore", "x-y", "名字", "a`b", 'q"\\']),
    st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)),
    max_size=3,
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.tuples(_ROWS, _UNKNOWN), max_size=4), min_size=1, max_size=4))
@example([[({"id": 1}, {"tagCount": 2**64})], [({"id": 2}, {"levelScore": None, "名字": [1]})]])
# a gender the model does not know beside learnt keys, one of them only on some records, and a
# key that must be quoted in the generated build
@example(
    [
        [({"id": 3, "gender": 7}, {"levelScore": 1, 'q"\\': 2}), ({"id": 4}, {'q"\\': None})],
        [({"id": 5, "gender": "x"}, {}), ({"id": 6}, {"levelScore": [1]})],
    ]
)
def test_unknown_keys_learnt_by_the_typed_decode_land_in_extra(
    pages: list[list[tuple[dict[str, Any], dict[str, Any]]]],
) -> None:
    lenient = lenient_page_reader(structure_customers, "rows")
    reader = wire_struct.page_reader(
        Customer, make_converter(), "rows", ("records",), lenient
    )  # a new reader: what it learns stays in this test
    for pairs in pages:  # page after page: the keys learnt on one serve the next
        rows = [{**row, **unknown} for row, unknown in pairs]
        body = json.dumps({"rows": rows, "records": len(rows)}, ensure_ascii=False).encode()
        models, keys = reader(body)
        assert models == lenient(body)[0]
        for model, (_, unknown) in zip(models, pairs, strict=True):
            assert {k: model.extra.get(k, "missing") for k in unknown} == unknown
        assert keys == {"records": len(rows)}


def test_a_page_reader_learns_at_most_so_many_unknown_keys() -> None:
    lenient = lenient_page_reader(structure_customers, "rows")
    reader = wire_struct.page_reader(Customer, make_converter(), "rows", (), lenient)
    many = {f"k{i}": i for i in range(wire_struct.MAX_UNKNOWN_KEYS + 5)}
    body = json.dumps({"rows": [{"id": 1, **many}, {"id": 2, "k0": "x"}]}).encode()
    models, _ = reader(body)
    assert models == lenient(body)[0]
    assert models[0].extra == many


def test_a_page_the_typed_build_refuses_midway_is_refused_as_the_lenient_way_does() -> None:
    # The page's models are built in one loop (codegen.make_page_build_fn): a record it
    # refuses after others were built leaves none of them behind, and the page is read again
    # the lenient way, whose error names the record and the field.
    lenient = lenient_page_reader(structure_customers, "rows")
    reader = wire_struct.page_reader(Customer, make_converter(), "rows", (), lenient)
    good = {"id": 1, "dateJoin": "2020-01-01T08:00:00+08:00", "tagCount": 1}
    bad = {"id": 2, "dateJoin": "9999-12-31T23:00:00-05:00"}  # no UTC form
    body = json.dumps({"rows": [good, bad, good]}).encode()
    with pytest.raises(ValueError, match=r"record 1 \(id 2\), field 'dateJoin'"):
        reader(body)
    body = json.dumps({"rows": [good, {**bad, "dateJoin": None}, good]}).encode()
    assert reader(body)[0] == lenient(body)[0]
    assert reader(body)[0][0].date_join == datetime(2020, 1, 1, tzinfo=timezone.utc)


#: A customer as the service sends it, every key in its order (docs/contract.md "Customer
#: model"), and one the model does not know.
FULL_ROW = {
    **DOC_CUSTOMER,
    "id": 3000000001,
    "mobileVerified": True,
    "dateJoin": "2017-06-06T03:18:23Z",
    "employeeNumber": 2**64,
    "annualRevenue": 1.50,
    "ownerId": "u-17",
    "ownerName": "销售一部",
    "lastUpdated": "2017-06-06T03:18:23.1234567Z",
    "isMember": True,
    "attr": {"attr1": "西门剑铺"},
    "tagCount": 2,
}


@pytest.mark.parametrize(
    ("model", "sent", "simulated"),
    [
        (Customer, tuple(DOC_CUSTOMER), CUSTOMER_FIELDS),
        (CustomerStatistics, tuple(DOC_STATISTICS), STATISTICS_FIELDS),
    ],
    ids=["customers", "statistics"],
)
def test_the_typed_reader_takes_a_records_keys_in_the_order_the_service_sends_them(
    model: type, sent: tuple[str, ...], simulated: tuple[str, ...]
) -> None:
    # msgspec finds each key of a record at its first guess when the Struct's fields come in
    # the record's order; in the model's order it scanned for four of a customer's (4% of the
    # decode, benchmarks/HISTORY.md, the thirtieth round). The order is the contract's
    # examples' (test_converter's, written from docs/contract.md), not the constants the
    # reader is built from: a wrong constant fails here. The simulator sends them as the
    # service does.
    struct = wire_struct.wire_struct(model)
    assert [f.encode_name for f in msgspec.structs.fields(struct)] == list(sent)
    assert simulated == sent
    assert {a.name for a in attrs.fields(model)} - {"extra"} == set(wire_order(model))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.permutations(list(FULL_ROW.items())), st.integers(0, 2))
@example(list(FULL_ROW.items()), 0)  # the service's order
@example([(k, FULL_ROW[k]) for k in [*wire_names(Customer).values(), "tagCount"]], 0)  # the model's
def test_a_customers_keys_in_any_order_are_read_as_the_lenient_way_reads_them(
    items: list[tuple[str, Any]], dropped: int
) -> None:
    row = dict(items[dropped:])  # some keys missing too, as with select=
    body = json.dumps({"rows": [row, row], "records": 2}, ensure_ascii=False).encode()
    lenient = lenient_page_reader(structure_customers, "rows")
    reader = wire_struct.page_reader(Customer, make_converter(), "rows", ("records",), lenient)
    models, keys = reader(body)
    assert [repr(m) for m in models] == [repr(m) for m in lenient(body)[0]]
    assert (models[0].owner_id, models[0].employee_number) == (
        row.get("ownerId"),
        row.get("employeeNumber"),
    )
    assert keys == {"records": 2}


#: A statistics item as the service sends it (docs/contract.md "customer statistics").
FULL_ITEM = {**DOC_STATISTICS, "orderTotalAmount": 10**20, "totalScore": None}


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.permutations(list(FULL_ITEM.items())))
@example(list(FULL_ITEM.items()))  # the service's order
def test_a_statistics_items_keys_in_any_order_are_read_as_the_lenient_way_reads_them(
    items: list[tuple[str, Any]],
) -> None:
    body = json.dumps({"items": [dict(items)], "meta": {"records": 1}}).encode()
    lenient = lenient_page_reader(structure_statistics_list, "items")
    models, keys = read_statistics_page(body)
    assert [repr(m) for m in models] == [repr(m) for m in lenient(body)[0]]
    assert (models[0].id, models[0].order_total_amount) == (10948, Decimal(10**20))
    assert keys == {"meta": {"records": 1}}


# --- raw rows read in two passes: the same rows, ids and keys -------------------------------

KEYS = ("records", "total", "error_code")


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(_ROWS, max_size=5), st.booleans())
@example([BIG_ROW], True)
def test_raw_rows_of_named_keys_are_the_raw_rows(rows: list[dict[str, Any]], indent: bool) -> None:
    page = {"total": 3, "rows": rows, "records": 250, "meta": {"x": 1}}
    body = json.dumps(page, ensure_ascii=False, indent=1 if indent else None).encode()
    every, named = _json.raw_rows(body), _json.raw_rows(body, "rows", KEYS)
    assert (named.rows, named.ids) == (every.rows, every.ids)
    assert named.page == {"records": 250, "total": 3}
    assert all(b"\n" not in row for row in named.rows)  # rows spread over lines: one line each


@pytest.mark.parametrize("body", [b"[1]", b'{"rows": [1, 2]}', b'{"rows": {}}', b"{", b"\xff"])
def test_raw_rows_of_named_keys_of_what_is_no_page_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - msgspec's and the stdlib's errors differ
        _json.raw_rows(body, "rows", KEYS)


def _sendable(text: object, limit: int, *, empty: bool = False, controls: bool = False) -> bool:
    """The contract's rule for an identity's text, written out: the check's oracle.

    ``controls``: whether control characters (C0, DEL, C1) may be sent: not in a type or a
    value, which go in the query string (request() refuses them in a path too)."""
    if not isinstance(text, str) or len(text) > limit or (not text and not empty):
        return False
    if not controls and any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _mangled(kind: str, value: str) -> bool:
    """A number a spreadsheet or a float wrote (any type), a mobile that is no digits, or a
    mobile or an email with a space at either end."""
    if re.fullmatch(r"[0-9](\.[0-9]+)?[eE]\+[0-9]{2,}", value):
        return True
    if kind in ("mobile", "email") and value != value.strip():
        return True
    if kind == "email":
        return any("\uff01" <= c <= "\uff5e" or c == "\u3002" for c in value)
    return kind == "mobile" and bool(
        re.fullmatch(r"\+?[0-9]+\.0+", value) or value[:1] in ("'", "=") or not value.isascii()
    )


class _Str(str):
    """A str subclass: not the fast path's exact type, still a string."""


_TEXTS = st.one_of(
    st.text(max_size=140),  # lone surrogates, non-ASCII, empty and over-long among them
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=30, max_size=130),
    st.builds(_Str, st.text(max_size=40)),
    st.sampled_from([None, 7, b"bytes"]),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_TEXTS, _TEXTS, st.one_of(st.none(), _TEXTS))
@example("wechat", "o" * 128, None)  # at the limits: sent
@example("w" * 33, "o1", None)  # one over: refused
@example("", "o1", None)  # empty: refused
@example("wechat", "", None)
@example("wechat", "\udcff", None)  # a lone surrogate is no UTF-8: refused
@example("\udcff", "o1", None)
@example("wechat", "o1", "\udcff")
@example("0", "\x1f", None)  # a control character: refused (CI found it, derandomized)
@example("we\tchat", "o1", None)
@example("wechat", "o\x85", None)  # C1, in a value that is not ASCII
@example("wechat", "o1", "a\tname")  # in a name: sent, as before
@example("mobile", "13800138000.0", None)  # a float's digits: refused
@example("mobile", "+8613800138000", None)  # sent
@example("email", "a\uff20b.c", None)  # a full-width at sign: refused
@example("email", "a@b.c ", None)  # pasted with a space: refused
@example("mobile", " 13800138000", None)
@example("wechat", " o-1 ", None)  # another type's: sent
@example("x", "1.5E+10", None)  # scientific notation, any type: refused
def test_an_identity_is_sent_exactly_when_the_contract_allows_it(
    kind: Any, value: Any, name: Any
) -> None:
    """``check_identity`` (its ASCII fast path and its full one) against the rule itself."""
    identity = Identity(kind, value, name)
    allowed = (
        _sendable(kind, MAX_IDENTITY_TYPE)
        and _sendable(value, MAX_IDENTITY_VALUE)
        and (name is None or _sendable(name, MAX_IDENTITY_NAME, empty=True, controls=True))
        and not _mangled(kind, value)
    )
    if allowed:
        assert check_identity("lookup", identity) is identity
    else:
        with pytest.raises(InvalidRequestError, match=r"^lookup\(\): identity "):
            check_identity("lookup", identity)


# -- a lookup reads the usual answer in place: what the converter's bindings would give ------

_WANTED = Identity("mobile", "13900000000")
_BINDING_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.sampled_from(["mobile", "13900000000", "wechat", "12", "１２", " 12", ""]),
    st.lists(st.integers(), max_size=1),
)
_BINDING_KEYS = st.sampled_from(["customerId", "identityType", "identityValue", "identityName"])
_BINDINGS = st.lists(
    st.one_of(
        st.dictionaries(_BINDING_KEYS | st.just("other"), _BINDING_VALUES, max_size=5),
        st.fixed_dictionaries(  # well-formed, the wanted identity or another
            {
                "customerId": st.integers(min_value=1, max_value=2**64),
                "identityType": st.sampled_from(["mobile", "wechat"]),
                "identityValue": st.sampled_from(["13900000000", "o1"]),
            },
            optional={"identityName": st.none() | st.text(max_size=3), "other": _BINDING_VALUES},
        ),
        _BINDING_VALUES,  # not an object at all
    ),
    max_size=4,
)


def _converters_answer(data: Any) -> Any:
    """What the lookup returned before it read rows in place: the converter's bindings."""
    try:
        bindings = _pages.decode(identities.structure_identities, data, "a list of identities")
    except ResponseDecodeError as err:
        return ("error", str(err))
    for binding in bindings:
        if binding.type == _WANTED.type and binding.value == _WANTED.value:
            return binding.customer_id
    return None


class _Answering:
    """A session that answers every request with ``data``."""

    closed = False

    def __init__(self, data: Any) -> None:
        self.data = data

    def check_open(self) -> None:
        """Open, as a client's session says when it is."""

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.data


@settings(max_examples=400)
@given(data=_BINDINGS)
@example(data=[{"customerId": 1, "identityType": "mobile", "identityValue": "13900000000"}])
@example(data=[{"customerId": "7", "identityType": "mobile", "identityValue": "13900000000"}])
@example(data=[{"customerId": True, "identityType": "mobile", "identityValue": "13900000000"}])
@example(data=[{"customerId": "-5", "identityType": "mobile", "identityValue": "13900000000"}])
@example(data=[{"customerId": "0012", "identityType": "mobile", "identityValue": "13900000000"}])
@example(
    data=[{"customerId": "1" * 4301, "identityType": "mobile", "identityValue": "13900000000"}]
)
@example(data=[{"customerId": "１２", "identityType": "mobile", "identityValue": "13900000000"}])
@example(  # the service's text ids, the match second
    data=[
        {"customerId": "8", "identityType": "wechat", "identityValue": "o1"},
        {"customerId": "9", "identityType": "mobile", "identityValue": "13900000000"},
    ]
)
@example(  # the match first, a malformed row after it: still the converter's error
    data=[
        {"customerId": 1, "identityType": "mobile", "identityValue": "13900000000"},
        {"customerId": 2, "identityType": "mobile"},
    ]
)
@example(  # two matches: the first
    data=[
        {"customerId": 1, "identityType": "mobile", "identityValue": "13900000000"},
        {"customerId": 2, "identityType": "mobile", "identityValue": "13900000000"},
    ]
)
@example(
    data=[
        {
            "customerId": 3,
            "identityType": "mobile",
            "identityValue": "13900000000",
            "identityName": 5,
        }
    ]
)
@example(  # a name the converter cannot read as text: its error
    data=[
        {
            "customerId": 3,
            "identityType": "mobile",
            "identityValue": "13900000000",
            "identityName": [1],
        }
    ]
)
@example(data=[None])
async def test_a_lookup_reads_the_answer_as_the_converters_bindings(data: Any) -> None:
    ids = identities.Identities(_Answering(data))  # type: ignore[arg-type]
    try:
        found: Any = await ids._lookup(_WANTED, in_own_task=False)
    except ResponseDecodeError as err:
        found = ("error", str(err))
    assert found == _converters_answer(data)
    assert type(found) is type(_converters_answer(data))
    # lookup_many's workers read each answer themselves (a coroutine less a lookup): the same.
    many: Any = (await ids.lookup_many([_WANTED], return_exceptions=True))[_WANTED]
    if isinstance(many, ResponseDecodeError):
        many = ("error", str(many))
    assert many == found
    assert type(many) is type(found)


async def test_lookup_many_sends_its_lookups_without_a_coroutine_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a lookup 64 at a time costs (issue 15): lookup_many's workers send each lookup
    themselves, without _lookup's coroutine between (about 1k instructions a lookup)."""
    looked_up: list[Identity] = []
    lookup = identities.Identities._lookup

    async def counted(self: Any, identity: Identity, *, in_own_task: bool) -> Any:
        looked_up.append(identity)
        return await lookup(self, identity, in_own_task=in_own_task)

    monkeypatch.setattr(identities.Identities, "_lookup", counted)
    ids = identities.Identities(_Answering([]))  # type: ignore[arg-type]

    assert await ids.lookup_many([_WANTED]) == {_WANTED: None}
    assert looked_up == []
    assert await ids.lookup(_WANTED) is None
    assert looked_up == [_WANTED]  # lookup()'s own


# -- the proxy of the environment: urllib's answer, from the variables it can use ---------------

_PROXY_NAMES = [
    *("http_proxy", "HTTP_PROXY", "Http_Proxy", "HTTP_proxy", "https_proxy", "HTTPS_PROXY"),
    *("no_proxy", "NO_PROXY", "all_proxy", "ftp_PROXY", "_proxy", "proxy", "PROXYS", "PATH"),
    "REQUEST_METHOD",  # a CGI script: an upper-case HTTP_PROXY may be a request's header
]
_PROXY_VALUES = ["", "http://p1:3128", "http://p2", "*", "api.test,.example.com", "127.0.0.1"]
_PROXIED_URLS = [
    "https://api.test",
    "http://api.test:8080",
    "https://a.example.com",
    "http://127.0.0.1:9",
    "https://elsewhere.test",
]


@settings(max_examples=300)
@given(
    env=st.lists(
        st.tuples(st.sampled_from(_PROXY_NAMES), st.sampled_from(_PROXY_VALUES)), max_size=8
    ),
    target=st.sampled_from(_PROXIED_URLS),
)
@example(env=[("HTTP_PROXY", "http://p1:3128"), ("REQUEST_METHOD", "")], target=_PROXIED_URLS[1])
@example(env=[("HTTPS_PROXY", "http://p1:3128"), ("https_proxy", "")], target=_PROXIED_URLS[0])
@example(env=[("Http_Proxy", "http://p1"), ("HTTP_PROXY", "http://p2")], target=_PROXIED_URLS[1])
@example(env=[("https_proxy", "http://p1"), ("NO_PROXY", ".example.com")], target=_PROXIED_URLS[2])
def test_the_proxy_read_from_the_environment_is_urllibs(
    env: list[tuple[str, str]], target: str
) -> None:
    # env_proxy reads only the *_proxy variables, once, where urllib reads them all twice.
    with mock.patch.dict(os.environ, dict(env), clear=True):
        assert environment_proxies() == urllib.request.getproxies_environment()
        parts = urlsplit(target)
        urllibs = (
            None
            if urllib.request.proxy_bypass(parts.hostname or "")
            else urllib.request.getproxies().get(parts.scheme)
        )
        assert env_proxy(target) == urllibs


async def test_a_call_whose_token_is_held_reads_the_clock_once() -> None:
    """What a lookup costs (issue 15): a call whose token is held reads the client's clock once
    (its start, which also tells the token is fresh), and its answer reads it only for a 429's
    or a 503's Retry-After: three reads a call were about 0.7k instructions of a lookup."""
    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return time.time()

    wanted = [Identity("mobile", str(13900000000 + i)) for i in range(5)]
    async with (
        DMHubSimulator(customers=3, seed=2) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url, clock=clock) as dm,
    ):
        await dm.identities.lookup(wanted[0])  # the token fetched and held
        reads = 0
        assert await dm.identities.lookup_many(wanted) == dict.fromkeys(wanted)
        assert reads == len(wanted)
        reads = 0
        query = {"identityType": "mobile", "identityValue": "13800000000"}
        assert await dm.request("GET", "/v1/customeridentities", params=query) == []
        assert reads == 1


async def test_a_call_whose_token_is_held_makes_no_request_object_for_its_usual_answer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What a lookup costs (issue 15): a call whose token is held and whose answer is the usual
    one (2xx, JSON, no error code) makes no Request (about 2.6k instructions a lookup); one is
    made for what needs it: an error, a log line, a body."""
    made: list[str] = []

    class Counted(Request):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self.path)

    monkeypatch.setattr("dmhub_async._session.Request", Counted)
    wanted = [Identity("mobile", str(13900000000 + i)) for i in range(5)]
    async with (
        DMHubSimulator(customers=3, seed=2) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url) as dm,
    ):
        await dm.identities.lookup(wanted[0])  # the token fetched and held
        made.clear()
        assert await dm.identities.lookup_many(wanted) == dict.fromkeys(wanted)
        assert await dm.identities.lookup(wanted[0]) is None
        query = {"identityType": "mobile", "identityValue": "13800000000"}
        assert await dm.request("GET", "/v1/customeridentities", params=query) == []
        assert made == []
        # An error still names its call, and a debug line the call it logs, personal data masked.
        with pytest.raises(APIError, match=r"^GET /v1/nowhere -> HTTP 404"):
            await dm.request("GET", "/v1/nowhere", params=query)
        made.clear()
        with caplog.at_level("DEBUG", logger="dmhub_async"):
            assert await dm.request("GET", "/v1/customeridentities", params=query) == []
        assert [r.getMessage().partition(" (")[0] for r in caplog.records] == [
            "GET /v1/customeridentities?identityType=mobile&identityValue=*** -> 200"
        ]
        assert made == ["/v1/customeridentities"]  # for the log line


async def test_a_walks_page_whose_token_is_held_is_sent_as_a_lookup_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a walk costs (issue 15, thirty-fourth round): a page whose token is held is sent
    from ``Session.request`` as a lookup is, without a ``_Call`` or the retry loop (about 17k
    instructions a page, with the page's frozen APIResponse no longer made), and its usual
    answer is read by its decode without a ``Request`` (about 4k). One that fails goes on as
    before: retried, its retries counted by the walk and by the client, every record once."""
    made: list[str] = []
    requests: list[str] = []

    class Counted(_session._Call):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self.request.path)

    class CountedRequest(Request):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            requests.append(self.path)

    async def no_wait(delay: float) -> None:
        pass

    monkeypatch.setattr(_session, "_Call", Counted)
    monkeypatch.setattr(_session, "Request", CountedRequest)
    async with (
        DMHubSimulator(customers=30, seed=2) as sim,
        DMHubClient(app_id=sim.app_id, secret=sim.secret, base_url=sim.url, sleep=no_wait) as dm,
    ):
        assert await dm.customers.count() == 30  # the token fetched and held
        made.clear()
        requests.clear()
        walk = dm.customers.list(page_size=10)
        ids = [customer.id for customer in await walk.to_list()]
        assert len(set(ids)) == 30
        assert made == []
        assert requests == []
        assert dm.last_response is not None
        assert dm.last_response.status == 200
        assert (walk.stats.pages, walk.stats.retries, dm.stats.retries) == (3, 0, 0)

        sim.faults.paths = ("GET /v1/customers",)
        sim.faults.script(["ok", "503"])  # page 2 answered 503 once
        walk = dm.customers.list(page_size=10)
        assert [customer.id for customer in await walk.to_list()] == ids
        assert made == ["/v1/customers"]  # the failed page's call goes on through the loop
        assert requests == ["/v1/customers"] * 2  # for the 503's error, and for the loop
        assert (walk.stats.pages, walk.stats.retries, dm.stats.retries) == (3, 1, 1)


def test_a_mobile_is_checked_by_its_value_alone() -> None:
    """What a lookup costs (issue 15): a mobile's type is the contract's own, known to be within
    the limits, so only its value is looked at (about 1.5k instructions a lookup): ASCII digits
    alone. What is not goes the whole way, and is refused as ever."""
    called: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__self__", None) == "mobile":
            called.append(arg.__name__)

    sys.setprofile(profile)
    try:
        check_identity("lookup_many", Identity("mobile", "13800138000"))
    finally:
        sys.setprofile(None)
    assert called == []
    for value in ("1.38E+10", "１３８００１３８０００", "138\t00"):
        with pytest.raises(InvalidRequestError):
            check_identity("lookup_many", Identity("mobile", value))
