"""A sharded export's directory moved (or mounted at another path) mid-export: it resumes there.

Its checkpoints recorded each part by its absolute path, and a rerun in the directory's new
place refused every unfinished shard as "another export's" (``dest: '/old/...' in the
checkpoint, '/new/...' now``): the run ended incomplete, and only deleting the checkpoints
(losing what they covered) let it go on.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from _redis import RedisServer
from shard_support import exported_ids, sim_process, stopped_mid_way

from dmhub_async import DMHubClient, RedisTokenStore
from dmhub_async.shards import Manifest, export_sharded, merge
from dmhub_async.shards._queue import run_on_queue
from dmhub_async.testing import DMHubSimulator

pytestmark = pytest.mark.timeout(240)

CUSTOMERS = 400


def moved(out: Path, to: Path) -> Path:
    """``out`` moved to ``to``; its checkpoints (some shard stopped mid-way) name the old place
    (for the test to mean anything)."""
    old = str(out.resolve()).encode()
    checkpoints = list(out.glob("*.ckpt"))
    assert checkpoints, "no shard was stopped mid-way"
    assert all(old in path.read_bytes() for path in checkpoints)
    out.rename(to)
    return to


async def test_a_moved_directory_resumes_its_unfinished_shards_in_one_process(
    tmp_path: Path,
) -> None:
    async with (
        DMHubSimulator(customers=CUSTOMERS, seed=5) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        await stopped_mid_way(dm, tmp_path / "first", 4, after=60)
        out = moved(tmp_path / "first", tmp_path / "elsewhere")
        # What there is merges in the new place, as far as each checkpoint covers.
        merged = merge(out, tmp_path / "so-far.jsonl", allow_incomplete=True)
        assert 60 <= merged < CUSTOMERS
        begun = {part.name: part.stat().st_ino for part in out.glob("part-*.jsonl")}

        manifest = await export_sharded(dm, out, 4, page_size=10, progress=False)

    assert [(s.status, s.error) for s in manifest.shards] == [("complete", None)] * 4
    ids = exported_ids(out)
    assert sorted(ids) == sorted(sim.customer_ids())  # each once
    # Resumed, not started over: each part begun before the move written on, in place (one
    # started over is a new file, renamed into place).
    assert {name: (out / name).stat().st_ino for name in begun} == begun
    assert {s.file for s in manifest.shards if s.resumed} == set(begun)
    assert merge(out, tmp_path / "all.jsonl") == CUSTOMERS


async def test_a_moved_directory_resumes_its_unfinished_shards_on_the_queue(
    tmp_path: Path, redis: RedisServer
) -> None:
    from test_shard_queue import workers

    with sim_process(2_000) as sim:
        store = RedisTokenStore(redis.url)  # the token the workers share, as the CLI plans
        try:
            async with DMHubClient(
                sim.app_id, sim.secret, base_url=sim.url, token_store=store
            ) as dm:
                await stopped_mid_way(dm, tmp_path / "mnt-a" / "june", 4, after=200)
        finally:
            await store.aclose()
        (tmp_path / "mnt-b").mkdir()
        out = moved(tmp_path / "mnt-a" / "june", tmp_path / "mnt-b" / "june")
        manifest = Manifest.read(out)
        assert manifest is not None
        begun = {path.name.removesuffix(".ckpt") for path in out.glob("*.ckpt")}
        with workers(sim, redis.url, 2):
            done = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=0.1), 120
            )
        state: dict[str, Any] = sim.state()

    assert [(s.status, s.error) for s in done.shards] == [("complete", None)] * 4
    assert {s.file for s in done.shards if s.resumed} == begun  # each worker's report says it
    assert sorted(exported_ids(out)) == sorted(state["ids"])
    on_disk = json.loads((out / "manifest.json").read_bytes())
    assert on_disk["status"] == "complete"
