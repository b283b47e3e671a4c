"""Fault injection, counters, mutation hooks and seeding of the simulator, seen over raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import io
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from http.client import HTTPException
from typing import Any

import aiohttp
import pytest
from _helpers import users_environ

import dmhub_async
from dmhub_async.testing import DMHubSimulator, FakeClock, Faults, serve_forever

HAS_CLIENT = hasattr(dmhub_async, "DMHubClient")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sim() -> AsyncIterator[DMHubSimulator]:
    async with DMHubSimulator(customers=30) as simulator:
        yield simulator


@pytest.fixture
async def token(http: aiohttp.ClientSession, sim: DMHubSimulator) -> str:
    params = {"grant_type": "client_credentials", "appid": sim.app_id, "secret": sim.secret}
    async with http.get(f"{sim.url}/security/accesstoken", params=params) as r:
        body: dict[str, Any] = await r.json()
    return str(body["access_token"])


async def get(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str, path: str, **params: Any
) -> tuple[int, Any, bytes]:
    async with http.get(sim.url + path, params={"access_token": token, **params}) as r:
        return r.status, r.headers, await r.read()


# -- each fault kind ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "retry_after"),
    [
        ("429", 429, "1"),
        ("429-no-retry-after", 429, None),
        ("500", 500, None),
        ("502", 502, None),
        ("503", 503, None),
        ("504", 504, None),
    ],
)
async def test_status_faults_answer_json_errors(
    http: aiohttp.ClientSession,
    sim: DMHubSimulator,
    token: str,
    kind: str,
    status: int,
    retry_after: str | None,
) -> None:
    sim.faults.script([kind])
    got, headers, body = await get(http, sim, token, "/v1/customers")
    assert got == status
    assert headers.get("Retry-After") == retry_after
    assert json.loads(body)["error_code"] == status
    assert sim.counters.faults == {kind: 1}
    assert (await get(http, sim, token, "/v1/customers/count"))[2] == b"30"


async def test_429_with_retry_after_as_http_date(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    sim.faults.retry_after = 30
    sim.faults.script(["429-http-date"])
    status, headers, _ = await get(http, sim, token, "/v1/customers")
    assert status == 429
    when = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp()
    assert 25 < when - time.time() <= 31


async def test_a_retry_after_date_and_its_date_header_are_on_the_simulators_clock(
    http: aiohttp.ClientSession,
) -> None:
    # A client reads a Retry-After date from the answer's Date (the service's clock): the
    # simulator on a FakeClock wrote aiohttp's Date, the real clock's, and a client on that
    # FakeClock read a date years before it ("retry at once") for the 30 s asked.
    clock = FakeClock()
    async with DMHubSimulator(customers=3, clock=clock) as sim:
        sim.faults.retry_after = 30
        params = {"grant_type": "client_credentials", "appid": sim.app_id, "secret": sim.secret}
        async with http.get(f"{sim.url}/security/accesstoken", params=params) as r:
            token = (await r.json())["access_token"]
        sim.faults.script(["429-http-date"])
        status, headers, _ = await get(http, sim, token, "/v1/customers")
    assert status == 429
    assert headers["Date"] == email.utils.formatdate(clock.now, usegmt=True)
    date, when = (
        email.utils.parsedate_to_datetime(headers[name]).timestamp()
        for name in ("Date", "Retry-After")
    )
    assert when - date == 30


async def test_html_error_page(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    sim.faults.script(["html"])
    status, headers, body = await get(http, sim, token, "/v1/customers/count")
    assert status == 502
    assert headers["Content-Type"].startswith("text/html")
    assert body.startswith(b"<html>")


async def test_reset_drops_the_connection(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    await get(http, sim, token, "/v1/customers/count")  # a pooled connection to reuse
    sim.faults.script(["reset"])
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await get(http, sim, token, "/v1/customers")
    assert sim.counters.faults == {"reset": 1}
    assert (await get(http, sim, token, "/v1/customers"))[0] == 200
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


async def test_a_truncated_body_stops_short_of_its_declared_length(
    sim: DMHubSimulator, token: str
) -> None:
    # Read below aiohttp's client, which would refuse the short body: what crosses the wire.
    full = json.dumps(sim.customers_count()).encode()
    sim.faults.script(["truncated"])
    reader, writer = await asyncio.open_connection(sim.host, sim.port)
    try:
        writer.write(
            f"GET /v1/customers/count?access_token={token} HTTP/1.1\r\n"
            f"Host: {sim.host}\r\n\r\n".encode()
        )
        raw = await asyncio.wait_for(reader.read(), timeout=10)  # until the server closes
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    declared = re.search(rb"(?i)content-length: (\d+)", head)
    assert declared is not None
    assert int(declared.group(1)) == len(full) == 2  # "30"
    assert body == full[: len(full) // 2] == b"3"  # valid JSON on its own ("3"), but short
    assert sim.counters.faults == {"truncated": 1}


async def test_aiohttp_refuses_a_truncated_body(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    sim.faults.script(["truncated"])
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(http, sim, token, "/v1/customers")
    assert (await get(http, sim, token, "/v1/customers"))[0] == 200


@pytest.mark.parametrize(
    ("path", "status"),
    [("/v1/customers/1", 500), ("/v1/customers/count", 200)],  # 40201; a refused token
    ids=["missing-customer", "token-error"],
)
async def test_a_scripted_truncation_cuts_an_error_answer_too(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str, path: str, status: int
) -> None:
    # An error body crosses the network as any other: a test of a client's handling of a cut
    # one got it whole, the script spent and no fault counted, and passed without the fault.
    sent_token = token if status == 500 else "not-a-token"
    sim.faults.script(["truncated"])
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(http, sim, sent_token, path)
    assert sim.counters.faults == {"truncated": 1}
    assert (await get(http, sim, sent_token, path))[0] == status  # the same answer, whole


async def test_a_truncation_of_an_empty_answer_is_not_counted_as_fired(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    # A 204 has no body to cut: it arrives whole, and the counters said a truncation fired.
    victim = sim.customer_ids()[0]
    sim.faults.script(["truncated"])
    async with http.delete(f"{sim.url}/v1/customers/{victim}", params={"access_token": token}) as r:
        assert (r.status, await r.read()) == (204, b"")
    assert sim.counters.faults == {}


@pytest.mark.parametrize(
    ("body", "customers"),
    [
        ({"name": "丢失"}, 31),
        # An error answer (a gender the service refuses) is lost as well: raised past the
        # fault, a scripted reset was spent on it unapplied, and the error arrived whole.
        ({"gender": 7}, 30),
    ],
)
async def test_reset_after_write_applies_the_change_and_loses_the_answer(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str, body: Any, customers: int
) -> None:
    sim.faults.script(["reset-after-write"])
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with http.post(
            f"{sim.url}/v1/customers", params={"access_token": token}, json=body
        ) as r:
            await r.read()
    assert sim.customers_count() == customers
    assert sim.counters.faults == {"reset-after-write": 1}


async def test_reset_after_write_on_delete_is_not_applied_twice(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    victim = sim.customer_ids()[0]
    sim.faults.script(["reset-after-write"])
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with http.delete(f"{sim.url}/v1/customers/{victim}", params={"access_token": token}):
            pass
    assert sim.customers_count() == 29
    assert sim.counters.routes["DELETE /v1/customers/{id}"] == 2  # aiohttp's own re-send


@pytest.mark.parametrize("agent", [None, "User-Agent", "user-agent"])
@pytest.mark.parametrize("write", ["update", "delete"])
async def test_one_scripted_reset_of_the_sdk_s_update_or_delete_is_one_failure(
    sim: DMHubSimulator, write: str, agent: str | None
) -> None:
    # The SDK's client sends a PUT or a DELETE once (aiohttp would again): its next one is its
    # own retry, which the simulator took for aiohttp's re-send and dropped as well, so one
    # scripted reset cost two retries. So it did for a client given a User-Agent of the
    # caller's (with_options(extra_headers=...)), which the SDK's no longer began: its update
    # failed "the write may have been applied" with a retry to spare, nothing written.
    clock = FakeClock()
    victim = sim.customer_ids()[0]
    async with dmhub_async.DMHubClient(
        sim.app_id,
        sim.secret,
        base_url=sim.url,
        token_store=dmhub_async.MemoryTokenStore(),
        clock=clock,
        sleep=clock.sleep,
        max_retries=1,
    ) as root:
        dm = root.with_options(extra_headers={agent: "my-job/1"}) if agent else root
        await dm.customers.get(victim)  # the token, fetched
        sim.faults.script(["reset"])
        if write == "update":
            await dm.customers.update(victim, name="z")
        else:
            await dm.customers.delete(victim)

    assert dm.stats.retries == 1
    assert sim.counters.faults == {"reset": 1}
    method = "PUT" if write == "update" else "DELETE"
    assert sim.counters.routes[f"{method} /v1/customers/{{id}}"] == 2


def test_one_scripted_reset_is_one_failure_for_a_client_that_does_not_resend() -> None:
    # docs/contract.md "Where the simulator goes its own way": urllib does not re-send as aiohttp
    # does, so its own immediate retry is taken for the re-send unless drop_resent is off.
    async def failures(drop_resent: bool) -> list[bool]:
        async with DMHubSimulator(1, faults=Faults(drop_resent=drop_resent)) as sim:
            token = f"{sim.url}/security/accesstoken?grant_type=client_credentials"
            token += f"&appid={sim.app_id}&secret={sim.secret}"

            def three_tries() -> list[bool]:
                with urllib.request.urlopen(token, timeout=10) as r:
                    count = (
                        f"{sim.url}/v1/customers/count?access_token={json.load(r)['access_token']}"
                    )
                sim.faults.script(["reset"])
                failed = []
                for _ in range(3):
                    try:
                        urllib.request.urlopen(count, timeout=10).close()
                    except (ConnectionError, urllib.error.URLError, HTTPException):
                        failed.append(True)
                    else:
                        failed.append(False)
                return failed

            return await asyncio.to_thread(three_tries)

    assert asyncio.run(failures(drop_resent=False)) == [True, False, False]
    assert asyncio.run(failures(drop_resent=True)) == [True, True, False]


def test_unknown_fault_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds"):
        Faults(kinds=["418"])
    with pytest.raises(ValueError, match="unknown fault kinds"):
        Faults().script(["ok", "boom"])


@pytest.mark.parametrize("kinds", [[], (), set(), Faults.ALL_KINDS - Faults.ALL_KINDS])
def test_no_fault_kinds_to_draw_from_are_refused(kinds: Any) -> None:
    # Taken, Faults(rate=1.0, kinds=[]) drew no fault, ever: a resilience test passed without one.
    with pytest.raises(ValueError, match="kinds is empty"):
        Faults(rate=1.0, kinds=kinds)
    faults = Faults()
    with pytest.raises(ValueError, match="kinds is empty"):
        faults.kinds = kinds
    assert faults.kinds == ("429", "500", "503", "reset")  # left as it was


# -- when faults fire ---------------------------------------------------------------------------


async def test_script_is_consumed_one_per_request_then_rate_applies(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    sim.faults.script(["503", "ok", "429"])
    statuses = [(await get(http, sim, token, "/v1/customers/count"))[0] for _ in range(4)]
    assert statuses == [503, 200, 429, 200]
    assert sim.faults.scripted == 0
    sim.faults.rate = 1.0
    sim.faults.kinds = ("500",)
    assert (await get(http, sim, token, "/v1/customers/count"))[0] == 500
    sim.faults.clear()
    assert (await get(http, sim, token, "/v1/customers/count"))[0] == 200


async def test_random_faults_at_a_rate_are_seeded(http: aiohttp.ClientSession) -> None:
    async def run() -> list[int]:
        faults = Faults(rate=0.5, kinds=["500", "503"], seed=11)
        async with DMHubSimulator(customers=1, faults=faults) as sim:
            t = await _token(http, sim)
            return [(await get(http, sim, t, "/v1/customers/count"))[0] for _ in range(20)]

    first, second = await run(), await run()
    assert first == second
    assert {200, 500, 503} == set(first)


def test_random_faults_drawn_from_a_set_of_kinds_are_the_same_under_any_hash_seed() -> None:
    # Faults.ALL_KINDS is a frozenset: a tuple of it is in the order of the string hashes,
    # which change with PYTHONHASHSEED, so one seed gave each run its own fault schedule.
    program = (
        "from dmhub_async.testing import Faults\n"
        "f = Faults(rate=0.5, kinds=Faults.ALL_KINDS, seed=1)\n"
        "print([f.next_fault() for _ in range(40)])\n"
    )
    schedules = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for hash_seed in (0, 1, 2)
    }
    assert len(schedules) == 1, schedules


async def _token(http: aiohttp.ClientSession, sim: DMHubSimulator) -> str:
    params = {"grant_type": "client_credentials", "appid": sim.app_id, "secret": sim.secret}
    async with http.get(f"{sim.url}/security/accesstoken", params=params) as r:
        return str((await r.json())["access_token"])


async def test_faults_spare_the_token_endpoint_unless_named(http: aiohttp.ClientSession) -> None:
    async with DMHubSimulator(faults=Faults(rate=1.0, kinds=["503"])) as sim:
        token = await _token(http, sim)
        assert (await get(http, sim, token, "/v1/customers/count"))[0] == 503
        sim.faults.paths = ("/security/accesstoken",)
        params = {"grant_type": "client_credentials", "appid": sim.app_id, "secret": sim.secret}
        async with http.get(f"{sim.url}/security/accesstoken", params=params) as r:
            assert r.status == 503
        assert (await get(http, sim, token, "/v1/customers/count"))[0] == 200


async def test_faults_restricted_to_a_method_and_path(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    sim.faults.paths = ("GET /v1/customers", "/v1/customers/*/nothing")
    sim.faults.rate = 1.0
    sim.faults.kinds = ("502",)
    assert (await get(http, sim, token, "/v1/customers"))[0] == 502
    assert (await get(http, sim, token, "/v1/customers/count"))[0] == 200
    first = sim.customer_ids()[0]
    assert (await get(http, sim, token, f"/v1/customers/{first}"))[0] == 200
    sim.faults.paths = ("/v1/customers/{id}",)
    assert (await get(http, sim, token, f"/v1/customers/{first}"))[0] == 502


async def test_fixed_and_random_latency(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    sim.faults.latency = 0.02
    started = time.perf_counter()
    await get(http, sim, token, "/v1/customers/count")
    assert time.perf_counter() - started >= 0.02
    sim.faults.latency = 0.0
    sim.faults.latency_jitter = 0.01
    delays = {sim.faults.next_latency() for _ in range(5)}
    assert len(delays) == 5
    assert all(0 <= d <= 0.01 for d in delays)


# -- counters and hooks -------------------------------------------------------------------------


async def test_counters_record_what_was_served(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    first = sim.customer_ids()[0]
    await get(http, sim, token, "/v1/customers")
    await get(http, sim, token, f"/v1/customers/{first}")
    await get(http, sim, token, f"/v1/customers/{first + 1}")
    await get(http, sim, "bad-token", "/v1/customers")
    sim.faults.script(["429"])
    await get(http, sim, token, "/v1/customers")
    c = sim.counters
    assert c.tokens_issued == 1
    assert c.requests == {
        "/security/accesstoken": 1,
        "/v1/customers": 3,
        "/v1/customers/{id}": 2,
    }
    assert c.routes["GET /v1/customers/{id}"] == 2
    assert c.statuses == {200: 4, 500: 1, 429: 1}
    assert c.faults == {"429": 1}
    assert c.errors == {40201: 1, 40014: 1}
    assert c.total == 6
    c.reset()
    assert c.total == 0


async def test_mutation_during_a_walk_shifts_pages(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    before = sim.customer_ids()
    sim.mutate_every(1, deletes=2, inserts=1)
    seen: list[int] = []
    for page in (1, 2, 3):
        _, _, body = await get(http, sim, token, "/v1/customers", rows=10, page=page)
        seen += [r["id"] for r in json.loads(body)["rows"]]
    assert sim.counters.mutations == 9
    assert sim.customers_count() == 27
    assert len(set(seen) & set(before)) < 30  # the walk skipped rows deleted ahead of it
    assert (await get(http, sim, token, "/v1/customers/count"))[2] == b"27"


async def test_mutation_at_the_end_gives_new_higher_ids(
    http: aiohttp.ClientSession, sim: DMHubSimulator, token: str
) -> None:
    top = sim.customer_ids()[-1]
    sim.mutate_every(2, inserts=3, front=False, paths=["/v1/customers/count"])
    for _ in range(4):
        await get(http, sim, token, "/v1/customers/count")
    await get(http, sim, token, "/v1/customers")
    new = [i for i in sim.customer_ids() if i > top]
    assert len(new) == 6
    assert sim.customers_count() == 36


async def test_async_request_hook(http: aiohttp.ClientSession, sim: DMHubSimulator) -> None:
    seen: list[str] = []

    async def hook(request: aiohttp.web.Request) -> None:
        await asyncio.sleep(0)
        seen.append(request.path)

    sim.on_request(hook)
    await _token(http, sim)
    assert seen == ["/security/accesstoken"]


# -- seeding ------------------------------------------------------------------------------------


def test_seeding_is_deterministic_per_seed() -> None:
    a, b, c = DMHubSimulator(100, seed=5), DMHubSimulator(100, seed=5), DMHubSimulator(100, seed=6)
    rows_a = [a.customer(i) for i in a.customer_ids()]
    assert rows_a == [b.customer(i) for i in b.customer_ids()]
    assert rows_a != [c.customer(i) for i in c.customer_ids()]
    assert [a.identities(i) for i in a.customer_ids()] == [
        b.identities(i) for i in b.customer_ids()
    ]


def test_seeded_data_looks_like_a_real_customer_base() -> None:
    sim = DMHubSimulator(2000, seed=1)
    people = [sim.customer(i) for i in sim.customer_ids()]
    ids = [p["id"] for p in people if p]
    assert ids == sorted(set(ids))
    assert len({b - a for a, b in itertools.pairwise(ids)}) > 1  # not contiguous
    mobiles = [p["mobile"] for p in people if p and p["mobile"]]
    assert len(mobiles) == len(set(mobiles)) > 1500
    assert all(len(m) == 11 and m.startswith("1") for m in mobiles)
    assert 500 < sum(1 for p in people if p and p["email"]) < 1500
    assert {p["stage"] for p in people if p} >= {"lead", "customer", "vip", "", None}
    assert {p["gender"] for p in people if p} == {0, 1, 2, None}
    assert {p["source"] for p in people if p} >= {"web", "wechat", "shop"}
    assert all("\u4e00" <= p["name"][0] <= "\u9fff" for p in people if p)
    assert any(isinstance(p["annualRevenue"], float) for p in people if p)
    assert all(set(p["attr"]) == {"attr1", "attr2"} for p in people if p and "attr" in p)
    assert 50 < sum(1 for p in people if p and "attr" not in p) < 250  # as some live answers
    assert sum(1 for i in ids if sim.identities(i)) > 500


def test_seeding_customers_builds_no_row_and_keeps_a_few_bytes_each() -> None:
    # What makes seeding fast (100,000 customers in a quarter of a second; its time is
    # benchmarks/bench_simulator.py's): each customer is a few numbers in arrays, its row built
    # when read. Counted in bytes, not in a loaded machine's seconds (the bound was "< 3 s").
    import tracemalloc

    tracemalloc.start()
    try:
        sim = DMHubSimulator(20_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sim.customers_count() == 20_000
    assert not sim.store._rows  # no customer built as a row
    assert peak < 128 * 20_000, peak  # some 60 bytes a customer; its row (read) 2.5 KB


def test_helpers_add_insert_and_delete() -> None:
    sim = DMHubSimulator(10)
    top = sim.customer_ids()[-1]
    sim.add_customers(5)
    assert sim.customers_count() == 15
    assert min(sim.customer_ids()[10:]) > top
    row = sim.insert_customer({"name": "插入", "mobile": "13812345678"}, customer_id=7)
    assert sim.customer_ids()[0] == 7
    assert row["displayName"] == "插入"
    assert sim.delete_customer(7)
    assert not sim.delete_customer(7)
    assert sim.customer(7) is None


async def test_serve_forever_prints_credentials_until_cancelled() -> None:
    out = io.StringIO()
    task = asyncio.create_task(serve_forever(0, 10, 0, 0.0, 1, out=out))
    for _ in range(1000):  # 10 s at most: a loaded machine's start-up, not 1 s
        if "Ctrl+C" in out.getvalue():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    text = out.getvalue()
    assert "http://127.0.0.1:" in text
    assert "DMHUB_APP_ID=sim-app-id" in text
    assert "DMHUB_SECRET=sim-secret" in text


async def test_the_app_runs_under_aiohttp_test_utilities() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    sim = DMHubSimulator(3)
    async with TestClient(TestServer(sim.app)) as client:
        params = {"grant_type": "client_credentials", "appid": sim.app_id, "secret": sim.secret}
        r = await client.get("/security/accesstoken", params=params)
        token = (await r.json())["access_token"]
        r = await client.get("/v1/customers/count", params={"access_token": token})
        assert await r.text() == "3"


async def test_dmhub_simulator_fixture(dmhub_simulator: DMHubSimulator) -> None:
    assert dmhub_simulator.customers_count() == 50
    assert dmhub_simulator.url.startswith("http://127.0.0.1:")


@pytest.mark.dmhub_simulator(customers=7, seed=2)
async def test_dmhub_simulator_fixture_takes_a_marker(dmhub_simulator: DMHubSimulator) -> None:
    assert dmhub_simulator.customers_count() == 7


@pytest.mark.dmhub_simulator(customers=9)
def test_dmhub_simulator_fixture_answers_a_synchronous_test(
    dmhub_simulator: DMHubSimulator,
) -> None:
    # README "From synchronous code": a job is one asyncio.run(main()). In a plain `def` test
    # the simulator sat in an event loop nothing ran: it took the connection and never
    # answered, and the job hung until its timeout (with urllib's default, for ever).
    async def job() -> int:
        async with dmhub_async.DMHubClient(
            dmhub_simulator.app_id,
            dmhub_simulator.secret,
            base_url=dmhub_simulator.url,
            token_store=dmhub_async.MemoryTokenStore(),
            timeout=5,
            max_retries=0,
        ) as dm:
            return await dm.customers.count()

    assert asyncio.run(job()) == 9
    dmhub_simulator.faults.script(["503"])
    with pytest.raises(dmhub_async.ServerError):
        asyncio.run(job())
    assert dmhub_simulator.counters.routes["GET /v1/customers/count"] == 2


@pytest.mark.dmhub_simulator(7, seed=2)
async def test_dmhub_simulator_fixture_takes_the_markers_positional_argument(
    dmhub_simulator: DMHubSimulator,
) -> None:
    # DMHubSimulator(7) is 7 customers: the marker's positional arguments were dropped unread,
    # and the test ran on the default 50.
    assert dmhub_simulator.customers_count() == 7


@pytest.mark.dmhub_client("sim-app-id", "not-the-secret", max_retries=0)
async def test_dmhub_client_fixture_takes_the_markers_positional_arguments(
    dmhub_client: dmhub_async.DMHubClient,
) -> None:
    with pytest.raises(dmhub_async.AuthenticationError):
        await dmhub_client.customers.count()


@pytest.mark.skipif(not HAS_CLIENT, reason="DMHubClient is not available yet")
async def test_dmhub_client_fixture(dmhub_client: Any, dmhub_simulator: DMHubSimulator) -> None:
    assert await dmhub_client.customers.count() == 50


@pytest.mark.dmhub_simulator(customers=300)
async def test_count_under_a_truncated_body_is_retried_into_the_true_count(
    dmhub_simulator: DMHubSimulator, dmhub_client: dmhub_async.DMHubClient
) -> None:
    # Cut the way the simulator used to cut it (a shorter Content-Length), "300" was the valid
    # JSON "3" and count() returned 3 with no retry.
    dmhub_simulator.faults.script(["truncated"])
    assert await dmhub_client.customers.count() == 300
    assert dmhub_simulator.counters.faults == {"truncated": 1}
    assert dmhub_simulator.counters.routes["GET /v1/customers/count"] == 2  # one retry
    assert dmhub_client.stats.retries == 1


async def test_the_client_fixture_waits_on_the_fake_clock(
    dmhub_simulator: DMHubSimulator,
    dmhub_client: dmhub_async.DMHubClient,
    dmhub_clock: FakeClock,
) -> None:
    dmhub_simulator.faults.retry_after = 30
    dmhub_simulator.faults.script(["429", "503"])
    started = time.monotonic()
    assert await dmhub_client.customers.count() == 50
    # Not the 30 s Retry-After in real time, however loaded the machine (it was < 10 s): the
    # clock is fake. A real wait of it alone would take 30 s or more.
    assert time.monotonic() - started < 30
    assert len(dmhub_clock.waits) == 2
    assert dmhub_clock.waits[0] >= 30  # the Retry-After was honoured, in virtual time


@pytest.mark.parametrize("drop", ["mid-answer", "mid-request"])
async def test_a_client_that_drops_leaves_no_traceback_and_no_500_counted(
    caplog: pytest.LogCaptureFixture, drop: str
) -> None:
    # aiohttp's ClientConnectionResetError (writing an answer to a client that left) and
    # ConnectionResetError (reading the body of one) were logged as "simulator error" with
    # their tracebacks, in a user's test output, and counted as a 500 the client never saw.
    sim = DMHubSimulator(customers=5)
    arrived = asyncio.Event()

    async def gone(request: Any) -> None:
        # No event says so: the server's side of the connection closes when its loop reads
        # the drop, and nothing else tells it.
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0)

    @sim.on_request
    async def hold_until_the_client_left(request: Any) -> None:
        if request.path.startswith("/v1/"):
            arrived.set()
            await asyncio.wait_for(gone(request), timeout=10)

    async with sim:
        token = sim.tokens.issue()
        sim.faults.script(["truncated"])  # writes in the middleware: the first to fail
        _, writer = await asyncio.open_connection(sim.host, sim.port)
        if drop == "mid-answer":
            writer.write(
                f"GET /v1/customers?access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
        else:
            head = f"POST /v1/customers?access_token={token} HTTP/1.1\r\nHost: x\r\n"
            writer.write(f"{head}Content-Length: 100\r\n\r\n{{".encode())
        await writer.drain()
        await arrived.wait()
        writer.transport.abort()
    # Left: the simulator's shutdown waited for that request's handler.
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    assert sim.counters.errors == {}
    assert sim.counters.statuses == {}


@contextlib.contextmanager
def _as_a_user() -> Iterator[pytest.MonkeyPatch]:
    """The environment as a user's shell has it, not an xdist worker's, for the block."""
    with pytest.MonkeyPatch.context() as env:
        for name in os.environ.keys() - users_environ().keys():
            env.delenv(name)
        yield env


def _user_project(pytester: pytest.Pytester, ini: str, tests: str) -> pytest.RunResult:
    """A user's project: its pytest settings, one test file, run by pytest in this process."""
    pytester.makeini("[pytest]\nasyncio_mode = auto\n" + ini)
    pytester.makepyfile(test_user=tests)
    with _as_a_user():
        return pytester.runpytest("-p", "no:cacheprovider")


USER_TESTS_ON_THE_CLIENT = """
import pytest


async def test_counts(dmhub_client, dmhub_simulator):
    assert await dmhub_client.customers.count() == 50
    assert dmhub_simulator.customers_count() == 50


@pytest.mark.asyncio(loop_scope="module")
async def test_on_the_modules_loop(dmhub_client):
    assert await dmhub_client.customers.count() == 50


class TestOnTheClassLoop:
    pytestmark = pytest.mark.asyncio(loop_scope="class")

    async def test_counts(self, dmhub_client):
        assert await dmhub_client.customers.count() == 50
"""


@pytest.mark.parametrize(
    "ini",
    [
        "asyncio_default_fixture_loop_scope = function",
        "asyncio_default_fixture_loop_scope = session",
        "asyncio_default_fixture_loop_scope = module\nasyncio_default_test_loop_scope = session",
        "asyncio_default_fixture_loop_scope = session\nasyncio_default_test_loop_scope = session",
    ],
)
def test_the_fixtures_serve_on_the_tests_event_loop_whatever_its_scope(
    pytester: pytest.Pytester, ini: str
) -> None:
    # The fixtures ran on the loop of `asyncio_default_fixture_loop_scope`, the test on its own
    # (`asyncio_default_test_loop_scope`, or its mark's `loop_scope`): where the two differed,
    # the client failed with "used in another event loop", and the simulator did not answer.
    result = _user_project(pytester, ini, USER_TESTS_ON_THE_CLIENT)
    result.assert_outcomes(passed=3)


USER_TESTS_WITH_MARKS_AT_EVERY_LEVEL = """
import pytest

from dmhub_async.testing import DMHubSimulator

pytestmark = [
    pytest.mark.dmhub_simulator(12, page_cap=5),
    pytest.mark.dmhub_client(max_retries=0, timezone="Asia/Shanghai"),
]


async def test_the_modules_marks(dmhub_simulator, dmhub_client):
    assert (dmhub_simulator.customers_count(), dmhub_simulator.page_cap) == (12, 5)
    assert dmhub_client.retry_policy.max_retries == 0
    assert str(dmhub_client.timezone) == "Asia/Shanghai"


@pytest.mark.dmhub_simulator(seed=3)
@pytest.mark.dmhub_client(timezone="UTC")
async def test_its_own_marks_change_only_what_they_name(dmhub_simulator, dmhub_client):
    assert (dmhub_simulator.customers_count(), dmhub_simulator.page_cap) == (12, 5)
    rows = lambda sim: [sim.customer(i) for i in sim.customer_ids()]  # noqa: E731
    assert rows(dmhub_simulator) == rows(DMHubSimulator(12, seed=3))
    assert rows(dmhub_simulator) != rows(DMHubSimulator(12))
    assert dmhub_client.retry_policy.max_retries == 0
    assert str(dmhub_client.timezone) == "UTC"


@pytest.mark.dmhub_simulator(customers=4)
class TestAClassMark:
    @pytest.mark.dmhub_simulator(2)
    async def test_the_closest_wins(self, dmhub_simulator):
        assert (dmhub_simulator.customers_count(), dmhub_simulator.page_cap) == (2, 5)

    async def test_the_class_over_the_module(self, dmhub_simulator):
        assert (dmhub_simulator.customers_count(), dmhub_simulator.page_cap) == (4, 5)
"""


def test_a_tests_own_marks_override_its_modules_key_by_key(pytester: pytest.Pytester) -> None:
    # The closest mark was taken whole: a test's `@pytest.mark.dmhub_simulator(seed=3)` dropped
    # the module's `customers` and `page_cap`, and it ran on 50 customers and the default page.
    result = _user_project(
        pytester,
        "asyncio_default_fixture_loop_scope = function",
        USER_TESTS_WITH_MARKS_AT_EVERY_LEVEL,
    )
    result.assert_outcomes(passed=4)


def test_a_faults_in_a_mark_starts_afresh_for_each_test(pytester: pytest.Pytester) -> None:
    # The mark is made once, at import: its one Faults served every test of the module, each
    # starting where the one before left its random draws and its script, so a test's faults
    # depended on which tests ran before it (`-k`, a rerun, the order).
    tests = """
import pytest

from dmhub_async.testing import Faults

pytestmark = pytest.mark.dmhub_simulator(faults=Faults(rate=0.5, kinds=["503"], seed=1))
SAME = Faults(rate=0.5, kinds=["503"], seed=1)
EXPECTED = [SAME.next_fault() for _ in range(20)]


@pytest.mark.parametrize("n", [1, 2, 3])
async def test_each_draws_the_seeds_schedule(dmhub_simulator, n):
    assert dmhub_simulator.faults.scripted == 0
    assert [dmhub_simulator.faults.next_fault() for _ in range(20)] == EXPECTED
    dmhub_simulator.faults.script(["500"])  # left unused
"""
    result = _user_project(pytester, "asyncio_default_fixture_loop_scope = function", tests)
    result.assert_outcomes(passed=3)


def test_pytest_fixtures_describes_each_of_the_plugins_fixtures(pytester: pytest.Pytester) -> None:
    # `pytest --fixtures` is how a user finds what a plugin offers: it said "no docstring
    # available" under dmhub_simulator and dmhub_client, the two the README is about.
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_user="def test_nothing():\n    pass\n")
    with _as_a_user():
        result = pytester.runpytest("-p", "no:cacheprovider", "--fixtures")
    listing = result.stdout.str()
    for name, first_line in [
        ("dmhub_simulator", "A running DMHubSimulator seeded with 50 customers"),
        ("dmhub_client", "A DMHubClient pointed at dmhub_simulator"),
        ("dmhub_clock", "The fake clock"),
    ]:
        entry = listing.split(f"\n{name} -- ", 1)[1].split("\n\n", 1)[0]
        assert "no docstring available" not in entry
        assert first_line in entry


def test_the_client_fixture_in_a_plain_def_test_says_what_to_do(
    pytester: pytest.Pytester,
) -> None:
    # The client was made on an event loop that does not run during a `def` test: its first
    # call failed with "used in another event loop (an earlier asyncio.run()?)", which the
    # test never made, and nothing said the fixture is for `async def` tests.
    tests = """
import asyncio


def test_counts(dmhub_client):
    assert asyncio.run(dmhub_client.customers.count()) == 50
"""
    result = _user_project(pytester, "asyncio_default_fixture_loop_scope = function", tests)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*dmhub_client is for `async def` tests*dmhub_simulator.url*"])


def test_the_simulator_answers_a_test_that_anyio_runs(pytester: pytest.Pytester) -> None:
    # anyio's plugin runs a test marked `anyio` on an event loop of its own, while the fixture
    # served the simulator on pytest-asyncio's loop (in auto mode, or with pytest-asyncio before
    # 1.2 in any mode), which does not run during the test: it took the connection and never
    # answered, and the test's client waited out its timeout and retries.
    pytest.importorskip("anyio")  # here with httpx (the bench group)
    tests = """
import pytest

from dmhub_async import DMHubClient, MemoryTokenStore


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_counts(dmhub_simulator):
    async with DMHubClient(
        dmhub_simulator.app_id,
        dmhub_simulator.secret,
        base_url=dmhub_simulator.url,
        token_store=MemoryTokenStore(),
        timeout=5,
        max_retries=0,
    ) as dm:
        assert await dm.customers.count() == 50
"""
    result = _user_project(pytester, "asyncio_default_fixture_loop_scope = function", tests)
    result.assert_outcomes(passed=1)


def test_the_client_fixture_of_a_test_anyio_marks_and_pytest_asyncio_runs_says_so(
    pytester: pytest.Pytester,
) -> None:
    # In pytest-asyncio's auto mode a test marked `anyio` is run by pytest-asyncio, on its own
    # loop, while anyio's plugin runs the test's async fixtures on anyio's: the client was made
    # there, and its first call failed with "used in another event loop (an earlier
    # asyncio.run()?)", which the test never made.
    pytest.importorskip("anyio")
    tests = """
import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_counts(dmhub_client):
    assert await dmhub_client.customers.count() == 50
"""
    result = _user_project(pytester, "asyncio_default_fixture_loop_scope = function", tests)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*dmhub_client cannot serve a test marked `anyio`*strict*"])
    assert "an earlier asyncio.run()" not in result.stdout.str()


def test_the_simulator_of_a_test_anyio_runs_serves_on_its_loop(pytester: pytest.Pytester) -> None:
    # In pytest-asyncio's strict mode anyio's plugin runs a test marked `anyio`, and its async
    # fixtures too, on its loop: there the simulator served, until it was served from a thread
    # for every test marked `anyio`. A hook of the test's then ran on the thread's loop, and
    # one holding a request until the test let it go (an asyncio.Event) held it for good: the
    # call waited out its timeout.
    pytest.importorskip("anyio")
    tests = """
import asyncio

import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.dmhub_client(timeout=5, max_retries=0)
async def test_a_held_request(dmhub_simulator, dmhub_client):
    held, go = asyncio.Event(), asyncio.Event()
    loops = []

    async def hold(request):
        loops.append(asyncio.get_running_loop())
        held.set()
        await go.wait()

    dmhub_simulator.on_request(hold)
    call = asyncio.ensure_future(dmhub_client.customers.count())
    await held.wait()
    go.set()
    assert await call == 50
    assert loops == [asyncio.get_running_loop()] * len(loops)
"""
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_user=tests)
    with _as_a_user():
        result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_fixtures_of_a_test_anyio_runs_on_trio_serve_it_or_say_why(
    pytester: pytest.Pytester,
) -> None:
    # A test anyio's plugin runs on trio (an `anyio_backend` of "trio") has no asyncio loop:
    # the simulator, served on anyio's loop, failed its setup with a raw "RuntimeError: no
    # running event loop" (from a thread, as before, the test reaches it by its URL), and the
    # client, which runs on asyncio alone, failed deep inside too.
    pytest.importorskip("anyio")
    pytest.importorskip("trio")
    tests = """
from urllib.parse import urlsplit

import pytest
import trio


@pytest.fixture
def anyio_backend():
    return "trio"


@pytest.mark.anyio
async def test_reached(dmhub_simulator):
    where = urlsplit(dmhub_simulator.url)
    stream = await trio.open_tcp_stream(where.hostname, where.port)
    async with stream:
        await stream.send_all(b"GET /v1/customers/count HTTP/1.0\\r\\n\\r\\n")
        assert (await stream.receive_some()).startswith(b"HTTP/1.")


@pytest.mark.anyio
async def test_with_the_client(dmhub_client):
    pass
"""
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_user=tests)
    with _as_a_user():
        result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*dmhub_client runs on asyncio*trio*dmhub_simulator.url*"])
    assert "no running event loop" not in result.stdout.str()


@pytest.mark.dmhub_client(max_retries=0)
async def test_the_client_fixture_takes_settings_from_its_mark(
    dmhub_simulator: DMHubSimulator, dmhub_client: dmhub_async.DMHubClient
) -> None:
    dmhub_simulator.faults.script(["503"])
    with pytest.raises(dmhub_async.ServerError):
        await dmhub_client.customers.count()
    assert dmhub_simulator.counters.routes["GET /v1/customers/count"] == 1


async def test_aclose_stops_the_simulator_and_close_still_does() -> None:
    for stop in ("aclose", "close"):
        sim = DMHubSimulator(1)
        await sim.start()
        url = sim.url
        await getattr(sim, stop)()
        with pytest.raises(RuntimeError, match="not running"):
            _ = sim.url
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(url + "/v1/customers/count")


@pytest.mark.parametrize("customer_id", [2**63, 0, -1, True, "7"])
def test_an_id_outside_64_bits_is_refused_and_nothing_kept(customer_id: Any) -> None:
    # 2**63 was stored, then failed the live index half-way (a raw OverflowError), and every
    # later create answered 500.
    sim = DMHubSimulator(customers=3)
    with pytest.raises(ValueError, match="a customer id is an int from 1 to 2\\*\\*63 - 1"):
        sim.insert_customer({"name": "too big"}, customer_id=customer_id)
    assert sim.customers_count() == 3
    sim.insert_customer({"name": "fine"})
    assert sim.customers_count() == 4


def test_the_largest_id_is_taken_and_then_ids_run_out_with_a_clear_error() -> None:
    sim = DMHubSimulator(customers=3)
    sim.insert_customer({"name": "last"}, customer_id=2**63 - 1)
    with pytest.raises(ValueError, match="no id left"):
        sim.insert_customer({"name": "one more"})
    with pytest.raises(ValueError, match="no ids left"):
        sim.add_customers(1)
    assert sim.customers_count() == 4


async def test_a_simulator_on_ipv6_loopback_gives_a_url_a_client_takes() -> None:
    # "http://::1:40123": not a URL, and DMHubClient refused it as one.
    sim = DMHubSimulator(customers=3, host="::1")
    try:
        await sim.start()
    except OSError as err:  # a host without IPv6
        pytest.skip(f"no IPv6 loopback here: {err}")
    async with sim:
        assert sim.url == f"http://[::1]:{sim.port}"
        async with dmhub_async.DMHubClient(
            sim.app_id,
            sim.secret,
            base_url=sim.url,
            token_store=dmhub_async.MemoryTokenStore(),
            max_retries=0,
        ) as dm:
            assert await dm.customers.count() == 3


def test_a_simulator_serves_again_in_a_second_asyncio_run() -> None:
    # aiohttp ties an app to the loop that first ran it: the second run failed inside aiohttp.
    sim = DMHubSimulator(customers=5)

    async def count() -> int:
        async with (
            sim,
            dmhub_async.DMHubClient(
                sim.app_id,
                sim.secret,
                base_url=sim.url,
                token_store=dmhub_async.MemoryTokenStore(),
            ) as dm,
        ):
            return await dm.customers.count()

    assert asyncio.run(count()) == 5
    assert asyncio.run(count()) == 5


def test_a_simulator_an_ended_asyncio_run_left_serving_serves_in_the_next() -> None:
    # Started in one asyncio.run() and never closed (a job, a test that forgot `async with`):
    # the next run's start() returned at once, its port still taking connections that no
    # loop would answer, and every call there timed out, as if the service were down.
    sim = DMHubSimulator(customers=5)

    async def count(close: bool) -> int:
        await sim.start()
        try:
            async with dmhub_async.DMHubClient(
                sim.app_id,
                sim.secret,
                base_url=sim.url,
                token_store=dmhub_async.MemoryTokenStore(),
                timeout=2,
                max_retries=0,
            ) as dm:
                return await dm.customers.count()
        finally:
            if close:
                await sim.aclose()

    assert asyncio.run(count(close=False)) == 5
    port = sim.port
    assert asyncio.run(count(close=True)) == 5
    assert sim.port == port  # the same address, as a URL taken before would name it
    assert asyncio.run(count(close=False)) == 5
    asyncio.run(sim.aclose())  # from a later loop: it stops serving
    with pytest.raises(RuntimeError, match="not running"):
        _ = sim.url


def test_a_simulator_serving_on_an_open_loop_is_not_started_on_another() -> None:
    # Its loop still open (stopped between two run_until_complete()), start() on another one
    # returned as if serving there, and the calls there waited for their timeouts.
    sim = DMHubSimulator(customers=5)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(sim.start())
        with pytest.raises(RuntimeError, match="serving on another event loop"):
            asyncio.run(sim.start())
        first.run_until_complete(sim.aclose())
    finally:
        first.close()


def test_a_simulator_serving_on_another_threads_loop_is_closed_from_this_one() -> None:
    # Served by a loop running on a thread of its own (a plain-def test's fixture of yours),
    # closed with aclose() from the test's asyncio.run(), a client's connection still open:
    # aiohttp's raw "RuntimeError: Task ... got Future ... attached to a different loop", its
    # port closed and its connection left half shut, so the client's next call waited out
    # its whole timeout (APITimeoutError, blaming the service) instead of failing at once.
    import threading

    sim = DMHubSimulator(customers=5)
    serving = asyncio.new_event_loop()
    thread = threading.Thread(target=serving.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(sim.start(), serving).result(timeout=30)

        async def closed_under_a_client() -> BaseException | None:
            async with dmhub_async.DMHubClient(
                sim.app_id,
                sim.secret,
                base_url=sim.url,
                token_store=dmhub_async.MemoryTokenStore(),
                timeout=10,
                max_retries=0,
            ) as dm:
                assert await dm.customers.count() == 5  # its connection kept alive
                await sim.aclose()
                try:
                    await dm.customers.count()
                except dmhub_async.DMHubError as err:
                    return err
            return None

        failed = asyncio.run(closed_under_a_client())
    finally:
        serving.call_soon_threadsafe(serving.stop)
        thread.join(10)
        serving.close()

    with pytest.raises(RuntimeError, match="not running"):
        _ = sim.url
    # Refused at once, as a stopped service is: no timeout.
    assert isinstance(failed, dmhub_async.APIConnectionError)
    assert not isinstance(failed, dmhub_async.APITimeoutError)


def test_a_script_given_one_string_says_so() -> None:
    # script("500") said: unknown fault kinds ['0', '5'].
    with pytest.raises(ValueError, match="script takes an iterable of fault kinds, not the string"):
        Faults().script("500")


@pytest.mark.parametrize(
    "plugins",
    [
        '["dmhub_async.testing.pytest_plugin", "pytest_asyncio.plugin"]',
        '["pytest_asyncio.plugin", "dmhub_async.testing.pytest_plugin"]',
    ],
    ids=["ours first", "ours last"],
)
def test_the_plugin_listed_by_hand_before_pytest_asyncio_leaves_its_asserts_rewritten(
    pytester: pytest.Pytester, plugins: str
) -> None:
    # Autoload off, the plugins named in a conftest, ours first: its import took pytest_asyncio
    # in before pytest could rewrite its asserts, and pytest's warning of it ended a run with
    # `filterwarnings = error` before its first test.
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    pytester.makeconftest(f"pytest_plugins = {plugins}\n")
    pytester.makepyfile(test_user=USER_TESTS_ON_THE_CLIENT)
    with _as_a_user() as env:
        env.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert "PytestAssertRewriteWarning" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=3)


def test_a_fixture_asked_for_with_pytest_asyncio_switched_off_says_what_it_needs(
    pytester: pytest.Pytester,
) -> None:
    # pytest-asyncio installed, its plugin off (`-p no:asyncio`): pytest's own error came,
    # naming a fixture of the plugin's own (`_dmhub_simulator_in_function_loop`).
    pytester.makepyfile(
        test_user="async def test_sim(dmhub_simulator):\n    pass\n\ndef test_other():\n    pass\n"
    )
    with _as_a_user():
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    said = result.stdout.str()
    assert "pip install pytest-asyncio" in said
    assert "_dmhub_" not in said
    result.assert_outcomes(passed=1, errors=1)
