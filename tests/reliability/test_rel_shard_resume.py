"""A sharded export resumed after customers signed up while it was down (the chaos soak's find).

Shard 0 of two fails (its first page answered 503, ``max_retries=0``: a run killed with that
shard unfinished), the open-ended last window completes; a customer signs up; the same
export is run again and says complete. A single-file export resumed so finds the sign-up in
its final check (``test_rel_resume.py``); the sharded one did not look at the last window
again, and said complete without it. The late check (docs/sharding.md) finds it now.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from dmhub_async import DMHubClient
from dmhub_async.shards import export_sharded, merge
from dmhub_async.testing import DMHubSimulator


def read_ids(path: Path) -> list[int]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["id"] for line in fh]


async def test_a_sign_up_while_a_sharded_export_was_down_is_exported(
    connect: Any, tmp_path: Path
) -> None:
    async with DMHubSimulator(customers=400, seed=11) as sim:
        first_window_fails = True

        def hook(request: web.Request) -> None:
            query = request.query
            if (
                first_window_fails
                and request.method == "GET"
                and request.path == "/v1/customers"
                and "dateCreatedTo" in query
                and "dateCreatedFrom" not in query
            ):
                sim.faults.script(["503"])

        sim.on_request(hook)
        dm: DMHubClient = connect(sim, max_retries=0)
        out = tmp_path / "parts"

        manifest = await export_sharded(dm, out, 2, progress=False)
        assert [o.status for o in manifest.shards] == ["failed", "complete"]

        signed_up = sim.insert_customer({"name": "signed up while the export was down"})
        first_window_fails = False
        manifest = await export_sharded(dm, out, 2, progress=False)
        assert manifest.complete

        merge(out, tmp_path / "merged.jsonl")
        ids = read_ids(tmp_path / "merged.jsonl")
        assert len(ids) == len(set(ids))
        assert signed_up["id"] in ids
        assert set(ids) == set(sim.customer_ids())


async def test_a_rerun_removes_the_temporary_files_of_a_run_killed_writing_them(
    connect: Any, tmp_path: Path
) -> None:
    """A run SIGKILLed while it wrote its manifest (or its id list) leaves the ``mkstemp`` file
    it was writing, ``.manifest.json.xxxxxxxx.tmp``; each kill one more. The soak found one
    left after the rerun completed: a single-file export's rerun removes its own so."""
    async with DMHubSimulator(customers=300, seed=12) as sim:
        dm: DMHubClient = connect(sim)
        out = tmp_path / "parts"
        assert (await export_sharded(dm, out, 2, progress=False)).complete
        left = [out / ".manifest.json.k1ll3d_0.tmp", out / ".id_list.txt.k1ll3d_1.tmp"]
        for path in left:
            path.write_bytes(b'{"format": "jsonl", "sha')  # cut short by the kill
        other = out / "notes.tmp"  # not a work file of the export's: kept
        other.write_bytes(b"mine")

        assert (await export_sharded(dm, out, 2, progress=False)).complete

        assert not [p.name for p in left if p.exists()]
        assert other.read_bytes() == b"mine"
