"""Shards on worker processes of one machine: one token, a killed worker replaced, nothing lost."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from shard_support import (
    DIE_FLAG,
    child_dying_mid_report,
    child_dying_on_shard_zero,
    exported_ids,
    sim_process,
)

from dmhub_async import DMHubClient, FileTokenStore, InvalidRequestError
from dmhub_async.shards import Manifest, Shard, _local
from dmhub_async.shards._local import WorkerSettings, run_in_processes
from dmhub_async.shards._run import prepare

pytestmark = pytest.mark.timeout(120)


async def test_four_processes_one_token_a_killed_worker_replaced(tmp_path: Path) -> None:
    tokens = str(tmp_path / "tokens.json")
    out = tmp_path / "out"
    with sim_process(20_000, latency_ms=2) as sim:
        credentials = {"app_id": sim.app_id, "secret": sim.secret, "base_url": sim.url}
        async with DMHubClient(**credentials, token_store=FileTokenStore(tokens)) as dm:
            manifest = await prepare(dm, out, 8)
        settings = WorkerSettings(credentials, tokens, concurrency=4)
        running = asyncio.ensure_future(
            run_in_processes(settings, out, manifest, 4, progress=False)
        )
        killed = await kill_a_worker_mid_shard(out)
        manifest = await running
        state = sim.state()

    assert killed
    assert manifest.complete
    ids = exported_ids(out)
    assert len(ids) == len(set(ids)) == 20_000
    assert sorted(ids) == sorted(state["ids"])
    assert state["tokens_issued"] == 1  # the planner and 4 (+1 replacement) workers: one token
    on_disk = Manifest.read(out)
    assert on_disk is not None
    assert on_disk.status() == "complete"
    assert on_disk.exported == 20_000


async def test_a_worker_dead_in_the_middle_of_a_report_stops_no_other_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed while it sends a report leaves half a message behind. With one queue for
    all workers it also left the queue's lock held: no report arrived again and the run waited
    for ever (a CI run hung this way in the test above). Each worker has its own pipe now."""
    tokens = str(tmp_path / "tokens.json")
    out = tmp_path / "out"
    monkeypatch.setenv(DIE_FLAG, str(tmp_path / "died"))
    monkeypatch.setattr(_local, "_child", child_dying_mid_report)  # the spawned take it by name
    with sim_process(4_000) as sim:
        credentials = {"app_id": sim.app_id, "secret": sim.secret, "base_url": sim.url}
        async with DMHubClient(**credentials, token_store=FileTokenStore(tokens)) as dm:
            manifest = await prepare(dm, out, 4)
        settings = WorkerSettings(credentials, tokens, concurrency=2)
        manifest = await asyncio.wait_for(
            run_in_processes(settings, out, manifest, 2, progress=False), timeout=60
        )
        state = sim.state()

    assert (tmp_path / "died").exists()
    assert manifest.complete
    ids = exported_ids(out)
    assert len(ids) == len(set(ids)) == 4_000
    assert sorted(ids) == sorted(state["ids"])


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_shard_that_kills_every_worker_fails_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """A shard whose worker died MAX_TRIES times is failed; the shards not yet handed out still
    go to a worker. The dead worker was not replaced once its shard failed: with every worker
    gone that way (one worker, or as many poisonous shards as workers) the run waited for ever
    on shards no process would take."""
    monkeypatch.setattr(_local, "_child", child_dying_on_shard_zero)
    out = tmp_path / "out"
    with sim_process(600) as sim:
        credentials = {"app_id": sim.app_id, "secret": sim.secret, "base_url": sim.url}
        async with DMHubClient(**credentials) as dm:
            manifest = await prepare(dm, out, 3)
        # Bounded for a run that waits for ever, not for its pace: one worker is MAX_TRIES + 1
        # spawned processes one after another, each importing the package; on a loaded
        # machine they passed 30 s in 3 of 8 runs. Under the suite's own 120 s per test.
        manifest = await asyncio.wait_for(
            run_in_processes(None, out, manifest, workers, client=credentials, progress=False),
            timeout=100,
        )
        state = sim.state()

    assert [s.status for s in manifest.shards] == ["failed", "complete", "complete"]
    assert manifest.shards[0].error == f"its worker died {_local.MAX_TRIES} times"
    assert not manifest.complete
    planned = manifest.shards[1].shard.planned_count + manifest.shards[2].shard.planned_count
    ids = exported_ids(out)
    assert len(ids) == len(set(ids)) == planned
    assert set(ids) <= set(state["ids"])
    assert not multiprocessing.active_children()


async def test_a_run_refused_keeps_its_clients_secret_out_of_its_traceback(tmp_path: Path) -> None:
    # run_in_processes(client=...) takes DMHubClient's keyword arguments, the app secret among
    # them: its own variable `client` held them, for an error tracker (which records each
    # frame's variables) to send with any error that came through it, a refused setting here.
    import traceback

    manifest = Manifest.new(
        [Shard(0, None, None)], fmt="jsonl", base_url="http://127.0.0.1:1", app_id="a", filters={}
    )
    credentials = {"app_id": "a", "secret": "s-SECRET-CANARY-5"}
    with pytest.raises(InvalidRequestError) as refused:
        await run_in_processes(None, tmp_path, manifest, 2, client=credentials, progress="no")  # type: ignore[arg-type]
    del credentials  # the test's own variable: not the SDK's
    said = "".join(
        traceback.TracebackException.from_exception(refused.value, capture_locals=True).format()
    )
    assert "progress must be True or False" in said
    assert [line for line in said.splitlines() if "SECRET-CANARY" in line] == []


async def kill_a_worker_mid_shard(out: Path) -> bool:
    """SIGKILL one worker once some part has rows in it (a shard half done)."""
    for _ in range(600):
        started = any(size > 0 for size in part_sizes(out))
        children = multiprocessing.active_children()
        if started and children:
            os.kill(children[0].pid or 0, signal.SIGKILL)
            return True
        await asyncio.sleep(0.05)
    return False


def part_sizes(out: Path) -> list[int]:
    """The sizes of the part files being written (temp names included)."""
    sizes = []
    for part in [*out.glob("part-*"), *out.glob(".part-*")]:
        try:
            sizes.append(part.stat().st_size)
        except FileNotFoundError:  # renamed into place in between
            continue
    return sizes


async def _run_waiting_on_pages(sim: Any, out: Path, workers: int) -> asyncio.Future[Manifest]:
    """``run_in_processes`` of ``workers`` shards of ``sim``'s customers into ``out``, under way:
    each worker waiting on a page the simulator holds back a minute."""
    credentials = {"app_id": sim.app_id, "secret": sim.secret, "base_url": sim.url}
    async with DMHubClient(**credentials) as dm:
        manifest = await prepare(dm, out, workers)
    sim.faults.paths = ("GET /v1/customers",)
    sim.faults.latency = 60.0  # every page: the workers are all waiting on one
    running = asyncio.ensure_future(
        run_in_processes(None, out, manifest, workers, client=credentials, progress=False)
    )
    for _ in range(1200):  # bounded: a minute at most
        if sim.counters.routes["GET /v1/customers"] >= workers:
            break
        await asyncio.sleep(0.05)
    assert sim.counters.routes["GET /v1/customers"] >= workers
    return running


async def test_a_run_cancelled_while_its_workers_wait_for_pages_ends_in_one_grace_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelled (a timeout, a service's shutdown; the CLI's Ctrl-C ends it this way too) while
    # each worker waited on a slow page, the run waited for its workers one after another, a
    # grace period each: 10 s a worker, 80 s for `--workers 8` on a struggling service.
    from multiprocessing.process import BaseProcess

    from dmhub_async.testing import DMHubSimulator

    monkeypatch.setattr(_local, "STOP_GRACE", 1.0)
    # The waits the run gives its workers, in turn: a grace period's (a join), or a kill and
    # the join that reaps it: their seconds, not the wall clock's (a loaded machine's).
    waits: list[tuple[str, float | None]] = []
    join, kill = BaseProcess.join, BaseProcess.kill

    def joined(proc: BaseProcess, timeout: float | None = None) -> None:
        waits.append(("join", timeout))
        join(proc, timeout)

    def killed(proc: BaseProcess) -> None:
        waits.append(("kill", None))
        kill(proc)

    out = tmp_path / "out"
    async with DMHubSimulator(customers=300) as sim:
        running = await _run_waiting_on_pages(sim, out, 3)

        monkeypatch.setattr(BaseProcess, "join", joined)
        monkeypatch.setattr(BaseProcess, "kill", killed)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    assert [what for what, _ in waits] == ["join", "kill", "join"] * 3  # each one killed
    # One grace period for all, then they are killed; before: one each (10 s a worker).
    grace = [seconds or 0.0 for at, (_, seconds) in enumerate(waits) if at % 3 == 0]
    assert sum(grace) <= 1.0 + 0.1, waits
    assert not multiprocessing.active_children()
    # Its workers stopped with it: the manifest said "running" for their shards all the same.
    on_disk = Manifest.read(out)
    assert on_disk is not None
    assert [s.status for s in on_disk.shards] == ["pending"] * 3
    assert all("stopped before it ended" in (s.error or "") for s in on_disk.shards)


@pytest.mark.parametrize("again", [2, 0], ids=["cancelled-twice", "cancelled-at-every-turn"])
async def test_a_run_cancelled_again_as_it_stops_its_workers_still_stops_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, again: int
) -> None:
    # A second cancel (a task group's after an asyncio.timeout's; anyio's cancel scope, which
    # cancels at every turn until its task leaves) landed in the wait for the workers: the run
    # returned at once, its workers alive, exporting on with their parts locked, and the
    # manifest left saying "running" for their shards.
    from dmhub_async.testing import DMHubSimulator

    monkeypatch.setattr(_local, "STOP_GRACE", 1.0)
    out = tmp_path / "out"
    async with DMHubSimulator(customers=300) as sim:
        running = await _run_waiting_on_pages(sim, out, 2)

        running.cancel()
        for _ in range(again):
            await asyncio.sleep(0)  # the run stopping: waiting for its workers to end
        running.cancel()
        while again == 0 and not running.done():
            await asyncio.sleep(0)
            running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    assert not multiprocessing.active_children()
    on_disk = Manifest.read(out)
    assert on_disk is not None
    assert [s.status for s in on_disk.shards] == ["pending"] * 2
    assert all("stopped before it ended" in (s.error or "") for s in on_disk.shards)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX: flock")
def test_a_private_token_directory_outlives_only_a_dead_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run killed with SIGKILL left its private token file (a live token) in the temporary
    # directory for good. The next run removes it, and never a live run's or an unknown one.
    monkeypatch.setattr(_local.tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "dmhub-tokens-dead"
    dead.mkdir(mode=0o700)
    (dead / "owner.lock").write_text("")  # nobody holds it: its run is gone
    (dead / "tokens.json").write_text('{"k": {"access_token": "t", "expires_at": 9e9}}')
    unknown = tmp_path / "dmhub-tokens-older-release"
    unknown.mkdir(mode=0o700)

    with _local.private_token_directory() as live:
        assert (os.stat(live).st_mode & 0o777) == 0o700
        assert not dead.exists()
        assert unknown.exists()
        with _local.private_token_directory() as other:  # a second run starts beside it
            assert Path(live).exists()
            assert other != live
        assert not Path(other).exists()
        assert Path(live).exists()
    assert not Path(live).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [unknown.name]


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX: flock")
def test_a_token_directory_its_run_was_killed_making_is_removed_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run killed between making its private token directory and renaming its owner file in
    # place left the directory (empty, or with the owner file under its first name) for good:
    # no run removed a directory without an owner file, and each such kill left one more.
    # The next run removes them, silently, once they are a minute old; a younger one (a run
    # making it now) and one that holds a token file (an earlier release's run) are left.
    monkeypatch.setattr(_local.tempfile, "tempdir", str(tmp_path))
    hour_ago = time.time() - 3600
    empty = tmp_path / "dmhub-tokens-killed-at-mkdtemp"
    empty.mkdir(mode=0o700)
    half = tmp_path / "dmhub-tokens-killed-before-rename"
    half.mkdir(mode=0o700)
    (half / ".owner").write_text("")
    older = tmp_path / "dmhub-tokens-older-release"
    older.mkdir(mode=0o700)
    (older / "tokens.json").write_text("{}")
    for made in (empty, half, older):
        os.utime(made, (hour_ago, hour_ago))
    young = tmp_path / "dmhub-tokens-being-made"
    young.mkdir(mode=0o700)

    with _local.private_token_directory() as live:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [older.name, young.name, Path(live).name]
        )


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX: flock")
def test_a_killed_runs_token_directory_is_kept_while_its_workers_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A coordinator killed outright (kill -9, the OOM killer) leaves its workers running to the
    # end of their pages. The next run took the directory for a dead run's and removed it under
    # them; a worker's next token (FileTokenStore makes its directory again) was then left in a
    # directory without an owner file, which no run removes: a live token on disk for good.
    # (Three quick reruns after such kills left four.) The workers hold the run's lock too.
    import subprocess
    import sys

    from _cli_support import REPO, ServedSimulator

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(_local.tempfile, "tempdir", str(private_tmp))
    holder = (
        "import time\n"
        "from dmhub_async.shards._local import private_token_directory\n"
        "with private_token_directory() as d:\n"
        "    print(d, flush=True)\n"
        "    time.sleep(100)\n"
    )
    env = {**os.environ, "TMPDIR": str(private_tmp), "PYTHONPATH": str(REPO)}
    coordinator = subprocess.Popen(
        [sys.executable, "-c", holder], env=env, stdout=subprocess.PIPE, text=True
    )
    served = ServedSimulator(50)
    served.start()
    ctx = multiprocessing.get_context("spawn")
    worker = None
    events = None
    try:
        assert coordinator.stdout is not None
        private = Path(coordinator.stdout.readline().strip())
        sim = served.sim
        credentials = {"app_id": sim.app_id, "secret": sim.secret, "base_url": sim.url}

        async def plan() -> Manifest:
            async with DMHubClient(**credentials) as dm:
                return await prepare(dm, tmp_path / "out", 1)

        manifest = asyncio.run(plan())
        settings = WorkerSettings(credentials, str(private / "tokens.json"))
        tasks = ctx.Queue()
        events, writer = ctx.Pipe(duplex=False)
        worker = ctx.Process(
            target=_local._child,
            args=(settings, str(tmp_path / "out"), "jsonl", tasks, writer),
            daemon=True,
        )
        worker.start()
        writer.close()
        tasks.put({"shard": manifest.shards[0].shard.to_dict(), "verify": "auto"})
        while True:  # the worker has its token and has exported its shard
            assert events.poll(60), "the worker said nothing"
            if events.recv()[0] != "progress":
                break
        coordinator.kill()
        coordinator.wait(timeout=30)

        _local._remove_stale_token_directories()  # the next run starts: its worker still runs

        assert (private / "tokens.json").exists()
        tasks.put(None)
        worker.join(30)
        assert worker.exitcode == 0
        _local._remove_stale_token_directories()  # and the one after: now it is dead
        assert list(private_tmp.iterdir()) == []
    finally:
        coordinator.kill()
        coordinator.wait(timeout=30)
        if coordinator.stdout is not None:
            coordinator.stdout.close()
        if events is not None:
            events.close()
        if worker is not None and worker.is_alive():
            worker.kill()
            worker.join(30)
        served.stop()


async def test_a_failed_shards_retries_come_back_from_its_worker(tmp_path: Path) -> None:
    """A shard whose export failed in its worker (its requests retried until the client gave
    up) was sent back as its error alone: the retries it took were counted nowhere, and the
    manifest's total said nothing of them. The worker sends them with the error."""
    from _cli_support import ServedSimulator

    from dmhub_async import RetryPolicy
    from dmhub_async.testing._checks import ApiError

    def down(request: object) -> None:
        if getattr(request, "path", "").startswith("/v1/customers"):
            raise ApiError(503, 503, "down")

    out = tmp_path / "out"
    served = ServedSimulator(50)
    served.start()
    try:
        sim = served.sim
        credentials = {"app_id": sim.app_id, "secret": sim.secret, "base_url": sim.url}
        async with DMHubClient(**credentials) as dm:
            manifest = await prepare(dm, out, 1)
        served.call(sim.on_request, down)
        retry = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.01)
        settings = WorkerSettings({**credentials, "retry": retry}, str(tmp_path / "tokens.json"))
        manifest = await asyncio.wait_for(
            run_in_processes(settings, out, manifest, 1, progress=False), timeout=60
        )
    finally:
        served.stop()

    [shard] = manifest.shards
    assert shard.status == "failed"
    assert "503" in (shard.error or "")
    assert shard.retries == 2
    assert manifest.retries == 2
    assert not multiprocessing.active_children()


async def test_worker_processes_export_an_id_list_each_customer_once(tmp_path: Path) -> None:
    # Each process is handed its shard's slice by offsets (the list's digest with them) and
    # reads the ids from the directory's id_list.txt.
    out = tmp_path / "out"
    with sim_process(500) as sim:
        credentials = {"app_id": sim.app_id, "secret": sim.secret, "base_url": sim.url}
        wanted = sim.state()["ids"][::3]
        given = [*wanted[::-1], *wanted[:10], *range(9_000_000_000, 9_000_006_000)]
        async with DMHubClient(**credentials) as dm:
            manifest = await prepare(dm, out, 4, id_list=given)
        assert all(o.shard.detached for o in manifest.shards)
        manifest = await asyncio.wait_for(
            run_in_processes(None, out, manifest, 2, client=credentials, progress=False), 60
        )

    assert manifest.complete
    ids = exported_ids(out)
    assert sorted(ids) == sorted(wanted)


async def test_the_progress_total_on_worker_processes_ends_at_the_customers_found(
    tmp_path: Path,
) -> None:
    # An id list's slices plan their ids, 1,000 here, of which some 400 are customers: the
    # total heard was 1,000 to the end. Each complete shard's customers take its place.
    from dmhub_async.testing._seeded_rows import FIRST_ID

    out = tmp_path / "out"
    heard: list[tuple[int, int | None]] = []
    with sim_process(600) as sim:
        credentials = {"app_id": sim.app_id, "secret": sim.secret, "base_url": sim.url}
        async with DMHubClient(**credentials) as dm:
            manifest = await prepare(dm, out, 3, id_list=range(FIRST_ID, FIRST_ID + 1_000))
        manifest = await asyncio.wait_for(
            run_in_processes(
                None,
                out,
                manifest,
                2,
                client=credentials,
                progress=False,
                on_total=lambda done, total: heard.append((done, total)),
            ),
            timeout=60,
        )

    assert manifest.complete
    found = manifest.exported
    assert 0 < found < 1_000
    assert heard[-1] == (found, found)
