"""Exports killed with SIGKILL at named points, the service changed while they are down, and
rerun until they exit 0: every customer once, no torn record, a report that tells the truth.

The command runs in a subprocess (its own process group) against a simulator served from this
process; tests/_crash_site/sitecustomize.py kills it at the point named (tests/_crash.py).
tests/crash_sweep.py runs a long random sweep of the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _cli_support import TIMEOUT, ServedSimulator, cli_command, serve, served_env
from _crash import check_export, crash_env, records, run_once, run_until_done, summary

CUSTOMERS = 600
PAGE = ["--page-size", "50", "--concurrency", "2", "--report", "json", "--no-progress"]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sim() -> Iterator[ServedSimulator]:
    yield from serve(CUSTOMERS)


@pytest.fixture
def env(sim: ServedSimulator, tmp_path: Path) -> dict[str, str]:
    return served_env(sim, tmp_path / "cache")


class Churn:
    """Deletes and inserts at the service between runs; remembers what was deleted (a record
    exported before its delete stays in the file, as docs/reliability.md says)."""

    def __init__(self, sim: ServedSimulator, seed: int = 1) -> None:
        self.sim, self.rng, self.deleted = sim, random.Random(seed), set[int]()

    def __call__(self, _run: int) -> None:
        def change() -> None:
            ids = self.sim.sim.customer_ids()
            for customer_id in self.rng.sample(ids[: len(ids) // 2], 4):
                self.sim.sim.delete_customer(customer_id)
                self.deleted.add(customer_id)
            low, high = ids[0], ids[len(ids) // 3]  # behind most cursors: the final check's
            for _ in range(4):
                customer_id = self.rng.randrange(low, high)
                if self.sim.sim.customer(customer_id) is None:
                    self.sim.sim.insert_customer({"displayName": "new"}, customer_id=customer_id)

        self.sim.call(change)

    def expected(self) -> list[int]:
        return self.sim.ids()


def check(out: Path, fmt: str, sim: ServedSimulator, churn: Churn, report: dict) -> None:
    rows = records(out, fmt)
    exported_then_deleted = {int(r["id"]) for r in rows} & churn.deleted
    check_export(out, fmt, sorted({*sim.ids(), *exported_then_deleted}), report)


# -- one file -------------------------------------------------------------------------------------

KILLS = [
    ["page:1"],
    ["page:5"],
    ["write:1"],  # mid-write of the first page, before any checkpoint
    ["write:4"],  # mid-write of a page
    ["sync:3"],  # the output synced, its checkpoint not yet written
    ["ckpt_write:1"],
    ["ckpt_write:3"],  # half a checkpoint in its temporary file
    ["ckpt_rename:4"],  # the checkpoint synced, not yet renamed
    ["page:3", "verify:2"],  # in the final check's id walk of the resumed run
    ["page:6", "recover:1"],  # just after the final check appended customers it found missing
    ["page:2", "finish:1"],  # done and synced, the checkpoint not yet removed
    ["write:2", "page:2", "sync:2", "ckpt_write:2"],  # killed again and again
]


@pytest.mark.parametrize("kills", KILLS, ids=["+".join(k) for k in KILLS])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_killed_and_rerun_has_every_customer_once(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path, fmt: str, kills: list[str]
) -> None:
    out = tmp_path / f"customers.{fmt}"
    args = ["export", "--out", out.name, "--checkpoint", "customers.ckpt", *PAGE]
    churn = Churn(sim)
    runs = run_until_done(args, env, tmp_path, kills, between=churn)

    assert [r.crashed_at is not None for r in runs] == [True] * len(kills) + [False]
    check(out, fmt, sim, churn, runs[-1].report)
    assert not (tmp_path / "customers.ckpt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [out.name]


@pytest.mark.parametrize("force", [False, True], ids=["new", "over-an-old-file"])
@pytest.mark.parametrize("point", ["ckpt_rename:1", "in_place:1", "in_placed:1"])
def test_an_export_killed_as_its_file_takes_the_outputs_name_reruns(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path, point: str, force: bool
) -> None:
    """Killed between the first checkpoint's rename and the work file's: the file was in place
    with no checkpoint, and every rerun of the command was refused ("--out exists: pass
    --force"), the old export replaced by a partial one that nothing said was partial."""
    out = tmp_path / "customers.jsonl"
    args = ["export", "--out", out.name, "--checkpoint", "customers.ckpt", *PAGE]
    if force:
        out.write_bytes(b'{"id": 1, "displayName": "yesterday"}\n')
        args.append("--force")

    runs = run_until_done(args, env, tmp_path, [point], max_runs=3)

    assert runs[0].crashed_at is not None
    assert [r.returncode for r in runs[1:]] == [0], runs
    check_export(out, "jsonl", sim.ids(), runs[-1].report)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [out.name]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_rerun_after_a_kill_once_the_export_ended_says_it_reads_as_a_finished_export(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path, fmt: str
) -> None:
    """Killed once the export had ended (its checkpoint removed, no report printed), the rerun
    said only "--out customers.jsonl exists: pass --force", as of any file: nothing told the
    user the file was the export that had just run, or that the checkpoint was gone on purpose."""
    out = tmp_path / f"customers.{fmt}"
    args = ["export", "--out", out.name, "--checkpoint", "customers.ckpt", *PAGE]
    killed = run_once(args, env, tmp_path, "finished:1")
    assert killed.crashed_at is not None
    assert not (tmp_path / "customers.ckpt").exists()
    before, requests = out.read_bytes(), sim.sim.counters.total

    rerun = run_once(args, env, tmp_path)

    assert rerun.returncode == 2, rerun.stderr
    assert "reads as a finished export" in rerun.stderr
    assert f"{len(sim.ids()):,} customers" in rerun.stderr
    assert "--force" in rerun.stderr
    assert out.read_bytes() == before
    assert sim.sim.counters.total == requests  # refused before any request


@pytest.mark.parametrize("given", [None, "typo.ckpt"], ids=["no --checkpoint", "another"])
def test_a_rerun_of_a_stopped_export_without_its_checkpoint_names_it_not_a_finished_export(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path, given: str | None
) -> None:
    """Stopped midway (a kill, a Ctrl-C), then run again with its --checkpoint misspelt: "--out
    customers.jsonl exists and reads as a finished export (150 customers): an export removes
    its checkpoint when it ends ...", of a partial file whose checkpoint lay beside it; and run
    again without --checkpoint, "exists: pass --force to overwrite it", which threw away what
    was exported. Both name the checkpoint that resumes it."""
    out = tmp_path / "customers.jsonl"
    killed = run_once(
        ["export", "--out", out.name, "--checkpoint", "customers.ckpt", *PAGE],
        env,
        tmp_path,
        "page:3",
    )
    assert killed.crashed_at is not None
    assert (tmp_path / "customers.ckpt").exists()
    sim.settled()  # the killed run's pages in flight counted as its own
    before, requests = out.read_bytes(), sim.sim.counters.total

    checkpoint = ["--checkpoint", given] if given else []
    rerun = run_once(["export", "--out", out.name, *checkpoint, *PAGE], env, tmp_path)

    assert rerun.returncode == 2, rerun.stderr
    assert "finished export" not in rerun.stderr
    assert "in progress" in rerun.stderr
    assert "rerun with --checkpoint customers.ckpt to resume it" in rerun.stderr
    # A --checkpoint given is said not to be the one: "of checkpoint customers.ckpt" read as
    # though the one given were it.
    said = "of another checkpoint, customers.ckpt" if given else "of checkpoint customers.ckpt"
    assert said in rerun.stderr
    assert out.read_bytes() == before
    assert sim.sim.counters.total == requests  # refused before any request
    resumed = run_once(
        ["export", "--out", out.name, "--checkpoint", "customers.ckpt", *PAGE], env, tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    check_export(out, "jsonl", sim.ids(), resumed.report)


def test_a_rerun_given_a_misspelt_checkpoint_in_another_directory_names_the_one_there(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    """Checkpoints kept in a directory of their own (--checkpoint ckpts/customers.ckpt), the
    output in another, stopped, then run again with the checkpoint misspelt: the directory
    the --checkpoint given names is searched too, and the one there named, not "exists and
    reads as ...", which sent the user to --force."""
    (tmp_path / "out").mkdir()
    (tmp_path / "ckpts").mkdir()
    args = ["export", "--out", "out/customers.jsonl", *PAGE]
    killed = run_once([*args, "--checkpoint", "ckpts/customers.ckpt"], env, tmp_path, "page:3")
    assert killed.crashed_at is not None
    out = tmp_path / "out" / "customers.jsonl"
    sim.settled()  # the killed run's pages in flight counted as its own
    before, requests = out.read_bytes(), sim.sim.counters.total

    rerun = run_once([*args, "--checkpoint", "ckpts/customer.ckpt"], env, tmp_path)

    assert rerun.returncode == 2, rerun.stderr
    assert "in progress" in rerun.stderr
    assert "rerun with --checkpoint ckpts/customers.ckpt to resume it" in rerun.stderr
    assert out.read_bytes() == before
    assert sim.sim.counters.total == requests  # refused before any request


def test_a_stopped_export_through_a_linked_directory_is_named_when_rerun_without_it(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    """An export to a directory reached through a link (a mounted volume's usual path), stopped,
    then run again there without --checkpoint: its checkpoint is named as for any other."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    args = ["export", "--out", "link/customers.jsonl", *PAGE]
    killed = run_once([*args, "--checkpoint", "link/customers.ckpt"], env, tmp_path, "page:3")
    assert killed.crashed_at is not None
    out = tmp_path / "real" / "customers.jsonl"
    sim.settled()  # the killed run's pages in flight counted as its own
    before, requests = out.read_bytes(), sim.sim.counters.total

    rerun = run_once(args, env, tmp_path)

    assert rerun.returncode == 2, rerun.stderr
    assert "in progress" in rerun.stderr
    assert "rerun with --checkpoint link/customers.ckpt to resume it" in rerun.stderr
    assert out.read_bytes() == before
    assert sim.sim.counters.total == requests  # refused before any request


def test_a_stopped_export_moved_with_its_checkpoint_is_named_when_rerun_without_it(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    """A stopped export's directory moved (its file and checkpoint together, as the export
    itself resumes them), then run again there without --checkpoint: the checkpoint records
    the old path, and was to be named all the same, not "exists: pass --force", which threw
    away what was exported."""
    (tmp_path / "old").mkdir()
    killed = run_once(
        ["export", "--out", "old/customers.jsonl", "--checkpoint", "old/customers.ckpt", *PAGE],
        env,
        tmp_path,
        "page:3",
    )
    assert killed.crashed_at is not None
    (tmp_path / "old").rename(tmp_path / "new")
    out = tmp_path / "new" / "customers.jsonl"
    sim.settled()  # the killed run's pages in flight counted as its own
    before, requests = out.read_bytes(), sim.sim.counters.total

    rerun = run_once(["export", "--out", "new/customers.jsonl", *PAGE], env, tmp_path)

    assert rerun.returncode == 2, rerun.stderr
    assert "in progress" in rerun.stderr
    assert "rerun with --checkpoint new/customers.ckpt to resume it" in rerun.stderr
    assert out.read_bytes() == before
    assert sim.sim.counters.total == requests  # refused before any request
    resumed = run_once(
        ["export", "--out", "new/customers.jsonl", "--checkpoint", "new/customers.ckpt", *PAGE],
        env,
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    check_export(out, "jsonl", sim.ids(), resumed.report)


def test_a_checkpoint_of_an_export_to_another_directory_is_not_named_for_a_file_beside_it(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    """An export stopped whose checkpoint was kept apart from its output (--out x/out.jsonl
    --checkpoint y/out.ckpt), then another export to y/out.jsonl, a file of that name beside
    the checkpoint: it was refused as "an export in progress (150 customers so far) of
    checkpoint y/out.ckpt: rerun with --checkpoint y/out.ckpt to resume it", and that rerun
    was refused "belongs to another export" (its output stands in x/). The file is said to
    exist, as any other."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    killed = run_once(
        ["export", "--out", "x/out.jsonl", "--checkpoint", "y/out.ckpt", *PAGE],
        env,
        tmp_path,
        "page:3",
    )
    assert killed.crashed_at is not None
    assert (tmp_path / "y" / "out.ckpt").exists()
    (tmp_path / "y" / "out.jsonl").write_text('{"id": 1}\n', encoding="utf-8")
    sim.settled()  # the killed run's pages in flight counted as its own
    requests = sim.sim.counters.total

    rerun = run_once(["export", "--out", "y/out.jsonl", *PAGE], env, tmp_path)

    assert rerun.returncode == 2, rerun.stderr
    assert "in progress" not in rerun.stderr
    assert "y/out.ckpt" not in rerun.stderr
    assert "--out y/out.jsonl exists" in rerun.stderr
    assert (tmp_path / "y" / "out.jsonl").read_text(encoding="utf-8") == '{"id": 1}\n'
    assert sim.sim.counters.total == requests  # refused before any request


def test_a_foreign_file_where_a_checkpointed_export_would_go_is_not_taken_for_one(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "customers.jsonl"
    out.write_bytes(b"a shopping list\n")
    args = ["export", "--out", out.name, "--checkpoint", "customers.ckpt", *PAGE]

    refused = run_once(args, env, tmp_path)

    assert refused.returncode == 2, refused.stderr
    assert "does not read as an export" in refused.stderr
    assert "finished export" not in refused.stderr
    assert out.read_bytes() == b"a shopping list\n"


def test_a_repaired_output_killed_before_its_next_checkpoint_reruns(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    """An output found shorter than its checkpoint (its last record not on disk at a kill) is
    cut back and resumed. Had the repair not been checkpointed at once, a kill after the next
    page's write, before its checkpoint, left other records (customers deleted while down)
    where the old checkpoint's were, and every rerun was refused as "does not match its
    checkpoint": the export could only be started over."""
    out = tmp_path / "customers.jsonl"
    args = ["export", "--out", out.name, "--checkpoint", "customers.ckpt", *PAGE]
    assert run_once(args, env, tmp_path, "page:6").crashed_at is not None  # 300 records
    data = out.read_bytes()
    last = data.splitlines(keepends=True)[-1]
    with out.open("r+b") as fh:
        fh.truncate(len(data) - len(last) // 2)  # record 300 torn
    written = {json.loads(line)["id"] for line in data.splitlines()[:-1]}
    deleted = sim.ids()[295:300]  # the file's last customers, deleted while it was down

    def delete() -> None:
        for customer_id in deleted:
            sim.sim.delete_customer(customer_id)

    sim.call(delete)

    # The first checkpoint written: the repair's, or (had it none) the next page's.
    killed = run_once(args, env, tmp_path, "sync:1")
    assert killed.crashed_at is not None
    runs = run_until_done(args, env, tmp_path, [], max_runs=2)

    assert [run.returncode for run in runs] == [0], summary(runs)
    check_export(out, "jsonl", sorted({*sim.ids(), *(written & set(deleted))}), runs[-1].report)


# -- sharded ----------------------------------------------------------------------------------


def merged(tmp_path: Path, env: dict[str, str], fmt: str) -> tuple[Path, int]:
    run = run_once(["merge", "parts", "--out", f"all.{fmt}", "--report", "json"], env, tmp_path)
    assert run.returncode == 0, run.stderr
    return tmp_path / f"all.{fmt}", run.report["records"]


SHARD_KILLS = [
    ("worker", ["page:2"], 2),  # every worker, at its second page: each replacement resumes
    ("worker", ["ckpt_rename:3"], 2),
    ("main", ["manifest:1"], 2),  # the plan's own manifest, before any shard ran
    ("main", ["manifest:3"], 1),  # a shard's result, not yet recorded
]


@pytest.mark.parametrize(
    ("role", "kills", "workers"), SHARD_KILLS, ids=[f"{r}-{k[0]}-w{w}" for r, k, w in SHARD_KILLS]
)
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_sharded_export_killed_and_rerun_has_every_customer_once(
    sim: ServedSimulator,
    env: dict[str, str],
    tmp_path: Path,
    fmt: str,
    role: str,
    kills: list[str],
    workers: int,
) -> None:
    args = ["export", "--out", "parts", "--shards", "3", "--workers", str(workers)]
    churn = Churn(sim)
    runs = run_until_done([*args, "--format", fmt, *PAGE], env, tmp_path, kills, role=role)
    del churn  # the service is not changed here: a shard's window is not checked against it

    assert runs[0].crashed_at is not None
    out, count = merged(tmp_path, env, fmt)
    check_export(out, fmt, sim.ids(), {**runs[-1].report, "complete": True})
    assert runs[-1].report["complete"] is True
    assert runs[-1].report["exported"] == count == CUSTOMERS


def test_workers_end_when_their_coordinator_is_killed(env: dict[str, str], tmp_path: Path) -> None:
    """The coordinator of ``--workers`` killed (SIGKILL, the OOM killer): its workers end too.

    They waited for their next shard for ever, one process per worker left on the machine by
    every such kill (an hour later they were still there)."""
    args = ["export", "--out", "parts", "--shards", "3", "--workers", "2", *PAGE]
    run = run_once(args, env, tmp_path, "manifest:2", role="main", linger=10.0)

    assert run.crashed_at is not None
    assert run.left_behind == []


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the files the command (and its workers) write, a full disk's
    effect on a write: EFBIG rather than ENOSPC, on any file system, without mounting one."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return cap


@pytest.mark.parametrize("checkpointed", [False, True])
def test_a_disk_full_as_an_export_starts_names_its_file_and_leaves_no_lock_file(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path, checkpointed: bool
) -> None:
    """On a full disk the export's lock file is made (an inode), and the write of its holder
    fails: the command said only "error: No space left on device" (here: File too large), not
    which file had no room, and left the empty `.customers.jsonl.lock` behind."""
    args = ["export", "--out", "customers.jsonl", *PAGE]
    if checkpointed:
        args += ["--checkpoint", "customers.ckpt"]
    requests = sim.sim.counters.total

    # Its output through pipes, which no file size limit caps.
    full = subprocess.run(
        cli_command(*args),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=_file_size_limit(0),
    )

    assert full.returncode == 1, full.stderr
    # By its whole path: the export works on it so (another task's chdir moves nothing).
    assert full.stderr == f"dmhub-async: error: {tmp_path / 'customers.jsonl'}: File too large\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == []
    assert sim.sim.counters.total == requests  # refused before any request


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_fails_a_sharded_export_saying_so_and_a_rerun_finishes(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path, workers: int
) -> None:
    """With --workers, a worker whose part could not be written died with a raw traceback
    (three times a shard), and the report said only "its worker died 3 times". In one process
    the first such shard stopped the run (one line, the others cancelled): both runners now
    fail each such shard, saying why, and finish the others."""
    args = ["export", "--out", "parts", "--shards", "3", "--workers", str(workers), *PAGE]

    full = run_once(args, env, tmp_path, preexec=_file_size_limit(60_000))

    assert full.returncode == 3, full.stderr
    assert "Traceback" not in full.stderr
    errors = [s["error"] for s in full.report["shards"]]
    assert all("File too large" in (e or "") for e in errors), errors
    runs = run_until_done(args, env, tmp_path, [])
    out, count = merged(tmp_path, env, "jsonl")
    check_export(out, "jsonl", sim.ids(), {**runs[-1].report, "exported": count})


# -- merge --------------------------------------------------------------------------------------


@pytest.mark.parametrize("nth", [1, 3])
def test_a_merge_killed_while_it_writes_leaves_no_half_file_and_reruns(
    env: dict[str, str], sim: ServedSimulator, tmp_path: Path, nth: int
) -> None:
    runs = run_until_done(["export", "--out", "parts", "--shards", "3", *PAGE], env, tmp_path, [])
    assert runs[-1].report["complete"] is True
    merge = ["merge", "parts", "--out", "all.jsonl", "--report", "json"]

    killed = run_once(merge, env, tmp_path, f"merge:{nth}")

    assert killed.crashed_at is not None
    assert not (tmp_path / "all.jsonl").exists()
    assert [p.name for p in tmp_path.glob(".all.jsonl.*.tmp")] != []  # what it was writing
    again = run_once(merge, env, tmp_path)
    assert again.returncode == 0, again.stderr
    # The rerun removed the killed merge's temporary file (it stayed for ever), and its lock.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl", "cache", "parts"]
    check_export(
        tmp_path / "all.jsonl",
        "jsonl",
        sim.ids(),
        {**again.report, "complete": True, "exported": again.report["records"]},
    )


# -- refused: another export's checkpoint, two resumers ----------------------------------------


@pytest.mark.parametrize(
    "other",
    [
        ["--stage", "lead"],
        ["--select", "id,mobile"],
        ["--format", "csv"],
        ["--created-from", "2016-01-01T00:00:00Z"],
    ],
)
def test_a_checkpoint_of_another_export_is_refused_and_nothing_changes(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path, other: list[str]
) -> None:
    args = ["export", "--out", "c.jsonl", "--checkpoint", "c.ckpt", *PAGE]
    killed = run_once(args, env, tmp_path, "page:3")
    assert killed.crashed_at is not None
    before = {p.name: p.read_bytes() for p in tmp_path.glob("c.*")}
    sim.settled()  # the killed run's pages in flight counted as its own
    requests = sim.sim.counters.total

    refused = run_once([*args, *other], env, tmp_path)

    assert refused.returncode in (1, 2), refused.stderr
    assert "another export" in refused.stderr or "checkpoint" in refused.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.glob("c.*")} == before
    assert sim.sim.counters.total == requests  # refused before any request
    done = run_until_done(args, env, tmp_path, [])
    check_export(tmp_path / "c.jsonl", "jsonl", sim.ids(), done[-1].report)


def test_settled_waits_for_a_connection_closed_while_its_handler_ran() -> None:
    """The harness: a process killed while the simulator served its page closed the
    connection before the handler ended; aiohttp forgets such a connection only when the
    handler ends. ``settled`` returns then, and never waits out its bound (the last CI run's
    TimeoutError in the test above)."""
    import socket
    import threading

    from aiohttp import web

    served = ServedSimulator(0)
    entered = threading.Event()
    release = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="late")

    served.sim.app.router.add_get("/held", held)
    served.start()
    try:
        host, port = served.sim.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(b"GET /held HTTP/1.1\r\nHost: sim\r\n\r\n")
            assert entered.wait(10)

        def closed_while_held() -> bool:
            server = served.sim._runner.server  # type: ignore[union-attr]
            return all(h._manager is None for h in server.connections)  # type: ignore[union-attr]

        for _ in range(1000):  # the close read by the simulator, its handler still held
            if served.call(closed_while_held):
                break
            time.sleep(0.01)
        assert served.call(closed_while_held)
        waiting = asyncio.run_coroutine_threadsafe(served.settled_async(5), served._loop)
        served._loop.call_soon_threadsafe(release.set)  # runs after the wait has begun
        waiting.result(timeout=10)
        assert served.call(lambda: served.sim._runner.server.connections) == []  # type: ignore[union-attr]
    finally:
        served.stop()


def test_settled_waits_for_a_connection_the_simulator_has_not_accepted_yet() -> None:
    """The harness: a killed process's last connection can still wait in the simulator's
    listen queue, its request unread, when ``settled`` is asked: it saw no connection open and
    returned, and the request was counted after it, as the next command's (a refusal "sent"
    one). The simulator's loop, paused here, accepts it only after ``settled`` has begun."""
    import socket
    import threading

    served = ServedSimulator(0)
    served.start()
    paused, go = threading.Event(), threading.Event()
    try:

        def pause() -> None:
            paused.set()
            go.wait(10)

        served._loop.call_soon_threadsafe(pause)
        assert paused.wait(10)
        host, port = served.sim.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(b"GET /v1/customers/count HTTP/1.1\r\nHost: sim\r\n\r\n")
        # Closed, as by a kill: the connection and its request wait in the listen queue.

        async def counted_once_settled() -> int:
            await served.settled_async(5)
            return served.sim.counters.total

        # Begun before the loop's next look at the listening socket (its first step is
        # queued behind the pause), as a test thread that asks at once.
        waiting = asyncio.run_coroutine_threadsafe(counted_once_settled(), served._loop)
        go.set()
        assert waiting.result(timeout=10) == 1
    finally:
        go.set()
        served.stop()


def test_a_resume_with_another_page_size_keeps_the_first(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    """Documented: a resumed export keeps the page size it began with (a page number means
    nothing at another size)."""
    args = ["export", "--out", "c.jsonl", "--checkpoint", "c.ckpt", *PAGE]
    assert run_once(args, env, tmp_path, "page:3").crashed_at is not None

    done = run_until_done([*args, "--page-size", "20"], env, tmp_path, [])

    check_export(tmp_path / "c.jsonl", "jsonl", sim.ids(), done[-1].report)


def _text_or_nothing(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def test_two_resumers_started_at_once_one_is_refused(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    args = ["export", "--out", "c.jsonl", "--checkpoint", "c.ckpt", *PAGE]
    assert run_once(args, env, tmp_path, "page:3").crashed_at is not None
    # The two must overlap: under load the second once started after the first had finished,
    # and was refused as "--out exists" (exit 2). The first's pages are held until the second
    # has been refused, then let go (a latency of 1 s a page left a window of some 11 s).
    held = sim.hold(0, "GET /v1/customers")

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            cli_command(*args),
            env=crash_env(env, None, tmp_path / "unused"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = start()
    lock = tmp_path / ".c.jsonl.lock"  # the holder writes "export: pid N on HOST" in it
    deadline = time.monotonic() + TIMEOUT
    while f"pid {first.pid} " not in _text_or_nothing(lock):
        assert first.poll() is None, "the first ended before it locked"
        assert time.monotonic() < deadline, "the first never locked"
        time.sleep(0.01)  # the first's start: a subprocess, no clock to inject
    second = start()
    try:
        second.wait(timeout=TIMEOUT)
    finally:
        held.release()
    procs = [first, second]
    results = [(p.wait(timeout=TIMEOUT), *p.communicate(timeout=TIMEOUT)) for p in procs]

    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, _, err in results if code == 1)
    assert "in use by another export" in refused
    report = json.loads(next(out for code, out, _ in results if code == 0).strip().splitlines()[-1])
    check_export(tmp_path / "c.jsonl", "jsonl", sim.ids(), report)


def test_a_second_signal_ends_an_export_whose_cleanup_is_stuck(
    env: dict[str, str], tmp_path: Path
) -> None:
    # A write that never returns (its file system gone away: an NFS server down) held the
    # first signal's cleanup for good, as it waited for the write; every later SIGINT or
    # SIGTERM only cancelled it again, and the export stopped for SIGKILL alone. A second
    # signal now ends it at once. (Two signals of one kind sent back to back may reach it as
    # one: a SIGINT, then a SIGTERM.)
    log = tmp_path / "stalled.log"
    proc = subprocess.Popen(
        cli_command("export", "--out", "c.jsonl", "--checkpoint", "c.ckpt", *PAGE),
        env={**crash_env(env, "sync:2", log), "DMHUB_TEST_CRASH_STALL": "1"},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not log.exists():  # the second page's commit stalled, on its thread
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    # In the order the system hands them over: the second's code.
    first, then = re.findall(r"stopped by (SIG\w+), then (SIG\w+): exiting at once", stderr)[0]
    assert {first, then} == {"SIGINT", "SIGTERM"}
    assert proc.returncode == 128 + signal.Signals[then], stderr
    assert stderr.count("\n") == 1, stderr
    assert (tmp_path / "c.ckpt").exists()  # the first page's: a rerun resumes from it


def test_a_checkpoint_left_behind_by_a_forced_export_is_not_named_an_export_in_progress(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    """An export stopped (its checkpoint left), then the file exported again whole with
    --force and no checkpoint, which leaves that checkpoint where it was: a plain rerun was
    refused as "an export in progress (150 customers so far) of checkpoint out.ckpt: rerun
    with --checkpoint out.ckpt to resume it", of a file holding the whole export."""
    killed = run_once(
        ["export", "--out", "out.jsonl", "--checkpoint", "out.ckpt", *PAGE],
        env,
        tmp_path,
        "page:3",
    )
    assert killed.crashed_at is not None
    assert (tmp_path / "out.ckpt").exists()
    sim.settled()  # the killed run's pages in flight counted as its own
    forced = run_once(["export", "--out", "out.jsonl", "--force", *PAGE], env, tmp_path)
    assert forced.returncode == 0, forced.stderr
    whole = (tmp_path / "out.jsonl").read_bytes()
    requests = sim.sim.counters.total

    rerun = run_once(["export", "--out", "out.jsonl", *PAGE], env, tmp_path)

    assert rerun.returncode == 2, rerun.stderr
    assert "an export in progress" not in rerun.stderr, rerun.stderr
    assert "--out out.jsonl exists, written after checkpoint out.ckpt" in rerun.stderr
    assert "pass --force to export it again" in rerun.stderr, rerun.stderr
    assert (tmp_path / "out.jsonl").read_bytes() == whole
    assert sim.sim.counters.total == requests  # refused before any request


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_killed_before_a_page_of_longer_customers_is_checkpointed_is_in_progress(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path, fmt: str
) -> None:
    """Killed after its second page was synced, before its checkpoint: the file one page past
    what the checkpoint covers, as a stopped export leaves it. Those 50 customers were longer
    than the first 50 (a name of 2,000 characters), and the rerun without --checkpoint was
    told "most likely a later export without that checkpoint (--force) wrote it whole", and to
    pass --force (deleting the checkpoint), of an export in progress."""

    def lengthen() -> None:
        for customer_id in sim.sim.customer_ids()[50:100]:
            sim.sim.delete_customer(customer_id)
            sim.sim.insert_customer({"name": "n" * 2000}, customer_id=customer_id)

    sim.call(lengthen)
    out = f"out.{fmt}"
    killed = run_once(
        ["export", "--out", out, "--checkpoint", "out.ckpt", *PAGE], env, tmp_path, "sync:2"
    )
    assert killed.crashed_at is not None
    assert (tmp_path / "out.ckpt").exists()

    rerun = run_once(["export", "--out", out, *PAGE], env, tmp_path)

    assert rerun.returncode == 2, rerun.stderr
    assert f"--out {out} exists, an export in progress (50 customers so far)" in rerun.stderr
    assert "most likely" not in rerun.stderr, rerun.stderr


@pytest.mark.parametrize("nth", [1, 3])
def test_a_checkpoint_killed_before_its_rename_is_not_named_by_its_temporary_file(
    sim: ServedSimulator, env: dict[str, str], tmp_path: Path, nth: int
) -> None:
    """Killed as its checkpoint was written, before its rename: the hidden temporary file
    (``.out.ckpt.xxxxxxxx.tmp``, whole) left beside the output was taken for the checkpoint, and
    the plain rerun told "an export in progress ... of checkpoint .out.ckpt.k2j4m9xq.tmp: rerun
    with --checkpoint .out.ckpt.k2j4m9xq.tmp", a file nobody asked for, which the next export
    to it sweeps. Of the first checkpoint, over an earlier whole export, it was the only one."""
    if nth == 1:  # yesterday's export, whole: the killed one's first checkpoint never in place
        done = run_once(["export", "--out", "out.jsonl", *PAGE], env, tmp_path)
        assert done.returncode == 0, done.stderr
    killed = run_once(
        ["export", "--out", "out.jsonl", "--checkpoint", "out.ckpt", "--force", *PAGE],
        env,
        tmp_path,
        f"ckpt_rename:{nth}",
    )
    assert killed.crashed_at is not None
    assert [p.name for p in tmp_path.glob(".out.ckpt.*.tmp")], list(tmp_path.iterdir())

    rerun = run_once(["export", "--out", "out.jsonl", *PAGE], env, tmp_path)

    assert rerun.returncode == 2, rerun.stderr
    assert ".tmp" not in rerun.stderr, rerun.stderr
    if nth == 1:
        assert "--out out.jsonl exists: pass --force to overwrite it" in rerun.stderr
    else:
        assert (
            "--out out.jsonl exists, an export in progress (100 customers so far) of checkpoint"
            " out.ckpt: rerun with --checkpoint out.ckpt to resume it"
        ) in rerun.stderr, rerun.stderr
