"""What the CLI tests share: a simulator served from a thread, the command in a subprocess.

Every subprocess call has a timeout, and every server is stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dmhub_async.testing import DMHubSimulator

T = TypeVar("T")

SECRET = "s3cr3t-never-printed"
APP_ID = "cli-app"
CUSTOMERS = 1500
REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # seconds, for any one command


class ServedSimulator:
    """A DMHubSimulator served by its own event loop in a daemon thread."""

    def __init__(self, customers: int, **kwargs: Any) -> None:
        self.sim = DMHubSimulator(customers, app_id=APP_ID, secret=SECRET, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.run(self.sim.start())

    def stop(self) -> None:
        try:
            self.run(self.sim.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the simulator's loop, so it never races a request being served."""

        async def call() -> T:
            return fn(*args, **kwargs)

        return self.run(call())

    def settled(self, within: float = 10.0) -> None:
        """Returns once the simulator holds no connection open: every request a process
        sent before it ended (a killed one's pages in flight) has been read and counted.

        A count taken as the process ended could miss one still in the simulator's socket
        buffer, which then counted as the next command's (a refusal "sent" a request).
        """
        self.run(self.settled_async(within))

    async def settled_async(self, within: float = 10.0) -> None:
        """`settled` on the simulator's loop. It looks at the open connections until there
        are none (``TimeoutError`` after ``within`` seconds): aiohttp forgets a connection
        closed while its handler runs only when the handler ends, after ``connection_lost``
        (so a wait woken by ``connection_lost`` alone waited out ``within``).

        First it opens a connection of its own and waits until the simulator has accepted it:
        a connection still in the listen queue (a killed command's last, its request unread)
        was no open connection yet, and its request was counted after ``settled`` returned.
        Connections are accepted in the order they came, so by then every earlier one is.
        """
        runner = self.sim._runner
        assert runner is not None
        server = runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within

        async def until(done: Callable[[], bool], what: Callable[[], str]) -> None:
            while not done():
                if loop.time() >= deadline:
                    raise TimeoutError(f"{what()} after {within} s")
                await asyncio.sleep(0.005)

        _, marker = await asyncio.wait_for(
            asyncio.open_connection(self.sim.host, self.sim.port), within
        )
        mine = marker.get_extra_info("sockname")
        try:
            await until(
                lambda: any(
                    h.transport is not None and h.transport.get_extra_info("peername") == mine
                    for h in server.connections
                ),
                lambda: "the simulator did not accept a connection",
            )
        finally:
            marker.close()
        await until(
            lambda: not server.connections,
            lambda: f"{len(server.connections)} connection(s) open",
        )

    def hold(self, after: int, route: str | None = None) -> Held:
        """Hold every ``/v1`` request (of ``route`` alone, ``"GET /v1/customers"``, if given)
        after the first ``after`` until :meth:`Held.release`: see :class:`Held`."""
        return Held(self, after, route)

    def rows(self) -> list[dict[str, Any]]:
        def rows() -> list[dict[str, Any]]:
            return [r for r in map(self.sim.customer, self.sim.customer_ids()) if r is not None]

        return self.call(rows)

    def ids(self) -> list[int]:
        return self.call(self.sim.customer_ids)


class Held:
    """The simulator's requests held after the first ``after``, until :meth:`release`.

    What a test does to a command "in the middle of its work" (a signal, a kill, a second
    command) then lands there however late the test's thread runs: the command cannot end
    while its next request is held. A window of simulated latency alone (30 pages at 20 ms:
    0.7 s after the fifth) was missed whenever a loaded machine ran the test's thread late,
    and the command had ended first (exit 0, "exported 1500 customers"). Released once a
    signal is sent (pending, it is handled before the command's next step), or once the
    command has ended.
    """

    def __init__(self, served: ServedSimulator, after: int, route: str | None) -> None:
        self._served = served
        self.reached = threading.Event()  # set once a request is held
        self._open = False
        self._waiting: list[asyncio.Event] = []  # on the simulator's loop alone
        left = after

        async def hold(request: Any) -> None:
            nonlocal left
            resource = request.match_info.route.resource
            path = resource.canonical if resource is not None else request.path
            if self._open or not request.path.startswith("/v1/"):
                return
            if route is not None and f"{request.method} {path}" != route:
                return
            if left > 0:
                left -= 1
                return
            answer = asyncio.Event()
            self._waiting.append(answer)
            self.reached.set()
            await answer.wait()

        served.call(served.sim.on_request, hold)

    def wait(self, proc: subprocess.Popen[Any] | None = None, within: float = TIMEOUT) -> None:
        """Return once a request is held (the command, ``proc``, still running)."""
        deadline = time.monotonic() + within
        while not self.reached.wait(0.05):
            assert proc is None or proc.poll() is None, "the command ended before a request"
            assert time.monotonic() < deadline, f"no request held in {within} s"

    def release(self) -> None:
        """Answer the held requests, and every later one at once."""

        def release() -> None:
            self._open = True
            waiting, self._waiting = self._waiting, []
            for answer in waiting:
                answer.set()

        self._served._loop.call_soon_threadsafe(release)


def serve(customers: int = CUSTOMERS) -> Iterator[ServedSimulator]:
    """The body of a test file's ``served`` fixture: a simulator, stopped whatever happens."""
    server = ServedSimulator(customers, seed=5)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def base_env(cache: Path) -> dict[str, str]:
    """The environment without DM Hub settings; tokens cached under ``cache`` (never ~/.cache)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMHUB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["XDG_CACHE_HOME"] = str(cache)
    return env


def served_env(served: ServedSimulator, cache: Path) -> dict[str, str]:
    """The environment of a command that talks to ``served``."""
    return {
        **base_env(cache),
        "DMHUB_BASE_URL": served.sim.url,
        "DMHUB_APP_ID": APP_ID,
        "DMHUB_SECRET": SECRET,
    }


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dmhub_async.cli", *args]


def run_cli(
    *args: str, env: dict[str, str], cwd: Path, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cli_command(*args),
        env=env,
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        check=False,
    )
    # Whatever happened: no traceback, and never the secret.
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
    return result


def cli_in_process(
    capsys: pytest.CaptureFixture[str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``main(args)`` run in this process, its output read through pytest's ``capsys``, with
    ``run_cli``'s checks: for a command that ends before it sends anything (a refusal), where
    a new interpreter (a second or more on a busy machine) adds nothing a test asserts. The
    environment and the directory are the ``in_process`` fixture's."""
    from dmhub_async.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert SECRET not in out + err
    return subprocess.CompletedProcess(["dmhub-async", *args], code, out, err)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dmhub-async")
    assert "error" in lines[0]
    for word in words:
        assert word in lines[0]


def jsonl_ids(path: Path) -> list[int]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["id"] for line in fh]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def assert_once_each(ids: list[int], expected: list[int]) -> None:
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert sorted(ids) == sorted(expected)


@contextlib.contextmanager
def simulator_process(*args: str, cwd: Path) -> Iterator[dict[str, str]]:
    """``dmhub-async simulate --port 0 ARGS`` in its own process; yields its DMHUB_* settings."""
    server = subprocess.Popen(
        cli_command("simulate", "--port", "0", *args),
        env=base_env(cwd / "cache"),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: queue.Queue[str] = queue.Queue()
        assert server.stdout is not None
        stdout = server.stdout
        reader = threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True)
        reader.start()
        settings: dict[str, str] = {}
        while "DMHUB_SECRET" not in settings:
            line = lines.get(timeout=TIMEOUT).strip()
            key, _, value = line.partition("=")
            if key.startswith("DMHUB_"):
                settings[key] = value
        yield settings
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
