"""Serve the simulator until cancelled: the body of ``dmhub-async simulate``."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

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
) -> None:
    """Serve a seeded simulator on ``host``:``port``, printing its URL and credentials."""
    out = out if out is not None else sys.stdout
    faults = Faults(rate=fault_rate, latency=latency_ms / 1000, seed=seed)
    started = time.perf_counter()
    sim = DMHubSimulator(customers, seed=seed, host=host, port=port, faults=faults)
    seeded = time.perf_counter() - started
    async with sim:
        print(f"DM Hub simulator listening on {sim.url}", file=out)
        print(f"  {customers} customers seeded in {seeded:.2f} s (seed {seed})", file=out)
        print(f"  DMHUB_BASE_URL={sim.url}", file=out)
        print(f"  DMHUB_APP_ID={sim.app_id}", file=out)
        print(f"  DMHUB_SECRET={sim.secret}", file=out)
        if latency_ms or fault_rate:
            print(f"  latency {latency_ms} ms, fault rate {fault_rate}", file=out)
        print("Press Ctrl+C to stop.", file=out, flush=True)
        await asyncio.Event().wait()
