"""The sharded export on the command line: --shards, --workers, merge, and what is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _crash import crash_env
from _helpers import a_worker
from _redis import RedisServer
from shard_support import SimProcess, exported_ids, sim_process

pytestmark = pytest.mark.timeout(180)


def dmhub(
    sim: SimProcess, tmp_path: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # A cache directory of the test's own: the CLI's default token store lives there.
    env = sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "dmhub_async", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def queued_export(out: Path, queue: str, shards: int = 2) -> list[str]:
    """The command of a ``shards``-shard export of everyone into ``out`` on the queue at
    ``queue``."""
    command = ["export", "--out", str(out), "--shards", str(shards), "--queue", queue, "-q"]
    return [sys.executable, "-m", "dmhub_async", *command]


def run_queued(out: Path, queue: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """:func:`queued_export` run to its end."""
    return subprocess.run(
        queued_export(out, queue), env=env, capture_output=True, text=True, timeout=150, check=False
    )


def test_export_on_worker_processes_then_merge(tmp_path: Path) -> None:
    out = tmp_path / "june"
    with sim_process(6_000) as sim:
        run = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "4", "--workers", "2")
        report = dmhub(
            sim, tmp_path, "export", "--out", str(out), "--shards", "4", "--report", "json"
        )
        merged = dmhub(sim, tmp_path, "merge", str(out), "--out", str(tmp_path / "june.jsonl"))
        state = sim.state()

    assert run.returncode == 0, run.stderr
    assert "exported 6,000 customers in 4 parts" in run.stdout
    assert sorted(exported_ids(out)) == sorted(state["ids"])
    # A rerun finds every part complete and only reports.
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["status"] == "complete"
    assert merged.returncode == 0, merged.stderr
    lines = (tmp_path / "june.jsonl").read_bytes().splitlines()
    assert len(lines) == 6_000
    assert state["tokens_issued"] == 1  # the planner, 2 workers and the rerun: one token


def test_what_a_sharded_export_refuses(tmp_path: Path) -> None:
    out = tmp_path / "parts"
    a_file = tmp_path / "file.jsonl"
    a_file.write_text("{}\n", encoding="utf-8")
    with sim_process(500) as sim:
        first = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "2", "--quiet")
        other_filters = dmhub(
            sim, tmp_path, "export", "--out", str(out), "--shards", "2", "--stage", "lead"
        )
        to_stdout = dmhub(sim, tmp_path, "export", "--out", "-", "--shards", "2")
        onto_file = dmhub(sim, tmp_path, "export", "--out", str(a_file), "--shards", "2")
        both = dmhub(
            sim,
            tmp_path,
            "export",
            "--out",
            str(out),
            "--shards",
            "2",
            "--workers",
            "2",
            "--queue",
            "redis://127.0.0.1:1/0",
        )
        too_many = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "100000")

    assert first.returncode == 0, first.stderr
    assert other_filters.returncode == 1
    assert "other filters" in other_filters.stderr
    for refused in (to_stdout, onto_file, both, too_many):
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1  # one line, no traceback
    assert a_file.read_text(encoding="utf-8") == "{}\n"


#: URLs refused as usage errors. An option redis-py does not know (a typo) or cannot read was a
#: raw TypeError traceback, or its ValueError with exit code 1.
BAD_QUEUE_URLS = (
    "notaurl",
    "redis://:hunter2@127.0.0.1:1/0?timeout=5",
    "redis://:hunter2@127.0.0.1:1/0?socket_timeout=abc",
)


def test_a_queue_that_is_no_url_or_does_not_answer_is_found_before_the_plan(
    tmp_path: Path,
) -> None:
    # Before: planned (counts sent, a manifest written), then a raw RuntimeError or
    # ConnectionError traceback; the worker the same.
    with sim_process(200) as sim:
        runs = {
            (flag, url): dmhub(
                sim,
                tmp_path,
                *(
                    ("export", "--out", str(tmp_path / "out"), "--shards", "2", "-q", flag, url)
                    if flag == "--queue"
                    else ("worker", flag, url, "--burst")
                ),
            )
            for flag in ("--queue", "--redis")
            for url in (*BAD_QUEUE_URLS, "redis://:hunter2@127.0.0.1:1/0")
        }
        requests = sum(sim.state()["per_second"])  # every API request the simulator saw

    for (flag, url), run in runs.items():
        assert run.returncode == (2 if url in BAD_QUEUE_URLS else 1), run.stderr
        assert run.stderr.count("\n") == 1, run.stderr  # one line, no traceback
        assert flag in run.stderr or "cannot reach the queue's Redis at" in run.stderr
        assert "hunter2" not in run.stderr
    assert not (tmp_path / "out").exists()
    assert requests == 0


def test_worker_processes_share_the_token_through_the_store_asked_for(
    tmp_path: Path, redis: RedisServer
) -> None:
    # With --token-store redis://..., the workers used a private file: each fetched a token
    # of its own, revoking the one every other process on the Redis store shares.
    out = tmp_path / "parts"
    with sim_process(3_000) as sim:
        run = dmhub(
            sim,
            tmp_path,
            "export",
            "--out",
            str(out),
            "--shards",
            "4",
            "--workers",
            "2",
            "--page-size",
            "50",
            "--token-store",
            redis.url,
            "-q",
        )
        state = sim.state()

    assert run.returncode == 0, run.stderr
    assert sorted(exported_ids(out)) == sorted(state["ids"])
    assert state["tokens_issued"] == 1  # the planner's, in Redis, taken up by both workers
    # One token, under this version's key and under 0.1's (legacy_token_key), for 0.1
    # processes that share the store during a rolling upgrade.
    assert redis.command("KEYS", "dmhub_async:token:*").startswith("*2")


def test_a_memory_token_store_is_the_runs_planner_and_workers_alike(tmp_path: Path) -> None:
    # --token-store memory ("this run only") with --workers: the planner kept its token in
    # its memory and the workers theirs in a private file, so the run fetched two tokens, the
    # workers' revoking the planner's. They now share the run's private file, removed at the end.
    out = tmp_path / "parts"
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    with sim_process(3_000) as sim:
        env = sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"), TMPDIR=str(private_tmp))
        command = ["export", "--out", str(out), "--shards", "4", "--workers", "2"]
        run = subprocess.run(
            [sys.executable, "-m", "dmhub_async", *command, "--token-store", "memory", "-q"],
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        state = sim.state()

    assert run.returncode == 0, run.stderr
    assert sorted(exported_ids(out)) == sorted(state["ids"])
    assert state["tokens_issued"] == 1
    assert list(private_tmp.iterdir()) == []  # no token file left behind
    assert not (tmp_path / "cache").exists()  # nor in the cache: memory was asked for


def test_a_killed_runs_private_token_file_is_removed_by_the_next_run(tmp_path: Path) -> None:
    # --token-store memory with --workers keeps the run's token in a private file of the
    # temporary directory, removed as the run ends: a coordinator killed with SIGKILL left it,
    # a live token on disk that nobody would remove (until the machine's /tmp cleaner, days).
    out = tmp_path / "parts"
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    command = [sys.executable, "-m", "dmhub_async", "export", "--out", str(out), "--shards", "4"]
    command += ["--workers", "2", "--page-size", "20", "--token-store", "memory", "-q"]
    with sim_process(2_000) as sim:
        env = sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"), TMPDIR=str(private_tmp))
        # Killed (SIGKILL) at its second manifest write, its shards handed out: at a point of
        # its own, not once the test saw its token file (a test run late under load found the
        # run ended, its file removed, and failed "killed before it wrote its token").
        log = tmp_path / "killed.log"
        killed = subprocess.run(
            command,
            env=crash_env(env, "manifest:2", log, role="main"),
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert log.read_text(encoding="utf-8").startswith("manifest:2 "), killed.stderr
        left = list(private_tmp.glob("dmhub-tokens-*/tokens.json"))
        assert left, "the run was killed before it wrote its token"
        rerun = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=150, check=False
        )
        state = sim.state()

    assert rerun.returncode == 0, rerun.stderr
    assert sorted(exported_ids(out)) == sorted(state["ids"])
    assert list(private_tmp.iterdir()) == []  # the killed run's token file went too


def test_a_queue_export_shares_the_token_with_its_workers_through_the_queue(
    tmp_path: Path, redis: RedisServer
) -> None:
    # The coordinator planned with the default file store while the workers share the token
    # through the queue's Redis: two holders of one app id, each fetch revoking the other's.
    # Two exports: 4 tokens, every worker and the second plan refused once. Now one token.
    cache = str(tmp_path / "cache")
    with (
        sim_process(3_000) as sim,
        a_worker(redis.url, sim.env(XDG_CACHE_HOME=cache)) as worker_err,
    ):
        runs = [
            dmhub(
                sim,
                tmp_path,
                "export",
                "--out",
                str(tmp_path / name),
                "--shards",
                "2",
                "--queue",
                redis.url,
                "-q",
            )
            for name in ("first", "second")
        ]
        state = sim.state()

    for run in runs:
        assert run.returncode == 0, run.stderr
    assert sorted(exported_ids(tmp_path / "second")) == sorted(state["ids"])
    assert "Traceback" not in worker_err[0], worker_err
    assert state["tokens_issued"] == 1


def test_a_worker_and_a_plain_export_share_the_token_of_DMHUB_TOKEN_STORE(
    tmp_path: Path, redis: RedisServer
) -> None:
    # DMHUB_TOKEN_STORE set for every run of the machine, as the README says: `worker` and
    # `export --queue` did not read it and shared the token through the queue's Redis, so a
    # plain export (on DMHUB_TOKEN_STORE's store) and the queue were two holders of one app
    # id's token, each fetch revoking the other's (2 tokens for these two runs).
    tokens = redis.url.rsplit("/", 1)[0] + "/1"  # another store than the queue's (db 0)
    with sim_process(1_000) as sim:
        env = sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"), DMHUB_TOKEN_STORE=tokens)
        plain = subprocess.run(
            [sys.executable, "-m", "dmhub_async", "export", "--out", str(tmp_path / "a.jsonl")],
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        with a_worker(redis.url, env) as worker_err:
            run = run_queued(tmp_path / "q", redis.url, env)
            state = sim.state()

    assert plain.returncode == 0, plain.stderr
    assert run.returncode == 0, run.stderr
    assert sorted(exported_ids(tmp_path / "q")) == sorted(state["ids"])
    assert "Traceback" not in worker_err[0], worker_err
    assert state["tokens_issued"] == 1  # the plain export's, taken up by the queue's processes


def test_a_worker_whose_token_store_is_not_the_coordinators_takes_no_shard_of_it(
    tmp_path: Path, redis: RedisServer
) -> None:
    # One worker machine with another Redis in DMHUB_TOKEN_STORE than the coordinator's (the
    # queue's): DM Hub keeps one token per app id, and the two took turns revoking each other's
    # token; shards failed as they ran, half written, with error_code 40001. Now the worker
    # refuses the coordinator's jobs before it sends or writes anything, saying why.
    tokens = redis.url.rsplit("/", 1)[0] + "/1"  # another store than the queue's (db 0)
    with sim_process(1_000) as sim:
        env = sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"))
        with a_worker(redis.url, {**env, "DMHUB_TOKEN_STORE": tokens}) as worker_err:
            run = run_queued(tmp_path / "q", redis.url, env)
            state = sim.state()

    assert run.returncode == 3, run.stderr
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text(encoding="utf-8"))
    errors = [s["error"] for s in manifest["shards"]]
    assert all("not the coordinator's token store" in (e or "") for e in errors), errors
    assert all(f":{redis.port}/1," in e for e in errors), errors  # the worker's store, named
    assert not list((tmp_path / "q").glob("part-*"))
    assert state["tokens_issued"] == 1  # the coordinator's alone: the worker fetched none
    assert "Traceback" not in worker_err[0], worker_err


@pytest.mark.parametrize("given", ["DMHUB_TOKEN_STORE", "--token-store"])
@pytest.mark.parametrize("spec", ["file:{tmp}/tokens.json", "memory"])
def test_a_token_store_of_one_machine_is_refused_on_a_queue(
    tmp_path: Path, redis: RedisServer, spec: str, given: str
) -> None:
    # A file (or memory) store is no store a queue's workers on other machines can share:
    # read, the machines revoked each other's token; ignored, the plain runs of this machine
    # and the queue did. Refused, before anything is sent, saying what to choose. Given as
    # --token-store, it was taken: each worker and the planner held a token of its own, each
    # fetch revoking the others' (and the export, with no worker able to share it, planned).
    spec = spec.format(tmp=tmp_path)
    with sim_process(100) as sim:
        env = sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"))
        flag: list[str] = []
        if given == "DMHUB_TOKEN_STORE":
            env[given] = spec
        else:
            flag = [given, spec]
        runs = [
            subprocess.run(
                [sys.executable, "-m", "dmhub_async", *command, *flag],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,  # without the check, the export waited for workers for ever
                check=False,
            )
            for command in (
                ["worker", "--redis", redis.url, "--burst"],
                queued_export(tmp_path / "q", redis.url)[3:],
            )
        ]
        state = sim.state()

    for run in runs:
        assert run.returncode == 2, run.stderr
        assert run.stderr.count("\n") == 1, run.stderr  # one line
        # The option as it was given, what it named, and why.
        assert f"{given}{'=' if given.startswith('DMHUB') else ' '}{spec}" in run.stderr
        assert "the queue's workers cannot all share" in run.stderr
        assert "redis://" in run.stderr
    assert sum(state["per_second"]) == state["tokens_issued"] == 0  # nothing was sent
    assert not (tmp_path / "q").exists()
    assert redis.command("DBSIZE") == ":0"  # nothing queued


@pytest.mark.parametrize("given", ["DMHUB_TOKEN_STORE", "--token-store"])
def test_a_worker_whose_token_store_refuses_it_says_so_as_it_starts(
    tmp_path: Path, redis: RedisServer, given: str
) -> None:
    # A Redis token store that refuses the worker (a wrong password, a database it does not
    # have) was first used by a job: the worker started, took the queue's shards and failed
    # each one (`--burst` on an empty queue: exit 0, not a word). Said at its start, before
    # it takes anything, as a queue Redis that refuses is.
    tokens = f"redis://127.0.0.1:{redis.port}/99"
    with sim_process(100) as sim:
        env = sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"))
        command = [sys.executable, "-m", "dmhub_async", "worker", "--redis", redis.url, "--burst"]
        if given == "DMHUB_TOKEN_STORE":
            env[given] = tokens
        else:
            command += [given, tokens]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        state = sim.state()

    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("dmhub-async: error: RedisTokenStore("), run.stderr
    assert "DB index is out of range" in run.stderr
    assert run.stderr.count("\n") == 1  # one line, no traceback
    assert sum(state["per_second"]) == state["tokens_issued"] == 0  # nothing was sent


def test_a_queue_with_a_password_is_reached_without_it_on_the_command_line(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A Redis with a password could only be named with it in --redis, --queue and
    # --token-store: on every process list (ps) of the machine, for the worker's whole life.
    password = "QueuePassw0rd-9f2"
    assert redis.command("CONFIG", "SET", "requirepass", password) == "+OK"
    with sim_process(1_000) as sim:
        env = sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"), DMHUB_REDIS_PASSWORD=password)
        with a_worker(redis.url, env) as worker_err:
            run = run_queued(tmp_path / "q", redis.url, env)
            state = sim.state()

    assert run.returncode == 0, run.stderr
    assert sorted(exported_ids(tmp_path / "q")) == sorted(state["ids"])
    assert "Traceback" not in worker_err[0], worker_err
    assert state["tokens_issued"] == 1  # shared through the queue's Redis, as without a password


def _exporting(
    sim: SimProcess, redis: RedisServer, tmp_path: Path, shards: int = 2
) -> subprocess.Popen[bytes]:
    """A ``shards``-shard export of everyone into ``tmp_path/q`` on the queue, started, its
    output dropped: the test waits for its exit."""
    return subprocess.Popen(
        queued_export(tmp_path / "q", redis.url, shards=shards),
        env=sim.env(XDG_CACHE_HOME=str(tmp_path / "cache")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _until_queued(redis: RedisServer, jobs: int = 2) -> None:
    """Until the export's ``jobs`` jobs are on the queue (at most 60 s)."""
    for _ in range(6000):
        if redis.command("ZCARD", "arq:queue") == f":{jobs}":
            break
        time.sleep(0.01)
    assert redis.command("ZCARD", "arq:queue") == f":{jobs}", f"the export never queued {jobs}"


def _queued_then_a_worker_with_a_wrong_secret(
    sim: SimProcess, redis: RedisServer, tmp_path: Path, secret: str = "wrong-one", jobs: int = 2
) -> subprocess.CompletedProcess[str]:
    """Once the export's ``jobs`` jobs are on the queue (at most 60 s), a burst worker whose
    DMHUB_SECRET is wrong, run to its end. (It went on after 15 s whether they were or not: a
    burst worker on an empty queue ended at once, and the test failed on its output.)"""
    _until_queued(redis, jobs)
    return subprocess.run(
        [sys.executable, "-m", "dmhub_async", "worker", "--redis", redis.url, "--burst"],
        env=sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"), DMHUB_SECRET=secret),
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def test_a_worker_says_a_failed_shard_in_one_line_not_a_traceback(
    tmp_path: Path, redis: RedisServer
) -> None:
    # arq logged each failed job with its traceback, which reached stderr through logging's
    # last resort: some 60 lines a shard, where the CLI promises one line and no traceback.
    with sim_process(200) as sim:
        export = _exporting(sim, redis, tmp_path)
        try:
            worker = _queued_then_a_worker_with_a_wrong_secret(sim, redis, tmp_path)
        finally:
            assert export.wait(timeout=150) == 3  # incomplete: both shards failed

    # A CI script running a burst worker can tell: it exited 0 with every job failed.
    assert worker.returncode == 1, worker.stderr
    assert "Traceback" not in worker.stderr, worker.stderr
    *lines, last = worker.stderr.splitlines()
    assert len(lines) == 2, worker.stderr
    assert all("failed" in line and "AuthenticationError" in line for line in lines), lines
    # It said "2 of the 2 shard jobs this worker ran failed".
    assert last == "dmhub-async: error: both shard jobs this worker ran failed (said above)"


@pytest.mark.parametrize(
    ("failed", "ran", "said"),
    [
        (1, 1, "the shard job this worker ran failed"),
        (2, 2, "both shard jobs this worker ran failed"),
        (3, 3, "all 3 shard jobs this worker ran failed"),
        (1, 2, "1 of the 2 shard jobs this worker ran failed"),
        (2, 1_000, "2 of the 1,000 shard jobs this worker ran failed"),
    ],
)
def test_a_burst_worker_says_how_many_of_its_jobs_failed_in_words(
    failed: int, ran: int, said: str
) -> None:
    # "2 of the 2 shard jobs" (and "3 of the 3") read oddly, as "1 of the 1" had.
    from dmhub_async.cli._shards import failed_jobs

    assert failed_jobs(failed, ran) == f"{said} (said above)"


def test_a_burst_worker_whose_one_job_failed_says_the_job_it_ran_failed(
    tmp_path: Path, redis: RedisServer
) -> None:
    # It said "1 of the 1 shard jobs this worker ran failed".
    with sim_process(200) as sim:
        export = _exporting(sim, redis, tmp_path, shards=1)
        try:
            worker = _queued_then_a_worker_with_a_wrong_secret(sim, redis, tmp_path, jobs=1)
        finally:
            assert export.wait(timeout=150) == 3  # incomplete: its shard failed

    assert worker.returncode == 1, worker.stderr
    *lines, last = worker.stderr.splitlines()
    assert len(lines) == 1, worker.stderr
    assert "AuthenticationError" in lines[0], lines
    assert last == "dmhub-async: error: the shard job this worker ran failed (said above)"


def test_a_burst_worker_whose_jobs_all_succeeded_exits_0(
    tmp_path: Path, redis: RedisServer
) -> None:
    with sim_process(200) as sim:
        export = _exporting(sim, redis, tmp_path)
        try:
            worker = _queued_then_a_worker_with_a_wrong_secret(sim, redis, tmp_path, sim.secret)
        finally:
            assert export.wait(timeout=150) == 0

    assert (worker.returncode, worker.stderr) == (0, "")


def test_a_burst_worker_with_one_job_failed_and_one_done_says_1_of_the_2_and_exits_1(
    tmp_path: Path, redis: RedisServer
) -> None:
    # The count of jobs it ran is of both kinds: "1 of the 1" had said it ran one job.
    with sim_process(200) as sim:
        export = _exporting(sim, redis, tmp_path)
        try:
            _until_queued(redis)
            # Shard 1's part cannot be written (a directory stands in its place): its job
            # fails, shard 0's is done.
            (tmp_path / "q" / "part-00001.jsonl").mkdir()
            worker = _queued_then_a_worker_with_a_wrong_secret(sim, redis, tmp_path, sim.secret)
        finally:
            assert export.wait(timeout=150) == 3  # incomplete: one shard failed

    assert worker.returncode == 1, worker.stderr
    assert "Traceback" not in worker.stderr, worker.stderr
    *lines, last = worker.stderr.splitlines()
    assert len(lines) == 1, worker.stderr
    assert "part-00001.jsonl" in lines[0], lines
    assert last == "dmhub-async: error: 1 of the 2 shard jobs this worker ran failed (said above)"


def test_a_worker_without_burst_stopped_after_a_failed_job_says_so_and_exits_143(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A worker serving the queue until stopped exits as stopped (143 for SIGTERM), as
    # docs/sharding.md says, not 1 for the jobs it ran that failed: those are counted by a
    # --burst worker alone, whose run ends when the queue is empty.
    with sim_process(200) as sim:
        export = _exporting(sim, redis, tmp_path)
        worker = subprocess.Popen(
            [sys.executable, "-m", "dmhub_async", "worker", "--redis", redis.url],
            env=sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"), DMHUB_SECRET="wrong-one"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Both jobs failed once the export ends: a job's result is written after the
            # worker counted it failed.
            assert export.wait(timeout=150) == 3
            worker.terminate()
            _, err = worker.communicate(timeout=30)
        finally:
            for proc in (export, worker):
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()

    assert worker.returncode == 143, err
    *lines, last = err.splitlines()
    assert len(lines) == 2, err
    assert all("failed" in line and "AuthenticationError" in line for line in lines), lines
    assert last == "dmhub-async: stopped by SIGTERM", err


def test_a_shard_failed_by_a_workers_credentials_says_to_check_the_workers_environment(
    tmp_path: Path, redis: RedisServer
) -> None:
    # The coordinator's credentials are right, a worker's secret wrong: the report said
    # "failed: ... error_code 40004: the params is illegal" then "rerun the same command", which
    # failed the same way; nothing said the credentials at fault were the worker's, read from
    # its own environment on its own machine (the worker's line said no more).
    with sim_process(200) as sim:
        export = subprocess.Popen(
            [x for x in queued_export(tmp_path / "q", redis.url) if x != "-q"],  # its report
            env=sim.env(XDG_CACHE_HOME=str(tmp_path / "cache")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            worker = _queued_then_a_worker_with_a_wrong_secret(sim, redis, tmp_path)
        finally:
            out, err = export.communicate(timeout=150)

    assert export.returncode == 3, err  # incomplete: both shards failed
    failed = [line for line in (out + err).splitlines() if ": failed: " in line]
    assert len(failed) == 2, out + err
    workers = worker.stderr.splitlines()[:-1]  # the last: how many of its jobs failed
    assert len(workers) == 2, worker.stderr
    for line in failed + workers:
        assert "error_code 40004" in line, line
        assert "DMHUB_APP_ID and DMHUB_SECRET" in line, line
        # Said once, in the command line's words: the worker's line said the library's "(the
        # app id and secret were refused: check app_id and secret)" before them.
        assert line.count("check") == 1, line
        assert "worker" in line.split("40004", 1)[1], line  # whose: the worker's, not this run's
        assert "wrong-one" not in line
        assert sim.secret not in line


def test_merge_refuses_to_write_into_the_export_or_to_a_file_named_dash(tmp_path: Path) -> None:
    # Into the manifest with --force, the merge wrote over it, said "merged 200 lines" and
    # exit 0, and the export could no longer be rerun or merged; "-" was a file of that name.
    out = tmp_path / "parts"
    dash = tmp_path / "-"
    dash.write_text("keep me\n", encoding="utf-8")
    with sim_process(300) as sim:
        first = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "2", "-q")
        manifest = (out / "manifest.json").read_bytes()
        runs = [
            dmhub(sim, tmp_path, "merge", str(out), "--out", str(target), "--force")
            for target in (out / "manifest.json", out / "part-00001.jsonl", out / "all.jsonl")
        ]
        to_dash = dmhub(sim, tmp_path, "merge", str(out), "--out", "-", "--force", cwd=tmp_path)
        again = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "2", "-q")

    assert first.returncode == 0, first.stderr
    for refused in (*runs, to_dash):
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1
    assert "inside the export's directory" in runs[0].stderr
    assert "not standard output" in to_dash.stderr
    assert (out / "manifest.json").read_bytes() == manifest
    assert dash.read_text(encoding="utf-8") == "keep me\n"
    assert again.returncode == 0, again.stderr


def test_parts_without_a_manifest_are_not_overwritten_without_force(tmp_path: Path) -> None:
    # Someone else's parts, or a failed run's whose manifest was deleted: a new plan wrote its
    # own parts over them without a word (a single-file export refuses an existing --out).
    out = tmp_path / "parts"
    out.mkdir()
    theirs = {"part-00000.jsonl": b'{"id": "theirs"}\n', "part-00001.jsonl.ckpt": b"{}"}
    for name, data in theirs.items():
        (out / name).write_bytes(data)
    with sim_process(300) as sim:
        refused = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "2", "-q")
        kept = {name: (out / name).read_bytes() for name in theirs}
        listing = sorted(p.name for p in out.iterdir())
        forced = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "2", "-q", "--force")
        state = sim.state()

    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1
    assert "part-00000.jsonl" in refused.stderr
    assert "--force" in refused.stderr
    assert kept == theirs
    assert listing == sorted(theirs)  # no manifest, no part of its own
    assert forced.returncode == 0, forced.stderr
    assert sorted(exported_ids(out)) == sorted(state["ids"])


def test_a_worker_stopped_while_redis_is_away_ends_at_once_in_one_line(
    tmp_path: Path, redis: RedisServer
) -> None:
    # SIGTERM (a deploy, systemd) while the queue's Redis was down: arq's close told Redis the
    # worker was gone, and redis-py's ConnectionError came out as a traceback in place of
    # "stopped by SIGTERM" (and, with the worker's tries for a restarting Redis, after a minute).
    code, err = _stop_a_serving_worker(
        tmp_path, redis, ["-m", "dmhub_async", "worker", "--redis", redis.url], redis.kill
    )

    assert "Traceback" not in err, err
    # One line, as the docs say: a second, unprefixed, said "the queue's Redis is away as the
    # worker stops: ConnectionError" before it (nothing to act on: arq's health key expires).
    # A poll of the queue between the kill and the signal may have said, once, that it waits
    # for Redis (ec53d5b): a line of its own, before the stop.
    lines = [line for line in err.strip().splitlines() if "does not answer" not in line]
    assert lines == ["dmhub-async: stopped by SIGTERM"], err
    assert code == 143


#: A worker whose shutdown never ends: the client's close awaits what never comes (``wait``),
#: or holds the event loop itself (``block``).
_STUCK_WORKER = """
import asyncio, sys, time
from dmhub_async.shards import _queue

HOW = sys.argv.pop(1)

async def _close(*args, **kwargs):
    if HOW == "block":
        time.sleep(120)
    await asyncio.Event().wait()

_queue._close = _close
from dmhub_async.cli import main
raise SystemExit(main())
"""


def _stop_a_serving_worker(
    tmp_path: Path,
    redis: RedisServer,
    arguments: list[str],
    before: Callable[[], object] = lambda: None,
) -> tuple[int, str]:
    """(exit code, stderr) of ``python ARGUMENTS``, a worker sent SIGTERM once it serves the
    queue (``before`` called just before), given 30 s to exit."""
    with sim_process(100) as sim:
        worker = subprocess.Popen(
            [sys.executable, *arguments],
            env=sim.env(XDG_CACHE_HOME=str(tmp_path / "cache")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not redis.commands_served().get("zrangebyscore"):  # it serves the queue
                assert worker.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.05)
            before()
            worker.terminate()
            _, err = worker.communicate(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    return worker.returncode, err


def _stop_a_stuck_worker(
    tmp_path: Path, redis: RedisServer, how: str, *flags: str
) -> tuple[int, str]:
    """:func:`_stop_a_serving_worker` of a `_STUCK_WORKER`."""
    script = tmp_path / "stuck_worker.py"
    script.write_text(_STUCK_WORKER, encoding="utf-8")
    arguments = [str(script), how, "worker", "--redis", redis.url, *flags]
    return _stop_a_serving_worker(tmp_path, redis, arguments)


@pytest.mark.parametrize(
    ("how", "bound", "waits"),
    [
        # Its close awaits what never comes: the line names where.
        ("wait", "1", "stuck_worker.py:10 _close in asyncio's Event.wait"),
        # Its close never gives the event loop back (a blocking call), which so cannot say
        # where it waits: the bound ends the process all the same, 2 s later, and says so.
        ("block", "0.5", "an event loop that does not answer"),
    ],
)
def test_a_worker_whose_stop_never_ends_exits_at_its_stop_timeout_saying_where_it_waits(
    tmp_path: Path, redis: RedisServer, how: str, bound: str, waits: str
) -> None:
    # Run 58 of the benchmarks: a `dmhub-async worker` sent SIGTERM was still in its event
    # loop 30 s later (and minutes after), saying nothing: its cleanup waited on something
    # that never came. Now its stop is bounded (--stop-timeout) and says what it waited on.
    code, err = _stop_a_stuck_worker(tmp_path, redis, how, "--stop-timeout", bound)

    assert code == 143, err
    assert err.splitlines() == [
        f"dmhub-async: stopped by SIGTERM: its cleanup did not end within {bound} s (waiting on "
        f"{waits}): exiting at once, its cleanup unfinished"
    ], err  # said by the bound alone; without it, no exit within the 30 s given (not took < 20)


@pytest.mark.parametrize("given", ["0", "-1", "nan", "inf", "soon"])
def test_a_worker_refuses_a_stop_timeout_that_is_not_a_positive_number(
    tmp_path: Path, given: str
) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmhub_async",
            "worker",
            "--redis",
            "redis://127.0.0.1:1/0",
            "--stop-timeout",
            given,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 2, run.stderr
    assert "--stop-timeout" in run.stderr


def test_a_worker_with_a_rate_limit_but_not_its_library_says_what_to_install(
    redis: RedisServer,
) -> None:
    # redis-py and arq installed by hand, not the extra: the worker reached the queue, then its
    # start was a traceback ending in "No module named 'limits'".
    without_limits = (
        "import sys; sys.modules['limits'] = None; sys.argv[0] = 'dmhub-async';"
        " from dmhub_async.cli import main; sys.exit(main())"
    )
    env = {**os.environ, "DMHUB_APP_ID": "app", "DMHUB_SECRET": "secret"}
    command = [sys.executable, "-c", without_limits, "worker", "--redis", redis.url]
    run = subprocess.run(
        [*command, "--rate-limit", "5", "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "--rate-limit needs the redis extra: pip install 'dmhub-async[redis]'" in run.stderr


def test_a_queue_redis_that_refuses_is_said_to_refuse_by_export_and_worker(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A wrong password, or a database that does not exist: `export --queue` and `worker` said
    # "cannot reach the queue's Redis ... AuthenticationError" (or ResponseError), sending the
    # user to the network though Redis answered.
    redis.command("CONFIG", "SET", "requirepass", "rightpw")
    wrong = f"redis://:hunter2@127.0.0.1:{redis.port}/0"
    no_database = f"redis://:rightpw@127.0.0.1:{redis.port}/99"
    out = tmp_path / "out"
    with sim_process(200) as sim:
        runs = {
            (flag, url, words): dmhub(
                sim,
                tmp_path,
                *(
                    ("export", "--out", str(out), "--shards", "2", "-q", flag, url)
                    if flag == "--queue"
                    else ("worker", flag, url, "--burst")
                ),
            )
            for flag in ("--queue", "--redis")
            for url, words in (
                (wrong, "invalid username-password pair"),
                (no_database, "DB index is out of range"),
            )
        }

    for (_, url, words), run in runs.items():
        where = url.replace(":hunter2@", "").replace(":rightpw@", "")
        assert run.returncode == 1, run.stderr
        refused = f"dmhub-async: error: the queue's Redis at {where} refused: "
        assert run.stderr.startswith(refused), run.stderr
        assert words in run.stderr
        assert run.stderr.count("\n") == 1  # one line, no traceback
        assert "hunter2" not in run.stderr
        assert "rightpw" not in run.stderr
    assert not out.exists()


def test_a_queue_redis_that_is_a_replica_is_refused_before_anything_is_planned(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A queue's URL naming a replica (read-only): `export --queue` reached it (a PING), planned
    # the export (its counts sent to the service, its directory made) and was refused at its
    # first enqueue; `worker` started and was refused at its first write. A replica met once
    # the run has begun is waited for (a failover): at the start it is said at once.
    (tmp_path / "primary").mkdir()
    primary = RedisServer(tmp_path / "primary")
    primary.start()
    out = tmp_path / "out"
    try:
        assert redis.command("REPLICAOF", "127.0.0.1", str(primary.port)) == "+OK"
        with sim_process(200) as sim:
            runs = [
                dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "2", "-q",
                      "--queue", redis.url),
                dmhub(sim, tmp_path, "worker", "--redis", redis.url, "--burst"),
            ]  # fmt: skip
    finally:
        primary.kill()

    for run in runs:
        assert run.returncode == 1, run.stderr
        assert run.stderr == (
            f"dmhub-async: error: the queue's Redis at {redis.url} refused: You can't write "
            "against a read only replica.\n"
        ), run.stderr
    assert not out.exists()


def test_a_queue_redis_that_wants_a_password_says_where_to_give_it(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A Redis with a password, given none or a wrong one: "the queue's Redis at ... refused:
    # Authentication required." (or "invalid username-password pair"), and nothing said where
    # a password goes, though the docs ask for DMHUB_REDIS_PASSWORD rather than the URL.
    redis.command("CONFIG", "SET", "requirepass", "rightpw")
    out = tmp_path / "out"
    with sim_process(200) as sim:
        runs = [
            dmhub(sim, tmp_path, *command, "--" + flag, redis.url)
            if password is None
            else subprocess.run(
                [sys.executable, "-m", "dmhub_async", *command, "--" + flag, redis.url],
                env=sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"), DMHUB_REDIS_PASSWORD=password),
                capture_output=True,
                text=True,
                timeout=150,
                check=False,
            )
            for command, flag in (
                (("export", "--out", str(out), "--shards", "2", "-q"), "queue"),
                (("worker", "--burst"), "redis"),
            )
            for password in (None, "hunter2")
        ]

    for run in runs:
        assert run.returncode == 1, run.stderr
        assert run.stderr.count("\n") == 1, run.stderr  # one line, no traceback
        assert " refused: " in run.stderr, run.stderr
        assert "DMHUB_REDIS_PASSWORD" in run.stderr, run.stderr
        assert "hunter2" not in run.stderr
        assert "rightpw" not in run.stderr
    assert not out.exists()


def _burst_worker(
    tmp_path: Path, url: str, password: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    """``worker --redis URL --burst FLAGS`` run to its end against a simulator of 10
    customers, ``password`` in $DMHUB_REDIS_PASSWORD."""
    with sim_process(10) as sim:
        return subprocess.run(
            [sys.executable, "-m", "dmhub_async", "worker", "--redis", url, "--burst", *flags],
            env=sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"), DMHUB_REDIS_PASSWORD=password),
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )


@pytest.mark.parametrize("written", ["before its @", "as ?password="])
def test_a_queue_url_whose_own_password_is_refused_says_so_not_the_variable(
    tmp_path: Path, redis: RedisServer, written: str
) -> None:
    # The URL's own password is sent over $DMHUB_REDIS_PASSWORD's; refused, it said "check
    # $DMHUB_REDIS_PASSWORD" whenever the variable was set, sending the user to a password
    # that was right (here) and never sent.
    redis.command("CONFIG", "SET", "requirepass", "rightpw")
    url = (
        f"redis://:hunter2@127.0.0.1:{redis.port}/0"
        if written == "before its @"
        else f"redis://127.0.0.1:{redis.port}/0?password=hunter2"
    )
    run = _burst_worker(tmp_path, url, "rightpw")

    assert run.returncode == 1, run.stderr
    assert run.stderr.endswith(
        "invalid username-password pair or user is disabled: the URL's own password was sent,"
        " not $DMHUB_REDIS_PASSWORD's: check it, or give none in the URL (which ps shows)\n"
    ), run.stderr
    assert "hunter2" not in run.stderr


def test_a_variable_password_of_url_characters_refused_says_to_check_the_variable(
    tmp_path: Path, redis: RedisServer
) -> None:
    # $DMHUB_REDIS_PASSWORD goes into the URL percent-encoded ("hunter%2F2"): compared as
    # written there, a wrong one holding a "/" or an "@" was said to be "the URL's own password
    # ..., not $DMHUB_REDIS_PASSWORD's", of a URL given none.
    redis.command("CONFIG", "SET", "requirepass", "rightpw")
    run = _burst_worker(tmp_path, redis.url, "hunter/2@x")

    assert run.returncode == 1, run.stderr
    assert run.stderr.endswith(
        "invalid username-password pair or user is disabled: check $DMHUB_REDIS_PASSWORD\n"
    ), run.stderr
    assert "hunter" not in run.stderr


@pytest.mark.parametrize("command", ["export", "worker"])
def test_a_queue_password_changed_mid_run_is_said_at_once_with_where_it_goes(
    tmp_path: Path, redis: RedisServer, command: str
) -> None:
    # The queue's Redis password changed (rotated) as the run went on: `export --queue` and
    # `worker` took the refusal for a Redis away ("does not answer"), waited their minute for
    # a password they could not change, then said "give its password in the URL", though the
    # docs ask for $DMHUB_REDIS_PASSWORD (and the password was there) rather than the URL.
    import redis as redis_py

    redis.command("CONFIG", "SET", "requirepass", "first-pw")
    queued = redis_py.Redis(port=redis.port, password="first-pw")
    out = tmp_path / "out"
    with sim_process(200) as sim, queued:
        env = sim.env(XDG_CACHE_HOME=str(tmp_path / "cache"), DMHUB_REDIS_PASSWORD="first-pw")
        args = (
            ("export", "--out", str(out), "--shards", "2", "-q", "--queue", redis.url)
            if command == "export"
            else ("worker", "--redis", redis.url)
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "dmhub_async", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Until it runs: its jobs queued (the export), its health record written (a worker).
            key = "arq:queue" if command == "export" else "arq:queue:health-check"
            deadline = time.monotonic() + 60
            while not queued.exists(key) and proc.poll() is None:
                assert time.monotonic() < deadline, "it never ran"
                time.sleep(0.05)
            queued.config_set("requirepass", "second-pw")
            queued.client_kill_filter(_type="normal", skipme=True)  # it connects again
            _, stderr = proc.communicate(timeout=30)  # its wait for a Redis away: 60 s
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert proc.returncode == 1, stderr
    where = f"redis://127.0.0.1:{redis.port}/0"
    assert stderr.splitlines()[-1] == (
        f"dmhub-async: error: the queue's Redis at {where} refused: invalid username-password "
        "pair or user is disabled: check $DMHUB_REDIS_PASSWORD"
    ), stderr
    assert "Traceback" not in stderr
    assert "did not come back" not in stderr
    assert "first-pw" not in stderr


def test_a_worker_whose_redis_refuses_its_shared_rate_limit_stops_as_it_starts(
    tmp_path: Path, redis: RedisServer
) -> None:
    # A Redis user that may not use the shared limit (an ACL user without EVALSHA, or, here,
    # one given the queue's and the tokens' keys alone): `worker --rate-limit` started, took
    # the queue's shards and failed each at its first request, a hundredth of a second each:
    # one such worker in a fleet ended a 4-shard export "0 of 4 complete". A token store
    # that refuses stops the worker as it starts.
    acl = ("ACL", "SETUSER", "w", "on", ">w-pw", "~arq:*", "~dmhub_async:*", "&*", "+@all")
    assert redis.command(*acl) == "+OK"
    url = f"redis://w@127.0.0.1:{redis.port}/0"
    run = _burst_worker(tmp_path, url, "w-pw", "--rate-limit", "50")

    assert run.returncode == 1, run.stderr
    where = f"redis://127.0.0.1:{redis.port}/0"
    assert run.stderr == (
        f"dmhub-async: error: --rate-limit: the shared rate limit at {where} refused the "
        "request: this user has no permissions to access one of the keys used as arguments: "
        "the worker takes no shard\n"
    )


@pytest.mark.parametrize("given", [False, True], ids=["the-queues", "token-store"])
def test_a_worker_whose_redis_refuses_its_token_stores_lock_stops_as_it_starts(
    tmp_path: Path, redis: RedisServer, given: bool
) -> None:
    # A Redis user that may not run the token lock's scripts (an ACL user without EVALSHA):
    # the worker read its store (a GET) as it started, took the queue's shards, and each
    # failed at its first token fetch ("taking the lock failed: NoPermissionError ..."),
    # though the docs say a token store that refuses stops the worker as it starts.
    acl = ("ACL", "SETUSER", "w", "on", ">w-pw", "~*", "&*", "+@all", "-evalsha", "-eval")
    assert redis.command(*acl) == "+OK"
    url = f"redis://w@127.0.0.1:{redis.port}/0"
    run = _burst_worker(tmp_path, url, "w-pw", *(("--token-store", url) if given else ()))

    assert run.returncode == 1, run.stderr
    assert run.stderr == (
        f"dmhub-async: error: RedisTokenStore(127.0.0.1:{redis.port}/0, prefix="
        "'dmhub_async:token:'): taking the lock failed: NoPermissionError: this user has no "
        "permissions to run the 'evalsha' command; no process can share a token through it: "
        "give the store a user, password and database that Redis takes\n"
    )
    assert "w-pw" not in run.stderr


def test_a_worker_stopping_names_no_signal_it_was_not_sent(
    tmp_path: Path, redis: RedisServer
) -> None:
    # arq's close says "shutdown on SIGUSR1 ◆ ..." when it handles no signal itself, as under
    # the CLI: `worker -v` stopped with SIGTERM (or Ctrl-C, or --burst on an empty queue)
    # printed a signal no one sent, then "stopped by SIGTERM".
    with sim_process(10) as sim:
        run = dmhub(sim, tmp_path, "worker", "--redis", redis.url, "--burst", "-v")

    assert run.returncode == 0, run.stderr
    assert "SIGUSR1" not in run.stderr, run.stderr
    assert "dmhub-async: shutdown ◆ 0 jobs complete ◆ 0 failed" in run.stderr, run.stderr


def test_verbose_reaches_the_worker_processes(tmp_path: Path) -> None:
    # `-v` turned the log on in the coordinator alone: its plan's counts were logged, and not
    # one of the pages its spawned workers walked (unless DMHUB_LOG was set).
    out = tmp_path / "june"
    with sim_process(2_000) as sim:
        run = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "2", "--workers", "2",
                    "-v", "-q")  # fmt: skip
    assert run.returncode == 0, run.stderr
    pages = [line for line in run.stderr.splitlines() if "GET /v1/customers?" in line]
    assert len(pages) >= 20, run.stderr[-2000:]  # 2,000 customers, 100 a page: the workers'
    assert all(" DEBUG dmhub_async: " in line for line in pages), pages[:3]


def test_a_report_of_one_says_one_customer_in_one_part(tmp_path: Path) -> None:
    # "exported 1 customers in 1 parts", "merged 1 records": a count of one said as many.
    out = tmp_path / "one"
    with sim_process(1) as sim:
        run = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "1")
        merged = dmhub(sim, tmp_path, "merge", str(out), "--out", str(tmp_path / "one.jsonl"))

    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"exported 1 customer in 1 part to {out} (1 of 1 complete;")
    assert "0 retries" in run.stdout
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.startswith("merged 1 record from ")


def test_a_rerun_with_another_shard_count_says_the_plan_is_kept(tmp_path: Path) -> None:
    # 8 on a directory planned with 16 took up the 16 without a word: the user believed the
    # export now ran in 8 parts.
    out = tmp_path / "parts"
    with sim_process(500) as sim:
        first = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "4", "-q")
        again = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "2")
        same = dmhub(sim, tmp_path, "export", "--out", str(out), "--shards", "4")

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert "in 4 parts" in again.stdout
    # A line of the command's own, as its errors are (it came bare, logging's last resort).
    assert again.stderr == (
        f"dmhub-async: {out}: its plan of 4 shards is taken up, not the 2 asked for: a rerun "
        "keeps the plan its directory holds (each shard its window, its part and its "
        "checkpoint); to plan 2, export to a new directory\n"
    )
    assert same.returncode == 0, same.stderr
    assert same.stderr == ""


def test_a_rerun_that_keeps_verify_always_says_so_on_a_line_of_its_own(tmp_path: Path) -> None:
    # Exported without --verify, rerun once with it (kept from then on), then without it: no
    # part's final check had run, and "(--verify always kept: ...)" was glued to the summary
    # line, "... 0 retries) (--verify always kept ...)".
    out = str(tmp_path / "parts")
    export = ["export", "--out", out, "--shards", "2"]
    with sim_process(200) as sim:
        first = dmhub(sim, tmp_path, *export, "-q")
        kept = dmhub(sim, tmp_path, *export, "--verify", "always", "-q")
        again = dmhub(sim, tmp_path, *export)

    assert (first.returncode, kept.returncode) == (0, 0), first.stderr + kept.stderr
    assert again.returncode == 0, again.stderr
    summary, *lines = again.stdout.splitlines()
    assert summary.startswith("exported 200 customers in 2 parts"), again.stdout
    assert summary.endswith("; 0 retries)"), summary
    assert "--verify always kept: an earlier run of this export asked for it" in lines, again.stdout
    assert "final check" not in again.stdout  # none ran
