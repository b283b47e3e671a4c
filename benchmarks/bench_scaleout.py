"""Question 7: a sharded export on arq workers: records/s against the number of workers.

``python -m benchmarks.bench_scaleout [--quick] [--customers N] [--workers 1,2,4,8]``

The simulator runs in its own process with 20 ms of latency a request, a real redis-server
carries the queue, the shared token and the shared rate limit, and each worker is a real
``dmhub-async worker`` process (one shard at a time, 8 pages in flight). For each worker count
the same plan (16 shards, made once and copied: planning costs about 2 s of counts that no
export times) is exported from scratch, rounds alternating the worker counts; the
table gives the median records/s, the spread, and the speed-up over one worker. A last run holds
4 workers to a shared rate limit and reports the busiest second the simulator saw.

On 2 cores the curve flattens where the CPU runs out (the simulator, the workers and Redis
share them): the CPU column says how busy the machine was, so a reader can tell latency-bound
from CPU-bound and what a machine with a core a worker would give.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    from ._common import (
        children_stopped_on_sigterm,
        machine_info,
        record,
        subprocess_env,
        write_results,
    )
except ImportError:  # run as a file
    from _common import (  # type: ignore[no-redef]
        children_stopped_on_sigterm,
        machine_info,
        record,
        subprocess_env,
        write_results,
    )

SHARDS = 16


@contextmanager
def control_simulator(customers: int, latency_ms: float) -> Iterator[dict[str, Any]]:
    """The simulator with its control routes, in its own process."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dmhub_async.testing._control",
            f"--customers={customers}",
            f"--latency-ms={latency_ms}",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert proc.stdout is not None
        url, app_id, secret = proc.stdout.readline().split()
        yield {"url": url, "app_id": app_id, "secret": secret}
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _state(url: str) -> dict[str, Any]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/_sim/state", timeout=30) as answer:
        data: dict[str, Any] = json.load(answer)
    return data


def _clients(redis: Any) -> int:
    info = redis.command("INFO", "clients")
    return int(next(x for x in info.splitlines() if x.startswith("connected_clients:"))[18:])


def start_workers(
    sim: dict[str, Any], redis: Any, workers: int, rate_limit: float | None
) -> list[subprocess.Popen[bytes]]:
    """``workers`` worker processes, returned once each is connected to Redis."""
    env = subprocess_env()
    env.update(DMHUB_BASE_URL=sim["url"], DMHUB_APP_ID=sim["app_id"], DMHUB_SECRET=sim["secret"])
    command = [sys.executable, "-m", "dmhub_async", "worker", "--redis", redis.url, "--quiet"]
    if rate_limit is not None:
        command += ["--rate-limit", str(rate_limit)]
    before = _clients(redis)
    procs = []
    for _ in range(workers):
        # Each worker's stderr kept (a file: a pipe no one reads would fill), for what a stop
        # that did not end within the worker's --stop-timeout said it waited on.
        said = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop_workers
        proc = subprocess.Popen(command, env=env, stderr=said)
        proc.said = said  # type: ignore[attr-defined]
        procs.append(proc)
    try:
        deadline = time.monotonic() + 60
        while _clients(redis) < before + workers and time.monotonic() < deadline:
            time.sleep(0.05)  # a benchmark's setup, not a measurement
    except BaseException:  # stopped (a kill, Ctrl+C) before the caller holds them
        stop_workers(procs)
        raise
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """Ask every worker to stop (arq shuts down on SIGTERM) and wait for each; print what one
    whose stop did not end within its --stop-timeout said it waited on."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)
    for proc in procs:
        said = getattr(proc, "said", None)
        if said is None:
            continue
        said.seek(0)
        for line in said.read().decode("utf-8", "replace").splitlines():
            if "did not end within" in line:
                print(f"a worker (pid {proc.pid}) did not stop in time: {line}", flush=True)
        said.close()


async def plan(sim: dict[str, Any], redis_url: str, out: Path, rate_limit: float | None) -> Any:
    """The sharded plan of the simulator's customers in ``out``: the one there, or a new one
    written (a manifest). With ``rate_limit``, its counts go through the fleet's limit too."""
    from dmhub_async import DMHubClient, RedisRateLimiter, RedisTokenStore
    from dmhub_async.shards._run import prepare

    store = RedisTokenStore(redis_url)
    limiter = RedisRateLimiter(redis_url, rate_limit, key=sim["app_id"]) if rate_limit else None
    try:
        async with DMHubClient(
            sim["app_id"], sim["secret"], base_url=sim["url"], token_store=store, rate_limit=limiter
        ) as dm:
            return await prepare(dm, out, SHARDS)
    finally:
        await store.aclose()
        if limiter is not None:
            await limiter.aclose()


async def export_on_workers(
    sim: dict[str, Any], redis_url: str, procs: list[Any], out: Path, rate_limit: float | None
) -> tuple[float, int, float]:
    """One sharded export on running worker processes: (seconds, records, CPU share).

    The clock starts when the plan is made and the workers are up: it times the export.
    """
    from dmhub_async.shards._queue import run_on_queue

    # A plan copied into ``out`` is taken up as it is; else the counts are made here, under
    # the rate limit if any (the limited run's busiest second includes them).
    try:
        manifest = await plan(sim, redis_url, out, rate_limit)
        started, load_before = time.monotonic(), _cpu_seconds()
        manifest = await run_on_queue(redis_url, out, manifest, progress=False, poll=0.05)
        seconds = time.monotonic() - started
        busy = (_cpu_seconds() - load_before) / seconds / (os.cpu_count() or 1)
    finally:
        stop_workers(procs)
    if not manifest.complete:
        raise RuntimeError(f"the export on {len(procs)} workers is not complete")
    return seconds, manifest.exported, busy


def _cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small and one round")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--rate-limit", type=float, default=100.0)
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.customers, args.workers, args.rounds = 4_000, "1,2", 1
    counts = [int(n) for n in args.workers.split(",")]

    from dmhub_async.testing._redis import REDIS_SERVER, redis_server

    print(machine_info(("aiohttp", "arq", "redis", "limits")))
    if REDIS_SERVER is None:
        print("skipped: no redis-server on this machine (apt-get install redis-server)")
        return 0
    print(
        f"scale-out: {args.customers:,} customers, {SHARDS} shards, {args.latency_ms:g} ms a "
        f"request, workers {counts}, {args.rounds} round(s), order alternating"
    )
    results: dict[int, list[float]] = {n: [] for n in counts}
    busy: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis:
        with control_simulator(args.customers, args.latency_ms) as sim:
            planned = Path(tmp) / "plan"
            asyncio.run(plan(sim, redis.url, planned, None))
            for round_number in range(args.rounds):
                order = counts if round_number % 2 == 0 else counts[::-1]
                for n in order:
                    out = Path(tmp) / f"out-{round_number}-{n}"
                    shutil.copytree(planned, out)  # prepare() takes up the plan it finds
                    procs = start_workers(sim, redis, n, None)
                    seconds, records, share = asyncio.run(
                        export_on_workers(sim, redis.url, procs, out, None)
                    )
                    results[n].append(records / seconds)
                    busy[n].append(share)
            base = statistics.median(results[counts[0]])
            print(f"{'workers':>8} {'records/s':>11} {'spread':>17} {'x one':>6} {'CPU busy':>9}")
            for n in counts:
                rates = results[n]
                median = statistics.median(rates)
                print(
                    f"{n:>8} {median:>11,.0f} {min(rates):>8,.0f}-{max(rates):<8,.0f} "
                    f"{median / base:>6.2f} {statistics.median(busy[n]):>8.0%}"
                )
                scenario = f"{args.customers:,} customers, {args.latency_ms:g} ms, arq workers"
                record("7", scenario, f"{n} workers", rates, unit="rec/s", scale=1)
        with control_simulator(args.customers, args.latency_ms) as sim:
            out = Path(tmp) / "out-limited"
            n = 4 if not args.quick else 2
            procs = start_workers(sim, redis, n, args.rate_limit)
            seconds, records, _ = asyncio.run(
                export_on_workers(sim, redis.url, procs, out, args.rate_limit)
            )
            per_second = _state(sim["url"])["per_second"]
            print(
                f"shared rate limit {args.rate_limit:g}/s on {n} workers: {records:,} records in "
                f"{seconds:.1f} s; the busiest second the simulator saw held {max(per_second)} "
                "requests (the plan's counts included)"
            )
    if args.json:
        write_results(args.json, "bench_scaleout")
    return 0


if __name__ == "__main__":
    with children_stopped_on_sigterm():  # a kill stops the children too
        raise SystemExit(main())
