"""Every public method, fuzzed: a well-formed request, or a DMHubError before anything is sent.

Each method of ``dm.customers``, ``dm.identities`` and ``dm.customer_statistics``, and the
``DMHubClient`` constructor, is called with arguments of every JSON and Python type (strings
with lone surrogates, huge and over-long values, NaN, nested and self-holding containers,
naive and aware datetimes, ...) against aioresponses answering every request. Whatever the
arguments, the call either

* raises :class:`InvalidRequestError` (or another :class:`DMHubError`) and nothing was sent,
  not even a token request; or
* sends only well-formed requests: the URL yarl built holds exactly the parameters given (no
  character dropped), is at most ``MAX_URL_LENGTH`` long, writes every id and paging number as
  digits (whatever int type the caller's was), and a body is strict UTF-8 JSON.

No other exception may escape. The example counts are bounded and hypothesis derandomized, so
this runs in seconds and fails the same way every time; what it found is kept as ``@example``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import math
import re
import reprlib
import warnings
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import attrs
import pytest
from _helpers import BASE
from aioresponses import CallbackResult, aioresponses
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dmhub_async import (
    DMHubClient,
    DMHubError,
    Gender,
    Identity,
    InvalidRequestError,
    MemoryTokenStore,
    NaiveDatetimeWarning,
)
from dmhub_async._validate import FIELD_TYPES, MAX_URL_LENGTH

# -- what the service answers, and what it was sent --------------------------------------------


@attrs.define
class Sent:
    """The requests aioresponses saw, and what was wrong with any of them."""

    requests: list[str] = attrs.field(factory=list)
    malformed: list[str] = attrs.field(factory=list)
    #: Each call but the token request: its method, path, query and body (JSON, read).
    calls: list[tuple[str, str, dict[str, str], Any]] = attrs.field(factory=list)

    def answer(self, url: Any, **kwargs: Any) -> CallbackResult:
        text = str(url)
        self.requests.append(f"{kwargs.get('method', '')} {text[:200]}")
        for number in _NUMBERS_SENT.get(url.path.rpartition("/")[0], ()):
            if number == "id":
                value = url.path.rpartition("/")[2]
                if value == "count":
                    continue
            elif number not in url.query:
                continue
            else:
                value = url.query[number]
            if not all(part.isdigit() and part.isascii() for part in value.split(",")):
                self.malformed.append(f"{number} sent as {value[:40]!r}, not digits")
        if not url.path.endswith("/accesstoken"):
            data = kwargs.get("data")
            read = None if data is None else json.loads(data)
            self.calls.append((kwargs.get("method", ""), url.path, dict(url.query), read))
        given = {k: str(v) for k, v in (kwargs.get("params") or {}).items()}
        if dict(url.query) != given:  # yarl dropped or changed a character
            self.malformed.append(f"query {dict(url.query)!r:.200} is not {given!r:.200}")
        if len(text) > MAX_URL_LENGTH:
            self.malformed.append(f"a URL of {len(text)} bytes")
        body = kwargs.get("data")
        if body is not None:
            try:
                json.loads(body, parse_constant=_not_json)  # strict: no NaN or Infinity
            except ValueError as err:  # UnicodeDecodeError included
                self.malformed.append(f"a body that is not strict UTF-8 JSON: {err}")
        return CallbackResult(**_answer(url.path))


#: The numbers a call writes into its URL, by the path they are under (``id``: the path's last
#: part): digits each, whatever type the caller's int was (an int subclass's str may be
#: ``CustomerId(7)``).
_NUMBERS_SENT: dict[str, tuple[str, ...]] = {
    "/v1": ("rows", "page", "idList", "gender", "customerId", "customerIds"),
    "/v1/customers": ("id",),
}


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


CUSTOMER = {"id": 1, "name": "x"}
BINDING = {"customerId": "1", "identityType": "wechat", "identityValue": "o"}


def _answer(path: str) -> dict[str, Any]:
    if path.endswith("/accesstoken"):
        return {"payload": {"error_code": 0, "access_token": "tok-1", "expires_in": 7200}}
    if path == "/v1/customers/count":
        return {"payload": 0}
    if path == "/v1/customers":
        return {"payload": {"rows": [], "records": 0, "total": 0}}
    if path == "/v1/customerStatistics":
        return {"payload": {"items": [], "meta": {"hasNext": False}}}
    if path == "/v1/customeridentities":
        return {"payload": [BINDING]}
    return {"payload": CUSTOMER}


async def invoke(result: Any) -> None:
    """Run what a call returned: await it, or walk it when it is an async iterator."""
    if inspect.isawaitable(result):
        await result
    elif hasattr(result, "__aiter__"):
        async for _ in result:
            pass


async def run(call: Callable[[DMHubClient], Any], **settings: Any) -> Sent:
    """``call(dm)`` on a fresh client; checks the outcome; returns what was sent."""
    sent = Sent()
    with aioresponses() as api, warnings.catch_warnings():
        warnings.simplefilter("ignore", NaiveDatetimeWarning)  # the timezone tests check it
        for method in ("get", "post", "put", "delete"):
            answer = functools.partial(sent.answer, method=method.upper())
            getattr(api, method)(re.compile(r"^.*$"), callback=answer, repeat=True)
        try:
            dm = DMHubClient(**{**CLIENT, **settings})
        except InvalidRequestError:
            assert sent.requests == []
            return sent
        async with dm:
            try:
                await asyncio.wait_for(invoke(call(dm)), timeout=30)
            except InvalidRequestError:
                assert sent.requests == [], "refused after sending"
            except DMHubError:
                pass  # the service's answer did not fit: still nothing but DMHubError
    assert sent.malformed == []
    return sent


CLIENT: dict[str, Any] = {
    "app_id": "app",
    "secret": "s3cret",
    "base_url": BASE,
    "timezone": "UTC",
}


def fresh_store() -> dict[str, Any]:
    return {"token_store": MemoryTokenStore()}


class TypedId(int):
    """A customer id of the caller's own type, whose text is its repr: ``str()`` and
    f-strings write ``CustomerId(7)``, as for any int subclass that defines only ``__repr__``."""

    def __repr__(self) -> str:
        return f"CustomerId({int(self)})"


# -- arguments of every type ---------------------------------------------------------------------

TEXT = st.one_of(
    st.text(max_size=12),
    st.text(max_size=6).map(lambda s: s + "\udcff"),  # a lone surrogate
    st.sampled_from(["", " ", "a,b", "a&b=c", "%zz", "\x00"]),
    st.builds(str.__mul__, st.sampled_from(["x", "\u4e2d"]), st.sampled_from([3000, 9000])),
)
INTS = st.one_of(
    st.integers(-5, 5),
    st.integers(),
    st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63)]),
    st.builds(lambda: 10**5000),  # more digits than Python writes as text
)
FLOATS = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]))
TIMES = st.one_of(
    st.datetimes(),
    st.datetimes(timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=8))])),
    st.dates(),
    st.sampled_from(
        [datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))), datetime.min, date.min]
    ),
)
IDENTITIES = st.builds(Identity, TEXT, TEXT, st.none() | TEXT)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _holds_itself() -> Any:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    FLOATS,
    TEXT,
    st.binary(max_size=8),
    TIMES,
    st.decimals(),
    st.sampled_from(list(Gender)),
    IDENTITIES,
    st.builds(object),
)
ANY = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(TEXT, inner, max_size=3),
        st.dictionaries(INTS, inner, max_size=2),
        st.frozensets(st.integers(), max_size=3),
        st.builds(iter, st.lists(inner, max_size=3)),
    ),
    max_leaves=6,
) | st.one_of(
    st.builds(_nested, st.sampled_from([70, 2000])),  # deeper than JSON may, than Python recurses
    st.builds(_holds_itself),
    st.builds(range, st.just(10**6)),
)


def arg(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, so that calls with several arguments reach the sending paths
    too (with even odds, nearly every call held a bad one and was refused), else anything."""
    return st.integers(0, 5).flatmap(lambda pick: ANY if pick == 0 else plausible)


IDS = st.integers(0, 2**63 - 1) | st.integers(0, 2**63 - 1).map(lambda i: TypedId(i))
ID_LISTS = st.one_of(
    st.lists(IDS, max_size=5),
    st.integers(1, 3000).map(lambda n: list(range(1, n))),
    st.just(list(range(10**12, 10**12 + 2000))),
)
FIELD_VALUES = {
    name: arg(
        st.one_of(
            *(
                {
                    str: TEXT,
                    int: INTS,
                    bool: st.booleans(),
                    float: FLOATS,
                    dict: st.dictionaries(TEXT, ANY, max_size=3),
                    Decimal: st.decimals(),
                    datetime: TIMES,
                }.get(t, ANY)
                for t in types
            )
        )
    )
    for name, types in FIELD_TYPES.items()
}
FIELDS = st.fixed_dictionaries({}, optional=FIELD_VALUES)
FILTERS = st.fixed_dictionaries(
    {},
    optional={
        "stage": arg(TEXT),
        "source": arg(TEXT),
        "mobile": arg(TEXT),
        "email": arg(TEXT),
        "gender": arg(st.sampled_from([0, 1, 2, Gender.MALE])),
        "id_list": arg(ID_LISTS),
        "date_created_from": arg(TIMES | TEXT),
        "date_created_to": arg(TIMES | TEXT),
        "last_updated_from": arg(TIMES | TEXT),
        "last_updated_to": arg(TIMES | TEXT),
        "select": arg(st.lists(st.sampled_from(["name", "mobile", "id", "dateCreated"]))),
        "sort_by": arg(st.sampled_from(["id", "name", "dateCreated", "lastUpdated"])),
        "sort_order": arg(st.sampled_from(["asc", "desc"])),
    },
)
PAGING = st.fixed_dictionaries(
    {},
    optional={
        "page_size": arg(st.integers(1, 200)),
        "start_page": arg(st.integers(1, 5)),
        "max_items": arg(st.none() | st.integers(0, 300)),
        "concurrency": arg(st.integers(1, 8)),
        "resume_after": arg(st.none() | IDS),
    },
)
STAT_PAGING = st.fixed_dictionaries(
    {},
    optional={
        "page_size": arg(st.integers(1, 200)),
        "start_page": arg(st.integers(1, 5)),
        "max_items": arg(st.none() | st.integers(0, 300)),
        "concurrency": arg(st.integers(1, 8)),
        "sort_by": arg(st.sampled_from(["id", "orderTotal"])),
        "sort_order": arg(st.sampled_from(["asc", "desc"])),
    },
)
IDENTITY_LISTS = arg(st.lists(arg(IDENTITIES), max_size=4))
LOOKUP_OPTIONS = st.fixed_dictionaries(
    {},
    optional={"concurrency": arg(st.integers(1, 8)), "return_exceptions": arg(st.booleans())},
)


class ShortRepr(reprlib.Repr):
    """reprlib's short reprs, and integers too long for ``repr`` by their size."""

    def repr_int(self, x: int, level: int) -> str:
        return f"<an int of {x.bit_length()} bits>" if x.bit_length() > 256 else repr(x)


SHORT = ShortRepr()


@attrs.frozen(repr=False)
class Call:
    """``dm.<method>(*args, **kwargs)``, with a short repr (a failing example is printed)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)

    def __call__(self, dm: DMHubClient) -> Any:
        resource, name = self.method.split(".")
        return getattr(getattr(dm, resource), name)(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"Call({self.method!r}, {SHORT.repr(self.args)}, {SHORT.repr(self.kwargs)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis would print every field, 2,000 levels deep


def call(method: str, *args: st.SearchStrategy[Any], **kwargs: Any) -> st.SearchStrategy[Call]:
    """Calls of ``method`` with positional ``args`` drawn from those strategies."""
    keywords = kwargs.get("keywords", st.just({}))
    return st.builds(lambda a, k: Call(method, a, k), st.tuples(*args), keywords)


CALLS: st.SearchStrategy[Call] = st.one_of(
    call(
        "customers.create",
        keywords=st.builds(lambda cm, f: {"create_method": cm, **f}, arg(st.none() | TEXT), FIELDS),
    ),
    call("customers.create_with_identities", IDENTITY_LISTS, keywords=FIELDS),
    call("customers.get", arg(IDS)),
    call("customers.update", arg(IDS), keywords=FIELDS),
    call("customers.delete", arg(IDS)),
    call("customers.count", keywords=FILTERS),
    call("customers.list", keywords=st.builds(lambda p, f: {**p, **f}, PAGING, FILTERS)),
    call("customers.list_rows", keywords=st.builds(lambda p, f: {**p, **f}, PAGING, FILTERS)),
    call("identities.add", arg(IDS), arg(IDENTITIES)),
    call("identities.list", arg(ID_LISTS)),
    call("identities.find", arg(IDENTITIES)),
    call("identities.lookup", arg(IDENTITIES)),
    call("identities.lookup_many", IDENTITY_LISTS, keywords=LOOKUP_OPTIONS),
    call("identities.lookup_iter", IDENTITY_LISTS, keywords=LOOKUP_OPTIONS),
    call("customer_statistics.list", arg(st.none() | IDS), keywords=STAT_PAGING),
)

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # the fake clock only moves forward: shareable
    ],
)


@FUZZ
@given(call=CALLS)
# What the fuzz found, kept: each escaped as a raw error before it was fixed.
@example(Call("customers.count", (), {"stage": "lead\udcff"}))  # yarl dropped the surrogate
@example(Call("customers.count", (), {"id_list": list(range(1, 10_001))}))  # a 49 KB URL
@example(Call("customers.get", (10**5000,)))  # ValueError writing the id in the message
@example(Call("customers.list", (), {"page_size": _nested(2000)}))  # RecursionError in repr
@example(Call("customer_statistics.list", (), {"sort_order": _nested(2000)}))
@example(Call("customer_statistics.list", (), {"sort_by": "x" * 1_000_000}))  # a 1 MB URL
@example(Call("customers.create", (), {"attr": {"a": math.nan}}))  # NaN sent
@example(Call("customers.create", (), {"attr": _holds_itself()}))  # RecursionError after a token
@example(Call("customers.create", (), {"name": "\ud800"}))  # UnicodeEncodeError after a token
@example(Call("customers.list", (), {"select": 5}))  # TypeError
@example(Call("identities.lookup_many", (5,)))  # TypeError
@example(Call("customers.count", (), {"date_created_from": "9999-12-31T23:59:59-05:00"}))
@example(
    Call(
        "customers.create",
        (),
        {"date_join": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23)))},
    )
)  # OverflowError
@example(Call("customers.get", (TypedId(7),)))  # sent as /v1/customers/CustomerId(7)
@example(Call("customers.list", (), {"id_list": [TypedId(7)]}))  # a raw ValueError
async def test_every_method_sends_well_formed_requests_or_refuses_first(call: Call) -> None:
    await run(call, **fresh_store())


SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "app_id": arg(st.none() | TEXT),
        "secret": arg(st.none() | TEXT),
        "access_token": arg(st.none() | TEXT),
        "base_url": arg(
            st.sampled_from(
                [BASE, BASE + "/", "http://127.0.0.1:1", "ftp://x", "http://[", "http://h:99999"]
            )
            | TEXT.map(lambda s: "https://" + s)
        ),
        "timeout": arg(FLOATS),
        "max_retries": arg(st.integers(0, 5)),
        "max_concurrency": arg(st.integers(1, 32)),
        "rate_limit": arg(st.none() | st.floats(0.001, 1e6)),
        "auth_error_codes": arg(st.lists(st.integers() | TEXT, max_size=3)),
        "timezone": arg(st.sampled_from([None, "UTC", "Asia/Shanghai", timezone.utc])),
    },
)


@FUZZ
@given(options=SETTINGS)
@example(options={"base_url": "https://x\udcff"})  # UnicodeError at the first call
@example(options={"base_url": "http://h:99999"})  # ValueError at the first call
@example(options={"app_id": "a\udcff"})  # the surrogate dropped from the token request
@example(options={"timeout": "30"})  # TypeError
@example(options={"auth_error_codes": [{}]})  # TypeError
@example(options={"max_concurrency": None})  # TypeError at the first call
@example(options={"app_id": "x" * 9000})  # a token request URL of 9 KB
@example(options={"rate_limit": 10**5000})  # OverflowError making the client
@example(options={"timeout": 10**5000})  # OverflowError at the first call
async def test_client_settings_are_checked_when_the_client_is_made(
    options: dict[str, Any], clock: Any
) -> None:
    # A made client then makes one call: it must be well-formed or refused before sending.
    await run(
        lambda dm: dm.customers.count(),
        **fresh_store(),
        clock=clock,
        sleep=clock.sleep,
        **options,
    )


def _sent_as(method: str, path: str, query: dict[str, str], body: Any = None) -> Any:
    return (method, path, {"access_token": "tok-1", **query}, body)


LIST = {"sidx": "id", "sord": "asc", "rows": "100", "page": "1"}


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (Call("customers.get", (TypedId(7),)), _sent_as("GET", "/v1/customers/7", {})),
        (
            Call("customers.update", (TypedId(7),), {"name": "x"}),
            _sent_as("PUT", "/v1/customers/7", {}, {"name": "x"}),
        ),
        (Call("customers.delete", (TypedId(7),)), _sent_as("DELETE", "/v1/customers/7", {})),
        (
            Call("identities.add", (TypedId(7), Identity("wechat", "o"))),
            _sent_as(
                "POST",
                "/v1/customeridentities",
                {},
                {"customerId": "7", "identityType": "wechat", "identityValue": "o"},
            ),
        ),
        (
            Call("customer_statistics.list", (TypedId(7),)),
            _sent_as("GET", "/v1/customerStatistics", {**LIST, "rows": "50", "customerId": "7"}),
        ),
        (
            Call("customers.list", (), {"id_list": [TypedId(7), 3]}),
            _sent_as("GET", "/v1/customers", {**LIST, "idList": "3,7"}),
        ),
        (
            Call("customers.list", (), {"page_size": TypedId(7), "start_page": TypedId(2)}),
            _sent_as("GET", "/v1/customers", {**LIST, "rows": "7", "page": "2"}),
        ),
    ],
    ids=["get", "update", "delete", "identities.add", "statistics", "id_list", "paging"],
)
async def test_an_int_subclass_goes_out_as_its_digits(call: Call, expected: Any) -> None:
    # An id of the caller's own int type went out as its text: GET /v1/customers/CustomerId(7)
    # (the service's 404 blamed the id), customerId=CustomerId(7), rows=CustomerId(7); an
    # id_list of one was a raw ValueError ("invalid literal for int()") at the call.
    sent = await run(call, **fresh_store())
    assert sent.calls == [expected]


async def test_a_request_param_of_an_int_subclass_goes_out_as_its_digits() -> None:
    sent = await run(
        lambda dm: dm.request("GET", "/v1/customers/count", params={"n": TypedId(7)}),
        **fresh_store(),
    )
    assert sent.calls == [_sent_as("GET", "/v1/customers/count", {"n": "7"})]
