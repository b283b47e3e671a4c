"""Benchmark: a concurrent walk against the aiohttp worker floor, and concurrent lookups.

Run ``python -m benchmarks.bench_walk`` (``--quick`` for a smoke run of a few seconds). The
simulator serves from a process of its own (``dmhub-async simulate --latency-ms``, see
``_common.simulator_process``), so its routing, store and serialisation run on another core
than the client's event loop, and the client's CPU time is the client's alone.

- walk (issue 15, question 3): ``dm.customers.list(page_size=100, concurrency=N)`` over 6,400
  customers (64 pages), N = 4, 8, 16, 32, at 20, 50 and 100 ms a request, beside two floors:

  * the **aiohttp worker floor**: what a careful user writes with aiohttp alone, at the same
    concurrency: page 1 (it tells how many pages there are), then N workers, each taking the
    next page number as soon as it finishes one, reading it with the page reader ``list()``
    reads it with (``read_customer_page``: msgspec's typed decode and the models' build; until
    issue 15's twenty-seventh round ``_json.loads`` and the converter's hook, a slower decode
    than the SDK's, which flattered the SDK where the cores are busy), on the SDK's token. It
    knows no more than the SDK does (not the page count before page 1 is read) and yields
    nothing in order.
  * the **ideal plus cost**: ``(1 + ceil((pages - 1) / N)) * (latency + cost)``, page 1 alone
    and then full rounds of N, where ``cost`` is what a request costs beyond the latency, as
    measured in the same run by the floor fetching 16 pages one at a time. What it leaves out
    is the contention of N requests on these cores.

  Goal: the SDK within 1.05x of the worker floor at every N and latency, still yielding
  strictly in order with at most about 2N pages held.
- lookups (question 4): ``dm.identities.lookup_many`` of 10,000 distinct identities (half
  bound to a seeded customer, half unknown: each one a request) at concurrency 64 and 20 ms a
  request, beside 64 aiohttp workers; the ideal is ``ceil(lookups / 64) * latency``.

Contenders run in alternation, round after round, the order reversed every other round; each
is reported as its median and its noise (half the min-max spread over the median), its ratios
as the median, over rounds, of its time over the reference's time in the same round, with the
min-max of those round ratios: a ratio whose range straddles the goal is not a result.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import attrs

from dmhub_async import AsyncPaginator, DMHubClient, Identity, MemoryTokenStore
from dmhub_async._converter import read_customer_page, structure_identities
from dmhub_async._json import loads
from dmhub_async._pagination import RawPage
from dmhub_async.resources._pages import rows_page
from dmhub_async.testing import DMHubSimulator

try:
    from ._common import (
        alternate_async,
        children_stopped_on_sigterm,
        machine_info,
        ratios,
        record_rows,
        simulator_process,
        write_results,
    )
except ImportError:  # run as a file: python benchmarks/bench_walk.py
    from _common import (  # type: ignore[no-redef]
        alternate_async,
        children_stopped_on_sigterm,
        machine_info,
        ratios,
        record_rows,
        simulator_process,
        write_results,
    )

#: The walk's settings (issue 15, question 3) and its goal: the SDK over the worker floor.
WALK_LATENCIES_MS = (20.0, 50.0, 100.0)
WALK_CONCURRENCIES = (4, 8, 16, 32)
GOAL_VS_FLOOR = 1.05
#: Pages the floor fetches one at a time to measure a request's cost beyond the latency.
COST_PAGES = 16
LOOKUP_LATENCY_MS = 20.0
#: The collector's oldest generation: a collection of it is a full one.
OLDEST_GENERATION = 2
PAGE_SIZE = 100
_LIST = "/v1/customers"
_IDENTITIES = "/v1/customeridentities"


class SharedStore(MemoryTokenStore):
    """The SDK's token store, which also tells the floor the token (one token an appid: the
    simulator revokes the old one when another is fetched, so they must share it)."""

    value = ""

    async def set(self, key: str, token: Any) -> None:
        """Keep the token, and remember its value for the floor."""
        await super().set(key, token)
        self.value = token.value


def _server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process at ``pid`` has used, or NaN off Linux."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GcClock:
    """The time the garbage collector runs while this is among ``gc.callbacks``, and how many
    of its collections were full ones (the oldest generation).

    Part of the client's CPU: a walk that holds its pages' records longer (to yield them in
    order) than workers that drop each page at once gives the collector more young objects
    to find alive, promote and scan again in the older generations (issue 15's
    twenty-eighth round: 20-130 us of a page's client CPU at 20 ms a request). Promoted, they
    bring on a full collection every few walks (up to Python 3.12, whose young generation is
    collected every 700 objects; 3.13's every 2,000), which scans the whole process: 15-20 ms
    here, in whichever walk it falls (issue 15's thirty-fifth round).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:  # not the end of a collection that began before it was installed
            self.seconds += time.perf_counter() - self._started
            self._started = 0.0
            self.full += info["generation"] == OLDEST_GENERATION


class Timer:
    """Times runs, with the client's and the simulator's CPU and the client's garbage
    collections' time, and checks what each returned."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.client_cpu: dict[str, list[float]] = {}
        self.server_cpu: dict[str, list[float]] = {}
        self.client_gc: dict[str, list[float]] = {}
        self.client_full: dict[str, list[int]] = {}  # full collections, a count each round

    def __call__(
        self, label: str, run: Callable[[], Awaitable[int]], expect: int
    ) -> Callable[[], Awaitable[float]]:
        async def timed() -> float:
            server, cpu = _server_cpu(self.pid), time.process_time()
            collector = GcClock()
            gc.callbacks.append(collector)
            started = time.perf_counter()
            try:
                got = await run()
            finally:
                elapsed = time.perf_counter() - started
                gc.callbacks.remove(collector)
            self.client_cpu.setdefault(label, []).append(time.process_time() - cpu)
            self.client_gc.setdefault(label, []).append(collector.seconds)
            self.client_full.setdefault(label, []).append(collector.full)
            self.server_cpu.setdefault(label, []).append(_server_cpu(self.pid) - server)
            if got != expect:
                raise AssertionError(f"{label}: expected {expect} results, got {got}")
            return elapsed

        return timed


async def _workers(n: int, jobs: Iterator[Any], work: Callable[[Any], Awaitable[int]]) -> int:
    """``n`` workers, each taking the next job as it finishes one; the sum of what they did."""
    done = 0

    async def worker() -> None:
        nonlocal done
        for job in jobs:
            got = await work(job)  # not `done += await ...`: that reads `done` before the await
            done += got

    await asyncio.gather(*(worker() for _ in range(n)))
    return done


async def _floor_page(
    session: aiohttp.ClientSession, url: str, store: SharedStore, number: int
) -> tuple[int, int]:
    """One page the floor's way (aiohttp and the SDK's page reader, nothing else): how many
    customers it held, and the ``records`` total it reported."""
    params = {
        "sidx": "id",
        "sord": "asc",
        "rows": str(PAGE_SIZE),
        "page": str(number),
        "access_token": store.value,
    }
    async with session.get(url + _LIST, params=params) as resp:
        rows, keys = read_customer_page(await resp.read())
    return len(rows), keys["records"]


def _floor_walk(
    session: aiohttp.ClientSession, url: str, store: SharedStore, n: int
) -> Callable[[], Awaitable[int]]:
    """Page 1 (it tells how many pages there are), then ``n`` workers over the rest."""

    async def page(number: int) -> int:
        return (await _floor_page(session, url, store, number))[0]

    async def walk() -> int:
        first, records = await _floor_page(session, url, store, 1)
        pages = math.ceil(records / PAGE_SIZE)
        return first + await _workers(n, iter(range(2, pages + 1)), page)

    return walk


def _floor_pages_one_at_a_time(
    session: aiohttp.ClientSession, url: str, store: SharedStore, pages: int
) -> Callable[[], Awaitable[int]]:
    """``pages`` pages in a row: a request's latency plus its cost, on this machine."""

    async def walk() -> int:
        count = 0
        for number in range(1, pages + 1):
            count += (await _floor_page(session, url, store, number))[0]
        return count

    return walk


def _sdk_request_workers(dm: DMHubClient, pages: int, n: int) -> Callable[[], Awaitable[int]]:
    """The SDK's request path (its session's ``request``, the page read as ``list()`` reads it)
    in the floor's workers."""
    decode = rows_page(read_customer_page, "a page of customers")

    async def page(number: int) -> int:
        params = {"sidx": "id", "sord": "asc", "rows": str(PAGE_SIZE), "page": str(number)}
        raw = await dm._session.request("GET", _LIST, params=params, decode=decode)
        return len(raw.items)

    async def walk() -> int:
        return await page(1) + await _workers(n, iter(range(2, pages + 1)), page)

    return walk


def _sdk_walk(dm: DMHubClient, n: int) -> Callable[[], Awaitable[int]]:
    async def walk() -> int:
        count = 0
        async for page in dm.customers.list(page_size=PAGE_SIZE, concurrency=n).pages():
            count += len(page.items)
        return count

    return walk


@attrs.define
class Row:
    """One contender's line in the table."""

    group: str
    label: str
    samples: list[float]
    client_cpu: float
    floor: list[float] | None = None  # the floor's times in the same rounds
    ideal: float | None = None
    client_gc: float = math.nan  # the client's garbage collections, seconds (median)
    #: The full collections in each of its rounds (None: not counted).
    client_full: list[int] | None = None

    @property
    def rounds_with_full_collection(self) -> int | None:
        """How many of its rounds a full collection fell in (None: not counted)."""
        if self.client_full is None:
            return None
        return sum(1 for n in self.client_full if n)


def _ratio(samples: Sequence[float], reference: Sequence[float]) -> str:
    """The median round ratio and its min-max: ``1.03x (0.99-1.06)``."""
    rs = ratios(samples, reference)
    return f"{statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})"


def _miss(round_ratios: Sequence[float], row: Row) -> str:
    """A missed cell: its ratio and range, and the rounds of the SDK's a full collection fell
    in (a miss they explain is the collector's, on this Python: see :class:`GcClock`)."""
    said = _ratio(round_ratios, [1.0] * len(round_ratios))
    full = row.rounds_with_full_collection
    if full:
        said += f", a full collection in {full} of its {len(row.samples)} rounds"
    return said


def _table(rows: Sequence[Row], ideal_header: str = "vs ideal+cost") -> str:
    """Contender, median, noise, the ratio to each floor, client CPU, the garbage collector's
    share of it and the rounds a full collection fell in: one line a contender."""
    lines = [
        f"  {'':<7} {'contender':<26} {'median ms':>10} {'noise':>7} {'vs floor':>21} "
        f"{ideal_header:>14} {'client CPU ms':>14} {'of it gc ms':>12} {'full gc':>8}"
    ]
    for row in rows:
        med = statistics.median(row.samples)
        noise = (max(row.samples) - min(row.samples)) / 2 / med
        vs_floor = _ratio(row.samples, row.floor) if row.floor is not None else ""
        vs_ideal = f"{med / row.ideal:.2f}x" if row.ideal else ""
        cpu = "" if math.isnan(row.client_cpu) else f"{row.client_cpu * 1e3:.1f}"
        collected = "" if math.isnan(row.client_gc) else f"{row.client_gc * 1e3:.1f}"
        rounds = row.rounds_with_full_collection
        full = "" if rounds is None else f"{rounds}/{len(row.samples)}"
        lines.append(
            f"  {row.group:<7} {row.label:<26} {med * 1e3:10.1f} {f'±{noise:.0%}':>7} "
            f"{vs_floor:>21} {vs_ideal:>14} {cpu:>14} {collected:>12} {full:>8}"
        )
    if any(row.rounds_with_full_collection is not None for row in rows):
        lines.append(
            "  full gc: the rounds of the contender's that a full collection (the oldest"
            " generation: it scans the whole process) fell in, whoever's objects brought it on"
        )
    return "\n".join(lines)


async def _walk_at(
    latency_ms: float, customers: int, concurrencies: Sequence[int], rounds: int, diagnose: bool
) -> tuple[list[Row], dict[int, list[float]], float]:
    """The table's rows at one latency, the SDK's round ratios to the floor by N, and the
    cost of a request beyond the latency."""
    pages = math.ceil(customers / PAGE_SIZE)
    latency = latency_ms / 1e3
    store = SharedStore()
    contenders: dict[str, Callable[[], Awaitable[float]]] = {}
    concurrency_of: dict[str, int] = {}
    with simulator_process(customers, latency_ms=latency_ms) as sim:
        timer = Timer(sim.pid)
        top = max(concurrencies)
        async with (
            DMHubClient(
                sim.app_id,
                sim.secret,
                base_url=sim.url,
                token_store=store,
                max_concurrency=top,
            ) as dm,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=top)) as session,
        ):
            in_a_row = min(COST_PAGES, pages)
            cost_label = f"floor, {in_a_row} pages in a row"
            contenders[cost_label] = timer(
                cost_label,
                _floor_pages_one_at_a_time(session, sim.url, store, in_a_row),
                in_a_row * 100,
            )
            for n in concurrencies:
                runs = {f"floor {n}": _floor_walk(session, sim.url, store, n)}
                runs[f"SDK {n}"] = _sdk_walk(dm, n)
                if diagnose:  # the SDK's request path on the floor's schedule
                    runs[f"SDK request path, {n} wkrs"] = _sdk_request_workers(dm, pages, n)
                for label, run in runs.items():
                    contenders[label] = timer(label, run, customers)
                    concurrency_of[label] = n
            # The token, and warm connections (no contender pays for set-up): a walk of each.
            await _sdk_walk(dm, top)()
            await _floor_walk(session, sim.url, store, top)()
            times = await alternate_async(contenders, rounds)
    cost = max(0.0, statistics.median(times.pop(cost_label)) / in_a_row - latency)
    group = f"{latency_ms:g} ms"
    rows = []
    for label, samples in times.items():
        n = concurrency_of[label]
        floor = None if label.startswith("floor") else times[f"floor {n}"]
        ideal = (1 + math.ceil((pages - 1) / n)) * (latency + cost)
        cpu = statistics.median(timer.client_cpu[label])
        collected = statistics.median(timer.client_gc[label])
        full = timer.client_full[label]
        rows.append(Row(group, label, samples, cpu, floor, ideal, collected, full))
    sdk = {n: ratios(times[f"SDK {n}"], times[f"floor {n}"]) for n in concurrencies}
    return rows, sdk, cost


async def bench_walk(
    customers: int,
    concurrencies: Sequence[int],
    latencies_ms: Sequence[float],
    rounds: int,
    diagnose: bool = False,
) -> dict[str, float]:
    """The SDK's median round ratio to the worker floor, by ``walk@N@latency``."""
    pages = math.ceil(customers / PAGE_SIZE)
    print(
        f"walk: {customers:,} customers, {pages} pages of {PAGE_SIZE}, concurrency "
        f"{'/'.join(map(str, concurrencies))}, at {'/'.join(f'{x:g}' for x in latencies_ms)} ms"
        f" a request, {rounds} round(s)"
    )
    rows: list[Row] = []
    found: dict[str, float] = {}
    misses: list[str] = []
    costs: list[str] = []
    for latency_ms in latencies_ms:
        at, sdk, cost = await _walk_at(latency_ms, customers, concurrencies, rounds, diagnose)
        rows += at
        costs.append(f"{cost * 1e3:.2f} ms at {latency_ms:g} ms")
        by_label = {row.label: row for row in at}
        for n, rs in sdk.items():
            found[f"walk@{n}@{latency_ms:g}ms"] = statistics.median(rs)
            if statistics.median(rs) > GOAL_VS_FLOOR:
                misses.append(f"{n} at {latency_ms:g} ms ({_miss(rs, by_label[f'SDK {n}'])})")
    print(_table(rows))
    record_rows("3", rows)  # for the runner's summary and chart (--json)
    print(f"  a request's cost beyond the latency (the floor, one at a time): {', '.join(costs)}")
    verdict = "met" if not misses else "MISSED at " + ", ".join(misses)
    print(f"question 3, SDK within {GOAL_VS_FLOOR}x of the aiohttp worker floor: {verdict}")
    return found


def _identities(lookups: int) -> tuple[list[Identity], int]:
    """``lookups`` distinct identities, half bound to a seeded customer, and how many are."""
    twin = DMHubSimulator(lookups)  # the served one's seed, not running: what it holds
    known: list[Identity] = []
    for cid in twin.customer_ids():
        bound = twin.identities(cid)
        if bound:
            kind, value, _ = bound[0]
            known.append(Identity(kind, value))
            if len(known) == lookups // 2:
                break
    unknown = [Identity("wechat", f"unknown-{i}") for i in range(lookups - len(known))]
    return known + unknown, len(known)


async def bench_lookups(
    lookups: int, concurrency: int, rounds: int, diagnose: bool = False
) -> float:
    """The SDK's median round ratio to the floor of ``lookup_many`` of ``lookups`` identities.

    ``diagnose`` adds the SDK's layers one by one in the floor's workers: ``lookup()`` (the
    request path and the identities' decode) and ``dm.request`` (the request path alone), so
    that the client CPU over the floor's splits into the window's share and the request path's.
    """
    print(
        f"lookups: {lookups:,} distinct identities at concurrency {concurrency}, "
        f"{LOOKUP_LATENCY_MS:g} ms a request, {rounds} round(s)"
    )
    wanted, bound = _identities(lookups)
    store = SharedStore()
    sdk_label = f"SDK concurrency {concurrency}"
    floor_label = f"floor concurrency {concurrency}"
    # Enough customers for every known identity: one seeded customer for each lookup.
    with simulator_process(lookups, latency_ms=LOOKUP_LATENCY_MS) as sim:
        timer = Timer(sim.pid)
        async with (
            DMHubClient(
                sim.app_id,
                sim.secret,
                base_url=sim.url,
                token_store=store,
                max_concurrency=concurrency,
            ) as dm,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session,
        ):

            async def sdk() -> int:
                found = await dm.identities.lookup_many(wanted, concurrency=concurrency)
                if sum(v is not None for v in found.values()) != bound:
                    raise AssertionError(f"expected {bound} identities found")
                return len(found)

            async def one(identity: Identity) -> int:
                params = {
                    "identityType": identity.type,
                    "identityValue": identity.value,
                    "access_token": store.value,
                }
                async with session.get(sim.url + _IDENTITIES, params=params) as resp:
                    structure_identities(loads(await resp.read()))
                return 1

            async def floor_run() -> int:
                return await _workers(concurrency, iter(wanted), one)

            contenders = {
                floor_label: timer(floor_label, floor_run, lookups),
                sdk_label: timer(sdk_label, sdk, lookups),
            }
            if diagnose:

                async def sdk_lookup(identity: Identity) -> int:
                    await dm.identities.lookup(identity)
                    return 1

                async def sdk_request(identity: Identity) -> int:
                    params = {"identityType": identity.type, "identityValue": identity.value}
                    await dm.request("GET", _IDENTITIES, params=params)
                    return 1

                for label, work in (
                    (f"SDK lookup(), {concurrency} wkrs", sdk_lookup),
                    (f"SDK dm.request, {concurrency} wkrs", sdk_request),
                ):

                    async def each(work: Callable[[Identity], Awaitable[int]] = work) -> int:
                        return await _workers(concurrency, iter(wanted), work)

                    contenders[label] = timer(label, each, lookups)
            # The token, warm connections (a lookup each) and the simulator's first answers.
            await dm.identities.lookup_many(wanted[:concurrency], concurrency=concurrency)
            await _workers(concurrency, iter(wanted[:concurrency]), one)
            times = await alternate_async(contenders, rounds)
    ideal = math.ceil(lookups / concurrency) * LOOKUP_LATENCY_MS / 1e3
    group = f"{LOOKUP_LATENCY_MS:g} ms"
    rows = [
        Row(
            group,
            label,
            samples,
            statistics.median(timer.client_cpu[label]),
            None,
            ideal,
            statistics.median(timer.client_gc[label]),
            timer.client_full[label],
        )
        for label, samples in times.items()
    ]
    for row in rows[1:]:
        row.floor = times[floor_label]
    print(_table(rows, ideal_header="vs ideal"))
    for label in list(times)[1:]:
        cpu = statistics.median(ratios(timer.client_cpu[label], timer.client_cpu[floor_label]))
        print(f"  {label}: client CPU {cpu:.2f}x the floor's (median round ratio)")
    record_rows("4", rows, ideal="ideal")
    return statistics.median(ratios(times[sdk_label], times[floor_label]))


def _fake_service(pages: int, seed: int) -> Callable[..., Awaitable[RawPage[int]]]:
    """Pages of ``PAGE_SIZE`` ids, each after a seeded log-normal latency around 20 ms."""
    rng = random.Random(seed)
    delays = [0.02 * rng.lognormvariate(0, 0.3) for _ in range(pages + 1)]

    async def fetch(number: int, size: int) -> RawPage[int]:
        await asyncio.sleep(delays[number])
        ids = list(range((number - 1) * size + 1, number * size + 1))
        return RawPage(ids, None, pages * size, pages)

    return fetch


def _fake_runs(
    fetch: Callable[..., Awaitable[RawPage[int]]], pages: int, n: int
) -> dict[str, Callable[[], Awaitable[int]]]:
    """N workers (after page 1, like the floor) and the paginator, over the fake."""

    async def page(number: int) -> int:
        return len((await fetch(number, PAGE_SIZE)).items)

    async def workers() -> int:
        return await page(1) + await _workers(n, iter(range(2, pages + 1)), page)

    async def walk() -> int:
        paginator = AsyncPaginator(
            fetch, page_size=PAGE_SIZE, concurrency=n, key=int, dedupe="ascending"
        )
        return len(await paginator.to_list())

    return {"workers": workers, "AsyncPaginator": walk}


async def bench_schedule(pages: int, concurrencies: Sequence[int], seeds: int) -> dict[str, float]:
    """The paginator's schedule alone: ``AsyncPaginator`` against N workers on an in-process
    fake whose pages take a seeded, jittered latency and no CPU, so head-of-line blocking
    shows and the machine's load hardly does."""
    print(f"schedule: {pages} pages, latency log-normal around 20 ms (sigma 0.3), {seeds} seeds")
    found: dict[str, float] = {}
    rows: list[Row] = []
    for n in concurrencies:
        times: dict[str, list[float]] = {"workers": [], "AsyncPaginator": []}
        for seed in range(seeds):
            runs = list(_fake_runs(_fake_service(pages, seed), pages, n).items())
            for label, run in runs if seed % 2 else runs[::-1]:
                started = time.perf_counter()
                if await run() != pages * PAGE_SIZE:
                    raise AssertionError(f"{label}: not every record")
                times[label].append(time.perf_counter() - started)
        sdk, floor = times["AsyncPaginator"], times["workers"]
        rows += [
            Row(f"c={n}", "workers", floor, math.nan),
            Row(f"c={n}", "SDK", sdk, math.nan, floor),
        ]
        found[f"schedule@{n}"] = statistics.median(ratios(sdk, floor))
    print(_table(rows))
    return found


#: The walk's (customers, concurrencies, latencies in ms, rounds); the lookups' (lookups,
#: concurrency, rounds).
FULL = ((6400, WALK_CONCURRENCIES, WALK_LATENCIES_MS, 5), (10_000, 64, 3))
QUICK = ((600, (4, 8), (5.0,), 1), (256, 64, 1))


async def _main(
    quick: bool,
    rounds: int | None,
    diagnose: bool = False,
    schedule: bool = False,
    diagnose_lookups: bool = False,
) -> dict[str, float]:
    if schedule:
        return await bench_schedule(16 if quick else 64, WALK_CONCURRENCIES, 3 if quick else 9)
    (customers, concurrencies, latencies, walk_rounds), (lookups, concurrency, lookup_rounds) = (
        QUICK if quick else FULL
    )
    if diagnose_lookups:
        ratio = await bench_lookups(lookups, concurrency, rounds or lookup_rounds, diagnose=True)
        return {f"lookups@{concurrency}": ratio}
    found = await bench_walk(customers, concurrencies, latencies, rounds or walk_rounds, diagnose)
    if not diagnose:
        found[f"lookups@{concurrency}"] = await bench_lookups(
            lookups, concurrency, rounds or lookup_rounds
        )
    return found


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark; the SDK's median round ratios to the aiohttp floor, by contender."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--rounds", type=int, help="alternating rounds (both parts)")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="the walk only, adding the SDK's request path in the floor's workers (whose is "
        "the gap to the floor: the request path's, or the paginator's schedule)",
    )
    parser.add_argument(
        "--schedule",
        action="store_true",
        help="the paginator's schedule alone, against N workers, on an in-process fake with "
        "jittered latency (no server, no CPU: robust on a loaded machine)",
    )
    parser.add_argument(
        "--diagnose-lookups",
        action="store_true",
        help="the lookups only, adding the SDK's lookup() and dm.request in the floor's workers "
        "(whose is the client CPU over the floor's: lookup_many's window, or the request path)",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        metavar="N",
        help="collect the young generation every N objects in this run (gc.set_threshold; "
        "Python's default: 700 up to 3.12, 2000 from 3.13; 0: no automatic collection)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every row's figures here")
    args = parser.parse_args(argv)
    if args.gc_threshold is not None and args.gc_threshold < 0:
        parser.error(f"--gc-threshold must be 0 or more, not {args.gc_threshold}")
    thresholds = gc.get_threshold()
    if args.gc_threshold is not None:  # this run's alone: the caller's are set back after it
        gc.set_threshold(args.gc_threshold, *thresholds[1:])
    try:
        print(machine_info())
        print(f"the collector's thresholds: {gc.get_threshold()}")
        found = asyncio.run(
            _main(args.quick, args.rounds, args.diagnose, args.schedule, args.diagnose_lookups)
        )
    finally:
        gc.set_threshold(*thresholds)
    if args.json:
        write_results(args.json, "bench_walk")
    return found


if __name__ == "__main__":
    with children_stopped_on_sigterm():  # a kill stops the children too
        main()
    sys.exit(0)
