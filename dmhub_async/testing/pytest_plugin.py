"""pytest plugin: the DM Hub simulator fixtures.

Registered through the ``pytest11`` entry point, so installing ``dmhub-async`` is enough (and
``pytest_plugins = ["dmhub_async.testing.pytest_plugin"]`` in a ``conftest.py`` does no harm);
``-p no:dmhub_async.testing.pytest_plugin`` switches it off. It changes
nothing in a test run that does not ask for its fixtures; the async ones need pytest-asyncio
(``pip install pytest-asyncio``), and a test asking for them without it fails with that message.
They run on the test's event loop, whatever its scope (``asyncio_default_test_loop_scope``, an
``asyncio`` mark's ``loop_scope``) and whatever ``asyncio_default_fixture_loop_scope`` says.

- ``dmhub_simulator``: a running `DMHubSimulator` seeded with 50 customers. Change that with
  ``@pytest.mark.dmhub_simulator(customers=500, seed=7)`` (any constructor argument, as the
  constructor takes it: ``dmhub_simulator(500)`` is 500 customers). It serves on the event
  loop of an ``async def`` test, and from a thread of its own for a plain ``def`` test, whose
  synchronous code (an ``asyncio.run()`` job, a subprocess) then reaches it. A test anyio's
  plugin runs (``@pytest.mark.anyio``, pytest-asyncio in strict mode) is served on anyio's
  loop, its own; one marked ``anyio`` that pytest-asyncio runs (its auto mode), or that anyio
  runs on trio, from a thread.
- ``dmhub_clock``: the `FakeClock` the client fixture waits on: retries take no real time, and
  ``dmhub_clock.waits`` lists the waits.
- ``dmhub_client``: a ``DMHubClient`` pointed at ``dmhub_simulator``, on ``dmhub_clock``, for
  ``async def`` tests (a plain ``def`` test asking for it fails, saying how to make one, as
  does one marked ``anyio`` that pytest-asyncio runs, in its auto mode, or that anyio runs on
  trio). Pass it settings
  with ``@pytest.mark.dmhub_client(max_retries=1, timeout=5)`` (any constructor argument).

A module's or class's ``pytestmark`` of these marks counts too, the closest mark winning key by
key: a test's ``dmhub_simulator(seed=7)`` under a module's ``dmhub_simulator(500)`` is 500
customers seeded with 7. A ``Faults`` given in a mark is copied for each test (each starts
from its seed, with no script): change a running one through ``dmhub_simulator.faults``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import types
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

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

CLIENT_NEEDS_ASYNC_TEST = (
    "dmhub_client is for `async def` tests: in a plain `def` test, make the client inside the "
    "coroutine you run, `async with DMHubClient(dmhub_simulator.app_id, dmhub_simulator.secret, "
    "base_url=dmhub_simulator.url) as dm:`"
)

CLIENT_NEEDS_ONE_LOOP = (
    "dmhub_client cannot serve a test marked `anyio` that pytest-asyncio runs (asyncio_mode ="
    " auto, or an `asyncio` mark): anyio's plugin makes it on its event loop, and pytest-asyncio"
    " runs the test on another. Set asyncio_mode = strict with no `asyncio` mark on the test"
    " (anyio's plugin then runs it), or make the client inside the test: `async with"
    " DMHubClient(dmhub_simulator.app_id, dmhub_simulator.secret, base_url=dmhub_simulator.url)"
    " as dm:`"
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``dmhub_simulator`` and ``dmhub_client`` markers, and, with pytest-asyncio's
    plugin in this run, the async fixtures on each of its loop scopes.

    Made here, once every plugin is loaded, not at this module's import: imported before
    pytest-asyncio's plugin (autoload off, ``-p`` or ``pytest_plugins`` naming this one first),
    it imported pytest_asyncio too early for pytest to rewrite its asserts, whose warning ended
    a run with ``filterwarnings = error`` before its first test; and pytest-asyncio installed
    but switched off (``-p no:asyncio``) met pytest's own error, naming a private fixture.
    """
    config.addinivalue_line(
        "markers",
        "dmhub_simulator(**kwargs): DMHubSimulator arguments for the dmhub_simulator fixture",
    )
    config.addinivalue_line(
        "markers",
        "dmhub_client(**kwargs): DMHubClient arguments for the dmhub_client fixture",
    )
    if not config.pluginmanager.has_plugin(_ASYNC_FIXTURES) and any(
        config.pluginmanager.has_plugin(name) for name in _PYTEST_ASYNCIO
    ):
        config.pluginmanager.register(_async_fixtures(), _ASYNC_FIXTURES)


#: The name the async fixtures are registered under, as a plugin of their own.
_ASYNC_FIXTURES = "dmhub_async.testing.async_fixtures"
#: The names pytest-asyncio's plugin goes by: its entry point's, or a module's that names it.
_PYTEST_ASYNCIO = ("asyncio", "pytest_asyncio", "pytest_asyncio.plugin")


def _with_async_fixtures(request: pytest.FixtureRequest) -> bool:
    """Whether this run has the async fixtures: pytest-asyncio's plugin runs in it (installed,
    and not switched off), so `pytest_configure` made them."""
    return request.config.pluginmanager.has_plugin(_ASYNC_FIXTURES)


def _mark_kwargs(
    request: pytest.FixtureRequest, name: str, target: Callable[..., object]
) -> dict[str, Any]:
    """The arguments of the test's marks called ``name``, by ``target``'s parameter names.

    Every level's mark counts (a module's or class's ``pytestmark``, the test's own), the
    closest winning key by key: a test's ``dmhub_simulator(seed=3)`` under a module's
    ``dmhub_simulator(500)`` is 500 customers seeded with 3. Positional arguments are read as
    ``target`` reads them.
    """
    merged: dict[str, Any] = {}
    for marker in request.node.iter_markers(name):  # the closest first
        # Bound to the signature: `dmhub_simulator(500)` is 500 customers, as DMHubSimulator(500)
        # is (its positional arguments were dropped unread, and the test ran on 50).
        try:
            bound = inspect.signature(target).bind_partial(*marker.args, **marker.kwargs)
        except TypeError as err:
            refused = f"@pytest.mark.{name}(...): {err}"
            break
        # Merged, a closer mark's keys kept: the closest mark alone counted, and a test's own
        # mark dropped every setting of its module's.
        merged = {**bound.arguments, **merged}
    else:
        return merged
    pytest.fail(refused, pytrace=False)  # outside the except: one line, no chained traceback


@pytest.fixture
def dmhub_clock() -> FakeClock:
    """The fake clock ``dmhub_client`` waits on: its retries take no real time."""
    from ._clock import FakeClock

    return FakeClock()


def _new_simulator(request: pytest.FixtureRequest, dmhub_clock: FakeClock) -> DMHubSimulator:
    from ._simulator import DMHubSimulator  # late: a run without these fixtures never loads it

    # The client's clock: the simulator's times (a Retry-After date, token lifetimes, the
    # customers it creates) are then the times the client sees.
    kwargs: dict[str, Any] = {"customers": DEFAULT_CUSTOMERS, "clock": dmhub_clock}
    kwargs.update(_mark_kwargs(request, "dmhub_simulator", DMHubSimulator))
    if kwargs.get("faults") is not None:
        # A mark is made once, at import: its one Faults served every test it marks, each
        # starting from the random draws and the script the one before left.
        kwargs["faults"] = copy.deepcopy(kwargs["faults"])
    return DMHubSimulator(**kwargs)


async def _simulator_in_loop(
    request: pytest.FixtureRequest, dmhub_clock: FakeClock
) -> AsyncIterator[DMHubSimulator]:
    async with _new_simulator(request, dmhub_clock) as sim:
        yield sim


def _is_async_test(request: pytest.FixtureRequest) -> bool:
    test = getattr(request.node, "function", None)
    test = getattr(getattr(test, "hypothesis", None), "inner_test", test)  # @given wraps it
    return inspect.iscoroutinefunction(test) or inspect.isasyncgenfunction(test)


CLIENT_NEEDS_ASYNCIO = (
    "dmhub_client runs on asyncio, and anyio's plugin runs this test on {backend}: give the test"
    ' an `anyio_backend` of "asyncio", or reach the simulator from the test by'
    " dmhub_simulator.url"
)


def _anyio_backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend anyio's plugin runs the test on (``anyio_backend`` is a name, or
    a name and its options)."""
    backend = request.getfixturevalue("anyio_backend")
    if isinstance(backend, tuple) and backend:
        backend = backend[0]
    return str(backend)


def _with_anyio_backend(request: pytest.FixtureRequest) -> bool:
    """Whether anyio's plugin runs this test's async fixtures, on an event loop of its own
    (as it decides: the test has ``anyio_backend``), which pytest-asyncio's may not be."""
    return "anyio_backend" in request.fixturenames and request.config.pluginmanager.has_plugin(
        "anyio"
    )


def _run_by_anyio(request: pytest.FixtureRequest) -> bool:
    """Whether anyio's plugin runs the test itself, on the loop it runs its async fixtures on:
    it has ``anyio_backend``, and no ``asyncio`` mark (which pytest-asyncio's auto mode gives
    every async test), with which pytest-asyncio runs it on its own loop."""
    return _with_anyio_backend(request) and request.node.get_closest_marker("asyncio") is None


@contextlib.contextmanager
def _served_from_a_thread(sim: DMHubSimulator) -> Iterator[DMHubSimulator]:
    """``sim`` serving on an event loop of its own thread, for the length of the block."""
    import asyncio
    import threading

    ready = threading.Event()
    running: dict[str, Any] = {}

    async def serve() -> None:
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        running["stop"] = lambda: loop.call_soon_threadsafe(stop.set)
        try:
            async with sim:
                ready.set()
                await stop.wait()
        except BaseException as err:  # a port taken, say: raised in the test's thread
            running["error"] = err
        finally:
            ready.set()

    thread = threading.Thread(
        target=asyncio.run, args=(serve(),), name="dmhub_simulator", daemon=True
    )
    thread.start()
    try:
        ready.wait()
        if "error" not in running:
            yield sim
    finally:
        if "stop" in running:
            running["stop"]()
        thread.join()
    if "error" in running:  # starting or stopping it failed
        raise running["error"]


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


#: The event loop scopes pytest-asyncio runs a test in.
LOOP_SCOPES = ("function", "class", "module", "package", "session")


def _test_loop_scope(request: pytest.FixtureRequest) -> str:
    """The scope of the event loop pytest-asyncio runs this test in, found as it finds it.

    Its closest ``asyncio`` mark's ``loop_scope`` (``scope``, before pytest-asyncio 0.24), else
    the ``asyncio_default_test_loop_scope`` setting, else ``"function"``.
    """
    marker = request.node.get_closest_marker("asyncio")
    if marker is not None:
        scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
        if scope:
            return str(scope)
    try:
        scope = request.config.getini("asyncio_default_test_loop_scope")
    except ValueError:  # a pytest-asyncio without that setting: the function's loop
        return "function"
    return str(scope or "function")


def _copy_of(func: Callable[..., Any]) -> Callable[..., Any]:
    """A new function object running ``func``'s code: pytest-asyncio marks the function itself
    with its loop scope, so one object under five fixtures ran all five on the last scope's."""
    return types.FunctionType(
        func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )


def _async_fixtures() -> type:
    """The async fixtures, one copy of each per loop scope, made with pytest-asyncio's
    ``fixture``: a class holding them, a plugin for pytest to collect them from (it reads a
    plugin object's fixtures off its type).

    `dmhub_simulator` / `dmhub_client` take the one on the test's loop: left to
    `asyncio_default_fixture_loop_scope`, they ran on a loop other than the test's wherever the
    two scopes differed (that setting "session", a `@pytest.mark.asyncio(loop_scope="module")`
    ...), and the client failed with "used in another event loop" while the simulator, its loop
    stopped, never answered.
    """
    import pytest_asyncio

    global _PER_LOOP_SCOPE
    _PER_LOOP_SCOPE = "loop_scope" in inspect.signature(pytest_asyncio.fixture).parameters
    fixtures: dict[str, Any] = {}
    for scope in LOOP_SCOPES if _PER_LOOP_SCOPE else ("function",):  # 0.23: the test's loop
        on_scope: dict[str, Any] = {"loop_scope": scope} if _PER_LOOP_SCOPE else {}
        for name, func in (("simulator", _simulator_in_loop), ("client", _client)):
            fixture_name = f"_dmhub_{name}_in_{scope}_loop"
            fixtures[fixture_name] = pytest_asyncio.fixture(
                _copy_of(func), name=fixture_name, **on_scope
            )
    # Not pytest-asyncio's: anyio's plugin runs them, on the loop it runs the test on.
    fixtures[_CLIENT_ON_ANYIOS_LOOP] = pytest.fixture(
        _copy_of(_client), name=_CLIENT_ON_ANYIOS_LOOP
    )
    fixtures[_SIMULATOR_ON_ANYIOS_LOOP] = pytest.fixture(
        _copy_of(_simulator_in_loop), name=_SIMULATOR_ON_ANYIOS_LOOP
    )
    return type("DMHubAsyncFixtures", (), fixtures)


#: The client and the simulator of a test anyio runs: plain async fixtures, which anyio's
#: plugin runs.
_CLIENT_ON_ANYIOS_LOOP = "_dmhub_client_on_anyios_loop"
_SIMULATOR_ON_ANYIOS_LOOP = "_dmhub_simulator_on_anyios_loop"


#: Whether this pytest-asyncio takes a fixture's ``loop_scope`` (0.24 and later).
_PER_LOOP_SCOPE = False


def _on_the_tests_loop(request: pytest.FixtureRequest, name: str) -> Any:
    scope = _test_loop_scope(request) if _PER_LOOP_SCOPE else "function"
    return request.getfixturevalue(f"_dmhub_{name}_in_{scope}_loop")


@pytest.fixture(name="dmhub_simulator")
def _dmhub_simulator(
    request: pytest.FixtureRequest, dmhub_clock: FakeClock
) -> Iterator[DMHubSimulator]:
    """A running DMHubSimulator seeded with 50 customers, on ``dmhub_clock``.

    ``@pytest.mark.dmhub_simulator(customers=500, seed=7)`` takes any constructor argument. It
    serves on the event loop of an ``async def`` test (anyio's, for one anyio runs), from a
    thread of its own for a plain ``def`` one and for one marked ``anyio`` that pytest-asyncio
    runs, or that anyio runs on trio. Needs pytest-asyncio.
    """
    if not _with_async_fixtures(request):
        pytest.fail(NEEDS_PYTEST_ASYNCIO, pytrace=False)
    if _is_async_test(request):
        if not _with_anyio_backend(request):  # served by the test's loop
            yield _on_the_tests_loop(request, "simulator")
            return
        if _run_by_anyio(request) and _anyio_backend(request) == "asyncio":
            # On the test's loop, anyio's: from a thread, an async hook of the test's (an
            # asyncio.Event it sets) ran on another loop, and a request it held hung. A test
            # run on trio has no asyncio loop: its setup failed with "no running event loop".
            yield request.getfixturevalue(_SIMULATOR_ON_ANYIOS_LOOP)
            return
    # A plain `def` test runs no event loop: one in the test's loop took connections and
    # never answered, and synchronous code under test (an asyncio.run() job) hung on it. Nor
    # does the loop anyio runs a test's async fixtures on when pytest-asyncio runs the test
    # (its auto mode): its client waited out its timeout.
    with _served_from_a_thread(_new_simulator(request, dmhub_clock)) as sim:
        yield sim


@pytest.fixture(name="dmhub_client")
def _dmhub_client(request: pytest.FixtureRequest) -> DMHubClient:
    """A DMHubClient pointed at dmhub_simulator, waiting on ``dmhub_clock``, for ``async def``
    tests.

    ``@pytest.mark.dmhub_client(max_retries=1, timeout=5)`` takes any constructor argument.
    Needs pytest-asyncio; not for a test marked ``anyio`` that pytest-asyncio runs (its auto
    mode), whose async fixtures anyio's plugin runs on another loop than the test's.
    """
    if not _with_async_fixtures(request):
        pytest.fail(NEEDS_PYTEST_ASYNCIO, pytrace=False)
    if not _is_async_test(request):
        # Made on a loop that does not run in a `def` test, it failed at its first call
        # with "used in another event loop (an earlier asyncio.run()?)".
        pytest.fail(CLIENT_NEEDS_ASYNC_TEST, pytrace=False)
    if _with_anyio_backend(request):
        if not _run_by_anyio(request):
            # Its fixtures run by anyio's plugin on anyio's loop, the test by pytest-asyncio
            # on its own (auto mode, or an asyncio mark): the first call failed with "used in
            # another event loop (an earlier asyncio.run()?)", which the test never made.
            pytest.fail(CLIENT_NEEDS_ONE_LOOP, pytrace=False)
        backend = _anyio_backend(request)
        if backend != "asyncio":  # its setup failed deep inside ("no running event loop")
            pytest.fail(CLIENT_NEEDS_ASYNCIO.format(backend=backend), pytrace=False)
        # pytest-asyncio made it on its own loop (before 1.2), which the test does not run
        # on: its first call failed with "used in another event loop".
        return cast("DMHubClient", request.getfixturevalue(_CLIENT_ON_ANYIOS_LOOP))
    return cast("DMHubClient", _on_the_tests_loop(request, "client"))
