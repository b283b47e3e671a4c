"""Helpers of the sharded-export tests: a simulator process, and reading an export back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from dmhub_async import DMHubClient, RedisTokenStore
from dmhub_async.shards import Manifest, export_sharded
from dmhub_async.shards._run import prepare

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@attrs.frozen
class SimProcess:
    url: str
    app_id: str
    secret: str
    proc: subprocess.Popen[str]

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_sim/state", timeout=60) as answer:
            data: dict[str, Any] = json.load(answer)
        return data

    def mutate(self, inserts: int = 0, deletes: int = 0) -> None:
        request = urllib.request.Request(
            f"{self.url}/_sim/mutate?inserts={inserts}&deletes={deletes}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=60):
            pass

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a CLI or worker process that talks to this simulator."""
        return child_env(
            **{
                "DMHUB_BASE_URL": self.url,
                "DMHUB_APP_ID": self.app_id,
                "DMHUB_SECRET": self.secret,
                **extra,
            }
        )


@contextmanager
def sim_process(customers: int, *, latency_ms: float = 0, skew: float = 0) -> Iterator[SimProcess]:
    """The simulator in a process of its own, until the block ends."""
    command = [
        sys.executable,
        "-m",
        "dmhub_async.testing._control",
        f"--customers={customers}",
        f"--latency-ms={latency_ms}",
        f"--skew={skew}",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert proc.stdout is not None
        url, app_id, secret = proc.stdout.readline().split()
        yield SimProcess(url, app_id, secret, proc)
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


#: A worker as `dmhub-async worker` runs one, with a short heartbeat so a kill is seen quickly.
WORKER = (
    "import sys; from dmhub_async.shards._queue import worker; "
    "worker(sys.argv[1], heartbeat=0.5, takeover=3).run()"
)


@contextmanager
def queue_workers(
    env: dict[str, str], redis_url: str, n: int, script: str = WORKER
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` queue workers (``script``, :data:`WORKER` by default) of ``redis_url``, stopped
    (killed if need be) after."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, redis_url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def exported_ids(directory: Path) -> list[int]:
    """Every customer id in the parts of a sharded JSONL export, repeats kept."""
    ids = []
    for part in sorted(directory.glob("part-*.jsonl")):
        with part.open("rb") as fh:
            ids.extend(json.loads(line)["id"] for line in fh)
    return ids


#: The file the first worker of child_dying_mid_report creates before it dies (an env variable,
#: so that the spawned workers see it).
DIE_FLAG = "DMHUB_TEST_DIE_FLAG"


def child_dying_mid_report(
    settings: Any, directory: str, fmt: str, tasks: Any, events: Any
) -> None:
    """A worker process (``_local._child``'s stand-in) of which the first one takes its shard
    and dies halfway through sending a report, as SIGKILL can leave it; the others are real."""
    from dmhub_async.shards import _local

    try:
        os.close(os.open(os.environ[DIE_FLAG], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        _local._child(settings, directory, fmt, tasks, events)
        return
    tasks.get()
    # A message's header says 1,000 bytes; 10 of them are written, and then the worker is gone.
    os.write(events.fileno(), (1000).to_bytes(4, "big") + b"0123456789")
    os._exit(1)


def child_dying_on_shard_zero(
    settings: Any, directory: str, fmt: str, tasks: Any, events: Any
) -> None:
    """A worker process (``_local._child``'s stand-in) that dies whenever it is handed shard 0
    (a shard whose export kills its worker every time: out of memory, say); real otherwise."""
    from dmhub_async.shards import _local

    first = tasks.get()
    if first is not None and first["shard"]["index"] == 0:
        os._exit(1)

    class Again:
        """``tasks`` with the task already taken put back in front."""

        def __init__(self) -> None:
            self.taken = [first]

        def get(self, timeout: float | None = None) -> Any:
            return self.taken.pop() if self.taken else tasks.get(timeout=timeout)

    _local._child(settings, directory, fmt, Again(), events)


async def stopped_mid_way(dm: DMHubClient, out: Path, shards: int, after: int) -> None:
    """A sharded export of ``dm``'s customers to ``out`` stopped (cancelled, as Ctrl-C stops
    the CLI's) once ``after`` customers are written and every shard has written a page: its
    shards' checkpoints kept.

    Every shard's: on a loaded machine one shard had written nothing when the others' pages
    reached ``after``. It had no part, which a merge says "is missing: left out", and the
    tests that count each shard's "stopped" (or "running") in a merge's warnings found 3 of 4.
    """
    written = asyncio.Event()
    checkpoints = [out / f"part-{index:05d}.jsonl.ckpt" for index in range(shards)]

    def on_total(done: int, planned: int | None) -> None:
        if done >= after and all(checkpoint.exists() for checkpoint in checkpoints):
            written.set()

    running = asyncio.ensure_future(
        export_sharded(
            dm, out, shards, page_size=10, concurrency=1, progress=False, on_total=on_total
        )
    )
    await asyncio.wait_for(written.wait(), 60)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert_parts_hold_their_checkpoints(out)


def assert_parts_hold_their_checkpoints(out: Path) -> None:
    """Each part in ``out`` holds at least the bytes its checkpoint says were written (a
    stopped export's part was cut back to the checkpoint before, the commit of its last page
    going on meanwhile: a page short)."""
    for checkpoint in out.glob("part-*.ckpt"):
        covered = json.loads(checkpoint.read_bytes())["bytes"]
        part = checkpoint.with_suffix("")
        assert part.stat().st_size >= covered, (part.name, part.stat().st_size, covered)


class QuietRedis:
    """The Redis of a job's context that a job's progress is sent to, and dropped."""

    async def set(self, *args: object, **kwargs: object) -> None:
        pass

    async def hset(self, *args: object) -> None:
        pass

    async def expire(self, *args: object) -> None:
        pass


async def planned(sim: SimProcess, redis: Any, out: Path, shards: int, **filters: Any) -> Manifest:
    """The plan of a sharded export in ``out``, made as the CLI makes it (the token in
    ``redis``, a test's RedisServer)."""
    store = RedisTokenStore(redis.url)
    try:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url, token_store=store) as dm:
            return await prepare(dm, out, shards, **filters)
    finally:
        await store.aclose()
