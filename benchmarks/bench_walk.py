"""Benchmark: a concurrent walk and concurrent identity lookups at a fixed latency, vs ideal.

Run ``python -m benchmarks.bench_walk`` (``--quick`` for a smoke run under 3 s). The simulator
serves from a process of its own (``dmhub-async simulate --latency-ms``, see
``_common.simulator_process``), so its routing, store and serialisation run on another core
than the client's event loop, and the client's CPU time is the client's alone.

- walk (question 3): ``dm.customers.list(page_size=100, concurrency=N)`` over every customer,
  N = 1 (sequential), 4, 8, 16, 32, at 30 ms a request; the ideal is
  ``ceil(pages / N) * latency`` (N requests a round trip, nothing else). Goal: within 1.2x of
  ideal up to N = 16.
- lookups (question 4): ``dm.identities.lookup_many`` of 10,000 distinct identities (half
  bound to a seeded customer, half unknown: each one a request) at concurrency 64 and 20 ms a
  request; the ideal is ``ceil(lookups / 64) * latency``.

Beside each SDK run, a **floor** does the same requests with the least machinery: N
``aiohttp`` workers taking the next page (or identity) as each finishes, decoding with the
SDK's own ``_json.loads`` and converter, on the SDK's token. The floor over ideal is what the
setting costs anyone (the server's and the client's work a request, which the ideal counts as
nothing); the SDK over the floor is the SDK's own share.

Contenders run in alternation, round after round, the order reversed every other round; each
is reported as the median and min-max of its rounds, with its client CPU time and the
simulator's CPU time (Linux: ``/proc``; 10 ms ticks, so a rough figure) for the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiohttp

from dmhub_async import DMHubClient, Identity, MemoryTokenStore
from dmhub_async._converter import structure_customers, structure_identities
from dmhub_async._json import loads
from dmhub_async.testing import DMHubSimulator

try:
    from ._common import alternate_async, machine_info, simulator_process
except ImportError:  # run as a file: python benchmarks/bench_walk.py
    from _common import (  # type: ignore[no-redef]
        alternate_async,
        machine_info,
        simulator_process,
    )

WALK_LATENCY_MS = 30.0
LOOKUP_LATENCY_MS = 20.0
PAGE_SIZE = 100
#: Question 3's goal: within this of ideal, up to this concurrency.
GOAL, GOAL_UP_TO = 1.2, 16
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


class Timer:
    """Times runs, with the client's and the simulator's CPU, and checks what each returned."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.client_cpu: dict[str, list[float]] = {}
        self.server_cpu: dict[str, list[float]] = {}

    def __call__(
        self, label: str, run: Callable[[], Awaitable[int]], expect: int
    ) -> Callable[[], Awaitable[float]]:
        async def timed() -> float:
            server, cpu = _server_cpu(self.pid), time.process_time()
            started = time.perf_counter()
            got = await run()
            elapsed = time.perf_counter() - started
            self.client_cpu.setdefault(label, []).append(time.process_time() - cpu)
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
) -> int:
    """One page the floor's way: aiohttp, the SDK's decoder and converter, nothing else."""
    params = {
        "sidx": "id",
        "sord": "asc",
        "rows": str(PAGE_SIZE),
        "page": str(number),
        "access_token": store.value,
    }
    async with session.get(url + _LIST, params=params) as resp:
        return len(structure_customers(loads(await resp.read())["rows"]))


def _floor_walk(
    session: aiohttp.ClientSession, url: str, store: SharedStore, pages: int, n: int
) -> Callable[[], Awaitable[int]]:
    async def page(number: int) -> int:
        return await _floor_page(session, url, store, number)

    async def walk() -> int:
        return await _workers(n, iter(range(1, pages + 1)), page)

    return walk


def _sdk_request_workers(dm: DMHubClient, pages: int, n: int) -> Callable[[], Awaitable[int]]:
    """The SDK's request path (``dm.request`` + the converter) in the floor's ``n`` workers."""

    async def page(number: int) -> int:
        params = {"sidx": "id", "sord": "asc", "rows": str(PAGE_SIZE), "page": str(number)}
        return len(structure_customers((await dm.request("GET", _LIST, params=params))["rows"]))

    async def walk() -> int:
        return await _workers(n, iter(range(1, pages + 1)), page)

    return walk


def _floor_paginator_schedule(
    session: aiohttp.ClientSession, url: str, store: SharedStore, pages: int, n: int
) -> Callable[[], Awaitable[int]]:
    """The floor's fetch on the paginator's schedule: a task a page, ``n`` in flight, the
    window refilled as pages are consumed in order."""

    async def fetch(number: int) -> int:
        return await _floor_page(session, url, store, number)

    async def walk() -> int:
        tasks: dict[int, asyncio.Task[int]] = {}
        launched, count = 1, 0
        for number in range(1, pages + 1):
            while launched < number + n and launched <= pages:
                tasks[launched] = asyncio.ensure_future(fetch(launched))
                launched += 1
            count += await tasks.pop(number)
        return count

    return walk


def _sdk_walk(dm: DMHubClient, n: int) -> Callable[[], Awaitable[int]]:
    async def walk() -> int:
        count = 0
        async for page in dm.customers.list(page_size=PAGE_SIZE, concurrency=n).pages():
            count += len(page.items)
        return count

    return walk


def _table(
    times: dict[str, list[float]],
    ideal: dict[str, float],
    floor_of: dict[str, str],
    timer: Timer,
) -> str:
    """Median, min-max, ideal, vs ideal, vs floor (median round ratio), client and server CPU."""
    head = (
        f"  {'contender':<28} {'median ms':>10} {'min-max ms':>15} {'ideal ms':>9} "
        f"{'vs ideal':>9} {'vs floor':>9} {'client CPU':>11} {'server CPU':>11}"
    )
    lines = [head]
    for label, samples in times.items():
        med = statistics.median(samples)
        floor = floor_of.get(label)
        vs_floor = (
            f"{statistics.median(t / f for t, f in zip(samples, times[floor], strict=True)):8.2f}x"
            if floor in times and floor != label
            else f"{'':>9}"
        )
        lines.append(
            f"  {label:<28} {med * 1e3:10.1f} "
            f"{f'{min(samples) * 1e3:.1f}-{max(samples) * 1e3:.1f}':>15} "
            f"{ideal[label] * 1e3:9.0f} {med / ideal[label]:8.2f}x {vs_floor} "
            f"{statistics.median(timer.client_cpu[label]) * 1e3:8.1f} ms "
            f"{statistics.median(timer.server_cpu[label]) * 1e3:8.0f} ms"
        )
    return "\n".join(lines)


def _label(n: int, floor: bool = False) -> str:
    what = "floor" if floor else "SDK"
    return f"{what} sequential" if n == 1 else f"{what} concurrency {n}"


async def bench_walk(
    customers: int,
    concurrencies: Sequence[int],
    rounds: int,
    floor: bool = True,
    diagnose: bool = False,
) -> dict[int, float]:
    """The SDK's median time over ideal of a whole walk, by concurrency."""
    pages = math.ceil(customers / PAGE_SIZE)
    print(
        f"walk: {customers:,} customers, {pages} pages of {PAGE_SIZE}, "
        f"{WALK_LATENCY_MS:g} ms a request, {rounds} round(s)"
    )
    contenders: dict[str, Callable[[], Awaitable[float]]] = {}
    ideal: dict[str, float] = {}
    floor_of: dict[str, str] = {}
    store = SharedStore()
    with simulator_process(customers, latency_ms=WALK_LATENCY_MS) as sim:
        timer = Timer(sim.pid)
        async with (
            DMHubClient(
                sim.app_id,
                sim.secret,
                base_url=sim.url,
                token_store=store,
                max_concurrency=max(concurrencies) * 2,
            ) as dm,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max(concurrencies) * 2)
            ) as session,
        ):
            for n in concurrencies:
                for is_floor in (True, False) if floor else (False,):
                    label = _label(n, is_floor)
                    run = (
                        _floor_walk(session, sim.url, store, pages, n)
                        if is_floor
                        else _sdk_walk(dm, n)
                    )
                    contenders[label] = timer(label, run, customers)
                    ideal[label] = math.ceil(pages / n) * WALK_LATENCY_MS / 1e3
                    floor_of[label] = _label(n, floor=True)
                if diagnose and n > 1:
                    # Whose is the SDK's gap to the floor: its request path, or its schedule?
                    for label, run in (
                        (f"SDK request, {n} workers", _sdk_request_workers(dm, pages, n)),
                        (
                            f"floor, paginator sched. {n}",
                            _floor_paginator_schedule(session, sim.url, store, pages, n),
                        ),
                    ):
                        contenders[label] = timer(label, run, customers)
                        ideal[label] = math.ceil(pages / n) * WALK_LATENCY_MS / 1e3
                        floor_of[label] = _label(n, floor=True)
            # The token, and warm connections (the ideal counts no connection set-up): a walk
            # of each at the highest concurrency.
            top = max(concurrencies)
            await _sdk_walk(dm, top)()
            if floor:
                await _floor_walk(session, sim.url, store, pages, top)()
            times = await alternate_async(contenders, rounds)
    print(_table(times, ideal, floor_of, timer))
    ratios = {n: statistics.median(times[_label(n)]) / ideal[_label(n)] for n in concurrencies}
    within = [n for n in concurrencies if n <= GOAL_UP_TO]
    worst = max(ratios[n] for n in within)
    verdict = "met" if worst <= GOAL else "MISSED"
    print(
        f"question 3, SDK within {GOAL}x of ideal up to concurrency {GOAL_UP_TO}: {verdict} "
        f"(worst {worst:.2f}x)"
    )
    return ratios


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


async def bench_lookups(lookups: int, concurrency: int, rounds: int, floor: bool = True) -> float:
    """The SDK's median time over ideal of ``lookup_many`` of ``lookups`` distinct identities."""
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

            contenders = {sdk_label: timer(sdk_label, sdk, lookups)}
            if floor:
                contenders[floor_label] = timer(floor_label, floor_run, lookups)
            # The token, warm connections (a lookup each) and the simulator's first answers.
            await dm.identities.lookup_many(wanted[:concurrency], concurrency=concurrency)
            if floor:
                await _workers(concurrency, iter(wanted[:concurrency]), one)
            times = await alternate_async(contenders, rounds)
    ideal = math.ceil(lookups / concurrency) * LOOKUP_LATENCY_MS / 1e3
    print(_table(times, dict.fromkeys(times, ideal), dict.fromkeys(times, floor_label), timer))
    return statistics.median(times[sdk_label]) / ideal


#: (customers, concurrencies, rounds) of the walk; (lookups, concurrency, rounds).
FULL = ((6400, (1, 4, 8, 16, 32), 5), (10_000, 64, 3))
QUICK = ((600, (1, 4, 8), 1), (256, 64, 1))


async def _main(
    quick: bool, rounds: int | None, floor: bool, diagnose: bool = False
) -> dict[str, float]:
    (customers, concurrencies, walk_rounds), (lookups, concurrency, lookup_rounds) = (
        QUICK if quick else FULL
    )
    walk = await bench_walk(
        customers, concurrencies, rounds or walk_rounds, floor or diagnose, diagnose
    )
    if diagnose:
        return {f"walk@{n}": r for n, r in walk.items()}
    found = await bench_lookups(lookups, concurrency, rounds or lookup_rounds, floor)
    return {**{f"walk@{n}": r for n, r in walk.items()}, f"lookups@{concurrency}": found}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark; the SDK's median ratios over ideal, by contender."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run under 3 s")
    parser.add_argument("--rounds", type=int, help="alternating rounds (both parts)")
    parser.add_argument("--no-floor", action="store_true", help="the SDK alone, no aiohttp floor")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="the walk only, adding the SDK's request path in the floor's workers and the "
        "floor's fetch on the paginator's schedule (whose is the gap to the floor)",
    )
    args = parser.parse_args(argv)
    print(machine_info())
    return asyncio.run(_main(args.quick, args.rounds, not args.no_floor, args.diagnose))


if __name__ == "__main__":
    main()
    sys.exit(0)
