"""The package as a user installs it: a fresh venv with dmhub-async and pytest, nothing else.

The pytest plugin is registered for every install (the ``pytest11`` entry point), so it must not
change a project's test run unless that project asks for its fixtures, and pytest-asyncio (which
the fixtures need) is not a dependency of the package.
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from _helpers import users_environ

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
#: Making the venv and installing into it takes 10-20 s, more on a busy machine.
pytestmark = pytest.mark.timeout(600)


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=users_environ(),
        check=False,
    )


def _venv_with(tmp_path_factory: pytest.TempPathFactory, name: str, *pip: str) -> Path:
    """The python of a fresh venv into which ``pip install *pip`` went (skip if it cannot)."""
    where = tmp_path_factory.mktemp(name)
    try:
        venv.create(where, with_pip=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot make a venv here: {err}")
    python = where / "bin" / "python"
    installed = _run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pip],
        cwd=where,
        timeout=300,
    )
    if installed.returncode != 0:  # no wheel of an old floor for this Python, or no network
        pytest.skip(f"cannot install {pip}: {installed.stderr.strip()[-300:]}")
    return python


@pytest.fixture(scope="module")
def user_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding only dmhub-async (with its dependencies) and pytest."""
    return _venv_with(tmp_path_factory, "user-venv", str(ROOT), "pytest")


def _pytest(python: Path, project: Path) -> subprocess.CompletedProcess[str]:
    # -W error: importing the plugin (and with it the package) must not warn either.
    return _run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"], cwd=project
    )


def test_a_project_that_does_not_use_the_fixtures_runs_as_before(
    user_python: Path, tmp_path: Path
) -> None:
    (tmp_path / "test_sum.py").write_text("def test_sum():\n    assert 1 + 1 == 2\n")
    result = _pytest(user_python, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_asking_for_a_fixture_without_pytest_asyncio_says_what_to_install(
    user_python: Path, tmp_path: Path
) -> None:
    (tmp_path / "test_sim.py").write_text(
        "def test_sim(dmhub_simulator):\n    pass\n\ndef test_other():\n    pass\n"
    )
    result = _pytest(user_python, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 error" in result.stdout
    assert "pip install pytest-asyncio" in result.stdout
    assert "Traceback" not in result.stdout


def test_the_readmes_first_command_works_in_a_fresh_venv(user_python: Path, tmp_path: Path) -> None:
    # `pip install . && dmhub-async demo`: the console script, with the runtime dependencies only.
    demo = user_python.parent / "dmhub-async"
    result = _run([str(demo), "demo", "--customers", "2000", "--latency-ms", "0"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    exported = (tmp_path / "dmhub-demo.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(exported) == 2000


def test_the_plugin_named_in_a_conftest_too_and_switched_off_by_its_name(
    user_python: Path, tmp_path: Path
) -> None:
    # The docstring's `pytest_plugins = [...]`, with the package installed: pytest stopped with
    # "Plugin already registered under a different name", the entry point's.
    (tmp_path / "conftest.py").write_text(
        'pytest_plugins = ["dmhub_async.testing.pytest_plugin"]\n'
    )
    (tmp_path / "test_clock.py").write_text(
        "def test_clock(dmhub_clock):\n    assert dmhub_clock.waits == []\n"
    )
    result = _pytest(user_python, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    (tmp_path / "conftest.py").unlink()
    off = _run(
        [str(user_python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "no:dmhub_async.testing.pytest_plugin"],
        cwd=tmp_path,
    )  # fmt: skip
    assert off.returncode == 1, off.stdout + off.stderr
    assert "fixture 'dmhub_clock' not found" in off.stdout


def test_a_project_that_imports_the_sdk_before_starting_pytest_runs_as_before(
    user_python: Path, tmp_path: Path
) -> None:
    # pytest marks every package of a distribution with a pytest11 entry point for assertion
    # rewriting, and warns of one already imported: an application that imports dmhub_async
    # and then runs its tests in the same process (`pytest.main()` from a management command)
    # got "PytestAssertRewriteWarning: Module already imported so cannot be rewritten;
    # dmhub_async", and with `filterwarnings = error` the run died with a traceback before its
    # first test, `-p no:dmhub_async.testing.pytest_plugin` or not.
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    (tmp_path / "test_sum.py").write_text("def test_sum():\n    assert 1 + 1 == 2\n")
    runner = (
        "import sys, dmhub_async, pytest\nsys.exit(pytest.main(['-q', '-p', 'no:cacheprovider']))"
    )
    result = _run([str(user_python), "-c", runner], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "PytestAssertRewriteWarning" not in result.stdout + result.stderr


def _declared_floors() -> list[str]:
    """``name==floor`` for each runtime dependency and the extras', its ``>=`` floor (arq's
    oldest allowed wants a redis older than the extra's: pip picks the arq that redis takes)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    floors = []
    for requirement in project["dependencies"] + extras["fast"] + extras["redis"]:
        if requirement.startswith("arq"):
            continue
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement)
        assert found, f"a runtime dependency without a plain >= floor: {requirement!r}"
        floors.append(f"{found[1]}=={found[2]}")
    return floors


@pytest.fixture(scope="module")
def floor_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding dmhub-async[fast,redis], each dependency at its oldest allowed."""
    constraints = tmp_path_factory.mktemp("floors") / "floors.txt"
    constraints.write_text("\n".join(_declared_floors()) + "\n", encoding="utf-8")
    return _venv_with(
        tmp_path_factory,
        "floor-venv",
        *("--only-binary", ":all:", "-c", str(constraints), f"{ROOT}[fast,redis]"),
    )


def test_the_declared_dependency_floors_run_an_export(floor_python: Path, tmp_path: Path) -> None:
    # pyproject said filelock>=3.12, but the export's output lock passes `on_acquired`, which
    # filelock has since 3.30: a user whose project held filelock 3.12-3.29 (pip keeps an
    # installed version that satisfies the floor) had every `export` and `demo` fail with
    # "TypeError: ... unexpected keyword argument 'on_acquired'".
    demo = floor_python.parent / "dmhub-async"
    result = _run([str(demo), "demo", "--customers", "300", "--latency-ms", "0"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    exported = (tmp_path / "dmhub-demo.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(exported) == 300


#: A service whose list page holds an object where the rows go: the SDK's error, not msgspec's.
ODD_PAGE = """
import asyncio
from aiohttp import web
from dmhub_async import DMHubClient, ResponseDecodeError

async def token(request):
    return web.json_response({"access_token": "a" * 32, "expires_in": 7200})

async def customers(request):
    return web.json_response({"rows": {"id": 1}, "records": 1, "total": 1})

async def main():
    app = web.Application()
    app.router.add_get("/security/accesstoken", token)
    app.router.add_get("/v1/customers", customers)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with DMHubClient("app", "s3cret", base_url=f"http://127.0.0.1:{port}") as dm:
            try:
                [c async for c in dm.customers.list()]
            except ResponseDecodeError as err:
                print("ResponseDecodeError:", err)
    finally:
        await runner.cleanup()

asyncio.run(main())
"""


def test_the_fast_extras_floor_raises_the_sdks_errors(floor_python: Path, tmp_path: Path) -> None:
    # The extra allowed msgspec 0.18, but the page readers catch msgspec's errors as the
    # ValueError they are from msgspec 0.21 on: with 0.18-0.20 a page not of the promised shape
    # raised a raw `msgspec.ValidationError` (not a DMHubError, so not caught as one) and a
    # service's lenient values (a number where a string goes) failed the walk, not read.
    result = _run([str(floor_python), "-c", ODD_PAGE], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ResponseDecodeError: GET /v1/customers -> HTTP 200" in result.stdout


#: One scripted reset of a GET and of a PUT, each under a client allowed one retry.
RESET_ONCE = """
import asyncio
from dmhub_async import DMHubClient, MemoryTokenStore
from dmhub_async.testing import DMHubSimulator, FakeClock

async def main():
    clock = FakeClock()
    async with DMHubSimulator(customers=5, clock=clock) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url,
                               token_store=MemoryTokenStore(), clock=clock, sleep=clock.sleep,
                               max_retries=1) as dm:
            await dm.customers.count()
            sim.faults.script(["reset"])
            print("count", await dm.customers.count(), "retries", dm.stats.retries)
            sim.faults.script(["reset"])
            await dm.customers.update(sim.customer_ids()[0], name="z")
            print("update retries", dm.stats.retries, "faults", dict(sim.counters.faults))

asyncio.run(main())
"""


def test_one_scripted_reset_is_one_failure_on_the_aiohttp_floor(
    floor_python: Path, tmp_path: Path
) -> None:
    # The simulator drops the re-send aiohttp makes by itself after a reset, but aiohttp 3.9
    # (which `aiohttp>=3.9` allows) sends nothing again: the client's own retry was dropped
    # instead, and one scripted reset cost two failures. The README's `test_survives_throttling`
    # (four scripted faults, four retries) failed with APIConnectionError there.
    result = _run([str(floor_python), "-c", RESET_ONCE], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "count 5 retries 1\n" in result.stdout
    assert "update retries 2 faults {'reset': 2}\n" in result.stdout


@pytest.fixture(scope="module")
def old_msgspec_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding dmhub-async without its extra, and msgspec 0.20 installed apart."""
    return _venv_with(
        tmp_path_factory,
        "old-msgspec-venv",
        "--only-binary",
        "msgspec",
        str(ROOT),
        "msgspec==0.20.0",
    )


def test_an_older_msgspec_installed_for_another_library_is_left_unused(
    old_msgspec_python: Path, tmp_path: Path
) -> None:
    # The SDK uses msgspec whenever it can import it, extra or not: a project holding an older
    # one for another library met msgspec's raw errors too, whatever the extra's floor says.
    result = _run([str(old_msgspec_python), "-c", ODD_PAGE], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ResponseDecodeError: GET /v1/customers -> HTTP 200" in result.stdout
    demo = old_msgspec_python.parent / "dmhub-async"
    result = _run([str(demo), "demo", "--customers", "300", "--latency-ms", "0"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


#: A sharded export on the queue: a worker and the export, with the simulator's settings.
QUEUED_EXPORT = """
import asyncio, os, sys
from pathlib import Path
from dmhub_async.testing import DMHubSimulator

cli = str(Path(sys.executable).parent / "dmhub-async")
redis_url, out = sys.argv[1], sys.argv[2]

async def main():
    async with DMHubSimulator(customers=300) as sim:
        env = {**os.environ, "DMHUB_APP_ID": sim.app_id, "DMHUB_SECRET": sim.secret,
               "DMHUB_BASE_URL": sim.url}
        worker = await asyncio.create_subprocess_exec(
            cli, "worker", "--redis", redis_url, "--rate-limit", "500", "-q", env=env,
            stderr=asyncio.subprocess.PIPE)
        try:
            export = await asyncio.create_subprocess_exec(
                cli, "export", "--out", out, "--shards", "2", "--queue", redis_url, "-q",
                env=env, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(export.communicate(), 100)
            print("export", export.returncode, err.decode()[-500:])
        finally:
            if worker.returncode is None:
                worker.terminate()
            _, err = await worker.communicate()
            print("worker", worker.returncode, err.decode()[-500:])

asyncio.run(main())
"""


def test_the_redis_extras_floor_serves_a_queued_export(floor_python: Path, tmp_path: Path) -> None:
    # `redis = ["redis>=5.0", ...]`, but the worker and the export close their clients with
    # `aclose()`, which redis-py has since 5.0.1: on 5.0.0 `dmhub-async worker` died at once
    # ("AttributeError: 'Redis' object has no attribute 'aclose'") and the export then waited
    # for a worker that never came. And `limits>=4.0`, but the shared rate limit (`--rate-limit`)
    # asks limits for its redis-py storage with a key prefix: limits 4.0-4.1 have none (every
    # shard failed, "ConfigurationError: coredis prerequisite not available"), 4.2-4.7 and 5.0
    # take no key_prefix (a TypeError), and the storage wants redis-py 5.2 ("The minimum version
    # of 5.2.0 for 'redis' could not be found"): the export ended incomplete.
    from dmhub_async.testing._redis import REDIS_SERVER, SKIP_REASON, redis_server

    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as server:
        result = _run(
            [str(floor_python), "-c", QUEUED_EXPORT, server.url, str(tmp_path / "out")],
            cwd=tmp_path,
            timeout=150,
        )
    assert "AttributeError" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert "export 0 " in result.stdout, result.stdout + result.stderr
    parts = sorted((tmp_path / "out").glob("*.jsonl"))
    assert sum(len(p.read_text(encoding="utf-8").splitlines()) for p in parts) == 300


@pytest.fixture(scope="module")
def anyio_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding dmhub-async, pytest, anyio and a pytest-asyncio older than 1.2."""
    return _venv_with(
        tmp_path_factory, "anyio-venv", str(ROOT), "pytest", "anyio", "pytest-asyncio==1.1.1"
    )


#: A user's tests that anyio's plugin runs, each on an event loop of anyio's.
ANYIO_TESTS = """
import pytest

from dmhub_async import DMHubClient, MemoryTokenStore


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_its_own_client(dmhub_simulator):
    async with DMHubClient(
        dmhub_simulator.app_id,
        dmhub_simulator.secret,
        base_url=dmhub_simulator.url,
        token_store=MemoryTokenStore(),
        timeout=5,
        max_retries=0,
    ) as dm:
        assert await dm.customers.count() == 50


@pytest.mark.anyio
async def test_the_client_fixture(dmhub_client):
    assert await dmhub_client.customers.count() == 50
"""


def test_the_fixtures_serve_a_test_that_anyio_runs(anyio_python: Path, tmp_path: Path) -> None:
    # pytest-asyncio before 1.2 ran the fixtures on its own event loop, which does not run
    # during a test anyio's plugin runs: the simulator took the connection and never answered
    # (the test's client waited out its timeout), and `dmhub_client` failed at its first call
    # with "this DMHubClient was used in another event loop (an earlier asyncio.run()?)".
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    )
    (tmp_path / "test_user.py").write_text(ANYIO_TESTS)
    result = _pytest(anyio_python, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
