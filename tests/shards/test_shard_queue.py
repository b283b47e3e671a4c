"""Shards on machines through arq: real redis-server, real worker processes, one killed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from _redis import RedisServer, collector_paused
from shard_support import (
    WORKER,
    QuietRedis,
    SimProcess,
    exported_ids,
    planned,
    queue_workers,
    sim_process,
)

from dmhub_async import (
    AuthenticationError,
    DMHubClient,
    DMHubError,
    InvalidRequestError,
    RedisTokenStore,
)
from dmhub_async.shards import MANIFEST_NAME, Manifest, Shard, ShardOutcome
from dmhub_async.shards._queue import (
    export_id_of,
    job_id_of,
    run_on_queue,
    worker,
    worker_credentials_hint,
)
from dmhub_async.shards._run import prepare

pytestmark = pytest.mark.timeout(240)


@contextmanager
def workers(
    sim: SimProcess, redis_url: str, n: int, **env: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    with queue_workers(sim.env(**env), redis_url, n) as procs:
        yield procs


async def followed_until_stopped(
    redis: RedisServer,
    out: Path,
    manifest: Manifest,
    on_total: Callable[[int, int | None], None],
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    """``run_on_queue`` of ``manifest`` with no worker, its progress heard by ``on_total``,
    until ``sleep`` raises :class:`_Stop` (a poll's wait): a shard's job that never ends."""
    with pytest.raises(_Stop):
        await asyncio.wait_for(
            run_on_queue(redis.url, out, manifest, progress=False, on_total=on_total, sleep=sleep),
            30,
        )


async def wait_for_rows(redis: RedisServer) -> None:
    """Until some shard has reported rows written (a worker is mid-shard)."""
    for _ in range(1200):
        keys = redis.command("KEYS", "dmhub_async:export:*")
        if keys.startswith("*") and keys != "*0":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no shard reported progress")


def _job_context(client: DMHubClient) -> dict[str, Any]:
    """What arq hands a shard's job (the worker's start-up fills it), its Redis a quiet one."""
    return {
        "redis": QuietRedis(),
        "job_id": "j",
        "client": client,
        "pending_progress": set(),
        "heartbeat": 10.0,
        "takeover": 30.0,
        "sleep": _no_wait,  # the worker's waits (for the coordinator's mark), not waited
    }


async def _no_wait(_: float) -> None:
    """A sleep that returns at once."""


def _recorded_failure(error: BaseException) -> ShardOutcome:
    """A shard's outcome as the coordinator records a job that failed with ``error``, sent
    through pickle as arq sends a failed job's error."""
    import pickle

    from dmhub_async.shards import _queue

    [outcome] = Manifest.new(
        [Shard(0, None, None)], fmt="jsonl", base_url="u", app_id="a", filters={}
    ).shards
    _queue._record(
        outcome, types.SimpleNamespace(success=False, result=pickle.loads(pickle.dumps(error)))
    )
    return outcome


def _planned(directory: Path) -> str:
    """``directory`` holding the manifest of plan "p" (a worker checks a job's directory is
    its export's: a directory of its own at the coordinator's path exported the shard there)."""
    (directory / MANIFEST_NAME).write_text('{"plan_id": "p"}', encoding="utf-8")
    return str(directory)


def _shard_task(sim: Any, directory: Path) -> dict[str, Any]:
    """The job a coordinator enqueues for the one shard of ``sim``'s whole window."""
    from dmhub_async.shards import _queue

    shard = Shard(0, None, None)
    return {
        "job_version": _queue.job_version(shard),
        "shard": shard.to_dict(),
        "directory": _planned(directory),
        "format": "jsonl",
        "page_size": 100,
        "concurrency": 2,
        "export_id": "e",
        "plan_id": "p",
        "base_url": sim.url,
        "app_id": sim.app_id,
    }


async def test_shards_that_end_between_two_polls_are_recorded_by_one_manifest_write(
    tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The coordinator wrote the whole manifest once for each shard it found ended, one after
    # another, before it polled again: a coordinator taking up 1,000 shards its workers had
    # ended (670 KB a write, 26 ms) spent 26 s writing before it looked at the queue again;
    # 4,096 shards, 233 s. The shards a poll finds ended are recorded in one write.
    from dmhub_async.shards import _manifest

    out = tmp_path / "out"
    written: list[list[str]] = []
    replace_file = _manifest.replace_file

    def counted(path: Path, data: bytes, **options: Any) -> None:
        if path.name == MANIFEST_NAME:
            written.append([s["status"] for s in json.loads(data)["shards"]])
        replace_file(path, data, **options)

    with sim_process(400) as sim:
        manifest = await planned(sim, redis, out, 8)
        polls = 0

        async def every_shard_ended_meanwhile(_: float) -> None:
            nonlocal polls
            polls += 1
            if polls == 1:  # a worker exports every shard while the coordinator waits
                burst = worker(
                    redis.url,
                    burst=True,
                    handle_signals=False,
                    client={"app_id": sim.app_id, "secret": sim.secret, "base_url": sim.url},
                )
                try:
                    await asyncio.wait_for(burst.main(), 60)
                finally:
                    await _close_worker(burst)

        monkeypatch.setattr(_manifest, "replace_file", counted)
        done = await run_on_queue(
            redis.url, out, manifest, progress=False, sleep=every_shard_ended_meanwhile
        )

    assert done.complete
    assert sorted(exported_ids(out)) == sorted(set(exported_ids(out)))
    assert len(exported_ids(out)) == 400
    # The 8 shards found ended by one poll (was 8 writes, then the end); the end's write
    # would be the same bytes, and is not made.
    assert written == [["complete"] * 8]


#: A queue worker that kills itself (SIGKILL) once its shard has written its first page.
WORKER_KILLED_MID_SHARD = """
import os, signal, sys
from dmhub_async.shards import _queue

exported = _queue.export_shard

async def killed_mid_way(*args, on_progress, **kwargs):
    def progress(done):
        on_progress(done)
        if done.exported:
            os.kill(os.getpid(), signal.SIGKILL)

    return await exported(*args, on_progress=progress, **kwargs)

_queue.export_shard = killed_mid_way
_queue.worker(sys.argv[1], heartbeat=0.5, takeover=3).run()
"""


@pytest.mark.parametrize("churn", [False, True], ids=["still", "inserts-and-deletes"])
async def test_a_worker_killed_mid_shard_is_taken_over_and_nothing_is_lost(
    tmp_path: Path, redis: RedisServer, churn: bool
) -> None:
    # The worker is killed once its shard has written a page, whatever the machine's speed
    # (was: 200,000 customers, and a kill as some worker first wrote, near pytest's timeout
    # under load); the others start after, and one of them takes its shard over.
    out = tmp_path / "out"
    with sim_process(20_000, latency_ms=2) as sim:
        manifest = await planned(sim, redis, out, 16)
        with queue_workers(sim.env(), redis.url, 1, WORKER_KILLED_MID_SHARD) as killed:
            running = asyncio.ensure_future(
                run_on_queue(redis.url, out, manifest, progress=False, poll=0.2)
            )
            await asyncio.to_thread(killed[0].wait, 60)
            assert killed[0].returncode == -signal.SIGKILL
            if churn:
                sim.mutate(inserts=300, deletes=300)
            with workers(sim, redis.url, 3):
                if churn:
                    sim.mutate(inserts=300, deletes=300)
                manifest = await asyncio.wait_for(running, 180)
        state = sim.state()

    ids = exported_ids(out)
    assert len(ids) == len(set(ids)), "a customer exported twice"
    survivors = set(state["ids"])
    missing = survivors - set(ids)
    if churn:
        # Inserted ones land in the last, open-ended window; deleted ones may or may not appear.
        assert not missing
    else:
        assert set(ids) == survivors
        assert len(ids) == 20_000
    assert manifest.complete
    on_disk = Manifest.read(out)
    assert on_disk is not None
    assert on_disk.status() == "complete"
    assert state["tokens_issued"] <= 2


@pytest.mark.parametrize("marked", [False, True])
@pytest.mark.parametrize("loss", ["flushed", "restarted"])
async def test_jobs_lost_with_redis_mid_run_are_enqueued_again(
    tmp_path: Path, redis: RedisServer, loss: str, marked: bool
) -> None:
    # Redis flushed, or restarted without persistence, while shards were queued: their jobs
    # were gone, no worker had anything to take, and the coordinator waited for them for ever
    # with the shards "running" in the manifest. With the mark `export --queue` sets in its
    # token store (the queue's Redis), lost with the jobs: every job enqueued again was
    # refused by the workers as of "not the coordinator's token store", its shard failed.
    from dmhub_async.shards._queue import mark_token_store

    out = tmp_path / "out"
    with sim_process(20_000, latency_ms=2) as sim:
        manifest = await planned(sim, redis, out, 8)
        mark = await mark_token_store(redis.url) if marked else None
        with workers(sim, redis.url, 2):
            running = asyncio.ensure_future(
                run_on_queue(
                    redis.url,
                    out,
                    manifest,
                    progress=False,
                    poll=0.2,
                    takeover=3,
                    token_store_mark=mark,
                )
            )
            await wait_for_rows(redis)
            if loss == "flushed":
                redis.command("FLUSHALL")
            else:
                redis.kill()
                redis.start()
            try:
                manifest = await asyncio.wait_for(running, 120)
            finally:
                if mark is not None:
                    await mark.aclose()
        state = sim.state()

    assert manifest.complete, [s.error for s in manifest.shards if s.error]
    ids = exported_ids(out)
    assert len(ids) == len(set(ids)) == 20_000
    assert set(ids) == set(state["ids"])


async def test_jobs_an_earlier_run_left_queued_are_exported_after_its_mark_was_lost(
    tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `export --queue --token-store` stopped (Ctrl-C) with its jobs queued, which name its
    # mark; the token store's Redis restarted without its data (a cache's), the mark gone. The
    # rerun follows those jobs and set only its own mark: every worker refused each of them as
    # of "not the coordinator's token store", the same store blamed as another (4 of 4 failed).
    from _redis import redis_server

    from dmhub_async.shards import _queue

    monkeypatch.setattr(_queue, "MARK_LOOKED_FOR", 0.0)  # refused at the first look: no wait
    out = tmp_path / "out"
    (tmp_path / "tokens").mkdir()
    with sim_process(400) as sim, redis_server(tmp_path / "tokens") as tokens:
        manifest = await planned(sim, redis, out, 4)
        first = await _queue.mark_token_store(tokens.url)
        assert first is not None

        async def stop(_: float) -> None:
            raise _Stop

        try:
            with pytest.raises(_Stop):  # stopped, its jobs left on the queue
                await asyncio.wait_for(
                    run_on_queue(
                        redis.url, out, manifest, progress=False, sleep=stop, token_store_mark=first
                    ),
                    30,
                )
        finally:
            await first.aclose()
        assert redis.command("ZCARD", "arq:queue") == ":4"
        tokens.kill()
        tokens.start()  # its data gone
        manifest = Manifest.read(out)
        assert manifest is not None
        second = await _queue.mark_token_store(tokens.url)
        assert second is not None
        store = RedisTokenStore(tokens.url)
        polls = 0
        marks_set: list[int] = []

        async def served(_: float) -> None:
            nonlocal polls
            polls += 1
            if polls == 1:  # a worker keeping the token in the coordinator's store
                stats = tokens.command("INFO", "commandstats")
                marks_set.append(int(stats.partition("cmdstat_set:calls=")[2].split(",")[0]))
                burst = worker(
                    redis.url,
                    burst=True,
                    handle_signals=False,
                    client={
                        "app_id": sim.app_id,
                        "secret": sim.secret,
                        "base_url": sim.url,
                        "token_store": store,
                    },
                )
                try:
                    await asyncio.wait_for(burst.main(), 60)
                finally:
                    await _close_worker(burst)

        try:
            done = await asyncio.wait_for(
                run_on_queue(
                    redis.url, out, manifest, progress=False, sleep=served, token_store_mark=second
                ),
                90,
            )
        finally:
            await second.aclose()
            await store.aclose()
        state = sim.state()

    assert [s.error for s in done.shards] == [None] * 4
    assert done.complete
    assert sorted(exported_ids(out)) == sorted(state["ids"])
    # Its own mark set, then both as the first job named the earlier one, then both at the
    # poll: not again for each job naming the same (a rerun of 1,000 shards, 500,000 SETs).
    assert marks_set == [1 + 2 + 2]


async def test_a_shard_whose_job_expired_in_the_queue_is_enqueued_again(
    tmp_path: Path, redis: RedisServer
) -> None:
    # arq drops a queued job's data a day after it was due: with more shards than workers
    # for that long, the last ones were failed by the worker that took them ("job expired")
    # without being tried. A flush between a worker's pick and its read did the same.
    out = tmp_path / "out"
    with sim_process(300) as sim, contextlib.ExitStack() as stack:
        manifest = await planned(sim, redis, out, 1)
        job_key = "arq:job:" + job_id_of(export_id_of(out), manifest.plan_id, 0)
        kept_for: list[int] = []

        async def expire_then_serve(_: float) -> None:
            if not kept_for:
                kept_for.append(int(redis.command("PTTL", job_key).lstrip(":")))
                redis.command("DEL", job_key)  # as its expiry does
                stack.enter_context(workers(sim, redis.url, 1))
            await asyncio.sleep(0.1)

        manifest = await asyncio.wait_for(
            run_on_queue(
                redis.url, out, manifest, progress=False, sleep=expire_then_serve, takeover=3
            ),
            60,
        )
        state = sim.state()

    assert manifest.complete, manifest.shards[0].error
    assert sorted(exported_ids(out)) == sorted(state["ids"])
    assert kept_for[0] > 2 * 86_400_000  # a queue may hold a shard for longer than a day


async def test_a_shard_whose_job_lost_its_place_in_the_queue_is_enqueued_again(
    tmp_path: Path, redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The queue's sorted set lost, the job's data kept (the set evicted under an allkeys-
    # maxmemory-policy, or deleted): arq enqueues no job whose data is still there, so the
    # coordinator said "enqueued again" at every poll, for ever, and no worker took the shard.
    out = tmp_path / "out"
    caplog.set_level("WARNING", logger="dmhub_async")
    with sim_process(300) as sim, contextlib.ExitStack() as stack:
        manifest = await planned(sim, redis, out, 1)
        lost: list[str] = []

        async def lose_the_queue_then_serve(_: float) -> None:
            if not lost:  # the first poll
                lost.append(redis.command("DEL", "arq:queue"))  # as its eviction does
                stack.enter_context(workers(sim, redis.url, 1))
            await asyncio.sleep(0.1)

        manifest = await asyncio.wait_for(
            run_on_queue(
                redis.url,
                out,
                manifest,
                progress=False,
                sleep=lose_the_queue_then_serve,
                takeover=1,
            ),
            30,
        )
        state = sim.state()

    assert lost == [":1"]
    assert manifest.complete, manifest.shards[0].error
    assert sorted(exported_ids(out)) == sorted(state["ids"])
    said = [r.getMessage() for r in caplog.records if "enqueued again" in r.getMessage()]
    assert said == ["shard 0: its job is gone from the queue's Redis: enqueued again"]


async def test_a_coordinator_whose_clock_is_ahead_has_its_shards_taken_at_once(
    tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # arq queues a job due at the enqueuer's clock, and a worker takes the jobs due by its
    # own: a coordinator 10 minutes ahead of its workers had them idle, alive and saying
    # nothing, for 10 minutes before the first shard began (an hour for an hour's skew).
    import arq.connections

    real = arq.connections.timestamp_ms
    monkeypatch.setattr(arq.connections, "timestamp_ms", lambda: real() + 600_000)
    out = tmp_path / "out"
    with sim_process(300) as sim:
        manifest = await planned(sim, redis, out, 2)
        with workers(sim, redis.url, 1):
            manifest = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=0.2), 60
            )
        state = sim.state()

    assert manifest.complete
    assert sorted(exported_ids(out)) == sorted(state["ids"])


async def test_a_coordinator_whose_redis_user_may_not_read_its_clock_enqueues_by_its_own(
    tmp_path: Path, redis: RedisServer
) -> None:
    # Jobs are due by the queue's Redis's clock (TIME): a coordinator whose ACL user was given
    # arq's commands alone must still export, its jobs due by its own clock as before.
    redis.command("ACL", "SETUSER", "queue", "on", ">queuepw", "~*", "&*", "+@all", "-time")
    url = f"redis://queue:queuepw@127.0.0.1:{redis.port}/0"
    out = tmp_path / "out"
    with sim_process(300) as sim:
        manifest = await planned(sim, redis, out, 2)
        with workers(sim, redis.url, 1):
            manifest = await asyncio.wait_for(
                run_on_queue(url, out, manifest, progress=False, poll=0.2), 60
            )
        state = sim.state()

    assert manifest.complete
    assert sorted(exported_ids(out)) == sorted(state["ids"])


@pytest.mark.parametrize("behind", [0, 600])
async def test_a_worker_whose_clock_is_behind_the_queues_says_so_as_it_starts(
    redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    behind: int,
) -> None:
    # A job is due by the queue's Redis's clock, and arq takes it once the worker's own clock
    # says it is due: a worker 10 minutes behind sat idle for 10 minutes, alive (its health
    # record there, so the coordinator waited too) and saying nothing.
    import arq.utils
    from redis.asyncio import Redis

    real = arq.utils.timestamp_ms  # time.time's, which arq's worker polls by
    monkeypatch.setattr(arq.utils, "timestamp_ms", lambda: real() - behind * 1000)
    settings = {"app_id": "a", "secret": "s", "base_url": "http://127.0.0.1:9"}
    arq_worker = worker(redis.url, handle_signals=False, client=settings)
    pool = Redis.from_url(redis.url)
    ctx: dict[str, Any] = {"redis": pool}
    try:
        with caplog.at_level("WARNING", logger="dmhub_async"):
            await arq_worker.on_startup(ctx)
    finally:
        await arq_worker.on_shutdown(ctx)
        await pool.aclose()

    said = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
    if behind:
        assert said == [
            "this machine's clock is 600 s behind the queue's Redis's: this worker takes each "
            "shard about 600 s after it is due (a worker goes by its own clock): set its clock "
            "right (NTP)"
        ]
    else:
        assert said == []


class _Stop(Exception):
    """Ends a coordinator's run where a test has seen what it wanted."""


@pytest.mark.parametrize("back", [True, False], ids=["restarted", "gone"])
async def test_a_queue_redis_gone_mid_run_is_waited_for_then_a_dmhub_error(
    tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch, back: bool
) -> None:
    # Restarted: workers wait about a minute for a Redis that went away (a restart, a
    # failover); the coordinator stopped at its next command, refused (or reset, when the
    # restart caught a command on its way: the suite's restart test failed so now and then),
    # and the export with it, the fleet still running.
    # Gone for good (past the tries, here cut to one): redis-py's own ConnectionError came out
    # of the coordinator (the CLI: a raw traceback).
    from dmhub_async.shards import _queue

    if not back:
        monkeypatch.setattr(_queue, "REDIS_RETRIES", 1)
    out = tmp_path / "out"
    manifest = Manifest.new(
        [Shard(0, None, None)], fmt="jsonl", base_url="http://127.0.0.1:1", app_id="a", filters={}
    )
    polls = 0

    async def sleep(_: float) -> None:
        nonlocal polls
        polls += 1
        if polls == 1:  # the job enqueued, no worker to take it: Redis goes away
            redis.kill()
            if back:  # for 0.3 s
                asyncio.get_running_loop().call_later(0.3, redis.start)
        elif back:  # Redis answered the poll after the restart
            raise _Stop

    run = run_on_queue(redis.url, out, manifest, progress=False, sleep=sleep)
    if back:
        with pytest.raises(_Stop):
            await asyncio.wait_for(run, 60)
        assert polls == 2  # it polled Redis after the restart, not stopped by it
        return
    with pytest.raises(
        DMHubError, match=r"^cannot reach the queue's Redis at redis://127\.0"
    ) as gone:
        await asyncio.wait_for(run, 60)
    # What to do next, which the docs say and the line did not: the run is not lost.
    assert str(gone.value).endswith(
        ": the manifest is written as it stands: rerun the same command once it is back"
    ), str(gone.value)
    on_disk = Manifest.read(out)
    assert on_disk is not None
    assert on_disk.status() == "incomplete"


@pytest.mark.skipif(
    sys.platform in ("win32", "darwin"), reason="a file system naming files in bytes alone"
)
async def test_a_queue_export_in_a_directory_not_utf8_is_exported_by_its_workers(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A directory named in bytes that are no UTF-8 (os.listdir()'s and the command line's
    # surrogateescape), which --workers and one process export: `--queue` died at once with a
    # raw "'utf-8' codec can't encode character '\udce9'", of the export's id.
    out = tmp_path / os.fsdecode(b"r\xe9sultats")
    with sim_process(400) as sim:
        manifest = await planned(sim, redis, out, 2)
        with workers(sim, redis.url, 1):
            manifest = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=0.2), 120
            )

    assert manifest.complete
    ids = exported_ids(out)
    assert len(ids) == len(set(ids)) == 400


@pytest.mark.skipif(
    sys.platform in ("win32", "darwin"), reason="a file system naming files in bytes alone"
)
def test_two_directories_not_utf8_are_two_exports_on_the_queue(tmp_path: Path) -> None:
    # The id names the export's keys in Redis (its jobs, its progress): read with their
    # undecodable bytes replaced, "r\xe9sultats" and "r\xe8sultats" had one id. A UTF-8
    # one's id is as releases before gave it.
    first = export_id_of(tmp_path / os.fsdecode(b"r\xe9sultats"))
    assert first != export_id_of(tmp_path / os.fsdecode(b"r\xe8sultats"))
    utf8 = tmp_path / "résultats"
    assert export_id_of(utf8) == hashlib.sha256(str(utf8).encode()).hexdigest()[:16]


async def test_a_new_export_in_a_directory_shows_none_of_the_old_ones_progress(
    tmp_path: Path, redis: RedisServer
) -> None:
    # The progress the workers report was kept in Redis (for a week) under the directory
    # alone: an export started again where an earlier one was counted the earlier one's
    # customers as its own from its first progress line (here 5,000 of the 0 planned) until
    # its own shards reported.
    from dmhub_async.shards._queue import export_id_of

    out = tmp_path / "out"
    out.mkdir()
    keys = f"dmhub_async:export:{export_id_of(out)}"
    redis.command("HSET", f"{keys}:progress", "0", "5000")  # as workers before plan ids left it
    redis.command("HSET", f"{keys}:0123456789abcdef:progress", "0", "5000")  # an earlier plan's
    manifest = Manifest.new(
        [Shard(0, None, None)], fmt="jsonl", base_url="http://127.0.0.1:1", app_id="a", filters={}
    )
    seen: list[int] = []

    async def stop(_: float) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await run_on_queue(
            redis.url,
            out,
            manifest,
            progress=False,
            on_total=lambda done, planned: seen.append(done),
            sleep=stop,
        )
    assert seen == [] or max(seen) == 0, seen


async def test_an_export_started_again_in_its_directory_never_takes_the_old_results(
    tmp_path: Path, redis: RedisServer
) -> None:
    out = tmp_path / "out"
    with sim_process(3_000) as sim:
        store = RedisTokenStore(redis.url)
        try:
            async with DMHubClient(
                sim.app_id, sim.secret, base_url=sim.url, token_store=store
            ) as dm:

                async def export(**filters: object) -> Manifest:
                    manifest = await prepare(dm, out, 3, **filters)
                    with workers(sim, redis.url, 2):
                        return await asyncio.wait_for(
                            run_on_queue(redis.url, out, manifest, progress=False, poll=0.1), 120
                        )

                assert (await export()).complete
                everyone = sorted(exported_ids(out))
                assert len(everyone) == 3_000

                # The same export, a part deleted since: its job's result no longer stands.
                (out / "part-00001.jsonl").unlink()
                assert (await export()).complete
                assert sorted(exported_ids(out)) == everyone

                # A new export where the old one was (its manifest deleted, the parts left): its
                # own jobs, not the old results, which Redis keeps for a week. Before, it was
                # "complete" at once with the old parts, or with none if they were deleted too.
                (out / "manifest.json").unlink()
                leads = await dm.customers.count(stage="lead")
                manifest = await export(stage="lead")
        finally:
            await store.aclose()
    assert manifest.complete
    assert len(list(out.glob("part-*.jsonl"))) == len(manifest.shards)
    assert len(exported_ids(out)) == manifest.exported == leads < 3_000


async def test_a_shard_that_fails_is_recorded_failed_and_exported_on_a_rerun(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A worker's shard failed with an APIError (here: the worker's secret is wrong, and the
    # planner's token is gone from the store). arq sends a failed job's error back pickled, and
    # an APIError could not be unpickled: the coordinator stopped on arq's
    # DeserializationError, and so did every rerun for the week Redis keeps the result.
    out = tmp_path / "out"
    with sim_process(600) as sim:
        manifest = await planned(sim, redis, out, 2)
        redis.command("FLUSHALL")
        with workers(sim, redis.url, 1, DMHUB_SECRET="not-this-secret"):
            failed = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=0.1), 120
            )
        assert [s.status for s in failed.shards] == ["failed", "failed"]
        assert all("40004" in (s.error or "") for s in failed.shards), failed.shards
        with workers(sim, redis.url, 1):
            again = await asyncio.wait_for(
                run_on_queue(redis.url, out, failed, progress=False, poll=0.1), 120
            )
        state = sim.state()
    assert again.complete
    assert sorted(exported_ids(out)) == sorted(state["ids"])


async def test_a_worker_of_another_service_on_the_same_redis_exports_nothing_of_its_own(
    tmp_path: Path, redis: RedisServer
) -> None:
    # Two environments (staging, production) sharing one Redis: a worker that exports from
    # the other one took the shard and wrote that service's customers into this export's part,
    # which the coordinator recorded complete.
    out = tmp_path / "out"
    with sim_process(300) as sim, sim_process(500) as other:
        manifest = await planned(sim, redis, out, 1)
        with workers(other, redis.url, 1):
            manifest = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=0.1), 120
            )
        theirs = set(other.state()["ids"])

    assert not manifest.complete
    assert "another export's" in (manifest.shards[0].error or ""), manifest.shards[0]
    assert not set(exported_ids(out)) & theirs


async def test_a_result_that_cannot_be_read_is_a_failed_shard_not_a_traceback(
    tmp_path: Path,
) -> None:
    # An error class of another version, say: the coordinator stopped on arq's
    # DeserializationError. Now the shard is failed (and a rerun enqueues it again).
    from arq.jobs import DeserializationError

    from dmhub_async.shards._queue import _record, _result_info, _usable

    class Unreadable:
        async def result_info(self) -> None:
            try:
                raise TypeError("__init__() missing 1 required keyword-only argument")
            except TypeError as err:
                raise DeserializationError("unable to deserialize job result") from err

    [outcome] = Manifest.new(
        [Shard(0, None, None)], fmt="jsonl", base_url="u", app_id="a", filters={}
    ).shards
    _record(outcome, await _result_info(Unreadable()))
    assert outcome.status == "failed"
    assert "could not be read" in (outcome.error or "")
    assert "missing 1 required" in (outcome.error or "")
    assert not await _usable(Unreadable(), tmp_path / "part-00000.jsonl", 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        # Taken, then every job failed renewing its in-progress mark (an OverflowError).
        {"heartbeat": 1, "takeover": float("inf")},
        {"heartbeat": float("nan")},
        {"heartbeat": 30, "takeover": 20},
        # Taken, then the worker took no job (0) or failed at its start (a str).
        {"max_jobs": 0},
        {"max_jobs": "2"},
        # Taken, then the worker failed at its start making the shared limit.
        {"rate_limit": 0},
        {"rate_limit": 1e300},
        {"rate_limit": 50.01},  # no window of whole seconds up to 60 holds it
        {"concurrency": 0},
        {"concurrency": 65},
        # Taken by truthiness: "false" (a setting read as text) was a burst worker, which
        # stopped as soon as the queue was empty, and arq took the signals of a program that
        # said it handles them.
        {"burst": "false"},
        {"handle_signals": "no"},
    ],
    ids=[
        "takeover inf",
        "heartbeat NaN",
        "heartbeat above takeover",
        "max_jobs 0",
        "max_jobs a str",
        "rate_limit 0",
        "rate_limit 1e300",
        "rate_limit 50.01",
        "concurrency 0",
        "concurrency 65",
        "burst a str",
        "handle_signals a str",
    ],
)
def test_a_worker_with_a_bad_setting_is_refused_when_made(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError, match=r"^worker\(\): "):
        worker("redis://127.0.0.1:1/0", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("char", ["/", "#", "?"])
def test_a_password_not_percent_encoded_is_said_so_not_shown(char: str) -> None:
    # "worker(): redis_url must be a URL such as redis://HOST:PORT/DB": the README says that a
    # password's /, #, ? or @ must be percent-encoded and that the error says so, as the token
    # store's does; the queue's (worker --redis, export --queue) said only that it was no URL.
    url = f"redis://:Hunter2{char}Redis@127.0.0.1:1/0"
    with pytest.raises(InvalidRequestError) as refused:
        worker(url)
    message = str(refused.value)
    assert message.startswith("worker(): redis_url must be a URL such as redis://HOST:PORT/DB")
    assert "a password's /, #, ? or @ must be percent-encoded: %2F, %23, %3F, %40" in message
    assert "Hunter2" not in message
    assert "Redis@" not in message


async def test_a_long_running_worker_keeps_no_progress_write_once_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every progress report (each page, at most twice a second) is written to Redis by a task
    # the job's context kept in a set until the worker shut down: a worker running for days
    # held one done task (about 0.7 KB) for every half second of every shard it ran.
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    class Redis:
        def __init__(self) -> None:
            self.progress: list[int] = []

        async def set(self, *args: object, **kwargs: object) -> None:
            pass

        async def hset(self, key: str, field: str, value: int) -> None:
            await asyncio.sleep(0)
            self.progress.append(value)

        async def expire(self, *args: object) -> None:
            pass

    monkeypatch.setattr(_queue, "_PROGRESS_EVERY", 0.0)  # a report for every page
    redis = Redis()
    async with (
        DMHubSimulator(customers=50) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        ctx = {
            "redis": redis,
            "job_id": "j",
            "client": dm,
            "pending_progress": set(),
            "heartbeat": 10.0,
            "takeover": 30.0,
        }
        task = {
            "shard": Shard(0, None, None).to_dict(),
            "directory": _planned(tmp_path),
            "format": "jsonl",
            "page_size": 10,
            "concurrency": 1,
            "export_id": "e",
            "plan_id": "p",
        }
        result = await _queue._export_shard_job(ctx, task)
        for _ in range(10):
            await asyncio.sleep(0)  # the last reports' writes end

    assert result["exported"] == 50
    assert redis.progress[:5] == [10, 20, 30, 40, 50]
    assert ctx["pending_progress"] == set()  # before: one done task for every report


async def test_a_percent_encoded_password_is_the_queues_as_it_is_the_token_stores(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A password holding `/`, `!` or `@` is written percent-encoded in a URL (the README says
    # so, and DMHUB_REDIS_PASSWORD is put in the URL so): RedisTokenStore and the shared limit
    # read it decoded, but arq took it as typed, so `dmhub-async worker` and `export --queue`
    # failed "cannot reach the queue's Redis ... AuthenticationError" with the right password.
    from urllib.parse import quote

    password = "Ab1/c!d@e f"
    redis.command("CONFIG", "SET", "requirepass", password)
    url = f"redis://:{quote(password, safe='')}@127.0.0.1:{redis.port}/0"
    manifest = Manifest.new(
        [Shard(0, None, None)], fmt="jsonl", base_url="http://127.0.0.1:1", app_id="a", filters={}
    )

    class Stop(Exception):
        pass

    async def stop(_: float) -> None:
        raise Stop

    with pytest.raises(Stop):  # enqueued and followed: connected with the password
        await asyncio.wait_for(
            run_on_queue(url, tmp_path / "out", manifest, progress=False, sleep=stop), 30
        )
    # A worker (on a queue of its own, database 1, which holds no job) starts.
    queued = worker(
        url.replace("/0", "/1"),
        burst=True,
        handle_signals=False,
        client={"app_id": "a", "secret": "s"},
    )
    try:
        await asyncio.wait_for(queued.main(), 30)  # its startup reached Redis
    finally:
        await _close_worker(queued)


async def test_a_worker_stops_cleanly_with_warnings_as_errors(redis: RedisServer) -> None:
    # arq closes its pool with redis-py's close(), deprecated (since redis-py 5.0.1) for
    # aclose(): under `python -W error` (a test suite's filterwarnings = error) every stop of
    # `dmhub-async worker` ended in a DeprecationWarning's traceback, exit 1, its Redis
    # connections left open.
    queued = worker(
        redis.url, burst=True, handle_signals=False, client={"app_id": "a", "secret": "s"}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            await asyncio.wait_for(queued.main(), 30)  # no job: it starts and ends at once
        finally:
            await queued.close()

    assert queued._pool is None  # closed all the way (the no_leaks fixture: its connections)


async def test_a_worker_stopped_as_a_job_records_its_end_closes_all_the_same(
    tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A busy `dmhub-async worker --rate-limit` whose Redis stayed away past its wait: its job
    # failed as the wait ended (the shared limit gives up with the worker's commands) and was
    # recording its end (arq's finish_job, shielded) as the worker stopped. arq's close
    # cancelled the job in that shield and gathered it: the worker ended in a 40-line
    # CancelledError traceback, not "cannot reach the queue's Redis", its shutdown skipped
    # ("Unclosed client session"). Here the end's record is held until the close is over.
    from arq.connections import ArqRedis
    from arq.worker import Worker

    from dmhub_async.shards import _queue

    recording, recorded = asyncio.Event(), asyncio.Event()

    async def finish_job(self: Any, *args: object) -> None:
        recording.set()
        await recorded.wait()

    monkeypatch.setattr(Worker, "finish_job", finish_job)
    client = {"app_id": "a", "secret": "s", "base_url": "http://127.0.0.1:1"}
    queued = worker(redis.url, handle_signals=False, client=client)
    shard = Shard(0, None, None)
    task = {"job_version": 1, "shard": shard.to_dict(), "directory": str(tmp_path / "gone")}
    pool = ArqRedis.from_url(redis.url)
    try:
        await pool.enqueue_job(_queue.JOB_NAME, task, _job_id="j")  # it fails at once
    finally:
        await pool.aclose()
    running = asyncio.ensure_future(queued.async_run())
    try:
        await asyncio.wait_for(recording.wait(), 30)
        running.cancel()  # its main has ended (as when its wait for Redis is over)
        await asyncio.gather(running, return_exceptions=True)
        closing = asyncio.ensure_future(_close_worker(queued))
        await asyncio.wait({closing}, timeout=10)
    finally:
        recorded.set()
        await asyncio.sleep(0)  # the record, shielded, ends too

    assert closing.done()
    assert not closing.cancelled(), "the close raised the job's CancelledError"
    assert closing.exception() is None
    assert queued.ctx["client"].closed  # its shutdown ran
    assert queued._pool is None


async def test_a_worker_stopped_as_its_redis_fails_a_jobs_end_record_says_no_traceback(
    tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `dmhub-async worker --rate-limit`, its Redis killed for longer than its wait: the job
    # failed as the wait ended and was recording its end (arq's finish_job, shielded) as the
    # worker stopped; the close cancelled the job outside the shield, and the record, left
    # to fail on its own, reached stderr as asyncio's "Task exception was never retrieved"
    # and a 60-line traceback of redis-py's ConnectionError, after "the worker stops" and
    # before "cannot reach the queue's Redis" (found running the README's queue with the
    # queue's Redis killed for 70 s). Here the record fails once the close is over.
    import gc

    from arq.connections import ArqRedis
    from arq.worker import Worker
    from redis.exceptions import ConnectionError as RedisConnectionError

    from dmhub_async.shards import _queue

    recording, recorded = asyncio.Event(), asyncio.Event()

    async def finish_job(self: Any, *args: object) -> None:
        recording.set()
        await recorded.wait()
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(Worker, "finish_job", finish_job)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    monkeypatch.setattr(loop, "call_exception_handler", unhandled.append)
    client = {"app_id": "a", "secret": "s", "base_url": "http://127.0.0.1:1"}
    queued = worker(redis.url, handle_signals=False, client=client)
    shard = Shard(0, None, None)
    task = {"job_version": 1, "shard": shard.to_dict(), "directory": str(tmp_path / "gone")}
    pool = ArqRedis.from_url(redis.url)
    try:
        await pool.enqueue_job(_queue.JOB_NAME, task, _job_id="j")  # it fails at once
    finally:
        await pool.aclose()
    running = asyncio.ensure_future(queued.async_run())
    try:
        await asyncio.wait_for(recording.wait(), 30)
        running.cancel()  # its main has ended (as when its wait for Redis is over)
        await asyncio.gather(running, return_exceptions=True)
        await asyncio.wait_for(_close_worker(queued), 10)
    finally:
        recorded.set()
        for _ in range(5):
            await asyncio.sleep(0)  # the record, shielded, fails
    gc.collect()  # asyncio says an exception never retrieved as the task is collected

    assert [u.get("message") for u in unhandled] == []
    assert queued._pool is None


async def _close_worker(arq_worker: Any) -> None:
    with warnings.catch_warnings():  # arq closes its pool by redis-py's deprecated close()
        warnings.simplefilter("ignore", DeprecationWarning)
        await arq_worker.close()


def _tls_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """A redis-server on 127.0.0.1 speaking only TLS, with a certificate of a CA of its own."""

    import ssl

    from _redis import PORT_TRIES, REDIS_SERVER, listened_on, server_port

    openssl = shutil.which("openssl")
    if REDIS_SERVER is None or openssl is None:
        pytest.skip("needs redis-server and openssl")
    ca, key = directory / "ca.pem", directory / "ca.key"
    cert, cert_key = directory / "srv.pem", directory / "srv.key"
    run = functools.partial(subprocess.run, check=True, capture_output=True, timeout=60)
    run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            ca,
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            # Python 3.13's strict verification (VERIFY_X509_STRICT) asks a CA for key usage.
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )
    run(
        [
            openssl,
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            cert_key,
            "-out",
            directory / "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]
    )
    # And of a leaf, its issuer's key named: without either, CERTIFICATE_VERIFY_FAILED on 3.13.
    (directory / "ext").write_text(
        "subjectAltName=IP:127.0.0.1\nauthorityKeyIdentifier=keyid,issuer\n"
        "basicConstraints=CA:FALSE\n"
    )
    run(
        [
            openssl,
            "x509",
            "-req",
            "-in",
            directory / "srv.csr",
            "-CA",
            ca,
            "-CAkey",
            key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "1",
            "-extfile",
            directory / "ext",
        ]
    )
    # Ours answers with a certificate of our CA: another's (another worker's, on a port both
    # were given) cannot, and ours then exits; another port is tried.
    context = ssl.create_default_context(cafile=str(ca))
    for _ in range(PORT_TRIES):
        port = server_port()
        proc = _tls_redis_on(port, cert, cert_key, ca, directory)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # listening (TLS: no PING over a plain socket)
            if proc.poll() is not None:
                if listened_on(port):
                    break  # another process's port
                pytest.skip("this redis-server has no TLS")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), 1) as sock,
            ):
                context.wrap_socket(sock, server_hostname="127.0.0.1").close()
                return proc, port, ca
            time.sleep(0.01)
        else:
            proc.kill()
            raise AssertionError("the TLS redis-server did not listen")
    raise AssertionError(f"every port tried was another process's ({PORT_TRIES} of them)")


def _tls_redis_on(
    port: int, cert: Path, cert_key: Path, ca: Path, directory: Path
) -> subprocess.Popen[bytes]:
    from _redis import REDIS_SERVER

    assert REDIS_SERVER is not None
    return subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            cert_key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_rediss_url_with_its_ca_reaches_the_queue_as_it_reaches_the_token_store(
    tmp_path: Path,
) -> None:
    # `rediss://...?ssl_ca_certs=ca.pem` (a Redis with a certificate of a private CA): the
    # token store verified it, arq dropped the option and failed CERTIFICATE_VERIFY_FAILED.
    from dmhub_async.shards._queue import check_queue

    proc, port, ca = _tls_redis(tmp_path)
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
        await check_queue(url)  # redis-py: reached
        queued = worker(
            url, burst=True, handle_signals=False, client={"app_id": "a", "secret": "s"}
        )
        try:
            await asyncio.wait_for(queued.main(), 30)
        finally:
            await _close_worker(queued)
    finally:
        proc.kill()
        proc.wait(10)


async def test_a_rediss_url_whose_certificate_is_not_trusted_says_to_give_its_ca(
    tmp_path: Path,
) -> None:
    # A Redis with a certificate of a private CA, its URL without ?ssl_ca_certs=: `export
    # --queue` and `worker` stopped with "cannot reach the queue's Redis at ...: ...
    # CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate ...: is
    # Redis running there, and is the URL right?", sending the user to a Redis that answered.
    from dmhub_async.shards._queue import check_queue

    proc, port, _ = _tls_redis(tmp_path)
    try:
        with pytest.raises(DMHubError) as refused:
            await asyncio.wait_for(check_queue(f"rediss://127.0.0.1:{port}/0"), 30)
    finally:
        proc.kill()
        proc.wait(10)

    said = str(refused.value)
    assert said.startswith(f"cannot reach the queue's Redis at rediss://127.0.0.1:{port}/0: ")
    assert "certificate verify failed" in said
    assert said.endswith(
        ": its TLS certificate was not trusted: give the URL the certificate of its CA"
        " (?ssl_ca_certs=PATH), and the host name its certificate names"
    )


async def test_a_worker_outlives_a_redis_restart_and_takes_the_next_shard(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A Redis restarted (an upgrade, a failover) while the workers were idle: each worker's
    # next poll met a refused or closed connection, and every `dmhub-async worker` of the
    # fleet exited, though the docs have the coordinator re-enqueue lost jobs for "a worker
    # still exporting that shard".
    out = tmp_path / "out"
    with sim_process(300) as sim:
        manifest = await planned(sim, redis, out, 1)
        with workers(sim, redis.url, 1) as [proc]:
            deadline = time.monotonic() + 60
            while not redis.commands_served().get("zrangebyscore"):  # the worker is polling
                assert time.monotonic() < deadline, "the worker never polled"
                await asyncio.sleep(0.05)
            redis.kill()
            # Down for 2 s, four of the worker's polls (a restart takes longer in production).
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 2)
            assert proc.poll() is None, "the worker exited while Redis was away"
            redis.start()
            manifest = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=0.1), 60
            )
            assert proc.poll() is None
        state = sim.state()

    assert manifest.complete, manifest.shards[0].error
    assert sorted(exported_ids(out)) == sorted(state["ids"])


#: A queue's Redis that answers but refuses: how it is set up, the URL's user and database, and
#: the words of Redis's refusal that the error quotes.
REFUSALS = {
    "full": (("CONFIG", "SET", "maxmemory", "1"), "", "0", "used memory > 'maxmemory'"),
    "acl-user-without-zadd": (
        ("ACL", "SETUSER", "poller", "on", ">pollerpw", "~*", "&*", "+@all", "-zadd"),
        "poller:pollerpw@",
        "0",
        "no permissions to run the 'zadd' command",
    ),
    "no-such-database": ((), "", "99", "DB index is out of range"),
    "wrong-password": (
        ("CONFIG", "SET", "requirepass", "rightpw"),
        ":wrongpw@",
        "0",
        "invalid username-password pair",
    ),
}


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
async def test_a_queue_redis_that_refuses_is_said_to_refuse_in_its_own_words(
    tmp_path: Path, redis: RedisServer, refusal: tuple[tuple[str, ...], str, str, str]
) -> None:
    # It said "cannot reach the queue's Redis ... OutOfMemoryError", which sent the user to
    # the network, though Redis answered and said what to fix.
    setup, user, database, words = refusal
    redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    if setup:
        redis.command(*setup)
    manifest = Manifest.new(
        [Shard(0, None, None)], fmt="jsonl", base_url="http://127.0.0.1:1", app_id="a", filters={}
    )
    url = f"redis://{user}127.0.0.1:{redis.port}/{database}"
    with pytest.raises(DMHubError) as refused:
        await asyncio.wait_for(run_on_queue(url, tmp_path / "out", manifest, progress=False), 30)
    where = f"redis://127.0.0.1:{redis.port}/{database}"
    assert str(refused.value).startswith(f"the queue's Redis at {where} refused: ")
    assert words in str(refused.value)
    assert "pw" not in str(refused.value)
    assert "of pipeline caused error" not in str(refused.value)


async def test_a_full_queue_redis_is_said_in_its_words_not_with_the_refused_commands_bytes(
    tmp_path: Path, redis: RedisServer
) -> None:
    # arq writes a job's end (its pickled result) and enqueues a job in transactions: a Redis
    # full under noeviction refused them, and redis-py's words for a command of a pipeline
    # put the command first, every argument: the worker stopped with "refused: Command # 1
    # (SET arq:result:dmhub-export:... \x04\x95\r\x01...) of pipeline caused error:
    # ("command not allowed when used memory > 'maxmemory'.",)", the job's pickled bytes on
    # its one line, and neither said what to do.
    import pickle

    from arq.connections import ArqRedis
    from redis.exceptions import OutOfMemoryError

    from dmhub_async.shards._queue import queue_redis_error

    redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis.command("CONFIG", "SET", "maxmemory", "1")
    client = ArqRedis.from_url(redis.url)
    try:
        async with client.pipeline(transaction=True) as record:
            record.set("arq:result:dmhub-export:0:1:00000", pickle.dumps({"r": "\x04\r\x01"}))
            record.delete("arq:in-progress:dmhub-export:0:1:00000")
            with pytest.raises(OutOfMemoryError) as refused:
                await record.execute()
    finally:
        await client.aclose()
    said = str(queue_redis_error(redis.url, refused.value))

    assert said == (
        f"the queue's Redis at {redis.url} refused: command not allowed when used memory >"
        " 'maxmemory': it is full: free some of its memory or raise its maxmemory, then rerun"
        " the same command"
    )

    manifest = Manifest.new(
        [Shard(0, None, None)], fmt="jsonl", base_url="http://127.0.0.1:1", app_id="a", filters={}
    )
    with pytest.raises(DMHubError) as stopped:
        await asyncio.wait_for(
            run_on_queue(redis.url, tmp_path / "o", manifest, progress=False), 30
        )
    assert str(stopped.value) == said


@pytest.mark.parametrize(
    ("url", "user"),
    [
        ("redis://reader:PASSWORD-1@127.0.0.1:6379/0", "'reader'"),  # a user name and a password
        ("redis://PASSWORD-1@127.0.0.1:6379/0", "'***'"),  # a password written without its colon
    ],
    ids=["user and password", "no colon"],
)
def test_a_queues_redis_settings_shown_name_the_user_given_with_a_password(
    url: str, user: str
) -> None:
    # The repr masks the password, and a user name only when it is the secret sent (given
    # without a password): an ACL user's name, which the operators read, is shown.
    from dmhub_async.shards import _queue

    shown = repr(_queue.queue_settings(url, "redis_url"))
    assert f"username={user}," in shown
    assert "PASSWORD" not in shown


@pytest.mark.parametrize("sent", [":wrong-PASSWORD-2", "wrong-PASSWORD-2"], ids=["", "no colon"])
async def test_a_worker_refused_by_its_redis_keeps_the_password_out_of_its_traceback(
    redis: RedisServer, sent: str
) -> None:
    # An error tracker records each frame's variables (Sentry's default): a worker whose
    # Redis refused its password raised redis-py's AuthenticationError with the password in
    # the variables of arq's frames (its RedisSettings, whose repr shows it) and of redis-py's
    # (its AUTH arguments). Written without its colon (redis://PASSWORD@HOST), the password is
    # the user name redis-py sends, which the repr showed.
    import traceback

    from redis.exceptions import AuthenticationError

    redis.command("CONFIG", "SET", "requirepass", "right-PASSWORD-1")
    queued = worker(
        f"redis://{sent}@127.0.0.1:{redis.port}/0",
        burst=True,
        handle_signals=False,
        client={"app_id": "a", "secret": "s"},
    )
    assert "PASSWORD" not in repr(queued.redis_settings)
    try:
        with pytest.raises(AuthenticationError) as refused:
            await asyncio.wait_for(queued.async_run(), 30)
    finally:
        await queued.close()
    frames = [
        frame
        for frame in traceback.StackSummary.extract(
            traceback.walk_tb(refused.value.__traceback__), capture_locals=True
        )
        if frame.filename != __file__  # this test's own variables hold the URL
    ]
    said = [
        f"{frame.name}: {name} = {value}"
        for frame in frames
        for name, value in (frame.locals or {}).items()
    ]
    assert [line for line in said if "PASSWORD" in line] == []
    assert "invalid username-password pair" in str(refused.value)


async def test_a_worker_whose_client_setting_is_refused_keeps_the_secret_out_of_its_traceback(
    redis: RedisServer,
) -> None:
    # worker(client=...) holds DMHubClient's keyword arguments, the app secret among them. A
    # client setting refused as the worker started (its client is made then) raised with the
    # secret in the variables of the worker's startup (its copy of them, and the worker's
    # own, which it reads), for an error tracker to record.
    import traceback

    queued = worker(
        redis.url,
        burst=True,
        handle_signals=False,
        client={"app_id": "a", "secret": "s-SECRET-CANARY-3", "timezone": "Nowhere/Nope"},
    )
    try:
        with pytest.raises(InvalidRequestError) as refused:
            await asyncio.wait_for(queued.async_run(), 30)
    finally:
        await queued.close()
    said = "".join(
        traceback.TracebackException.from_exception(refused.value, capture_locals=True).format()
    )
    assert "Nowhere/Nope" in said
    assert [line for line in said.splitlines() if "SECRET-CANARY" in line] == []


def test_a_worker_refused_as_it_is_made_keeps_the_secret_out_of_its_traceback() -> None:
    # As above, for a setting worker() refuses itself: its `client` held the secret.
    import traceback

    settings = {"secret": "s-SECRET-CANARY-4"}
    with pytest.raises(InvalidRequestError) as refused:
        worker("redis://127.0.0.1:1/0", max_jobs=0, client=settings)
    del settings  # the test's own variable: not the SDK's
    said = "".join(
        traceback.TracebackException.from_exception(refused.value, capture_locals=True).format()
    )
    assert "max_jobs" in said
    assert [line for line in said.splitlines() if "SECRET-CANARY" in line] == []


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("redis://:PASSWORD-CANARY-5@127.0.0.1:1/0", {"max_jobs": 0}),
        ("redis://:PASSWORD-CANARY-5@127.0.0.1:1/0", {"mounts": {"x": "/y"}}),
        ("redis://:PASSWORD-CANARY-5/x@127.0.0.1:1/0", {}),  # its "/" read as the path
    ],
    ids=["max_jobs", "mounts", "a password's unencoded /"],
)
def test_a_worker_refused_as_it_is_made_keeps_the_redis_password_out_of_its_traceback(
    url: str, refused: dict[str, Any]
) -> None:
    # As above, for the Redis password: the URL (read from the environment or a settings file,
    # in no frame of the caller's) was in the variables of worker() and of queue_settings().
    import traceback

    with pytest.raises(InvalidRequestError) as info:
        worker(url, **refused)
    del url  # the test's own variable: not the SDK's
    said = "".join(
        traceback.TracebackException.from_exception(info.value, capture_locals=True).format()
    )
    assert "worker()" in said
    assert [line for line in said.splitlines() if "PASSWORD-CANARY" in line] == []


async def test_a_queue_redis_not_there_is_said_with_the_reason() -> None:
    # "cannot reach the queue's Redis at redis://127.0.0.1:1/0: ConnectionError" said nothing
    # of why (refused, a name that does not resolve, a connection lost), where the refusals
    # of a Redis that answered give Redis's own words.
    from dmhub_async.shards._queue import check_queue

    with pytest.raises(DMHubError) as unreached:
        await asyncio.wait_for(check_queue("redis://:hunter2@127.0.0.1:1/0"), 30)
    message = str(unreached.value)
    assert message.startswith("cannot reach the queue's Redis at redis://127.0.0.1:1/0: ")
    assert "Error 111 connecting to 127.0.0.1:1" in message  # ECONNREFUSED
    # What to check, before anything was planned or queued: it said only why.
    assert message.endswith(": is Redis running there, and is the URL right?"), message
    assert "hunter2" not in message


class LoadingRedis:
    """A proxy on 127.0.0.1 before a real Redis that answers its next ``loading`` commands
    ``-LOADING``, as a Redis restarted with persistence does while it reads its dataset
    (then it forwards, as Redis answers once loaded).

    As Redis does, it lets the commands of a new connection through while loading (redis-py's
    ``CLIENT SETINFO``, ``SELECT``, ``AUTH``); their replies are one line each.
    """

    ALLOWED_WHILE_LOADING = (b"CLIENT", b"SELECT", b"AUTH")

    def __init__(self, upstream_port: int, loading: int) -> None:
        self.upstream_port, self.loading = upstream_port, loading
        self.answered_loading = 0
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def __aenter__(self) -> LoadingRedis:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self.restart(0)
        await self._server.wait_closed()

    async def restart(self, loading: int) -> None:
        """Close every client's connection, as a restart does, and load for ``loading``."""
        self.loading = loading
        for writer in self._clients.values():
            writer.close()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        relay: asyncio.Future[None] | None = None  # once loaded: every reply, as it comes
        try:
            while command := await _resp_command(reader):
                if relay is None and self.loading > 0:
                    if command.split(b"\r\n")[2].upper() in self.ALLOWED_WHILE_LOADING:
                        upstream[1].write(command)
                        writer.write(await upstream[0].readline())
                    else:
                        self.loading -= 1
                        self.answered_loading += 1
                        writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
                    await writer.drain()
                    continue
                if relay is None:
                    relay = asyncio.ensure_future(_pipe(upstream[0], writer))
                upstream[1].write(command)
                await upstream[1].drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            del self._clients[task]
            writer.close()
            upstream[1].close()
            await upstream[1].wait_closed()
            if relay is not None:
                await asyncio.gather(relay, return_exceptions=True)


async def _resp_command(reader: asyncio.StreamReader) -> bytes:
    """One command of a client (a RESP array of bulk strings) as sent, or b"" at its end."""
    header = await reader.readline()
    if not header:
        return b""
    assert header.startswith(b"*"), header
    command = header
    for _ in range(int(header[1:])):
        length = await reader.readline()
        command += length + await reader.readexactly(int(length[1:]) + 2)
    return command


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


async def test_a_queue_redis_loading_its_dataset_is_waited_for_by_the_coordinator(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A Redis restarted with persistence answers -LOADING until its dataset is read: redis-py's
    # BusyLoadingError. At the start the coordinator took it for a Redis not there and stopped
    # ("cannot reach the queue's Redis ... BusyLoadingError"), where it waits for a restart.
    manifest = Manifest.new(
        [Shard(0, None, None)], fmt="jsonl", base_url="http://127.0.0.1:1", app_id="a", filters={}
    )
    polls = 0

    async with LoadingRedis(redis.port, loading=2) as proxy:

        async def sleep(_: float) -> None:
            nonlocal polls
            polls += 1
            if polls == 1:  # mid-run: restarted, loading again
                await proxy.restart(loading=2)
            else:
                raise _Stop

        with pytest.raises(_Stop):  # enqueued and followed, then polled through the loading
            await asyncio.wait_for(
                run_on_queue(proxy.url, tmp_path / "out", manifest, progress=False, sleep=sleep),
                60,
            )
        assert proxy.answered_loading == 4
    assert (
        redis.command(
            "EXISTS", f"arq:job:{job_id_of(export_id_of(tmp_path / 'out'), manifest.plan_id, 0)}"
        )
        == ":1"
    )


async def test_a_queue_redis_loading_its_dataset_is_waited_for_by_a_worker_at_its_start(
    tmp_path: Path, redis: RedisServer
) -> None:
    # `dmhub-async worker` checks its Redis first: a Redis loading its dataset stopped it
    # ("cannot reach the queue's Redis ... BusyLoadingError", exit code 1), so a fleet started
    # with a Redis restarting with persistence (a host reboot) exited.
    async with LoadingRedis(redis.port, loading=2) as proxy:
        with sim_process(10) as sim:
            run = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "dmhub_async", "worker", "--redis", proxy.url, "--burst"],
                env=sim.env(XDG_CACHE_HOME=str(tmp_path / "cache")),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        assert proxy.answered_loading == 2
    assert (run.returncode, run.stderr) == (0, "")


async def test_a_job_of_a_later_release_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    # A rolling upgrade: a coordinator of a later release enqueues jobs whose shape this
    # worker may misread (a shard's window, a part's format). The worker exported the shard as
    # it read it and wrote a part the coordinator then read as its own. Now it refuses the
    # job at once, naming both releases, and writes nothing.
    from dmhub_async.shards import _queue

    later = getattr(_queue, "JOB_VERSION", 1) + 1
    ctx = {"redis": None, "job_id": "j", "client": None, "pending_progress": set()}
    task = {
        "shard": {"index": 0, "window": ["2016-01-01T00:00:00+00:00", None]},
        "directory": str(tmp_path),
        "format": "jsonl",
        "export_id": "e",
        "plan_id": "p",
        "job_version": later,
        "release": "9.9.9",
    }
    with pytest.raises(InvalidRequestError) as refused:
        await _queue._export_shard_job(ctx, task)
    message = str(refused.value)
    assert "9.9.9" in message
    assert f"job version {later}" in message
    assert "run one release" in message
    assert not os.listdir(tmp_path)


async def test_a_job_of_the_release_before_the_version_was_carried_is_served(
    tmp_path: Path,
) -> None:
    # A coordinator of 0.1.0 as released (95c90cd) sends no version: its jobs are of the
    # shape this worker reads (version 1), and a rolling upgrade works. The result says
    # which release and job version wrote the part.
    from dmhub_async import __version__
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        ctx = _job_context(dm)
        task = {  # the task 95c90cd's coordinator enqueues, key for key
            "shard": Shard(0, None, None).to_dict(),
            "directory": _planned(tmp_path),
            "format": "jsonl",
            "page_size": 100,
            "concurrency": 2,
            "export_id": "e",
            "plan_id": "p",
            "base_url": sim.url,
            "app_id": sim.app_id,
        }
        result = await _queue._export_shard_job(ctx, task)
    assert result["complete"]
    assert result["exported"] == 30
    assert (result["job_version"], result["release"]) == (1, __version__)


def test_a_result_of_another_job_version_is_a_failed_shard_not_a_misread_part(
    tmp_path: Path,
) -> None:
    # The coordinator's side: a part written by a worker of another job version (one that
    # did not refuse the job) is not recorded complete in this release's manifest.
    from dmhub_async.shards import _queue

    [outcome] = Manifest.new(
        [Shard(0, None, None)], fmt="jsonl", base_url="u", app_id="a", filters={}
    ).shards
    result = {
        "complete": True,
        "exported": 5,
        "duplicates": 0,
        "seconds": 1.0,
        "size": 10,
        "sha256": None,
        "job_version": getattr(_queue, "JOB_VERSION", 1) + 1,
        "release": "9.9.9",
    }
    info = types.SimpleNamespace(success=True, result=result)
    _queue._record(outcome, info)
    assert outcome.status == "failed"
    assert "9.9.9" in (outcome.error or "")
    assert "run one release" in (outcome.error or "")


@pytest.mark.parametrize(
    ("id_slice", "verify", "taken"),
    [
        ((0, 100), "auto", False),
        (None, "always", False),
        ((0, 100), "always", False),
        (None, "auto", True),
    ],
    ids=["id-slice", "verify-always", "id-slice-verify-always", "window"],
)
async def test_a_part_from_a_worker_that_reads_no_job_version_is_taken_for_a_window_alone(
    tmp_path: Path, id_slice: tuple[int, int] | None, verify: str, taken: bool
) -> None:
    # A worker of 0.1.0 (95c90cd) checks no job version and sends none back: given a job of
    # version 2 (a slice of an id list) it exported the slice's whole dateCreated window,
    # customers not on the list among them (a review's run: 300 ids listed, 9,000 customers
    # in 3 parts, each customer 3 times), and of version 3 it skipped the final check; the
    # coordinator recorded every part complete. Only a window's job (version 1) is one it
    # read as sent.
    from dmhub_async.shards import _queue

    digest = "sha256:" + "0" * 64 if id_slice else None
    shard = Shard(0, None, None, id_slice=id_slice, id_list_sha256=digest)
    [outcome] = Manifest.new([shard], fmt="jsonl", base_url="u", app_id="a", filters={}).shards
    part = tmp_path / outcome.file
    part.write_bytes(b"x" * 10)
    result = {  # 0.1.0's result: no job_version, no release
        "complete": True,
        "exported": 5,
        "duplicates": 0,
        "seconds": 1.0,
        "size": 10,
        "sha256": None,
    }

    class Done:
        async def result_info(self) -> Any:
            return types.SimpleNamespace(success=True, result=result)

    _queue._record(outcome, types.SimpleNamespace(success=True, result=result), verify=verify)
    sent = _queue.job_version(shard, verify)  # type: ignore[arg-type]
    assert await _queue._usable(Done(), part, sent) is taken
    if taken:
        assert (outcome.status, outcome.error) == ("complete", None)
        return
    assert outcome.status == "failed"
    assert "0.1.0 or earlier" in (outcome.error or "")
    assert f"job version {sent}" in (outcome.error or "")
    assert "run one release" in (outcome.error or "")


async def test_a_coordinator_of_a_later_release_hears_from_this_worker_at_once(
    tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # End to end: the coordinator (here, this process made to send the next job version) and
    # a worker of this release on one queue. The shard fails at once with the worker's
    # refusal in the manifest, and no part is written.
    from dmhub_async.shards import _queue

    out = tmp_path / "out"
    with sim_process(300) as sim:
        manifest = await planned(sim, redis, out, 2)
        later = getattr(_queue, "JOB_VERSION", 1) + 1
        monkeypatch.setattr(_queue, "JOB_VERSION", later, raising=False)
        # A shard of a window goes as version 1, which every release reads: a later release
        # changing that shape sends its own version for it too.
        monkeypatch.setattr(
            _queue, "job_version", lambda shard, verify="auto": later, raising=False
        )
        monkeypatch.setattr(_queue, "__version__", "9.9.9", raising=False)
        with workers(sim, redis.url, 1):
            manifest = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=0.1), 120
            )
    assert [s.status for s in manifest.shards] == ["failed", "failed"]
    for shard in manifest.shards:
        assert "run one release" in (shard.error or ""), shard
        assert "9.9.9" in (shard.error or ""), shard
    assert not list(out.glob("part-*"))


@pytest.mark.parametrize(
    ("given", "exported_at", "in_flight"),
    [(2, 8, 2), (12, 4, 12)],
    ids=["smaller-machine", "bigger-machine"],
)
async def test_worker_concurrency_is_the_workers_requests_in_flight(
    tmp_path: Path,
    redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    given: int,
    exported_at: int,
    in_flight: int,
) -> None:
    # `dmhub-async worker --concurrency N` was read and never used: each shard walked as many
    # pages at once as the export's --concurrency said, whatever the worker's machine.
    from aiohttp import web

    from dmhub_async.cli._parser import build_parser
    from dmhub_async.cli._shards import worker_command
    from dmhub_async.testing import DMHubSimulator

    async with DMHubSimulator(customers=3_000, seed=5) as sim:
        now = peak = 0
        reached = asyncio.Event()

        async def measure(request: web.Request) -> None:
            nonlocal now, peak
            if request.path != "/v1/customers":
                return
            now += 1
            peak = max(peak, now)
            if now >= in_flight:
                reached.set()
            # Held until the worker's requests in flight reach its concurrency once (half a
            # second at most: the walk's first requests go one at a time): with a 5 ms hold
            # alone, on a busy machine, a wave's first requests were answered before its last
            # was sent (peak 11 of 12 on 3.10 in a full run).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reached.wait(), 0.5)
            await asyncio.sleep(0.005)  # held, as a service's latency, so requests overlap
            now -= 1

        sim.on_request(measure)
        for name, value in (
            ("DMHUB_APP_ID", sim.app_id),
            ("DMHUB_SECRET", sim.secret),
            ("DMHUB_BASE_URL", sim.url),
        ):
            monkeypatch.setenv(name, value)
        out = tmp_path / "out"
        store = RedisTokenStore(redis.url)
        try:
            async with DMHubClient(token_store=store) as dm:
                manifest = await prepare(dm, out, 1)
        finally:
            await store.aclose()
        args = build_parser().parse_args(
            ["worker", "--redis", redis.url, "--concurrency", str(given), "-q"]
        )
        serving = asyncio.ensure_future(worker_command(args))
        try:
            manifest = await asyncio.wait_for(
                run_on_queue(
                    redis.url, out, manifest, concurrency=exported_at, progress=False, poll=0.05
                ),
                60,
            )
        finally:
            serving.cancel()
            with warnings.catch_warnings(), contextlib.suppress(asyncio.CancelledError):
                warnings.simplefilter("ignore", DeprecationWarning)  # arq's close of its pool
                await asyncio.wait_for(serving, 30)

    assert manifest.complete
    assert manifest.exported == 3_000
    assert peak == in_flight


async def test_a_failed_jobs_error_carries_its_retries_to_the_manifest(tmp_path: Path) -> None:
    # A shard's job that fails (its requests retried until the client gave up) sends back
    # its error, pickled, and no result: the retries it took were counted nowhere, and the
    # manifest's total said nothing of them. The error carries them.

    from dmhub_async import RetryPolicy
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator, FakeClock
    from dmhub_async.testing._checks import ApiError

    def down(request: Any) -> None:
        if request.path.startswith("/v1/customers"):
            raise ApiError(503, 503, "down")

    clock = FakeClock()
    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(
            sim.app_id,
            sim.secret,
            base_url=sim.url,
            retry=RetryPolicy(max_retries=2),
            clock=clock,
            sleep=clock.sleep,
        ) as dm,
    ):
        sim.on_request(down)
        ctx = _job_context(dm)
        task = _shard_task(sim, tmp_path)
        with pytest.raises(DMHubError) as raised:
            await _queue._export_shard_job(ctx, task)
        retried = dm.stats.retries

    outcome = _recorded_failure(raised.value)
    assert outcome.status == "failed"
    assert "503" in (outcome.error or "")
    assert retried == 2
    assert outcome.retries == retried


async def test_a_job_whose_part_cannot_be_written_fails_its_shard_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shard's job whose part could not be written (a full disk, a read-only directory)
    # failed in the manifest as "OSError" alone: the file and the reason were lost, where
    # worker processes and one process say "parts/part-00000.jsonl: No space left on device".
    import errno

    from dmhub_async._atomic import naming
    from dmhub_async.export import _output
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    def full(self: _output.Output, data: bytes) -> None:
        assert self._dest is not None
        with naming(self._dest):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_output.Output, "write", full)
    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        task = _shard_task(sim, tmp_path)
        with pytest.raises(OSError, match="No space left") as raised:
            await _queue._export_shard_job(_job_context(dm), task)

    outcome = _recorded_failure(raised.value)
    assert outcome.status == "failed"
    assert outcome.error == f"{tmp_path / 'part-00000.jsonl'}: No space left on device"


async def test_a_job_left_on_the_queue_exports_nothing_over_a_shard_recorded_complete(
    tmp_path: Path,
) -> None:
    # An export stopped on its queue, then finished by `export --workers` (or another run),
    # left its jobs queued: a worker that came later took them and exported each complete
    # part again from the start, over the part the manifest recorded (truncated while it ran,
    # then holding sign-ups since: the merge of the complete export refused it). Now such a
    # job exports nothing and fails, saying why.
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        task = _shard_task(sim, tmp_path)
        await _queue._export_shard_job(_job_context(dm), task)
        part = tmp_path / "part-00000.jsonl"
        exported = part.read_bytes()
        entry = {"file": part.name, "status": "complete", "size": len(exported)}
        (tmp_path / MANIFEST_NAME).write_text(
            json.dumps({"plan_id": "p", "shards": [{"shard": task["shard"], **entry}]}),
            encoding="utf-8",
        )
        sim.insert_customer({"name": "signed up since"})
        with pytest.raises(InvalidRequestError) as refused:
            await _queue._export_shard_job(_job_context(dm), task)
    assert part.read_bytes() == exported
    message = str(refused.value)
    assert "shard 0 is complete in" in message
    assert "the worker exported nothing" in message


async def test_a_worker_spelling_the_export_s_base_url_otherwise_exports_its_shard(
    tmp_path: Path,
) -> None:
    # One service in two spellings (a host name's case, or its default port: the coordinator's
    # DMHUB_BASE_URL https://api.example.com, a worker's https://API.example.com:443), which
    # the token store takes for one (its key is the URL in one spelling): the worker refused
    # every shard as "another export's shard", telling the operator to give each service its
    # own Redis, and the export ended with no part written.
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    async with DMHubSimulator(customers=30) as sim:
        port = sim.url.rsplit(":", 1)[1]
        async with DMHubClient(sim.app_id, sim.secret, base_url=f"http://LocalHost:{port}") as dm:
            task = {**_shard_task(sim, tmp_path), "base_url": f"http://localhost:{port}"}
            result = await _queue._export_shard_job(_job_context(dm), task)
            other = {**task, "base_url": f"http://localhost:{int(port) + 1}"}
            with pytest.raises(InvalidRequestError, match="another export's shard"):
                await _queue._export_shard_job(_job_context(dm), other)
    assert result["complete"]
    assert result["exported"] == 30
    assert len(exported_ids(tmp_path)) == 30


async def test_a_worker_given_an_access_token_alone_is_told_to_take_the_app_s_credentials(
    tmp_path: Path,
) -> None:
    # An export planned with an app id and secret, a worker given an access token alone
    # (worker(client={"access_token": ...})): it has no app id to show the shard is its app's,
    # and was refused as "a worker exporting from URL (app None) took another export's shard,
    # of URL (app ID) ...: give each service or app workers of their own", of the very
    # export it serves, sending the operator to split a queue that was right.
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(access_token=sim.tokens.issue(), base_url=sim.url) as dm,
    ):
        task = _shard_task(sim, tmp_path)
        with pytest.raises(InvalidRequestError) as refused:
            await _queue._export_shard_job(_job_context(dm), task)
        assert dm.stats.requests == 0
        # Another service's export is still said to be another's.
        other = {**task, "base_url": "https://api.elsewhere.example"}
        with pytest.raises(InvalidRequestError, match="another export's shard"):
            await _queue._export_shard_job(_job_context(dm), other)
        url, app_id, secret = sim.url, sim.app_id, sim.secret
    assert not (tmp_path / "part-00000.jsonl").exists()
    message = str(refused.value)
    assert message == (
        f"a worker given an access token alone took a shard of an export of {url} planned"
        f" with app {app_id}, which it cannot show is its token's app (it has no app id),"
        " and exported nothing: give the worker the app's id and secret (DMHUB_APP_ID and"
        " DMHUB_SECRET, or worker()'s client app_id and secret) in place of the token"
    ), message
    assert "app None" not in message
    assert secret not in message


async def test_a_worker_taking_a_shard_of_an_export_planned_with_a_token_says_so(
    tmp_path: Path,
) -> None:
    # The other way round: an export planned with an access token alone (export_sharded of a
    # client given one), a worker given the app id and secret. The job carries no app id to
    # compare, and the worker said it "took another export's shard, of URL (app None)", and
    # to give each app workers of their own, of the very export it serves.
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        task = {**_shard_task(sim, tmp_path), "app_id": None}
        with pytest.raises(InvalidRequestError) as refused:
            await _queue._export_shard_job(_job_context(dm), task)
        assert dm.stats.requests == 0
        url, app_id = sim.url, sim.app_id
    assert not (tmp_path / "part-00000.jsonl").exists()
    message = str(refused.value)
    assert message == (
        f"a worker of app {app_id} took a shard of an export of {url} planned with an access"
        " token alone, which cannot show its app is the worker's (it has no app id), and"
        " exported nothing: plan the export with the app's id and secret in place of the token"
    ), message
    assert "app None" not in message


async def test_a_worker_keeping_the_token_in_another_store_exports_nothing(
    tmp_path: Path, redis: RedisServer
) -> None:
    # DM Hub keeps one token per app id. A worker whose machine named another Redis in
    # DMHUB_TOKEN_STORE than the coordinator's (and the other workers') fetched its own token,
    # revoking theirs, and they its: shards failed as they ran, parts half written, with
    # "error_code 40001: ... access_token is invalid or not latest" (2 of 4 in a run of two
    # workers). The coordinator marks its store; a worker whose own lacks the mark refuses
    # the job before it sends or writes anything.
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    mark = await _queue.mark_token_store(redis.url)
    assert mark is not None
    await mark.aclose()
    elsewhere = redis.url[:-1] + "3"  # another database: another store
    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
        RedisTokenStore(elsewhere) as other,
        RedisTokenStore(redis.url) as same,
    ):
        task = {**_shard_task(sim, tmp_path), "token_store_mark": mark.name}
        with pytest.raises(InvalidRequestError) as refused:
            await _queue._export_shard_job({**_job_context(dm), "token_store_used": other}, task)
        assert dm.stats.requests == 0
        assert not (tmp_path / "part-00000.jsonl").exists()
        result = await _queue._export_shard_job(
            {**_job_context(dm), "token_store_used": same}, task
        )
    message = str(refused.value)
    assert "not the coordinator's token store" in message
    assert "/3" in message  # the worker's store, named
    assert "the worker exported nothing" in message
    assert result["complete"]
    assert result["exported"] == 30


async def test_a_worker_given_an_access_token_is_not_refused_as_of_another_token_store(
    tmp_path: Path, redis: RedisServer
) -> None:
    # worker(client={"access_token": ...}), the coordinator's token store another Redis than
    # the queue's (`export --queue Q --token-store T`): the worker fetches no token, so
    # revokes none, and its store goes unused; it was refused all the same, as keeping "the
    # app's token in RedisTokenStore(Q)", which is not the coordinator's: every shard failed.
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    mark = await _queue.mark_token_store(redis.url[:-1] + "3")  # the coordinator's: another
    assert mark is not None
    await mark.aclose()
    async with (
        DMHubSimulator(customers=30) as sim,
        RedisTokenStore(redis.url) as unused,  # the queue's, which worker() makes
        DMHubClient(access_token=sim.tokens.issue(), base_url=sim.url) as dm,
    ):
        task = {**_shard_task(sim, tmp_path), "app_id": None, "token_store_mark": mark.name}
        result = await _queue._export_shard_job(
            {**_job_context(dm), "token_store_used": unused}, task
        )
    assert result["complete"]
    assert result["exported"] == 30


async def test_a_worker_keeping_the_token_under_another_prefix_exports_nothing(
    tmp_path: Path, redis: RedisServer
) -> None:
    # worker(client={"token_store": RedisTokenStore(url, prefix="myapp:dmhub:")}) on the
    # coordinator's very Redis: its token is kept under another key, so the two hold a token
    # each and revoke each other's, as two Redis do. The mark was checked in the Redis alone,
    # found, and the shard exported (to fail with 40001 half written in a real fleet).
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    mark = await _queue.mark_token_store(redis.url)
    assert mark is not None
    await mark.aclose()
    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
        RedisTokenStore(redis.url, prefix="myapp:dmhub:") as other,
    ):
        task = {**_shard_task(sim, tmp_path), "token_store_mark": mark.name}
        with pytest.raises(InvalidRequestError, match="not the coordinator's token store"):
            await _queue._export_shard_job({**_job_context(dm), "token_store_used": other}, task)
        assert dm.stats.requests == 0


async def test_a_worker_whose_store_client_was_used_on_another_loop_exports_its_shard(
    tmp_path: Path, redis: RedisServer
) -> None:
    # worker(client={"token_store": RedisTokenStore(client=...)}), its redis client used once
    # before on another event loop (a set-up's asyncio.run()): the check of the coordinator's
    # mark, the job's first use of it, failed the shard with a raw "RuntimeError: Event loop
    # is closed", where the store itself recovers (or says so in its own words).
    from redis.asyncio import Redis

    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    mark = await _queue.mark_token_store(redis.url)
    assert mark is not None
    await mark.aclose()
    used = Redis.from_url(redis.url)
    store = RedisTokenStore(client=used)
    with collector_paused() as leaks:  # the set-up loop's socket: collected at the end
        await asyncio.to_thread(asyncio.run, store.get("set-up"))  # another loop, ended since
        try:
            async with (
                DMHubSimulator(customers=30) as sim,
                DMHubClient(sim.app_id, sim.secret, base_url=sim.url, token_store=store) as dm,
            ):
                task = {**_shard_task(sim, tmp_path), "token_store_mark": mark.name}
                result = await _queue._export_shard_job(
                    {**_job_context(dm), "token_store_used": store}, task
                )
        finally:
            await used.aclose()
    assert result["complete"]
    assert result["exported"] == 30
    # The socket of the ended loop, which only that loop could have closed; no client left open
    unclosed = ("ResourceWarning: unclosed <socket.socket", "ResourceWarning: unclosed transport")
    assert all(leak.startswith(unclosed) for leak in leaks), leaks


async def test_a_job_taken_before_its_redis_lost_the_mark_waits_for_the_next_poll(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A job a worker took just before the Redis was flushed (or restarted) is checked just
    # after, its mark gone until the coordinator's next poll sets it again: it was refused at
    # once as of "not the coordinator's token store", its shard failed (CI: 7 of 8 complete).
    # The worker looks for the mark again before it refuses.
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    mark = await _queue.mark_token_store(redis.url)
    assert mark is not None
    redis.command("FLUSHALL")  # the mark gone with the jobs
    waits: list[float] = []

    async def next_poll(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            await mark.keep()  # the coordinator's poll

    try:
        async with (
            DMHubSimulator(customers=30) as sim,
            DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
            RedisTokenStore(redis.url) as store,
        ):
            task = {**_shard_task(sim, tmp_path), "token_store_mark": mark.name}
            context = {**_job_context(dm), "token_store_used": store, "sleep": next_poll}
            result = await _queue._export_shard_job(context, task)
    finally:
        await mark.aclose()
    assert result["complete"]
    assert result["exported"] == 30
    assert waits == [_queue.MARK_LOOK_EVERY] * 3


async def test_a_worker_whose_token_store_is_not_redis_exports_its_shard_at_once(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A worker given a token store of another kind (a MemoryTokenStore, a program's own) has
    # no Redis in which to look for the coordinator's mark: its job is exported unchecked,
    # neither failed by a look-up the store cannot make nor held for the mark's wait. A job
    # whose mark is there is not held either.
    from dmhub_async import MemoryTokenStore
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    mark = await _queue.mark_token_store(redis.url)
    assert mark is not None
    await mark.aclose()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
        RedisTokenStore(redis.url) as same,
    ):
        task = {**_shard_task(sim, tmp_path), "token_store_mark": mark.name}
        for store in (MemoryTokenStore(), same):
            context = {**_job_context(dm), "token_store_used": store, "sleep": sleep}
            result = await _queue._export_shard_job(context, task)
            assert result["complete"]
            assert result["exported"] == 30
    assert waits == []


#: A queue worker whose token store is another Redis database than the coordinator's (the
#: queue's), that looks for the coordinator's mark once (no wait for a Redis flushed).
WORKER_KEEPING_THE_TOKEN_ELSEWHERE = (
    "import sys; from dmhub_async import RedisTokenStore; from dmhub_async.shards import _queue; "
    "_queue.MARK_LOOKED_FOR = 0.0; "
    "store = RedisTokenStore(sys.argv[1][:-1] + '3'); "
    "_queue.worker(sys.argv[1], client={'token_store': store}, heartbeat=0.5, takeover=3).run()"
)


async def test_a_queued_shard_is_refused_by_a_worker_keeping_the_token_elsewhere(
    tmp_path: Path, redis: RedisServer
) -> None:
    # The coordinator's mark rides in each job it enqueues: a job without it is not checked,
    # and a worker keeping the app's token in another store exported its shard, revoking the
    # other machines' token as they ran (their shards failed half written, 40001).
    from dmhub_async.shards._queue import mark_token_store

    out = tmp_path / "out"
    with sim_process(300) as sim:
        manifest = await planned(sim, redis, out, 1)
        mark = await mark_token_store(redis.url)
        assert mark is not None
        try:
            with queue_workers(sim.env(), redis.url, 1, WORKER_KEEPING_THE_TOKEN_ELSEWHERE):
                manifest = await asyncio.wait_for(
                    run_on_queue(
                        redis.url, out, manifest, progress=False, poll=0.2, token_store_mark=mark
                    ),
                    60,
                )
        finally:
            await mark.aclose()
    assert [s.status for s in manifest.shards] == ["failed"]
    assert "not the coordinator's token store" in str(manifest.shards[0].error)
    assert exported_ids(out) == []


async def test_a_job_with_a_filter_this_worker_does_not_know_says_so_not_type_error(
    tmp_path: Path,
) -> None:
    # A job of a coordinator of another release whose shard carries a filter this worker has
    # not (a job made by hand, or a release that added one without a new job version): the
    # job failed with export_customers' raw TypeError, which the coordinator's report said as
    # "part-00000.jsonl: failed: TypeError" alone.

    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        task = _shard_task(sim, tmp_path)
        task["shard"]["filters"] = {"stage": "lead", "tag": "vip"}
        task["release"] = "9.0.0"
        with pytest.raises(InvalidRequestError) as refused:
            await _queue._export_shard_job(_job_context(dm), task)
        assert dm.stats.requests == 0
    assert not (tmp_path / "part-00000.jsonl").exists()
    outcome = _recorded_failure(refused.value)
    assert outcome.status == "failed"
    assert "'tag'" in (outcome.error or "")
    assert "9.0.0" in (outcome.error or "")
    assert "the worker exported nothing" in (outcome.error or "")
    assert "run one release on the coordinator and every worker" in (outcome.error or "")


async def test_a_queued_shard_of_an_id_list_carries_its_slice_not_the_list(
    tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each job carried the whole list (3.3 MB for 300,000 ids): now its slice's offsets and
    # the list's digest, the worker reading the list from the directory every worker shares.
    import pickle

    from arq.connections import ArqRedis

    sent: list[int] = []
    enqueue = ArqRedis.enqueue_job

    async def spy(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(len(pickle.dumps(args)))
        return await enqueue(self, name, *args, **kwargs)

    monkeypatch.setattr(ArqRedis, "enqueue_job", spy)
    out = tmp_path / "out"
    given = list(range(3_000_000_000 + 20_000, 3_000_000_000 - 1, -1))  # 300 real, reversed
    with sim_process(300) as sim:
        store = RedisTokenStore(redis.url)
        try:
            async with DMHubClient(
                sim.app_id, sim.secret, base_url=sim.url, token_store=store
            ) as dm:
                manifest = await prepare(dm, out, 3, id_list=given)
                real = await dm.customers.count(id_list=given)
        finally:
            await store.aclose()
        with workers(sim, redis.url, 2):
            manifest = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=0.1), 120
            )
    assert manifest.complete
    ids = exported_ids(out)
    assert len(ids) == len(set(ids)) == real == 300
    assert set(ids) <= set(given)
    assert len(sent) == 3
    assert max(sent) < 2_000, sent


async def _id_list_export_on_queue(
    sim: SimProcess,
    redis: RedisServer,
    out: Path,
    given: list[int],
    script: str = WORKER,
    **run: Any,
) -> Manifest:
    """A sharded export of ``given`` on the queue, planned as the CLI plans it, 2 workers
    (``script``)."""
    manifest = await planned(sim, redis, out, 3, id_list=given)
    with queue_workers(sim.env(), redis.url, 2, script):
        return await asyncio.wait_for(
            run_on_queue(redis.url, out, manifest, progress=False, poll=0.1, **run), 120
        )


#: A queue worker whose shards, once exported, end only after the coordinator heard a total
#: (the test pushes to the list "heard"): no job ends before the export's first progress line.
WORKER_ENDING_AFTER_A_TOTAL_IS_HEARD = """
import sys
from redis.asyncio import Redis
from dmhub_async.shards import _queue

exported = _queue.export_shard

async def held(*args, **kwargs):
    report = await exported(*args, **kwargs)  # its progress written as its pages were
    async with Redis.from_url(sys.argv[1]) as redis:
        await redis.execute_command("BRPOPLPUSH", "heard", "heard", 0)  # left there: all go
    return report

_queue.export_shard = held
_queue.worker(sys.argv[1], heartbeat=0.5, takeover=3).run()
"""


async def test_the_progress_total_on_the_queue_ends_at_the_customers_found(
    tmp_path: Path, redis: RedisServer
) -> None:
    # An id list's slices plan their ids (1,000 here, of which 300 are customers): as each
    # shard's job ends, its customers take its planned count's place in the total (decee38),
    # which the queue's runner had no test of its own of. Its jobs end only once a total was
    # heard: a shard that ended before the coordinator's first look at the progress (a busy
    # machine) lowered the first total heard, 805, not the ids' 1,000.
    from dmhub_async.testing._seeded_rows import FIRST_ID

    out = tmp_path / "out"
    heard: list[tuple[int, int | None]] = []

    def on_total(done: int, total: int | None) -> None:
        if not heard:
            redis.command("RPUSH", "heard", "1")
        heard.append((done, total))

    with sim_process(300) as sim:
        manifest = await _id_list_export_on_queue(
            sim,
            redis,
            out,
            list(range(FIRST_ID, FIRST_ID + 1_000)),
            WORKER_ENDING_AFTER_A_TOTAL_IS_HEARD,
            on_total=on_total,
        )

    assert manifest.complete
    assert manifest.exported == len(exported_ids(out)) == 300
    assert heard[0][1] == 1_000  # nothing known yet but the ids
    assert heard[-1] == (300, 300)  # done: 100%
    totals = [total for _, total in heard]
    assert totals == sorted(totals, reverse=True)  # lowered as each shard ends, never raised
    assert all(done <= total for done, total in heard if total is not None)


async def test_a_shard_exported_again_shows_none_of_its_earlier_runs_progress(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A part deleted since its export: the rerun exports its shard again from nothing, but the
    # progress its earlier job left in Redis (kept a week) was read at the first poll: the
    # export heard 300 of 300 customers done, 100%, before a worker took the shard.
    from dmhub_async.testing._seeded_rows import FIRST_ID

    out = tmp_path / "out"
    given = list(range(FIRST_ID, FIRST_ID + 1_000))
    with sim_process(300) as sim:
        first = await _id_list_export_on_queue(sim, redis, out, given)
        assert first.complete
        assert first.shards[0].exported > 0
        (out / first.shards[0].file).unlink()
        manifest = await planned(sim, redis, out, 3, id_list=given)
    assert manifest.shards[0].status == "pending"
    kept = manifest.exported  # the other shards' customers, kept
    heard: list[tuple[int, int | None]] = []

    async def stop(_: float) -> None:
        raise _Stop

    # One poll, and no worker to take the shard.
    await followed_until_stopped(
        redis, out, manifest, lambda done, total: heard.append((done, total)), stop
    )
    assert max((done for done, _ in heard), default=kept) == kept, heard


async def test_a_shards_count_once_its_job_ended_is_not_taken_back_by_a_late_progress_write(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A worker's progress writes are sent on their own (a worker cut off from Redis retries
    # them for about a minute, after its shard was taken over and finished): one that landed
    # after the job's last count was read at the next poll, and the export's count went back,
    # to the end (on_total's last: 2 of a shard that wrote 7).
    from arq.jobs import serialize_result
    from redis.asyncio import Redis

    from dmhub_async import __version__
    from dmhub_async.shards import _queue
    from dmhub_async.shards._manifest import part_digest

    out = tmp_path / "out"
    out.mkdir()
    edge = datetime(2020, 1, 1, tzinfo=timezone.utc)
    manifest = Manifest.new(
        [Shard(0, None, edge, planned_count=10), Shard(1, edge, None, planned_count=10)],
        fmt="jsonl",
        base_url="http://127.0.0.1:1",
        app_id="a",
        filters={},
    )
    part = out / manifest.shards[0].file
    part.write_bytes(b"".join(b'{"id":%d}\n' % i for i in range(7)))
    size, sha256 = part_digest(part)
    export_id = export_id_of(out)
    job_id = job_id_of(export_id, manifest.plan_id, 0)
    result = {
        "complete": True,
        "exported": 7,
        "duplicates": 0,
        "seconds": 0.1,
        "retries": 0,
        "size": size,
        "sha256": sha256,
        "job_version": _queue.WINDOW_JOB_VERSION,
        "release": __version__,
    }
    now = int(time.time() * 1000)
    done = serialize_result(
        _queue.JOB_NAME, (), {}, 1, now, True, result, now, now, "r", "arq:queue", job_id
    )
    progress = f"dmhub_async:export:{export_id}:{manifest.plan_id}:progress"
    client = Redis.from_url(redis.url)
    try:
        await client.set(f"arq:result:{job_id}", done)  # shard 0's job ended, as a worker ends it
        await client.hset(progress, "0", "7")
    finally:
        await client.aclose()
    heard: list[int] = []
    polls = 0

    async def poll(_: float) -> None:
        nonlocal polls
        polls += 1
        if polls == 1:  # shard 0 recorded: a write its worker sent before lands now
            assert manifest.shards[0].status == "complete"
            redis.command("HSET", progress, "0", "2")
        else:
            raise _Stop

    # Shard 1's job never ends: no worker.
    await followed_until_stopped(redis, out, manifest, lambda done, _: heard.append(done), poll)
    assert manifest.shards[0].exported == 7
    assert heard
    assert heard[-1] == 7, heard


def _two_windows() -> Manifest:
    """A plan of two shards, split at 2020, of a service no worker reaches."""
    return Manifest.new(
        [
            Shard(0, None, datetime(2020, 1, 1, tzinfo=timezone.utc)),
            Shard(1, datetime(2020, 1, 1, tzinfo=timezone.utc), None),
        ],
        fmt="jsonl",
        base_url="http://127.0.0.1:1",
        app_id="a",
        filters={},
    )


async def test_a_coordinator_stopped_says_its_shards_were_left_on_the_queue(
    tmp_path: Path, redis: RedisServer
) -> None:
    # Stopped (Ctrl-C, SIGTERM, its Redis gone), the coordinator wrote "running" for every
    # shard it followed, queued ones too: the user could not tell what ran. Its workers go on
    # without it, so the manifest says where each was left, and that a rerun follows it.
    out = tmp_path / "out"
    out.mkdir()
    manifest = _two_windows()

    async def stop(_: float) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        await run_on_queue(redis.url, out, manifest, progress=False, sleep=stop)

    on_disk = Manifest.read(out)
    assert on_disk is not None
    assert [s.status for s in on_disk.shards] == ["pending", "pending"]
    assert all(
        s.error == "left on the queue when its coordinator stopped: a worker may still be "
        "exporting it; rerun the same command to follow it to its end"
        for s in on_disk.shards
    ), on_disk.shards


def _clients(redis: RedisServer) -> int:
    """The connections ``redis`` holds open (this question's own among them)."""
    info = redis.command("INFO", "clients")
    return int(info.split("connected_clients:")[1].split()[0])


@pytest.mark.parametrize(
    "gap", [1, 2, 0], ids=["as-it-writes-the-manifest", "as-it-closes", "at-every-turn"]
)
async def test_a_coordinator_cancelled_twice_closes_its_redis_connections(
    tmp_path: Path, redis: RedisServer, gap: int
) -> None:
    # A second cancel (a task group's after an asyncio.timeout's, anyio's cancel scope that
    # cancels at every turn, a Ctrl-C after a SIGTERM) landed as the stopped coordinator wrote
    # its manifest: the write was waited for and the cancel raised, past the close of its
    # Redis connections, left open until the collector found them (a ResourceWarning).
    out = tmp_path / "out"
    out.mkdir()
    before = _clients(redis)
    polling = asyncio.Event()

    async def sleep(_: float) -> None:
        polling.set()
        await asyncio.Event().wait()  # a poll's wait, until the cancel

    run = asyncio.ensure_future(
        run_on_queue(redis.url, out, _two_windows(), progress=False, sleep=sleep)
    )
    await polling.wait()
    run.cancel()
    for _ in range(gap):
        await asyncio.sleep(0)  # the first cancel taken: the manifest is being written
    run.cancel()
    while gap == 0 and not run.done():  # as anyio's cancel scope does, until the task leaves
        await asyncio.sleep(0)
        run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert _clients(redis) == before
    assert Manifest.read(out) is not None  # the manifest written all the same


async def _stop(_: float) -> None:
    raise _Stop


async def _queued_by_a_coordinator_gone(
    tmp_path: Path, redis: RedisServer
) -> tuple[Path, Manifest, list[str]]:
    """A two-window export at ``tmp_path / "out"`` whose coordinator stopped with both jobs
    queued (no worker serves the queue): its directory, its manifest and the jobs' ids."""
    out = tmp_path / "out"
    out.mkdir()
    manifest = _two_windows()
    manifest.write(out)
    with pytest.raises(_Stop):  # no worker: its jobs stay queued
        await run_on_queue(redis.url, out, manifest, progress=False, sleep=_stop)
    assert redis.command("ZCARD", "arq:queue") == ":2"
    return out, manifest, [job_id_of(export_id_of(out), manifest.plan_id, i) for i in (0, 1)]


async def test_a_rerun_at_another_path_while_the_old_runs_jobs_are_exported_is_refused(
    tmp_path: Path, redis: RedisServer
) -> None:
    # The export's id is of its path: rerun at another path (the directory mounted elsewhere)
    # while a worker exported a shard for its run at the first one, it enqueued a second job
    # for that shard, and two workers exported one shard into one part, kept apart only by the
    # part's file lock (where file locks hold). Refused, saying where the job is and what to do.
    out, manifest, old_jobs = await _queued_by_a_coordinator_gone(tmp_path, redis)
    redis.command("SET", f"arq:in-progress:{old_jobs[1]}", "1")  # a worker has shard 1

    elsewhere = tmp_path / "mounted-elsewhere"
    elsewhere.symlink_to(out, target_is_directory=True)  # the same files at another path
    again = Manifest.read(elsewhere)
    assert again is not None
    with pytest.raises(InvalidRequestError) as refused:
        await run_on_queue(redis.url, elsewhere, again, progress=False, sleep=_stop)
    assert str(refused.value) == (
        f"shard 1 of this export is being exported by a worker for its run at {out}: two "
        f"workers would export it at once. Rerun the export at {out} to follow it to its end, "
        "or rerun here once it has ended"
    )
    assert redis.command("ZCARD", "arq:queue") == ":2"  # nothing enqueued, nothing taken
    assert redis.command("EXISTS", f"arq:job:{old_jobs[0]}") == ":1"
    on_disk = Manifest.read(out)
    assert on_disk is not None
    assert [s.status for s in on_disk.shards] == ["pending", "pending"]

    # Once it has ended (its worker done with it), the rerun enqueues its own and follows them.
    redis.command("DEL", f"arq:in-progress:{old_jobs[1]}")
    redis.command("ZREM", "arq:queue", old_jobs[1])
    with pytest.raises(_Stop):
        await run_on_queue(redis.url, elsewhere, again, progress=False, sleep=_stop)
    new_jobs = [job_id_of(export_id_of(elsewhere), manifest.plan_id, i) for i in (0, 1)]
    assert redis.command("ZSCORE", "arq:queue", new_jobs[0]) != "$-1"
    assert redis.command("ZSCORE", "arq:queue", new_jobs[1]) != "$-1"


async def test_a_rerun_at_another_path_takes_over_the_queued_jobs_of_a_coordinator_gone(
    tmp_path: Path, redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A coordinator stopped (or killed) with its jobs queued and no worker serving the queue:
    # a rerun at another path was refused for as long as they stayed queued, for ever (arq's
    # queue keeps a job's entry after its data expired, a week on, until a worker takes it),
    # and the operator had no way out but redis-cli. The rerun holds the directory's lock, so
    # no coordinator runs at the old path: it takes the jobs no worker has off the queue,
    # says so, and enqueues its own (each shard resumes from its checkpoint: nothing lost).
    out, manifest, old_jobs = await _queued_by_a_coordinator_gone(tmp_path, redis)
    redis.command("DEL", f"arq:job:{old_jobs[0]}")  # its data expired, its entry still queued

    elsewhere = tmp_path / "mounted-elsewhere"
    elsewhere.symlink_to(out, target_is_directory=True)  # the same files at another path
    again = Manifest.read(elsewhere)
    assert again is not None
    with caplog.at_level("WARNING", logger="dmhub_async"), pytest.raises(_Stop):
        await run_on_queue(redis.url, elsewhere, again, progress=False, sleep=_stop)

    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"shards 0 and 1 of this export were left on the queue by its run at {out}, whose "
        "coordinator has stopped (this run holds the directory's lock) and which no worker "
        "has taken: taken off the queue, and enqueued for this run"
    ]
    new_jobs = [job_id_of(export_id_of(elsewhere), manifest.plan_id, i) for i in (0, 1)]
    assert redis.command("ZCARD", "arq:queue") == ":2"
    for old, new in zip(old_jobs, new_jobs, strict=True):
        assert redis.command("ZSCORE", "arq:queue", old) == "$-1"
        assert redis.command("EXISTS", f"arq:job:{old}") == ":0"
        assert redis.command("ZSCORE", "arq:queue", new) != "$-1"


def _redis_values(redis: RedisServer) -> dict[str, bytes]:
    """Every key of ``redis`` and what it holds (a string's bytes, a hash's or a sorted
    set's members and values), read with redis-py's plain client."""
    import redis as redis_py

    client = redis_py.Redis(port=redis.port)
    try:
        held: dict[str, bytes] = {}
        for key in client.scan_iter():
            kind = client.type(key)
            if kind == b"string":
                held[key.decode()] = client.get(key) or b""
            elif kind == b"hash":
                held[key.decode()] = repr(client.hgetall(key)).encode()
            elif kind == b"zset":
                held[key.decode()] = repr(client.zrange(key, 0, -1)).encode()
            else:
                held[key.decode()] = repr(kind).encode()
        return held
    finally:
        client.close()


async def test_no_filter_value_is_kept_in_redis_once_the_export_has_ended(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A filter is personal data (a mobile number). Each shard's job carries the export's
    # filters, and arq kept them in every job's result (its arguments) for a week after the
    # export ended, whether or not anyone read the result again.
    mobile = "13912345678"
    out = tmp_path / "out"
    with sim_process(300) as sim:
        manifest = await planned(sim, redis, out, 2, mobile=mobile)
        assert all(s.shard.filters.get("mobile") == mobile for s in manifest.shards)
        with workers(sim, redis.url, 1):
            done = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=0.1), 120
            )
    assert done.complete
    held = _redis_values(redis)
    assert any(key.startswith("arq:result:") for key in held), held  # results kept, but
    assert [key for key, value in held.items() if mobile.encode() in value] == []


@pytest.mark.parametrize("verify", [None, "always"], ids=["without", "verify-always"])
async def test_a_job_with_verify_always_runs_its_shards_final_check(
    tmp_path: Path, verify: str | None
) -> None:
    # A job carries its export's verify (job version 3): the shard's final check (id-only
    # pages) runs though its walk saw no change. A job without it (every earlier release's
    # coordinator's) is served as before, with no check.
    from dmhub_async.shards import _queue
    from dmhub_async.testing import DMHubSimulator

    async with (
        DMHubSimulator(customers=30) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        id_pages = 0

        def hook(request: Any) -> None:
            nonlocal id_pages
            id_pages += request.path == "/v1/customers" and request.query.get("select") == "id"

        sim.on_request(hook)
        task = _shard_task(sim, tmp_path)
        if verify is not None:
            task.update(verify=verify, job_version=_queue.job_version(Shard(0, None, None), verify))
        result = await _queue._export_shard_job(_job_context(dm), task)
    assert (result["complete"], result["exported"]) == (True, 30)
    assert result["job_version"] == (3 if verify else 1)
    assert (id_pages > 0) == (verify is not None)


async def test_a_worker_of_the_release_before_verify_refuses_a_job_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker of the release before (job version 2, reading 1 and 2) has no verify to read:
    # it would export the shard unchecked and say complete. The job's version refuses it there
    # with the mixed-release message, nothing written.
    from dmhub_async.shards import _queue

    task = {
        "shard": Shard(0, None, None).to_dict(),
        "directory": str(tmp_path),
        "format": "jsonl",
        "export_id": "e",
        "plan_id": "p",
        "job_version": _queue.job_version(Shard(0, None, None), "always"),
        "release": "9.9.9",
        "verify": "always",
    }
    monkeypatch.setattr(_queue, "JOB_VERSION", 2)
    monkeypatch.setattr(_queue, "_READ_VERSIONS", (1, 2))
    ctx = {"redis": None, "job_id": "j", "client": None, "pending_progress": set()}
    with pytest.raises(InvalidRequestError) as refused:
        await _queue._export_shard_job(ctx, task)
    message = str(refused.value)
    assert "(job version 2), the coordinator 9.9.9 (job version 3)" in message
    assert "run one release" in message
    assert not os.listdir(tmp_path)


def _a_job(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    export_shard: Callable[..., Awaitable[Any]],
    result_of: Callable[[Any], Awaitable[dict[str, Any]]],
    redis: QuietRedis,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job's context and task for ``_export_shard_job``, its export and result replaced,
    its heartbeat every 10 ms on ``redis``."""
    from dmhub_async.shards import _queue

    monkeypatch.setattr(_queue, "export_shard", export_shard)
    monkeypatch.setattr(_queue, "result_of", result_of)
    client = types.SimpleNamespace(base_url="http://127.0.0.1:1", app_id="a")
    ctx = {**_job_context(client), "heartbeat": 0.01, "redis": redis}  # type: ignore[arg-type]
    task = _shard_task(types.SimpleNamespace(url=client.base_url, app_id="a"), tmp_path)
    return ctx, task


async def test_a_job_whose_heartbeat_is_answered_as_its_shard_ends_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each try of a worker's Redis command awaited its answer through asyncio.wait_for, which
    # (Python 3.10 and 3.11) swallows a cancel that lands as the answer arrives. The job
    # cancels its heartbeat as the shard ends: one cancelled so beat on for ever, the job
    # waiting for it never returned its result, and its worker held the shard, and renewed
    # its in-progress mark, for ever; the coordinator waited with it. A shard refused at once
    # (its part locked by a worker still exporting it) ends with its first beat in flight.
    from dmhub_async.shards import _queue

    loop = asyncio.get_running_loop()
    answers: list[asyncio.Future[None]] = []
    sent = asyncio.Event()
    beats = 0

    async def failed(_: BaseException) -> None:
        pass

    class AnsweringRedis(QuietRedis):
        async def set(self, *args: object, **kwargs: object) -> None:
            nonlocal beats
            beats += 1
            answer = loop.create_future()
            answers.append(answer)
            sent.set()

            async def do() -> None:
                await answer

            await _queue._waiting(retries=0).call_with_retry(do, failed)

    async def export_shard(*args: object, **kwargs: object) -> Any:
        await sent.wait()  # the heartbeat's first SET is on its way
        answers[0].set_result(None)
        # One step of the loop: the try's read of the answer ends, and the shard with it,
        # before the heartbeat has taken the answer in.
        await asyncio.sleep(0)
        return types.SimpleNamespace(exported=0)

    async def result_of(report: Any) -> dict[str, Any]:
        return {"complete": True}

    ctx, task = _a_job(monkeypatch, tmp_path, export_shard, result_of, AnsweringRedis())

    # Waited for, not cancelled at the end of the wait: the job, cancelled in its wait for
    # the heartbeat, returned its result all the same.
    job = asyncio.ensure_future(_queue._export_shard_job(ctx, task))
    try:
        await asyncio.wait({job}, timeout=2)
        assert job.done(), "the job never returned: its heartbeat beat on"
        result = job.result()
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)

    assert result["complete"] is True
    beaten = beats
    await asyncio.sleep(0.1)  # ten heartbeats' time: none beats on after the job
    assert beats == beaten


async def test_a_worker_cancelled_as_redis_answers_a_command_stops() -> None:
    # Each try of a worker's Redis command awaited its answer through asyncio.wait_for, which
    # (Python 3.10 and 3.11) drops a cancel landing in the turn the answer is read: arq's
    # SIGTERM handler cancels the worker's main task once, and the worker polled on.
    from dmhub_async.shards import _queue

    loop = asyncio.get_running_loop()
    answers: list[asyncio.Future[list[bytes]]] = []
    sent = asyncio.Event()

    async def failed(_: BaseException) -> None:
        pass

    async def poll() -> list[bytes]:  # the worker's ZRANGEBYSCORE of the queue, say
        answers.append(loop.create_future())
        sent.set()
        return await answers[-1]

    async def main() -> None:  # a worker's poll loop
        while True:
            await _queue._waiting(retries=0).call_with_retry(poll, failed)

    main_task = asyncio.ensure_future(main())
    try:
        await sent.wait()
        answers[0].set_result([])  # the answer and the SIGTERM, in one turn
        main_task.cancel()
        await asyncio.wait({main_task}, timeout=2)
        assert main_task.done(), f"the worker polled on: {len(answers)} polls"
        assert main_task.cancelled()
        assert len(answers) == 1
    finally:
        main_task.cancel()
        await asyncio.gather(main_task, return_exceptions=True)


@contextmanager
def _first_send_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[asyncio.Event, Any]]:
    """(held, gate): the first Redis command sent in the block waits, once written, for the
    test to set ``gate`` (a future), and sets ``held`` as it starts to wait. (redis-py writes
    a command and drains its stream; only its connections use asyncio's streams here.)"""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    held = asyncio.Event()
    original = asyncio.StreamWriter.drain

    async def drain(self: asyncio.StreamWriter) -> None:
        if not held.is_set():
            held.set()
            await gate
        await original(self)

    monkeypatch.setattr(asyncio.StreamWriter, "drain", drain)
    yield held, gate


async def test_a_worker_cancelled_as_a_command_is_sent_stops(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run 58 of the benchmarks: a worker sent SIGTERM polled on. redis-py sends each command
    # through asyncio.wait_for when its connection has a socket timeout (the worker's have:
    # 10 s), which (Python 3.10 and 3.11) drops a cancel landing in the turn the send ends;
    # the worker polls every half second, so a SIGTERM lands there now and then.
    from arq.worker import func

    from dmhub_async.shards import _queue

    async def job(ctx: Any) -> None:
        pass

    polls: list[int] = []
    polling_ = asyncio.Event()
    worker_ = _queue._worker_class()(
        functions=[func(job, name="job")],
        redis_settings=_queue.queue_settings(redis.url, "redis_url"),
        handle_signals=False,
        poll_delay=0.01,
    )
    polling = worker_._poll_iteration

    async def poll() -> None:
        polls.append(1)
        if len(polls) == 2:  # the pool made, the worker polling the queue
            polling_.set()
        await polling()

    monkeypatch.setattr(worker_, "_poll_iteration", poll)
    main_task = asyncio.ensure_future(worker_.main())
    try:
        await asyncio.wait_for(polling_.wait(), 30)
        with _first_send_held(monkeypatch) as (held, gate):
            await asyncio.wait_for(held.wait(), 10)
            gate.set_result(None)  # the send and the SIGTERM, in one turn
            main_task.cancel()
            await asyncio.wait({main_task}, timeout=5)
            assert main_task.done(), f"the worker polled on: {len(polls)} polls"
            assert main_task.cancelled(), main_task
    finally:
        main_task.cancel()
        await asyncio.gather(main_task, return_exceptions=True)
        with warnings.catch_warnings():  # arq's close calls redis-py's deprecated close()
            warnings.simplefilter("ignore", DeprecationWarning)
            await worker_.close()


@pytest.mark.parametrize("who", ["token store", "rate limit", "queue check"])
async def test_a_call_cancelled_as_its_redis_command_is_sent_is_cancelled(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch, who: str
) -> None:
    # The same drop in the SDK's other Redis clients: a service's call with a timeout of its
    # own, cancelled as the token store (or the shared rate limit) sent its command, went on.
    from dmhub_async import RedisRateLimiter
    from dmhub_async.shards._queue import check_queue

    store = RedisTokenStore(redis.url)
    limiter = RedisRateLimiter(redis.url, 1000)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "token store": lambda: store.get("app"),
        "rate limit": limiter.acquire,
        "queue check": lambda: check_queue(redis.url),
    }
    try:
        await calls[who]()  # connected: the next command is sent on a connection it has
        with _first_send_held(monkeypatch) as (held, gate):
            call = asyncio.ensure_future(calls[who]())
            await asyncio.wait_for(held.wait(), 10)
            gate.set_result(None)  # the send and the cancel, in one turn
            call.cancel()
            await asyncio.wait({call}, timeout=10)
            assert call.cancelled(), call
    finally:
        await store.aclose()
        await limiter.aclose()


async def test_a_command_sent_cancellably_is_still_bounded_by_its_socket_timeout(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The send without asyncio.wait_for keeps redis-py's bound on it: a Redis that stops
    # reading (its socket's buffer full) fails the command in the socket timeout, as before.
    from redis.asyncio import Redis
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from dmhub_async._redis_send import pool_connections, sending_cancellably

    # The bound set once the connection is made: a ping left unanswered 0.2 s (a redis-server
    # a loaded machine ran late) failed the test before the send was tried.
    client = Redis.from_url(redis.url, socket_timeout=10)
    try:
        await client.ping()  # a connection made before: its class is swapped too
        sending_cancellably(client.connection_pool)
        client.connection_pool.connection_kwargs["socket_timeout"] = 0.2
        for connection in pool_connections(client.connection_pool):
            connection.socket_timeout = 0.2

        async def never(self: asyncio.StreamWriter) -> None:
            await asyncio.get_running_loop().create_future()

        monkeypatch.setattr(asyncio.StreamWriter, "drain", never)
        with pytest.raises(RedisTimeoutError, match="Timeout writing to socket"):
            await asyncio.wait_for(client.get("k"), 10)
    finally:
        monkeypatch.undo()
        await client.aclose()


async def test_a_worker_cancelled_as_its_pool_connects_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker makes its pool within a timeout (asyncio.wait_for): a SIGTERM landing in the
    # turn the pool was made was dropped (3.10, 3.11), and the worker went on to run.
    import arq.connections
    from arq.connections import RedisSettings
    from arq.worker import func

    from dmhub_async.shards import _queue

    loop = asyncio.get_running_loop()
    made: asyncio.Future[Any] = loop.create_future()
    asked = asyncio.Event()
    ran: list[str] = []

    async def create_pool(*args: object, **kwargs: object) -> Any:
        asked.set()
        return await made

    async def job(ctx: Any) -> None:
        pass

    monkeypatch.setattr(arq.connections, "create_pool", create_pool)
    monkeypatch.setattr(_queue, "_answered_within", lambda pool, seconds: ran.append("ran"))
    worker = _queue._worker_class()(
        functions=[func(job, name="job")],
        redis_settings=RedisSettings(port=1),
        handle_signals=False,
    )
    main_task = asyncio.ensure_future(worker.main())
    try:
        await asked.wait()
        made.set_result(types.SimpleNamespace())  # the pool and the SIGTERM, in one turn
        main_task.cancel()
        await asyncio.wait({main_task}, timeout=2)
        assert main_task.done(), "the worker went on to run"
        assert main_task.cancelled(), main_task
        assert ran == []  # the worker stopped before it ran
    finally:
        main_task.cancel()
        await asyncio.gather(main_task, return_exceptions=True)


async def test_a_job_keeps_its_in_progress_mark_while_it_hashes_its_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A complete part's SHA-256 is read after its export ends, and hashing gigabytes may take
    # longer than the in-progress mark lives (IN_PROGRESS_TTL, 20 s). The heartbeat stopped
    # as the export ended: the mark lapsed while the part was hashed, and another worker took
    # the job, found the part's lock free, and exported the complete shard again from the
    # start, over the part the first worker's result names. The mark is renewed until the
    # result is made.
    from dmhub_async.shards import _queue

    ended = False
    renewed_after = asyncio.Event()
    marks: list[bool] = []  # each renewal of the mark: whether the export had ended

    class MarkingRedis(QuietRedis):
        async def set(self, key: object, *args: object, **kwargs: object) -> None:
            if key == "arq:in-progress:j":
                marks.append(ended)
                if ended:
                    renewed_after.set()

    async def export_shard(*args: object, **kwargs: object) -> Any:
        nonlocal ended
        ended = True
        return types.SimpleNamespace(exported=30)

    async def result_of(report: Any) -> dict[str, Any]:
        # The part being hashed: until the mark is renewed, or long past its next beat.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(renewed_after.wait(), 2)
        return {"complete": True}

    ctx, task = _a_job(monkeypatch, tmp_path, export_shard, result_of, MarkingRedis())

    result = await asyncio.wait_for(_queue._export_shard_job(ctx, task), 10)

    assert result["complete"] is True
    assert True in marks, "the mark was not renewed while the part was hashed"
    beaten = len(marks)
    await asyncio.sleep(0.1)  # ten heartbeats' time: none beats on after the job
    assert len(marks) == beaten


@pytest.mark.parametrize(
    ("error", "said"),
    [
        # Five graceful stops (SIGTERM deploys) spend a shard's tries: arq's reason was on the
        # last worker's stderr alone, the manifest and the report said "JobExecutionFailed".
        (
            "max 5 retries exceeded",
            "max 5 retries exceeded: its job was stopped or failed on each of its tries (a "
            "worker killed or stopped by SIGTERM counts one); rerun the export, which resumes",
        ),
        ("job expired", "job expired"),
        # arq's job timeout: a TimeoutError with no words, the reason empty ("failed" alone).
        (None, "timed out: its job ran past arq's job timeout (24 h); rerun the export"),
    ],
    ids=["tries spent", "expired", "the job timeout"],
)
def test_a_job_arq_gave_up_fails_its_shard_saying_why(error: str | None, said: str) -> None:

    from arq.worker import JobExecutionFailed

    failed = asyncio.TimeoutError() if error is None else JobExecutionFailed(error)
    outcome = _recorded_failure(failed)

    assert outcome.status == "failed"
    assert (outcome.error or "").startswith(said), outcome.error


async def test_a_coordinator_no_worker_serves_says_so_once_then_that_one_came(
    tmp_path: Path, redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Started before its workers (or after they were all stopped), the coordinator waited
    # for ever without a word: an operator saw no line at all, not even a progress line. Each
    # worker records its health in Redis every 5 s (arq's key, kept 6 s): once none has for
    # half a minute of polls, it says so, once, and then that one came.
    out = tmp_path / "out"
    out.mkdir()
    polls: list[float] = []

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    async def poll(seconds: float) -> None:
        polls.append(seconds)
        waited = sum(polls)
        if waited == 29.5:
            assert said() == []  # not at once: a worker may be starting
        if waited == 40:
            redis.command("SET", "arq:queue:health-check", "a worker")  # one came
        if waited == 45:
            raise _Stop

    with caplog.at_level("WARNING", logger="dmhub_async"), pytest.raises(_Stop):
        await run_on_queue(redis.url, out, _two_windows(), progress=False, sleep=poll)
    where = f"127.0.0.1:{redis.port}/0"
    assert said() == [
        f"no worker has served the queue at redis://{where} for 30 s: shards 0 and 1 of {out} "
        f"wait in it; start `dmhub-async worker --redis URL` on machines that share {out} "
        "(the export goes on as they take them)",
        f"a worker serves the queue at redis://{where}: the export goes on",
    ]


@pytest.mark.parametrize("worker_comes", [True, False], ids=["at the first poll", "never"])
async def test_a_coordinator_of_long_polls_says_no_worker_only_after_30_s_without_one(
    tmp_path: Path, redis: RedisServer, caplog: pytest.LogCaptureFixture, worker_comes: bool
) -> None:
    # With poll=60, the first look (just after the jobs were enqueued, the workers started
    # with the coordinator still coming up) counted as 60 s without a worker: it said "no
    # worker has served the queue ... for 30 s" at once, then "a worker serves the queue" at
    # the next poll, two false lines. Only the polls slept since a first look found none count.
    out = tmp_path / "out"
    out.mkdir()
    polls: list[float] = []

    async def poll(seconds: float) -> None:
        polls.append(seconds)
        if worker_comes:
            redis.command("SET", "arq:queue:health-check", "a worker")  # it came up
        if len(polls) == 2:
            raise _Stop

    with caplog.at_level("WARNING", logger="dmhub_async"), pytest.raises(_Stop):
        await run_on_queue(redis.url, out, _two_windows(), progress=False, poll=60, sleep=poll)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if worker_comes:
        assert said == []
    else:  # said at the second look, 60 s after the first found none
        assert [m.split(" at ")[0] for m in said] == ["no worker has served the queue"]


async def _worker_on_its_own_disk(
    sim: SimProcess, redis: RedisServer, shared: Path, own: Path
) -> tuple[Manifest, str]:
    """A two-shard plan of ``sim``'s customers in ``shared``/out, its manifest.json copied to
    ``own``/out, and the script of a worker that writes there: ``shared`` mounted at ``own``
    (a worker on a disk of its own, not the shared volume)."""
    from shard_support import WORKER

    out = shared / "out"
    manifest = await planned(sim, redis, out, 2)
    (own / "out").mkdir(parents=True)
    shutil.copy(out / MANIFEST_NAME, own / "out" / MANIFEST_NAME)
    script = WORKER.replace("takeover=3", f"takeover=3, mounts={{{str(shared)!r}: {str(own)!r}}}")
    return manifest, script


async def test_a_part_its_worker_wrote_out_of_the_coordinators_sight_is_not_complete(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A worker whose machine held a copy of the export's manifest.json (told by its first
    # failed shard that the directory "holds no manifest.json", its operator copied it there),
    # not the shared volume, passed the plan's check and wrote the parts on its own disk: the
    # coordinator recorded every shard complete and the report said so (the CLI's exit code
    # 0), its directory holding no part at all, which only a merge then found.
    shared, own = tmp_path / "shared", tmp_path / "its own disk"
    out = shared / "out"
    with sim_process(300) as sim:
        manifest, script = await _worker_on_its_own_disk(sim, redis, shared, own)

        async def poll(_: float) -> None:
            await asyncio.sleep(0.05)  # each poll counts as poll=30 s: the wait for NFS is 60

        with queue_workers(sim.env(), redis.url, 1, script):
            ended = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=30, sleep=poll), 120
            )
    assert sorted(p.name for p in (own / "out").glob("part-*")) == [
        "part-00000.jsonl",
        "part-00001.jsonl",
    ]
    assert not ended.complete
    assert [s.status for s in ended.shards] == ["failed", "failed"]
    size = (own / "out" / "part-00000.jsonl").stat().st_size
    assert ended.shards[0].error == (
        f"its worker wrote part-00000.jsonl ({size:,} bytes) where this coordinator does not "
        f"see it: {out} holds no part-00000.jsonl. That worker's directory is not the shared "
        "one (another volume, or a copy of the export's manifest.json, at that path): give "
        "every worker the export's shared directory (worker --mount COORDINATOR_PATH="
        "LOCAL_PATH), then rerun the export"
    )
    on_disk = Manifest.read(out)
    assert on_disk is not None
    assert [s.status for s in on_disk.shards] == ["failed", "failed"]


async def test_a_part_seen_late_is_waited_for_at_a_poll_of_60_s(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A part an NFS client shows late (its attribute and lookup caches) is waited for 60 s of
    # polls: with poll=60 the first look that missed it counted as the whole 60 s, and the
    # shard failed at once ("its worker wrote part-00000.jsonl ... where this coordinator does
    # not see it"), the export incomplete, although the part showed at the next look.
    shared, own = tmp_path / "shared", tmp_path / "its own disk"
    out = shared / "out"
    with sim_process(300) as sim:
        manifest, script = await _worker_on_its_own_disk(sim, redis, shared, own)

        async def poll(_: float) -> None:  # the parts show here a poll after they were written
            for part in (own / "out").glob("part-*.jsonl"):  # not a checkpoint the worker drops
                with contextlib.suppress(FileNotFoundError):
                    shutil.copy(part, out / part.name)
            await asyncio.sleep(0.05)

        with queue_workers(sim.env(), redis.url, 1, script):
            ended = await asyncio.wait_for(
                run_on_queue(redis.url, out, manifest, progress=False, poll=60, sleep=poll), 120
            )
    assert [(s.status, s.error) for s in ended.shards] == [("complete", None)] * 2
    assert ended.complete


@pytest.mark.parametrize(
    ("code", "path", "sharing"),
    [
        ("40004", "/security/accesstoken", False),
        ("40013", "/security/accesstoken", False),
        (40001, "/v1/customers", True),
    ],
    ids=["40004", "another code", "a call's token refused"],
)
def test_a_workers_refused_token_request_is_said_of_its_credentials_alone(
    code: str | int, path: str, sharing: bool
) -> None:
    # A worker's token request refused by 40013 (a wrong secret on some services) was said
    # "check the workers' DMHUB_APP_ID and DMHUB_SECRET ..., or whether another process ...
    # took the token": another process's fetch never makes a token request fail.
    refused = AuthenticationError("refused", status=200, code=code, path=path)

    hint = worker_credentials_hint(refused)

    assert hint.startswith("check the workers' DMHUB_APP_ID and DMHUB_SECRET")
    assert ("another process" in hint) is sharing, hint
