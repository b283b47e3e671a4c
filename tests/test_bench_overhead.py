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


def test_the_report_splits_lists_gap_into_the_machinery_and_the_async_step_a_record() -> None:
    # Each contender's rounds, as the run takes them: list() 1.20x the orjson floor, of which
    # the typing 1.04x, all but the step a record 1.10x on top of it, the step 1.05x on that.
    def rounds(x: float) -> list[float]:
        return [x, x * 1.01, x * 0.99]

    times = {
        bench_overhead.ORJSON_FLOOR: rounds(1.0),
        bench_overhead.JSON_FLOOR: rounds(1.4),
        bench_overhead.TYPED_FLOOR: rounds(1.04),
        bench_overhead.SDK_PAGES: rounds(1.04 * 1.10),
        bench_overhead.SDK_1: rounds(1.04 * 1.10 * 1.05),
    }
    cpu = {label: [t * 0.6 for t in walls] for label, walls in times.items()}
    out = bench_overhead.report(times, cpu, 10_000, 0, "process")
    assert "the SDK's machinery, list() over the typed floor: 1.16x wall, 1.16x client CPU" in out
    assert (
        "of it, all but the async step a record, list().pages() over the typed floor: "
        "1.10x wall, 1.10x client CPU" in out
    )
    assert "of it, the async step a record, list() over list().pages(): 1.05x wall" in out
    assert "list() within 1.15x of the aiohttp + orjson floor: MISSED (1.20x wall" in out
