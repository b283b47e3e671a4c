"""Memory over a long run: what a bulk job holds, and whether it grows with the run's length.

Run ``python -m benchmarks.bench_memory`` (about a minute; ``--quick``: a few seconds). Not in
``python -m benchmarks``: it times nothing. The simulator runs in its own process
(``_common.simulator_process``), so ``tracemalloc`` here sees the client alone. Each line is one
scenario at two run lengths: memory that is flat holds about the same at both.

- walk: ``list_rows(concurrency=8)`` with a consumer slower than the service that stops for
  0.5 s half way: the most pages requested ahead of the consumer (the docs: about 2 x 8) and the
  traced peak.
- lookup_iter: distinct identities from a generator: how far the input is read ahead of the
  answers (at most ``4 x concurrency``) and the traced peak (the repeat cache, 65,536 answers,
  is most of it).
- calls: one client making ``count()`` calls: memory still held after N calls.
- kept errors: ``ResponseTooLargeError`` and a 5xx with a 1 MB error page, each kept: memory
  held per error (it was the whole body, up to ``max_response_size``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

try:
    from ._common import simulator_process
except ImportError:  # run as a file
    from _common import simulator_process  # type: ignore[no-redef]

MB = 1 << 20


def _held() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def walk(url: str, pages: int) -> str:
    from dmhub_async import DMHubClient, MemoryTokenStore

    async with DMHubClient(
        "sim-app-id", "sim-secret", base_url=url, token_store=MemoryTokenStore()
    ) as dm:
        walk = dm.customers.list_rows(page_size=100, concurrency=8, max_items=pages * 100)
        tracemalloc.reset_peak()
        base, ahead, n = _held(), 0, 0
        async for _ in walk.pages():
            n += 1
            ahead = max(ahead, len(walk._ahead))  # requested ahead of the consumer
            await asyncio.sleep(0.5 if n == pages // 2 else 0.002)
        peak = tracemalloc.get_traced_memory()[1] - base
    return f"walk {n:>6} pages: at most {ahead} pages ahead, peak {peak / MB:5.1f} MB"


async def lookups(url: str, count: int) -> str:
    from dmhub_async import DMHubClient, Identity, MemoryTokenStore

    taken = 0

    def identities() -> Iterator[Identity]:
        nonlocal taken
        for i in range(count):
            taken += 1
            yield Identity("wechat", f"o-{i:012d}")

    async with DMHubClient(
        "sim-app-id", "sim-secret", base_url=url, token_store=MemoryTokenStore()
    ) as dm:
        tracemalloc.reset_peak()
        base, answered, ahead = _held(), 0, 0
        async for _ in dm.identities.lookup_iter(identities(), concurrency=32):
            answered += 1
            ahead = max(ahead, taken - answered)
        peak = tracemalloc.get_traced_memory()[1] - base
    return f"lookup_iter {count:>7}: input read ahead {ahead}, peak {peak / MB:5.1f} MB"


async def calls(url: str, count: int) -> str:
    from dmhub_async import DMHubClient, MemoryTokenStore

    async with DMHubClient(
        "sim-app-id", "sim-secret", base_url=url, token_store=MemoryTokenStore()
    ) as dm:
        for _ in range(100):
            await dm.customers.count()
        base = _held()
        for _ in range(count):
            await dm.customers.count()
        held = _held() - base
    return f"calls {count:>7}: held after them {held / 1024:7.1f} KB"


async def kept_errors(count: int) -> str:
    from aiohttp import web

    from dmhub_async import APIError, DMHubClient

    page = b'{"error_code": 500, "error_description": "down", "pad": "' + b"x" * MB + b'"}'

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/page":
            return web.Response(status=500, body=page, content_type="application/json")
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(64):
                await response.write(b" " * MB)
        except (ConnectionError, RuntimeError):
            pass
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    lines = []
    try:
        async with DMHubClient(
            access_token="bench-token", base_url=url, max_response_size=4 * MB, max_retries=0
        ) as dm:
            for path, what in (("/big", "too large (4 MiB cap)"), ("/page", "1 MB error page")):
                kept: list[Any] = []
                for _ in range(count):
                    try:
                        await dm.request("GET", path)
                    except APIError as err:
                        kept.append(err)
                with_errors = _held()
                kept.clear()
                per_error = (with_errors - _held()) / count
                lines.append(f"kept errors, {what}: {per_error / 1024:8.1f} KB each")
    finally:
        await runner.cleanup()
    return "\n".join(lines)


async def scenarios(quick: bool) -> AsyncIterator[str]:
    sizes = (20, 60) if quick else (100, 400)
    with simulator_process(sizes[1] * 100) as sim:
        for pages in sizes:
            yield await walk(sim.url, pages)
        for count in (500, 2_000) if quick else (10_000, 40_000):
            yield await lookups(sim.url, count)
        for count in (500, 2_000) if quick else (5_000, 20_000):
            yield await calls(sim.url, count)
    yield await kept_errors(3)


async def run(quick: bool) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    async for line in scenarios(quick):
        print(line, flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args(argv)
    asyncio.run(run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
