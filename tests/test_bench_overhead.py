"""bench_overhead's references measure what they say they measure."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from benchmarks import bench_overhead
from dmhub_async import DMHubClient, MemoryTokenStore, _converter
from dmhub_async.models import Customer
from dmhub_async.testing import DMHubSimulator


async def test_the_typed_floor_reads_each_page_as_list_does_and_gives_its_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "The SDK's machinery" is list() over the typed floor: the two must type a page alike.
    # The floor typed with _json.loads and the converter, which list() uses only without
    # msgspec: with it, the machinery came out below nothing (0.76x).
    read = _converter.read_customer_page
    pages: list[list[Any]] = []

    def reading(body: bytes) -> tuple[list[Any], dict[str, Any]]:
        customers, page = read(body)
        pages.append(customers)
        return customers, page

    monkeypatch.setattr(_converter, "read_customer_page", reading)
    async with DMHubSimulator(250) as sim:
        server = bench_overhead.Server(sim.url, sim.app_id, sim.secret)
        walked = await bench_overhead.floor_walk(orjson.loads, typed=True)(server)
        monkeypatch.setattr(_converter, "read_customer_page", read)
        async with DMHubClient(
            sim.app_id, sim.secret, base_url=sim.url, token_store=MemoryTokenStore()
        ) as dm:
            listed = await dm.customers.list(page_size=100).to_list()

    assert walked == 250
    assert [len(page) for page in pages] == [100, 100, 50]
    floor_records = [customer for page in pages for customer in page]
    assert all(type(customer) is Customer for customer in floor_records)
    assert floor_records == listed
