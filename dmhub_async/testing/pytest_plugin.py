"""pytest plugin: the DM Hub simulator fixtures.

Registered through the ``pytest11`` entry point, so installing ``dmhub-async`` is enough; else
add ``pytest_plugins = ["dmhub_async.testing.pytest_plugin"]`` to a ``conftest.py``.

- ``dmhub_simulator``: a running `DMHubSimulator` seeded with 50 customers. Change that with
  ``@pytest.mark.dmhub_simulator(customers=500, seed=7)`` (any constructor argument).
- ``dmhub_client``: a ``DMHubClient`` pointed at ``dmhub_simulator``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from ._simulator import DMHubSimulator

if TYPE_CHECKING:
    from dmhub_async import DMHubClient

DEFAULT_CUSTOMERS = 50


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``dmhub_simulator`` marker."""
    config.addinivalue_line(
        "markers",
        "dmhub_simulator(**kwargs): DMHubSimulator arguments for the dmhub_simulator fixture",
    )


@pytest_asyncio.fixture
async def dmhub_simulator(request: pytest.FixtureRequest) -> AsyncIterator[DMHubSimulator]:
    """A running DM Hub simulator with 50 seeded customers (see the ``dmhub_simulator`` mark)."""
    kwargs: dict[str, Any] = {"customers": DEFAULT_CUSTOMERS}
    marker = request.node.get_closest_marker("dmhub_simulator")
    if marker is not None:
        kwargs.update(marker.kwargs)
    async with DMHubSimulator(**kwargs) as sim:
        yield sim


@pytest_asyncio.fixture
async def dmhub_client(dmhub_simulator: DMHubSimulator) -> AsyncIterator[DMHubClient]:
    """A ``DMHubClient`` with the simulator's URL and credentials."""
    from dmhub_async import DMHubClient  # imported late: the plugin loads before the client

    async with DMHubClient(
        app_id=dmhub_simulator.app_id,
        secret=dmhub_simulator.secret,
        base_url=dmhub_simulator.url,
    ) as client:
        yield client
