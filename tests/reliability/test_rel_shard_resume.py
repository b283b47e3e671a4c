"""A sharded export resumed after customers signed up while it was down (the chaos soak's find).

Shard 0 of two fails (its first page answered 503, ``max_retries=0``: a run killed with that
shard unfinished), the open-ended last window completes; a customer signs up; the same
export is run again and says complete. A single-file export resumed so finds the sign-up in
its final check (``test_rel_resume.py``); the sharded one does not look at the last window
again. Known limit (docs/sharding.md), kept as a strict xfail until its design is chosen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dmhub_async import DMHubClient
from dmhub_async.shards import export_sharded, merge
from dmhub_async.testing import DMHubSimulator


def read_ids(path: Path) -> list[int]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["id"] for line in fh]


@pytest.mark.xfail(
    strict=True,
    reason="known limit: a rerun does not look again at a last window completed before it",
)
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
