"""A queue's workers that mount the export's shared directory at another path than the
coordinator's (``dmhub-async worker --mount COORDINATOR=LOCAL``, ``worker(mounts=)``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _cli_support import APP_ID, SECRET, ServedSimulator
from _redis import RedisServer
from shard_support import QuietRedis, SimProcess, child_env, exported_ids, sim_process

from dmhub_async import DMHubClient, InvalidRequestError
from dmhub_async.shards import Manifest
from dmhub_async.shards._queue import _export_shard_job, worker

pytestmark = [
    pytest.mark.timeout(180),
    # The coordinator's path is one only it sees: /proc/self/cwd is each process's own cwd.
    pytest.mark.skipif(not os.path.isdir("/proc/self/cwd"), reason="needs Linux's /proc"),
]

#: The coordinator's view of the shared volume: /proc/self/cwd/exports exists in a process whose
#: working directory holds ``exports``, and in no other (a worker started elsewhere).
COORDINATOR_VOLUME = "/proc/self/cwd/exports"


def _volume(tmp_path: Path) -> dict[str, Path]:
    """One shared volume (``store``) and three views of it: the coordinator's working directory
    (``coord``, its ``exports`` the volume), and two workers' mount points, each a path of its
    own (``a`` and ``b``); ``elsewhere`` is the workers' working directory, without ``exports``."""
    paths = {name: tmp_path / name for name in ("store", "coord", "a", "b", "elsewhere")}
    for path in paths.values():
        path.mkdir()
    for view in ("coord", "a", "b"):
        (paths[view] / "exports").symlink_to(paths["store"], target_is_directory=True)
    return paths


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dmhub_async", *args]


def _wait_for_jobs(redis: RedisServer, n: int, export: subprocess.Popen[str]) -> None:
    for _ in range(3000):  # at most 30 s
        if redis.command("ZCARD", "arq:queue") == f":{n}":
            return
        if export.poll() is not None:
            raise AssertionError(f"the export ended first: {export.communicate()}")
        time.sleep(0.01)
    raise AssertionError("the export enqueued no jobs")


def _queued_export(
    sim: SimProcess | _Served, redis: RedisServer, paths: dict[str, Path], shards: int, *flags: str
) -> Any:
    env = sim.env(XDG_CACHE_HOME=str(paths["store"].parent / "cache"))
    command = _cli("export", "--out", f"{COORDINATOR_VOLUME}/june", "--shards", str(shards))
    return subprocess.Popen(
        [*command, "--queue", redis.url, "--report", "json", "-q", *flags],
        cwd=paths["coord"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _worker(
    sim: SimProcess | _Served, redis: RedisServer, paths: dict[str, Path], *mounts: str
) -> subprocess.Popen[str]:
    flags = [arg for mount in mounts for arg in ("--mount", mount)]
    return subprocess.Popen(
        _cli("worker", "--redis", redis.url, "--burst", "-v", *flags),
        cwd=paths["elsewhere"],
        env=sim.env(XDG_CACHE_HOME=str(paths["store"].parent / "cache")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class _Served:
    """A simulator served from this process, as the helpers here take one (its ``env``): its
    requests can be held (``ServedSimulator.hold``)."""

    def __init__(self, served: ServedSimulator) -> None:
        self.served = served

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(
            DMHUB_BASE_URL=self.served.sim.url, DMHUB_APP_ID=APP_ID, DMHUB_SECRET=SECRET, **extra
        )


def _wait_until_both_jobs_run(redis: RedisServer, workers: list[subprocess.Popen[str]]) -> None:
    for _ in range(6000):  # at most 60 s
        if redis.command("KEYS", "arq:in-progress:*") == "*2":
            return
        for proc in workers:
            assert proc.poll() is None, f"a worker ended first: {proc.communicate()}"
        time.sleep(0.01)
    raise AssertionError("the two workers never ran a job each")


def test_workers_that_mount_the_directory_elsewhere_export_it_there(
    tmp_path: Path, redis: RedisServer
) -> None:
    # The job named the directory by the coordinator's path, which a worker mounting the
    # shared volume elsewhere does not have: every shard failed (or, with a directory of that
    # name of its own, was written where no one else looks).
    paths = _volume(tmp_path)
    assert not (paths["elsewhere"] / "exports").exists()  # the workers' view of the path
    served = ServedSimulator(1_000, seed=5)
    served.start()
    try:
        sim = _Served(served)
        workers: list[subprocess.Popen[str]] = []
        export = _queued_export(sim, redis, paths, 2, "--page-size", "10", "--concurrency", "1")
        try:
            _wait_for_jobs(redis, 2, export)
            # The shards' pages held until each worker runs a job: a shard took a second or
            # so (25 ms a page), and a second worker that started later than that on a loaded
            # machine found the first had taken both ([2, 0]).
            held = served.hold(0, "GET /v1/customers")
            workers += [
                _worker(sim, redis, paths, f"{COORDINATOR_VOLUME}={paths[view] / 'exports'}")
                for view in ("a", "b")
            ]
            try:
                _wait_until_both_jobs_run(redis, workers)
            finally:
                held.release()
            ran = [proc.communicate(timeout=120) for proc in workers]
            for proc, (_, werr) in zip(workers, ran, strict=True):
                assert proc.returncode == 0, werr  # else the export would wait for ever
            out, err = export.communicate(timeout=120)
        finally:
            export.kill()
            export.communicate()
            for proc in workers:  # (ended, unless the test failed)
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        ids = served.ids()
    finally:
        served.stop()

    assert export.returncode == 0, err
    # Each worker exported a shard, each where it has the volume.
    assert [werr.count("'complete': True") for _, werr in ran] == [1, 1], ran
    report = json.loads(out)
    assert report["complete"] is True
    assert sorted(exported_ids(paths["store"] / "june")) == sorted(ids)
    manifest = Manifest.read(paths["store"] / "june")
    assert manifest is not None
    assert manifest.complete


def test_a_worker_without_the_coordinators_path_says_to_map_it(
    tmp_path: Path, redis: RedisServer
) -> None:
    paths = _volume(tmp_path)
    with sim_process(200) as sim:
        export = _queued_export(sim, redis, paths, 1)
        try:
            _wait_for_jobs(redis, 1, export)
            unmapped = _worker(sim, redis, paths)
            unmapped.communicate(timeout=120)
            out, err = export.communicate(timeout=120)
        finally:
            export.kill()
            export.communicate()
    assert export.returncode == 3, err
    error = json.loads(out)["shards"][0]["error"]
    assert error == (
        f"the export's directory {COORDINATOR_VOLUME}/june is not on this worker: "
        "mount the shared directory at that path, or tell the worker where it is mounted "
        "(dmhub-async worker --mount COORDINATOR_PATH=LOCAL_PATH; worker(mounts=))"
    )


def _job(directory: str, plan_id: str) -> dict[str, Any]:
    return {
        "job_version": 1,
        "shard": {"index": 0, "start": None, "end": None, "filters": {}, "planned_count": 0},
        "directory": directory,
        "format": "jsonl",
        "page_size": 100,
        "concurrency": 2,
        "export_id": "e",
        "plan_id": plan_id,
        "base_url": "http://127.0.0.1:9",
        "app_id": "app",
    }


def _job_context(**more: Any) -> dict[str, Any]:
    """What arq hands a shard's job (its client set by the test), progress dropped."""
    return {
        "redis": QuietRedis(),
        "job_id": "j",
        "pending_progress": set(),
        "heartbeat": 10.0,
        "takeover": 30.0,
        **more,
    }


@pytest.mark.parametrize("found", ["no manifest", "another export", "no directory"])
async def test_a_mount_to_another_directory_is_refused_before_anything_is_written(
    tmp_path: Path, found: str
) -> None:
    # The same path is not the same export: the mapped directory must hold the manifest of the
    # job's plan (its id), or the shard would be exported into another export's directory.
    local = tmp_path / "mnt"
    june = local / "june"
    if found != "no directory":
        june.mkdir(parents=True)
    if found == "another export":
        (june / "manifest.json").write_text(json.dumps({"plan_id": "0123456789abcdef"}))
    ctx = _job_context(mounts={"/exports": str(local)})
    async with DMHubClient("app", "s", base_url="http://127.0.0.1:9/") as client:
        ctx["client"] = client
        with pytest.raises(InvalidRequestError) as raised:
            await _export_shard_job(ctx, _job("/exports/june", "fedcba9876543210"))
    where = f"the export's directory /exports/june, mapped to {june} (mount /exports={local})"
    said = {
        "no manifest": f"{where} holds no manifest.json",
        "another export": f"{where} holds another export's manifest.json (plan "
        "0123456789abcdef, the job's fedcba9876543210)",
        "no directory": f"{where} is not a directory on this worker",
    }
    assert str(raised.value).startswith(said[found]), str(raised.value)
    if found == "another export":
        # A job of an earlier plan of this directory (deleted and exported again), left on the
        # queue, was said to be a mount to check, of a mount that was right.
        assert str(raised.value).endswith(
            ": the worker exported nothing; a job of another plan: one left on the queue by an"
            " earlier export at this path (its directory since deleted and exported again),"
            " which needs nothing done, or a mount to another export's directory: check the"
            " mount"
        ), str(raised.value)
    left = [local, june, june / "manifest.json"]
    assert sorted(map(str, tmp_path.rglob("*"))) == sorted(  # noqa: ASYNC240
        str(p) for p in left if p.exists()
    )  # no part, no checkpoint


async def test_a_job_of_an_earlier_plan_of_a_re_exported_directory_is_said_to_be_one(
    tmp_path: Path, redis: RedisServer
) -> None:
    # The directory deleted and exported again at the same path, by a coordinator on this
    # Redis: a job of its earlier plan left on the queue was told to check a mount that was
    # right. The later plan's jobs (or their results) on the queue's Redis, under the job's own
    # export id, say which it is.
    import redis.asyncio as aioredis

    june = tmp_path / "june"
    june.mkdir()
    (june / "manifest.json").write_text(json.dumps({"plan_id": "0123456789abcdef"}))
    queue = aioredis.Redis.from_url(redis.url)
    await queue.set("arq:result:dmhub-export:e:0123456789abcdef:00000", b"done")
    ctx = _job_context(redis=queue)
    try:
        async with DMHubClient("app", "s", base_url="http://127.0.0.1:9/") as client:
            ctx["client"] = client
            with pytest.raises(InvalidRequestError) as raised:
                await _export_shard_job(ctx, _job(str(june), "fedcba9876543210"))
    finally:
        await queue.aclose()
    assert str(raised.value) == (
        f"the export's directory {june} holds the manifest.json of a later plan of this export"
        " (0123456789abcdef), whose jobs this Redis holds: this job (fedcba9876543210) was left"
        " on the queue by an earlier export at this path, its directory since deleted and"
        " exported again; the worker exported nothing, and nothing needs doing"
    )
    assert sorted(p.name for p in june.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize(
    ("held", "later"),
    [
        ("arq:job:dmhub-export:e:0123456789abcdef:00003", True),  # its shard, queued
        ("arq:in-progress:dmhub-export:e:0123456789abcdef:00003", True),  # ... running
        ("arq:result:dmhub-export:e:0123456789abcdef:00000", True),  # the first shard's, done
        ("arq:in-progress:dmhub-export:e:0123456789abcdef:00000", True),
        ("arq:job:dmhub-export:other:0123456789abcdef:00003", False),  # another export's
        ("arq:result:dmhub-export:e:fedcba9876543210:00003", False),  # its own plan's
    ],
)
async def test_a_job_of_an_earlier_plan_is_told_by_the_later_plans_key_of_its_shard_or_the_first(
    tmp_path: Path, redis: RedisServer, held: str, later: bool
) -> None:
    # As above, a job of shard 3: the later plan may have fewer shards (no shard 3), or its
    # results of shard 3 expired, while its first shard is queued, running or done; or it is
    # this shard's job alone that is left. A key of another export (another path), or of the
    # job's own plan, tells nothing: the refusal names both causes.
    import redis.asyncio as aioredis

    june = tmp_path / "june"
    june.mkdir()
    (june / "manifest.json").write_text(json.dumps({"plan_id": "0123456789abcdef"}))
    queue = aioredis.Redis.from_url(redis.url)
    await queue.set(held, b"x")
    ctx = _job_context(redis=queue)
    job = _job(str(june), "fedcba9876543210")
    job["shard"]["index"] = 3
    try:
        async with DMHubClient("app", "s", base_url="http://127.0.0.1:9/") as client:
            ctx["client"] = client
            with pytest.raises(InvalidRequestError) as raised:
                await _export_shard_job(ctx, job)
    finally:
        await queue.aclose()
    if later:
        assert str(raised.value).startswith(
            f"the export's directory {june} holds the manifest.json of a later plan of this"
            " export (0123456789abcdef), whose jobs this Redis holds: this job"
            " (fedcba9876543210) was left on the queue by an earlier export at this path"
        ), str(raised.value)
    else:
        assert str(raised.value).endswith(
            "the worker exported nothing; a job of another plan: one left on the queue by an"
            " earlier export at this path (its directory since deleted and exported again),"
            " which needs nothing done, or a mount to another export's directory: check the"
            " mount"
        ), str(raised.value)
    assert sorted(p.name for p in june.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("found", ["no manifest", "another export"])
async def test_a_workers_own_directory_at_the_coordinators_path_is_refused(
    tmp_path: Path, found: str
) -> None:
    # Unmapped: a worker whose machine has a directory of its own at the coordinator's path
    # (not the shared volume) exported its shard there, and the coordinator recorded it
    # complete, the part on no machine it could merge from. The same check as a mount's.
    june = tmp_path / "june"
    june.mkdir()
    if found == "another export":
        (june / "manifest.json").write_text(json.dumps({"plan_id": "0123456789abcdef"}))
    ctx = _job_context()
    async with DMHubClient("app", "s", base_url="http://127.0.0.1:9/") as client:
        ctx["client"] = client
        with pytest.raises(InvalidRequestError) as raised:
            await _export_shard_job(ctx, _job(str(june), "fedcba9876543210"))
    said = {
        "no manifest": f"the export's directory {june} holds no manifest.json",
        "another export": f"the export's directory {june} holds another export's manifest.json",
    }
    assert str(raised.value).startswith(said[found]), str(raised.value)
    left = [june, june / "manifest.json"]
    assert sorted(map(str, tmp_path.rglob("*"))) == sorted(  # noqa: ASYNC240
        str(p) for p in left if p.exists()
    )  # no part, no checkpoint


@pytest.mark.parametrize(
    ("mounts", "why"),
    [
        ({"exports": "/mnt/exports"}, "absolute"),
        ({"/exports": "mnt/exports"}, "absolute"),
        ({"/exports": "/a", "/exports/": "/b"}, "twice"),
        ([("/exports", "/mnt")], "mapping"),
    ],
)
def test_mounts_that_cannot_be_read_are_refused_when_the_worker_is_made(
    mounts: Any, why: str
) -> None:
    with pytest.raises(InvalidRequestError, match=why):
        worker("redis://127.0.0.1:9/0", mounts=mounts)


@pytest.mark.parametrize(
    ("mounts", "said"),
    [
        ({"/exports": "/mnt/ex\0ports"}, "'/mnt/ex\\x00ports' holds a NUL character"),
        ({"/ex\ud83dports": "/mnt"}, "'/ex\\ud83dports' holds '\\ud83d', which no file name"),
    ],
    ids=["a NUL", "a lone surrogate"],
)
def test_a_mount_no_file_can_be_named_is_refused_when_the_worker_is_made(
    mounts: dict[str, str], said: str
) -> None:
    # Taken, as FileTokenStore took such a path before a62ae41: every job mapped through it
    # then failed "... is not a directory on this worker: check the mount", of a path no
    # directory can have, for as long as the worker ran.
    with pytest.raises(InvalidRequestError) as refused:
        worker("redis://127.0.0.1:9/0", mounts=mounts)
    assert str(refused.value).startswith(f"worker(): mounts: {said}"), str(refused.value)


def test_the_cli_refuses_a_mount_without_its_two_paths(tmp_path: Path) -> None:
    run = subprocess.run(
        _cli("worker", "--redis", "redis://127.0.0.1:9/0", "--mount", "/exports"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "--mount /exports: give COORDINATOR_PATH=LOCAL_PATH" in run.stderr, run.stderr
