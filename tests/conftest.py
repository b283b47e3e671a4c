"""Shared fixtures: a hand-driven clock, the aioresponses mock, a token endpoint, clients.

No test really sleeps or reaches the network: the clock only moves when a test advances it or a
client "sleeps" on it, and every HTTP call is answered by aioresponses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import _aioresponses_compat
import pytest
from _cli_support import ServedSimulator, serve, served_env
from _helpers import BASE, hypothesis_profile
from _redis import REDIS_SERVER, SKIP_REASON, RedisServer, redis_server
from aioresponses import CallbackResult, aioresponses
from hypothesis import settings

from dmhub_async import DMHubClient, MemoryTokenStore, RetryPolicy
from dmhub_async._auth import DEFAULT_STORE
from dmhub_async.testing import FakeClock

_aioresponses_compat.install()  # aioresponses 0.7.9 on aiohttp 3.14: see the module
settings.load_profile(hypothesis_profile(os.environ))  # derandomized in CI

#: The base URL every client built by ``make_client`` talks to.
BASE_URL = BASE
TOKEN_URL = re.compile(r"^https://api\.dmhub\.test/security/accesstoken\?.*$")


class TokenEndpoint:
    """``/security/accesstoken`` on the mock: hands out ``tok-1``, ``tok-2``, ... in turn."""

    def __init__(self, api: aioresponses, expires_in: int = 7200) -> None:
        self.issued: list[str] = []
        self.expires_in = expires_in
        api.get(TOKEN_URL, callback=self._answer, repeat=True)

    def _answer(self, url: Any, **kwargs: Any) -> CallbackResult:
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        return CallbackResult(
            payload={"error_code": 0, "access_token": token, "expires_in": self.expires_in}
        )


@pytest.fixture(autouse=True, scope="session")
def no_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's CLI runs (in this process or a child) keep their token file in a cache
    directory of the run's, never the user's: tests that set no XDG_CACHE_HOME (the secrets
    canary's) wrote 266 entries into ~/.cache/dmhub-async/tokens.json on one machine."""
    kept = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if kept is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = kept


@pytest.fixture(autouse=True)
def fresh_default_token_store() -> None:
    """Each test starts with the process's default token store empty.

    Clients made without a ``token_store`` share it, keyed by address, appid and secret; every
    simulator serves the same appid and secret on 127.0.0.1, and the OS hands a closed one's
    port to a later one. A token left behind would meet that later simulator, which refuses
    it: the client fetches a new one and sends the request again, one request more than a test
    that counts requests expects (test_list_integration.py, the tests after the id-list walk).
    A token fetch's failure left behind held a later client of that key for its 6 s (raised
    at once, nothing sent): the DNS no-answer rerun test, run twice in a row, looked nothing up.
    """
    DEFAULT_STORE._tokens.clear()
    DEFAULT_STORE._failures.clear()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock; pass ``clock=clock, sleep=clock.sleep`` to a client."""
    return FakeClock()


@pytest.fixture
def api() -> Iterator[aioresponses]:
    """Every aiohttp request in the test goes to this mock (``api.requests`` records them)."""
    with aioresponses() as mock:
        yield mock


@pytest.fixture
def tokens(api: aioresponses) -> TokenEndpoint:
    """A working token endpoint on ``api``."""
    return TokenEndpoint(api)


@pytest.fixture
async def make_client(clock: FakeClock) -> AsyncIterator[Callable[..., DMHubClient]]:
    """Build clients on the fake clock with exact waits (no jitter) and a private token store.

    ``max_retries=`` and the other ``RetryPolicy`` settings given here build the policy. Every
    client is closed at the end of the test.
    """
    clients: list[DMHubClient] = []
    policy_args = ("max_retries", "initial_delay", "max_delay", "retry_after_cap", "budget")

    def make(**kwargs: Any) -> DMHubClient:
        policy = {name: kwargs.pop(name) for name in policy_args if name in kwargs}
        kwargs.setdefault("retry", RetryPolicy(jitter=lambda ceiling: ceiling, **policy))
        if "access_token" not in kwargs:
            kwargs.setdefault("app_id", "app-1")
            kwargs.setdefault("secret", "secret-1")
        kwargs.setdefault("base_url", BASE_URL)
        kwargs.setdefault("token_store", MemoryTokenStore())
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        client = DMHubClient(**kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of this test's own on a free 127.0.0.1 port (tests/_redis.py)."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    directory = tmp_path / "redis"
    directory.mkdir()
    with redis_server(directory) as server:
        yield server


@pytest.fixture(scope="session")
def mypy_strict(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a user's ``mypy --strict`` (none of this project's settings) over some files.

    In a process of its own: mypy in-process left some 850,000 objects in the suite's heap, and
    every test that collects garbage to find a leaked connection paid for them (half a second a
    collection). One cache serves the session, so the standard library is read once.
    """
    cache = tmp_path_factory.mktemp("mypy_cache")

    def run(
        *files: Path, cwd: Path, mypy_path: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = cwd / "mypy.ini"
        config.write_text("[mypy]\n" + (f"mypy_path = {mypy_path}\n" if mypy_path else ""), "utf-8")
        args = ["--strict", "--config-file", str(config), "--cache-dir", str(cache)]
        return subprocess.run(
            [sys.executable, "-m", "mypy", *args, *map(str, files)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=cwd,
            check=False,
        )

    return run


@pytest.fixture
def served() -> Iterator[ServedSimulator]:
    """The simulator in a process of its own, for the CLI's subprocess tests."""
    yield from serve()


@pytest.fixture
def env(served: ServedSimulator, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a CLI run against ``served``, with a cache directory of its own."""
    return served_env(served, tmp_path_factory.mktemp("cache"))


@pytest.fixture
def in_process(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """``main()`` called in this process, in ``tmp_path``, with the served simulator's
    settings."""
    for key in ("DMHUB_BASE_URL", "DMHUB_APP_ID", "DMHUB_SECRET", "XDG_CACHE_HOME"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.chdir(tmp_path)
    return env
