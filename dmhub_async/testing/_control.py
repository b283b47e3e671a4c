"""A DM Hub simulator in a process of its own, with control routes for tests and benchmarks.

``python -m dmhub_async.testing._control --customers N [--latency-ms MS] [--skew FRACTION]``
prints ``URL APP_ID SECRET`` on one line, then serves until killed. Its routes, beside the API:

- ``GET /_sim/state``: the tokens issued, every customer id, and the API requests that arrived
  in each second since the start (``per_second``), for a test of a shared rate limit;
- ``POST /_sim/mutate?inserts=I&deletes=D``: insert and delete customers (deleted at random, so
  a test reads which ids survived from ``/_sim/state``).

Used by the sharded-export tests (worker processes on several event loops need the simulator
out of theirs) and ``benchmarks/bench_scaleout.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import time

from aiohttp import web

from ._faults import Faults
from ._simulator import DMHubSimulator

IMPORT_SECOND = 1_591_000_000.0  # 2020-06-01T08:26:40Z


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--skew", type=float, default=0.0)
    args = parser.parse_args()
    faults = Faults(latency=args.latency_ms / 1000)
    skewed = int(args.customers * args.skew)
    # With a skew, the clock stands still at one import second: every customer created by the
    # store is created then (the seeded ones keep their spread over 2016).
    clock = (lambda: IMPORT_SECOND) if skewed else time.time
    sim = DMHubSimulator(args.customers - skewed, faults=faults, clock=clock)
    for _ in range(skewed):
        sim.insert_customer({"name": "imported"})
    rng = random.Random(7)
    started = time.monotonic()
    per_second: collections.Counter[int] = collections.Counter()

    def arrived(request: web.Request) -> None:
        if not request.path.startswith("/_sim/"):
            per_second[int(time.monotonic() - started)] += 1

    async def state(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "tokens_issued": sim.counters.tokens_issued,
                "ids": sim.customer_ids(),
                "per_second": [per_second[s] for s in range(max(per_second, default=-1) + 1)],
            }
        )

    async def mutate(request: web.Request) -> web.Response:
        ids = sim.customer_ids()
        for customer_id in rng.sample(ids, min(int(request.query.get("deletes", 0)), len(ids))):
            sim.delete_customer(customer_id)
        sim.add_customers(int(request.query.get("inserts", 0)))
        return web.json_response({"customers": sim.customers_count()})

    sim.on_request(arrived)
    sim.app.router.add_get("/_sim/state", state)
    sim.app.router.add_post("/_sim/mutate", mutate)
    async with sim:
        print(sim.url, sim.app_id, sim.secret, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
