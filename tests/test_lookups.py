"""``dm.identities.lookup``, ``lookup_many`` and ``lookup_iter`` against a fake client.

The fake stands in for :class:`DMHubClient` at its ``request`` method, so these tests count
the requests sent and the lookups in flight without any HTTP.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import url
from aioresponses import CallbackResult

from dmhub_async import (
    AuthenticationError,
    Identity,
    InvalidRequestError,
    ResponseDecodeError,
    ServerError,
)
from dmhub_async._sansio import TOKEN_PATH
from dmhub_async.resources.identities import Identities


class FakeClient:
    """Answers identity queries from a dict; counts requests and lookups in flight."""

    def __init__(
        self,
        bound: dict[Identity, int],
        *,
        latency: float = 0.0,
        failing: frozenset[Identity] = frozenset(),
    ) -> None:
        self.bound = bound
        self.latency = latency
        self.failing = failing
        self.asked: Counter[Identity] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False

    def check_open(self) -> None:
        """Open, as a client's session says when it is."""

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        assert (method, path) == ("GET", "/v1/customeridentities")
        params = kwargs["params"]
        identity = Identity(params["identityType"], params["identityValue"])
        self.asked[identity] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
            if identity in self.failing:
                raise ServerError("GET /v1/customeridentities -> HTTP 500", status=500, path=path)
            if identity not in self.bound:
                return []
            return [
                # Another binding of the same type first: lookup must match type *and* value.
                {"customerId": "1", "identityType": identity.type, "identityValue": "other"},
                {
                    "customerId": str(self.bound[identity]),
                    "identityType": identity.type,
                    "identityValue": identity.value,
                    "identityName": None,
                },
            ]
        finally:
            self.in_flight -= 1


def identities(n: int, *, kind: str = "wechat") -> list[Identity]:
    return [Identity(kind, f"o{i}") for i in range(n)]


def fake(n: int = 100, **kwargs: Any) -> tuple[FakeClient, Identities]:
    client = FakeClient({ident: 1000 + i for i, ident in enumerate(identities(n))}, **kwargs)
    return client, Identities(client)  # type: ignore[arg-type]


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def test_lookup_finds_the_customer_or_none() -> None:
    _, ids = fake(3)
    assert await ids.lookup(Identity("wechat", "o2")) == 1002
    assert await ids.lookup(Identity("wechat", "nobody")) is None


async def test_find_keeps_only_the_bindings_of_the_identity_asked_for() -> None:
    _, ids = fake(3)

    # The answer also holds another binding of the type (customer 1, "other"): lookup() skips
    # it, but find() returned it first, so found[0].customer_id was customer 1, not 1002.
    found = await ids.find(Identity("wechat", "o2"))

    assert [(b.customer_id, b.type, b.value) for b in found] == [(1002, "wechat", "o2")]
    assert await ids.find(Identity("wechat", "nobody")) == []


async def test_list_keeps_only_the_bindings_of_the_customers_asked_for() -> None:
    class Answers:
        """An answer that holds another customer's binding besides the one asked for."""

        def check_open(self) -> None:
            """Open."""

        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            assert (method, path, kwargs["params"]["customerIds"]) == (
                "GET",
                "/v1/customeridentities",
                "2",
            )
            return [
                {"customerId": "1", "identityType": "wechat", "identityValue": "a"},
                {"customerId": "2", "identityType": "wechat", "identityValue": "b"},
            ]

    # customer 1's binding was returned among customer 2's, as find() returned another's.
    found = await Identities(Answers()).list([2])  # type: ignore[arg-type]

    assert [(b.customer_id, b.type, b.value) for b in found] == [(2, "wechat", "b")]


@pytest.mark.parametrize(
    "answer",
    [
        {"identities": []},  # not a list
        {},  # an empty object: it was "no binding", the identity "not found"
        "",  # an empty string, likewise
        None,
        [{"customerId": "not a number", "identityType": "wechat", "identityValue": "o1"}],
        ["o1"],
    ],
)
async def test_lookup_of_an_answer_that_is_no_list_of_bindings_is_a_decode_error(
    answer: Any,
) -> None:
    class Answering(FakeClient):
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            return answer

    ids = Identities(Answering({}))  # type: ignore[arg-type]
    with pytest.raises(ResponseDecodeError, match="not a list of identities"):
        await ids.lookup(Identity("wechat", "o1"))
    with pytest.raises(ResponseDecodeError):
        await ids.lookup_many([Identity("wechat", "o1")])


async def test_lookup_many_names_the_input_whose_answer_was_no_list_of_bindings() -> None:
    # "the answer is not a list of identities: expected a JSON array, got dict" named neither
    # the request nor which of 5,000 inputs it answered, as lookup_many's error promises.
    class Answering(FakeClient):
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return {"weird": 1} if kwargs["params"]["identityValue"] == "o7" else []

    ids = Identities(Answering({}))  # type: ignore[arg-type]
    wanted = [*identities(5), Identity("wechat", "o3"), *identities(10)[5:]]  # o7 at 8
    with pytest.raises(ResponseDecodeError) as caught:
        await ids.lookup_many(wanted, concurrency=4)
    assert str(caught.value) == (
        "lookup_many(): identities[8] (a wechat identity): the answer is not a list of"
        " identities: expected a JSON array, got dict"
    )
    assert (caught.value.method, caught.value.path) == ("GET", "/v1/customeridentities")
    assert not other_tasks()


async def test_lookup_many_maps_each_identity_and_none_for_unknown() -> None:
    client, ids = fake(50)
    wanted = [*identities(50), Identity("email", "nobody@example.com")]
    result = await ids.lookup_many(wanted, concurrency=8)
    assert result == {
        **{ident: 1000 + i for i, ident in enumerate(identities(50))},
        Identity("email", "nobody@example.com"): None,
    }
    assert list(result) == wanted  # input order
    assert client.max_in_flight == 8


async def test_lookup_many_of_nothing_or_of_fewer_than_its_concurrency() -> None:
    client, ids = fake(3)
    assert await ids.lookup_many([]) == {}
    assert not client.asked
    wanted = [Identity("wechat", "o2"), Identity("wechat", "nobody"), Identity("wechat", "o0")]
    result = await ids.lookup_many(wanted, concurrency=64)
    assert list(result.items()) == [(wanted[0], 1002), (wanted[1], None), (wanted[2], 1000)]
    assert sum(client.asked.values()) == 3
    assert not other_tasks()


async def test_lookup_many_looks_up_repeats_once() -> None:
    client, ids = fake(10)
    named = Identity("wechat", "o3", name="nickname")  # the name takes no part in equality
    wanted = identities(10) * 3 + [named]
    result = await ids.lookup_many(wanted, concurrency=4)
    assert len(result) == 10
    assert result[named] == 1003
    assert sum(client.asked.values()) == 10
    assert set(client.asked.values()) == {1}


async def test_lookup_many_return_exceptions_maps_failures_to_their_exception() -> None:
    bad = Identity("wechat", "o7")
    _, ids = fake(10, failing=frozenset({bad}))
    result = await ids.lookup_many(identities(12), concurrency=4, return_exceptions=True)
    assert isinstance(result[bad], ServerError)
    assert result[Identity("wechat", "o1")] == 1001
    assert result[Identity("wechat", "o11")] is None
    assert len(result) == 12


async def test_lookup_many_raises_the_first_failure_and_cancels_the_rest() -> None:
    client, ids = fake(200, latency=0.001, failing=frozenset({Identity("wechat", "o5")}))
    with pytest.raises(ServerError):
        await ids.lookup_many(identities(200), concurrency=16)
    assert not other_tasks()
    assert client.in_flight == 0
    assert sum(client.asked.values()) < 40  # it stopped early


async def test_lookup_many_names_the_input_whose_lookup_failed() -> None:
    # "GET /v1/customeridentities -> HTTP 500" named none of the inputs (the URL's value is
    # masked): which of 5,000 to check or drop? Its first place, and its type; not its value.
    bad = Identity("wechat", "o7")
    _, ids = fake(10, failing=frozenset({bad}))
    wanted = [*identities(5), Identity("wechat", "o3"), *identities(10)[5:]]  # o7 at 8
    with pytest.raises(ServerError) as caught:
        await ids.lookup_many(wanted, concurrency=4)
    message = str(caught.value)
    assert message == (
        "lookup_many(): identities[8] (a wechat identity): GET /v1/customeridentities -> HTTP 500"
    )
    assert caught.value.status == 500
    assert not other_tasks()


async def test_lookup_many_names_no_input_for_an_error_none_of_them_caused() -> None:
    # A refused secret fails every lookup with one error: it is no input's, and each lookup
    # named it again had the message start with eight places.
    refused = AuthenticationError(
        "GET /security/accesstoken -> HTTP 200, error_code 40004", status=200, path=TOKEN_PATH
    )

    class Refused(FakeClient):
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            raise refused

    ids = Identities(Refused({}))  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError) as caught:
        await ids.lookup_many(identities(50), concurrency=8)
    assert str(caught.value) == "GET /security/accesstoken -> HTTP 200, error_code 40004"


async def _all_answers(ids: Identities, method: str, wanted: list[Identity]) -> Any:
    """``lookup_many``'s or ``lookup_iter``'s answers, 8 at a time, failures returned."""
    if method == "lookup_many":
        return await ids.lookup_many(wanted, concurrency=8, return_exceptions=True)
    return [pair async for pair in ids.lookup_iter(wanted, concurrency=8, return_exceptions=True)]


@pytest.mark.parametrize("method", ["lookup_many", "lookup_iter"])
async def test_refused_credentials_end_the_lookups_even_with_return_exceptions(
    method: str,
) -> None:
    # With return_exceptions=True a refused secret was every identity's "result": 20,000
    # AuthenticationErrors, and a token request with the refused secret for each wave of
    # lookups (625 against the simulator). It is the app's error, as a closed client's is.
    refused = AuthenticationError("refused", status=200, code=40004, path=TOKEN_PATH)

    class Refused(FakeClient):
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            self.asked[Identity("sent", "sent")] += 1
            await asyncio.sleep(0)
            raise refused

    client = Refused({})
    ids = Identities(client)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError) as caught:
        await _all_answers(ids, method, identities(500))
    assert str(caught.value) == "refused"  # no identity named: none of them caused it
    assert sum(client.asked.values()) <= 8  # the first wave, not one a lookup
    assert not other_tasks()


async def test_a_token_refused_on_one_lookup_stays_its_result_with_return_exceptions() -> None:
    # Not the credentials: a token refused again after its refresh (two processes taking the
    # token in turn) on one lookup's own request; the others are answered.
    refused = AuthenticationError("refused", status=401, code=40001, path="/v1/customeridentities")

    class RefusedOnce(FakeClient):
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            if kwargs["params"]["identityValue"] == "o3":
                raise refused
            return await super().request(method, path, **kwargs)

    ids = Identities(RefusedOnce({Identity("wechat", "o1"): 1001}))  # type: ignore[arg-type]
    result = await _all_answers(ids, "lookup_many", identities(5))
    assert result[Identity("wechat", "o3")] is refused
    assert result[Identity("wechat", "o1")] == 1001


@pytest.mark.parametrize(
    "bad",
    [
        ("wechat", "o1"),  # a tuple, not an Identity
        Identity("", "o1"),
        Identity("wechat", ""),
        Identity("wechat", "  "),  # a blank cell read with its padding
        Identity(" ", "o1"),
        Identity("t" * 33, "o1"),
        Identity("wechat", "v" * 129),
    ],
)
async def test_lookup_many_refuses_a_bad_identity_before_any_request(bad: Any) -> None:
    client, ids = fake(10)
    with pytest.raises(InvalidRequestError):
        await ids.lookup_many([*identities(10), bad])
    assert not client.asked


@pytest.mark.parametrize("kind", ["mobile ", " wechat", "member-card\u3000", "  email"])
async def test_an_identity_type_with_white_space_around_it_is_refused_before_any_request(
    kind: str,
) -> None:
    # Identity("mobile ", "13800138000"), a type read from a sheet with its padding: sent as
    # it was, and answered "not found" (None): the customer holding it reported as none. A
    # padded mobile or email value was refused; a padded type, which no service holds, not.
    client, ids = fake(10)
    with pytest.raises(InvalidRequestError) as caught:
        await ids.lookup_many([*identities(3), Identity(kind, "13800138000")])
    said = str(caught.value)
    assert "identities[3]" in said
    assert f"identity type {kind.strip()!r}" in said
    assert "white space" in said
    assert "13800138000" not in said  # the type, never the value: personal data
    assert not client.asked


MANGLED = [
    ("mobile", "13800138000.0", "ends in .0"),  # str() of a float, pandas' float column
    ("mobile", "1.38001E+10", "scientific notation"),  # Excel's General format
    ("member-card", "6.22848e+18", "scientific notation"),  # str() of a float, any type
    ("mobile", "'13800138000", "apostrophe"),
    ("mobile", '="13800138000"', "formula"),
    ("mobile", "\uff11\uff13\uff18\uff10\uff10\uff11\uff13\uff18\uff10\uff10\uff10", "full-width"),
    ("email", "wang\uff20example.com", "full-width"),
    ("email", "wang@example\u3002com", "full-width"),
]


@pytest.mark.parametrize(("kind", "value", "said"), MANGLED)
@pytest.mark.parametrize("method", ["lookup_many", "lookup_iter"])
async def test_a_value_a_spreadsheet_or_a_float_mangled_is_refused_naming_its_item(
    method: str, kind: str, value: str, said: str
) -> None:
    # Sent as it was, it came back "not found": the customer holding 13800138000 reported as
    # none. The CLI's lookup --in refused them; the Python API sent them.
    client, ids = fake(10)
    wanted = [*identities(3), Identity(kind, value), *identities(10)]

    async def call() -> None:
        if method == "lookup_many":
            await ids.lookup_many(wanted)
        else:
            async for _ in ids.lookup_iter(wanted):
                pass

    with pytest.raises(InvalidRequestError) as caught:
        await call()
    message = str(caught.value)
    assert message.startswith(f"{method}(): identities[3]: identity value of type {kind} ")
    assert said in message
    assert value not in message  # its place, not its value: personal data
    assert client.asked == (Counter() if method == "lookup_many" else Counter(identities(3)))


@pytest.mark.parametrize(
    "wanted",
    [
        Identity("mobile", "+8613800138000"),
        Identity("mobile", "13800138000"),
        Identity("wechat", "o-1.0"),  # a .0 is a mobile's mark of a float only
        Identity("email", "\u738b@\u4f8b\u5b50.\u4e2d\u56fd"),  # an address in Chinese
        Identity("member-card", "1E5"),  # no + sign: not how a float is written
        Identity("Mobile", "13800138000.0"),  # a custom type: the contract allows any value
        Identity("mobile", "138 0013 8000"),  # sent as typed: the service may hold it so
    ],
)
async def test_a_value_the_contract_allows_is_sent_as_it_is(wanted: Identity) -> None:
    client, ids = fake(10)
    assert await ids.lookup_many([wanted]) == {wanted: None}
    assert client.asked == Counter([wanted])


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True, 65, 10**6])  # 65: past the walks' cap
async def test_bad_concurrency_is_refused_before_any_request(concurrency: Any) -> None:
    client, ids = fake(10)
    with pytest.raises(InvalidRequestError):
        await ids.lookup_many(identities(10), concurrency=concurrency)
    with pytest.raises(InvalidRequestError):
        async for _ in ids.lookup_iter(identities(10), concurrency=concurrency):
            pass
    assert not client.asked


@pytest.mark.parametrize("flag", ["no", 0, None])
async def test_a_return_exceptions_that_is_no_flag_is_refused_before_any_request(
    flag: Any,
) -> None:
    """``return_exceptions="no"`` was read as true: failed lookups came back as answers."""
    client, ids = fake(10)
    with pytest.raises(InvalidRequestError, match=r"lookup_many\(\): return_exceptions must be"):
        await ids.lookup_many(identities(10), return_exceptions=flag)
    with pytest.raises(InvalidRequestError, match=r"lookup_iter\(\): return_exceptions must be"):
        async for _ in ids.lookup_iter(identities(10), return_exceptions=flag):
            pass
    assert not client.asked


async def test_lookup_iter_keeps_input_order_with_repeats() -> None:
    client, ids = fake(20, latency=0.001)
    wanted = [Identity("wechat", f"o{i % 7}") for i in range(40)] + [Identity("x", "y")]
    got = [pair async for pair in ids.lookup_iter(wanted, concurrency=5)]
    assert [ident for ident, _ in got] == wanted
    assert [cid for _, cid in got] == [1000 + i % 7 for i in range(40)] + [None]
    # Repeats are looked up once while they are remembered (in flight or answered).
    assert sum(client.asked.values()) == 8


async def test_lookup_iter_accepts_an_async_iterable() -> None:
    _, ids = fake(30)

    async def stream() -> AsyncIterator[Identity]:
        for ident in identities(30):
            await asyncio.sleep(0)
            yield ident

    got = [cid async for _, cid in ids.lookup_iter(stream(), concurrency=4)]
    assert got == list(range(1000, 1030))


async def test_lookup_iter_holds_about_concurrency_lookups_at_once() -> None:
    """An endless input: it is read only as fast as lookups finish, never all at once."""
    client, ids = fake(0, latency=0.001)
    read = 0

    def endless() -> Iterator[Identity]:
        nonlocal read
        while True:
            read += 1
            yield Identity("wechat", f"o{read}")

    got = 0
    async for _ in ids.lookup_iter(endless(), concurrency=8):
        got += 1
        assert read - got <= 8  # input read ahead of the output: bounded
        assert client.in_flight <= 8
        if got == 200:
            break
    assert client.max_in_flight == 8
    await asyncio.sleep(0)  # the generator's cleanup runs on the loop after the break
    for _ in range(10):
        if not other_tasks():
            break
        await asyncio.sleep(0)
    assert not other_tasks()


@pytest.mark.parametrize("concurrency", [3, 4])
async def test_lookup_iter_goes_on_looking_up_while_the_one_at_its_head_waits(
    concurrency: int,
) -> None:
    """A lookup being retried (a 5xx's backoff, a 429's Retry-After) at the head of the input
    held every other: the answers behind it counted as lookups until handed back, so
    nothing more was sent until it ended (a CLI lookup of 20,000 rows with 3% of answers
    failing took 169 s, against 13 s with none). At concurrency 3 too: at 4 alone the
    window reached its bound just as every lookup was in flight, and one input more taken
    (a bound of 4 x concurrency + 1) went unseen."""
    head = Identity("wechat", "o0")
    release = asyncio.Event()

    class HeldHead(FakeClient):
        sent = now = most = 0  # requests sent, in flight, most in flight (the head's too)

        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            self.sent += 1
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                if kwargs["params"]["identityValue"] == head.value:
                    await release.wait()
                return await super().request(method, path, **kwargs)
            finally:
                self.now -= 1

    client = HeldHead({ident: 1000 + i for i, ident in enumerate(identities(100))})
    ids = Identities(client)  # type: ignore[arg-type]
    got: list[tuple[Identity, Any]] = []

    async def consume() -> None:
        async for pair in ids.lookup_iter(identities(100), concurrency=concurrency):
            got.append(pair)

    task = asyncio.create_task(consume())
    for _ in range(200):
        await asyncio.sleep(0)

    # Up to 4 x concurrency taken while the head waits, never more in flight than concurrency.
    assert client.sent == 4 * concurrency
    assert client.most == concurrency
    assert not got
    release.set()
    await task
    assert got == [(ident, 1000 + i) for i, ident in enumerate(identities(100))]
    assert client.most == concurrency
    assert client.sent == 100


async def test_lookup_iter_whose_lookups_end_together_reports_no_error_of_its_own() -> None:
    """Lookups ending at once while lookup_iter waits for one of them to end (every one of
    ``concurrency`` in flight, the head among them) end the wait once: a second end that
    set it again made asyncio log "Exception in callback" (InvalidStateError) of a run
    whose answers were all right."""
    release = asyncio.Event()

    class Held(FakeClient):
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            await release.wait()
            return await super().request(method, path, **kwargs)

    wanted = identities(6)
    client = Held({ident: 1000 + i for i, ident in enumerate(wanted)})
    ids = Identities(client)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        got: list[tuple[Identity, Any]] = []

        async def consume() -> None:
            async for pair in ids.lookup_iter(wanted, concurrency=2):
                got.append(pair)

        task = asyncio.create_task(consume())
        for _ in range(20):  # both lookups sent, lookup_iter waiting for one to end
            await asyncio.sleep(0)
        release.set()  # both end in one turn of the loop
        await task
    finally:
        loop.set_exception_handler(None)
    assert got == [(ident, 1000 + i) for i, ident in enumerate(wanted)]
    assert errors == []


async def test_lookup_iter_closed_after_a_break_cancels_its_lookups_at_once() -> None:
    client, ids = fake(0, latency=0.01)
    lookups = ids.lookup_iter(identities(1000), concurrency=8)
    await anext(lookups)
    await anext(lookups)  # the ninth lookup has started: a break here would leave it running
    assert other_tasks()
    await lookups.aclose()
    assert not other_tasks()  # nothing left that could send
    assert sum(client.asked.values()) == 8  # the first eight: none sent after the close


_CLOSES_LOOKUP_ITER = """
import contextlib

from dmhub_async import DMHubClient, Identity


async def first_found(dm: DMHubClient, wanted: list[Identity]) -> int | None:
    async with contextlib.aclosing(dm.identities.lookup_iter(wanted)) as lookups:
        async for _, customer_id in lookups:
            if customer_id is not None:
                return customer_id
    return None


async def first_failure(dm: DMHubClient, wanted: list[Identity]) -> Exception | None:
    lookups = dm.identities.lookup_iter(wanted, return_exceptions=True)
    try:
        async for _, outcome in lookups:
            if isinstance(outcome, Exception):
                return outcome
    finally:
        await lookups.aclose()
    return None
"""


def test_lookup_iter_can_be_closed_under_a_users_mypy_strict(
    tmp_path: Path, mypy_strict: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # Typed AsyncIterator, it had no aclose: the one way to stop its lookups at once
    # (contextlib.aclosing, or aclose()) failed a user's mypy --strict with two errors.
    program = tmp_path / "first_found.py"
    program.write_text(_CLOSES_LOOKUP_ITER, encoding="utf-8")
    result = mypy_strict(program, cwd=tmp_path, mypy_path=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout + result.stderr


async def test_lookup_iter_of_many_repeats_lets_other_tasks_run() -> None:
    # Repeats are answered from memory without a pause: once the few identities of a file of
    # orders were known, the rest went out without the event loop running (1,000,000 repeats
    # of 5 held it 7 s: the CLI's Ctrl-C, a service's health checks and other calls waited).
    client, ids = fake(5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        n = 0
        async for _ in ids.lookup_iter(identities(5) * 20_000, concurrency=4):
            n += 1
            if n == 10_000:
                before = ticks
        assert n == 100_000
        assert ticks - before >= 50  # the loop ran while the other 90,000 went out
    finally:
        task.cancel()
    assert sum(client.asked.values()) == 5


async def test_lookup_many_lets_other_tasks_run_while_it_checks_its_input() -> None:
    # Every identity is checked before the first request, in one go: 1,000,000 (repeats of 5,
    # from a file of orders) held the event loop 0.2 s, a million distinct ones 1 s, and a
    # service's other calls and health checks waited.
    client, ids = fake(5)
    ticks = 0
    at_first_request: list[int] = []
    request = client.request

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    async def watched(method: str, path: str, **kwargs: Any) -> Any:
        at_first_request.append(ticks)
        return await request(method, path, **kwargs)

    client.request = watched  # type: ignore[method-assign]
    task = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0)
        before = ticks
        found = await ids.lookup_many(identities(5) * 20_000, concurrency=4)
        assert at_first_request[0] - before >= 50  # the loop ran while the 100,000 were checked
    finally:
        task.cancel()
    assert found == {ident: 1000 + i for i, ident in enumerate(identities(5))}
    assert sum(client.asked.values()) == 5


async def test_lookup_iter_checks_each_identity_before_its_request() -> None:
    client, ids = fake(10)
    with pytest.raises(InvalidRequestError):
        async for _ in ids.lookup_iter([Identity("wechat", ""), *identities(10)]):
            pass
    assert not client.asked


async def test_lookup_iter_return_exceptions_yields_the_exception_in_place() -> None:
    bad = Identity("wechat", "o2")
    _, ids = fake(5, failing=frozenset({bad}))
    got = [pair async for pair in ids.lookup_iter(identities(5), return_exceptions=True)]
    assert [ident for ident, _ in got] == identities(5)
    assert isinstance(got[2][1], ServerError)
    assert got[3][1] == 1003


async def test_cancelling_lookup_many_cancels_its_lookups() -> None:
    client, ids = fake(500, latency=0.01)
    task = asyncio.create_task(ids.lookup_many(identities(500), concurrency=32))
    await asyncio.sleep(0.015)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.in_flight == 0
    assert not other_tasks()


@pytest.mark.parametrize("gap", [1, 0], ids=["cancelled-twice", "cancelled-at-every-turn"])
async def test_lookup_iter_cancelled_again_as_it_stops_cancels_every_lookup(gap: int) -> None:
    # A second cancel (a task group's after an asyncio.timeout's; anyio's cancel scope, which
    # cancels at every turn until its task leaves) landed as the stopping walk waited for
    # its input's next item to end: out it came, its lookups never cancelled, and they ran
    # on (and sent) after the call had ended, holding the client's slots.
    client, ids = fake(0, latency=3600)
    inputs, fed = fed_from_a_queue()
    for identity in identities(4):
        inputs.put_nowait(identity)

    async def consume() -> None:
        async for _ in ids.lookup_iter(fed, concurrency=8):
            pass

    task = asyncio.create_task(consume())
    for _ in range(100):  # four lookups under way, the walk waiting for a fifth item
        if client.in_flight == 4:
            break
        await asyncio.sleep(0)
    task.cancel()
    for _ in range(gap):
        await asyncio.sleep(0)  # the walk stopping: its wait for the input's next item
    task.cancel()
    while gap == 0 and not task.done():
        await asyncio.sleep(0)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.in_flight == 0
    assert not other_tasks()


def fed_from_a_queue() -> tuple[asyncio.Queue[Identity | None], AsyncIterator[Identity]]:
    """A queue, and an async input of what is put on it until None."""
    inputs: asyncio.Queue[Identity | None] = asyncio.Queue()

    async def from_queue() -> AsyncIterator[Identity]:
        while (item := await inputs.get()) is not None:
            yield item

    return inputs, from_queue()


async def test_lookup_iter_hands_back_an_answer_before_the_next_input_arrives() -> None:
    # Fed from a queue that gets an item now and then: an answered lookup waited for the next
    # item to arrive, however long that took.
    _, ids = fake(5)
    inputs, fed = fed_from_a_queue()
    walk = ids.lookup_iter(fed, concurrency=4)
    await inputs.put(Identity("wechat", "o1"))
    # Nothing more is put until the first answer is out: before, this waited for ever.
    assert await asyncio.wait_for(walk.__anext__(), 5) == (Identity("wechat", "o1"), 1001)
    await inputs.put(Identity("wechat", "o2"))
    await inputs.put(None)
    assert [pair async for pair in walk] == [(Identity("wechat", "o2"), 1002)]
    assert not other_tasks()


@pytest.mark.parametrize(
    "burst",
    [["o1", "o2", "o3"], ["o1", "o1", "o2"]],  # and a repeat, answered from the one lookup
    ids=["three", "with a repeat"],
)
async def test_lookup_iter_hands_back_every_answer_of_a_burst_before_the_next_input(
    burst: list[str],
) -> None:
    # A burst from a queue (a message consumer, a cursor), then nothing for a while: only the
    # burst's first answer came out; the others, done as well, waited for the next item.
    _, ids = fake(5)
    inputs, fed = fed_from_a_queue()
    walk = ids.lookup_iter(fed, concurrency=4)
    for value in burst:
        await inputs.put(Identity("wechat", value))
    # Nothing more is put until the burst's answers are out: before, this waited for ever.
    got = [await asyncio.wait_for(walk.__anext__(), 5) for _ in burst]
    assert got == [(Identity("wechat", v), 1000 + int(v[1:])) for v in burst]
    await inputs.put(None)
    assert [pair async for pair in walk] == []
    assert not other_tasks()


@pytest.mark.parametrize("kind", ["a bad identity", "an input that raises"])
@pytest.mark.parametrize("source", ["list", "async"])
async def test_lookup_iter_answers_every_item_before_a_bad_input_then_raises(
    kind: str, source: str
) -> None:
    # The error came out at once, and the answers of up to 4 x concurrency items before it,
    # some already looked up, were dropped.
    client, ids = fake(300)

    def items() -> Iterator[Identity]:
        yield from identities(200)
        if kind == "a bad identity":
            yield Identity("wechat", "")
        else:
            raise OSError("the input file went away")

    async def async_items() -> AsyncIterator[Identity]:
        for item in items():
            yield item

    got = []

    async def walk() -> None:
        async for pair in ids.lookup_iter(
            items() if source == "list" else async_items(), concurrency=32
        ):
            got.append(pair)

    with pytest.raises(InvalidRequestError if kind == "a bad identity" else OSError):
        await walk()
    assert got == [(ident, 1000 + i) for i, ident in enumerate(identities(200))]
    assert sum(client.asked.values()) == 200
    assert not other_tasks()


@pytest.mark.parametrize(
    "customer_id",
    [None, "１２", " 12 ", "+12", "1_000", "12abc", "", True, [12]],
    ids=["null", "full-width", "spaces", "plus", "underscore", "letters", "empty", "bool", "list"],
)
async def test_a_binding_whose_customer_id_is_no_integer_is_a_decode_error(
    customer_id: Any,
) -> None:
    # null was read as customer None, which lookup gave as "not found"; int() took the
    # rest ("１２" was customer 12).
    class Answers(FakeClient):
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            params = kwargs["params"]
            return [
                {
                    "customerId": customer_id,
                    "identityType": params["identityType"],
                    "identityValue": params["identityValue"],
                }
            ]

    ids = Identities(Answers({}))  # type: ignore[arg-type]
    with pytest.raises(ResponseDecodeError):
        await ids.lookup(Identity("wechat", "o1"))
    with pytest.raises(ResponseDecodeError):
        await ids.find(Identity("wechat", "o1"))


@pytest.mark.parametrize(
    ("customer_id", "read"), [("12", 12), (12, 12), ("3000000001", 3000000001)]
)
async def test_a_customer_id_as_digits_or_a_number_is_read(customer_id: Any, read: int) -> None:
    class Answers(FakeClient):
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            params = kwargs["params"]
            return [{"customerId": customer_id, **{k: v for k, v in params.items()}}]

    ids = Identities(Answers({}))  # type: ignore[arg-type]
    assert await ids.lookup(Identity("wechat", "o1")) == read


async def test_create_with_identities_refuses_an_identity_given_twice_before_sending(
    api: Any, make_client: Any
) -> None:
    # Sent as given: the service bound it once, and one of its two names was dropped.
    dm = make_client(access_token="tok")
    given = [
        Identity("wechat", "o1", name="a"),
        Identity("email", "x@example.com"),
        Identity("wechat", "o1", name="b"),
    ]
    with pytest.raises(InvalidRequestError) as caught:
        await dm.customers.create_with_identities(given, name="x")
    message = str(caught.value)
    assert message.startswith(
        "create_with_identities(): identities[0] and identities[2] are the same wechat identity"
    )
    assert "o1" not in message  # places, not values: personal data
    assert api.requests == {}


async def test_return_exceptions_retries_a_failing_lookup_alone_by_the_clients_policy(
    api, tokens, make_client
) -> None:
    # Not every input retried: the one whose lookup fails is tried 1 + max_retries times, as
    # any call is, and each other input is asked once.
    asked: Counter[str] = Counter()

    def answer(u: Any, **kwargs: Any) -> CallbackResult:
        value = u.query["identityValue"]
        asked[value] += 1
        if value == "o3":
            return CallbackResult(status=500, payload={"error_code": 1})
        return CallbackResult(payload=[])

    api.get(url("/v1/customeridentities"), callback=answer, repeat=True)
    dm = make_client(max_retries=2)

    result = await dm.identities.lookup_many(identities(8), concurrency=4, return_exceptions=True)

    assert isinstance(result[Identity("wechat", "o3")], ServerError)
    assert asked == {**{f"o{n}": 1 for n in range(8)}, "o3": 3}
    assert tokens.issued == ["tok-1"]  # no refetch either
