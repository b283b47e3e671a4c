"""Hostile server: pages that never end (issue 12 item 3).

A small aiohttp app on 127.0.0.1 answers the list endpoints with pages that make no progress:
pages in a cycle (A, B, A, B, ...), one page again and again while its record count changes
(which defeats the check that refuses a page served twice), or new records for ever with
``hasNext`` true while the totals say five pages. Before the fix each kept a walk going with no
end (about 15,000 requests in 20 s); now the walk stops with ``ResponseDecodeError`` within
``MAX_READS_WITHOUT_PROGRESS`` pages of the first repeat (plus the pages already in flight), and
each test counts the requests the server saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from dmhub_async import DMHubClient, ResponseDecodeError
from dmhub_async._pagination_plan import MAX_READS_WITHOUT_PROGRESS

#: What a page request gets: the page number in, the JSON body out.
Serve = Callable[[int], dict[str, Any]]


class HostileServer:
    """Serves ``/v1/customers`` and ``/v1/customerStatistics`` pages from ``serve``."""

    def __init__(self) -> None:
        self.serve: Serve = lambda number: {}
        self.requests: list[int] = []
        self.url = ""

    async def page(self, request: web.Request) -> web.Response:
        number = int(request.query["page"])
        self.requests.append(number)
        return web.json_response(self.serve(number))


@pytest.fixture
async def server() -> AsyncIterator[HostileServer]:
    hostile = HostileServer()
    app = web.Application()
    app.router.add_get("/v1/customers", hostile.page)
    app.router.add_get("/v1/customerStatistics", hostile.page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hostile.url = f"http://{host}:{port}"
    yield hostile
    await runner.cleanup()


def rows(first: int, last: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"customer {i}"} for i in range(first, last + 1)]


async def walk_until_stopped(
    server: HostileServer, statistics: bool = False, **paging: Any
) -> None:
    """Walk with the SDK; the test fails (not hangs) if the walk is still going after 10 s."""
    async with DMHubClient(access_token="hostile-test-token", base_url=server.url) as dm:
        lister = dm.customer_statistics if statistics else dm.customers
        await asyncio.wait_for(lister.list(page_size=10, **paging).to_list(), timeout=10)


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_pages_in_a_cycle_stop_the_walk(server: HostileServer, concurrency: int) -> None:
    """Page 3 serves page 1's records again, page 4 page 2's, and so on."""
    server.serve = lambda n: {"rows": rows(1, 10) if n % 2 else rows(11, 20)}  # no totals
    with pytest.raises(ResponseDecodeError, match="no new record"):
        await walk_until_stopped(server, concurrency=concurrency)
    # The first repeat is the third request; what follows is bounded (and so is what was
    # already in flight when the walk stopped).
    after_first_repeat = len(server.requests) - 2
    assert after_first_repeat <= MAX_READS_WITHOUT_PROGRESS + 2 * concurrency
    assert (
        after_first_repeat <= 88
    )  # 72 reads (a repair's 32 steps back and forward, and 8) + 2 x 8


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_one_page_under_a_changing_count_stops_the_walk(
    server: HostileServer, concurrency: int
) -> None:
    """Every page is page 1 again, with another ``records`` each time (a changing count
    tells the walk that records moved, so the same page twice is not refused outright)."""
    server.serve = lambda n: {"rows": rows(1, 10), "records": 10**6 + len(server.requests)}
    with pytest.raises(ResponseDecodeError, match="no new record"):
        await walk_until_stopped(server, concurrency=concurrency)
    after_first_repeat = len(server.requests) - 1
    assert after_first_repeat <= MAX_READS_WITHOUT_PROGRESS + 2 * concurrency
    assert (
        after_first_repeat <= 88
    )  # 72 reads (a repair's 32 steps back and forward, and 8) + 2 x 8


async def test_has_next_for_ever_past_the_totals_stops_the_walk(server: HostileServer) -> None:
    """New records on every page and ``hasNext`` true, while the totals say 5 pages."""
    server.serve = lambda n: {
        "items": [{"id": i, "customerId": i} for i in range(n * 10 - 9, n * 10 + 1)],
        "meta": {"records": 50, "total": 5, "hasNext": True},
    }
    with pytest.raises(ResponseDecodeError, match="far past the 5 pages"):
        await walk_until_stopped(server, statistics=True)
    assert len(server.requests) == 2 * 5 + MAX_READS_WITHOUT_PROGRESS + 1
