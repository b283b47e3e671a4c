"""pytest plugin: the DM Hub simulator fixtures.

Registered through the ``pytest11`` entry point, so installing ``dmhub-async`` is enough (and
``pytest_plugins = ["dmhub_async.testing.pytest_plugin"]`` in a ``conftest.py`` does no harm);
``-p no:dmhub_async.testing.pytest_plugin`` switches it off. It changes
nothing in a test run that does not ask for its fixtures; the async ones need pytest-asyncio
(``pip install pytest-asyncio``), and a test asking for them without it fails with that message.

- ``dmhub_simulator``: a running `DMHubSimulator` seeded with 50 customers. Change that with
  ``@pytest.mark.dmhub_simulator(customers=500, seed=7)`` (any constructor argument, as the
  constructor takes it: ``dmhub_simulator(500)`` is 500 customers).
- ``dmhub_clock``: the `FakeClock` the client fixture waits on: retries take no real time, and
  ``dmhub_clock.waits`` lists the waits.
- ``dmhub_client``: a ``DMHubClient`` pointed at ``dmhub_simulator``, on ``dmhub_clock``. Pass
  it settings with ``@pytest.mark.dmhub_client(max_retries=1, timeout=5)`` (any constructor
  argument).
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported by the fixtures that use them: a run without them loads neither
    from dmhub_async import DMHubClient

    from ._clock import FakeClock
    from ._simulator import DMHubSimulator

DEFAULT_CUSTOMERS = 50
NEEDS_PYTEST_ASYNCIO = (
    "the dmhub_simulator and dmhub_client fixtures are async and need pytest-asyncio: "
    "pip install pytest-asyncio"
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``dmhub_simulator`` and ``dmhub_client`` markers."""
    config.addinivalue_line(
        "markers",
        "dmhub_simulator(**kwargs): DMHubSimulator arguments for the dmhub_simulator fixture",
    )
    config.addinivalue_line(
        "markers",
        "dmhub_client(**kwargs): DMHubClient arguments for the dmhub_client fixture",
    )


def _mark_kwargs(
    request: pytest.FixtureRequest, name: str, target: Callable[..., object]
) -> dict[str, Any]:
    """The marker's arguments, positional ones included, by ``target``'s parameter names."""
    marker = request.node.get_closest_marker(name)
    if marker is None:
        return {}
    # Bound to the signature: `dmhub_simulator(500)` is 500 customers, as DMHubSimulator(500)
    # is (its positional arguments were dropped unread, and the test ran on 50).
    try:
        bound = inspect.signature(target).bind_partial(*marker.args, **marker.kwargs)
    except TypeError as err:
        refused = f"@pytest.mark.{name}(...): {err}"
    else:
        return dict(bound.arguments)
    pytest.fail(refused, pytrace=False)  # outside the except: one line, no chained traceback


@pytest.fixture
def dmhub_clock() -> FakeClock:
    """The fake clock ``dmhub_client`` waits on: its retries take no real time."""
    from ._clock import FakeClock

    return FakeClock()


async def _simulator(
    request: pytest.FixtureRequest, dmhub_clock: FakeClock
) -> AsyncIterator[DMHubSimulator]:
    from ._simulator import DMHubSimulator  # late: a run without these fixtures never loads it

    # The client's clock: the simulator's times (a Retry-After date, token lifetimes, the
    # customers it creates) are then the times the client sees.
    kwargs: dict[str, Any] = {"customers": DEFAULT_CUSTOMERS, "clock": dmhub_clock}
    kwargs.update(_mark_kwargs(request, "dmhub_simulator", DMHubSimulator))
    async with DMHubSimulator(**kwargs) as sim:
        yield sim


async def _client(
    request: pytest.FixtureRequest, dmhub_simulator: DMHubSimulator, dmhub_clock: FakeClock
) -> AsyncIterator[DMHubClient]:
    from dmhub_async import DMHubClient, MemoryTokenStore

    kwargs: dict[str, Any] = {
        "app_id": dmhub_simulator.app_id,
        "secret": dmhub_simulator.secret,
        "base_url": dmhub_simulator.url,
        "token_store": MemoryTokenStore(),
        "clock": dmhub_clock,
        "sleep": dmhub_clock.sleep,
    }
    kwargs.update(_mark_kwargs(request, "dmhub_client", DMHubClient))
    async with DMHubClient(**kwargs) as client:
        yield client


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    dmhub_simulator = pytest_asyncio.fixture(_simulator, name="dmhub_simulator")
    dmhub_client = pytest_asyncio.fixture(_client, name="dmhub_client")
else:

    @pytest.fixture(name="dmhub_simulator")
    def _simulator_needs_pytest_asyncio() -> None:
        pytest.fail(NEEDS_PYTEST_ASYNCIO, pytrace=False)

    @pytest.fixture(name="dmhub_client")
    def _client_needs_pytest_asyncio() -> None:
        pytest.fail(NEEDS_PYTEST_ASYNCIO, pytrace=False)
