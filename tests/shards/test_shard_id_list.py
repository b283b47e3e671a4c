"""A sharded export of an ``id_list``: the list cut into slices, written once beside the manifest.

The planner bisected ``dateCreated`` with counts of the whole list, each split into URL-sized
batches (7,936 counts for 8 shards of 30,000 ids; 300,000 ids did not finish in 90 s), and the
manifest held the list once per shard and once more (63 MB for 8 shards of 300,000 ids,
rewritten as each shard ended; each queued job carried 3.3 MB).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tracemalloc
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from _helpers import Int64
from hypothesis import given, settings
from hypothesis import strategies as st
from shard_support import exported_ids

from dmhub_async import APIConnectionError, DMHubClient, InvalidRequestError
from dmhub_async.shards import (
    MANIFEST_NAME,
    Manifest,
    Shard,
    _manifest,
    _plan,
    _run,
    export_sharded,
    merge,
    plan_shards,
)
from dmhub_async.shards._run import export_shard
from dmhub_async.testing import DMHubSimulator

pytestmark = pytest.mark.timeout(120)

#: Ids of no customer: past every id the simulator gives.
NOBODY = 9_000_000_000


@pytest.fixture
async def sim() -> AsyncIterator[DMHubSimulator]:
    async with DMHubSimulator(customers=1_000) as simulator:
        yield simulator


@pytest.fixture
async def dm(sim: DMHubSimulator) -> AsyncIterator[DMHubClient]:
    async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as client:
        yield client


def long_list(sim: DMHubSimulator, length: int) -> list[int]:
    """Every customer's id, reversed, some twice, then ids of no one up to ``length``."""
    real = sim.customer_ids()[::-1]
    given = [*real, *real[:50]]
    return given + list(range(NOBODY, NOBODY + length - len(given)))


async def sharded_list(dm: DMHubClient, out: Path, listed: list[int]) -> Manifest:
    """``listed`` exported in 2 shards to ``out``: the manifest it leaves, as read back."""
    await export_sharded(dm, out, 2, progress=False, id_list=listed)
    manifest = Manifest.read(out)
    assert manifest is not None
    return manifest


async def test_a_plan_of_a_long_id_list_sends_nothing_and_cuts_the_list_in_slices(
    sim: DMHubSimulator, dm: DMHubClient
) -> None:
    given = long_list(sim, 30_000)

    shards = await plan_shards(dm, 8, id_list=given, stage="lead")

    assert dm.stats.requests == 0  # was 7,936 counts
    unique = sorted(set(given))
    assert [i for s in shards for i in s.filters["id_list"]] == unique  # sorted, each once
    assert {s.planned_count for s in shards} == {3_743, 3_744}  # 29,950 ids in 8
    assert [s.planned_count for s in shards] == [len(s.filters["id_list"]) for s in shards]
    assert all(s.filters["stage"] == "lead" for s in shards)
    assert all(s.start is None and s.end is None for s in shards)


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(0, 40), min_size=1, max_size=120),
    n=st.integers(1, 12),
)
def test_every_id_is_in_one_shard_whatever_the_lengths_repeats_and_shard_count(
    ids: list[int], n: int
) -> None:
    async def plan() -> list[Shard]:
        # Nothing listens there: a plan that sends a request fails.
        async with DMHubClient("app", "s3cret", base_url="http://127.0.0.1:9", max_retries=0) as c:
            return await plan_shards(c, n, id_list=ids)

    shards = asyncio.run(plan())

    unique = sorted(set(ids))
    assert len(shards) == min(n, len(unique))
    slices = [list(s.filters["id_list"]) for s in shards]
    assert [i for part in slices for i in part] == unique
    assert max(map(len, slices)) - min(map(len, slices)) <= 1
    assert [s.index for s in shards] == list(range(len(shards)))
    # A shard goes through JSON (a task queue) and back as it was.
    assert [Shard.from_dict(orjson.loads(orjson.dumps(s.to_dict()))) for s in shards] == shards


async def test_a_sharded_export_of_an_id_list_has_every_customer_once_and_a_small_manifest(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    given = long_list(sim, 30_000)
    out = tmp_path / "out"
    since = datetime(2016, 1, 2, tzinfo=timezone.utc)
    wanted = {
        i
        for i in sim.customer_ids()
        if (c := sim.customer(i)) is not None
        and c["stage"] == "lead"
        and c["dateCreated"] >= "2016-01-02T00:00:00Z"
    }

    manifest = await export_sharded(
        dm, out, 8, progress=False, id_list=given, stage="lead", date_created_from=since
    )

    assert manifest.complete
    assert sorted(exported_ids(out)) == sorted(wanted)
    assert merge(out, tmp_path / "all.jsonl") == len(wanted)
    # The list once, beside the manifest: the manifest names it by its digest, and each
    # shard its slice by offsets (it held the list 9 times: 6,979,024 bytes).
    listed = (out / "id_list.txt").read_bytes()
    assert listed.split() == [str(i).encode() for i in sorted(set(given))]
    recorded = orjson.loads((out / MANIFEST_NAME).read_bytes())
    assert (out / MANIFEST_NAME).stat().st_size < 10_000
    assert recorded["filters"]["id_list"] == "sha256:" + hashlib.sha256(listed).hexdigest()
    assert recorded["version"] == 2
    assert [s["shard"]["id_slice"] for s in recorded["shards"]][:2] == [
        [0, 3_743],
        [3_743, 7_487],
    ]
    # The same export again: taken up, nothing planned or sent; another list refused.
    requests = dm.stats.requests
    again = await export_sharded(
        dm, out, 8, progress=False, id_list=iter(given), stage="lead", date_created_from=since
    )
    assert again.complete
    assert dm.stats.requests == requests
    with pytest.raises(InvalidRequestError, match="other filters"):
        await export_sharded(
            dm, out, 8, progress=False, id_list=given[:-1], stage="lead", date_created_from=since
        )


async def test_a_crashed_sharded_export_of_an_id_list_resumes_each_customer_once(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    given = long_list(sim, 12_000)
    out = tmp_path / "out"

    class Crash(Exception):
        pass

    def crash(done: int, planned: int | None) -> None:
        if done >= 300:
            raise Crash

    with pytest.raises(Crash):
        await export_sharded(
            dm, out, 4, progress=False, page_size=20, parallel=2, on_total=crash, id_list=given
        )
    assert list(out.glob("part-*.ckpt"))  # a shard stopped mid-way, its checkpoint kept

    manifest = await export_sharded(dm, out, 4, progress=False, page_size=20, id_list=given)

    assert manifest.complete
    ids = exported_ids(out)
    assert sorted(ids) == sorted(sim.customer_ids())  # every customer once


async def test_a_shard_of_a_manifest_takes_its_ids_from_the_directory_and_checks_them(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # What a worker (a process, a queue's job) is sent: the shard naming its slice, a few
    # hundred bytes, not the list (a job carried 3.3 MB for 300,000 ids).
    given = long_list(sim, 30_000)
    out = tmp_path / "out"
    await export_sharded(dm, out, 8, progress=False, id_list=given)
    manifest = Manifest.read(out)
    assert manifest is not None
    sent = manifest.shards[-1].shard.to_dict()
    assert len(orjson.dumps(sent)) < 400
    shard = Shard.from_dict(sent)

    report = await export_shard(dm, shard, out / "again.jsonl")
    assert report.complete
    # The last slice: ids of no one alone.
    assert report.exported == 0

    first = Shard.from_dict(manifest.shards[0].shard.to_dict())
    report = await export_shard(dm, first, out / "first.jsonl")
    assert report.exported == manifest.shards[0].exported > 0

    _run._READ_LIST.clear()  # the list a worker read last, kept by its digest: read again
    with pytest.raises(InvalidRequestError, match="is missing"):
        await export_shard(dm, first, tmp_path / "elsewhere.jsonl")
    (out / "id_list.txt").write_bytes(b"1\n2\n")
    bad: dict[str, Any] = {**sent, "id_list_sha256": "sha256:" + "0" * 64}
    with pytest.raises(InvalidRequestError, match="not the id list"):
        await export_shard(dm, Shard.from_dict(bad), out / "other.jsonl")


async def test_a_manifest_of_an_id_list_planned_by_windows_still_resumes(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # A directory planned before the list was cut in slices: dateCreated windows, each
    # shard carrying the whole list (manifest version 1). A rerun takes it up as it is.
    given = long_list(sim, 5_000)
    out = tmp_path / "out"
    out.mkdir()
    edge = datetime(2016, 1, 3, tzinfo=timezone.utc)
    old = Manifest.new(
        [
            Shard(0, None, edge, filters={"id_list": given}, planned_count=400),
            Shard(1, edge, None, filters={"id_list": given}, planned_count=600),
        ],
        fmt="jsonl",
        base_url=dm.base_url,
        app_id=dm.app_id,
        filters={"id_list": given},
    )
    old.write(out)
    assert orjson.loads((out / MANIFEST_NAME).read_bytes())["version"] == 1

    manifest = await export_sharded(dm, out, 2, progress=False, id_list=given)

    assert manifest.complete
    assert [s.shard.end for s in manifest.shards] == [edge, None]
    assert sorted(exported_ids(out)) == sorted(sim.customer_ids())
    assert not (out / "id_list.txt").exists()
    assert orjson.loads((out / MANIFEST_NAME).read_bytes())["version"] == 1


async def test_an_edited_manifest_of_an_id_list_is_refused(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    given = long_list(sim, 5_000)
    out = tmp_path / "out"
    await export_sharded(dm, out, 3, progress=False, id_list=given)
    raw = (out / MANIFEST_NAME).read_bytes()

    def edited(change: Any) -> None:
        data = orjson.loads(raw)
        change(data)
        (out / MANIFEST_NAME).write_bytes(orjson.dumps(data))
        with pytest.raises(InvalidRequestError, match="not a manifest this SDK wrote"):
            Manifest.read(out)

    # Two shards of one slice; a gap; the list cut short; read as a plan of windows.
    edited(lambda d: d["shards"][1]["shard"].update(id_slice=d["shards"][0]["shard"]["id_slice"]))
    edited(lambda d: d["shards"][2]["shard"]["id_slice"].__setitem__(0, 10))
    edited(lambda d: d.update(id_list_length=d["id_list_length"] + 1))
    edited(lambda d: d.update(version=1))


@pytest.mark.parametrize("put", ["fifo", "device", "directory"])
async def test_a_shard_refuses_an_id_list_that_is_no_file_rather_than_wait_or_fill_memory(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path, put: str
) -> None:
    # id_list.txt replaced by a named pipe: the worker's read waited for a writer for ever
    # (its shard never ended, its job's heartbeat kept it its own); by a link to /dev/zero,
    # it read until the machine's memory ran out (a device: /dev/null here, read at once).
    out = tmp_path / "out"
    manifest = await sharded_list(dm, out, sim.customer_ids()[:40])
    (out / "id_list.txt").unlink()
    if put == "fifo":
        os.mkfifo(out / "id_list.txt")
    elif put == "device":
        (out / "id_list.txt").symlink_to(os.devnull)
    else:  # raised "IsADirectoryError: [Errno 21] Is a directory: 8", 8 its descriptor
        (out / "id_list.txt").mkdir()
    _run._READ_LIST.clear()  # a worker process that has read no list yet

    with pytest.raises(InvalidRequestError, match=r"id_list\.txt is not a regular file"):
        await asyncio.wait_for(
            export_shard(dm, manifest.shards[0].shard, out / "again.jsonl"), timeout=10
        )
    assert not (out / "again.jsonl").exists()


async def test_a_shard_refuses_a_huge_id_list_file_without_holding_it_in_memory(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # id_list.txt grown to gigabytes (a file written over it, a disk image): the worker read
    # it whole into memory before it found it was not the list.
    out = tmp_path / "out"
    manifest = await sharded_list(dm, out, sim.customer_ids()[:40])
    with (out / "id_list.txt").open("r+b") as fh:
        fh.truncate(256 << 20)  # sparse: no disk taken
    _run._READ_LIST.clear()

    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequestError, match="not the id list"):
            await export_shard(dm, manifest.shards[0].shard, out / "again.jsonl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


@pytest.mark.parametrize("damage", ["edited", "cut short", "deleted", "a pipe"])
async def test_a_rerun_writes_again_the_id_list_file_of_its_own_list_and_exports_each_once(
    sim: DMHubSimulator,
    dm: DMHubClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    # A crash, then id_list.txt edited, cut short, deleted or replaced before the rerun: the
    # rerun, given the export's own list (its SHA-256 is the manifest's), failed every shard
    # still to do with "put the export's own back", which it had in hand.
    given = long_list(sim, 2_000)
    out = tmp_path / "out"
    await export_sharded(dm, out, 4, progress=False, id_list=given)
    whole = (out / "id_list.txt").read_bytes()
    edit = orjson.loads((out / MANIFEST_NAME).read_bytes())
    edit["shards"][1].update(status="running", exported=0, size=None, sha256=None)
    (out / MANIFEST_NAME).write_bytes(orjson.dumps(edit))  # killed while shard 1 ran
    (out / "part-00001.jsonl").unlink()
    listed = out / "id_list.txt"
    if damage == "edited":
        listed.write_bytes(whole.replace(b"\n", b"\n9", 1))
    elif damage == "cut short":
        listed.write_bytes(whole[: len(whole) // 2])
    else:
        listed.unlink()
        if damage == "a pipe":
            os.mkfifo(listed)
    _run._READ_LIST.clear()  # a new process

    manifest = await asyncio.wait_for(
        export_sharded(dm, out, 4, progress=False, id_list=given[::-1]), timeout=60
    )

    assert manifest.complete, [s.error for s in manifest.shards]
    ids = exported_ids(out)
    assert sorted(ids) == sorted(sim.customer_ids())  # every customer once
    assert listed.read_bytes() == whole
    assert "id_list.txt" in caplog.text
    assert "written again" in caplog.text


async def test_a_rerun_refuses_a_manifest_edited_to_leave_out_the_lists_last_ids(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # The manifest's list length and last slice cut by 20 (each still agreeing with the
    # other): the rerun, given the whole list (the same SHA-256), exported the shortened
    # slice and reported the export complete, 20 customers in no part, merged without them.
    given = sim.customer_ids()[:120]
    out = tmp_path / "out"
    await export_sharded(dm, out, 4, progress=False, id_list=given)
    data = orjson.loads((out / MANIFEST_NAME).read_bytes())
    data["shards"][-1]["shard"]["id_slice"][1] -= 20
    data["id_list_length"] -= 20
    data["shards"][-1].update(status="pending", size=None, sha256=None)
    (out / MANIFEST_NAME).write_bytes(orjson.dumps(data))
    (out / "part-00003.jsonl").unlink()

    with pytest.raises(InvalidRequestError, match="100 ids of a list of 120"):
        await export_sharded(dm, out, 4, progress=False, id_list=given)
    assert not (out / "part-00003.jsonl").exists()  # nothing exported


async def test_a_rerun_of_an_id_list_of_an_int_class_of_its_own_takes_up_the_export(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # numpy's int64 ids, taken by the first run (as each method taking an id takes them),
    # failed the rerun that takes the export up (after a crash, or to check it is complete)
    # with a raw TypeError: "descriptor '__repr__' requires a 'int' object but received a
    # 'numpy.int64'"; a bad id given to the rerun was a raw TypeError too, naming none.
    given = [Int64(i) for i in sim.customer_ids()[:120]]
    out = tmp_path / "out"
    first = await export_sharded(dm, out, 4, progress=False, id_list=given)
    assert first.complete
    requests = dm.stats.requests

    again = await export_sharded(dm, out, 4, progress=False, id_list=given[::-1])

    assert again.complete
    assert dm.stats.requests == requests  # taken up: nothing planned or sent
    assert sorted(exported_ids(out)) == sorted(sim.customer_ids()[:120])
    with pytest.raises(InvalidRequestError, match=r"id_list\[120\]: a customer id must be an int"):
        await export_sharded(dm, out, 4, progress=False, id_list=[*given, "7"])


async def test_a_worker_holds_the_id_lists_text_not_every_id_of_it(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # A worker took its slice from the whole list parsed into ints: 36 bytes an id, in every
    # worker process (3,000,000 ids: 120 MB each), where the file's text is 11 bytes an id.
    given = long_list(sim, 300_000)
    (out := tmp_path / "out").mkdir()
    plan = await plan_shards(dm, 8, id_list=given)
    unique, text, _ = _run.unique_ids(given)
    (out / "id_list.txt").write_bytes(text)
    _run._READ_LIST.clear()  # a worker process that has read no list yet
    taken = 0
    tracemalloc.start()
    try:
        for shard in plan:  # one worker's shards, one after the other
            detached = shard.without_ids()
            ids = detached.with_ids(await _run._id_list(out, detached)).filters["id_list"]
            assert ids == shard.filters["id_list"]
            taken += len(ids)
            del ids
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert taken == len(unique)
    ((_, listed),) = _run._READ_LIST
    assert (len(listed), listed[0], listed[-1], listed[5:8]) == (
        len(unique),
        unique[0],
        unique[-1],
        unique[5:8],
    )
    assert held < 1.5 * len(text)  # the list kept for the worker's next shard: its text
    assert peak < 2.5 * len(text)


def test_a_slice_of_the_id_lists_text_reads_its_own_lines_not_every_line_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each slice (and each id) was read from the list's first line on: a worker's shards cost
    # the list's length times the shards in lines read (1,000,000 ids in 1,000 shards: 500
    # million lines, 7 s of CPU, the last shards' 20 ms each on the event loop; 3,000,000
    # ids: 26 s, 74 ms a shard).
    ids = list(range(NOBODY, NOBODY + 200_000))
    listed = _plan.ListedIds(_plan.id_list_text(ids))
    read = 0

    class Counted(io.BytesIO):
        def __next__(self) -> bytes:
            nonlocal read
            read += 1
            return super().__next__()

    monkeypatch.setattr(_plan, "io", SimpleNamespace(BytesIO=Counted))

    assert listed[199_900:200_000] == ids[199_900:]
    assert listed[150_001:150_003] == ids[150_001:150_003]
    assert (listed[-1], listed[123_457], listed[0]) == (ids[-1], ids[123_457], ids[0])
    assert read < 5_000  # the lines asked for, and at most about a thousand before each
    for wanted in (slice(0, 0), slice(5, 3000, 7), slice(-1500, None), slice(None, -199_999)):
        assert listed[wanted] == ids[wanted]
    with pytest.raises(IndexError):
        listed[200_000]


async def test_the_progress_total_of_an_id_list_export_ends_at_the_customers_found(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # A slice plans its ids, an upper bound: 2,950 ids of 1,000 customers ended the bar at 34%,
    # its time left three times too long all the way. A complete shard's customers take its
    # planned count's place in the total.
    given = long_list(sim, 3_000)
    heard: list[tuple[int, int | None]] = []
    manifest = await export_sharded(
        dm,
        tmp_path / "out",
        4,
        progress=False,
        parallel=1,
        on_total=lambda done, total: heard.append((done, total)),
        id_list=given,
    )
    assert manifest.complete
    customers = len(sim.customer_ids())
    assert manifest.exported == customers < len(set(given))
    assert heard[0][1] == len(set(given))  # nothing known yet but the ids
    assert heard[-1] == (customers, customers)  # done: 100%
    totals = [total for _, total in heard]
    assert totals == sorted(totals, reverse=True)  # lowered as each shard ends, never raised


async def test_a_shard_exports_the_id_list_it_checked_though_the_file_is_written_over(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file was hashed as it was read, then read again from its start and taken unchecked:
    # written over in place between the two (another export's list copied over it), its ids
    # were exported as the shard's, the shard complete with customers of no id it listed.
    # (acbc042 hashed the second read again; it is now read once.)
    import types

    out = tmp_path / "out"
    listed = sim.customer_ids()[:40]
    manifest = await sharded_list(dm, out, listed)
    path = out / "id_list.txt"
    others = sorted(sim.customer_ids()[40:80])
    theirs = "".join(f"{i}\n" for i in others).encode()
    assert len(theirs) == path.stat().st_size  # the same length: no size tells them apart

    class Hashed:
        """sha256 whose first digest is read as the file is written over, in place."""

        written = False

        def __init__(self, data: bytes = b"") -> None:
            self._hash = hashlib.sha256(data)

        def update(self, data: bytes) -> None:
            self._hash.update(data)

        def hexdigest(self) -> str:
            if not Hashed.written:
                Hashed.written = True
                with path.open("r+b") as fh:  # the same file, its bytes changed
                    fh.write(theirs)
            return self._hash.hexdigest()

    monkeypatch.setattr(_manifest, "hashlib", types.SimpleNamespace(sha256=Hashed))
    _run._READ_LIST.clear()  # a worker process that has read no list yet

    # Read once, the text kept is the text hashed: the shard's own ids, whatever is written
    # over the file once it was read.
    report = await export_shard(dm, manifest.shards[0].shard, out / "again.jsonl")

    assert Hashed.written
    assert report.complete
    first, stop = manifest.shards[0].shard.id_slice or (0, 0)
    exported = [orjson.loads(row)["id"] for row in (out / "again.jsonl").read_bytes().splitlines()]
    assert exported == sorted(listed)[first:stop]
    assert not set(exported) & set(others)


async def test_merging_what_there_is_checks_an_id_list_parts_checkpoint_is_of_its_slice(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # A shard of an id list failed part-way: its checkpoint records its slice (a long one by
    # its SHA-256), read from the directory's list to be checked: the export's own part goes
    # in; another list's part, beside its own checkpoint, is refused.
    async def failed_first_shard(out: Path, given: list[int]) -> None:
        await export_sharded(dm, out, 2, progress=False, id_list=given)
        data = orjson.loads((out / "manifest.json").read_bytes())
        data["shards"][0].update(status="failed", size=None, sha256=None)
        (out / "manifest.json").write_bytes(orjson.dumps(data))
        (out / "part-00000.jsonl").unlink()
        manifest = Manifest.read(out)
        assert manifest is not None
        sim.faults.paths = ("GET /v1/customers",)
        sim.faults.script(["ok"] * 2 + ["reset"])
        try:
            async with DMHubClient(
                sim.app_id, sim.secret, base_url=sim.url, max_retries=0
            ) as client:
                with pytest.raises(APIConnectionError):
                    await export_shard(
                        client,
                        manifest.shards[0].shard,
                        out / "part-00000.jsonl",
                        checkpoint=out / "part-00000.jsonl.ckpt",
                        page_size=10,
                        concurrency=1,
                    )
        finally:
            sim.faults.clear()

    real = sim.customer_ids()
    own, other = tmp_path / "own", tmp_path / "other"
    await failed_first_shard(own, long_list(sim, 30_000))  # slices of 15,000 ids: digested
    assert merge(own, tmp_path / "own.jsonl", allow_incomplete=True) == 20
    await failed_first_shard(other, real[:500])
    for name in ("part-00000.jsonl", "part-00000.jsonl.ckpt"):
        (own / name).write_bytes((other / name).read_bytes())

    with pytest.raises(InvalidRequestError, match=r"part-00000\.jsonl is another export's"):
        merge(own, tmp_path / "all.jsonl", allow_incomplete=True)
    (own / "id_list.txt").unlink()
    with pytest.raises(InvalidRequestError, match=r"id_list\.txt is missing"):
        merge(own, tmp_path / "all.jsonl", allow_incomplete=True)


async def test_a_shard_reads_its_id_list_file_once(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file was read twice (hashed as streamed, then read again and hashed again, so that
    # the text kept was the text checked): twice the disk and the hashing, 55 ms for
    # 3,000,000 ids. Read once, the text kept is the text hashed.
    out = tmp_path / "out"
    listed = sim.customer_ids()[:40]
    manifest = await sharded_list(dm, out, listed)
    opened = _manifest.open_to_read
    read: list[int] = []

    class Counted:
        def __init__(self, fh: Any) -> None:
            self._fh = fh

        def read(self, size: int = -1) -> bytes:
            data: bytes = self._fh.read(size)
            read.append(len(data))
            return data

        def __getattr__(self, name: str) -> Any:
            return getattr(self._fh, name)

        def __enter__(self) -> Counted:
            return self

        def __exit__(self, *exc: object) -> None:
            self._fh.close()

    def counted(path: Any) -> Any:
        fh, info = opened(path)
        return (Counted(fh), info) if Path(path).name == "id_list.txt" else (fh, info)

    monkeypatch.setattr(_manifest, "open_to_read", counted)
    _run._READ_LIST.clear()  # a worker process that has read no list yet

    report = await export_shard(dm, manifest.shards[0].shard, out / "again.jsonl")

    assert report.complete
    assert sum(read) == (out / "id_list.txt").stat().st_size


async def test_a_rerun_refuses_a_directory_where_its_id_list_file_was(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # A rerun writes the list's file again when it is not the list: over a directory there,
    # it stopped with "IsADirectoryError: [Errno 21] Is a directory: 8" (the CLI: "8: Is a
    # directory"), naming neither the file nor what to do.
    out = tmp_path / "out"
    given = sim.customer_ids()[:100]
    await export_sharded(dm, out, 2, progress=False, id_list=given)
    (out / "part-00001.jsonl").unlink()
    (out / "id_list.txt").unlink()
    (out / "id_list.txt").mkdir()
    (out / "id_list.txt" / "notes").write_text("someone's\n")

    with pytest.raises(InvalidRequestError, match=r"id_list\.txt is a directory"):
        await export_sharded(dm, out, 2, progress=False, id_list=given)
    assert (out / "id_list.txt" / "notes").exists()


async def test_a_worker_reads_a_list_of_more_than_a_mib_where_os_has_no_pread(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first MiB of a list's file is checked before the whole is read; with os.pread, which
    # Windows has not, every shard of a list over a MiB (some 95,000 ids) failed there with
    # AttributeError.
    given = long_list(sim, 120_000)
    (out := tmp_path / "out").mkdir()
    plan = await plan_shards(dm, 2, id_list=given)
    _, text, _ = _run.unique_ids(given)
    assert len(text) > 1 << 20
    (out / "id_list.txt").write_bytes(text)
    monkeypatch.delattr(os, "pread", raising=False)
    _run._READ_LIST.clear()  # a worker process that has read no list yet

    detached = plan[1].without_ids()
    ids = detached.with_ids(await _run._id_list(out, detached)).filters["id_list"]

    assert ids == plan[1].filters["id_list"]
