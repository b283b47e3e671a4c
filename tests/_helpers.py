"""Constants and helpers shared by the tests (imported, not fixtures)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import operator
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

BASE = "https://api.dmhub.test"
CUSTOMER = {"id": 1, "name": "x"}


class Int64:
    """An integer of a class of its own, as numpy's ``int64`` is (an id or a page size read
    from a data frame): no int subclass, but an integer to Python through ``__index__``
    (numbers.Integral's own way), ordered and hashed by its value."""

    def __init__(self, value: int) -> None:
        self._value = value

    def __index__(self) -> int:
        return self._value

    def __lt__(self, other: object) -> bool:
        return self._value < operator.index(other)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return hasattr(other, "__index__") and self._value == operator.index(other)  # type: ignore[arg-type]

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"_Int64({self._value})"


def users_environ() -> dict[str, str]:
    """This process's environment as a user's shell has it: without the variables pytest-xdist
    sets in its workers (``PYTEST_XDIST_WORKER``...), which a pytest started from a test would
    read as its own (pytest-benchmark then warns, an error under ``-W error``)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}


def url(path: str, base: str = BASE) -> re.Pattern[str]:
    """A pattern for ``base + path`` with any query string: aioresponses matches on it."""
    return re.compile("^" + re.escape(base + path) + r"(\?.*)?$")


def hypothesis_profile(environ: Mapping[str, str]) -> str:
    """The hypothesis profile for this run: ``ci`` (derandomized, no database) when CI is set.

    Property tests must not fail at random in CI: there every run draws the same examples, and
    anything found at random locally becomes an ``@example``.
    """
    return "ci" if environ.get("CI", "").lower() not in ("", "0", "false") else "default"


def loop_runs_meanwhile(loop: asyncio.AbstractEventLoop, what: str) -> None:
    """Called from blocking work (a stalled disk, a full pipe): fails within 10 s unless the
    event loop ``loop`` runs meanwhile, that is unless the work is on a thread of its own."""
    ran = threading.Event()
    loop.call_soon_threadsafe(ran.set)
    assert ran.wait(10), f"the event loop stood still while {what}"


class IdNeedingTheLoop(int):
    """A customer id that, read as text or a plain int (as an id list is joined and split for
    its URLs), fails within 10 s unless the event loop runs meanwhile."""

    loop: asyncio.AbstractEventLoop

    def __str__(self) -> str:
        loop_runs_meanwhile(self.loop, "a long id_list was joined and split")
        return int.__repr__(self)

    def __int__(self) -> int:
        loop_runs_meanwhile(self.loop, "a long id_list was joined and split")
        return int.__int__(self)


def quoted_masked_lengths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the texts Redis's words are looked at for a quoted password in (the
    redaction's ``_quoted_masked``), one a look, as they are looked at from now on."""
    import dmhub_async._redact as redact_module

    looked_at: list[int] = []
    quoted_masked = redact_module._quoted_masked

    def counted(text: str, sent: str) -> str:
        looked_at.append(len(text))
        return quoted_masked(text, sent)

    monkeypatch.setattr(redact_module, "_quoted_masked", counted)
    return looked_at


def lock_files_cannot_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """The output's directory made read-only mid-run: its lock files can no longer be removed
    (what unlink says in a directory without write permission, where chmod binds: not root)."""
    unlink = Path.unlink

    def refuse_locks(path: Path, missing_ok: bool = False) -> None:
        if path.name.endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse_locks)


def temporary_files_cannot_be_made(monkeypatch: pytest.MonkeyPatch, hidden: Path | str) -> None:
    """A full directory: every ``tempfile.mkstemp`` fails with ENOSPC, naming ``hidden``, the
    temporary file it would have made (the name an error should not give the user)."""

    def full(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device", str(hidden))

    monkeypatch.setattr(tempfile, "mkstemp", full)


def files_made_as_the_umask_changes(monkeypatch: pytest.MonkeyPatch, directory: Path) -> list[int]:
    """The modes of files that another thread of the process creates, with a plain ``open()``,
    at each moment the umask is changed (what a thread writing a file of its own then gets).

    The umask is the process's, every thread's: set to read it and set back, it was wider for
    that moment, and a file an application's other thread made then was readable by others.
    """
    import os

    made: list[int] = []
    umask = os.umask

    def changed(mask: int) -> int:
        before = umask(mask)
        path = directory / f"meanwhile-{len(made)}"
        with open(path, "w"):  # a plain open(), as another thread would
            pass
        made.append(path.stat().st_mode & 0o777)
        path.unlink()
        return before

    monkeypatch.setattr(os, "umask", changed)
    return made


@contextlib.contextmanager
def umask_watched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[int]]:
    """Under umask 077, the modes of the files another thread creates each time the umask is
    changed within (:func:`files_made_as_the_umask_changes`): each must be private."""
    import os

    meanwhile = tmp_path / "meanwhile"
    meanwhile.mkdir()
    set_umask = os.umask
    umask = set_umask(0o077)
    try:
        yield files_made_as_the_umask_changes(monkeypatch, meanwhile)
    finally:
        set_umask(umask)


async def two_processes_take_turns(stores: list[Any], prepare: Any = None) -> tuple[list[Any], int]:
    """Two clients, each with a token store of its own on one file or Redis (as two processes
    have: two file locks on one file), take turns at 5 calls each against a simulator (given
    to ``prepare`` first, if given): what each call gave (a count or an error), and the tokens
    the simulator issued."""
    from dmhub_async import DMHubClient, DMHubError
    from dmhub_async.testing import DMHubSimulator

    async with DMHubSimulator(customers=3) as sim:
        if prepare is not None and asyncio.iscoroutine(prepared := prepare(sim)):
            await prepared
        clients = [
            DMHubClient(sim.app_id, sim.secret, base_url=sim.url, token_store=store)
            for store in stores
        ]
        try:
            outcomes: list[Any] = []
            for _ in range(5):
                for dm in clients:
                    try:
                        outcomes.append(await dm.customers.count())
                    except DMHubError as err:
                        outcomes.append(err)
        finally:
            for dm in clients:
                await dm.aclose()
        return outcomes, sim.counters.tokens_issued


async def refused_for_good(stores: list[Any]) -> str:
    """:func:`two_processes_take_turns` with a store no wait mends: every call refused with
    ``TokenStoreError(unsafe=True)``, no token fetched (each fetched around the store revoked
    the other's); the first refusal's message."""
    from dmhub_async import TokenStoreError

    outcomes, issued = await two_processes_take_turns(stores)
    assert issued == 0
    assert all(isinstance(outcome, TokenStoreError) for outcome in outcomes), outcomes
    assert all(outcome.unsafe for outcome in outcomes)
    return str(outcomes[0])


@contextlib.contextmanager
def a_worker(queue: str, env: dict[str, str], cwd: Path | None = None) -> Iterator[list[str]]:
    """A ``dmhub-async worker`` on ``queue`` for the block; what it wrote to standard error,
    once stopped, in the list it yields."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "dmhub_async", "worker", "--redis", queue],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    said: list[str] = []
    try:
        yield said
    finally:
        worker.terminate()
        said.append(worker.communicate(timeout=30)[1])


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` (an ``aiohttp.web.Application``) served on 127.0.0.1 for the block: its base URL."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


#: A child calling one of the library's exports with the path it is given, on a client of
#: ``base_url``, printing its InvalidRequestError.
_UNENTERABLE_CHILD = """
import asyncio, sys
from dmhub_async import DMHubClient, InvalidRequestError
from dmhub_async.export import export_customers
from dmhub_async.shards import export_sharded, merge

call, path, base_url = sys.argv[1:]

async def run() -> None:
    async with DMHubClient("app", "s3cr3t-app-secret", base_url=base_url) as dm:
        try:
            if call == "export_customers":
                await export_customers(dm, path, progress=False)
            elif call == "export_sharded":
                await export_sharded(dm, path, 2, progress=False)
            else:  # merge, into a file beside the run
                merge(path, "merged.jsonl")
        except InvalidRequestError as err:
            print(f"refused: {err}")

asyncio.run(run())
"""


def run_unprivileged(
    command: list[str], locked: Path, *, mode: int = 0, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``command`` run with the directory ``locked`` made unenterable (mode 000; read-only
    with ``mode=0o555``), as a user for whom permission bits hold: as root (who passes them),
    with the capabilities that do dropped by setpriv; skipped where neither can be had, or
    where ``locked`` can still be listed and written to. ``kwargs``: subprocess.run's."""
    import shutil

    if sys.platform == "win32":
        pytest.skip("POSIX permission bits")
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root, and no setpriv to drop the capabilities that pass permission bits")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    within = str(locked / ".probe")
    probe = (
        f"import os, sys\ntry:\n    os.listdir({str(locked)!r})\n"
        f"    os.mkdir({within!r})\n    os.rmdir({within!r})\n"
        "except PermissionError:\n    sys.exit(3)"
    )
    locked.chmod(mode)
    try:
        if subprocess.run([*prefix, sys.executable, "-c", probe], timeout=60).returncode != 3:
            pytest.skip("permission bits do not bind this user here")
        return subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=60, check=False, **kwargs
        )
    finally:
        locked.chmod(0o700)


def export_under_unenterable(call: str, locked: Path, path: Path, mode: int = 0) -> str:
    """What ``call`` (``export_customers``, ``export_sharded`` or ``merge``, into
    ``merged.jsonl`` beside ``locked``) of ``path``, under (or at) the directory ``locked``
    made unenterable (or read-only: ``mode``), said (:func:`run_unprivileged`). Its client's
    address is a port bound by no server: anything sent fails as a connection error, not the
    refusal."""
    import socket

    with socket.socket() as unserved:  # bound, never listening: nothing answers there
        unserved.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{unserved.getsockname()[1]}"
        # This checkout's package, whatever the interpreter has installed.
        repo = str(Path(__file__).resolve().parent.parent)
        python_path = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
        done = run_unprivileged(
            [sys.executable, "-c", _UNENTERABLE_CHILD, call, str(path), base_url],
            locked,
            mode=mode,
            cwd=locked.parent,
            env={**os.environ, "PYTHONPATH": python_path},
        )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
