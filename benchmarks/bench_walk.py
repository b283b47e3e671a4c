"""Benchmark: a concurrent walk and concurrent identity lookups against the simulator.

Run ``python benchmarks/bench_walk.py`` (``--quick`` for a smoke run under 3 s). The simulator
runs in a process of its own on 127.0.0.1 (so its JSON encoding does not compete with the
client for one event loop) with a fixed per-request latency; the ideal time of a walk of
``P`` pages ``N`` at a time is ``ceil(P / N) * latency`` (N requests per round trip, nothing
else); each contender is reported as the median and min-max of its rounds and as its median
over that ideal. Contenders run in alternation, round after round, so a noisy neighbour hits
them all alike.

- walk: ``dm.customers.list(page_size=100, concurrency=N)`` over every customer, sequential
  (N=1) and N = 4, 8, 16, 32, at 30 ms a request (the client's ``max_concurrency`` set above N);
- lookups: ``dm.identities.lookup_many`` of 10,000 distinct identities (half bound to a
  customer, half unknown) at concurrency 64 and 20 ms a request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

from dmhub_async import DMHubClient, Identity
from dmhub_async.testing import DMHubSimulator

WALK_LATENCY = 0.030
LOOKUP_LATENCY = 0.020
PAGE_SIZE = 100


_SERVE = (
    "import asyncio, os, sys\n"
    "from dmhub_async.testing import serve_forever\n"
    "port, customers, latency_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])\n"
    "with open(os.devnull, 'w') as out:\n"
    "    asyncio.run(serve_forever(port, customers, latency_ms, out=out))\n"
)


@contextlib.contextmanager
def simulator(customers: int, latency: float) -> Iterator[tuple[str, DMHubSimulator]]:
    """(url, a twin) of a simulator serving in another process; the twin (same seed, not
    running) tells what the served one holds."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(port), str(customers), str(latency * 1000)]
    )
    try:
        twin = DMHubSimulator(customers)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}", twin
    finally:
        process.terminate()
        process.wait()


#: Client-side CPU seconds of every timed run, by report name (the simulator's are not ours).
_CPU: dict[str, list[float]] = {}


async def _timed(run: Callable[[], Awaitable[int]], expect: int, name: str = "") -> float:
    started, cpu = time.perf_counter(), time.process_time()
    got = await run()
    elapsed = time.perf_counter() - started
    _CPU.setdefault(name, []).append(time.process_time() - cpu)
    if got != expect:
        raise AssertionError(f"expected {expect} results, got {got}")
    return elapsed


def _report(name: str, times: list[float], ideal: float) -> float:
    median = statistics.median(times)
    ratio = median / ideal
    print(
        f"  {name:<16} median {median * 1000:8.1f} ms  (min {min(times) * 1000:.1f}, "
        f"max {max(times) * 1000:.1f})  ideal {ideal * 1000:8.1f} ms  ratio {ratio:5.2f}x"
        f"  client CPU {statistics.median(_CPU.get(name, [0.0])) * 1000:6.1f} ms"
    )
    return ratio


def _label(n: int) -> str:
    return "sequential" if n == 1 else f"concurrency {n}"


async def bench_walk(customers: int, concurrencies: Sequence[int], rounds: int) -> dict[int, float]:
    """Median time over ideal of a whole walk, by concurrency."""
    pages = math.ceil(customers / PAGE_SIZE)
    print(
        f"walk: {customers} customers, {pages} pages of {PAGE_SIZE}, {WALK_LATENCY * 1000:.0f} ms"
    )
    times: dict[int, list[float]] = {n: [] for n in concurrencies}
    with simulator(customers, WALK_LATENCY) as (url, twin):
        async with DMHubClient(
            app_id=twin.app_id,
            secret=twin.secret,
            base_url=url,
            max_concurrency=max(concurrencies) * 2,
        ) as dm:
            # The token, and warm connections: the ideal counts no connection setup.
            await asyncio.gather(*(dm.customers.count() for _ in range(max(concurrencies))))
            for _ in range(rounds):
                for n in concurrencies:

                    async def walk(n: int = n) -> int:
                        count = 0
                        async for page in dm.customers.list(
                            page_size=PAGE_SIZE, concurrency=n
                        ).pages():
                            count += len(page.items)
                        return count

                    times[n].append(await _timed(walk, customers, _label(n)))
    ratios = {}
    for n in concurrencies:
        ideal = math.ceil(pages / n) * WALK_LATENCY
        ratios[n] = _report(_label(n), times[n], ideal)
    return ratios


async def bench_lookups(lookups: int, concurrency: int, rounds: int) -> float:
    """Median time over ideal of ``lookup_many`` of ``lookups`` distinct identities."""
    print(
        f"lookups: {lookups} identities at concurrency {concurrency},"
        f" {LOOKUP_LATENCY * 1000:.0f} ms"
    )
    with simulator(lookups // 2, LOOKUP_LATENCY) as (url, twin):
        known = [
            Identity(kind, value)
            for cid in twin.customer_ids()
            for kind, value, _ in twin.identities(cid)[:1]
        ]
        wanted = known[: lookups // 2]
        wanted += [Identity("wechat", f"unknown-{i}") for i in range(lookups - len(wanted))]
        async with DMHubClient(
            app_id=twin.app_id, secret=twin.secret, base_url=url, max_concurrency=concurrency
        ) as dm:
            await asyncio.gather(*(dm.customers.count() for _ in range(concurrency)))

            async def run() -> int:
                found = await dm.identities.lookup_many(wanted, concurrency=concurrency)
                return len(found)

            name = f"concurrency {concurrency}"
            times = [await _timed(run, lookups, name) for _ in range(rounds)]
    ideal = math.ceil(lookups / concurrency) * LOOKUP_LATENCY
    return _report(name, times, ideal)


async def _main(quick: bool) -> dict[str, float]:
    if quick:
        walk = await bench_walk(600, (1, 4, 8), rounds=1)
        lookups = await bench_lookups(256, 64, rounds=1)
    else:
        walk = await bench_walk(6400, (1, 4, 8, 16, 32), rounds=5)
        lookups = await bench_lookups(10_000, 64, rounds=3)
    return {**{f"walk@{n}": r for n, r in walk.items()}, "lookups@64": lookups}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark; returns the median ratios over ideal by contender."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run under 3 s")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}")
    return asyncio.run(_main(args.quick))


if __name__ == "__main__":
    main()
