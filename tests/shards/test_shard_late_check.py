"""The late check: customers created after the last window's shard ended are exported.

The last window of a plan has no end: customers created after the plan fall into it. Its shard
checked it once, as it ended; a sign-up after that (while other shards still ran, or while a
killed export was down) was in no part of an export said to be complete. Once every shard is
complete, the coordinator's side checks that window again and appends what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from _redis import RedisServer
from aiohttp import web
from shard_support import child_env, exported_ids, queue_workers, sim_process

from dmhub_async import DMHubClient, FileTokenStore, InvalidRequestError, RedisTokenStore, _atomic
from dmhub_async.shards import (
    LateCheck,
    Manifest,
    _late,
    _local,
    _manifest,
    _queue,
    _run,
    late_check,
    merge,
)
from dmhub_async.shards._local import WorkerSettings, run_in_processes
from dmhub_async.shards._queue import run_on_queue
from dmhub_async.shards._run import export_sharded, prepare
from dmhub_async.testing import DMHubSimulator, FakeClock, _app

pytestmark = pytest.mark.timeout(180)


def first_window(request: web.Request) -> bool:
    """A request of shard 0's window (from the beginning of time to its end)."""
    query = request.query
    return (
        request.path.startswith("/v1/customers")
        and "dateCreatedTo" in query
        and "dateCreatedFrom" not in query
    )


class SignUpAfterTheLastShard:
    """Holds shard 0's requests until the last shard's result is recorded, then signs a
    customer up (into the last window) and lets shard 0 go on: a sign-up after the last
    window's shard ended, while another shard still runs."""

    def __init__(self, sim: DMHubSimulator, module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sim = sim
        self.released = asyncio.Event()
        self.signed_up: dict[str, Any] | None = None
        self.others_complete_then: bool | None = None
        self._last: int | None = None
        record = module.record_result

        def recorded(outcome: Any, result: dict[str, Any]) -> None:
            record(outcome, result)
            if outcome.shard.index == self._last and self.signed_up is None:
                self.signed_up = sim.insert_customer({"name": "signed up mid-run"})
                self.released.set()

        monkeypatch.setattr(module, "record_result", recorded)
        sim.on_request(self._hold)

    def plan(self, manifest: Manifest) -> None:
        self._last = manifest.shards[-1].shard.index

    async def _hold(self, request: web.Request) -> None:
        planned = self._last is not None  # the plan's counts go by
        if planned and first_window(request) and not self.released.is_set():
            await asyncio.wait_for(self.released.wait(), 60)


def merged_ids(out: Path, dest: Path) -> list[int]:
    merge(out, dest)
    with dest.open(encoding="utf-8") as fh:
        return [json.loads(line)["id"] for line in fh]


async def test_a_sign_up_while_other_shards_still_run_is_exported_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    async with DMHubSimulator(customers=600, seed=3) as sim:
        signs = SignUpAfterTheLastShard(sim, _run, monkeypatch)
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            signs.plan(await prepare(dm, out, 3))
            manifest = await export_sharded(dm, out, 3, progress=False)
        wanted = sim.customer_ids()

    assert signs.signed_up is not None
    assert manifest.complete
    assert manifest.late_check is not None
    assert manifest.late_check.added == 1
    assert manifest.late_check.file == "part-00002.jsonl"
    ids = merged_ids(out, tmp_path / "all.jsonl")
    assert signs.signed_up["id"] in ids
    assert sorted(ids) == sorted(wanted)  # each once
    on_disk = Manifest.read(out)
    assert on_disk is not None
    assert on_disk.exported == len(wanted)
    assert on_disk.late_check is None  # this run's alone: not written


async def test_a_late_check_appends_no_customer_the_part_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parse_filters = _app.parse_filters
    # A service that ignores idList, answering the whole window to the check's fetch by id.
    monkeypatch.setattr(
        _app, "parse_filters", lambda query: attrs.evolve(parse_filters(query), id_list=None)
    )
    out = tmp_path / "out"
    async with DMHubSimulator(customers=600, seed=3) as sim:
        signs = SignUpAfterTheLastShard(sim, _run, monkeypatch)
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            signs.plan(await prepare(dm, out, 3))
            manifest = await export_sharded(dm, out, 3, progress=False)
        wanted = sim.customer_ids()

    # Before: the check appended every customer of the window it fetched by id, those the
    # part held too, and said the export complete with each of them twice.
    assert manifest.late_check is not None
    assert manifest.late_check.added == 1
    assert sorted(merged_ids(out, tmp_path / "all.jsonl")) == sorted(wanted)  # each once
    assert manifest.complete


async def test_a_late_check_fetches_large_customers_within_max_response_size(
    tmp_path: Path,
) -> None:
    # The customers the late check found missing were fetched 100 a request: with large
    # custom fields, an export whose pages of 10 stayed under max_response_size failed its
    # late check (run by export_sharded, the CLI and every rerun of the complete export) with
    # ResponseTooLargeError, the sign-ups never appended.
    blob = "x" * 5000  # some 5 KB a customer: a page of 10 under the cap, one of 60 over it
    out = tmp_path / "out"
    async with DMHubSimulator() as sim:
        for number in range(200):
            sim.insert_customer({"name": f"c{number}", "attr": {"blob": blob}})
        async with DMHubClient(
            sim.app_id, sim.secret, base_url=sim.url, max_response_size=200_000
        ) as dm:
            manifest = await export_sharded(dm, out, 2, page_size=10, progress=False)
            assert manifest.complete
            for number in range(60):  # signed up once the export ended
                sim.insert_customer({"name": f"new{number}", "attr": {"blob": blob}})
            checked = await late_check(dm, out)
        wanted = sim.customer_ids()

    assert checked is not None
    assert (checked.added, checked.verified) == (60, True)
    assert sorted(merged_ids(out, tmp_path / "all.jsonl")) == sorted(wanted)


async def test_the_retries_of_a_batch_fetched_again_in_halves_are_counted(
    tmp_path: Path,
) -> None:
    # A batch retried (a 500), then too large to read, is fetched again in two halves: its
    # retries were dropped with its error, the check saying retries=0 and the manifest's
    # late_check_retries 0 for a request sent twice.
    blob = "x" * 5000  # some 5 KB a customer: a page of 10 under the cap, one of 60 over it
    out = tmp_path / "out"
    clock = FakeClock()
    async with DMHubSimulator() as sim:
        for number in range(200):
            sim.insert_customer({"name": f"c{number}", "attr": {"blob": blob}})
        async with DMHubClient(
            sim.app_id,
            sim.secret,
            base_url=sim.url,
            max_response_size=200_000,
            clock=clock,
            sleep=clock.sleep,
        ) as dm:
            manifest = await export_sharded(dm, out, 2, page_size=10, progress=False)
            for number in range(60):  # signed up once the export ended
                sim.insert_customer({"name": f"new{number}", "attr": {"blob": blob}})
            asked: list[str] = []

            def fail_first_fetch(request: Any) -> None:
                if request.path == "/v1/customers" and "idList" in request.query:
                    asked.append(request.query["rows"])
                    if len(asked) == 1:
                        raise RuntimeError("the service failed once")  # a 500, retried

            sim.on_request(fail_first_fetch)
            checked = await late_check(dm, out, manifest)

    assert asked == ["100", "100", "30", "30"]  # the batch sent twice, then its halves
    assert (checked.added, checked.verified) == (60, True)
    assert checked.retries == 1
    assert manifest.late_check_retries == 1
    assert json.loads((out / _manifest.MANIFEST_NAME).read_bytes())["late_check_retries"] == 1


async def test_a_sign_up_while_other_shards_still_run_is_exported_on_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    tokens = str(tmp_path / "tokens.json")
    async with DMHubSimulator(customers=600, seed=4) as sim:
        signs = SignUpAfterTheLastShard(sim, _local, monkeypatch)
        credentials = {"app_id": sim.app_id, "secret": sim.secret, "base_url": sim.url}
        async with DMHubClient(**credentials, token_store=FileTokenStore(tokens)) as dm:
            manifest = await prepare(dm, out, 3)
            signs.plan(manifest)
            settings = WorkerSettings(credentials, tokens, concurrency=2)
            manifest = await run_in_processes(settings, out, manifest, 3, progress=False)
            assert signs.signed_up is not None
            assert manifest.complete
            assert signs.signed_up["id"] not in exported_ids(out)  # the runner's alone
            found = await late_check(dm, out, manifest)
        wanted = sim.customer_ids()

    assert found is not None
    assert found.added == 1
    assert found.verified
    assert manifest.late_check == found
    ids = merged_ids(out, tmp_path / "all.jsonl")
    assert sorted(ids) == sorted(wanted)


def _worker_env(sim: DMHubSimulator) -> dict[str, str]:
    return child_env(DMHUB_BASE_URL=sim.url, DMHUB_APP_ID=sim.app_id, DMHUB_SECRET=sim.secret)


async def test_a_sign_up_while_other_shards_still_run_is_exported_on_the_queue(
    tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    async with DMHubSimulator(customers=600, seed=5) as sim:
        signs = SignUpAfterTheLastShard(sim, _queue, monkeypatch)
        store = RedisTokenStore(redis.url)
        try:
            async with DMHubClient(
                sim.app_id, sim.secret, base_url=sim.url, token_store=store
            ) as dm:
                manifest = await prepare(dm, out, 3)
                signs.plan(manifest)
                with queue_workers(_worker_env(sim), redis.url, 3):
                    manifest = await asyncio.wait_for(
                        run_on_queue(redis.url, out, manifest, progress=False, poll=0.1), 120
                    )
                assert signs.signed_up is not None
                assert manifest.complete
                found = await late_check(dm, out, manifest)
        finally:
            await store.aclose()
        wanted = sim.customer_ids()

    assert found is not None
    assert found.added == 1
    ids = merged_ids(out, tmp_path / "all.jsonl")
    assert sorted(ids) == sorted(wanted)


async def test_a_csv_part_gets_the_sign_ups_under_its_own_header(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with DMHubSimulator(customers=300, seed=6) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            assert (await export_sharded(dm, out, 2, format="csv", progress=False)).complete
            sim.insert_customer({"name": 'Late, "quoted"\nsigner'})
            sim.insert_customer({"name": "another"})
            again = await export_sharded(dm, out, 2, format="csv", progress=False)
        wanted = len(sim.customer_ids())

    assert again.late_check is not None
    assert again.late_check.added == 2
    assert merge(out, tmp_path / "all.csv") == wanted


async def test_a_crash_between_the_parts_replace_and_the_manifest_is_healed_by_a_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    async with DMHubSimulator(customers=400, seed=7) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            assert (await export_sharded(dm, out, 2, progress=False)).complete
            signed_up = sim.insert_customer({"name": "signed up while it was down"})

            class Killed(Exception):
                pass

            append = _late._append

            def killed_after_the_replace(*args: Any) -> Any:
                append(*args)
                raise Killed  # the coordinator killed before the manifest says so

            with monkeypatch.context() as patched:
                patched.setattr(_late, "_append", killed_after_the_replace)
                with pytest.raises(Killed):
                    await export_sharded(dm, out, 2, progress=False)
            assert signed_up["id"] in exported_ids(out)  # in the part, not in the manifest
            with pytest.raises(InvalidRequestError, match=r"part-00001\.jsonl holds"):
                merge(out, tmp_path / "refused.jsonl")  # the stale size is not trusted

            sent: list[dict[str, str]] = []
            sim.on_request(lambda request: sent.append(dict(request.query)))
            healed = await export_sharded(dm, out, 2, progress=False)
        wanted = sim.customer_ids()

    assert healed.complete
    assert healed.late_check is not None
    assert healed.late_check.added == 0
    # Checked again from the file itself, not exported again: id-only pages and counts.
    assert all(q.get("select") == "id" for q in sent if "pageSize" in q), sent
    last = healed.shards[-1]
    assert last.size == (out / last.file).stat().st_size
    assert not (out / f".{last.file}.late").exists()  # the manifest says it now
    ids = merged_ids(out, tmp_path / "all.jsonl")
    assert sorted(ids) == sorted(wanted)


async def test_a_kill_while_the_late_checks_note_is_written_leaves_no_file_after_the_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while it wrote its note (``.part-00001.jsonl.late``, through a temporary file
    beside it), the late check left that temporary file (``..part-00001.jsonl.late.xxxxxxxx
    .tmp``): no rerun removed it, one more each such kill (found by a sweep of kills at every
    file operation of a sharded export)."""
    out = tmp_path / "out"
    async with DMHubSimulator(customers=400, seed=7) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            assert (await export_sharded(dm, out, 2, progress=False)).complete
            sim.insert_customer({"name": "signed up while it was down"})

            class Killed(Exception):
                pass

            def killed_writing(path: Path, data: bytes, **_: Any) -> None:
                # What a kill -9 leaves: the temporary file half written, nothing cleaned up.
                fd, _tmp = _atomic.temporary_beside(path, ".tmp")
                os.write(fd, data[: len(data) // 2])
                os.close(fd)
                raise Killed

            with monkeypatch.context() as patched:
                patched.setattr(_late, "replace_file", killed_writing)
                with pytest.raises(Killed):
                    await export_sharded(dm, out, 2, progress=False)
            assert [p.name for p in out.glob("..part-*.late.*.tmp")] != []

            healed = await export_sharded(dm, out, 2, progress=False)
        wanted = sim.customer_ids()

    assert healed.complete
    assert sorted(merged_ids(out, tmp_path / "all.jsonl")) == sorted(wanted)
    parts = {o.file for o in healed.shards}
    assert sorted(p.name for p in out.iterdir() if p.name not in parts) == ["manifest.json"]


async def test_nothing_is_late_checked_while_a_shard_is_not_complete(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with DMHubSimulator(customers=300, seed=8) as sim:

        def hook(request: web.Request) -> None:
            if request.path == "/v1/customers" and first_window(request):
                sim.faults.script(["503"])

        sim.on_request(hook)
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url, max_retries=0) as dm:
            manifest = await export_sharded(dm, out, 2, progress=False)
            assert not manifest.complete
            assert manifest.late_check is None
            assert await late_check(dm, out) is None  # rerun the export first


async def test_a_rerun_s_late_check_does_not_add_its_retries_to_the_export_s_for_good(
    tmp_path: Path,
) -> None:
    # Each late check added its retries to the last shard's, in the manifest: a complete export
    # rerun (as a daily job does, for the sign-ups) reported more retries at every run, 12,
    # 16, 18, 21..., where Manifest.retries promises each shard's last run's.
    out = tmp_path / "out"
    clock = FakeClock()
    async with (
        DMHubSimulator(customers=200, seed=9) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url, clock=clock, sleep=clock.sleep) as dm,
    ):
        first = await export_sharded(dm, out, 2, progress=False)
        assert first.complete
        exported = [o.retries for o in first.shards]
        assert first.retries == 0
        for _ in range(3):
            sim.faults.script(["503", "503"])  # the late check's first two requests
            again = await export_sharded(dm, out, 2, progress=False)
            assert again.late_check is not None
            assert again.late_check.retries == 2
            assert again.retries == 2  # the export's own (0) and its last late check's
            on_disk = Manifest.read(out)
            assert on_disk is not None
            assert [o.retries for o in on_disk.shards] == exported
            assert (on_disk.late_check_retries, on_disk.retries) == (2, 2)
        quiet = await export_sharded(dm, out, 2, progress=False)  # a late check of no retry
        assert quiet.retries == 0
        assert Manifest.read(out).retries == 0  # type: ignore[union-attr]


def test_the_cli_reports_what_the_late_check_added(tmp_path: Path) -> None:
    out = tmp_path / "june"

    def dmhub(sim: Any, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dmhub_async", *args],
            env=sim.env(XDG_CACHE_HOME=str(tmp_path / "cache")),
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )

    command = ["export", "--out", str(out), "--shards", "2", "--workers", "2"]
    with sim_process(800) as sim:
        first = dmhub(sim, *command)
        sim.mutate(inserts=1)  # a sign-up while the export was down
        again = dmhub(sim, *command)
        as_json = dmhub(sim, *command, "--report", "json")
        state = sim.state()

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert (
        "late check of part-00001.jsonl: 1 customer created since its shard ended was added"
        in again.stdout
    ), again.stdout
    assert sorted(exported_ids(out)) == sorted(state["ids"])
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["late_check"] == {"file": "part-00001.jsonl", "added": 0, "verified": True}
    assert report["exported"] == 801


async def test_a_late_check_that_cannot_pass_leaves_the_export_incomplete_until_a_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    async with DMHubSimulator(customers=300, seed=9) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            check = _late.final_check

            async def churning(*args: Any) -> tuple[bool, int | None]:
                _, count = await check(*args)
                return False, count  # customers changed during every walk

            with monkeypatch.context() as patched:
                patched.setattr(_late, "final_check", churning)
                first = await export_sharded(dm, out, 2, progress=False)
            assert not first.complete
            assert first.shards[-1].status == "incomplete"
            assert (first.shards[-1].error or "").startswith("late check: MISMATCH")
            with pytest.raises(InvalidRequestError, match="not complete"):
                merge(out, tmp_path / "refused.jsonl")

            sent: list[dict[str, str]] = []
            sim.on_request(lambda request: sent.append(dict(request.query)))
            again = await export_sharded(dm, out, 2, progress=False)
        wanted = sim.customer_ids()

    assert again.complete
    assert all(q.get("select") == "id" for q in sent if "pageSize" in q), sent  # not exported
    assert sorted(merged_ids(out, tmp_path / "all.jsonl")) == sorted(wanted)


async def test_rows_a_user_appended_to_the_last_part_are_not_taken_up_as_the_late_checks(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with DMHubSimulator(customers=400, seed=10) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            first = await export_sharded(dm, out, 2, progress=False)
            assert first.complete
            # A customer of the first window appended to the last part by hand (whole lines,
            # the recorded bytes unchanged): not rows a late check appended.
            foreign = (out / first.shards[0].file).read_bytes().splitlines(keepends=True)[0]
            with (out / first.shards[-1].file).open("ab") as fh:
                fh.write(foreign)
            again = await export_sharded(dm, out, 2, progress=False)
        wanted = sim.customer_ids()

    assert again.complete
    assert again.exported == len(wanted)
    ids = merged_ids(out, tmp_path / "all.jsonl")
    assert sorted(ids) == sorted(wanted)  # each once: the foreign row not kept


async def test_a_late_check_cancelled_while_it_writes_the_part_holds_the_directory_till_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    started, go = threading.Event(), threading.Event()
    append = _late._append

    def slow_append(*args: Any) -> Any:
        started.set()
        go.wait(60)
        return append(*args)

    async with DMHubSimulator(customers=300, seed=11) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            assert (await export_sharded(dm, out, 2, progress=False)).complete
            signed_up = sim.insert_customer({"name": "signed up while it was down"})
            monkeypatch.setattr(_late, "_append", slow_append)
            task = asyncio.ensure_future(late_check(dm, out))
            assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 60)
            task.cancel()  # Ctrl-C, a timeout: while the copy is being written
            for _ in range(5):
                await asyncio.sleep(0)
            try:
                # The part is still being written: another export or late check of the
                # directory is refused (its sweep removed the copy being written).
                with pytest.raises(InvalidRequestError, match="in use"), _run.coordinating(out):
                    pass
            finally:
                go.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            monkeypatch.setattr(_late, "_append", append)
            healed = await export_sharded(dm, out, 2, progress=False)
        wanted = sim.customer_ids()

    assert healed.complete
    assert signed_up["id"] in exported_ids(out)
    assert sorted(merged_ids(out, tmp_path / "all.jsonl")) == sorted(wanted)


async def test_a_last_part_whose_last_line_is_cut_short_is_refused_not_appended_to(
    tmp_path: Path,
) -> None:
    # A manifest that records no size nor SHA-256 of the last part (rewritten by hand, or by a
    # tool): its last line cut short was taken as a customer missing, fetched and appended
    # straight after the torn bytes, one line of two customers that no JSON reader reads.
    out = tmp_path / "out"
    async with (
        DMHubSimulator(customers=300, seed=12) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        assert (await export_sharded(dm, out, 2, progress=False)).complete
        recorded = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        recorded["shards"][-1]["size"] = recorded["shards"][-1]["sha256"] = None
        (out / "manifest.json").write_text(json.dumps(recorded), encoding="utf-8")
        last = out / recorded["shards"][-1]["file"]
        torn = last.read_bytes()[:-10]
        last.write_bytes(torn)
        sim.insert_customer({"name": "signed up since"})
        with pytest.raises(InvalidRequestError, match="cut short"):
            await late_check(dm, out)

    assert last.read_bytes() == torn  # left as it was


async def test_many_sign_ups_are_appended_through_a_file_not_held_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rows the check appends were held in a list until its end: an export down for a week
    # held a week of sign-ups in memory. Past _SPOOL bytes they go to a file of the directory.
    spooled: list[Any] = []
    spool = _late.tempfile.SpooledTemporaryFile

    def watched(*args: Any, **kwargs: Any) -> Any:
        spooled.append(spool(*args, **kwargs))
        return spooled[-1]

    out = tmp_path / "out"
    async with (
        DMHubSimulator(customers=300, seed=13) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        assert (await export_sharded(dm, out, 2, progress=False)).complete
        for n in range(250):
            sim.insert_customer({"name": f"signed up while it was down {n}"})
        monkeypatch.setattr(_late, "_SPOOL", 4096)
        monkeypatch.setattr(_late.tempfile, "SpooledTemporaryFile", watched)
        found = await late_check(dm, out)
        wanted = sim.customer_ids()

    assert found is not None
    assert found.added == 250
    assert [s._rolled for s in spooled] == [True]  # in a file past 4 KB
    assert sorted(merged_ids(out, tmp_path / "all.jsonl")) == sorted(wanted)


def _reported(late: LateCheck, capsys: pytest.CaptureFixture[str]) -> str:
    """The text report of a complete two-shard export whose late check found ``late``."""
    import argparse
    from datetime import datetime, timezone

    from dmhub_async.cli._shards import _finish
    from dmhub_async.shards import Shard

    edge = datetime(2020, 1, 1, tzinfo=timezone.utc)
    manifest = Manifest.new(
        [Shard(0, None, edge), Shard(1, edge, None)],
        fmt="jsonl",
        base_url="u",
        app_id="a",
        filters={},
    )
    for outcome in manifest.shards:
        outcome.status, outcome.exported, outcome.retries = "complete", 3, 0
    manifest.late_check = late
    _finish(manifest, argparse.Namespace(out="june", report="text", quiet=False))
    return capsys.readouterr().out


def test_a_late_check_that_added_nothing_says_it_found_nothing_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It said "0 customers created since its shard ended were added": read as customers
    # created, then not added (lost), or as a check that did nothing.
    said = _reported(LateCheck("part-00001.jsonl", 0, True, 6, 0), capsys)
    assert (
        "late check of part-00001.jsonl: every customer of its window is in it "
        "(none created since its shard ended was missing)" in said
    ), said
    assert "0 customers" not in said


def test_a_late_check_that_could_not_pass_says_so_in_its_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Its line said "2 customers created since its shard ended were added", as a check that
    # passed says it: what it could not show was said only further down, of the part.
    said = _reported(LateCheck("part-00001.jsonl", 2, False, 8, 0), capsys)
    assert (
        "late check of part-00001.jsonl: 2 customers created since its shard ended were "
        "added, but customers of its window changed during every walk of the check: "
        "a rerun checks it again" in said
    ), said


class _Clocks:
    """The simulator's clock and the SDK's (``_manifest.utc_now``) as one, moved by the test:
    customers are created at its time, and the export sees it as now."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = float(int(time.time()))
        monkeypatch.setattr(
            _manifest, "utc_now", lambda: datetime.fromtimestamp(int(self.now), timezone.utc)
        )

    def __call__(self) -> float:
        return self.now

    def at(self, seconds: float) -> datetime:
        return datetime.fromtimestamp(int(seconds), timezone.utc)


async def test_a_sign_up_before_the_end_is_found_by_a_rerun_after_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Today's sign-ups, planned with an end still to come: a rerun after the end skipped the
    # late check (the end had passed by the clock now) and said the export complete without
    # the customers created between its last check and the end.
    clocks = _Clocks(monkeypatch)
    end = clocks.at(clocks.now + 3600)
    out = tmp_path / "today"
    async with DMHubSimulator(customers=300, seed=14, clock=clocks) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            first = await export_sharded(dm, out, 2, progress=False, date_created_to=end)
            assert first.complete
            assert first.late_check is not None  # its end still to come
            clocks.now += 1800
            late = sim.insert_customer({"name": "signed up before the end"})
            clocks.now += 1800 + 900  # the end passed 15 minutes ago
            sim.insert_customer({"name": "signed up after the end"})  # in no window
            again = await export_sharded(dm, out, 2, progress=False, date_created_to=end)
            sent: list[dict[str, str]] = []
            sim.on_request(lambda request: sent.append(dict(request.query)))
            third = await export_sharded(dm, out, 2, progress=False, date_created_to=end)
        wanted = [c for c in sim.customer_ids() if c != sim.customer_ids()[-1]]

    assert again.complete
    assert again.late_check is not None
    assert again.late_check.added == 1
    ids = merged_ids(out, tmp_path / "all.jsonl")
    assert late["id"] in ids
    assert sorted(ids) == sorted(wanted)
    # Checked since the end passed: nothing more to look at, nothing sent.
    assert third.complete
    assert third.late_check is None
    assert sent == []


async def test_a_sign_up_before_the_end_is_found_though_this_clock_is_ahead_of_the_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service stamps a customer's creation by its own clock, 10 minutes behind this
    # machine's (past the 5 minutes' margin). A rerun 4 minutes before the end by the
    # service's clock (6 after it by this machine's) took the window for seen whole: a
    # customer created in its last 4 minutes was in no part, and every rerun after said the
    # export complete without it, checking nothing.
    clocks = _Clocks(monkeypatch)  # this machine's

    def service() -> float:
        return clocks.now - 600

    end = clocks.at(service() + 3600)
    out = tmp_path / "today"
    async with DMHubSimulator(customers=300, seed=17, clock=service) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            first = await export_sharded(dm, out, 2, progress=False, date_created_to=end)
            assert first.complete
            clocks.now += 3600 - 240  # 4 minutes before the end, by the service's clock
            again = await export_sharded(dm, out, 2, progress=False, date_created_to=end)
            assert again.late_check is not None
            clocks.now += 120
            late = sim.insert_customer({"name": "signed up 2 minutes before the end"})
            clocks.now += 600
            third = await export_sharded(dm, out, 2, progress=False, date_created_to=end)
        wanted = sim.customer_ids()

    assert third.complete
    assert third.late_check is not None
    assert third.late_check.added == 1
    ids = merged_ids(out, tmp_path / "all.jsonl")
    assert late["id"] in ids
    assert sorted(ids) == sorted(wanted)


async def test_a_plan_made_minutes_before_the_services_end_is_checked_again_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As above, the plan itself made 4 minutes before the end by the service's clock (6 after
    # it by this machine's): its last window was taken for seen whole as planned, and a
    # customer created after its shard was exported, before the end, was never looked for.
    clocks = _Clocks(monkeypatch)

    def service() -> float:
        return clocks.now - 600

    end = clocks.at(service() + 240)
    out = tmp_path / "today"
    async with DMHubSimulator(customers=300, seed=18, clock=service) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            first = await export_sharded(dm, out, 2, progress=False, date_created_to=end)
            assert first.complete
            clocks.now += 120
            late = sim.insert_customer({"name": "signed up 2 minutes before the end"})
            clocks.now += 600
            again = await export_sharded(dm, out, 2, progress=False, date_created_to=end)
        wanted = sim.customer_ids()

    assert again.complete
    assert again.late_check is not None
    assert again.late_check.added == 1
    ids = merged_ids(out, tmp_path / "all.jsonl")
    assert late["id"] in ids
    assert sorted(ids) == sorted(wanted)


async def test_a_sign_up_in_the_plans_own_second_after_its_shard_ended_is_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 customers signed up in the service's current second, before the plan: more than a
    # share, that second was a window of its own, [S, S + 1), and the last window began at
    # S + 1. The export ended within that second; 7 more signed up in it then fell into the
    # closed window, which nothing looks at again: the rerun's late check (of [S + 1, ...))
    # found nothing missing and said the export complete without them.
    clocks = _Clocks(monkeypatch)

    def service() -> float:  # 10 minutes behind this machine's, standing within one second
        return clocks.now - 600 + 0.25

    out = tmp_path / "now"
    async with DMHubSimulator(customers=60, seed=19, clock=service) as sim:
        for _ in range(40):
            sim.insert_customer({"name": "signed up in the plan's second"})
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            first = await export_sharded(dm, out, 3, progress=False)
            assert first.complete
            clocks.now += 0.5  # the same second
            late = [sim.insert_customer({"name": "signed up after"})["id"] for _ in range(7)]
            again = await export_sharded(dm, out, 3, progress=False)
        wanted = sim.customer_ids()

    assert again.complete
    assert again.late_check is not None
    assert again.late_check.added == 7
    ids = merged_ids(out, tmp_path / "all.jsonl")
    assert set(late) <= set(ids)
    assert sorted(ids) == sorted(wanted)


async def test_a_sign_up_in_the_plans_own_second_is_exported_from_a_service_without_a_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As above, from a service that sends no Date, its clock 2 minutes behind this machine's
    # (within the 5 minutes' margin the late check allows it): the plan went by this
    # machine's clock alone, the service's current second was a closed window of its own,
    # and the 7 sign-ups later in that second were in no part of an export said complete.
    clocks = _Clocks(monkeypatch)

    def service() -> float:  # standing within one second
        return clocks.now - 120 + 0.25

    async def no_date(_request: web.Request, response: web.StreamResponse) -> None:
        del response.headers["Date"]

    out = tmp_path / "now"
    sim = DMHubSimulator(customers=60, seed=20, clock=service)
    sim.app.on_response_prepare.append(no_date)
    async with sim:
        for _ in range(40):
            sim.insert_customer({"name": "signed up in the plan's second"})
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            first = await export_sharded(dm, out, 3, progress=False)
            assert first.complete
            assert dm.last_response is not None
            assert "Date" not in dm.last_response.headers
            clocks.now += 0.5  # the same second
            late = [sim.insert_customer({"name": "signed up after"})["id"] for _ in range(7)]
            again = await export_sharded(dm, out, 3, progress=False)
        wanted = sim.customer_ids()

    assert again.complete
    assert again.late_check is not None
    assert again.late_check.added == 7
    ids = merged_ids(out, tmp_path / "all.jsonl")
    assert set(late) <= set(ids)
    assert sorted(ids) == sorted(wanted)


@contextlib.asynccontextmanager
async def _ended_an_hour_ago(
    out: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> AsyncIterator[tuple[_Clocks, DMHubSimulator, DMHubClient, datetime, Manifest]]:
    """A two-shard export to ``out`` of the customers created up to an hour ago (planned
    after that end): the clocks, the simulator, a client, the end and the first manifest."""
    clocks = _Clocks(monkeypatch)
    async with DMHubSimulator(customers=300, seed=seed, clock=clocks) as sim:
        end = clocks.at(clocks.now - 3600)  # every customer of the window exists
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            first = await export_sharded(dm, out, 2, progress=False, date_created_to=end)
            assert first.complete
            yield clocks, sim, dm, end, first


async def test_a_window_that_ended_before_its_plan_is_not_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "closed"
    async with _ended_an_hour_ago(out, monkeypatch, 15) as (_, sim, dm, end, first):
        sent: list[dict[str, str]] = []
        sim.on_request(lambda request: sent.append(dict(request.query)))
        again = await export_sharded(dm, out, 2, progress=False, date_created_to=end)

    assert first.late_check is None
    assert again.complete
    assert again.late_check is None
    assert sent == []


async def test_a_manifest_of_an_earlier_release_is_late_checked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its manifest does not say when the last window was last seen whole: checked once, then
    # recorded.
    out = tmp_path / "older"
    async with _ended_an_hour_ago(out, monkeypatch, 16) as (clocks, _, dm, end, _first):
        path = out / "manifest.json"
        raw = json.loads(path.read_text(encoding="utf-8"))
        assert raw.pop("last_window_seen_at") == clocks.at(clocks.now).isoformat()
        path.write_text(json.dumps(raw), encoding="utf-8")
        once = await export_sharded(dm, out, 2, progress=False, date_created_to=end)
        twice = await export_sharded(dm, out, 2, progress=False, date_created_to=end)

    assert once.late_check is not None
    assert once.late_check.added == 0
    assert once.last_window_seen_at == clocks.at(clocks.now)
    assert twice.late_check is None


@pytest.mark.parametrize("concurrency", [0, 65, "8", True, None])
async def test_a_bad_concurrency_is_refused_before_the_late_check_sends_or_locks_anything(
    tmp_path: Path, concurrency: Any
) -> None:
    out = tmp_path / "out"
    async with (
        DMHubSimulator(customers=40, seed=2) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        manifest = await export_sharded(dm, out, 2, progress=False)
        assert manifest.complete
        sent: list[str] = []
        sim.on_request(lambda request: sent.append(request.path))
        # Before: a count was sent and the last part locked and read, then the walk refused
        # it; and a directory with nothing due returned None, the value never checked.
        with pytest.raises(InvalidRequestError, match=r"^late_check\(\): concurrency must"):
            await late_check(dm, out, concurrency=concurrency)
        with pytest.raises(InvalidRequestError, match=r"^late_check\(\): concurrency must"):
            await late_check(dm, tmp_path / "no-export", concurrency=concurrency)
    assert sent == []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "part-00000.jsonl", "part-00001.jsonl"]
    )
