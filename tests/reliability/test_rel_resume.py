"""Scenario 14: resuming an export after customers changed, files changed, or another run.

An export of 1,000 customers (10 pages of 100) is stopped after page 3 (an exception from
``on_progress``, as a crash between two pages), then the service or the files are changed
while it is down, and the same call is made again. Each test reads the output back and
compares it with the simulator's own table.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import re
import socket
import stat
import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from rel_support import two_apps

from dmhub_async import DMHubClient, InvalidRequestError, ResponseTooLargeError
from dmhub_async._seen_records import SeenRecords
from dmhub_async.export import ExportProgress, ExportReport, export_customers
from dmhub_async.export import _export as export_run
from dmhub_async.export import _output as export_output
from dmhub_async.export import _reconcile as export_reconcile
from dmhub_async.testing import DMHubSimulator

CUSTOMERS = 1000
PAGE = 100


class Crash(Exception):
    """Stands for the process dying between two pages."""


def crash_after(pages: int) -> Callable[[ExportProgress], None]:
    def on_progress(progress: ExportProgress) -> None:
        if progress.pages == pages:
            raise Crash

    return on_progress


def read_ids(path: Path) -> list[int]:
    with path.open(encoding="utf-8", newline="") as fh:
        if path.suffix == ".csv":
            return [int(row["id"]) for row in csv.DictReader(fh)]
        return [json.loads(line)["id"] for line in fh]


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def state(ckpt: Path) -> dict[str, Any]:
    """The checkpoint as its JSON."""
    return dict(json.loads(ckpt.read_text(encoding="utf-8")))


async def export(dm: DMHubClient, dest: Path, ckpt: Path | None, **kwargs: Any) -> ExportReport:
    kwargs.setdefault("page_size", PAGE)
    kwargs.setdefault("concurrency", 2)
    return await export_customers(dm, dest, checkpoint=ckpt, progress=False, **kwargs)


async def crashed_export(
    dm: DMHubClient, dest: Path, ckpt: Path, pages: int = 3, **kwargs: Any
) -> None:
    with pytest.raises(Crash):
        await export(dm, dest, ckpt, on_progress=crash_after(pages), **kwargs)
    assert state(ckpt)["exported"] == pages * PAGE


def assert_once_each(ids: list[int], expected: list[int]) -> None:
    assert [i for i, n in Counter(ids).items() if n > 1] == []  # nothing twice
    assert sorted(set(expected) - set(ids)) == []  # nothing the service holds is missing


# -- customers changed while the export was down ------------------------------------------------


@pytest.mark.parametrize("deleted", [10, 37])
async def test_deletes_while_down_lose_no_survivor(
    tmp_path: Path, connect: Callable[..., DMHubClient], deleted: int
) -> None:
    """The issue's figures: 0.1 wrote 990 of 1,000 (37 deletes: 963), 10 (37) survivors never
    exported, and reported complete; the resumed walk starts from the page of its last id."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim:
        async with connect(sim) as dm:
            await crashed_export(dm, dest, ckpt)
            lowest = sim.customer_ids()[:deleted]  # already exported
            for customer_id in lowest:
                assert sim.delete_customer(customer_id)

            report = await export(dm, dest, ckpt)

        survivors = sim.customer_ids()
    ids = read_ids(dest)
    assert_once_each(ids, survivors)
    assert ids == sorted(ids)  # found by the walk, in order: nothing needed recovering
    assert len(ids) == CUSTOMERS  # the deleted ones stay: they were exported before
    assert (report.exported, report.recovered, report.resumed) == (CUSTOMERS, 0, True)
    assert (report.count_before, report.count_after) == (CUSTOMERS, CUSTOMERS - deleted)
    assert report.verified is True
    assert report.complete


@pytest.mark.parametrize(
    ("deleted", "inserted_below", "inserted_above"),
    [(0, 10, 10), (10, 10, 0), (25, 5, 40)],
    ids=["inserts", "as many deletes as inserts", "both"],
)
async def test_inserts_and_deletes_while_down(
    tmp_path: Path,
    connect: Callable[..., DMHubClient],
    deleted: int,
    inserted_below: int,
    inserted_above: int,
) -> None:
    """Customers inserted while down, below the ids exported (which the resumed walk cannot
    reach) and above them: the final check finds the ones below and fetches them by id.
    With as many deletes as inserts the counts agree, and 0.1 reported complete over 10
    survivors missed."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim:
        async with connect(sim) as dm:
            await crashed_export(dm, dest, ckpt)
            lowest = sim.customer_ids()[0]  # new ids below every id exported, never reused
            for customer_id in sim.customer_ids()[:deleted]:
                sim.delete_customer(customer_id)
            for n in range(inserted_below):
                sim.insert_customer({"name": f"新客户{n}"}, customer_id=lowest - 1 - n)
            for n in range(inserted_above):
                sim.insert_customer({"name": f"后来{n}"})

            report = await export(dm, dest, ckpt)

        now = sim.customer_ids()
    ids = read_ids(dest)
    assert_once_each(ids, now)
    walked = ids[: len(ids) - report.recovered]
    assert walked == sorted(walked)
    assert report.recovered == inserted_below  # appended after the walk
    assert report.exported == len(ids) == CUSTOMERS + inserted_below + inserted_above
    assert report.count_after == len(now)
    assert report.verified is True
    assert report.complete


async def test_complete_comes_from_a_check_that_can_fail(
    tmp_path: Path, connect: Callable[..., DMHubClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the resume position taken from the page number alone (0.1's way) and the walk's
    own check of its start page off, the walk misses the 10 survivors the deletes shifted
    back: the final check finds and fetches them. When they cannot be fetched either, the
    export is not complete, and says so."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"

    async def page_number_alone(*args: Any) -> int:
        return int(args[3])  # the checkpoint's next page

    monkeypatch.setattr(export_run, "start_page", page_number_alone)
    # The walk steps back when its start page does not reach back to the last id: every
    # page now reaches back, as before that check (nothing changes while the walk runs).
    monkeypatch.setattr(SeenRecords, "reaches_back", lambda self, items: True)
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim, connect(sim) as dm:
        await crashed_export(dm, dest, ckpt)
        shifted = sim.customer_ids()[300:310]  # back onto page 3 by the deletes
        for customer_id in sim.customer_ids()[:10]:
            sim.delete_customer(customer_id)
        recovered = await export(dm, dest, ckpt)
        assert recovered.recovered == 10
        assert read_ids(dest)[-10:] == shifted
        assert recovered.complete

        async def fetch_nothing(*args: Any) -> int:
            return len(args[2])  # every id it was asked for stays missing

        monkeypatch.setattr(export_reconcile, "_fetch", fetch_nothing)
        await crashed_export(dm, dest, ckpt)
        for customer_id in sim.customer_ids()[:10]:
            sim.delete_customer(customer_id)
        missed = await export(dm, dest, ckpt)

    assert missed.verified is False
    assert not missed.complete
    assert "MISMATCH" in missed.summary()


# -- the files changed while the export was down ------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("cut", ["mid-record", "1,499 records", "half the bytes", "everything"])
async def test_a_truncated_output_is_repaired_never_padded(
    tmp_path: Path, connect: Callable[..., DMHubClient], cut: str, fmt: str
) -> None:
    """The output shorter than its checkpoint (truncated, or not on disk before a crash):
    0.1 padded it with NUL bytes up to the recorded length and reported complete. It is cut
    back to its last whole record, and the walk resumes after that one."""
    dest, ckpt = tmp_path / f"customers.{fmt}", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=2000, seed=14) as sim:
        async with connect(sim) as dm:
            await crashed_export(dm, dest, ckpt, pages=16)
            data = dest.read_bytes()
            lines = data.splitlines(keepends=True)  # no field of the seeded rows has a newline
            header = 1 if fmt == "csv" else 0
            keep = {
                "mid-record": len(data) - len(lines[-1]) // 2,
                "1,499 records": len(b"".join(lines[: header + 101])),
                "half the bytes": len(data) // 2,
                "everything": 0,
            }[cut]
            with dest.open("r+b") as fh:
                fh.truncate(keep)

            report = await export(dm, dest, ckpt)

        expected = sim.customer_ids()
    raw = dest.read_bytes()
    assert b"\x00" not in raw
    assert read_ids(dest) == expected  # every customer once, in order
    if fmt == "csv":
        assert raw.count(b"id,displayName,") == 1  # one header, even after a cut through it
    assert report.exported == 2000
    assert report.complete


def scan_needing_the_loop(
    monkeypatch: pytest.MonkeyPatch,
    loop: asyncio.AbstractEventLoop,
    started: threading.Event,
    release: threading.Event | None = None,
) -> None:
    """The resume's read-back of its file made to need the event loop running meanwhile: it
    fails (within 5 s) where it blocks the loop, as any long read of a big file did.
    ``release``: the read-back waits for it too, so that it is still under way when the
    test acts, however late the test's own wake-up comes."""
    scan = export_output.scan

    def needs_the_loop(fh: Any, fmt: str, limit: int) -> Any:
        ran = threading.Event()
        started.set()
        loop.call_soon_threadsafe(ran.set)
        assert ran.wait(10), "the event loop stood still while the export read its file back"
        if release is not None:
            assert release.wait(5), "the test never released the read-back"
        return scan(fh, fmt, limit)

    monkeypatch.setattr(export_output, "scan", needs_the_loop)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_a_resume_reads_its_file_back_off_the_event_loop(
    tmp_path: Path, connect: Callable[..., DMHubClient], monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """A resume reads back all the file its checkpoint covers: 1.6 s for a million customers
    (186 MB), during which every other coroutine of the service stood still. It is read on a
    thread, and the loop runs on."""
    dest, ckpt = tmp_path / f"customers.{fmt}", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim:
        async with connect(sim) as dm:
            await crashed_export(dm, dest, ckpt)
            scan_needing_the_loop(monkeypatch, asyncio.get_running_loop(), threading.Event())
            report = await export(dm, dest, ckpt)
        expected = sim.customer_ids()
    assert read_ids(dest) == expected
    assert report.resumed
    assert report.complete


async def test_an_export_cancelled_while_it_reads_its_file_back_leaves_it_resumable(
    tmp_path: Path, connect: Callable[..., DMHubClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled (a timeout) while the thread reads the file back: the thread's work is
    undone before the cancellation is raised, so a rerun at once finds no lock held."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim:
        async with connect(sim) as dm:
            await crashed_export(dm, dest, ckpt)
            before = (dest.read_bytes(), ckpt.read_bytes())
            with monkeypatch.context() as patch:
                started, release = threading.Event(), threading.Event()
                scan_needing_the_loop(patch, asyncio.get_running_loop(), started, release)
                task = asyncio.ensure_future(export(dm, dest, ckpt))
                assert await asyncio.to_thread(started.wait, 5)  # the read back is under way
                # Held until cancelled: on a loaded machine this coroutine woke only after the
                # read-back had ended and the export had written its next page (checkpoint 400
                # against 300), the cancel then landing on another await than the one tested.
                task.cancel()
                release.set()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert (dest.read_bytes(), ckpt.read_bytes()) == before
            assert files_in(tmp_path) == sorted([ckpt.name, dest.name])  # no lock file left
            report = await export(dm, dest, ckpt)
        expected = sim.customer_ids()
    assert read_ids(dest) == expected
    assert report.complete


async def test_a_csv_cut_inside_a_multi_line_value_is_repaired_not_resumed_inside_it(
    tmp_path: Path, connect: Callable[..., DMHubClient]
) -> None:
    """A CSV record whose last cell spans lines (a remark typed with line breaks) cut after
    one of its inner line breaks: read back, csv handed the torn record out as whole, the
    resume wrote on inside its open quote: the file no longer read back as its customers (the
    lines of the remarks after it read as rows, "第二行" as a customer id)."""
    dest, ckpt = tmp_path / "customers.csv", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=0, seed=14) as sim, connect(sim) as dm:
        for n in range(500):
            sim.insert_customer({"name": f"客户{n}", "remark": f"第一行 {n}\r\n第二行\n第三行"})
        with pytest.raises(Crash):
            await export(dm, dest, ckpt, select=["name", "remark"], on_progress=crash_after(3))
        data = dest.read_bytes()
        inner = data.rindex("第二行".encode())  # just after the last record's first line break
        with dest.open("r+b") as fh:
            fh.truncate(inner)

        report = await export(dm, dest, ckpt, select=["name", "remark"])

        expected = {c: sim.customer(c) for c in sim.customer_ids()}
    with dest.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(row["id"]) for row in rows] == list(expected)
    assert {int(r["id"]): r["remark"] for r in rows} == {
        c: row["remark"] for c, row in expected.items() if row is not None
    }
    assert report.complete


async def test_a_repaired_output_that_fails_again_before_its_next_checkpoint_resumes(
    tmp_path: Path, connect: Callable[..., DMHubClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output found shorter than its checkpoint is cut back and resumed; the checkpoint on
    disk still said the old length until the next page's. A failure before that (the disk
    full at the checkpoint's write; a kill) left the file past the old length with other
    records there (customers deleted while down), and every rerun refused it as "does not
    match its checkpoint": the export could only be started over."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim, connect(sim) as dm:
        await crashed_export(dm, dest, ckpt)  # 300 records
        data = dest.read_bytes()
        last = data.splitlines(keepends=True)[-1]
        with dest.open("r+b") as fh:
            fh.truncate(len(data) - len(last) // 2)  # record 300 torn: not on disk at a crash
        for customer_id in sim.customer_ids()[295:300]:  # and deleted while it was down
            sim.delete_customer(customer_id)
        write_checkpoint = export_output.write_checkpoint

        def disk_full(path: Path, checkpoint: Any, **options: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(export_output, "write_checkpoint", disk_full)
        with pytest.raises(OSError, match="No space"):
            await export(dm, dest, ckpt)
        monkeypatch.setattr(export_output, "write_checkpoint", write_checkpoint)

        report = await export(dm, dest, ckpt)

        expected = sim.customer_ids()
    assert_once_each(read_ids(dest), expected)
    assert report.complete


async def refused_as_changed(
    sim: DMHubSimulator, dm: DMHubClient, dest: Path, ckpt: Path, changed: bytes, said: str = ""
) -> None:
    """``changed`` written over the output: the resume is refused (its message saying ``said``
    too), nothing is sent, and the file is left as it is."""
    dest.write_bytes(changed)  # noqa: ASYNC240 - a test's small file, nothing else on the loop
    sim.counters.reset()

    with pytest.raises(InvalidRequestError, match="does not match its checkpoint") as refused:
        await export(dm, dest, ckpt)

    assert said in str(refused.value)
    assert sim.counters.total == 0
    assert dest.read_bytes() == changed  # noqa: ASYNC240 - as above


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda data: data.replace(b'"id":', b'"id":1', 1), id="another id"),
        # Read back, an id that is no number was compared with the one before it: a raw
        # TypeError ("'>' not supported between 'str' and 'int'"), not the refusal.
        pytest.param(
            lambda data: re.sub(rb'(?<=\n\{"id":)(\d+)', rb'"\1"', data, count=1), id="text id"
        ),
        pytest.param(
            lambda data: re.sub(rb'(?<=\n\{"id":)(\d+)', rb"[\1]", data, count=1), id="list id"
        ),
    ],
)
async def test_an_output_changed_since_its_checkpoint_is_refused(
    tmp_path: Path, connect: Callable[..., DMHubClient], change: Callable[[bytes], bytes]
) -> None:
    """Other records where the checkpoint's should be: refused, nothing touched."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim, connect(sim) as dm:
        await crashed_export(dm, dest, ckpt)
        data = dest.read_bytes()
        changed = change(data)[: len(data)]
        assert changed != data
        await refused_as_changed(sim, dm, dest, ckpt, changed)


async def test_an_output_a_spreadsheet_saved_shorter_is_refused_not_resumed_with_its_changes(
    tmp_path: Path, connect: Callable[..., DMHubClient]
) -> None:
    """A CSV opened in Excel and saved, its mobiles turned into 1.39E+10: shorter than its
    checkpoint, it was taken for a truncated file ("resuming after its last whole record
    (300 of 300)", a log line), resumed, and reported complete and verified, the mangled
    mobiles in it. A truncated file cannot hold every record the checkpoint counts in fewer
    bytes: that one was rewritten, and is refused as any changed output is."""
    dest, ckpt = tmp_path / "customers.csv", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim, connect(sim) as dm:
        await crashed_export(dm, dest, ckpt)
        with dest.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        mobile = rows[0].index("mobile")
        for row in rows[1:]:
            if row[mobile]:
                row[mobile] = f"{int(row[mobile]):.2E}"
        with dest.open("w", encoding="utf-8", newline="") as fh:
            csv.writer(fh, lineterminator="\r\n").writerows(rows)
        changed = dest.read_bytes()
        assert len(changed) < state(ckpt)["bytes"]
        sim.counters.reset()

        with pytest.raises(InvalidRequestError, match="does not match its checkpoint"):
            await export(dm, dest, ckpt)

        assert sim.counters.total == 0
    assert dest.read_bytes() == changed


@pytest.mark.parametrize("size", ["as long", "longer"])
async def test_a_csv_whose_header_was_edited_is_refused_not_resumed_under_it(
    tmp_path: Path, connect: Callable[..., DMHubClient], size: str
) -> None:
    """A CSV whose header was edited in place while the export was down, every record as
    written (``name`` capitalised to ``Name``, same length): it read back as the checkpoint
    says, and the resume wrote its rows under the edited header, the cells of ``Name`` asked
    of rows that have ``name``: the names of the 700 customers it wrote were left blank, and
    the export said complete and verified. Refused, as a header of another length is.
    ``longer``: a page written after the checkpoint too, as a kill between the two leaves."""
    dest, ckpt = tmp_path / "customers.csv", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim, connect(sim) as dm:
        await crashed_export(dm, dest, ckpt)
        data = dest.read_bytes()
        if size == "longer":
            data += b"".join(data.splitlines(keepends=True)[-100:]).replace(b"\r\n", b"x\r\n")
        header, _, rows = data.partition(b"\r\n")
        assert b",name," in header
        changed = header.replace(b",name,", b",Name,") + b"\r\n" + rows
        await refused_as_changed(sim, dm, dest, ckpt, changed, "under another header")


def _reordered(lines: list[bytes]) -> list[bytes]:
    """The records sorted by their last byte before the newline, 30 of them dropped: a file an
    editor or a script rewrote (sorted another way, rows deleted), shorter than it was."""
    return sorted(lines, key=lambda line: line.rstrip()[-2:])[30:]


def _another_export(sim: DMHubSimulator) -> list[bytes]:
    """Another, shorter export of the same service put in the file's place: the 100 customers
    after the 300 the checkpoint counts (the first 300 deleted since, say)."""
    rows = [sim.customer(c) for c in sim.customer_ids()[300:400]]
    return [json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows]


@pytest.mark.parametrize("rewrite", ["reordered", "another export", "csv reordered"])
async def test_an_output_rewritten_shorter_is_refused_not_cut_as_a_truncated_one(
    tmp_path: Path, connect: Callable[..., DMHubClient], rewrite: str
) -> None:
    """A file rewritten while the export was down, shorter than its checkpoint says: read
    back, it was taken for a truncated file, "cut back to its last whole record" (the first
    record out of order, or the first of another export's past the checkpoint's last id),
    and resumed. The user's file was cut without a word but a log line, and the rows they
    had put after that point were gone. A truncated file holds the checkpoint's records up to
    where it was cut, then at most one torn record: one that reads on past that, a whole
    record, or records past the checkpoint's last id, is no truncation, and is refused."""
    fmt = "csv" if rewrite.startswith("csv") else "jsonl"
    dest, ckpt = tmp_path / f"customers.{fmt}", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim, connect(sim) as dm:
        await crashed_export(dm, dest, ckpt)
        lines = dest.read_bytes().splitlines(keepends=True)
        if rewrite == "another export":
            changed = b"".join(_another_export(sim))
        elif fmt == "csv":
            changed = lines[0] + b"".join(_reordered(lines[1:]))
        else:
            changed = b"".join(_reordered(lines))
        assert len(changed) < state(ckpt)["bytes"]
        await refused_as_changed(sim, dm, dest, ckpt, changed)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_an_output_saved_in_gbk_is_refused_not_cut_back_to_its_first_chinese_record(
    tmp_path: Path, connect: Callable[..., DMHubClient], fmt: str
) -> None:
    """An export opened in Excel (or an editor) and saved as GBK, Excel's CSV on Chinese
    Windows, while the export was down: read back as UTF-8 it stopped at its first record
    holding Chinese, and was taken for a file truncated there: cut back to it, the records
    before it kept as the spreadsheet rewrote them. The export writes UTF-8 only: a whole
    line that is not UTF-8 is no truncation, and the file is refused as changed."""
    dest, ckpt = tmp_path / f"customers.{fmt}", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=0, seed=14) as sim, connect(sim) as dm:
        for n in range(400):
            sim.insert_customer({"name": f"customer {n}" if n < 150 else f"客户{n}"})
        await crashed_export(dm, dest, ckpt)
        changed = dest.read_text(encoding="utf-8").encode("gbk")
        assert len(changed) < state(ckpt)["bytes"]
        await refused_as_changed(sim, dm, dest, ckpt, changed)


async def test_a_checkpoint_of_another_service_or_app_is_refused(
    tmp_path: Path, connect: Callable[..., DMHubClient]
) -> None:
    """A staging checkpoint resumed against production: 0.1 accepted it and wrote a mixed
    file marked complete. The checkpoint names the service, app, file, format and filters."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    async with (
        DMHubSimulator(customers=CUSTOMERS, seed=14) as staging,
        DMHubSimulator(customers=CUSTOMERS, seed=15) as production,
    ):
        async with connect(staging) as dm:
            await crashed_export(dm, dest, ckpt)
        before = dest.read_bytes()
        staging.counters.reset()
        async with connect(production) as dm:
            with pytest.raises(InvalidRequestError, match=r"another export \(base_url: "):
                await export(dm, dest, ckpt)
        async with DMHubClient("another-app", "its-secret", base_url=staging.url) as other_app:
            with pytest.raises(InvalidRequestError, match=f"app_id: '{staging.app_id}' in the"):
                await export(other_app, dest, ckpt)
        assert production.counters.total == staging.counters.total == 0  # refused at once
    assert dest.read_bytes() == before


@pytest.mark.parametrize(
    ("fmt", "select"),
    [
        ("jsonl", None),
        ("csv", None),
        ("jsonl", ["name", "email"]),
        ("csv", ["name", "mobile"]),
        # Fields most customers leave empty: an empty cell matched another app's empty one.
        ("jsonl", ["company"]),
        ("csv", ["campaignName", "email"]),
        # Custom fields alone: no field of the model to compare, so ids alone decided, and
        # B's token took A's file up (1,182 rows, A's and B's customers, complete).
        ("jsonl", ["attr"]),
        ("csv", ["attr"]),
    ],
)
async def test_a_token_clients_checkpoint_is_resumed_by_its_own_apps_token_alone(
    tmp_path: Path, clock: Any, fmt: str, select: list[str] | None
) -> None:
    """A client given an access token has no app id for its checkpoint to record: app B's
    token at the same host resumed app A's cut export, 99 of A's customers among B's 300
    in a file said complete and verified. B is now refused before anything is written; A's
    renewed token (a token client cannot renew its own: a long export ends by such a resume)
    resumes, the first customers of the file deleted since. With a ``select`` that leaves
    ``dateCreated`` out, the fields selected are compared: those a customer left empty tell
    nothing (B's customer of the same id had them empty too, and B resumed A's file); with
    custom fields alone (``select=["attr"]``), those are."""
    dest, ckpt = tmp_path / f"customers.{fmt}", tmp_path / "export.ckpt"
    kwargs: dict[str, Any] = {} if select is None else {"select": select}

    def client(token: str) -> DMHubClient:
        return DMHubClient(access_token=token, base_url=apps.url, clock=clock, sleep=clock.sleep)

    async with two_apps(CUSTOMERS) as apps:
        async with client(apps.token(apps.a)) as dm:
            await crashed_export(dm, dest, ckpt, **kwargs)
        before, recorded = dest.read_bytes(), ckpt.read_bytes()
        token_b = apps.token(apps.b)
        async with client(token_b) as dm:
            with pytest.raises(InvalidRequestError, match="holds customers of another app") as err:
                await export(dm, dest, ckpt, **kwargs)
        assert "export to a new file" in str(err.value)
        assert token_b not in str(err.value)
        assert (dest.read_bytes(), ckpt.read_bytes()) == (before, recorded)

        written = read_ids(dest)
        for customer_id in written[:5]:  # the first customers of the file: gone since
            apps.a.delete_customer(customer_id)
        async with client(apps.token(apps.a)) as dm:
            report = await export(dm, dest, ckpt, **kwargs)
        ids = read_ids(dest)
        assert report.complete
        assert_once_each(ids, apps.a.customer_ids())
        assert set(ids) == set(apps.a.customer_ids()) | set(written[:5])
        assert dest.read_bytes().startswith(before)


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


async def refused_to_b_resumed_by_a(
    apps: Any, clock: Any, dest: Path, ckpt: Path, select: list[str]
) -> bytes:
    """App A's token client export of ``select`` cut off, app B's token refused its resume
    (nothing written), A's renewed token resuming it complete; the cut file's bytes."""

    def client(token: str) -> DMHubClient:
        return DMHubClient(access_token=token, base_url=apps.url, clock=clock, sleep=clock.sleep)

    def files() -> tuple[bytes, bytes]:
        return read_bytes(dest), read_bytes(ckpt)

    async with client(apps.token(apps.a)) as dm:
        await crashed_export(dm, dest, ckpt, select=select)
    cut = files()
    async with client(apps.token(apps.b)) as dm:
        with pytest.raises(InvalidRequestError, match="holds customers of another app"):
            await export(dm, dest, ckpt, select=select)
    assert files() == cut

    async with client(apps.token(apps.a)) as dm:
        report = await export(dm, dest, ckpt, select=select)
    assert report.complete
    assert sorted(read_ids(dest)) == apps.a.customer_ids()
    assert read_bytes(dest).startswith(cut[0])
    return cut[0]


@pytest.mark.parametrize("none", ["empty", "absent"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("numbers", [False, True], ids=["text", "exact-numbers"])
async def test_a_token_clients_custom_fields_export_whose_first_customers_have_none_is_compared(
    tmp_path: Path, clock: Any, fmt: str, numbers: bool, none: str
) -> None:
    """An export of custom fields alone (``select=["attr"]``) whose first customers have none
    (the oldest, from before the app had any) held records read as ``select=["id"]``'s: ids
    alone decided, nothing further in the file was looked at, and app B's token took A's
    cut file up (A's and B's customers mixed, complete); the CSV's later custom fields, in
    its ``attr`` column (none were among its first page's columns), told nothing either.
    Numbers a float would round are read back from that column exactly, as the service's
    answer is: read as floats, none matched, and A's own resume was refused. So did a JSON
    line of a customer sent without ``attr`` at all (``absent``: as some live answers are,
    docs/contract.md), where one sent ``"attr": {}`` was compared."""
    dest, ckpt = tmp_path / f"customers.{fmt}", tmp_path / "export.ckpt"

    async with two_apps(CUSTOMERS) as apps:
        for sim, member in ((apps.a, "A"), (apps.b, "B")):
            for n, customer_id in enumerate(sim.customer_ids()):
                row = sim.store.update(customer_id, {"attr": None}, clear=True)
                if n >= PAGE:  # the first page's customers have no custom field
                    value: Any = f"{member}{customer_id}"
                    if numbers:  # A's and B's apart, each of more digits than a float's
                        value = Decimal(f"{customer_id}.{ord(member)}000000000000000001")
                    fields = {"attr": {"member": value}}
                    sim.store.update(customer_id, fields, clear=True)
                elif none == "absent":
                    del row["attr"]  # sent without the key
        await refused_to_b_resumed_by_a(apps, clock, dest, ckpt, ["attr"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_a_token_clients_export_of_custom_fields_and_fields_left_empty_is_compared_by_them(
    tmp_path: Path, clock: Any, fmt: str
) -> None:
    """An export selecting custom fields beside a field of the model every customer left
    empty (``select=["company", "attr"]``) is told by its custom fields, as one of custom
    fields alone: a check that went to them only when no field of the model was selected
    compared the empty ``company`` alone, which tells nothing, then ids alone, and app B's
    token took A's cut file up."""
    dest, ckpt = tmp_path / f"customers.{fmt}", tmp_path / "export.ckpt"
    select = ["company", "attr"]

    async with two_apps(CUSTOMERS) as apps:
        for sim, member in ((apps.a, "A"), (apps.b, "B")):
            for customer_id in sim.customer_ids():
                sim.store.update(customer_id, {"company": None}, clear=True)
                fields = {"attr": {"member": f"{member}{customer_id}"}}
                sim.store.update(customer_id, fields, clear=True)
        await refused_to_b_resumed_by_a(apps, clock, dest, ckpt, select)


async def test_a_token_clients_export_whose_first_customers_came_without_a_selected_field(
    tmp_path: Path, clock: Any
) -> None:
    """An export of ``select=["displayName"]`` whose first customers were sent without the
    field at all (some live answers lack ``displayName``: docs/contract.md) held JSON lines of
    their ids alone, read as ``select=["id"]``'s: their ids decided, and app B's token took
    A's cut file up (A's and B's customers mixed, complete). Such a field is one left empty:
    the customers further in the file are compared."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    select = ["displayName"]

    async with two_apps(CUSTOMERS) as apps:
        for sim in (apps.a, apps.b):
            for customer_id in sim.customer_ids()[:PAGE]:
                del sim.store.update(customer_id, {}, clear=True)["displayName"]
        before = await refused_to_b_resumed_by_a(apps, clock, dest, ckpt, select)
        assert before.startswith(b'{"id":%d}\n' % apps.a.customer_ids()[0])


async def test_a_token_clients_custom_fields_resume_is_refused_by_answers_lacking_attr(
    tmp_path: Path, clock: Any
) -> None:
    """Another app's customers whose answers lack ``attr`` altogether (as some live answers
    did: docs/contract.md, "More live behaviour") are no match of an export of custom fields,
    and the resume is refused as another app's, not a raw error reading their custom fields."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"

    def client(token: str) -> DMHubClient:
        return DMHubClient(access_token=token, base_url=apps.url, clock=clock, sleep=clock.sleep)

    async with two_apps(CUSTOMERS) as apps:
        async with client(apps.token(apps.a)) as dm:
            await crashed_export(dm, dest, ckpt, select=["attr"])
        before, recorded = dest.read_bytes(), ckpt.read_bytes()
        for customer_id in apps.b.customer_ids():
            # The stored row, as the simulator answers with it: its attr key gone.
            apps.b.store.update(customer_id, {}, clear=False).pop("attr", None)
        async with client(apps.token(apps.b)) as dm:
            with pytest.raises(InvalidRequestError, match="holds customers of another app"):
                await export(dm, dest, ckpt, select=["attr"])
        assert (dest.read_bytes(), ckpt.read_bytes()) == (before, recorded)


@pytest.mark.parametrize(
    ("select", "said"),
    [
        (None, "with the same dateCreated"),
        (["name", "mobile"], "with the same fields"),
        # Ids alone decide: no dateCreated (nor any field) was compared.
        (["id"], "by the same id"),
        (["company"], "by the same id"),  # every customer looked up left it empty
    ],
)
async def test_a_token_clients_refused_resume_says_what_it_compared(
    tmp_path: Path, clock: Any, select: list[str] | None, said: str
) -> None:
    """A token client's resume refused (every customer of the file deleted since) says what
    it compared the customers looked up by: with ``select=["id"]`` (or selected fields every
    one left empty) their ids alone, where it said "with the same dateCreated", a field the
    file does not hold and no look-up asked for."""
    dest, ckpt = tmp_path / "customers.csv", tmp_path / "export.ckpt"
    kwargs: dict[str, Any] = {} if select is None else {"select": select}
    async with DMHubSimulator(customers=0, seed=14) as sim:
        for n in range(CUSTOMERS):
            sim.insert_customer({"name": f"customer {n}", "mobile": f"1380000{n:04d}"})

        def client() -> DMHubClient:
            token = sim.tokens.issue()
            return DMHubClient(access_token=token, base_url=sim.url, clock=clock, sleep=clock.sleep)

        async with client() as dm:
            await crashed_export(dm, dest, ckpt, **kwargs)
        for customer_id in read_ids(dest):
            sim.delete_customer(customer_id)
        async with client() as dm:
            with pytest.raises(InvalidRequestError, match="holds customers of another app") as err:
                await export(dm, dest, ckpt, **kwargs)
    message = str(err.value)
    assert said in message
    assert ("dateCreated" in message) == (select is None)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_a_token_clients_resume_goes_on_while_one_customer_is_left_as_written(
    tmp_path: Path, clock: Any, fmt: str
) -> None:
    """The owner's check of a ``select`` without ``dateCreated`` passes while one customer it
    looks up is as written: here the first two were renamed since, the third left as it was
    (but its ``lastUpdated`` and ``dateJoin``, which the service moves by itself on any
    change), every later one deleted. A check that wanted each customer found alike, or read
    one customer of the answer, or compared the fields the service moves, refused app A's
    own resume as another app's."""
    dest, ckpt = tmp_path / f"customers.{fmt}", tmp_path / "export.ckpt"
    select = ["name", "lastUpdated", "dateJoin"]

    def client(token: str) -> DMHubClient:
        return DMHubClient(access_token=token, base_url=apps.url, clock=clock, sleep=clock.sleep)

    async with two_apps(CUSTOMERS) as apps:
        async with client(apps.token(apps.a)) as dm:
            await crashed_export(dm, dest, ckpt, select=select)
        before = dest.read_bytes()
        written = read_ids(dest)
        # Among the first the check looks up: one with a dateJoin, for the service to move.
        kept = next(i for i in written[2:5] if apps.a.customer(i)["dateJoin"] is not None)
        as_written = apps.a.customer(kept)
        for customer_id in written[:2]:
            apps.a.store.update(customer_id, {"name": "renamed since"}, clear=False)
        apps.a.store.update(kept, {"remark": "its name kept"}, clear=False)
        for customer_id in written[2:]:
            if customer_id != kept:
                apps.a.delete_customer(customer_id)
        now = apps.a.customer(kept)
        assert now["name"] == as_written["name"]
        assert now["dateJoin"] != as_written["dateJoin"]
        assert now["lastUpdated"] != as_written["lastUpdated"]

        async with client(apps.token(apps.a)) as dm:
            report = await export(dm, dest, ckpt, select=select)
        ids = read_ids(dest)
        assert report.complete
        assert_once_each(ids, apps.a.customer_ids())
        assert set(ids) == set(apps.a.customer_ids()) | set(written)
        assert dest.read_bytes().startswith(before)


async def test_a_token_clients_resume_of_fields_every_customer_left_empty_goes_by_ids(
    tmp_path: Path, clock: Any
) -> None:
    """An export whose ``select`` names fields every customer it looked up left empty has
    only its ids to be told by (as ``select=["id"]``): app A's own resume was refused as
    another app's when none of them tells."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"

    def client(token: str) -> DMHubClient:
        return DMHubClient(access_token=token, base_url=apps.url, clock=clock, sleep=clock.sleep)

    async with two_apps(CUSTOMERS) as apps:
        for customer_id in apps.a.customer_ids():
            apps.a.store.update(customer_id, {"company": None}, clear=True)
        async with client(apps.token(apps.a)) as dm:
            await crashed_export(dm, dest, ckpt, select=["company"])
            report = await export(dm, dest, ckpt, select=["company"])
        ids = read_ids(dest)
        assert report.complete
        assert sorted(ids) == apps.a.customer_ids()


class Lookups:
    """The id lists ``sim`` was asked for (``idList``) since :meth:`start`, in order; None for
    a request of its customers without one."""

    def __init__(self, sim: DMHubSimulator) -> None:
        self.all: list[list[int] | None] = []
        self.started = False
        sim.on_request(self._note)

    def start(self) -> None:
        self.started = True

    def _note(self, request: web.Request) -> None:
        if self.started and request.path == "/v1/customers":
            ids = request.query.get("idList")
            self.all.append(None if ids is None else [int(i) for i in ids.split(",")])

    def first(self) -> list[list[int] | None]:
        """Those asked for before the first request without an idList."""
        return self.all[: self.all.index(None)] if None in self.all else self.all


def large_attr_client(sim: DMHubSimulator, clock: Any) -> DMHubClient:
    """A client of an access token of ``sim`` reading answers of 100,000 bytes at most."""
    return DMHubClient(
        access_token=sim.tokens.issue(),
        base_url=sim.url,
        clock=clock,
        sleep=clock.sleep,
        max_response_size=100_000,
    )


#: A token client's export of large custom fields: pages of 2 (50 KB) under its 100,000 bytes.
LARGE_ATTR: dict[str, Any] = {"select": ["attr"], "page_size": 2}


async def cut_export_of_large_custom_fields(
    sim: DMHubSimulator, clock: Any, dest: Path, ckpt: Path
) -> list[int]:
    """40 customers of 25 KB custom fields put in ``sim``, and a token client's export of
    them cut after 3 pages; the ids written."""
    for n in range(40):
        sim.insert_customer({"name": f"customer {n}", "attr": {"notes": f"{n}" + "x" * 25_000}})
    async with large_attr_client(sim, clock) as dm:
        with pytest.raises(Crash):
            await export(dm, dest, ckpt, on_progress=crash_after(3), **LARGE_ATTR)
    return read_ids(dest)


@pytest.mark.parametrize("changed", [0, 2], ids=["first-half-holds-one", "second-half"])
async def test_a_token_clients_owner_look_up_too_large_is_asked_in_halves_to_the_first_match(
    tmp_path: Path, clock: Any, changed: int
) -> None:
    """The owner's look-up of a token client's resume asks for the 5 first customers of the
    file in one request: with large custom fields that answer is over the client's
    ``max_response_size``, and it is asked again in halves, the first first, stopping at the
    first half holding a customer as written (the first customers changed since: the second
    half). The resume then goes on and completes."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=0, seed=14) as sim:
        looked_up = Lookups(sim)
        written = await cut_export_of_large_custom_fields(sim, clock, dest, ckpt)
        for customer_id in written[:changed]:
            changed_since = {"attr": {"notes": "changed since" + "x" * 25_000}}  # as large
            sim.store.update(customer_id, changed_since, clear=False)
        looked_up.start()
        async with large_attr_client(sim, clock) as dm:
            report = await export(dm, dest, ckpt, **LARGE_ATTR)
        assert report.complete
        assert sorted(read_ids(dest)) == sim.customer_ids()

    halves = [written[:2], written[2:5]]
    assert looked_up.first() == [written[:5], *halves[: 1 + (changed > 0)]]


async def test_a_token_clients_owner_look_up_of_one_customer_too_large_raises_it(
    tmp_path: Path, clock: Any
) -> None:
    """A customer the owner's look-up asks for grown since over the client's
    ``max_response_size``: its answer is too large however halved, and the resume raises
    ResponseTooLargeError naming it after three requests (the five, two, then it alone),
    nothing written: no loop, nor a refusal as another app's customers. "The answer is
    larger than max_response_size" said neither which customer nor that no smaller request
    would hold it."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=0, seed=14) as sim:
        looked_up = Lookups(sim)
        written = await cut_export_of_large_custom_fields(sim, clock, dest, ckpt)
        before = (dest.read_bytes(), ckpt.read_bytes())
        sim.store.update(written[0], {"attr": {"notes": "x" * 150_000}}, clear=False)
        looked_up.start()
        async with large_attr_client(sim, clock) as dm:
            with pytest.raises(ResponseTooLargeError, match="max_response_size") as err:
                await export(dm, dest, ckpt, **LARGE_ATTR)
        assert (dest.read_bytes(), ckpt.read_bytes()) == before
    assert f"(customer {written[0]} alone, asked for by its id)" in str(err.value)

    assert looked_up.all == [written[:5], written[:2], written[:1]]


async def test_a_token_clients_owner_look_up_in_halves_asks_each_for_its_own_fields(
    tmp_path: Path, clock: Any
) -> None:
    """An export of ``name`` and ``attr``: its first 2 customers written with a name (looked
    up by it), the next ones with none (looked up by their custom fields). The 5 looked up at
    once are over the client's ``max_response_size`` and asked again in halves: the first
    half, customers told by their name, asks for their names (as before 4e14f0d), not for the
    custom fields of the half after it too; its first customer's custom fields grown over the
    cap since, that half failed the resume with ResponseTooLargeError, where its name, as
    written, tells it."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    select: dict[str, Any] = {"select": ["name", "attr"], "page_size": 2}
    async with DMHubSimulator(customers=0, seed=14) as sim:
        for n in range(40):
            named = {"name": f"customer {n}"} if n < 2 else {}
            sim.insert_customer({**named, "attr": {"notes": f"{n}" + "x" * 25_000}})
        async with large_attr_client(sim, clock) as dm:
            with pytest.raises(Crash):
                await export(dm, dest, ckpt, on_progress=crash_after(3), **select)
        written = read_ids(dest)
        grown = {"attr": {"notes": "grown since" + "x" * 120_000}}  # over the cap alone
        sim.store.update(written[0], grown, clear=False)
        selected: list[str | None] = []

        def note(request: web.Request) -> None:
            if request.path == "/v1/customers" and "idList" in request.query:
                selected.append(request.query.get("select"))

        sim.on_request(note)
        async with large_attr_client(sim, clock) as dm:
            report = await export(dm, dest, ckpt, **select)
        assert report.complete
        assert sorted(read_ids(dest)) == sim.customer_ids()

    assert selected[:2] == ["id,attr,name", "id,name"]


# -- two runs, and unsafe files -----------------------------------------------------------------


async def test_a_second_export_to_the_same_file_is_refused_at_once(
    tmp_path: Path, connect: Callable[..., DMHubClient]
) -> None:
    """0.1 let two runs share the work file; one crashed, the other reported complete over a
    file with 9 corrupt lines. The second now refuses at once, naming the first."""
    dest = tmp_path / "customers.jsonl"
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim:
        release = asyncio.Event()
        at_service = asyncio.Event()

        async def hold(request: web.Request) -> None:
            if request.path == "/v1/customers" and request.query.get("page") == "2":
                at_service.set()
                await release.wait()

        sim.on_request(hold)
        async with connect(sim) as dm:
            first = asyncio.ensure_future(export(dm, dest, tmp_path / "a.ckpt", concurrency=1))
            await asyncio.wait_for(at_service.wait(), 10)
            holder = f"in use by another export (pid {os.getpid()} on {socket.gethostname()})"
            for ckpt in (tmp_path / "b.ckpt", None):
                with pytest.raises(InvalidRequestError, match=re.escape(holder)):
                    await export(dm, dest, ckpt)
            release.set()
            report = await asyncio.wait_for(first, 30)
        expected = sim.customer_ids()
    assert read_ids(dest) == expected
    assert report.complete
    assert files_in(tmp_path) == [dest.name]  # no lock, work file or checkpoint left


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device"])
async def test_a_destination_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, connect: Callable[..., DMHubClient], kind: str
) -> None:
    """0.1 replaced a symlink, a FIFO and, run as root, /dev/full with a regular file."""
    victim = tmp_path / "victim.jsonl"
    victim.write_text("keep me\n", encoding="utf-8")
    dest = tmp_path / "out.jsonl"
    if kind == "symlink":
        dest.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(dest)
    else:
        # A device of its own (the null device's numbers): never a real /dev node, which
        # a regressed export would replace for the whole machine.
        try:
            os.mknod(dest, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    async with DMHubSimulator(customers=10, seed=14) as sim, connect(sim) as dm:
        for ckpt in (None, tmp_path / "export.ckpt"):
            with pytest.raises(InvalidRequestError, match=r"not a regular file|symbolic link"):
                await export(dm, dest, ckpt)
        assert sim.counters.total == 0
    assert victim.read_text(encoding="utf-8") == "keep me\n"
    assert not stat.S_ISREG(os.lstat(dest).st_mode)  # still the link, the FIFO or the device


async def test_temporary_files_follow_no_planted_link(
    tmp_path: Path, connect: Callable[..., DMHubClient]
) -> None:
    """0.1 wrote the checkpoint through ``NAME.tmp`` and the output through ``.NAME.PID.part``:
    links planted at those names redirected its writes to any file the user can write."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n", encoding="utf-8")
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    (tmp_path / "export.ckpt.tmp").symlink_to(victim)
    (tmp_path / f".customers.jsonl.{os.getpid()}.part").symlink_to(victim)
    async with DMHubSimulator(customers=300, seed=14) as sim:
        async with connect(sim) as dm:
            await export(dm, dest, ckpt)
            await export(dm, dest, None)
        expected = sim.customer_ids()
    assert victim.read_text(encoding="utf-8") == "keep me\n"
    assert read_ids(dest) == expected
    assert not dest.is_symlink()


async def test_the_data_is_on_disk_before_the_checkpoint_that_points_past_it(
    tmp_path: Path, connect: Callable[..., DMHubClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    synced: list[int] = []  # the output's length at each fsync of it
    order: list[tuple[int, int]] = []  # (synced length, checkpoint bytes) at each checkpoint
    fsync, write_checkpoint = os.fsync, export_output.write_checkpoint

    def recording_fsync(fd: int) -> None:
        fsync(fd)
        synced.append(os.fstat(fd).st_size)

    def recording_checkpoint(path: Path, checkpoint: Any, **options: Any) -> None:
        order.append((synced[-1] if synced else -1, checkpoint.bytes))
        write_checkpoint(path, checkpoint, **options)

    monkeypatch.setattr(export_output.os, "fsync", recording_fsync)
    monkeypatch.setattr(export_output, "write_checkpoint", recording_checkpoint)
    async with DMHubSimulator(customers=500, seed=14) as sim, connect(sim) as dm:
        await export(dm, dest, ckpt)
    assert len(order) == 5
    assert all(on_disk >= covered > 0 for on_disk, covered in order)


# -- exits that cannot be resumed, and streams --------------------------------------------------


@pytest.mark.parametrize("with_checkpoint", [False, True], ids=["no checkpoint", "checkpoint"])
async def test_a_cancelled_export_leaves_no_file_or_a_resumable_one(
    tmp_path: Path, connect: Callable[..., DMHubClient], with_checkpoint: bool
) -> None:
    """Cancelled mid-page (Ctrl-C, SIGTERM handled as Ctrl-C): without a checkpoint nothing is
    left; with one, a checkpoint and an output of exactly the bytes it covers."""
    dest = tmp_path / "customers.jsonl"
    ckpt = tmp_path / "export.ckpt" if with_checkpoint else None
    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim:
        requests = 0
        task: asyncio.Future[ExportReport] | None = None

        def cancel_at_page_5(request: web.Request) -> None:
            nonlocal requests
            requests += request.path == "/v1/customers"
            if requests == 5 and task is not None:
                task.cancel()

        sim.on_request(cancel_at_page_5)
        async with connect(sim) as dm:
            task = asyncio.ensure_future(export(dm, dest, ckpt, concurrency=1))
            with pytest.raises(asyncio.CancelledError):
                await task
            if ckpt is None:
                assert files_in(tmp_path) == []
                return
            recorded = state(ckpt)
            assert files_in(tmp_path) == sorted([ckpt.name, dest.name])
            assert dest.stat().st_size == recorded["bytes"]
            assert recorded["exported"] == 4 * PAGE
            report = await export(dm, dest, ckpt)
        expected = sim.customer_ids()
    assert read_ids(dest) == expected
    assert report.complete


async def test_an_export_to_a_binary_stream(
    tmp_path: Path, connect: Callable[..., DMHubClient]
) -> None:
    """``dest`` may be a binary stream (the CLI's ``--out -``): written as rows come, and not
    resumable, so a checkpoint is refused, as is a text stream."""
    import io

    stream = io.BytesIO()
    async with DMHubSimulator(customers=250, seed=14) as sim:
        async with connect(sim) as dm:
            report = await export_customers(dm, stream, progress=False)
            with pytest.raises(InvalidRequestError, match="cannot be resumed"):
                await export_customers(dm, io.BytesIO(), checkpoint=tmp_path / "c", progress=False)
            with pytest.raises(InvalidRequestError, match="binary stream"):
                await export_customers(dm, io.StringIO(), progress=False)  # type: ignore[arg-type]
        expected = sim.customer_ids()
    assert [json.loads(line)["id"] for line in stream.getvalue().splitlines()] == expected
    assert report.exported == 250
    assert report.complete
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("with_checkpoint", [False, True], ids=["no checkpoint", "checkpoint"])
async def test_the_work_files_of_killed_exports_are_swept(
    tmp_path: Path, connect: Callable[..., DMHubClient], with_checkpoint: bool
) -> None:
    """What `kill -9` leaves (a hidden `.part` of an export without a checkpoint, a `.tmp` of a
    checkpoint being written) piled up, one more a kill; the next export to the same files
    removes them, and nothing else."""
    dest = tmp_path / "customers.jsonl"
    ckpt = tmp_path / "export.ckpt" if with_checkpoint else None
    left = [f".{dest.name}.k1ll3d_1.part", f".{dest.name}.a2b4c6d8.part"]
    if ckpt is not None:
        left.append(f".{ckpt.name}.zz99yy88.tmp")
    kept = [f".{dest.name}.notmine.part", ".other.jsonl.abcdefgh.part", "notes.txt"]
    for name in (*left, *kept):
        (tmp_path / name).write_bytes(b"{}\n")

    async with DMHubSimulator(customers=CUSTOMERS, seed=14) as sim, connect(sim) as dm:
        report = await export(dm, dest, ckpt)

    assert report.complete
    assert files_in(tmp_path) == sorted([dest.name, *kept])


@pytest.mark.parametrize("seed", [324, 326])
async def test_verify_always_never_says_complete_with_a_customer_missing_under_churn(
    tmp_path: Path, connect: Callable[..., DMHubClient], seed: int
) -> None:
    """Five sign-ups and five deletes before every page read, the final check's included:
    the count stays put, and one id walk could skip survivors yet see as many customers as
    counted, so the check passed (`complete` and `verified`) with 2 (seed 324) and 1 (seed
    326) survivors missing. Two walks in a row must now see the same customers."""
    rng = random.Random(seed)
    dest = tmp_path / "customers.jsonl"
    async with DMHubSimulator(customers=3000, seed=seed) as sim:
        start = set(sim.customer_ids())

        def churn(request: web.Request) -> None:
            if request.method == "GET" and request.path == "/v1/customers":
                for customer_id in rng.sample(sim.customer_ids(), 5):
                    sim.delete_customer(customer_id)
                sim.add_customers(5)

        sim.on_request(churn)
        async with connect(sim) as dm:
            report = await export_customers(dm, dest, progress=False, verify="always")
        sim.clear_hooks()
        survivors = start & set(sim.customer_ids())

    missing = survivors - set(read_ids(dest))
    assert not (report.complete and missing), (report, sorted(missing))


async def test_an_export_of_a_long_id_list_resumes_after_any_number_of_stops(
    tmp_path: Path, connect: Callable[..., DMHubClient]
) -> None:
    """3,000 ids go in batches of ~470, each owning a page number per id; a resume's search
    for its start page probed numbers no page holds: the batch's walk started at page 470 of
    5 and was refused as "far past the totals" (then, stepping back, as making no progress),
    and every rerun failed alike: the resume was lost."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    async with DMHubSimulator(customers=20_000, seed=14) as sim:
        ids = random.Random(1).sample(sim.customer_ids(), 3000)
        async with connect(sim) as dm:
            for _ in range(3):  # stopped three times, nothing changing in between
                with pytest.raises(Crash):
                    await export(
                        dm, dest, ckpt, id_list=ids, concurrency=1, on_progress=crash_after(4)
                    )
            report = await export(dm, dest, ckpt, id_list=ids, concurrency=1)

    assert report.resumed
    assert report.complete
    assert sorted(read_ids(dest)) == sorted(ids)
