"""A token endpoint that is down, met by clients in several processes that share one store.

DM Hub keeps one token per appid, so the processes that share one take turns to fetch it under
the store's lock. With the endpoint down (503s), each took the lock in turn and ran its own whole
backoff: N processes with ``max_retries=2`` sent N x 3 token requests, and the last waited for
every other's backoff before its own. The first to fail now records the failure (its kind and a
short "until") beside the token, and a process that takes the lock within it raises the same
error at once. Each client here has a store of its own on one file, or one Redis: processes, as
far as the store goes. The clock is fake: no backoff really waits.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from _redis import RedisServer, no_leaks

from dmhub_async import (
    APIConnectionError,
    DMHubClient,
    FileTokenStore,
    MemoryTokenStore,
    RedisTokenStore,
    RetryPolicy,
    ServerError,
    Token,
    TokenStoreError,
)
from dmhub_async._auth import token_key
from dmhub_async.testing import DMHubSimulator, FakeClock, Faults

TOKEN_ROUTE = "/security/accesstoken"


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Each test fails itself if it leaves a Redis (or HTTP) connection open (tests/_redis.py)."""
    with no_leaks():
        yield


@pytest.fixture
async def sim() -> AsyncIterator[DMHubSimulator]:
    """A simulator whose token endpoint answers every request with a 503."""
    async with DMHubSimulator(customers=1) as simulator:
        simulator.faults = Faults(rate=1.0, kinds=("503",), paths=[TOKEN_ROUTE])
        yield simulator


class UsersOwnStore:
    """A store of a user's making, as the protocol has it: get, set and lock, nothing more."""

    def __init__(self, inner: MemoryTokenStore) -> None:
        self.inner = inner

    async def get(self, key: str) -> Token | None:
        return await self.inner.get(key)

    async def set(self, key: str, token: Token) -> None:
        await self.inner.set(key, token)

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        return self.inner.lock(key)


def stores_of(kind: str, processes: int, tmp_path: Path, request: Any) -> list[Any]:
    """One store a process, all on one file or one Redis; or one memory, as it is or in a
    store of a user's own."""
    if kind == "file":
        return [FileTokenStore(tmp_path / "tokens.json") for _ in range(processes)]
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        return [RedisTokenStore(server.url) for _ in range(processes)]
    shared = MemoryTokenStore()
    if kind == "memory":  # clients of one process (threads, event loops of their own)
        return [shared] * processes
    return [UsersOwnStore(shared) for _ in range(processes)]


def client_of(sim: DMHubSimulator, store: Any, clock: FakeClock) -> DMHubClient:
    """A client of ``sim`` keeping its token in ``store`` (max_retries=2, exact waits)."""
    return DMHubClient(
        sim.app_id,
        sim.secret,
        base_url=sim.url,
        token_store=store,
        retry=RetryPolicy(max_retries=2, jitter=lambda ceiling: ceiling),
        clock=clock,
        sleep=clock.sleep,
    )


async def first_calls(
    sim: DMHubSimulator, stores: list[Any], clock: FakeClock
) -> list[BaseException | int]:
    """Each store's client makes its first call, all at once (max_retries=2, exact waits)."""
    clients = [client_of(sim, store, clock) for store in stores]
    try:
        return await asyncio.wait_for(
            asyncio.gather(*(dm.customers.count() for dm in clients), return_exceptions=True),
            60,
        )
    finally:
        for dm in clients:
            await dm.aclose()
        for store in stores:
            if isinstance(store, RedisTokenStore):
                await store.aclose()


@pytest.mark.parametrize("processes", [1, 2, 8])
@pytest.mark.parametrize("kind", ["file", "redis", "memory"])
async def test_processes_sharing_a_store_share_a_failed_token_fetch(
    sim: DMHubSimulator,
    clock: FakeClock,
    tmp_path: Path,
    request: Any,
    kind: str,
    processes: int,
) -> None:
    # Before: 3, 6 and 24 token requests, and 2, 4 and 16 backoff waits (the last process's
    # call failed after 12 s instead of 1.5 s).
    stores = stores_of(kind, processes, tmp_path, request)

    results = await first_calls(sim, stores, clock)

    assert sim.counters.requests[TOKEN_ROUTE] == 3  # one process's attempts, whatever N
    assert clock.waits == [0.5, 1.0]  # and its backoff alone
    assert all(isinstance(result, ServerError) for result in results)
    errors = [result for result in results if isinstance(result, ServerError)]
    assert all((err.status, err.code, err.path) == (503, 503, TOKEN_ROUTE) for err in errors)
    shared = [str(err) for err in errors if "in another client" in str(err)]
    assert len(shared) == processes - 1
    for message in shared:
        assert message.startswith(f"GET {TOKEN_ROUTE} -> HTTP 503, error_code 503: ")
        assert "failed 0 s ago in another client or process sharing the token store" in message
        assert "not sent again for 2 s" in message
        assert sim.secret not in message


@pytest.mark.parametrize("kind", ["file", "redis", "memory"])
async def test_a_client_is_not_held_back_by_the_failure_it_recorded_itself(
    sim: DMHubSimulator, clock: FakeClock, tmp_path: Path, request: Any, kind: str
) -> None:
    # The record holds back the other clients that share the store; the client whose fetch
    # failed tries again at its next call (the endpoint back), not told that "another client"
    # failed, with no request sent, for as long as its own record holds.
    (store,) = stores_of(kind, 1, tmp_path, request)
    try:
        async with client_of(sim, store, clock) as dm:
            with pytest.raises(ServerError):
                await dm.customers.count()
            sim.faults = Faults(rate=0.0)  # the endpoint is back, within the record's hold
            assert await dm.customers.count() == 1
    finally:
        if isinstance(store, RedisTokenStore):
            await store.aclose()
    assert sim.counters.requests[TOKEN_ROUTE] == 4


@pytest.mark.parametrize("kind", ["503", "429"])
async def test_a_shared_failure_s_retry_after_is_the_wait_its_message_says(
    sim: DMHubSimulator, clock: FakeClock, tmp_path: Path, request: Any, kind: str
) -> None:
    # Before: "not sent again for 2 s" said the message, and retry_after was None: a caller
    # that waits err.retry_after before its next call (as for any 429) had no wait to take.
    sim.faults = Faults(rate=1.0, kinds=(kind,), paths=[TOKEN_ROUTE])
    stores = stores_of("memory", 2, tmp_path, request)

    results = await first_calls(sim, stores, clock)

    shared = [r for r in results if isinstance(r, Exception) and "in another client" in str(r)]
    assert len(shared) == 1
    [error] = shared
    said = re.search(r"not sent again for (\d+) s", str(error))
    assert said is not None, str(error)
    assert error.retry_after is not None
    assert int(said[1]) - 1 < error.retry_after <= int(said[1])


async def test_a_store_of_the_users_own_making_works_as_before(
    sim: DMHubSimulator, clock: FakeClock, tmp_path: Path, request: Any
) -> None:
    # Without the optional failure record the protocol stays as it was: each client its own
    # backoff, one after another.
    stores = stores_of("own", 2, tmp_path, request)

    results = await first_calls(sim, stores, clock)

    assert sim.counters.requests[TOKEN_ROUTE] == 6
    assert clock.waits == [0.5, 1.0, 0.5, 1.0]
    assert all(isinstance(result, ServerError) for result in results)


class UnreadableRecords(UsersOwnStore):
    """A store that keeps failure records and cannot read them (a bug of its own)."""

    async def get_failure(self, key: str) -> Any:
        raise RuntimeError("broken")

    async def set_failure(self, key: str, failure: Any) -> None:
        pass


async def test_a_record_that_cannot_be_read_does_not_stop_the_fetch(
    sim: DMHubSimulator, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The record only saves load: a store failing to read it leaves the fetch to go on, and
    # the token is shared through the store as ever.
    sim.faults.rate = 0.0
    store = UnreadableRecords(MemoryTokenStore())
    caplog.set_level("DEBUG", logger="dmhub_async")

    results = await first_calls(sim, [store, store], clock)

    assert results == [1, 1]
    assert sim.counters.tokens_issued == 1
    assert "UnreadableRecords" in caplog.text
    assert "RuntimeError" in caplog.text
    assert "reading a failed token fetch's record" in caplog.text


async def test_after_the_hold_a_process_fetches_again(
    sim: DMHubSimulator, clock: FakeClock, tmp_path: Path
) -> None:
    # The record holds the others back only as long as the failing process's next backoff
    # (2 s here): then a process tries its own fetch, and takes the token once the endpoint is
    # back.
    path = tmp_path / "tokens.json"
    await first_calls(sim, [FileTokenStore(path)], clock)
    clock.advance(2.0)
    sim.faults.rate = 0.0

    results = await first_calls(sim, [FileTokenStore(path)], clock)

    assert results == [1]
    assert sim.counters.requests[TOKEN_ROUTE] == 4
    assert sim.counters.tokens_issued == 1


async def test_a_connection_failure_is_shared_as_a_connection_error(
    clock: FakeClock, tmp_path: Path
) -> None:
    async with DMHubSimulator(customers=1) as sim:
        sim.faults = Faults(rate=1.0, kinds=("reset",), paths=[TOKEN_ROUTE])
        stores = stores_of("file", 3, tmp_path, None)

        results = await first_calls(sim, stores, clock)
        sent = sim.counters.requests[TOKEN_ROUTE]

    assert sent == 6  # one process's 3 attempts, each sent twice (aiohttp re-sends a GET once)
    assert all(type(result) is APIConnectionError for result in results)
    assert all(getattr(result, "path", None) == TOKEN_ROUTE for result in results)


async def test_a_token_file_with_a_failure_record_is_read_and_written_by_the_release_before(
    sim: DMHubSimulator, clock: FakeClock, tmp_path: Path
) -> None:
    """The release before the record reads a token as ``Token.from_json(data.get(key))`` of
    the file's JSON object, and writes one by setting its key in that object, the rest kept."""
    path = tmp_path / "tokens.json"
    key = token_key(sim.url, sim.app_id, sim.secret)
    await first_calls(sim, [FileTokenStore(path)], clock)
    data = json.loads(path.read_text())

    assert list(data) == [key + "|failed"]  # beside the token's key, never in its entry
    assert Token.from_json(data.get(key)) is None  # the old reader: no token, so it fetches
    assert sim.secret not in path.read_text()

    # The old release fetched (the endpoint is back) and wrote its token; the hold has not
    # ended, yet this release takes that token, and sends no token request.
    sim.faults.rate = 0.0
    data[key] = Token(sim.tokens.issue(), clock() + 7200, clock()).to_json()
    path.write_text(json.dumps(data))
    sent = sim.counters.requests[TOKEN_ROUTE]

    assert await first_calls(sim, [FileTokenStore(path)], clock) == [1]
    assert sim.counters.requests[TOKEN_ROUTE] == sent


async def test_the_redis_failure_record_is_a_key_of_its_own_that_expires(
    sim: DMHubSimulator, clock: FakeClock, redis: RedisServer
) -> None:
    from redis.asyncio import Redis

    key = "dmhub_async:token:" + token_key(sim.url, sim.app_id, sim.secret)
    await first_calls(sim, [RedisTokenStore(redis.url)], clock)
    raw = Redis.from_url(redis.url)
    try:
        keys = sorted(k.decode() for k in await raw.keys("*"))
        ttl_ms = await raw.pttl(key + ":failed")
        record = json.loads(await raw.get(key + ":failed"))
    finally:
        await raw.aclose()

    assert keys == [key + ":failed"]  # the token's key, which the release before reads, unset
    assert 0 < ttl_ms <= 2000  # Redis drops it when the hold ends, whatever the clocks say
    assert record["error"] == "ServerError"
    assert (record["status"], record["code"]) == (503, 503)


@pytest.mark.parametrize(
    "record",
    [
        {"error": "ServerError", "status": 503, "code": 503, "failed_at": 0, "until": 3600},
        {"error": "ServerError", "status": 503, "code": 503, "failed_at": 0, "until": -1},
        {"error": "AuthenticationError", "status": 401, "code": None, "failed_at": 0, "until": 5},
        {"error": "ServerError", "status": "503", "code": 503, "failed_at": 0, "until": 5},
        {"error": "ServerError", "status": 503, "code": 503, "failed_at": 0, "until": "NaN"},
        ["not", "a", "record"],
        # Failed at a time no client records with an "until" a moment ahead: raised, it said
        # "failed 1000...0 s ago" (301 digits), or "0 s ago" of a failure dated after its end.
        {"error": "ServerError", "status": 503, "code": 503, "failed_at": -1e300, "until": 5},
        {"error": "ServerError", "status": 503, "code": 503, "failed_at": 1e300, "until": 5},
        {"error": "ServerError", "status": 503, "code": 503, "failed_at": -86400, "until": 5},
        {"error": "ServerError", "status": 503, "code": 503, "failed_at": 10, "until": 5},
    ],
    ids=[
        "an hour ahead",
        "gone by",
        "no shared kind",
        "a status as text",
        "NaN",
        "a list",
        "failed 1e300 s ago",
        "failed 1e300 s ahead",
        "a day's hold",
        "failed after its end",
    ],
)
async def test_a_record_out_of_reason_holds_nobody_back(
    sim: DMHubSimulator, clock: FakeClock, tmp_path: Path, record: Any
) -> None:
    # A clock far ahead, a record gone by, a kind never recorded or garbage: the client
    # fetches as if there were none (the endpoint works again here).
    sim.faults.rate = 0.0
    path = tmp_path / "tokens.json"
    if isinstance(record, dict):
        record = {
            k: clock() + v if k in ("failed_at", "until") and v != "NaN" else v
            for k, v in record.items()
        }
    key = token_key(sim.url, sim.app_id, sim.secret)
    path.write_text(json.dumps({key + "|failed": record}))
    path.chmod(0o600)

    assert await first_calls(sim, [FileTokenStore(path)], clock) == [1]
    assert sim.counters.tokens_issued == 1


@pytest.mark.parametrize("error", [["ServerError"], {"ServerError": 1}], ids=["a list", "a dict"])
async def test_a_record_whose_kind_is_no_text_is_read_as_no_record(
    sim: DMHubSimulator, clock: FakeClock, tmp_path: Path, error: Any
) -> None:
    # A tampered (or another program's) record whose "error" is a list or an object: the
    # store's get_failure raised TypeError (unhashable type) instead of reading no record.
    path = tmp_path / "tokens.json"
    key = token_key(sim.url, sim.app_id, sim.secret)
    record = {"error": error, "status": 503, "code": 503, "failed_at": clock(), "until": clock()}
    path.write_text(json.dumps({key + "|failed": record}))
    path.chmod(0o600)

    assert await FileTokenStore(path).get_failure(key) is None


@pytest.mark.parametrize("kind", ["file", "redis", "memory"])
async def test_a_token_stored_ends_the_failure_recorded_beside_it_in_every_store(
    kind: str, tmp_path: Path, request: Any
) -> None:
    # A process still in a backoff of its own when another recorded the failure fetches the
    # token once the endpoint is back, and stores it. Should that token be refused within the
    # record's hold, the next process to fetch raised the old failure from the record: in the
    # file and memory stores a stored token dropped the record, in Redis it stayed its TTL.
    from dmhub_async._token_stores import FetchFailure

    store = stores_of(kind, 1, tmp_path, request)[0]
    try:
        await store.set_failure("k", FetchFailure("ServerError", 503, 503, 1000.0, 1060.0))
        assert await store.get_failure("k") is not None

        await store.set("k", Token("fresh", 1000.0 + 7200, 1000.0))

        assert await store.get_failure("k") is None
        assert (await store.get("k")).value == "fresh"
    finally:
        if isinstance(store, RedisTokenStore):
            await store.aclose()


async def test_a_redis_store_refusing_a_tokens_write_says_redis_s_words_not_the_record(
    redis: RedisServer,
) -> None:
    # The store writes a token and its record's removal in one transaction: a Redis that
    # refused the write (full under noeviction, an ACL user who may read the token's key and
    # not write it) was said in redis-py's words for a command of a pipeline, the command first
    # with every argument: "SET failed: NoPermissionError: Command # 1 (SET
    # dmhub_async:token:URL|APP|HASH {"access_token": "***", "expires_at": ...} EX 7201) of
    # pipeline caused error: ('this user has no permissions ...',)".
    redis.command("ACL", "SETUSER", "reader", "on", ">readerpw", "+@all", "%R~dmhub_async:token:*")
    store = RedisTokenStore(redis.url.replace("redis://", "redis://reader:readerpw@"))
    try:
        with pytest.raises(TokenStoreError) as refused:
            await store.set("key", Token("a-token-of-the-app", 10**10))
    finally:
        await store.aclose()

    assert str(refused.value) == (
        f"{store!r}: SET failed: NoPermissionError: this user has no permissions to access one"
        " of the keys used as arguments; no process can share a token through it: give the store"
        " a user, password and database that Redis takes"
    )
