"""``DMHubClient.request``'s checks: the glance at the usual call agrees with the full check.

``check_request`` tells an ASCII, short path and query at a glance and checks anything else in
full; whatever the input, its verdict must be the full check's (here written from the rule).
"""

from __future__ import annotations

import contextlib
import enum
import warnings
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, unquote

import pytest
from _helpers import Int64, serving
from aiohttp import web
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from dmhub_async import DMHubClient, InvalidRequestError
from dmhub_async._validate import (
    MAX_PATH_LENGTH,
    MAX_QUERY_LENGTH,
    MAX_SETTING_LENGTH,
    MAX_URL_LENGTH,
    check_request,
    query_length,
)


def sendable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def path_is_good(path: str) -> bool:
    return (
        path.startswith("/")
        and not path.startswith("//")
        and "?" not in path  # a query goes in params: "?access_token=" went out beside ours
        and "#" not in path
        and sendable(path)
        and not any(c < " " or c == "\x7f" for c in path)
        and len(quote(path, safe="/")) <= MAX_PATH_LENGTH
        # no dot segment, which the URL library resolves to another path before sending
        and not any(seg.partition(";")[0] in (".", "..") for seg in unquote(path).split("/"))
    )


def query_of(params: dict[str, Any]) -> dict[str, str] | None:
    query = {}
    for name, value in params.items():
        if len(name) == 12 and name.casefold() == "access_token":  # the client's own, any case
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:
                return None
            value = str(value)
        if not (sendable(name) and sendable(value)):
            return None
        query[name] = value
    return query if query_length(query) <= MAX_QUERY_LENGTH else None


TEXT = (
    st.text(max_size=40)
    | st.text(alphabet="/abc", min_size=300, max_size=1100)
    | st.text(alphabet="/.;a%2eE", max_size=20)  # dot segments, plain and encoded
)
PATHS = st.builds(lambda head, rest: head + rest, st.sampled_from(["/", "//", "", "v"]), TEXT)
VALUES = (
    st.text(max_size=20)
    | st.integers(-(2**70), 2**70)
    | st.text(alphabet="x%", min_size=1000, max_size=2200)
)
PARAMS = st.dictionaries(st.text(max_size=10), VALUES, max_size=4)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(path=PATHS, params=PARAMS)
@example(path="/v1/\udcff", params={})
@example(path="/v1/x\r\n", params={})
@example(path="/" + "a" * 341, params={})  # 3 * 342 > 1,009: checked in full, and fits
@example(path="/" + "é" * 200, params={})  # 1,201 bytes percent-encoded
@example(path="/v1", params={"a": "x" * 2047})  # 3 * 2,052 > 6,144: checked in full
@example(path="/v1", params={"a": "\udcff"})
@example(path="/v1", params={"a": 2**63})
@example(path="/v1", params={"a": -(2**63)})
@example(path="/v1", params={"a": -(2**63) - 1})
@example(path="/v1/customers/count?access_token=ATTACKER", params={})
@example(path="/v1/customers/count", params={"access_token": "ATTACKER"})
@example(path="/v1/customers/count", params={"ACCESS_TOKEN": "ATTACKER"})
@example(path="/v1/customers/count", params={"acce\u017f\u017f_token": "ATTACKER"})  # long s
@example(path="/v1", params={"%" * 2100: "1"})  # a name past the limit, its value short
@example(path="/v1/customers#x", params={})
@example(path="/v1/customers/1/../2", params={})
@example(path="/v1/%2E%2e", params={})
@example(path="/v1/..;/x", params={})
@example(path="/v1/a.b/...", params={})  # no dot segment: sent as it is
def test_the_glance_agrees_with_the_full_check(path: str, params: dict[str, Any]) -> None:
    expected = query_of(params) if path_is_good(path) else None
    try:
        method, query = check_request("get", path, params, None)
    except InvalidRequestError:
        assert expected is None
    else:
        assert method == "GET"
        assert dict(query or {}) == expected


async def test_the_longest_call_request_takes_is_a_url_under_the_limit() -> None:
    # The longest base URL and token, path and query each takes: the URL was 8,207 bytes
    # (past the 8,192 the README promises, and the 8,190 of a request line aiohttp's own
    # server reads), as the path's 1,024 left no room for "?" and "&access_token=".
    sent: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        sent.append(len(f"{request.scheme}://{request.host}{request.raw_path}"))
        return web.json_response([])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with serving(app) as root:
        base = root + "/" + "p" * (MAX_SETTING_LENGTH - len(root) - 1)
        token = "t" * MAX_SETTING_LENGTH
        async with DMHubClient(access_token=token, base_url=base, timezone="UTC") as dm:
            path = "/" + "y" * (MAX_PATH_LENGTH - 1)
            await dm.request("GET", path, params={"a": "x" * (MAX_QUERY_LENGTH - 2)})
            with pytest.raises(InvalidRequestError, match="path is longer"):
                await dm.request("GET", path + "y")

    assert len(base) == MAX_SETTING_LENGTH
    assert sent
    assert max(sent) <= MAX_URL_LENGTH, sent


@pytest.mark.parametrize("method", [["GET"], None, b"GET", "GETX"])
def test_a_method_of_another_kind_is_refused(method: Any) -> None:
    with pytest.raises(InvalidRequestError, match="method must be one of"):
        check_request(method, "/v1/customers", None, None)


@pytest.mark.dmhub_simulator(customers=0)
async def test_a_post_through_request_is_sent_once_when_its_answer_is_lost(
    dmhub_simulator: Any, dmhub_client: Any
) -> None:
    # idempotent defaulted to True for every method: a POST whose answer was lost was sent
    # again, and made a second customer.
    from dmhub_async import APIConnectionError

    sim, dm = dmhub_simulator, dmhub_client
    sim.faults.script(["reset-after-write"])
    with pytest.raises(APIConnectionError) as info:
        await dm.request("POST", "/v1/customers", json={"name": "raw"})
    assert info.value.outcome_unknown
    assert sim.customers_count() == 1
    made = await dm.request("POST", "/v1/customers", json={"name": "again"})
    sim.faults.script(["reset-after-write"])  # a PUT may be sent again: it is
    await dm.request("PUT", f"/v1/customers/{made['id']}", json={"name": "renamed"})
    assert sim.customer(made["id"])["name"] == "renamed"
    with pytest.raises(InvalidRequestError, match="idempotent"):
        await dm.request("GET", "/v1/customers/count", idempotent="yes")


@pytest.mark.dmhub_simulator(customers=1)
@pytest.mark.parametrize("codes", [{40201}, [40201], frozenset({"40201"}), (" 40201",)])
async def test_not_found_codes_name_the_code_however_it_is_written(
    dmhub_simulator: Any, dmhub_client: Any, codes: Any
) -> None:
    # A code given as text ("40201", the type allows it) never matched the answer's, read as
    # an int: the missing customer was a ServerError, retried five times.
    from dmhub_async import NotFoundError

    with pytest.raises(NotFoundError):
        await dmhub_client.request("GET", "/v1/customers/999", not_found_codes=codes)
    requests = dmhub_simulator.counters.requests
    assert sum(n for path, n in requests.items() if path.startswith("/v1/")) == 1


@pytest.mark.dmhub_simulator(customers=1)
@pytest.mark.parametrize("codes", [40201, "40201", None, [40201, None], [True], [1.5]])
async def test_not_found_codes_that_are_no_codes_are_refused_before_sending(
    dmhub_simulator: Any, dmhub_client: Any, codes: Any
) -> None:
    # They were taken, the call sent, and its error answer then raised a raw TypeError.
    with pytest.raises(InvalidRequestError, match="not_found_codes"):
        await dmhub_client.request("GET", "/v1/customers/999", not_found_codes=codes)
    assert dmhub_simulator.counters.requests == {}


async def test_params_holding_access_token_are_refused_in_words_a_reader_can_follow() -> None:
    # The refusal's own words were taken for a secret and masked as the error was made:
    # "params hold access_token: *** client sends its own token ... DMHubClient(access_token=***".
    async with DMHubClient(access_token="t" * 32, base_url="http://127.0.0.1:9") as dm:
        with pytest.raises(InvalidRequestError) as info:
            await dm.request("GET", "/v1/customers", params={"access_token": "OTHER"})
    message = str(info.value)
    assert "***" not in message
    assert "the client sends its own token with every call" in message
    assert "DMHubClient's access_token argument" in message
    assert "OTHER" not in message


class _FormArgs(dict):  # type: ignore[type-arg]
    """Params as a web framework hands a query over (werkzeug's ``MultiDict``, Flask's
    ``request.args``; Django's ``QueryDict``): a dict of one value a name, its first, as
    ``items()`` and ``[name]`` give it, every value of a name by ``getlist(name)``."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        self._lists: dict[str, list[Any]] = {}
        for name, value in pairs:
            self._lists.setdefault(name, []).append(value)
            self.setdefault(name, value)

    def getlist(self, name: str) -> list[Any]:
        return list(self._lists.get(name, ()))


class _FormArgsOfGenerators(_FormArgs):
    """:class:`_FormArgs` whose ``getlist`` gives a generator of the values, not a list."""

    def getlist(self, name: str) -> Any:
        return (value for value in self._lists.get(name, ()))


@contextlib.asynccontextmanager
async def _client_recording(sent: list[str]) -> AsyncIterator[DMHubClient]:
    """A client of a service that answers every request with no customers, appending each
    request's query string to ``sent``: what went out, or that nothing did."""

    async def answer(request: web.Request) -> web.Response:
        sent.append(request.query_string)
        return web.json_response([])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with (
        serving(app) as root,
        DMHubClient(access_token="t" * 32, base_url=root, timezone="UTC") as dm,
    ):
        yield dm


class _Stage(str, enum.Enum):
    LEAD = "lead"


async def test_params_of_a_str_class_of_their_own_are_sent_as_the_text_they_hold() -> None:
    # `Mapping[str, str | int]` takes them, as mypy does: aiohttp's CIMultiDict keeps its names
    # as istr, and a str enum (StrEnum, or a `str, Enum` mixin) is a str. They were refused
    # before anything was sent, "a param name must be a str, not istr 'idList'", "param
    # 'stage' must be a str or a 64-bit int, not <_Stage.LEAD: 'lead'>", of a str.
    from multidict import CIMultiDict

    sent: list[str] = []
    async with _client_recording(sent) as dm:
        await dm.request("GET", "/v1/customers", params=CIMultiDict(idList="1,2", rows=5))
        await dm.request("GET", "/v1/customers", params={"stage": _Stage.LEAD, "rows": 5})
        # Still refused, as a plain str would be: the name, and two values of one name.
        with pytest.raises(InvalidRequestError, match="access_token parameter"):
            await dm.request("GET", "/v1/customers", params=CIMultiDict(access_token="OTHER"))
        with pytest.raises(InvalidRequestError, match="'IDLIST' more than one value"):
            await dm.request("GET", "/v1/customers", params=CIMultiDict(idList="1", IDLIST="2"))
        with pytest.raises(InvalidRequestError, match="a param name must be a str, not 5"):
            await dm.request("GET", "/v1/customers", params={"stage": _Stage.LEAD, 5: "x"})

    assert sent == [
        f"idList=1,2&rows=5&access_token={'t' * 32}",
        f"stage=lead&rows=5&access_token={'t' * 32}",
    ]


async def test_params_of_an_int_class_of_their_own_are_sent_as_the_int_they_hold() -> None:
    # numpy's int64 (a page size or an id read from a data frame) was refused before anything
    # was sent, "param 'rows' must be a str or a 64-bit int, not int64(5)", of a 64-bit int.
    sent: list[str] = []
    async with _client_recording(sent) as dm:
        await dm.request("GET", "/v1/customers", params={"rows": Int64(5), "page": 2})
        await dm.request("GET", "/v1/customers", params={"idList": Int64(2**63 - 1)})
        # Still refused past 64 bits, as an int is.
        with pytest.raises(InvalidRequestError, match="'rows' must be a str or a 64-bit int"):
            await dm.request("GET", "/v1/customers", params={"rows": Int64(2**63)})

    assert sent == [
        f"rows=5&page=2&access_token={'t' * 32}",
        f"idList={2**63 - 1}&access_token={'t' * 32}",
    ]


async def test_customer_ids_of_an_int_class_of_their_own_are_taken_as_the_int_they_hold() -> None:
    # numpy's int64 (an id read from a data frame) was refused by every method taking a
    # customer id, "get(): a customer id must be an int, not int64", while request() took it.
    from dmhub_async.testing import DMHubSimulator

    async with (
        DMHubSimulator(customers=5) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        ids = sorted(sim.customer_ids())
        got = await dm.customers.get(Int64(ids[1]))
        assert got.id == ids[1]
        listed = [c.id async for c in dm.customers.list(id_list=[Int64(ids[3]), ids[0]])]
        assert sorted(listed) == [ids[0], ids[3]]
        rest = [c.id async for c in dm.customers.list(resume_after=Int64(ids[2]))]
        assert rest == ids[3:]
        everyone = [c.id async for c in dm.customers.list(resume_after=Int64(0))]
        assert everyone == ids  # 0, the least id there is: from the start
        assert await dm.customers.count(id_list=[Int64(ids[4])]) == 1
        await dm.customers.delete(Int64(ids[4]))
        assert sorted(sim.customer_ids()) == ids[:4]
        # A bool is still no id, nor anything past 64 bits.
        with pytest.raises(InvalidRequestError, match=r"get\(\): a customer id must be an int"):
            await dm.customers.get(True)
        with pytest.raises(InvalidRequestError, match=r"get\(\): customer id .* out of range"):
            await dm.customers.get(Int64(2**63))
        with pytest.raises(InvalidRequestError, match=r"id_list\[1\]: customer id _Int64\(-1"):
            await dm.customers.count(id_list=[1, Int64(-1)])
        with pytest.raises(InvalidRequestError, match=r"id_list\[0\]: a customer id must be"):
            await dm.customers.count(id_list=[2.0, Int64(1)])


class _Rows(int):
    """An int of the caller's own class whose text is not its digits (an enum's, 3.10's)."""

    def __str__(self) -> str:
        return f"Rows.R{int(self)}"

    __repr__ = __str__


async def test_a_bool_or_float_param_is_refused_and_an_int_subclass_is_sent_as_its_digits() -> None:
    # A bool is an int to Python, not to the service ("rows=True", or 1 where a flag was
    # meant), and a float no int: refused before anything is sent, as before params of an int
    # class of their own were taken; an int subclass goes out as its digits, whatever its str
    # says.
    sent: list[str] = []
    async with _client_recording(sent) as dm:
        await dm.request("GET", "/v1/customers", params={"rows": _Rows(5)})
        for flag in (True, False, 2.5):  # nor a float, cut to its int part
            with pytest.raises(InvalidRequestError, match=f"'rows' must be .* not {flag}"):
                await dm.request("GET", "/v1/customers", params={"rows": flag})

    assert sent == [f"rows=5&access_token={'t' * 32}"]


class _NoInt:
    """An integer class of its own whose ``__index__`` fails otherwise than TypeError (a
    missing value's, as pandas' ``NA`` is, "cannot convert NA to integer")."""

    def __index__(self) -> int:
        raise ValueError("cannot convert NA to integer")

    def __repr__(self) -> str:
        return "<NA>"


async def test_a_param_or_an_id_whose_index_fails_is_refused_naming_it_before_sending() -> None:
    # The ValueError of its __index__ escaped request() and customers.get() raw, naming no
    # param, as no error of the SDK's.
    from dmhub_async.testing import DMHubSimulator

    async with (
        DMHubSimulator(customers=1) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        with pytest.raises(
            InvalidRequestError, match=r"param 'rows' must be a str or a 64-bit int, not <NA>"
        ):
            await dm.request("GET", "/v1/customers", params={"rows": _NoInt()})
        with pytest.raises(InvalidRequestError, match=r"get\(\): a customer id must be an int"):
            await dm.customers.get(_NoInt())
        with pytest.raises(InvalidRequestError, match=r"id_list\[1\]: a customer id must be"):
            await dm.customers.count(id_list=[1, _NoInt()])
        assert (sim.counters.total, sim.counters.tokens_issued) == (0, 0)  # nothing sent


class _IndexedFloat(float):
    """A float of a class of its own that gives an ``__index__`` (its int part): a float
    still, as numpy's ``float64`` is, which no ``__index__`` makes a customer id."""

    def __index__(self) -> int:
        return int(self)


class _IndexOfTrue:
    """An integer class of its own whose ``__index__`` gives a bool (Python warns of it,
    a warning a library's caller does not see)."""

    def __index__(self) -> int:
        return True

    def __repr__(self) -> str:
        return "_IndexOfTrue()"


@pytest.mark.parametrize("value", [_IndexedFloat(7.5), _IndexOfTrue()], ids=["float", "bool"])
async def test_a_float_or_a_bool_through_index_is_refused_as_a_param_or_an_id(value: Any) -> None:
    # A float subclass with an __index__ went out cut to its int part ("rows=7", "/v1/
    # customers/7" of 7.5), and an __index__ giving True as "1": refused before anything is
    # sent, as a float and a bool are.
    from dmhub_async.testing import DMHubSimulator

    async with (
        DMHubSimulator(customers=1) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        with warnings.catch_warnings():  # as a caller's: Python's warning of a bool unseen
            warnings.simplefilter("ignore", DeprecationWarning)
            with pytest.raises(InvalidRequestError, match=r"param 'rows' must be a str or a 64"):
                await dm.request("GET", "/v1/customers", params={"rows": value})
            with pytest.raises(InvalidRequestError, match=r"get\(\): a customer id must be an"):
                await dm.customers.get(value)
            with pytest.raises(InvalidRequestError, match=r"id_list\[1\]: a customer id must"):
                await dm.customers.count(id_list=[1, value])
        assert (sim.counters.total, sim.counters.tokens_issued) == (0, 0)  # nothing sent


async def test_paging_and_concurrency_of_an_int_class_of_their_own_are_taken_as_ids_are(
    tmp_path: Any,
) -> None:
    # numpy's int64 (a page size read from a config's data frame) was refused by list(),
    # list_rows(), lookup_many() and export_customers(), "page_size must be an int >= 1, not
    # Int64(2)", where a customer id or a param of that class is taken; a float or a bool is
    # still refused, whatever its __index__.
    from dmhub_async import Identity
    from dmhub_async.export import export_customers
    from dmhub_async.testing import DMHubSimulator

    async with (
        DMHubSimulator(customers=5) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        ids = sorted(sim.customer_ids())
        walk = dm.customers.list(page_size=Int64(2), max_items=Int64(3), concurrency=Int64(2))
        assert [c.id async for c in walk] == ids[:3]
        assert (walk.page_size, walk.max_items, walk.concurrency) == (2, 3, 2)
        assert {type(walk.page_size), type(walk.max_items)} == {int}
        rows = dm.customers.list_rows(id_list=ids, page_size=Int64(2), max_items=Int64(4))
        assert [row["id"] async for row in rows] == ids[:4]
        email = Identity("email", "nobody@example.com")
        assert await dm.identities.lookup_many([email], concurrency=Int64(2)) == {email: None}
        found = [pair async for pair in dm.identities.lookup_iter([email], concurrency=Int64(2))]
        assert found == [(email, None)]
        report = await export_customers(
            dm,
            tmp_path / "out.jsonl",
            page_size=Int64(2),
            concurrency=Int64(2),
            checkpoint=tmp_path / "cp.json",
            progress=False,
        )
        assert (report.exported, report.pages) == (5, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for bad in (_IndexedFloat(2.5), _IndexOfTrue(), True, 2.0):
                with pytest.raises(InvalidRequestError, match="page_size must be an int >= 1"):
                    dm.customers.list(page_size=bad)
                with pytest.raises(InvalidRequestError, match="max_items must be an int >= 0"):
                    dm.customers.list_rows(max_items=bad)
                with pytest.raises(InvalidRequestError, match="concurrency must be an int from"):
                    await dm.identities.lookup_many([email], concurrency=bad)
        with pytest.raises(InvalidRequestError, match=r"page_size must be an int from 1 to"):
            dm.customers.list(page_size=Int64(2**31))
        # The bound the message says is taken: "from 1 to 2147483647".
        last = dm.customers.list(page_size=Int64(2**31 - 1), start_page=Int64(2**31 - 1))
        assert (last.page_size, last.start_page) == (2**31 - 1, 2**31 - 1)


class _FormArgsFailing(_FormArgs):
    """:class:`_FormArgs` whose ``getlist`` raises (a framework's query read past its
    request, a proxy of one gone)."""

    def getlist(self, name: str) -> Any:
        raise RuntimeError("Working outside of request context.")


class _FormArgsFailingLater(_FormArgs):
    """:class:`_FormArgs` whose ``getlist`` gives values that raise as they are read."""

    def getlist(self, name: str) -> Any:
        yield "1"
        raise RuntimeError("Working outside of request context.")


@pytest.mark.parametrize("params_type", [_FormArgsFailing, _FormArgsFailingLater])
async def test_params_whose_getlist_fails_are_refused_naming_the_param(params_type: Any) -> None:
    # The RuntimeError of the params' own getlist() escaped request() raw, as no error of the
    # SDK's, naming no param.
    sent: list[str] = []
    async with _client_recording(sent) as dm:
        with pytest.raises(InvalidRequestError, match=r"request\(\): params' values of 'idList'"):
            await dm.request("GET", "/v1/customers", params=params_type([("idList", "1")]))
    assert sent == []


@pytest.mark.parametrize(
    "params",
    [
        MultiDict([("idList", "1"), ("idList", "2")]),
        MultiDict([("idList", 1), ("idList", 2)]),
        # Its items() give a name once: the check of them passed, and "idList=1" went out.
        _FormArgs([("idList", "1"), ("idList", "2")]),
        # Its getlist() a generator of the two: read as no more than one, "idList=1" went out.
        _FormArgsOfGenerators([("idList", "1"), ("idList", "2")]),
    ],
    ids=[
        "MultiDict",
        "MultiDict of ints",
        "a framework's query args",
        "query args whose getlist is a generator",
    ],
)
async def test_params_giving_a_name_twice_are_refused_before_anything_is_sent(
    params: Any,
) -> None:
    # A MultiDict (aiohttp's own way to repeat a name) is a Mapping, as request() asks: the
    # query was made a dict of it as it was sent, and "idList=1&idList=2" went out as
    # "idList=1" (as "idList=2" when the values were ints), answered for one id, no error.
    sent: list[str] = []
    async with _client_recording(sent) as dm:
        with pytest.raises(InvalidRequestError, match="more than one value") as info:
            await dm.request("GET", "/v1/customers", params=params)
        # One value a name, in a MultiDict too, is sent whole.
        await dm.request("GET", "/v1/customers", params=MultiDict(idList="1,2", rows=5))
        await dm.request("GET", "/v1/customers", params=_FormArgs([("idList", "3,4")]))
        await dm.request("GET", "/v1/customers", params=_FormArgsOfGenerators([("idList", "5")]))

    assert "'idList' more than one value" in str(info.value)
    assert sent == [
        f"idList=1,2&rows=5&access_token={'t' * 32}",
        f"idList=3,4&access_token={'t' * 32}",
        f"idList=5&access_token={'t' * 32}",
    ]


@pytest.mark.parametrize("value", [-(2**63), Int64(-(2**63))], ids=["int", "int class"])
async def test_the_least_64_bit_int_is_sent_as_a_param(value: Any) -> None:
    # -2**63 is a 64-bit int (the least), yet it was refused before anything was sent, "param
    # 'x' must be a str or a 64-bit int, not -9223372036854775808": its bit_length is 64.
    sent: list[str] = []
    async with _client_recording(sent) as dm:
        await dm.request("GET", "/v1/customers", params={"x": value})
        # One past it, either way, is no 64-bit int.
        for beyond in (-(2**63) - 1, 2**63):
            with pytest.raises(InvalidRequestError, match="'x' must be a str or a 64-bit int"):
                await dm.request("GET", "/v1/customers", params={"x": beyond})

    assert sent == [f"x={-(2**63)}&access_token={'t' * 32}"]


@pytest.mark.parametrize("name", ["ACCESS_TOKEN", "Access_Token", "access_toKen"])
async def test_params_holding_access_token_in_other_cases_are_refused_before_sending(
    name: str,
) -> None:
    # Sent beside the client's own, "ACCESS_TOKEN=OTHER&access_token=...": a service that
    # reads names in any case (docs/contract.md does not say it does not) took one of two
    # tokens, another app's perhaps, as "access_token" alone was refused for.
    sent: list[str] = []
    async with _client_recording(sent) as dm:
        with pytest.raises(InvalidRequestError, match="access_token parameter") as info:
            await dm.request("GET", "/v1/customers", params={"rows": 5, name: "OTHER"})
        # A name that only holds it is sent.
        await dm.request("GET", "/v1/customers", params={"my_access_token": "x"})

    assert "OTHER" not in str(info.value)
    assert sent == [f"my_access_token=x&access_token={'t' * 32}"]
