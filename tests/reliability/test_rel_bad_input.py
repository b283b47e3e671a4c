"""Bad input everywhere, and a fuzzed response decoder.

Every public method given a wrong type, an empty value or an over-long one raises
``InvalidRequestError`` or ``TypeError`` before anything is sent: the simulator's counters
stay at zero requests, token request included. And ``read_response``, fed arbitrary bytes,
JSON values, statuses and headers, returns a value for a 2xx JSON answer without an error
code, and otherwise raises ``ResponseDecodeError`` or another ``APIError``, never anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import inspect
import itertools
import json
import math
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pytest
import redis
import redis.asyncio.cluster
from aiohttp import web
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dmhub_async import (
    APIError,
    CustomerFilters,
    DMHubClient,
    FileTokenStore,
    Identity,
    InvalidRequestError,
    MemoryTokenStore,
    Page,
    RedisTokenStore,
    ResponseDecodeError,
    RetryPolicy,
)
from dmhub_async._exceptions import coerce_code
from dmhub_async._sansio import TOKEN_PATH, Request, read_response
from dmhub_async._validate import FIELD_TYPES, MAX_URL_LENGTH, short
from dmhub_async.export import export_customers
from dmhub_async.testing import DMHubSimulator

OK = Identity("wechat", "o-123")
LONG_TYPE = Identity("t" * 33, "v")
LONG_VALUE = Identity("wechat", "v" * 129)
LONG_NAME = Identity("wechat", "v", name="n" * 257)
EMPTY = Identity("", "")
Call = Callable[[DMHubClient], Any]

CASES: dict[str, Call] = {
    # customers.create / create_with_identities / update: types, sizes, unknown keywords
    "create: unknown keyword": lambda dm: dm.customers.create(nmae="x"),
    "create: over-long home_address": lambda dm: dm.customers.create(home_address="x" * 513),
    "create: over-long office_address": lambda dm: dm.customers.create(office_address="x" * 513),
    "create: gender 3": lambda dm: dm.customers.create(gender=3),
    "create: bool employee_number": lambda dm: dm.customers.create(employee_number=True),
    # The reference types employeeNumber Integer (a 32-bit int, where ids are Long): a larger
    # one was sent, and the simulator stored it, where the live service cannot read it.
    "create: employee_number past a 32-bit int": lambda dm: dm.customers.create(
        employee_number=2**31
    ),
    "update: employee_number below a 32-bit int": lambda dm: dm.customers.update(
        1, employee_number=-(2**31) - 1
    ),
    "upsert: employee_number of 64 bits": lambda dm: dm.customers.create_with_identities(
        [OK], employee_number=2**63
    ),
    "create: attr not a dict": lambda dm: dm.customers.create(attr="x"),
    "create: attr key not str": lambda dm: dm.customers.create(attr={1: "x"}),
    "create: create_method int": lambda dm: dm.customers.create(name="x", create_method=5),
    # Sent before: a Decimal NaN or infinity as the string "NaN" (in attr, stored as such), an
    # amount as text as it was typed (Python's Decimal reads "1_000" and "Infinity").
    "create: annual_revenue Decimal NaN": lambda dm: dm.customers.create(
        annual_revenue=Decimal("NaN")
    ),
    "create: annual_revenue Decimal -Infinity": lambda dm: dm.customers.create(
        annual_revenue=Decimal("-Infinity")
    ),
    "create: annual_revenue Decimal sNaN": lambda dm: dm.customers.create(
        annual_revenue=Decimal("sNaN")
    ),
    "create: attr holding a Decimal NaN": lambda dm: dm.customers.create(
        attr={"score": [Decimal("NaN")]}
    ),
    "update: annual_revenue 'abc'": lambda dm: dm.customers.update(1, annual_revenue="abc"),
    "update: annual_revenue '1_000'": lambda dm: dm.customers.update(1, annual_revenue="1_000"),
    "update: annual_revenue 'Infinity'": lambda dm: dm.customers.update(
        1, annual_revenue="Infinity"
    ),
    # A number's text whose exponent no Decimal holds: a raw decimal.InvalidOperation (no
    # DMHubError, no ValueError) from inside the converter, naming nothing.
    "create: annual_revenue '1e-9999999999999999999999'": lambda dm: dm.customers.create(
        annual_revenue="1e-9999999999999999999999"
    ),
    "upsert: annual_revenue '1E+9999999999999999999'": lambda dm: (
        dm.customers.create_with_identities([OK], annual_revenue="1E+9999999999999999999")
    ),
    "create: annual_revenue 1E+5000": lambda dm: dm.customers.create(
        annual_revenue=Decimal("1E+5000")
    ),
    "upsert: no identities": lambda dm: dm.customers.create_with_identities([]),
    "upsert: a str": lambda dm: dm.customers.create_with_identities("wechat"),
    "upsert: one Identity, not a list": lambda dm: dm.customers.create_with_identities(OK),
    "upsert: a tuple for an Identity": lambda dm: dm.customers.create_with_identities(
        [("wechat", "v")]
    ),
    "upsert: empty identity": lambda dm: dm.customers.create_with_identities([EMPTY]),
    "upsert: over-long type": lambda dm: dm.customers.create_with_identities([LONG_TYPE]),
    "upsert: over-long value": lambda dm: dm.customers.create_with_identities([LONG_VALUE]),
    "upsert: over-long name": lambda dm: dm.customers.create_with_identities([LONG_NAME]),
    # Sent as identityType=we%09chat, identityValue=a%00b: control characters, which
    # request() refuses in a path.
    "lookup: a tab in the type": lambda dm: dm.identities.lookup(Identity("we\tchat", "o-1")),
    "lookup: a NUL in the value": lambda dm: dm.identities.lookup(Identity("wechat", "a\x00b")),
    "add: a C1 control in a unicode value": lambda dm: dm.identities.add(
        1, Identity("wechat", "微信\x85")
    ),
    "lookup_many: a line break in a value": lambda dm: dm.identities.lookup_many(
        [OK, Identity("mobile", "139\n")]
    ),
    # A byte order mark: the first value of an Excel "CSV UTF-8" file read as utf-8 (Python's
    # usual way, not utf-8-sig), or of a second file joined to the first. Sent as %EF%BB%BF,
    # it matched no one: the customer holding "o-123" was "not found".
    "lookup: a byte order mark before the value": lambda dm: dm.identities.lookup(
        Identity("wechat", "\ufeffo-123")
    ),
    "lookup_many: a byte order mark before a type": lambda dm: dm.identities.lookup_many(
        [OK, Identity("\ufeffwechat", "o-1")]
    ),
    "count: mobile with a byte order mark": lambda dm: dm.customers.count(
        mobile="\ufeff13800000000"
    ),
    # Invisible direction and zero-width marks, which copying a number or an address carries
    # (a Windows contact card wraps a phone number in U+202A ... U+202C; web pages and chat
    # apps leave U+200B): sent percent-encoded, they matched no one, a bound identity answered
    # "not found" and an export of the filter wrote nothing and called itself complete.
    "count: mobile copied from a contact card": lambda dm: dm.customers.count(
        mobile="\u202a13900000000\u202c"
    ),
    "list: email with a zero-width space": lambda dm: dm.customers.list(email="a@b.c\u200b"),
    "list_rows: source with a right-to-left mark": lambda dm: dm.customers.list_rows(
        source="\u200fweb"
    ),
    "lookup: a mobile identity from a contact card": lambda dm: dm.identities.lookup(
        Identity("mobile", "\u202a13900000000\u202c")
    ),
    "lookup_many: a word joiner in a type": lambda dm: dm.identities.lookup_many(
        [OK, Identity("wechat\u2060", "o-1")]
    ),
    # A number a spreadsheet or a float's str() mangled, an address typed in full-width: no
    # service holds them. Looked up, "not found"; bound, a customer no one finds by mobile.
    "lookup: a mobile written as a float": lambda dm: dm.identities.lookup(
        Identity("mobile", "13800138000.0")
    ),
    "find: a number in scientific notation": lambda dm: dm.identities.find(
        Identity("member-card", "6.22848e+18")
    ),
    "add: a mobile with Excel's text mark": lambda dm: dm.identities.add(
        1, Identity("mobile", "'13800138000")
    ),
    "upsert: an email typed in full-width": lambda dm: dm.customers.create_with_identities(
        [Identity("email", "wang\uff20example.com")], name="x"
    ),
    # The same numbers as a filter, or in the fields a create is matched on: an export of
    # mobile="13800138000.0" wrote nothing and called itself complete; a create made a second
    # customer holding the float's text as its mobile.
    "count: a mobile written as a float": lambda dm: dm.customers.count(mobile="13800138000.0"),
    "list: a mobile in scientific notation": lambda dm: dm.customers.list(mobile="1.38001E+10"),
    "list_rows: an email typed in full-width": lambda dm: dm.customers.list_rows(
        email="wang\uff20example.com"
    ),
    "create: a mobile with Excel's text mark": lambda dm: dm.customers.create(
        name="x", mobile="'13800138000"
    ),
    "update: a mobile in full-width digits": lambda dm: dm.customers.update(
        1, mobile="\uff11\uff13\uff18\uff10\uff10\uff11\uff13\uff18\uff10\uff10\uff10"
    ),
    "upsert: an email typed in full-width field": lambda dm: dm.customers.create_with_identities(
        [OK], email="wang@example\u3002com"
    ),
    # The same marks in the fields the service matches a create on: sent, the create matched
    # no one and made a second customer, whose mobile the mobile filter then refused to find.
    "create: mobile copied from a contact card": lambda dm: dm.customers.create(
        name="x", mobile="\u202a13900000000\u202c"
    ),
    "upsert: email with a zero-width space": lambda dm: dm.customers.create_with_identities(
        [OK], email="a@b.c\u200b"
    ),
    "update: mobile with a line break from a file": lambda dm: dm.customers.update(
        1, mobile="13900000000\n"
    ),
    # With a space at either end, pasted: a create matched no one by it and made a second
    # customer, whose mobile the filters then refused to look for (they refuse it too).
    "create: a mobile pasted with a space": lambda dm: dm.customers.create(
        name="x", mobile=" 13800000000"
    ),
    "upsert: an email field with a space after it": lambda dm: dm.customers.create_with_identities(
        [OK], email="a@b.c "
    ),
    "update: a mobile with a space after it": lambda dm: dm.customers.update(
        1, mobile="13800000000 "
    ),
    "lookup: a mobile identity pasted with a space": lambda dm: dm.identities.lookup(
        Identity("mobile", " 13800000000")
    ),
    "upsert: an email identity with a space after it": lambda dm: (
        dm.customers.create_with_identities([Identity("email", "a@b.c ")], name="x")
    ),
    "upsert: bad field": lambda dm: dm.customers.create_with_identities([OK], name=5),
    "get: str id": lambda dm: dm.customers.get("1"),
    "get: float id": lambda dm: dm.customers.get(1.0),
    "get: bool id": lambda dm: dm.customers.get(True),
    "get: None": lambda dm: dm.customers.get(None),
    "get: negative id": lambda dm: dm.customers.get(-1),
    "get: id over 64 bits": lambda dm: dm.customers.get(2**63),
    "update: no field": lambda dm: dm.customers.update(1),
    "update: str id": lambda dm: dm.customers.update("1", name="x"),
    "update: unknown keyword": lambda dm: dm.customers.update(1, nmae="x"),
    "update: over-long address": lambda dm: dm.customers.update(1, home_address="x" * 513),
    "delete: str id": lambda dm: dm.customers.delete("1"),
    "delete: None": lambda dm: dm.customers.delete(None),
    # count / list / list_rows filters and paging
    "count: unknown filter": lambda dm: dm.customers.count(stag="lead"),
    "count: stage int": lambda dm: dm.customers.count(stage=1),
    "count: empty source": lambda dm: dm.customers.count(source=""),
    "count: empty email": lambda dm: dm.customers.count(email=""),
    "count: mobile int": lambda dm: dm.customers.count(mobile=18612341234),
    "count: gender 5": lambda dm: dm.customers.count(gender=5),
    "count: gender str": lambda dm: dm.customers.count(gender="1"),
    "count: gender float": lambda dm: dm.customers.count(gender=1.0),
    # A control character matched no one: a mobile read from a file with its line's end.
    "count: mobile with a line's end": lambda dm: dm.customers.count(mobile="13800000000\n"),
    "count: stage with a tab": lambda dm: dm.customers.count(stage="lead\t"),
    "list: source with a NUL": lambda dm: dm.customers.list(source="web\x00"),
    "list_rows: email with a DEL": lambda dm: dm.customers.list_rows(email="a@b.c\x7f"),
    # A value pasted with a space around it matched no one, and an export of it was complete.
    "count: mobile with a leading space": lambda dm: dm.customers.count(mobile=" 13900000000"),
    "list: email with a trailing space": lambda dm: dm.customers.list(email="a@b.c "),
    "list_rows: mobile with a no-break space": lambda dm: dm.customers.list_rows(
        mobile="13900000000\u00a0"
    ),
    "count: empty id_list": lambda dm: dm.customers.count(id_list=[]),
    "count: id_list str": lambda dm: dm.customers.count(id_list="1,2"),
    "count: id_list of str": lambda dm: dm.customers.count(id_list=["1"]),
    "count: bad date": lambda dm: dm.customers.count(date_created_from="yesterday"),
    "count: empty date": lambda dm: dm.customers.count(last_updated_to=""),
    "count: date int": lambda dm: dm.customers.count(date_created_to=1_700_000_000),
    "list: page_size 0": lambda dm: dm.customers.list(page_size=0),
    "list: page_size str": lambda dm: dm.customers.list(page_size="10"),
    "list: start_page 0": lambda dm: dm.customers.list(start_page=0),
    "list: concurrency 0": lambda dm: dm.customers.list(concurrency=0),
    "list: max_items -1": lambda dm: dm.customers.list(max_items=-1),
    "list: sort_order up": lambda dm: dm.customers.list(sort_order="up"),
    "list: sort_by int": lambda dm: dm.customers.list(sort_by=5),
    "list: sort_by unknown": lambda dm: dm.customers.list(sort_by="shoe_size"),
    "list: select unknown": lambda dm: dm.customers.list(select=["shoe_size"]),
    "list: unknown filter": lambda dm: dm.customers.list(stag="lead"),
    "list_rows: page_size 0": lambda dm: dm.customers.list_rows(page_size=0),
    "list_rows: gender 9": lambda dm: dm.customers.list_rows(gender=9),
    # identities
    "add: str id": lambda dm: dm.identities.add("1", OK),
    "add: str identity": lambda dm: dm.identities.add(1, "wechat"),
    "add: empty identity": lambda dm: dm.identities.add(1, EMPTY),
    "add: over-long type": lambda dm: dm.identities.add(1, LONG_TYPE),
    "add: over-long value": lambda dm: dm.identities.add(1, LONG_VALUE),
    "add: over-long name": lambda dm: dm.identities.add(1, LONG_NAME),
    "identities.list: empty": lambda dm: dm.identities.list([]),
    "identities.list: str": lambda dm: dm.identities.list("1,2"),
    "identities.list: int": lambda dm: dm.identities.list(5),
    "identities.list: str ids": lambda dm: dm.identities.list(["1"]),
    "identities.list: negative id": lambda dm: dm.identities.list([-1]),
    "find: str": lambda dm: dm.identities.find("wechat"),
    "find: empty value": lambda dm: dm.identities.find(Identity("wechat", "")),
    "find: over-long value": lambda dm: dm.identities.find(LONG_VALUE),
    "lookup: None": lambda dm: dm.identities.lookup(None),
    "lookup_many: one bad among good": lambda dm: dm.identities.lookup_many([OK, "bad"]),
    "lookup_many: over-long": lambda dm: dm.identities.lookup_many([OK, LONG_TYPE]),
    "lookup_many: concurrency 0": lambda dm: dm.identities.lookup_many([OK], concurrency=0),
    "lookup_iter: concurrency str": lambda dm: dm.identities.lookup_iter([OK], concurrency="4"),
    "lookup_iter: a bad one first": lambda dm: dm.identities.lookup_iter([EMPTY, OK]),
    # customer statistics
    "statistics: str customer_id": lambda dm: dm.customer_statistics.list(customer_id="x"),
    "statistics: negative customer_id": lambda dm: dm.customer_statistics.list(customer_id=-1),
    "statistics: sort_order up": lambda dm: dm.customer_statistics.list(sort_order="up"),
    "statistics: empty sort_by": lambda dm: dm.customer_statistics.list(sort_by=""),
    "statistics: page_size 0": lambda dm: dm.customer_statistics.list(page_size=0),
    # issue 12 item 8: sent as is (a filter silently changed, a URL no server takes), or a raw
    # TypeError/OverflowError/RecursionError/ValueError/UnicodeEncodeError, before or after
    # a token request
    "count: lone surrogate in stage": lambda dm: dm.customers.count(stage="lead\udcff"),
    "list: lone surrogate in email": lambda dm: dm.customers.list(email="a\ud800@b.c"),
    "find: lone surrogate in value": lambda dm: dm.identities.find(Identity("wechat", "\udcff")),
    "add: lone surrogate in name": lambda dm: dm.identities.add(1, Identity("w", "v", "\ud800")),
    "create: lone surrogate in name": lambda dm: dm.customers.create(name="\ud800"),
    "create: lone surrogate in create_method": lambda dm: dm.customers.create(
        name="x", create_method="\udcff"
    ),
    "update: lone surrogate in an attr key": lambda dm: dm.customers.update(1, attr={"k\udcff": 1}),
    "count: a 10 MB stage": lambda dm: dm.customers.count(stage="x" * 10_000_000),
    "statistics: a 1 MB sort_by": lambda dm: dm.customer_statistics.list(sort_by="x" * 1_000_000),
    "list: select an int": lambda dm: dm.customers.list(select=5),
    "list: select a list in a list": lambda dm: dm.customers.list(select=[["name"]]),
    # Sent as select=id: a file of ids alone, where a list built empty meant no choice made.
    "list: select an empty list": lambda dm: dm.customers.list(select=[]),
    "list_rows: select an empty tuple": lambda dm: dm.customers.list_rows(select=()),
    "count: select an empty list": lambda dm: dm.customers.count(select=[]),
    "count: date out of range": lambda dm: dm.customers.count(
        date_created_from="9999-12-31T23:59:59-05:00"
    ),
    "count: aware datetime.max": lambda dm: dm.customers.count(
        last_updated_to=datetime.max.replace(tzinfo=timezone(timedelta(hours=-1)))
    ),
    # DMHubClient.request, the escape hatch: each was sent (a NaN body, a 9 KB URL, a method
    # the service does not know, a path with a line break), or raised a raw error.
    "request: method an int": lambda dm: dm.request(5, "/v1/customers/count"),
    "request: method FOO": lambda dm: dm.request("FOO", "/v1/customers/count"),
    "request: method with a space": lambda dm: dm.request("GET /x", "/v1/customers/count"),
    "request: path without a slash": lambda dm: dm.request("GET", "v1/customers/count"),
    "request: path an int": lambda dm: dm.request("GET", 5),
    "request: path another host": lambda dm: dm.request("GET", "//evil.example/v1/customers"),
    "request: path a URL": lambda dm: dm.request("GET", "http://evil.example/v1/customers"),
    "request: path with a line break": lambda dm: dm.request("GET", "/v1/customers\r\nX: y"),
    "request: path a lone surrogate": lambda dm: dm.request("GET", "/v1/\udcff"),
    "request: path of 9 KB": lambda dm: dm.request("GET", "/v1/" + "x" * 9000),
    # A dot segment was resolved before sending: "/v1/customers/1/../2" (an id of "1/../2"
    # in a path built with it) went out as GET /v1/customers/2, "%2e%2e" decoded first; the
    # error of it named the path as given, not the one sent. "..;" is ".." to a Java server.
    "request: path with a .. segment": lambda dm: dm.request("DELETE", "/v1/customers/1/../2"),
    "request: path with a %2e%2E segment": lambda dm: dm.request("GET", "/v1/customers/%2e%2E/x"),
    "request: path with a . segment": lambda dm: dm.request("GET", "/v1/./customers/count"),
    "request: path ending in ..": lambda dm: dm.request("GET", "/v1/customers/.."),
    "request: path with a ..; segment": lambda dm: dm.request("GET", "/v1/customers/..;/x"),
    "request: params not a mapping": lambda dm: dm.request("GET", "/v1/customers", params=5),
    "request: params a bool": lambda dm: dm.request("GET", "/v1/customers", params={"a": True}),
    # Replaced by the client's own without a word: a call meant for another app's (another
    # tenant's) token answered with this client's customers.
    "request: params holding access_token": lambda dm: dm.request(
        "GET", "/v1/customers/count", params={"access_token": "another-apps-token"}
    ),
    # A raw UnicodeEncodeError: the values were checked, not the names.
    "request: a param name a lone surrogate": lambda dm: dm.request(
        "GET", "/v1/customers", params={"a\udcff": "x"}
    ),
    "request: params of 5,000 digits": lambda dm: dm.request(
        "GET", "/v1/customers", params={"a": 10**5000}
    ),
    "request: params of 9 KB": lambda dm: dm.request(
        "GET", "/v1/customers", params={"a": "x" * 9000}
    ),
    "request: json NaN": lambda dm: dm.request("POST", "/v1/customers", json={"a": math.nan}),
    "request: json a set": lambda dm: dm.request("POST", "/v1/customers", json={"a": {1}}),
    "request: json of 5,000 digits": lambda dm: dm.request(
        "POST", "/v1/customers", json={"a": 10**5000}
    ),
    # resume_after, a walk's resume point: a raw TypeError after the first page ("5"), every
    # customer lost with the walk called complete (NaN), or ignored, every customer again,
    # with a sort that is not by id.
    "list: resume_after a str": lambda dm: dm.customers.list(resume_after="5"),
    "list_rows: resume_after NaN": lambda dm: dm.customers.list_rows(resume_after=math.nan),
    "list: resume_after True": lambda dm: dm.customers.list(resume_after=True),
    "list: resume_after 1.5": lambda dm: dm.customers.list(resume_after=1.5),
    "list: resume_after -1": lambda dm: dm.customers.list(resume_after=-1),
    "list: resume_after 2**63": lambda dm: dm.customers.list(resume_after=2**63),
    "list: resume_after by name": lambda dm: dm.customers.list(sort_by="name", resume_after=5),
    # Sent as it was: the customer was written, and its answer could not be read.
    "create: date_join not a timestamp": lambda dm: dm.customers.create(date_join="garbage"),
    "update: date_join a lone surrogate": lambda dm: dm.customers.update(1, date_join="\udcff"),
    # A raw OverflowError (found by the fuzz test run at random): no such time in UTC.
    "create: date_join before year 1 in UTC": lambda dm: dm.customers.create(
        date_join=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23)))
    ),
    "update: date_join after year 9999 in UTC": lambda dm: dm.customers.update(
        1, date_join=datetime.max.replace(tzinfo=timezone(timedelta(hours=-1)))
    ),
    "upsert: date_join after year 9999 in UTC": lambda dm: dm.customers.create_with_identities(
        [OK], date_join=datetime.max.replace(tzinfo=timezone(timedelta(hours=-1)))
    ),
    # The same times in custom fields, nested too: a raw OverflowError from the converter.
    "create: attr datetime before year 1 in UTC": lambda dm: dm.customers.create(
        attr={"joined": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23)))}
    ),
    "update: attr datetime after year 9999 in UTC": lambda dm: dm.customers.update(
        1, attr={"visits": [{"at": datetime.max.replace(tzinfo=timezone(timedelta(hours=-1)))}]}
    ),
    "upsert: attr datetime after year 9999 in UTC": lambda dm: dm.customers.create_with_identities(
        [OK], attr={"at": datetime.max.replace(tzinfo=timezone(timedelta(hours=-1)))}
    ),
    "get: an id of 5,000 digits": lambda dm: dm.customers.get(10**5000),
    "list: page_size of 400 digits": lambda dm: dm.customers.list(page_size=10**400),
    "list: concurrency a million": lambda dm: dm.customers.list(concurrency=10**6),
    "statistics: start_page 2**40": lambda dm: dm.customer_statistics.list(start_page=2**40),
    "create: attr NaN": lambda dm: dm.customers.create(attr={"score": math.nan}),
    "create: attr infinity": lambda dm: dm.customers.create(attr={"score": [math.inf]}),
    "create: attr a set": lambda dm: dm.customers.create(attr={"tags": {"a"}}),
    "create: attr an int of 5,000 digits": lambda dm: dm.customers.create(attr={"n": 10**5000}),
    "create: attr nested 2,000 deep": lambda dm: dm.customers.create(attr=nested(2000)),
    "create: attr nested 65 deep": lambda dm: dm.customers.create(attr=nested(65)),
    "update: attr holding itself": lambda dm: dm.customers.update(1, attr=holds_itself()),
    "upsert: attr NaN": lambda dm: dm.customers.create_with_identities([OK], attr={"a": math.nan}),
    "lookup_many: an int": lambda dm: dm.identities.lookup_many(5),
    "lookup_iter: an int": lambda dm: dm.identities.lookup_iter(5),
    "statistics: sort_order deep": lambda dm: dm.customer_statistics.list(sort_order=nested(2000)),
}
# Every writable field, given a value of no type it takes.
CASES.update(
    {
        f"create: {name} of a wrong type": (
            lambda dm, name=name: dm.customers.create(**{name: object()})
        )
        for name in FIELD_TYPES
    }
)


@pytest.fixture
async def sim() -> AsyncIterator[DMHubSimulator]:
    async with DMHubSimulator(customers=5, seed=14) as simulator:
        yield simulator


async def invoke(result: Any) -> None:
    """Run what a call returned: await it, or walk it when it is an async iterator."""
    if inspect.isawaitable(result):
        await result
    elif hasattr(result, "__aiter__"):
        async for _ in result:
            pass


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_input_is_refused_before_any_request(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], name: str
) -> None:
    # An unknown keyword is a TypeError, as Python's own; any other bad value our error.
    expected = TypeError if "unknown keyword" in name or "unknown filter" in name else None
    async with connect(sim) as dm:
        with pytest.raises(expected or InvalidRequestError):
            await invoke(CASES[name](dm))
    assert sim.counters.total == 0  # not even the token request


async def test_employee_number_is_held_to_the_references_integer(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient]
) -> None:
    # docs/contract.md "Customer model": employeeNumber is an Integer, 32 bits (ids are Long).
    async with connect(sim) as dm:
        with pytest.raises(InvalidRequestError) as caught:
            await dm.customers.create(name="x", employee_number=2**31)
        assert str(caught.value) == (
            "create(): employee_number must be from -2147483648 to 2147483647 (a 32-bit"
            " integer), not 2147483648"
        )
        assert sim.counters.total == 0
        # The bounds themselves are sent, as they are.
        made = await dm.customers.create(name="x", employee_number=2**31 - 1)
        assert made.employee_number == 2**31 - 1
        assert made.id is not None
        changed = await dm.customers.update(made.id, employee_number=-(2**31))
        assert changed.employee_number == -(2**31)


@dataclasses.dataclass
class Point:
    x: int = 1


class Colour(enum.Enum):
    RED = "r"


#: attr values JSON has no form for: cattrs's hooks sent a model and a dataclass as objects and
#: an Enum as its value, where dm.request refused them and the README said a body holds only
#: what JSON carries.
NOT_JSON_IN_ATTR = {
    "an attrs model": (OK, "Identity"),
    "a dataclass": (Point(), "Point"),
    "an Enum": (Colour.RED, "Colour"),
}
ATTR_WRITES: dict[str, Callable[[DMHubClient, Any], Any]] = {
    "create": lambda dm, attr: dm.customers.create(attr=attr),
    "update": lambda dm, attr: dm.customers.update(1, attr=attr),
    "create_with_identities": lambda dm, attr: dm.customers.create_with_identities([OK], attr=attr),
    "request": lambda dm, attr: dm.request("POST", "/v1/customers", json={"attr": attr}),
}


@pytest.mark.parametrize("write", list(ATTR_WRITES))
@pytest.mark.parametrize("value", list(NOT_JSON_IN_ATTR.values()), ids=list(NOT_JSON_IN_ATTR))
async def test_an_attr_holding_what_json_has_not_is_refused_naming_it(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], write: str, value: Any
) -> None:
    held, kind = value
    async with connect(sim) as dm:
        with pytest.raises(InvalidRequestError, match=rf"\['k'\]\[1\] is a {kind}, which JSON"):
            await ATTR_WRITES[write](dm, {"k": [1, held]})
    assert sim.counters.total == 0  # not even the token request


ID_OUT_OF_RANGE: dict[str, Callable[[DMHubClient], Any]] = {
    "get": lambda dm: dm.customers.get(2**63),
    "update": lambda dm: dm.customers.update(-1, remark="x"),
    "delete": lambda dm: dm.customers.delete(2**64),
    "identities.add": lambda dm: dm.identities.add(-5, OK),
    "identities.list": lambda dm: dm.identities.list(customer_ids=[1, 2**63]),
    "statistics": lambda dm: dm.customer_statistics.list(customer_id=2**63),
    "list id_list": lambda dm: dm.customers.list(id_list=[3, -1]),
}


@pytest.mark.parametrize("name", list(ID_OUT_OF_RANGE))
async def test_a_customer_id_out_of_range_is_refused_with_the_range(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], name: str
) -> None:
    # "customer id -1 is out of range" left the caller to guess the range the contract gives
    # (ids are 64-bit ints): the message says it, as page_size's does.
    async with connect(sim) as dm:
        with pytest.raises(InvalidRequestError, match=r"from 0 to 2\*\*63 - 1") as raised:
            await invoke(ID_OUT_OF_RANGE[name](dm))
    assert "out of range" in str(raised.value)
    assert sim.counters.total == 0


#: A list of ids with a bad one, and what the refusal says: the list and the id's place in it.
BAD_ID_IN_A_LIST: dict[str, tuple[Callable[[DMHubClient], Any], str]] = {
    "count": (
        lambda dm: dm.customers.count(id_list=[1, 2, "7"]),
        "count(): id_list[2]: a customer id must be an int, not str",
    ),
    "list": (
        lambda dm: dm.customers.list(id_list=[3, -1]),
        "list(): id_list[1]: customer id -1 is out of range: ids are 64-bit, from 0 to 2**63 - 1",
    ),
    "list_rows of a generator": (
        lambda dm: dm.customers.list_rows(id_list=(i for i in [5, 6, True])),
        "list_rows(): id_list[2]: a customer id must be an int, not bool",
    ),
    "identities.list": (
        lambda dm: dm.identities.list([1, None]),
        "list(): customer_ids[1]: a customer id must be an int, not NoneType",
    ),
}


#: A field name refused, by the parameter it was given in: select's and sort_by's alike.
BAD_FIELD_NAME: dict[str, tuple[Callable[[DMHubClient], Any], str]] = {
    "select": (
        lambda dm: dm.customers.list(select=["name", "Mobile"], sort_by="name"),
        "list(): select: unknown customer field 'Mobile' (did you mean 'mobile'?)",
    ),
    "sort_by": (
        lambda dm: dm.customers.list(select=["name"], sort_by="Name"),
        "list(): sort_by: unknown customer field 'Name' (did you mean 'name'?)",
    ),
    "count's sort_by": (
        lambda dm: dm.customers.count(sort_by=5),
        "count(): sort_by: unknown customer field 5",
    ),
    "statistics' sort_by": (
        lambda dm: dm.customer_statistics.list(sort_by="ordertotal"),
        "list(): sort_by: unknown customer statistics field 'ordertotal'"
        " (did you mean 'orderTotal'?)",
    ),
}


#: A field's value refused, by the field's name.
BAD_FIELD_VALUE: dict[str, tuple[Callable[[DMHubClient], Any], str]] = {
    "annual_revenue beyond a Decimal": (
        lambda dm: dm.customers.update(1, annual_revenue="1e-9999999999999999999999"),
        "update(): annual_revenue must be a number a Decimal holds, not"
        " '1e-9999999999999999999999'",
    ),
}


#: Refusals that name what they refuse: an id by its list and place, a field by the
#: parameter that held it.
NAMED_REFUSALS = {**BAD_ID_IN_A_LIST, **BAD_FIELD_NAME, **BAD_FIELD_VALUE}


@pytest.mark.parametrize("name", list(NAMED_REFUSALS))
async def test_a_refusal_names_the_place_or_the_parameter_of_what_it_refuses(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], name: str
) -> None:
    # "count(): a customer id must be an int, not str" named neither the list nor which of its
    # ids (of 300,000 read from a file) it was, where a bad identity is named by its place;
    # "list(): unknown customer field 'Name'" said not whether select or sort_by held it, in a
    # call given both.
    call, said = NAMED_REFUSALS[name]
    async with connect(sim) as dm:
        with pytest.raises(InvalidRequestError) as raised:
            await invoke(call(dm))
    assert str(raised.value) == said
    assert sim.counters.total == 0


#: An upsert's identity refused, and what the refusal says of it (never the value).
BAD_UPSERT_IDENTITY = {
    "a mangled mobile": (Identity("mobile", "13800138000.0"), "identity value of type mobile "),
    "an empty value": (Identity("wechat", ""), "identity value must be a non-empty string"),
    "an over-long value": (Identity("wechat", "v" * 129), "identity value is 129 characters"),
    "no Identity": ("o-999", "expected an Identity(type, value), not str"),
}


@pytest.mark.parametrize("bad", list(BAD_UPSERT_IDENTITY.values()), ids=list(BAD_UPSERT_IDENTITY))
async def test_an_upserts_bad_identity_is_named_by_its_place(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], bad: tuple[Any, str]
) -> None:
    # "create_with_identities(): identity value must be a non-empty string" named none of the
    # identities given, where lookup_many names its item (identities[3]), as the changelog
    # said both did.
    identity, said = bad
    given = [OK, Identity("mobile", "13800138000"), identity]
    async with connect(sim) as dm:
        with pytest.raises(InvalidRequestError) as raised:
            await dm.customers.create_with_identities(given, name="x")
    message = str(raised.value)
    assert message.startswith("create_with_identities(): identities[2]: ")
    assert said in message
    assert "13800138000.0" not in message  # its place, not its value: personal data
    assert "o-999" not in message
    assert sim.counters.total == 0


@pytest.mark.parametrize(
    "blank",
    [Identity("wechat", " "), Identity("wechat", "\u3000"), Identity("   ", "o-1")],
    ids=["a space", "a full-width space", "a blank type"],
)
async def test_an_upsert_by_a_blank_identity_is_refused_before_it_overwrites_a_customer(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], blank: Identity
) -> None:
    # A blank openid cell read with its padding was bound by the first row's upsert, and the
    # next row's, matched by it, overwrote that customer: Alice became Bob, one customer left.
    rows = [("Alice", "13800000001"), ("Bob", "13800000002")]
    customers = sim.customers_count()
    async with connect(sim) as dm:
        for place, (name, mobile) in enumerate(rows):
            with pytest.raises(InvalidRequestError) as raised:
                await dm.customers.create_with_identities(
                    [OK, blank] if place else [blank], name=name, mobile=mobile
                )
            what = "type" if blank.value == "o-1" else "value"
            assert str(raised.value) == (
                f"create_with_identities(): identities[{place}]: identity {what} is blank"
                " (spaces only)"
            )
    assert sim.counters.total == 0
    assert sim.customers_count() == customers


async def test_a_mobile_filter_a_float_wrote_says_so_and_other_mobiles_are_sent(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient]
) -> None:
    sim.insert_customer({"name": "x", "mobile": "+86 138-0013-8000"})
    async with connect(sim) as dm:
        with pytest.raises(InvalidRequestError) as caught:
            await dm.customers.count(mobile="13800138000.0")
        assert str(caught.value).startswith("count(): mobile ends in .0 (a number written as")
        assert "13800138000" not in str(caught.value)
        assert await dm.customers.count(mobile="+86 138-0013-8000") == 1  # as the service has it


async def test_a_create_by_a_mobile_copied_with_invisible_marks_makes_no_second_customer(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient]
) -> None:
    # The service matches a create on mobile or email: a number copied from a Windows contact
    # card (U+202A ... U+202C around it) matched no one, and a second customer was created
    # with the marks in its mobile, which count(mobile=) and list(mobile=) then refuse.
    holder = sim.insert_customer({"name": "x", "mobile": "13900000000"})
    before = sim.customers_count()
    async with connect(sim) as dm:
        with pytest.raises(InvalidRequestError, match="invisible mark"):
            await dm.customers.create(name="y", mobile="\u202a13900000000\u202c")
    assert sim.customers_count() == before
    assert sim.customer(holder["id"])["name"] == "x"  # type: ignore[index]


@pytest.mark.parametrize(
    "date_join",
    ["2017-06-01T20:12:12+08:00", "2017-06-01T12:12:12Z", datetime(2017, 6, 1, 12, 12, 12)],
    ids=["a timestamp at +08:00", "a timestamp in UTC", "a naive datetime (UTC)"],
)
async def test_a_date_join_the_client_can_read_is_sent(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], date_join: Any
) -> None:
    async with connect(sim) as dm:
        created = await dm.customers.create(name="x", date_join=date_join)
    assert created.date_join == datetime(2017, 6, 1, 12, 12, 12, tzinfo=timezone.utc)
    # Sent in the wire's form (docs/contract.md): a `+08:00` string went out as it was given.
    assert sim.customer(created.id)["dateJoin"] == "2017-06-01T12:12:12Z"  # type: ignore[index]


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def holds_itself() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


CLIENT_CASES: dict[str, dict[str, Any]] = {
    "timeout 0": {"timeout": 0},
    "timeout negative": {"timeout": -1},
    "max_retries negative": {"max_retries": -1},
    "max_concurrency 0": {"max_concurrency": 0},
    "rate_limit 0": {"rate_limit": 0},
    "rate_limit negative": {"rate_limit": -5},
    "base_url not http": {"base_url": "ftp://api.convertlab.com"},
    "no credentials": {"app_id": None, "secret": None},
    "app_id without secret": {"app_id": "a", "secret": None},
    # issue 12 item 8: a raw TypeError, or a ValueError/UnicodeError at the first call
    "timeout a string": {"timeout": "30"},
    "max_retries a float": {"max_retries": 1.5},
    "max_concurrency a string": {"max_concurrency": "8"},
    "max_concurrency None": {"max_concurrency": None},
    "app_id of 9,000 characters": {"app_id": "x" * 9000},
    "base_url of 9,000 characters": {"base_url": "https://api.convertlab.com/" + "x" * 9000},
    "timeout None": {"timeout": None},
    "rate_limit NaN": {"rate_limit": math.nan},
    "base_url not a string": {"base_url": 5},
    "base_url port out of range": {"base_url": "http://127.0.0.1:99999"},
    "base_url bad IPv6": {"base_url": "http://["},
    "base_url host a lone surrogate": {"base_url": "https://x\udcff"},
    "base_url with a query": {"base_url": "https://api.convertlab.com/?a=1"},
    "app_id a lone surrogate": {"app_id": "a\udcff"},
    "secret an int": {"secret": 5},
    "auth_error_codes of dicts": {"auth_error_codes": [{}]},
    "timezone unknown": {"timezone": "Mars/Olympus_Mons"},
    "timezone a path": {"timezone": "../../etc/passwd"},
    "timezone an int": {"timezone": 8},
    # Accepted, then a raw OverflowError at the first call (blamed on the token store).
    "timeout infinite": {"timeout": math.inf},
    "timeout beyond any float": {"timeout": 10**5000},
    "connect_timeout infinite": {"connect_timeout": math.inf},
    "read_timeout beyond any float": {"read_timeout": 10**400},
    # A raw ValueError: the message wrote out an integer of 5,000 digits.
    "read_timeout of 5,000 digits": {"read_timeout": -(10**5000)},
    "max_response_size of 5,000 digits": {"max_response_size": -(10**5000)},
}


@pytest.mark.parametrize("kwargs", list(CLIENT_CASES.values()), ids=list(CLIENT_CASES))
def test_bad_client_settings_are_refused(
    kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DMHUB_APP_ID", raising=False)
    monkeypatch.delenv("DMHUB_SECRET", raising=False)
    settings = {"app_id": "a", "secret": "s", "token_store": MemoryTokenStore(), **kwargs}
    with pytest.raises(InvalidRequestError):
        DMHubClient(**settings)


BIG = 10**5000  # no float holds it, and writing it in a message raises ValueError
#: The settings of the public helpers a client is given: each took anything, and failed (or
#: waited for ever, or never) when the client used it.
HELPER_CASES: dict[str, Callable[[], object]] = {
    **{
        f"RetryPolicy {name}={label}": (lambda n=name, v=value: RetryPolicy(**{n: v}))
        for name, values in {
            "max_retries": [-1, 1.5, "1", None, -BIG],
            "initial_delay": [-1, math.inf, math.nan, "1", None, BIG],
            "max_delay": [-1, math.inf, math.nan, "1", None, -BIG],
            "retry_after_cap": [-1, math.nan, "1", None, -BIG],
            "budget": [0, -1, math.nan, "1", -BIG],
            "jitter": [None, 5],
        }.items()
        for label, value in ((short(v), v) for v in values)
    },
    **{
        f"RedisTokenStore {name}={label}": (
            lambda n=name, v=value: RedisTokenStore("redis://127.0.0.1:1/0", **{n: v})
        )
        for name, values in {
            "lock_timeout": [-1, math.inf, math.nan, "1", BIG],
            "lock_ttl": [0, -1, math.inf, math.nan, "1", 1e300, BIG],
            "socket_timeout": [0, -1, math.inf, math.nan, "1", BIG],
        }.items()
        for label, value in ((short(v), v) for v in values)
    },
    # Taken, then every call failed the store and fetched tokens unshared (revoking other
    # processes' tokens), or a raw error now or at the first call.
    "RedisTokenStore prefix=5": lambda: RedisTokenStore("redis://127.0.0.1:1/0", prefix=5),
    "RedisTokenStore prefix a lone surrogate": lambda: RedisTokenStore(
        "redis://127.0.0.1:1/0", prefix="\udcff"
    ),
    "RedisTokenStore url http://": lambda: RedisTokenStore("http://127.0.0.1:1/0"),
    "RedisTokenStore url an int": lambda: RedisTokenStore(5),
    "RedisTokenStore client=5": lambda: RedisTokenStore(client=5),
    "RedisTokenStore client a sync Redis": lambda: RedisTokenStore(client=redis.Redis()),
    # Taken (it has a lock), then every token fetch raised a raw AttributeError ("no attribute
    # 'connection_pool'", the store's repr in its own error), where no transaction the store
    # writes in could run: a cluster's client holds no one Redis.
    "RedisTokenStore client a RedisCluster": lambda: RedisTokenStore(
        client=redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=1)
    ),
    "FileTokenStore path an int": lambda: FileTokenStore(5),
    "FileTokenStore path a directory": lambda: FileTokenStore("."),
    **{
        f"FileTokenStore lock_timeout={label}": (
            lambda v=value: FileTokenStore("tokens.json", lock_timeout=v)
        )
        # None is the default: no bound of the store's own (the client's wait bounds it).
        for label, value in ((short(v), v) for v in [-1, math.inf, math.nan, "1", BIG, -BIG])
    },
}


@pytest.mark.parametrize("make", list(HELPER_CASES.values()), ids=list(HELPER_CASES))
def test_bad_settings_of_the_helpers_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(InvalidRequestError):
        make()


EXPORT_CASES: dict[str, dict[str, Any]] = {
    "format xml": {"format": "xml"},
    "sort_by given": {"sort_by": "id"},
    "unknown filter": {"stag": "lead"},
    "bad gender": {"gender": 7},
    "no such directory": {"dest": "no/such/dir/out.jsonl"},
    # A raw TypeError, the first two after the walk had begun (a page written, requests sent).
    "on_progress an int": {"on_progress": 5},
    "on_progress a str": {"on_progress": "x"},
    "checkpoint an int": {"checkpoint": 5},
    # A raw ValueError: the message wrote out an integer of 5,000 digits.
    "verify of 5,000 digits": {"verify": BIG},
    "format of 5,000 digits": {"format": BIG},
    "encoding of 5,000 digits": {"encoding": BIG},
}


@pytest.mark.parametrize(
    "kwargs",
    [
        *EXPORT_CASES.values(),
        {"page_size": 0},
        {"concurrency": 0},
    ],
    ids=[*EXPORT_CASES, "page_size 0", "concurrency 0"],
)
async def test_bad_export_input_is_refused_before_any_request(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], tmp_path: Path, kwargs: Any
) -> None:
    dest = tmp_path / kwargs.pop("dest", "out.jsonl")
    # An unknown keyword is a TypeError, as Python's own; any other bad value our error.
    known = {*inspect.signature(export_customers).parameters, *CustomerFilters.__annotations__}
    expected = TypeError if set(kwargs) - known else InvalidRequestError
    async with connect(sim) as dm:
        with pytest.raises(expected):
            await export_customers(dm, dest, progress=False, **kwargs)
    assert sim.counters.total == 0
    assert files_in(tmp_path) == []  # nothing written, nothing left behind


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


#: Each export or plan function, called with ``client`` in the client's place.
CLIENT_TAKERS: dict[str, Callable[[Any, Path], Any]] = {
    "export_customers": lambda c, d: export_customers(c, d / "out.jsonl", progress=False),
    "export_sharded": lambda c, d: _shards().export_sharded(c, d / "parts", 2, progress=False),
    "export_shard": lambda c, d: _shards().export_shard(
        c, _shards().Shard(index=0, start=None, end=None), d / "part.jsonl"
    ),
    "plan_shards": lambda c, d: _shards().plan_shards(c, 2),
    "plan_directory": lambda c, d: _shards().plan_directory(c, d / "parts", 2),
    "late_check": lambda c, d: _shards().late_check(c, d / "parts"),
}


def _shards() -> Any:
    import dmhub_async.shards

    return dmhub_async.shards


@pytest.mark.parametrize("name", list(CLIENT_TAKERS))
async def test_an_export_given_no_client_is_refused_naming_it(
    sim: DMHubSimulator, tmp_path: Path, name: str
) -> None:
    # None, or the simulator given in the client's place, was a raw AttributeError from
    # inside ("'NoneType' object has no attribute 'customers'", "... 'timezone'").
    for instead, said in ((None, "not None"), (sim, "not <DMHubSimulat")):
        with pytest.raises(InvalidRequestError) as info:
            await CLIENT_TAKERS[name](instead, tmp_path)
        assert str(info.value).startswith(f"{name}(): client must be a DMHubClient"), info.value
        assert said in str(info.value)
    assert sim.counters.total == 0
    assert files_in(tmp_path) == []


#: A stage as long as the filters' URL allows (MAX_QUERY_LENGTH, 6,144 bytes: "stage=" and
#: 6,130 characters), which the walk's sort by id (sidx=id&sord=asc) takes past it; one of
#: 6,115 fits the walk, but not the final check's (select=id); one of 6,100 fits both, but
#: not a sharded export's walk, which adds its window's bounds. One of 6,090 fits the walks
#: of an id list, leaving 13 bytes of URL: too few for an id of 19 digits (one of 6,084, 19).
#: One of 6,105 fits the walks, but not the final check's fetch of a customer it finds
#: missing, by id (``idList``), which an id of 10 digits takes past the limit: refused as
#: ``list_rows()`` once every customer had been walked; a shard's of 6,033, the same.
NEAR_THE_LIMIT = {
    "export": ("export_customers", {"stage": "x" * 6130}),
    "export's final check": ("export_customers", {"stage": "x" * 6115, "verify": "always"}),
    "export's fetch by id": ("export_customers", {"stage": "x" * 6105}),
    "sharded export's fetch by id": ("export_sharded", {"stage": "x" * 6033}),
    # A byte more than test_filters_leaving_the_fetch_by_id_room_are_exported's: no room
    # for an id of 19 digits.
    "export's fetch by id, a byte over": ("export_customers", {"stage": "x" * 6095}),
    "sharded export's fetch by id, a byte over": ("export_sharded", {"stage": "x" * 6017}),
    "export of an id": ("export_customers", {"stage": "x" * 6110, "id_list": [10**18]}),
    "export of an id with no room": (
        "export_customers",
        {"stage": "x" * 6090, "id_list": [10**18]},
    ),
    "sharded export": ("export_sharded", {"stage": "x" * 6100}),
    "sharded export of an id": ("export_sharded", {"stage": "x" * 6110, "id_list": [10**18]}),
    "sharded export of an id with no room": (
        "export_sharded",
        {"stage": "x" * 6090, "id_list": [10**18]},
    ),
}


@pytest.mark.parametrize("case", list(NEAR_THE_LIMIT))
async def test_filters_the_walk_takes_past_the_urls_limit_are_refused_as_the_export_is_called(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], tmp_path: Path, case: str
) -> None:
    # Checked without the walk's sort (and a shard's window), they passed the export's check:
    # the walk it made refused them, as list_rows(), a call the caller never made; the final
    # check's after every customer had been walked (each rerun again), a sharded export's
    # once its plan's counts had been sent.
    from dmhub_async.shards import export_sharded

    method, filters = NEAR_THE_LIMIT[case]
    async with connect(sim) as dm:
        export = (
            export_customers(dm, tmp_path / "out.jsonl", progress=False, **filters)
            if method == "export_customers"
            else export_sharded(dm, tmp_path / "parts", 2, progress=False, **filters)
        )
        with pytest.raises(InvalidRequestError) as info:
            await export
    assert str(info.value).startswith(f"{method}(): "), str(info.value)
    assert sim.counters.total == 0
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("method", ["export_customers", "export_sharded"])
async def test_filters_leaving_room_for_just_the_id_are_exported(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], tmp_path: Path, method: str
) -> None:
    # The bound of the check above: filters that leave an id list's walks the room of its
    # longest id, and not a byte more, are exported, every URL under the limit.
    from dmhub_async.shards import export_sharded, merge

    wanted = sim.insert_customer({"name": "staged", "stage": "x" * 6084})["id"]
    lines: list[int] = []
    sim.on_request(lambda request: lines.append(len(str(request.url))))
    filters: dict[str, Any] = {"stage": "x" * 6084, "id_list": [wanted, 10**18]}
    async with connect(sim) as dm:
        if method == "export_customers":
            dest = tmp_path / "out.jsonl"
            report = await export_customers(dm, dest, progress=False, verify="always", **filters)
            assert report.complete
        else:
            manifest = await export_sharded(dm, tmp_path / "parts", 2, progress=False, **filters)
            assert manifest.complete
            dest = tmp_path / "out.jsonl"
            merge(tmp_path / "parts", dest)
    assert [json.loads(line)["id"] for line in dest.read_text().splitlines()] == [wanted]
    assert lines
    assert max(lines) <= MAX_URL_LENGTH


@pytest.mark.parametrize("method", ["export_customers", "export_sharded"])
async def test_filters_leaving_the_fetch_by_id_room_are_exported(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], tmp_path: Path, method: str
) -> None:
    # The final check's fetch by id sends the export's filters, sort and idList, and no
    # select=id (its id walk's, which sends no idList): a stage of 6,085 to 6,094 bytes (a
    # shard's: 6,007 to 6,016, beside its window) was refused as leaving no room for an id,
    # though every request fits, one of an id of 19 digits too. A sign-up behind the walk
    # makes the check fetch.
    from dmhub_async.shards import export_sharded, merge

    stage = "x" * (6094 if method == "export_customers" else 6016)
    ids = [sim.insert_customer({"name": f"c{n}", "stage": stage})["id"] for n in range(30)]
    fetched: list[int] = []

    def request(request: web.Request) -> None:
        fetched.append(len(str(request.url))) if "idList" in request.query else None

    sim.on_request(request)
    behind: list[int] = []

    def on_progress(progress: Any) -> None:
        if not behind:  # an id below the walk's place, which the walk has passed
            free = next(i for i in range(ids[0] + 1, ids[-1]) if sim.customer(i) is None)
            behind.append(sim.insert_customer({"stage": stage}, customer_id=free)["id"])

    dest = tmp_path / "out.jsonl"
    async with connect(sim) as dm:
        if method == "export_customers":
            report = await export_customers(
                dm, dest, progress=False, page_size=10, on_progress=on_progress, stage=stage
            )
            assert report.complete
        else:
            manifest = await export_sharded(
                dm,
                tmp_path / "parts",
                1,
                progress=False,
                page_size=10,
                stage=stage,
                on_total=lambda done, total: on_progress(None) if done >= 10 else None,
            )
            assert manifest.complete
            merge(tmp_path / "parts", dest)
    written = [json.loads(line)["id"] for line in dest.read_text().splitlines()]
    assert sorted(written) == sorted([*ids, *behind])
    assert fetched  # the sign-up was fetched by id
    assert max(fetched) <= MAX_URL_LENGTH


# -- the response decoder, fuzzed ---------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
ERROR_BODIES = st.fixed_dictionaries(
    {"error_code": JSON}, optional={"error_description": JSON, "rows": JSON}
)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON.map(lambda v: json.dumps(v).encode()),
    ERROR_BODIES.map(lambda v: json.dumps(v).encode()),
    ERROR_BODIES.map(lambda v: json.dumps(v).encode()[: len(json.dumps(v)) // 2]),
)
STATUSES = st.one_of(st.integers(100, 599), st.sampled_from([200, 201, 204, 401, 429, 500, 503]))
HEADERS = st.dictionaries(st.sampled_from(["Retry-After", "Content-Type"]), st.text(max_size=40))
REQUESTS = st.sampled_from(
    [
        Request("GET", "/v1/customers"),
        Request("GET", "/v1/customers/1", not_found_codes=frozenset({40201})),
        Request("POST", "/v1/customers", json={}, idempotent=False),
        Request("GET", TOKEN_PATH, {"secret": "s"}, authenticated=False),
    ]
)


FAR_DATE = "Fri, 31 Dec 9999 23:59:59 GMT"


def _no_json(constant: str) -> Any:
    raise ValueError(f"{constant} is no JSON")


def success(status: int, body: bytes) -> tuple[bool, Any]:
    """What the contract says of an answer: (a success?, its value)."""
    if not 200 <= status < 300:
        return False, None
    if not body.strip():
        return True, None
    try:
        # NaN and Infinity are no JSON (RFC 8259), which json.loads reads all the same: the SDK
        # refuses them everywhere, and this oracle, taking them, failed the test at random.
        data = json.loads(body, parse_constant=_no_json)
    except (ValueError, RecursionError):
        return False, None
    if isinstance(data, dict) and coerce_code(data.get("error_code")) not in (None, 0):
        return False, None
    return True, data


@settings(max_examples=600, deadline=None)
@given(request=REQUESTS, status=STATUSES, headers=HEADERS, body=BODIES, now=st.floats(0, 2e9))
@example(Request("GET", "/v1/customers"), 200, {}, b"[" * 100_000, 0.0)  # deeper than decoders go
@example(Request("GET", "/v1/customers"), 200, {}, b'{"error_code": 0.0}', 0.0)
@example(Request("GET", "/v1/customers"), 429, {"Retry-After": "1e400"}, b"", 0.0)
@example(Request("GET", "/v1/customers"), 503, {"Retry-After": FAR_DATE}, b"", 0.0)
@example(Request("GET", "/v1/customers"), 200, {}, b'{"error_code": ' + b"9" * 5000 + b"}", 0.0)
@example(Request("GET", "/v1/customers"), 200, {}, b'{"rows": [12345678901234567890123]}', 0.0)
@example(Request("GET", "/v1/customers"), 200, {}, b"-9223372036854775809", 0.0)  # beyond 64 bits
@example(Request("GET", "/v1/customers"), 200, {}, b"Infinity", 0.0)  # found at random
@example(Request("GET", "/v1/customers"), 200, {}, b'{"rows": [NaN]}', 0.0)
def test_read_response_returns_or_raises_only_api_errors(
    request: Request, status: int, headers: dict[str, str], body: bytes, now: float
) -> None:
    ok, value = success(status, body)
    if ok:
        got = read_response(request, status, headers, body, now=now, secrets=["s3cret"])
        assert got == value
        return
    with pytest.raises(APIError) as caught:  # ResponseDecodeError is one
        read_response(request, status, headers, body, now=now, secrets=["s3cret"])
    assert caught.value.status == status
    assert caught.value.retry_after is None or caught.value.retry_after >= 0
    if caught.value.code is None and body.strip() and 200 <= status < 300:
        assert isinstance(caught.value, ResponseDecodeError)  # a 2xx we cannot read


# -- an id_list too long for one URL: batches ------------------------------------------------


@pytest.fixture
async def many() -> AsyncIterator[DMHubSimulator]:
    """1,200 customers, and the length of every request line the simulator received."""
    async with DMHubSimulator(customers=1200, seed=15) as simulator:
        simulator.lines = []  # type: ignore[attr-defined]
        simulator.on_request(
            lambda request: simulator.lines.append(len(str(request.rel_url)))  # type: ignore[attr-defined]
        )
        yield simulator


def long_id_list(sim: DMHubSimulator) -> list[int]:
    """10,000 ids: every other customer's, and 13-digit ids of no one, shuffled, with repeats."""
    ids = sim.customer_ids()[::2] + [10**12 + i for i in range(9_000)]
    ids += ids[:400]  # repeats are one customer, not two
    return sorted(ids, key=lambda i: (i * 7919) % 10_007)[:10_000]


async def test_count_sums_the_batches_of_a_long_id_list(
    many: DMHubSimulator, connect: Callable[..., DMHubClient]
) -> None:
    ids = long_id_list(many)
    expected = len(set(ids) & set(many.customer_ids()))
    async with connect(many) as dm:
        assert await dm.customers.count(id_list=ids) == expected
    assert many.counters.routes["GET /v1/customers/count"] > 1
    assert max(many.lines) <= MAX_URL_LENGTH  # type: ignore[attr-defined]


async def test_a_long_id_lists_count_is_the_callers_last_response(
    many: DMHubSimulator, connect: Callable[..., DMHubClient]
) -> None:
    # Its batches are counted in tasks of their own: the caller's dm.last_response was still
    # the call before's (a customer), as if the count had never answered.
    async with connect(many) as dm:
        await dm.customers.get(many.customer_ids()[0])
        await dm.customers.count(id_list=long_id_list(many))
        answer = dm.last_response

    assert answer is not None
    assert type(answer.data) is int  # a count's answer, a bare integer: a batch's
    assert many.counters.routes["GET /v1/customers/count"] > 1


async def test_a_long_id_lists_count_sends_its_batches_side_by_side_within_the_limit(
    many: DMHubSimulator, connect: Callable[..., DMHubClient]
) -> None:
    # One batch after another: a count of 300,000 ids was 636 requests in turn, 14.6 s at 20 ms
    # a request, twice in every export of the list. Now as many at once as the client sends.
    ids = long_id_list(many)
    expected = len(set(ids) & set(many.customer_ids()))
    in_flight: list[int] = []
    now = 0
    three = asyncio.Event()

    async def hold(request: web.Request) -> None:
        nonlocal now
        if request.path != "/v1/customers/count":
            return
        now += 1
        in_flight.append(now)
        if now >= 3:
            three.set()
        with contextlib.suppress(asyncio.TimeoutError):  # one at a time: it never comes
            await asyncio.wait_for(three.wait(), 2.0)
        three.set()  # after one wait in vain, none again
        now -= 1

    many.on_request(hold)
    async with connect(many, max_concurrency=3) as dm:
        assert await dm.customers.count(id_list=ids) == expected
    assert len(in_flight) == many.counters.routes["GET /v1/customers/count"] > 3
    assert max(in_flight) == 3  # side by side, never more than the client's max_concurrency


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_list_walks_the_batches_of_a_long_id_list_in_order(
    many: DMHubSimulator, connect: Callable[..., DMHubClient], order: Literal["asc", "desc"]
) -> None:
    ids = long_id_list(many)
    expected = sorted(set(ids) & set(many.customer_ids()), reverse=order == "desc")
    async with connect(many) as dm:
        walk = dm.customers.list(id_list=ids, sort_order=order, page_size=50, concurrency=3)
        got = [c.id async for c in walk]
    assert got == expected  # each once, in id order across batches
    assert walk.stats.items == len(expected)
    assert many.counters.routes["GET /v1/customers"] > len(expected) // 50
    assert max(many.lines) <= MAX_URL_LENGTH  # type: ignore[attr-defined]


async def test_a_batched_walk_resumes_from_its_checkpoint_and_stops_at_max_items(
    many: DMHubSimulator, connect: Callable[..., DMHubClient]
) -> None:
    ids = long_id_list(many)
    expected = sorted(set(ids) & set(many.customer_ids()))
    async with connect(many) as dm:
        first = dm.customers.list_rows(id_list=ids, page_size=40)
        pages: list[Page[dict[str, Any]]] = []
        async for page in first.pages():  # stop at the second page of the second batch
            pages.append(page)
            jumps = [b for a, b in itertools.pairwise(pages) if b.number != a.number + 1]
            if jumps and page.number == jumps[0].number + 1:
                break
        await first.aclose()
        # The page in hand when the walk stopped is not done: the checkpoint points at it.
        head = [row["id"] for page in pages if page.number < first.checkpoint for row in page.items]
        assert len(head) == sum(len(page.items) for page in pages[:-1])
        rest = dm.customers.list_rows(id_list=ids, page_size=40, start_page=first.checkpoint)
        tail = [row["id"] async for row in rest]
        capped = await dm.customers.list(id_list=ids, max_items=333).to_list()
    assert head + tail == expected  # nothing lost, nothing twice
    assert [c.id for c in capped] == expected[:333]


async def test_identities_of_a_long_id_list_come_in_batches(
    many: DMHubSimulator, connect: Callable[..., DMHubClient]
) -> None:
    ids = long_id_list(many)
    owners = set(ids) & set(many.customer_ids())
    async with connect(many) as dm:
        found = await dm.identities.list(ids)
    assert {binding.customer_id for binding in found} == {
        cid for cid in owners if many.identities(cid)
    }
    assert max(many.lines) <= MAX_URL_LENGTH  # type: ignore[attr-defined]


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


async def refused_before_anything_is_done(
    sim: DMHubSimulator,
    connect: Callable[..., DMHubClient],
    tmp_path: Path,
    runner: str,
    words: str,
    **bad: Any,
) -> None:
    """``runner`` given ``bad`` raises InvalidRequestError matching ``words``, with no request
    sent and no file made or changed (a sharded plan prepared before it, as a rerun has one)."""
    from dmhub_async.shards._local import run_in_processes
    from dmhub_async.shards._queue import run_on_queue
    from dmhub_async.shards._run import export_sharded, prepare

    async with connect(sim) as dm:
        manifest = await prepare(dm, tmp_path / "shards", 2)
        sent = sim.counters.total
        files = tree(tmp_path)
        calls = {
            "export_customers": lambda: export_customers(dm, tmp_path / "out.jsonl", **bad),
            "export_sharded": lambda: export_sharded(dm, tmp_path / "new", 2, **bad),
            "processes": lambda: run_in_processes(None, tmp_path / "shards", manifest, 2, **bad),
            "queue": lambda: run_on_queue(
                "redis://127.0.0.1:1", tmp_path / "shards", manifest, **bad
            ),
        }
        with pytest.raises(InvalidRequestError, match=words):
            await calls[runner]()
    assert sim.counters.total == sent
    assert tree(tmp_path) == files


@pytest.mark.parametrize("runner", ["export_customers", "export_sharded", "processes", "queue"])
async def test_a_progress_that_is_no_bool_is_refused_before_anything_is_done(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], tmp_path: Path, runner: str
) -> None:
    # progress="no" (or "false" read from a settings file) was true: a bar was drawn.
    await refused_before_anything_is_done(
        sim, connect, tmp_path, runner, r"progress must be True or False, not 'no'", progress="no"
    )


@pytest.mark.parametrize("runner", ["export_sharded", "processes", "queue"])
async def test_a_verify_of_a_sharded_export_that_is_no_choice_is_refused_before_anything_is_done(
    sim: DMHubSimulator, connect: Callable[..., DMHubClient], tmp_path: Path, runner: str
) -> None:
    # verify="Always" (a typo, or read from a settings file) is refused as export_customers
    # refuses it, before a plan, a worker or a job: not once a shard's export began.
    await refused_before_anything_is_done(
        sim,
        connect,
        tmp_path,
        runner,
        r"^\w+\(\): verify must be 'auto' or 'always', not 'Always'",
        verify="Always",
    )
