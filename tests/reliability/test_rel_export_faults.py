"""Scenarios 1, 11 and 12: a bulk export under injected faults, kills, and an outage.

Each test reads the exported file back and compares it with the simulator's own table.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from rel_support import CallLog, settled

from dmhub_async import DMHubClient, RetryPolicy
from dmhub_async.export import ExportProgress, export_customers
from dmhub_async.export import _output as export_output
from dmhub_async.testing import DMHubSimulator, Faults

# -- scenario 1 ---------------------------------------------------------------------------------

#: 10% 429 (Retry-After 1 s), 10% 503, 2% connection resets, 1% truncated 200 bodies.
FAULT_MIX = ("429",) * 10 + ("503",) * 10 + ("reset",) * 2 + ("truncated",)
FAULT_RATE = 0.23
SCENARIO_1_SEED = 3  # every kind fires: 10x 429, 14x 503, 2 resets, 2 truncated


def read_ids(path: Path) -> list[int]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["id"] for line in fh]


@pytest.mark.parametrize(("concurrency", "max_retries"), [(1, 6), (8, 8)])
async def test_scenario_1_export_of_10000_under_23_percent_faults(
    tmp_path: Path,
    connect: Callable[..., DMHubClient],
    concurrency: int,
    max_retries: int,
) -> None:
    """Scenario 1: 10,000 customers, 23% of requests failing: exactly 10,000 ids, in order.

    A page fails for good only when ``max_retries + 1`` attempts in a row draw a fault:
    0.23**7 = 3.4e-5 a call with ``max_retries=6``, about 0.35% for the ~103 calls of a run
    (4 retries would give 0.23**5 = 6.4e-4 a call, 6% a run). The simulator draws faults from
    a seeded RNG, one draw per request in arrival order, so with one page in flight the run
    is the same every time. With 8 in flight, which page gets which draw depends on arrival
    order; ``max_retries=8`` puts that run's chance of failing at 0.23**9 * 103 = 1.9e-4. The
    draws themselves are the same sequence either way, so the faults fired are too.
    """
    dest = tmp_path / "customers.jsonl"
    faults = Faults(rate=FAULT_RATE, kinds=FAULT_MIX, seed=SCENARIO_1_SEED)
    async with DMHubSimulator(customers=10_000, seed=SCENARIO_1_SEED, faults=faults) as sim:
        async with connect(sim, max_retries=max_retries) as dm:
            log = CallLog(dm)
            report = await export_customers(
                dm, dest, page_size=100, concurrency=concurrency, progress=False
            )
            stats = dm.stats
        leftovers = await settled(connections=True)

    ids = read_ids(dest)
    assert len(ids) == 10_000
    assert len(set(ids)) == 10_000
    assert ids == sim.customer_ids()  # every customer, in id order
    assert (report.exported, report.duplicates, report.pages) == (10_000, 0, 100)
    assert report.complete

    fired = sim.counters.faults
    assert set(fired) == {"429", "503", "reset", "truncated"}  # every kind of fault happened
    attempts = log.attempts()
    assert max(attempts) <= max_retries + 1
    assert sorted(log.pages()) == list(range(1, 101))  # each page asked for once, no re-reads
    # Every fault costs one retry, no more: a reset costs a second one at most, when it came
    # on a fresh connection (aiohttp re-sends only on a reused one, and the simulator drops
    # a re-send of the request it just dropped).
    faults_fired = sum(fired.values())
    assert faults_fired <= stats.retries <= faults_fired + fired["reset"]
    assert stats.requests == 1 + 2 + 100 + stats.retries  # token, counts, pages, retries
    assert stats.token_fetches == 1
    assert leftovers == []  # no task, and no connection left open on the server


# -- scenario 11 --------------------------------------------------------------------------------

KILLS = 20


class Kill(Exception):
    """Stands in for the process dying at that point."""


async def test_scenario_11_twenty_kills_each_resumed(
    tmp_path: Path,
    connect: Callable[..., DMHubClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scenario 11: an export killed 20 times at random points, each time rerun with the same
    checkpoint: the final file holds every customer exactly once, in order.

    Three kinds of kill, chosen at random: the export task cancelled while the k-th page
    request of the run is at the service (mid-page, pages in flight); an exception from the
    ``on_progress`` callback after the k-th page; and an exception from the k-th checkpoint
    write, after that page's rows went to the file but before the checkpoint covers them (the
    worst moment: the file is ahead of the checkpoint, and the rerun must cut it back).
    """
    rng = random.Random(11)
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    run: dict[str, Any] = {}
    write_checkpoint = export_output.write_checkpoint

    def checkpoint_then_maybe_die(path: Path, checkpoint: Any, **options: Any) -> None:
        run["checkpoints"] += 1
        if run["mode"] == "checkpoint" and run["checkpoints"] == run["at"]:
            raise Kill("killed after writing rows, before the checkpoint")
        write_checkpoint(path, checkpoint, **options)

    monkeypatch.setattr(export_output, "write_checkpoint", checkpoint_then_maybe_die)

    def on_progress(progress: ExportProgress) -> None:
        if run["mode"] == "progress" and progress.pages == run["at"]:
            raise Kill("killed after a page")

    # 80 pages of 50; a kill lets a run write at most 3 pages, so the 20 kills all land
    # before the export can finish.
    async with DMHubSimulator(customers=4000, seed=11) as sim:

        def cancel_mid_page(request: web.Request) -> None:
            if request.path != "/v1/customers":
                return
            run["requests"] += 1
            if run["mode"] == "cancel" and run["requests"] == run["at"]:
                run["task"].cancel()

        sim.on_request(cancel_mid_page)
        kills: Counter[str] = Counter()
        async with connect(sim) as dm:
            for attempt in range(KILLS + 1):
                mode = rng.choice(("cancel", "progress", "checkpoint")) if attempt < KILLS else ""
                at = rng.randint(1, 3) if mode != "cancel" else rng.randint(1, 7)
                run.update(mode=mode, at=at, requests=0, checkpoints=0)
                task = asyncio.ensure_future(
                    export_customers(
                        dm,
                        dest,
                        page_size=50,
                        concurrency=4,
                        progress=False,
                        checkpoint=ckpt,
                        on_progress=on_progress,
                    )
                )
                run["task"] = task
                try:
                    report = await task
                except (Kill, asyncio.CancelledError):
                    kills[mode] += 1
                else:
                    assert not mode, f"run {attempt} was not killed ({mode} at {at})"
                assert await settled() == [], f"tasks left running after kill {attempt}"

    assert sum(kills.values()) == KILLS
    assert set(kills) == {"cancel", "progress", "checkpoint"}
    assert report.resumed
    ids = read_ids(dest)
    assert [i for i, n in Counter(ids).items() if n > 1] == []  # nothing twice
    assert ids == sim.customer_ids()  # nothing missing, in order
    assert not ckpt.exists()  # done: the checkpoint is removed


# -- scenario 12 --------------------------------------------------------------------------------

OUTAGE_SECONDS = 10.0


class Outage:
    """Takes the service down at its ``at``-th page request, for ``seconds`` of the fake clock.

    ``how="refused"`` closes the simulator (connections drop, new ones are refused) and starts
    it again on the same port once the clock passes the end; ``how="503"`` keeps it up but
    answers every ``/v1`` request with 503 until then.
    """

    def __init__(
        self, sim: DMHubSimulator, clock: Any, *, how: str, at: int, seconds: float
    ) -> None:
        self.sim, self.clock, self.how, self.at, self.seconds = sim, clock, how, at, seconds
        self.page_requests = 0
        self.ends_at: float | None = None
        self.over = False
        self._closing: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        sim.faults.kinds = ("503",)
        sim.on_request(self._hook)

    def _hook(self, request: web.Request) -> None:
        if request.method == "GET" and request.path == "/v1/customers":
            self.page_requests += 1
            if self.page_requests == self.at:
                self.ends_at = self.clock() + self.seconds
                if self.how == "refused":
                    self._closing = asyncio.ensure_future(self.sim.close())
        down = self.ends_at is not None and self.clock() < self.ends_at
        self.sim.faults.rate = 1.0 if self.how == "503" and down else 0.0

    async def sleep(self, seconds: float) -> None:
        """The client's sleep: the fake clock's, then the service back up once it is time."""
        await self.clock.sleep(seconds)
        if self._closing is None or self.ends_at is None or self.clock() < self.ends_at:
            return
        async with self._lock:
            if not self.over:
                await self._closing
                await self.sim.start()
                self.over = True


async def export_stats(
    tmp_path: Path, connect: Callable[..., DMHubClient], clock: Any, how: str | None
) -> tuple[list[int], list[int], Any, int, Outage | None]:
    dest = tmp_path / f"customers-{how}.jsonl"
    # Waits without jitter (the ceiling itself), so the retries an outage forces are known.
    policy = RetryPolicy(max_retries=8, jitter=lambda ceiling: ceiling)
    async with DMHubSimulator(customers=5000, seed=12) as sim:
        outage = None
        sleep = clock.sleep
        if how is not None:
            outage = Outage(sim, clock, how=how, at=20, seconds=OUTAGE_SECONDS)
            sleep = outage.sleep
        async with connect(sim, retry=policy, sleep=sleep) as dm:
            await export_customers(dm, dest, page_size=100, concurrency=8, progress=False)
        return read_ids(dest), sim.customer_ids(), dm.stats, sim.counters.total, outage


@pytest.mark.parametrize("how", ["refused", "503"])
async def test_scenario_12_outage_mid_export(
    tmp_path: Path, connect: Callable[..., DMHubClient], clock: Any, how: str
) -> None:
    """Scenario 12: the service down for 10 s (fake clock) mid-export, then back.

    The export completes, exact; total requests stay within 1.2x a fault-free run plus the
    retries the outage forced; and the outage forces few: each of the 8 pages in flight
    retries after 0.5, 1, 2, 4 and 8 s, and the fifth retry (15.5 s in) outlasts a 10 s
    outage, so at most 8 x 5 = 40 retries, not a storm.
    """
    base_ids, expected, base, base_served, _ = await export_stats(tmp_path, connect, clock, None)
    assert base_ids == expected
    assert base.retries == 0

    started = clock()
    ids, expected, stats, served, outage = await export_stats(tmp_path, connect, clock, how)
    assert outage is not None
    assert outage.ends_at is not None  # the outage happened mid-export
    assert outage.over or how == "503"
    assert clock() - started >= OUTAGE_SECONDS  # the export waited it out

    assert ids == expected  # complete, in order, once each
    assert stats.retries > 0
    assert stats.retries <= 8 * 5
    assert stats.requests <= 1.2 * base.requests + stats.retries
    assert served <= 1.2 * base_served + stats.retries
    assert stats.token_fetches == 1  # an outage is no reason to fetch another token
