"""What runs without the POSIX-only parts of ``os`` (Windows): the library's files still work.

Windows has no ``os.fchmod`` before Python 3.13: the export gave its file the mode a plain
``open()`` gives through it, and every export to a file with a checkpoint, and every merge,
failed there with ``AttributeError`` once its data was written. These tests take the function
away on this machine, as 20ee66a's took ``os.pread``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from dmhub_async import DMHubClient, MemoryTokenStore
from dmhub_async.export import export_customers
from dmhub_async.shards import export_sharded, merge
from dmhub_async.testing import DMHubSimulator

CUSTOMERS = 120


@pytest.fixture
async def sim() -> AsyncIterator[DMHubSimulator]:
    async with DMHubSimulator(customers=CUSTOMERS, seed=5) as simulator:
        yield simulator


@pytest.fixture
async def dm(sim: DMHubSimulator) -> AsyncIterator[DMHubClient]:
    async with DMHubClient(
        sim.app_id, sim.secret, base_url=sim.url, token_store=MemoryTokenStore()
    ) as client:
        yield client


def ids_in(path: Path) -> list[int]:
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


@pytest.fixture
def no_fchmod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "fchmod", raising=False)


@pytest.mark.usefixtures("no_fchmod")
async def test_an_export_with_a_checkpoint_finishes_where_os_has_no_fchmod(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    dest = tmp_path / "customers.jsonl"

    report = await export_customers(
        dm, dest, checkpoint=tmp_path / "customers.ckpt", page_size=50, progress=False
    )

    assert report.complete
    assert ids_in(dest) == sorted(sim.customer_ids())
    assert not (tmp_path / "customers.ckpt").exists()


@pytest.mark.usefixtures("no_fchmod")
async def test_a_sharded_export_merges_where_os_has_no_fchmod(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    manifest = await export_sharded(dm, tmp_path / "out", 2, progress=False)

    assert manifest.complete
    assert merge(tmp_path / "out", tmp_path / "all.jsonl") == CUSTOMERS
    assert sorted(ids_in(tmp_path / "all.jsonl")) == sorted(sim.customer_ids())
