"""Serve the simulator until cancelled: the body of ``dmhub-async simulate``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Literal, TextIO

from ._faults import Faults
from ._simulator import DMHubSimulator


async def serve_forever(
    port: int = 8080,
    customers: int = 10_000,
    latency_ms: float = 0.0,
    fault_rate: float = 0.0,
    seed: int = 0,
    *,
    host: str = "127.0.0.1",
    out: TextIO | None = None,
    report: Literal["text", "json"] = "text",
    quiet: bool = False,
    seeding: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
) -> None:
    """Serve a seeded simulator on ``host``:``port``, printing its URL and credentials.

    Once it listens it prints them for people (``report="text"``, nothing if ``quiet``), or as
    one JSON object on one line (``report="json"``, even if ``quiet``): ``base_url``,
    ``app_id``, ``secret`` (``DMHubClient``'s arguments), ``customers``, ``seed``,
    ``latency_ms``, ``fault_rate`` and ``seeded_seconds``; for a script that asked for
    ``port=0``, the one way to learn the port. The seeding, blocking work (seconds for
    millions of customers), runs in the context ``seeding()`` makes: the command line's lets
    a signal stop it.
    """
    out = out if out is not None else sys.stdout
    faults = Faults(rate=fault_rate, latency=latency_ms / 1000, seed=seed)
    started = time.perf_counter()
    with seeding():
        sim = DMHubSimulator(customers, seed=seed, host=host, port=port, faults=faults)
    seeded = time.perf_counter() - started
    async with sim:
        if report == "json":
            ready = {
                "base_url": sim.url,
                "app_id": sim.app_id,
                "secret": sim.secret,
                "customers": customers,
                "seed": seed,
                "latency_ms": latency_ms,
                "fault_rate": fault_rate,
                "seeded_seconds": round(seeded, 3),
            }
            print(json.dumps(ready), file=out, flush=True)
        elif not quiet:
            print(f"DM Hub simulator listening on {sim.url}", file=out)
            print(f"  {customers} customers seeded in {seeded:.2f} s (seed {seed})", file=out)
            print(f"  DMHUB_BASE_URL={sim.url}", file=out)
            print(f"  DMHUB_APP_ID={sim.app_id}", file=out)
            print(f"  DMHUB_SECRET={sim.secret}", file=out)
            if latency_ms or fault_rate:
                print(f"  latency {latency_ms} ms, fault rate {fault_rate}", file=out)
            print("Press Ctrl+C to stop.", file=out, flush=True)
        await asyncio.Event().wait()
