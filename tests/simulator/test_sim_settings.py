"""The simulator's settings: a bad one is refused when it is made, with what was wrong.

Each case below was taken before (and served nonsense: a page of none, a token dead on
arrival, a fault rate of 2) or failed later with a raw error (``OverflowError`` binding port
70000 or seeding a billion customers, ``ValueError`` writing a Retry-After of 5,000 digits).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from typing import Any

import pytest

from dmhub_async import DMHubClient, InvalidRequestError, MemoryTokenStore
from dmhub_async.testing import DMHubSimulator, FakeClock, Faults, _store

BIG = 10**5000

CASES: dict[str, Callable[[], object]] = {
    "customers -1": lambda: DMHubSimulator(-1),
    "customers 2.5": lambda: DMHubSimulator(2.5),  # type: ignore[arg-type]
    "customers of 5,000 digits": lambda: DMHubSimulator(BIG),  # it seeded until memory ran out
    "customers a billion": lambda: DMHubSimulator(10**9),  # 60 GB, an OverflowError at 33 M
    "page_cap 0": lambda: DMHubSimulator(page_cap=0),
    "page_cap a str": lambda: DMHubSimulator(page_cap="5"),  # type: ignore[arg-type]
    "token_ttl 0": lambda: DMHubSimulator(token_ttl=0),
    "token_ttl NaN": lambda: DMHubSimulator(token_ttl=math.nan),
    "token_ttl inf": lambda: DMHubSimulator(token_ttl=math.inf),
    "add_customers -1": lambda: DMHubSimulator().add_customers(-1),
    "add_customers of 5,000 digits": lambda: DMHubSimulator().add_customers(BIG),
    "add_customers past the most": lambda: DMHubSimulator(10).add_customers(100_000_000),
    "page_cap set to 0": lambda: setattr(DMHubSimulator(), "page_cap", 0),
    "port 70000": lambda: DMHubSimulator(port=70000),
    "port -1": lambda: DMHubSimulator(port=-1),
    "port a str": lambda: DMHubSimulator(port="80"),  # type: ignore[arg-type]
    # Taken, then every token request answered 40004 (the client's AuthenticationError
    # blaming its own credentials), or every request 500 "simulator error: TypeError" (a
    # clock or faults that were none), retried by the client under test as the service's;
    # a host of no str a raw TypeError at start.
    "app_id None": lambda: DMHubSimulator(app_id=None),  # type: ignore[arg-type]
    "secret empty": lambda: DMHubSimulator(secret=""),
    "host an int": lambda: DMHubSimulator(host=5),  # type: ignore[arg-type]
    "clock no function": lambda: DMHubSimulator(clock=5),  # type: ignore[arg-type]
    "faults no Faults": lambda: DMHubSimulator(faults=5),  # type: ignore[arg-type]
    "faults set to no Faults": lambda: setattr(DMHubSimulator(), "faults", 5),
    "drop_resent 'no'": lambda: Faults(drop_resent="no"),  # type: ignore[arg-type]
    # A raw TypeError from deep in the store ("'<' not supported between instances of 'int'
    # and 'str'"), or taken: a clock set to "x" or moved back, waits for a count of "x".
    "customer of a str id": lambda: DMHubSimulator(3).customer("5"),  # type: ignore[arg-type]
    "delete_customer of a str id": lambda: DMHubSimulator(3).delete_customer("5"),  # type: ignore[arg-type]
    "identities of a str id": lambda: DMHubSimulator(3).identities("5"),  # type: ignore[arg-type]
    "expire_tokens a str": lambda: DMHubSimulator().expire_tokens("x"),  # type: ignore[arg-type]
    "revoke_tokens 1.5": lambda: DMHubSimulator().revoke_tokens(1.5),  # type: ignore[arg-type]
    "insert_customer of a list": lambda: DMHubSimulator().insert_customer([1]),  # type: ignore[arg-type]
    "insert_customer of an attr set": lambda: DMHubSimulator().insert_customer({"attr": {1}}),
    # The store's bare ValueError, where every other helper's bad id is InvalidRequestError.
    "insert_customer of a str id": lambda: DMHubSimulator().insert_customer({}, customer_id="5"),  # type: ignore[arg-type]
    "insert_customer of id True": lambda: DMHubSimulator().insert_customer({}, customer_id=True),
    "insert_customer of id 0": lambda: DMHubSimulator().insert_customer({}, customer_id=0),
    "insert_customer of an id held": lambda: DMHubSimulator(3).insert_customer(
        {}, customer_id=DMHubSimulator(3).customer_ids()[0]
    ),
    # Taken, then every request answered 500 "simulator error: TypeError", which the client
    # under test retried as the service's.
    "on_request of no function": lambda: DMHubSimulator().on_request(5),  # type: ignore[arg-type]
    # Taken, each raised inside the request it was due before (a 500 "simulator error",
    # which the client under test retried away) or did nothing: no customer was ever
    # inserted or deleted, and a test of a walk under churn passed with none.
    "mutate_every inserts a str": lambda: DMHubSimulator().mutate_every(2, inserts="2"),  # type: ignore[arg-type]
    "mutate_every deletes None": lambda: DMHubSimulator().mutate_every(2, deletes=None),  # type: ignore[arg-type]
    "mutate_every deletes 1.5": lambda: DMHubSimulator().mutate_every(2, deletes=1.5),  # type: ignore[arg-type]
    "mutate_every inserts -3": lambda: DMHubSimulator().mutate_every(2, inserts=-3),
    "mutate_every inserts of 5,000 digits": lambda: DMHubSimulator().mutate_every(2, inserts=BIG),
    # Taken as every 2.5th request (the 5th, 10th...) and as every one; a str, a raw TypeError.
    "mutate_every n_requests 2.5": lambda: DMHubSimulator().mutate_every(2.5, inserts=1),  # type: ignore[arg-type]
    "mutate_every n_requests True": lambda: DMHubSimulator().mutate_every(True, inserts=1),
    "mutate_every n_requests a str": lambda: DMHubSimulator().mutate_every("3"),  # type: ignore[arg-type]
    "mutate_every n_requests 0": lambda: DMHubSimulator().mutate_every(0, inserts=1),
    "mutate_every front 'no'": lambda: DMHubSimulator().mutate_every(2, front="no"),  # type: ignore[arg-type]
    "FakeClock start a str": lambda: FakeClock("x"),  # type: ignore[arg-type]
    "FakeClock start NaN": lambda: FakeClock(math.nan),
    "FakeClock advance -1": lambda: FakeClock().advance(-1),
    "FakeClock advance NaN": lambda: FakeClock().advance(math.nan),
    "fault rate 2": lambda: Faults(rate=2),
    "fault rate -1": lambda: Faults(rate=-1),
    "fault rate NaN": lambda: Faults(rate=math.nan),
    "latency -1": lambda: Faults(latency=-1),
    "latency inf": lambda: Faults(latency=math.inf),
    "latency_jitter -1": lambda: Faults(latency_jitter=-1),
    "retry_after -1": lambda: Faults(retry_after=-1),
    "retry_after 2.5": lambda: Faults(retry_after=2.5),  # type: ignore[arg-type]
    "retry_after of 5,000 digits": lambda: Faults(retry_after=BIG),
    # "Every attribute can be changed while it runs": set later, each was taken unchecked, and
    # the requests that met it failed (or waited for ever: an infinite latency).
    "fault rate set to 2": lambda: setattr(Faults(), "rate", 2),
    "latency set to inf": lambda: setattr(Faults(), "latency", math.inf),
    "latency_jitter set to NaN": lambda: setattr(Faults(), "latency_jitter", math.nan),
    "retry_after set to 2.5": lambda: setattr(Faults(), "retry_after", 2.5),
    "retry_after set to 5,000 digits": lambda: setattr(Faults(), "retry_after", BIG),
}


@pytest.mark.parametrize("make", list(CASES.values()), ids=list(CASES))
def test_a_bad_setting_is_refused_when_made(make: Callable[[], object]) -> None:
    with pytest.raises(InvalidRequestError):  # a ValueError
        make()


async def test_a_hook_or_an_id_refused_says_which_helper_and_the_simulator_serves_on() -> None:
    async with DMHubSimulator(customers=3) as sim:
        held = sim.customer_ids()[0]
        with pytest.raises(InvalidRequestError, match=r"^on_request\(\): hook must be a function"):
            sim.on_request(5)  # type: ignore[arg-type]
        with pytest.raises(
            InvalidRequestError, match=rf"^insert_customer\(\): customer {held} exists"
        ):
            sim.insert_customer({"name": "again"}, customer_id=held)
        with pytest.raises(
            InvalidRequestError,
            match=r"^insert_customer\(\): a customer id is an int from 1 to 2\*\*63 - 1, not '5'",
        ):
            sim.insert_customer({"name": "x"}, customer_id="5")  # type: ignore[arg-type]
        async with DMHubClient(
            sim.app_id, sim.secret, base_url=sim.url, max_retries=0, token_store=MemoryTokenStore()
        ) as dm:
            assert await dm.customers.count() == 3  # no hook kept, no customer added
        assert sim.counters.total == 2  # the token, the count: none answered 500


@pytest.mark.parametrize("kinds", [("500", "teapot"), "500"], ids=["an unknown kind", "a str"])
def test_unknown_fault_kinds_are_refused_when_set(kinds: Any) -> None:
    faults = Faults(kinds=("500",))
    with pytest.raises(ValueError, match="kind"):
        faults.kinds = kinds
    with pytest.raises(ValueError, match="kind"):
        Faults(kinds=kinds)
    assert faults.kinds == ("500",)


@pytest.mark.parametrize(
    "paths",
    [
        "/v1/customers",
        ["GET/v1/customers"],
        ["v1/customers/*"],
        [None],
        ["GTE /v1/customers"],
        ["GET  /v1/customers"],
        ["* /v1/customers"],
    ],
    ids=[
        "a str",
        "no space after the method",
        "no leading slash",
        "not a str",
        "no method",
        "two spaces after the method",
        "a pattern for the method",
    ],
)
def test_fault_paths_that_match_nothing_are_refused_when_set(paths: Any) -> None:
    # `Faults(paths="/v1/customers")` was kept as its characters, and "GET/v1/customers" as a
    # pattern no path matches: no fault ever fired, and a test of a job's resilience to them
    # passed without one.
    faults = Faults(paths=["/v1/customers"])
    with pytest.raises(ValueError, match="paths"):
        faults.paths = paths
    with pytest.raises(ValueError, match="paths"):
        Faults(paths=paths)
    assert faults.paths == ("/v1/customers",)
    assert faults.applies_to("GET", "/v1/customers", "/v1/customers")
    assert Faults(paths=["get /v1/customers"]).applies_to("GET", "/v1/customers", "/v1/customers")


async def test_a_running_simulator_keeps_its_faults_when_a_bad_one_is_set() -> None:
    async with DMHubSimulator(customers=3) as sim:
        sim.faults.latency = 0.0
        with pytest.raises(InvalidRequestError):
            sim.faults.latency = math.inf
        with pytest.raises(InvalidRequestError):
            sim.faults.rate = 2
        assert (sim.faults.latency, sim.faults.rate) == (0.0, 0.0)
        assert sim.faults.next_latency() == 0.0
        assert sim.faults.next_fault() is None


def test_seeding_in_chunks_gives_the_customers_of_one_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seeded in chunks so that no draw passes randbytes' limit (2**31 bits: 33 million
    # customers at once); the chunks must not change what a seed gives.
    whole = DMHubSimulator(50, seed=7).store
    monkeypatch.setattr(_store, "_CHUNK_WORDS", 3)
    chunked = DMHubSimulator(50, seed=7).store
    assert chunked.ids() == whole.ids()
    assert [chunked.get(i) for i in chunked.ids()] == [whole.get(i) for i in whole.ids()]


def test_the_seeded_words_are_drawn_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    real = _store.random.Random.randbytes

    def randbytes(self: Any, n: int) -> bytes:
        drawn.append(n)
        return real(self, n)

    monkeypatch.setattr(_store.random.Random, "randbytes", randbytes)
    monkeypatch.setattr(_store, "_CHUNK_WORDS", 4)
    DMHubSimulator(10, seed=1)
    assert drawn == [32, 32, 16] * 2  # ga, then gb: 4 + 4 + 2 words of 8 bytes each
    assert isinstance(DMHubSimulator(3).store._ga, array)
