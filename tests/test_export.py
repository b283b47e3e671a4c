"""export_customers against the in-process simulator: what lands in the file, and the report.

Every test reads the output back with ``json`` or ``csv`` and compares it with the simulator's
own table: the ids that arrive, how often, and their field values.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import functools
import gc
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import attrs
import pytest
from _helpers import (
    IdNeedingTheLoop,
    export_under_unenterable,
    lock_files_cannot_go,
    loop_runs_meanwhile,
    temporary_files_cannot_be_made,
    umask_watched,
)

from dmhub_async import (
    APIConnectionError,
    DMHubClient,
    InvalidRequestError,
    MemoryTokenStore,
    ResponseTooLargeError,
    ServerError,
)
from dmhub_async.export import (
    ExportProgress,
    ExportReport,
    _output,
    _writers,
    export_customers,
)
from dmhub_async.testing import DMHubSimulator

CUSTOMERS = 600
TRICKY_NAME = '王, "小D"\n第二行'  # a comma, quotes and a newline: RFC 4180 must quote it


@pytest.fixture
async def sim() -> AsyncIterator[DMHubSimulator]:
    async with DMHubSimulator(customers=CUSTOMERS, seed=3) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: DMHubSimulator) -> AsyncIterator[DMHubClient]:
    async with DMHubClient(
        sim.app_id, sim.secret, base_url=sim.url, max_retries=0, token_store=MemoryTokenStore()
    ) as dm:
        yield dm


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def ids_of(rows: list[dict[str, Any]]) -> list[int]:
    return [int(row["id"]) for row in rows]


def assert_once_each(ids: list[int], expected: list[int] | set[int]) -> None:
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    assert repeated == []
    assert set(ids) == set(expected)


# -- formats ----------------------------------------------------------------------------------


async def test_jsonl_holds_every_customer_once_as_the_service_sent_it(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    dest = tmp_path / "customers.jsonl"

    report = await export_customers(client, dest, page_size=50, concurrency=4, progress=False)

    rows = read_jsonl(dest)
    assert ids_of(rows) == sim.customer_ids()  # id-ascending, each once
    assert len(rows) == report.exported == sim.customers_count() == CUSTOMERS
    assert all(row == sim.customer(row["id"]) for row in rows)  # nothing lost or reformatted
    raw = dest.read_text(encoding="utf-8")
    assert "中国" in raw  # Chinese as is, not \u escapes
    assert "\\u" not in raw
    assert (report.count_before, report.count_after, report.duplicates) == (CUSTOMERS, CUSTOMERS, 0)
    assert report.pages == CUSTOMERS // 50
    assert report.complete
    assert report.format == "jsonl"
    assert files_in(tmp_path) == [dest.name]  # no temporary file left behind


async def test_csv_has_attr_columns_and_rfc4180_quoting(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # Lowest id, so it is on the first page, which fixes the attr.* header.
    sim.insert_customer(
        {"name": TRICKY_NAME, "remark": "a,b", "attr": {"attr1": '引号"', "attr9": "x\r\ny"}},
        customer_id=1,
    )
    # Highest id: an attr key first seen after the header was written goes to the attr column.
    late = sim.insert_customer({"name": "晚到", "attr": {"late": "值"}})
    dest = tmp_path / "customers.csv"

    report = await export_customers(client, dest, progress=False)  # format from the extension

    assert report.format == "csv"
    rows = read_csv(dest)
    assert_once_each(ids_of(rows), sim.customer_ids())
    assert len(rows) == report.exported == CUSTOMERS + 2
    header = list(rows[0])
    assert header[0] == "id"
    assert {"attr.attr1", "attr.attr2", "attr.attr9", "name", "dateCreated"} <= set(header)
    first = rows[0]
    assert first["id"] == "1"
    assert first["name"] == TRICKY_NAME
    assert first["remark"] == "a,b"
    assert first["attr.attr1"] == '引号"'
    assert first["attr.attr9"] == "x\r\ny"
    by_id = {int(r["id"]): r for r in rows}
    assert json.loads(by_id[late["id"]]["attr"]) == {"late": "值"}
    some = sim.customer_ids()[5]
    expected = sim.customer(some)
    assert expected is not None
    assert by_id[some]["name"] == expected["name"]
    assert by_id[some]["attr.attr1"] == (expected["attr"]["attr1"] or "")
    # The raw bytes: the quoted field doubles its quotes and keeps its newline inside quotes.
    raw = dest.read_bytes().decode("utf-8")
    assert '"王, ""小D""\n第二行"' in raw


@pytest.mark.parametrize(
    ("select", "columns"),
    [
        (["name", "stage"], ["id", "name", "stage"]),
        (["mobile", "attr"], ["id", "mobile", "attr.attr1", "attr.attr2", "attr"]),
        # id named later: it still comes first, where a resume reads it back
        (["name", "id", "stage"], ["id", "name", "stage"]),
    ],
    ids=["fields", "fields and attr", "id named later"],
)
async def test_a_csv_with_select_has_only_the_selected_columns(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    select: list[str],
    columns: list[str],
) -> None:
    dest = tmp_path / "some.csv"

    await export_customers(client, dest, select=select, stage="lead", progress=False)

    rows = read_csv(dest)
    assert rows
    assert all(list(row) == columns for row in rows)
    expected = [i for i in sim.customer_ids() if (sim.customer(i) or {})["stage"] == "lead"]
    assert ids_of(rows) == expected
    first = sim.customer(expected[0]) or {}
    assert rows[0][columns[1]] == (first[columns[1]] or "")


async def test_utf8_sig_starts_a_csv_with_one_byte_order_mark_even_after_a_resume(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    dest, ckpt = tmp_path / "excel.csv", tmp_path / "export.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client,
            dest,
            encoding="utf-8-sig",
            checkpoint=ckpt,
            page_size=50,
            progress=False,
            on_progress=crash_after(2),
        )

    report = await export_customers(
        client, dest, encoding="utf-8-sig", checkpoint=ckpt, page_size=50, progress=False
    )

    raw = dest.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfid,displayName,")
    assert raw.count(b"\xef\xbb\xbf") == 1
    with dest.open(newline="", encoding="utf-8-sig") as fh:
        assert ids_of(list(csv.DictReader(fh))) == sim.customer_ids()
    assert report.resumed
    assert report.complete
    with pytest.raises(InvalidRequestError, match="utf-8-sig"):
        await export_customers(client, tmp_path / "x.jsonl", encoding="utf-8-sig", progress=False)
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, progress=False, on_progress=crash_after(1)
        )
    with pytest.raises(InvalidRequestError, match="encoding: 'utf-8' in the checkpoint"):
        await export_customers(client, dest, encoding="utf-8-sig", checkpoint=ckpt, progress=False)


async def test_a_csv_with_id_selected_later_resumes(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # Its header was "name,id": the resume read ids from the first column, found none, and
    # refused the file as changed, losing the work done (the CLI says "rerun to resume").
    dest, ckpt = tmp_path / "some.csv", tmp_path / "export.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client,
            dest,
            select=["name", "id"],
            checkpoint=ckpt,
            page_size=50,
            progress=False,
            on_progress=crash_after(2),
        )

    report = await export_customers(
        client, dest, select=["name", "id"], checkpoint=ckpt, page_size=50, progress=False
    )

    assert report.resumed
    assert report.complete
    assert ids_of(read_csv(dest)) == sim.customer_ids()


async def test_an_empty_csv_export_still_has_its_header(
    client: DMHubClient, tmp_path: Path
) -> None:
    dest = tmp_path / "none.csv"

    report = await export_customers(client, dest, mobile="10000000000", progress=False)

    assert report.exported == 0
    assert report.complete
    lines = dest.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("id,")


# -- filters ----------------------------------------------------------------------------------


def _created(row: dict[str, Any]) -> str:
    return str(row["dateCreated"])


FILTER_CASES: list[tuple[str, dict[str, Any], Any]] = [
    ("stage", {"stage": "vip"}, lambda r: r["stage"] == "vip"),
    ("empty stage", {"stage": ""}, lambda r: not r["stage"]),
    ("source", {"source": "wechat"}, lambda r: r["source"] == "wechat"),
    ("gender", {"gender": 2}, lambda r: (r["gender"] or 0) == 2),
    ("gender unknown", {"gender": 0}, lambda r: not r["gender"]),
    (
        "created bounds",
        {
            "date_created_from": "2016-01-01T02:00:00Z",
            "date_created_to": datetime(2016, 1, 1, 5, 30, tzinfo=timezone.utc),
        },
        lambda r: "2016-01-01T02:00:00Z" <= _created(r) <= "2016-01-01T05:30:00Z",
    ),
    (
        "updated from, with stage",
        {"last_updated_from": "2016-01-01T06:00:00Z", "stage": "lead"},
        lambda r: r["lastUpdated"] >= "2016-01-01T06:00:00Z" and r["stage"] == "lead",
    ),
    ("updated to", {"last_updated_to": "2016-01-01T03:00:00Z"}, None),
]


@pytest.mark.parametrize(
    ("filters", "matches"), [c[1:] for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES]
)
async def test_filters_give_exactly_the_matching_customers(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    filters: dict[str, Any],
    matches: Any,
) -> None:
    if matches is None:
        matches = lambda r: r["lastUpdated"] <= "2016-01-01T03:00:00Z"  # noqa: E731
    everyone = [sim.customer(i) for i in sim.customer_ids()]
    expected = [r["id"] for r in everyone if r is not None and matches(r)]
    assert 0 < len(expected) < CUSTOMERS  # the filter really selects
    dest = tmp_path / "filtered.jsonl"

    report = await export_customers(client, dest, progress=False, page_size=40, **filters)

    assert ids_of(read_jsonl(dest)) == expected
    assert report.exported == report.count_before == report.count_after == len(expected)
    assert report.complete


async def test_select_exports_only_the_chosen_fields(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    dest = tmp_path / "names.jsonl"

    await export_customers(client, dest, select=["name", "stage"], stage="lead", progress=False)

    rows = read_jsonl(dest)
    assert rows
    assert all(set(row) == {"id", "name", "stage"} for row in rows)
    assert all(row["stage"] == "lead" for row in rows)
    expected = [i for i in sim.customer_ids() if (sim.customer(i) or {})["stage"] == "lead"]
    assert ids_of(rows) == expected


async def test_a_sort_given_as_none_is_not_given(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    """None is "not given", as for every filter and in list(): the export refused
    ``sort_order=None`` as a sort it does not take."""
    dest = tmp_path / "customers.jsonl"
    report = await export_customers(client, dest, sort_by=None, sort_order=None, progress=False)
    assert ids_of(read_jsonl(dest)) == sim.customer_ids()
    assert report.complete


async def test_a_bad_filter_is_refused_before_anything_is_written(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    sim.counters.reset()
    with pytest.raises(InvalidRequestError, match="date_created_from"):
        await export_customers(
            client, tmp_path / "x.jsonl", date_created_from="notadate", progress=False
        )
    with pytest.raises(InvalidRequestError, match="sort"):
        await export_customers(client, tmp_path / "x.jsonl", sort_by="name", progress=False)
    with pytest.raises(InvalidRequestError, match="cannot write"):
        await export_customers(client, tmp_path / "no" / "x.jsonl", progress=False)
    # Written as plain JSONL under a name gunzip (and any reader of such files) refused.
    for name in ("x.jsonl.gz", "x.csv.GZ", "x.zst"):
        with pytest.raises(InvalidRequestError, match="names a compressed file"):
            await export_customers(client, tmp_path / name, format="csv", progress=False)
    assert files_in(tmp_path) == []
    assert sim.counters.routes["GET /v1/customers"] == 0


@pytest.mark.parametrize(
    "name",
    [
        "x.jsonl.tgz",
        "x.jsonl.zstd",
        "x.csv.tbz2",
        "x.jsonl.txz",
        "x.jsonl.tzst",
        "x.jsonl.lzma",
        "x.jsonl.lz",
        "x.csv.Z",
        "x.jsonl.TGZ",
    ],
)
async def test_every_common_compressed_name_is_refused_before_any_request(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, name: str
) -> None:
    # .gz, .zst and .xz were refused, but .tgz, .zstd and the like were written as plain text
    # under a name that tar, zstd and every reader of such files then refused.
    with pytest.raises(InvalidRequestError, match="names a compressed file"):
        await export_customers(client, tmp_path / name, progress=False)
    assert files_in(tmp_path) == []
    assert sim.counters.total == 0


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("x.tar", "names a tar archive"),
        ("x.jsonl.TAR", "names a tar archive"),
        ("x.csv ", "ends in a space"),
        ("x.jsonl\n", "ends in a line break"),
        ("x.csv\t", "ends in a tab"),
    ],
)
async def test_a_tar_name_or_one_ending_in_a_space_is_refused_before_any_request(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, name: str, words: str
) -> None:
    # customers.tar was written as plain JSONL, which tar then refused; "customers.csv " (a
    # name pasted with its space, or `--out "$(cat name)"` with its newline) was written as
    # JSONL, the extension being ".csv ", under a name no one could see was not the CSV.
    with pytest.raises(InvalidRequestError, match=words) as raised:
        await export_customers(client, tmp_path / name, progress=False)
    assert repr(name) in str(raised.value) or name in str(raised.value)
    assert files_in(tmp_path) == []
    assert sim.counters.total == 0


@pytest.mark.parametrize("name", ["customers.txt", "customers"])
async def test_a_name_of_no_format_is_written_as_json_lines(
    client: DMHubClient, tmp_path: Path, name: str
) -> None:
    # The design's default: a temporary file's name (no extension) is JSON lines, as in 0.1.0.
    report = await export_customers(client, tmp_path / name, progress=False)
    assert report.format == "jsonl"
    assert len(read_jsonl(tmp_path / name)) == report.exported == CUSTOMERS


@pytest.mark.parametrize("name", ["customers.json", "customers.JSON"])
async def test_a_name_that_says_no_format_is_refused_unless_format_says_it(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, name: str
) -> None:
    # customers.json was written as JSON lines, which every JSON reader then failed on at its
    # second line, while `dmhub-async export --out customers.json` refused it (exit 2).
    with pytest.raises(InvalidRequestError, match=r"format=") as raised:
        await export_customers(client, tmp_path / name, progress=False)
    assert ".jsonl" in str(raised.value)
    assert files_in(tmp_path) == []
    assert sim.counters.total == 0
    # Said, it is written as asked: JSON lines under the name given.
    report = await export_customers(client, tmp_path / name, format="jsonl", progress=False)
    assert report.format == "jsonl"
    assert len(read_jsonl(tmp_path / name)) == report.exported == CUSTOMERS


# -- progress ---------------------------------------------------------------------------------


async def test_progress_is_reported_after_every_page_with_the_total(
    client: DMHubClient, tmp_path: Path
) -> None:
    seen: list[ExportProgress] = []

    report = await export_customers(
        client, tmp_path / "p.jsonl", page_size=100, progress=False, on_progress=seen.append
    )

    assert len(seen) == report.pages == 6
    assert [p.pages for p in seen] == [1, 2, 3, 4, 5, 6]
    assert [p.exported for p in seen] == [100, 200, 300, 400, 500, 600]
    assert {p.total for p in seen} == {CUSTOMERS}
    assert {p.duplicates for p in seen} == {0}


async def test_an_async_on_progress_is_refused_before_any_request(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # Called, never awaited: every page made a coroutine that never ran (a RuntimeWarning
    # each), and the export ended complete having told the caller nothing.
    seen: list[ExportProgress] = []

    async def on_progress(progress: ExportProgress) -> None:
        seen.append(progress)

    class Awaited:
        async def __call__(self, progress: ExportProgress) -> None:
            seen.append(progress)

    sim.counters.reset()
    for callback in (on_progress, functools.partial(on_progress), Awaited()):
        with pytest.raises(InvalidRequestError, match="on_progress must be a plain function"):
            await export_customers(
                client, tmp_path / "p.jsonl", progress=False, on_progress=callback
            )
    assert sim.counters.total == 0
    assert files_in(tmp_path) == []


async def test_an_on_progress_that_takes_no_progress_is_refused_before_any_request(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # Taken, then a raw TypeError ("<lambda>() takes 0 positional arguments but 1 was given")
    # at the first progress, after the first page's requests and rows.
    class Counted:
        def __call__(self) -> None: ...

    sim.counters.reset()
    for callback in (lambda: None, Counted(), lambda progress, total: None):
        with pytest.raises(
            InvalidRequestError, match=r"^on_progress must take one argument \(it is called"
        ):
            await export_customers(
                client,
                tmp_path / "p.jsonl",
                checkpoint=tmp_path / "p.ckpt",
                progress=False,
                on_progress=callback,  # type: ignore[arg-type]
            )
    assert sim.counters.total == 0
    assert files_in(tmp_path) == []
    seen: list[int] = []  # one argument, or more with defaults: taken
    report = await export_customers(
        client,
        tmp_path / "p.jsonl",
        progress=False,
        on_progress=lambda progress, *more, said=seen: said.append(progress.exported),
    )
    assert report.complete
    assert seen[-1] == report.exported


async def test_progress_and_the_bar_include_what_the_final_check_recovers(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bar closed at the end of the walk, and on_progress heard nothing after it: the
    # customers the final check fetched were written with the bar saying 600/600, done.
    import tqdm

    bars: list[tqdm.tqdm[Any]] = []

    class Bar(tqdm.tqdm):  # type: ignore[type-arg]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**{**kwargs, "disable": False, "file": io.StringIO()})
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    seen: list[ExportProgress] = []

    def on_progress(p: ExportProgress) -> None:
        seen.append(p)
        if len(seen) == 6:  # the walk's last page: a sign-up behind it, for the check to find
            sim.insert_customer({"name": "late"}, customer_id=min(sim.customer_ids()) - 1)

    report = await export_customers(
        client, tmp_path / "p.jsonl", page_size=100, on_progress=on_progress
    )

    assert report.recovered == 1
    assert report.exported == CUSTOMERS + 1
    assert (seen[-1].exported, seen[-1].total) == (CUSTOMERS + 1, CUSTOMERS + 1)
    (bar,) = bars
    assert (bar.n, bar.total) == (CUSTOMERS + 1, CUSTOMERS + 1)
    assert "601/601" in bar.fp.getvalue().split("\r")[-1]


async def test_the_final_check_fetches_as_many_customers_a_request_as_the_pages_hold(
    tmp_path: Path,
) -> None:
    # The customers the final check found missing were fetched 100 a request whatever the
    # page size: with large custom fields, a page size chosen to keep each page under
    # max_response_size (the CLI's advice for a page too large to read) walked every page,
    # then failed at the check, ResponseTooLargeError, after its whole walk.
    blob = "x" * 5000  # some 5 KB a customer: a page of 10 under the cap, one of 60 over it
    async with DMHubSimulator() as sim:
        for number in range(200):
            sim.insert_customer({"name": f"c{number}", "attr": {"blob": blob}})
        counts: list[str] = []
        asked: list[str] = []

        def note(request: Any) -> None:
            if request.path == "/v1/customers/count":
                counts.append(request.path)
                if len(counts) == 2:  # the count after the walk: 60 sign-ups meanwhile
                    for number in range(60):
                        sim.insert_customer({"name": f"new{number}", "attr": {"blob": blob}})
            elif request.path == "/v1/customers" and "idList" in request.query:
                asked.append(request.query["rows"])

        sim.on_request(note)
        async with DMHubClient(
            sim.app_id, sim.secret, base_url=sim.url, max_response_size=200_000
        ) as dm:
            report = await export_customers(dm, tmp_path / "p.jsonl", page_size=10)

    assert report.complete
    assert (report.exported, report.recovered) == (260, 60)
    assert len(read_jsonl(tmp_path / "p.jsonl")) == 260
    assert set(asked) == {"10"}
    # Each missing customer fetched once: none fetched again, none counted a duplicate.
    assert (len(asked), report.duplicates) == (6, 0)


async def test_one_customer_too_large_for_the_client_found_by_the_final_check_is_raised(
    tmp_path: Path,
) -> None:
    # The check fetches a batch too large to read again in halves, each asking for as many
    # rows as it has ids; one customer alone too large is the service's answer to raise, not
    # halved again into an empty id_list (which blamed the caller: "list_rows(): id_list is
    # empty").
    from dmhub_async.cli._errors import explain

    async with DMHubSimulator(customers=100, seed=3) as sim:
        counts: list[str] = []
        huge_id = min(sim.customer_ids()) - 3
        by_id: list[tuple[str, str | None]] = []  # each fetch by id: its ids, the rows asked

        def note(request: Any) -> None:
            if "idList" in request.query:
                by_id.append((request.query["idList"], request.query.get("rows")))
            if request.path == "/v1/customers/count":
                counts.append(request.path)
                if len(counts) == 2:  # the count after the walk: a large sign-up behind it
                    huge = {"name": "huge", "attr": {"blob": "x" * 300_000}}
                    sim.insert_customer(huge, customer_id=huge_id)
                    for small_id in (huge_id + 1, huge_id + 2):  # and two small ones
                        sim.insert_customer({"name": "small"}, customer_id=small_id)

        sim.on_request(note)
        async with DMHubClient(
            sim.app_id, sim.secret, base_url=sim.url, max_response_size=200_000
        ) as dm:
            with pytest.raises(ResponseTooLargeError, match="max_response_size") as caught:
                await export_customers(dm, tmp_path / "p.jsonl", page_size=10, progress=False)

    # Named: "the answer is larger than max_response_size" said neither which customer nor
    # that no smaller request holds it, and the command line advised a smaller --page-size,
    # which cannot help.
    said = str(caught.value)
    assert said.endswith(
        f"not read (customer {huge_id} alone, asked for by its id). Raise max_response_size"
        " if the service really sends that much"
    ), said
    assert f"customer {huge_id} alone" in repr(caught.value)
    code, line = explain(caught.value)
    assert code == 1
    assert line.endswith(
        f"larger than the 200,000 bytes a command reads: not read (customer {huge_id} alone,"
        " asked for by its id)"
    ), line
    assert "--page-size" not in line, line
    # Three missing, too large together: the first half, the huge one, asks for one row (as
    # many as its ids: a service that ignores idList, answering whole pages, is cut short too).
    asked = ",".join(str(i) for i in range(huge_id, huge_id + 3))
    assert by_id == [(asked, "10"), (str(huge_id), "1")]


async def test_a_customer_the_service_lists_but_does_not_answer_by_id_is_not_called_exported(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sign-up behind the walk that the final check's id walks list, every one, but its fetch
    # by id does not answer (a replica behind the one listing): the check must not pass on two
    # id walks that agree with the counts while the file lacks it.
    from dmhub_async.testing import _app

    parse_filters = _app.parse_filters
    hidden: set[int] = set()

    def lagging(query: Any) -> Any:
        found = parse_filters(query)
        if found.id_list is not None:
            return attrs.evolve(found, id_list=found.id_list - hidden)
        return found

    monkeypatch.setattr(_app, "parse_filters", lagging)

    def on_progress(p: ExportProgress) -> None:
        if p.pages == CUSTOMERS // 100:  # the walk's last page: a sign-up behind it
            late = sim.insert_customer({"name": "late"}, customer_id=min(sim.customer_ids()) - 1)
            hidden.add(late["id"])

    report = await export_customers(
        client, tmp_path / "p.jsonl", page_size=100, progress=False, on_progress=on_progress
    )

    (late,) = hidden
    assert late not in {row["id"] for row in read_jsonl(tmp_path / "p.jsonl")}
    assert report.exported == CUSTOMERS
    assert report.verified is False
    assert not report.complete


# -- failures, checkpoints and resume ---------------------------------------------------------


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def test_an_export_never_widens_the_umask_other_threads_create_files_with(
    client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # To give the output 0666 less the umask, the export read the umask by setting it to
    # 0o022 and back: a private file (mode 0600 under umask 077) that another thread of the
    # application made at that moment was readable by every user of the machine (0644).
    dest = tmp_path / "out" / "customers.jsonl"
    dest.parent.mkdir()
    with umask_watched(monkeypatch, tmp_path) as made:
        await export_customers(client, dest, checkpoint=dest.with_suffix(".ckpt"), progress=False)

    assert all(mode & 0o077 == 0 for mode in made), [oct(mode) for mode in made]
    assert dest.stat().st_mode & 0o777 == 0o600  # 0666 less 077


class Crash(Exception):
    """Stands for the process dying between two pages."""


def crash_after(pages: int) -> Any:
    def on_progress(p: ExportProgress) -> None:
        if p.pages == pages:
            raise Crash

    return on_progress


@pytest.mark.parametrize("checkpointed", [True, False])
async def test_an_export_writes_and_syncs_its_file_off_the_event_loop(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    checkpointed: bool,
) -> None:
    # Every page's write and commit (the file's fsync, the checkpoint's) and the final fsync
    # ran on the event loop: 0.65 ms to 17 ms a page, 72 ms to 133 ms for the last fsync of a
    # 200 MB file, for ever on a stalled disk, every other coroutine of the service standing
    # still meanwhile. Here each of them needs the loop to run while it works.
    loop = asyncio.get_running_loop()
    fsync, write = os.fsync, _output.Output.write
    synced: list[int] = []

    def slow_fsync(fd: int) -> None:
        loop_runs_meanwhile(loop, "the export synced a file")
        synced.append(fd)
        fsync(fd)

    def slow_write(self: _output.Output, data: bytes) -> None:
        loop_runs_meanwhile(loop, "the export wrote to its file")
        write(self, data)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    monkeypatch.setattr(_output.Output, "write", slow_write)
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    report = await export_customers(
        client, dest, progress=False, checkpoint=ckpt if checkpointed else None
    )
    assert [row["id"] for row in read_jsonl(dest)] == sim.customer_ids()
    assert report.complete
    pages = CUSTOMERS // 100
    # Checkpointed: the file's fsync and the checkpoint's each page, and the last one.
    assert len(synced) == (2 * pages + 1 if checkpointed else 1)
    assert not ckpt.exists()


async def test_an_export_checks_its_paths_off_the_event_loop(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The output's and the checkpoint's checks (15 stat calls: lstat, is_dir, access, resolve)
    # ran on the event loop before the first request: on a stalled filesystem (an NFS server
    # away) every other coroutine of the service, and every timeout, stood still with them.
    # Here each stat of a path in the export's directory needs the loop to run meanwhile.
    loop = asyncio.get_running_loop()
    lstat, stat, access = os.lstat, os.stat, os.access
    touched: list[str] = []

    def needing_the_loop(call: Any) -> Any:
        def stalled(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path).startswith(str(tmp_path)):
                loop_runs_meanwhile(loop, f"the export looked at {path}")
                touched.append(str(path))
            return call(path, *args, **kwargs)

        return stalled

    monkeypatch.setattr(os, "lstat", needing_the_loop(lstat))
    monkeypatch.setattr(os, "stat", needing_the_loop(stat))
    monkeypatch.setattr(os, "access", needing_the_loop(access))
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    report = await export_customers(client, dest, progress=False, checkpoint=ckpt)
    monkeypatch.undo()
    assert [row["id"] for row in read_jsonl(dest)] == sim.customer_ids()
    assert report.complete
    assert str(dest) in touched
    assert str(ckpt) in touched


@pytest.mark.parametrize("name", ["customers.csv", "customers.jsonl"])
async def test_an_export_encodes_its_pages_off_the_event_loop(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    # Each page was encoded on the event loop: a CSV page of 100 customers whose attr held
    # 200 KB each held it 0.4-0.8 s (its JSON lines 30-190 ms), every other coroutine of the
    # service standing still meanwhile. Here each page's encoding needs the loop to run.
    loop = asyncio.get_running_loop()
    writers = {"customers.csv": _writers.CsvWriter, "customers.jsonl": _writers.JsonlWriter}
    writer = writers[name]
    encode = writer.encode
    encoded: list[int] = []

    def slow_encode(self: Any, rows: Any) -> bytes:
        if rows:
            loop_runs_meanwhile(loop, "the export encoded a page")
            encoded.append(len(rows))
        return encode(self, rows)

    monkeypatch.setattr(writer, "encode", slow_encode)
    dest, ckpt = tmp_path / name, tmp_path / "customers.ckpt"
    report = await export_customers(client, dest, progress=False, checkpoint=ckpt)
    rows = read_csv(dest) if name.endswith(".csv") else read_jsonl(dest)
    assert [int(row["id"]) for row in rows] == sim.customer_ids()
    assert report.complete
    assert report.exported == CUSTOMERS
    assert encoded == [100] * (CUSTOMERS // 100)


class StalledPipe(io.BytesIO):
    """A caller's stream whose reader stopped (``export - | slow_consumer``): each write waits
    until the test opens ``gate``, for 5 s at most."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = threading.Event()  # a write waits at the gate
        self.writing = 0  # writes under way
        self.lines_at_each_write: list[int] = []
        self.held_the_loop = False

    def write(self, data: Any) -> int:
        self.writing += 1
        try:
            self.waiting.set()
            if not self.gate.wait(5):
                self.held_the_loop = True  # nothing on the loop could open it
                raise OSError(errno.EIO, "the stalled pipe was never drained")
            self.lines_at_each_write.append(bytes(data).count(b"\n"))
            return super().write(data)
        finally:
            self.writing -= 1


async def blocked_in_a_write(stream: StalledPipe) -> None:
    """Returns once a write to ``stream`` waits at its gate (5 s at most)."""
    assert await asyncio.to_thread(stream.waiting.wait, 5), "the export never wrote"


async def test_an_export_to_a_stalled_stream_leaves_the_event_loop_free(
    sim: DMHubSimulator, client: DMHubClient
) -> None:
    # dest=sys.stdout.buffer piped to a reader that is slow or stopped: each write waited on
    # the full pipe on the event loop, every other task of the service standing still and
    # no timeout firing until the reader read. Here, while a write waits, another task must
    # run; then every row arrives once, in order.
    stream = StalledPipe()
    export = asyncio.create_task(export_customers(client, stream, progress=False))
    await asyncio.wait_for(blocked_in_a_write(stream), 10)
    other_task_ran = asyncio.Event()
    asyncio.get_running_loop().call_soon(other_task_ran.set)
    await asyncio.wait_for(other_task_ran.wait(), 5)
    assert not stream.held_the_loop, "the export's write held the event loop"
    assert stream.writing == 1
    assert not export.done()
    stream.gate.set()
    report = await asyncio.wait_for(export, 30)
    assert [json.loads(line)["id"] for line in stream.getvalue().splitlines()] == (
        sim.customer_ids()
    )
    assert report.complete
    assert stream.lines_at_each_write == [100] * (CUSTOMERS // 100)  # a page a write


async def test_a_cancelled_export_to_a_stalled_stream_leaves_nothing_to_write_later(
    sim: DMHubSimulator, client: DMHubClient
) -> None:
    # Cancelled (a timeout, a shutdown) while a write waits on the full pipe: the export ends
    # only once that write has, and none follows it, so nothing writes to the caller's
    # stream after the export has returned.
    stream = StalledPipe()
    export = asyncio.create_task(export_customers(client, stream, progress=False))
    await asyncio.wait_for(blocked_in_a_write(stream), 10)
    export.cancel()
    for _ in range(20):  # the loop turns; the export waits for its write
        await asyncio.sleep(0)
    assert not export.done()
    stream.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(export, 10)
    assert stream.writing == 0
    assert not stream.held_the_loop
    assert stream.lines_at_each_write == [100]  # the page under way, whole; no other
    assert len(stream.getvalue().splitlines()) == 100


async def test_an_export_to_a_compressing_stream_writes_every_customer(
    client: DMHubClient, tmp_path: Path
) -> None:
    # The README says to compress what the export writes: a gzip.GzipFile (bz2, lzma alike),
    # which has all an export writes to a stream with (write, flush), takes every row.
    import gzip

    with gzip.open(tmp_path / "customers.jsonl.gz", "wb") as stream:
        report = await export_customers(client, stream, progress=False)
    lines = gzip.decompress((tmp_path / "customers.jsonl.gz").read_bytes()).splitlines()
    assert len(lines) == report.exported == CUSTOMERS
    assert report.complete


class ShortWrites(io.RawIOBase):
    """An unbuffered stream that takes at most ``room`` bytes a write, as a socket or a pipe
    does (``RawIOBase.write`` may write less than it is given, and says how much)."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.taken = bytearray()
        self.short = 0  # writes that took less than they were given

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)[: self.room]
        self.short += len(chunk) < len(data)
        self.taken += chunk
        return len(chunk)


async def test_an_export_to_a_stream_that_takes_part_of_a_write_writes_every_customer(
    sim: DMHubSimulator, client: DMHubClient
) -> None:
    # An unbuffered stream (open(..., "wb", buffering=0), a socket's makefile) may write part
    # of what it is given and return how much: the rest of each page was dropped, and the
    # report said complete, every customer counted as exported.
    stream = ShortWrites(room=1000)
    report = await export_customers(client, stream, progress=False)
    assert stream.short  # the stream did take part of a write
    lines = bytes(stream.taken).splitlines()
    assert len(lines) == report.exported == CUSTOMERS
    assert [json.loads(line)["id"] for line in lines] == sim.customer_ids()
    assert report.complete


class _FillsOnce(io.FileIO):
    """A non-blocking pipe's write end, unbuffered: ``write`` returns None while the pipe is
    full (nothing written), and ``full`` is set the first time it is."""

    full: threading.Event

    def write(self, data: Any) -> int | None:
        written = super().write(data)
        if written is None:
            self.full.set()
        return written


async def test_an_export_to_a_non_blocking_pipe_waits_for_its_reader(
    sim: DMHubSimulator, client: DMHubClient
) -> None:
    # A pipe set non-blocking (an event loop's, a parent process's), given unbuffered: a write
    # to it while it was full wrote nothing and returned None, and the export went on, its
    # report complete, the reader short of every page that met a full pipe.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    stream = _FillsOnce(write_end, "wb")
    stream.full = threading.Event()
    lines: list[bytes] = []

    def reader() -> None:  # starts once the pipe is full, then reads it to its end
        stream.full.wait(10)
        with open(read_end, "rb") as fh:
            lines.extend(fh.read().splitlines())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        report = await export_customers(client, stream, progress=False)
    finally:
        stream.full.set()
        stream.close()
        await asyncio.to_thread(thread.join, 10)
    assert len(lines) == report.exported == CUSTOMERS
    assert [json.loads(line)["id"] for line in lines] == sim.customer_ids()
    assert report.complete


class _WriteOnly:
    """A stream of the caller's with ``write`` alone: no ``flush``, which the export calls."""

    def write(self, data: bytes) -> int:
        return len(data)


def _closed_stream() -> io.BytesIO:
    stream = io.BytesIO()
    stream.close()
    return stream


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda path: path.open("rb"), "dest is a stream not open for writing (opened 'rb'?)"),
        (lambda path: _closed_stream(), "dest is a closed stream"),
        (
            lambda path: _WriteOnly(),
            "dest must be a path or a binary stream (sys.stdout.buffer, not sys.stdout)",
        ),
    ],
    ids=["opened rb", "closed", "no flush"],
)
async def test_a_stream_no_export_can_write_is_refused_before_anything_is_sent(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    make: Callable[[Path], Any],
    said: str,
) -> None:
    # A file opened "rb" (or a pipe's read end) was counted and walked, then failed at the
    # first write with io.UnsupportedOperation; a closed one with a raw ValueError ("write to
    # closed file"); one without flush wrote every row, then raised AttributeError.
    (tmp_path / "customers.jsonl").write_bytes(b"")
    stream = make(tmp_path / "customers.jsonl")
    sim.counters.reset()
    try:
        with pytest.raises(InvalidRequestError) as caught:
            await export_customers(client, stream, progress=False)
    finally:
        getattr(stream, "close", lambda: None)()
    assert str(caught.value) == said
    assert sim.counters.total == 0


_COMPRESSED_EXPORT = """\
import bz2
import gzip
import lzma

from dmhub_async import DMHubClient
from dmhub_async.export import export_customers


async def nightly(dm: DMHubClient) -> int:
    with gzip.open("leads.jsonl.gz", "wb") as gz:
        a = await export_customers(dm, gz, stage="lead", progress=False)
    with bz2.open("leads.jsonl.bz2", "wb") as bz, lzma.open("leads.jsonl.xz", "wb") as xz:
        b = await export_customers(dm, bz, progress=False)
        c = await export_customers(dm, xz, progress=False)
    return a.exported + b.exported + c.exported
"""


def test_an_export_to_a_compressing_stream_passes_a_users_mypy_strict(
    tmp_path: Path, mypy_strict: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # Typed IO[bytes], which gzip.GzipFile is not to a type checker (bz2's and lzma's files
    # are): an export the SDK runs (the test above) failed a user's mypy --strict.
    program = tmp_path / "nightly.py"
    program.write_text(_COMPRESSED_EXPORT, encoding="utf-8")
    result = mypy_strict(program, cwd=tmp_path, mypy_path=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout + result.stderr


async def test_an_error_of_the_callers_stream_is_raised_as_it_was(
    client: DMHubClient,
) -> None:
    # A reader gone (`| head -1`): the write's BrokenPipeError, as the stream raised it (the
    # CLI ends silently on it), and no page written after it.
    class GonePipe(io.BytesIO):
        writes = 0

        def write(self, data: Any) -> int:
            self.writes += 1
            if self.writes == 2:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")
            return super().write(data)

    stream = GonePipe()
    with pytest.raises(BrokenPipeError):
        await asyncio.wait_for(export_customers(client, stream, progress=False), 30)
    assert stream.writes == 2
    assert len(stream.getvalue().splitlines()) == 100


@pytest.mark.parametrize("to", ["file", "stream"])
async def test_an_export_of_a_long_id_list_prepares_it_off_the_event_loop(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, to: str
) -> None:
    # export_customers(id_list=...) checked and joined a long id list on the event loop,
    # three times over, and split it twice (as list_rows() did): 550 to 850 ms for 300,000
    # ids, every other task standing still. Here joining and splitting it need the loop to
    # run; the file holds each customer once, in order, and the checkpoint records the ids
    # as a resume compares them (as they are walked, each once and sorted: their digest).
    IdNeedingTheLoop.loop = asyncio.get_running_loop()
    ids = sim.customer_ids()
    plain = [*ids, *ids[:10], *range(10**12, 10**12 + 12_000)]
    given = [IdNeedingTheLoop(plain[0]), *plain[1:]]
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    stream = io.BytesIO()
    recorded: list[str] = []

    def read_checkpoint(progress: ExportProgress) -> None:
        if to == "file" and not recorded:
            recorded.append(json.loads(ckpt.read_text())["scope"]["filters"]["idList"])

    report = await export_customers(
        client,
        dest if to == "file" else stream,
        checkpoint=ckpt if to == "file" else None,
        on_progress=read_checkpoint,
        progress=False,
        id_list=given,
    )
    rows = (
        read_jsonl(dest)
        if to == "file"
        else [json.loads(x) for x in stream.getvalue().splitlines()]
    )
    assert [row["id"] for row in rows] == ids
    assert report.complete
    if to == "file":
        walked = ",".join(map(str, sorted(set(plain)))).encode()
        assert recorded == ["sha256:" + hashlib.sha256(walked).hexdigest()]
        assert not ckpt.exists()


#: The iterables a caller passes as an id_list, made afresh for each call.
ID_ITERABLES: dict[str, Any] = {
    "generator": lambda ids: (i for i in ids),
    "iterator": iter,
    "map": lambda ids: map(int, ids),
    "set": set,
    "tuple": tuple,
    "dict keys": lambda ids: dict.fromkeys(ids).keys(),
}


@pytest.mark.parametrize("long", [False, True], ids=["short", "long"])
@pytest.mark.parametrize("kind", list(ID_ITERABLES))
async def test_an_export_takes_an_id_list_of_any_iterable_as_the_same_list(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, kind: str, long: bool
) -> None:
    # export_customers(id_list=iter(ids)) read the generator for its checks, then found it
    # empty for the walk: InvalidRequestError "list(): id_list is empty", nothing exported.
    ids = sim.customer_ids()[::3]
    given = [*ids, *range(10**12, 10**12 + 11_000)] if long else ids
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"

    report = await export_customers(
        client, dest, checkpoint=ckpt, progress=False, id_list=ID_ITERABLES[kind](given)
    )

    assert_once_each(ids_of(read_jsonl(dest)), ids)
    assert report.complete
    assert report.exported == len(ids)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_an_export_takes_a_select_of_a_generator_as_the_same_list(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, fmt: str
) -> None:
    # select=(f for f in ...) walks in list() but the export read it for its checks, then
    # found it empty: "list_rows(): select names no field", nothing exported.
    dest = tmp_path / f"customers.{fmt}"

    report = await export_customers(
        client, dest, progress=False, select=(f for f in ["name", "mobile"])
    )

    assert report.complete
    assert report.exported == len(sim.customer_ids())
    if fmt == "jsonl":
        assert {tuple(row) for row in read_jsonl(dest)} == {("id", "name", "mobile")}
    else:
        assert dest.read_text().splitlines()[0] == "id,name,mobile"


async def test_a_bad_id_of_a_generator_is_refused_before_anything_is_sent(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    ids = sim.customer_ids()[:5]
    sim.counters.reset()
    # Read once, at the call: the bad id is named in the export's name, nothing sent or made.
    with pytest.raises(
        InvalidRequestError, match=r"export_customers\(\): id_list\[5\]: customer id -1 "
    ):
        await export_customers(
            client, tmp_path / "c.jsonl", progress=False, id_list=(i for i in [*ids, -1])
        )
    assert sim.counters.total == 0
    assert files_in(tmp_path) == []


def long_id_list(sim: DMHubSimulator) -> list[int]:
    """Every customer's id, some twice, and 12,000 ids of no one: a long id_list."""
    ids = sim.customer_ids()
    return [*ids, *ids[:10], *range(10**12, 10**12 + 12_000)]


async def test_a_long_id_lists_checkpoint_is_small_and_a_resume_gets_everyone_once(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # The checkpoint held the whole id_list, joined, rewritten (and synced) after every page:
    # 3.3 MB a page for 300,000 ids, 2.1 GB over an export of 300,000 customers at 1,000 a
    # page. It holds the list's SHA-256 now, which a resume checks the caller's list against.
    given = long_id_list(sim)
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    sizes: list[int] = []

    def crash_after_3(progress: ExportProgress) -> None:
        sizes.append(ckpt.stat().st_size)
        if progress.pages == 3:
            raise Crash

    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=50, on_progress=crash_after_3, id_list=given
        )
    recorded = json.loads(ckpt.read_bytes())
    walked = ",".join(map(str, sorted(set(given)))).encode()
    assert recorded["scope"]["filters"]["idList"] == "sha256:" + hashlib.sha256(walked).hexdigest()
    assert max(sizes) < 2_000

    # The same list again, as a generator this time: resumed, each customer once.
    report = await export_customers(
        client, dest, checkpoint=ckpt, progress=False, id_list=(i for i in given)
    )
    assert report.resumed
    assert report.complete
    assert ids_of(read_jsonl(dest)) == sim.customer_ids()
    assert not ckpt.exists()


async def test_a_long_id_lists_checkpoint_refuses_another_list_in_a_few_words(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # The refusal named both lists in full: a message of megabytes.
    given = long_id_list(sim)
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=50, on_progress=crash_after(2), id_list=given
        )
    sim.counters.reset()

    with pytest.raises(InvalidRequestError, match="belongs to another export") as refused:
        await export_customers(client, dest, checkpoint=ckpt, progress=False, id_list=given[:-1])

    assert "id_list: other ids" in str(refused.value)
    assert len(str(refused.value)) < 1_000
    assert sim.counters.total == 0


async def test_a_checkpoint_holding_the_whole_id_list_still_resumes(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # As the release before this one wrote it: version 2, the ids joined in full. It resumes
    # (each customer once), and its next checkpoint is the short one.
    given = long_id_list(sim)
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=50, on_progress=crash_after(3), id_list=given
        )
    earlier = json.loads(ckpt.read_bytes())
    earlier["version"] = 2
    earlier["scope"]["filters"]["idList"] = ",".join(map(str, given))
    ckpt.write_text(json.dumps(earlier), encoding="utf-8")
    sizes: list[int] = []

    report = await export_customers(
        client,
        dest,
        checkpoint=ckpt,
        progress=False,
        on_progress=lambda _: sizes.append(ckpt.stat().st_size),
        id_list=given,
    )

    assert report.resumed
    assert report.complete
    assert report.exported_before == 150
    assert ids_of(read_jsonl(dest)) == sim.customer_ids()
    assert max(sizes) < 2_000


async def test_a_short_id_lists_checkpoint_is_as_earlier_releases_read_it(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # A few ids stay in the checkpoint as they are (version 2): a rolling upgrade's earlier
    # release resumes it.
    ids = sim.customer_ids()[:120]
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=50, on_progress=crash_after(1), id_list=ids
        )
    recorded = json.loads(ckpt.read_bytes())
    assert recorded["version"] == 2
    assert recorded["scope"]["filters"]["idList"] == ",".join(map(str, ids))


class _Stopped(Exception):
    """Raised from on_progress: the export stops with its checkpoint kept."""


@pytest.mark.parametrize("extra", [0, 12_000], ids=["short", "long"])
async def test_a_resume_takes_the_same_id_list_in_another_order(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, extra: int
) -> None:
    # The export walks an id_list's customers by id, each once, whatever its order or repeats:
    # the same ids given in another order (a set, a query without ORDER BY) were refused on
    # resume as "another export", and the refusal quoted every id of both lists (380,000
    # characters for 14,000 ids). Another list is still refused, in a line.
    ids = [*sim.customer_ids()[:400], *range(10**12, 10**12 + extra)]
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    pages = 0

    def stop_at_the_third(progress: ExportProgress) -> None:
        nonlocal pages
        pages += 1
        if pages == 3:
            raise _Stopped

    with pytest.raises(_Stopped):
        await export_customers(
            client,
            dest,
            checkpoint=ckpt,
            page_size=50,
            concurrency=1,
            progress=False,
            on_progress=stop_at_the_third,
            id_list=ids,
        )
    assert ckpt.exists()

    with pytest.raises(InvalidRequestError, match="belongs to another export") as refused:
        await export_customers(client, dest, checkpoint=ckpt, progress=False, id_list=ids[1:])
    assert len(str(refused.value)) < 1_000

    report = await export_customers(
        client, dest, checkpoint=ckpt, progress=False, id_list=[*reversed(ids), ids[0]]
    )

    assert report.complete
    assert [row["id"] for row in read_jsonl(dest)] == sim.customer_ids()[:400]


async def test_the_report_counts_the_retries_of_every_request_the_export_sent(
    sim: DMHubSimulator, tmp_path: Path, clock: Any
) -> None:
    # Only the walk's page retries were counted: a resume's start-page search, the counts and
    # the final check's id pages retried too, and the report said fewer than the client did.
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    async with DMHubClient(
        sim.app_id,
        sim.secret,
        base_url=sim.url,
        max_retries=6,
        token_store=MemoryTokenStore(),
        clock=clock,
        sleep=clock.sleep,
    ) as dm:
        with pytest.raises(Crash):
            await export_customers(
                dm, dest, checkpoint=ckpt, page_size=50, progress=False, on_progress=crash_after(2)
            )
        before = dm.stats.retries
        sim.faults.kinds = ["500"]
        sim.faults.rate = 0.3  # every /v1 request: counts, id-only probes, pages, id pages
        report = await export_customers(dm, dest, checkpoint=ckpt, verify="always", progress=False)
        retried = dm.stats.retries - before

    assert report.resumed
    assert report.complete
    assert retried >= 5
    assert report.retries == retried
    assert f"({retried} retries)" in report.summary()


async def test_without_checkpoint_a_failed_export_leaves_dest_untouched(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    dest = tmp_path / "customers.jsonl"
    dest.write_text("yesterday's export\n", encoding="utf-8")
    sim.faults.paths = ("GET /v1/customers",)
    sim.faults.script(["ok", "ok", "ok", "500"])  # the fourth page fails (no retries)

    with pytest.raises(ServerError):
        await export_customers(client, dest, concurrency=1, progress=False)

    assert dest.read_text(encoding="utf-8") == "yesterday's export\n"
    assert files_in(tmp_path) == [dest.name]  # the temporary file is gone too


@pytest.mark.parametrize("checkpointed", [True, False])
async def test_a_failed_export_lets_go_of_its_file_off_the_event_loop(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    checkpointed: bool,
) -> None:
    # A failed (or cancelled) export cut its file back to what its checkpoint covers, closed
    # it and removed its lock files on the event loop: on a stalled filesystem, for ever.
    # Here letting go needs the loop to run meanwhile; the error is still the service's.
    loop = asyncio.get_running_loop()
    close = _output.Output.close

    def slow_close(self: _output.Output) -> None:
        loop_runs_meanwhile(loop, "the export let go of its file")
        close(self)

    monkeypatch.setattr(_output.Output, "close", slow_close)
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    sim.faults.paths = ("GET /v1/customers",)
    sim.faults.script(["ok", "ok", "ok", "500"])  # the fourth page fails (no retries)
    with pytest.raises(ServerError):
        await export_customers(
            client,
            dest,
            concurrency=1,
            progress=False,
            checkpoint=ckpt if checkpointed else None,
        )
    if checkpointed:  # the pages before the failure, resumable
        assert len(read_jsonl(dest)) == 300
        assert files_in(tmp_path) == sorted([ckpt.name, dest.name])
    else:
        assert files_in(tmp_path) == []


@pytest.mark.parametrize("refusal", ["EXDEV", "EINVAL", "EPERM"])
@pytest.mark.parametrize("checkpointed", [False, True], ids=["", "ckpt"])
async def test_overwrite_false_puts_the_file_in_place_where_no_hard_link_can_be_made(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refusal: str,
    checkpointed: bool,
) -> None:
    # overwrite=False (the CLI without --force) puts the file at its name by a hard link.
    # Where the file system makes none, it says so in its own words: EPERM (FAT on Linux),
    # EXDEV (a union file system such as mergerfs), EINVAL (FAT or exFAT on Windows). All but
    # EPERM failed the export at its end with a bare "[Errno 18] Invalid cross-device link",
    # every customer fetched and thrown away, where nothing was at the name.
    code = getattr(errno, refusal)

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"

    report = await export_customers(
        client,
        dest,
        progress=False,
        overwrite=False,
        checkpoint=ckpt if checkpointed else None,
    )

    assert report.exported == CUSTOMERS
    assert_once_each(ids_of(read_jsonl(dest)), sim.customer_ids())
    assert files_in(tmp_path) == [dest.name]


@pytest.mark.parametrize("checkpointed", [False, True], ids=["", "ckpt"])
async def test_overwrite_false_refuses_an_output_already_there_before_any_request(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, checkpointed: bool
) -> None:
    # export_customers(dm, "out.jsonl", overwrite=False) with out.jsonl there as it began, no
    # checkpoint resuming it: the whole export was walked (every page requested), then its
    # rows thrown away and FileExistsError raised at its end (with a checkpoint, at its first).
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    dest.write_text("yesterday's export\n", encoding="utf-8")

    with pytest.raises(FileExistsError) as refused:
        await export_customers(
            client,
            dest,
            progress=False,
            overwrite=False,
            checkpoint=ckpt if checkpointed else None,
        )

    assert refused.value.filename == str(dest)
    assert client.stats.requests == 0
    assert dest.read_text(encoding="utf-8") == "yesterday's export\n"
    assert files_in(tmp_path) == [dest.name]


async def test_overwrite_false_still_resumes_the_output_its_checkpoint_covers(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # The output of a run that failed after its first checkpoint is there as the rerun begins:
    # its own, resumed in place, not refused as another program's.
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    sim.faults.paths = ("GET /v1/customers",)
    sim.faults.script(["ok", "ok", "ok", "500"])  # the fourth page fails (no retries)
    with pytest.raises(ServerError):
        await export_customers(
            client, dest, checkpoint=ckpt, concurrency=1, progress=False, overwrite=False
        )

    report = await export_customers(
        client, dest, checkpoint=ckpt, concurrency=1, progress=False, overwrite=False
    )

    assert report.resumed
    assert_once_each(ids_of(read_jsonl(dest)), sim.customer_ids())
    assert files_in(tmp_path) == [dest.name]


async def test_without_checkpoint_a_failed_first_export_creates_no_file(
    client: DMHubClient, tmp_path: Path
) -> None:
    dest = tmp_path / "customers.csv"
    with pytest.raises(Crash):
        await export_customers(client, dest, progress=False, on_progress=crash_after(2))
    assert files_in(tmp_path) == []


async def test_with_a_checkpoint_a_run_failing_before_its_first_page_leaves_dest_untouched(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # The file was cut to nothing before the first request, then removed with nothing
    # checkpointed: a wrong secret or an early Ctrl-C deleted yesterday's export.
    dest = tmp_path / "customers.jsonl"
    dest.write_text("yesterday's export\n", encoding="utf-8")
    checkpoint = tmp_path / "customers.ckpt"
    sim.faults.paths = ("GET /v1/customers",)
    sim.faults.script(["500"])  # the first page fails (no retries)

    with pytest.raises(ServerError):
        await export_customers(client, dest, checkpoint=checkpoint, concurrency=1, progress=False)

    assert dest.read_text(encoding="utf-8") == "yesterday's export\n"
    assert files_in(tmp_path) == [dest.name]  # no work file, no checkpoint

    # After its first checkpoint the export is the file: a later failure leaves it resumable.
    sim.faults.script(["ok", "ok", "500"])
    with pytest.raises(ServerError):
        await export_customers(client, dest, checkpoint=checkpoint, concurrency=1, progress=False)
    assert sorted(files_in(tmp_path)) == sorted([dest.name, checkpoint.name])
    assert "yesterday" not in dest.read_text(encoding="utf-8")
    report = await export_customers(client, dest, checkpoint=checkpoint, progress=False)
    assert report.complete
    assert files_in(tmp_path) == [dest.name]
    assert dest.stat().st_mode & 0o777 == 0o666 & ~current_umask()


async def test_a_disk_too_full_for_the_first_checkpoint_leaves_dest_untouched(
    client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first page's file took the output's name, then the checkpoint could not be written
    # (ENOSPC at its fsync): with nothing checkpointed the file was removed, and yesterday's
    # export with it, though "a run that fails before its first checkpoint leaves an existing
    # file as it was" (README).
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    dest.write_text("yesterday's export\n", encoding="utf-8")
    fsync = os.fsync

    def full_for_checkpoints(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):  # the checkpoint's mkstemp
            raise OSError(28, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_for_checkpoints)
    with pytest.raises(OSError, match="No space"):
        await export_customers(client, dest, checkpoint=ckpt, progress=False)

    assert dest.read_text(encoding="utf-8") == "yesterday's export\n"
    assert files_in(tmp_path) == [dest.name]


async def test_a_failed_export_says_why_though_its_lock_files_cannot_be_removed(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The service failed, and the directory had been made read-only meanwhile: the user was
    # told "Permission denied: .customers.jsonl.lock" (the lock's cleanup raised over the
    # error on its way out), and never that the service had failed.
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    sim.faults.paths = ("GET /v1/customers",)
    sim.faults.script(["ok", "ok", "503"])
    lock_files_cannot_go(monkeypatch)

    with pytest.raises(ServerError):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=50, concurrency=1, progress=False
        )

    assert ".customers.jsonl.lock" in caplog.text  # said, not raised
    monkeypatch.undo()  # writable again: the locks were released, the rerun resumes
    report = await export_customers(
        client, dest, checkpoint=ckpt, page_size=50, concurrency=1, progress=False
    )
    assert report.resumed
    assert ids_of(read_jsonl(dest)) == sim.customer_ids()


async def test_a_failed_export_says_why_though_its_work_file_cannot_be_removed(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The service failed, and the directory had been made read-only meanwhile: removing the
    # work file raised "Permission denied: .customers.jsonl.xxxxxxxx.part" in place of the
    # service's error, and the user was never told the service had failed.
    dest = tmp_path / "customers.jsonl"
    sim.faults.paths = ("GET /v1/customers",)
    sim.faults.script(["ok", "ok", "503"])
    unlink = Path.unlink

    def read_only(path: Path, missing_ok: bool = False) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Path, "unlink", read_only)

    with pytest.raises(ServerError):
        await export_customers(client, dest, page_size=50, concurrency=1, progress=False)

    assert ".part" in caplog.text  # said, not raised
    monkeypatch.setattr(Path, "unlink", unlink)
    left = [name for name in files_in(tmp_path) if name.endswith(".part")]
    assert len(left) == 1  # left, with the warning: the next export to the file removes it
    await export_customers(client, dest, page_size=50, progress=False)
    assert files_in(tmp_path) == [dest.name]


class FullDisk(io.FileIO):
    """A file on a disk with ``free`` bytes left: the write that reaches the end is cut short,
    and every write after it fails with ENOSPC, as on a full disk."""

    free = 0

    def write(self, data: Any) -> int:
        if FullDisk.free <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = super().write(bytes(data)[: FullDisk.free])
        FullDisk.free -= written
        return written


def on_a_disk_with(free: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export's output (its work file, or the file in place) on a disk ``free`` bytes
    from full."""

    def on_full_disk(fh: IO[bytes]) -> IO[bytes]:
        fd = os.dup(fh.fileno())
        fh.close()
        return io.BufferedRandom(FullDisk(fd, "r+"))

    new_part, open_in_place = _output._new_part, _output._open_in_place

    def part_on_full_disk(dest: Path) -> tuple[IO[bytes], Path]:
        fh, part = new_part(dest)
        return on_full_disk(fh), part

    FullDisk.free = free
    monkeypatch.setattr(_output, "_new_part", part_on_full_disk)
    monkeypatch.setattr(_output, "_open_in_place", lambda dest: on_full_disk(open_in_place(dest)))


@pytest.mark.parametrize(("fmt", "free"), [("jsonl", 41_000), ("csv", 60_000)])
async def test_an_export_failing_on_a_full_disk_leaves_no_hidden_file_behind(
    client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, free: int
) -> None:
    # The work file's close flushed what its buffer still held onto the full disk, failed
    # again, and the file was never removed: a hidden `.NAME.xxxxxxxx.part` as large as what
    # was written kept the disk full (until an export to the same file came by).
    on_a_disk_with(free, monkeypatch)

    with pytest.raises(OSError, match="No space left on device"):
        await export_customers(
            client, tmp_path / f"all.{fmt}", format=fmt, page_size=50, progress=False
        )

    assert files_in(tmp_path) == []


@pytest.mark.parametrize("checkpointed", [False, True])
async def test_a_full_disk_names_the_output_it_could_not_write(
    client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpointed: bool
) -> None:
    # "dmhub-async: error: No space left on device": which disk, which file, was not said.
    dest = tmp_path / "all.jsonl"
    on_a_disk_with(41_000, monkeypatch)

    with pytest.raises(OSError, match="No space left on device") as raised:
        await export_customers(
            client,
            dest,
            checkpoint=tmp_path / "all.ckpt" if checkpointed else None,
            page_size=50,
            progress=False,
        )

    assert raised.value.filename == str(dest)
    assert str(dest) in str(raised.value)


async def test_a_full_disk_names_the_checkpoint_it_could_not_write(
    client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    fsync = os.fsync

    def full_for_checkpoints(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):  # the checkpoint's mkstemp
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_for_checkpoints)
    with pytest.raises(OSError, match="No space left on device") as raised:
        await export_customers(client, dest, checkpoint=ckpt, progress=False)

    assert raised.value.filename == str(ckpt)


async def test_a_checkpoint_that_cannot_take_its_name_names_the_checkpoint(
    client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rename of the checkpoint's temporary file failed (a disk error): the error named
    # that hidden file (".customers.ckpt.k2j4m9xq.tmp: Input/output error"), which the
    # failed run then removed, not the checkpoint.
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "customers.ckpt"
    replace = os.replace

    def failing(src: Any, dst: Any) -> None:
        if str(src).endswith(".tmp"):  # the checkpoint's mkstemp
            raise OSError(errno.EIO, "Input/output error", str(src), None, str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="Input/output error") as raised:
        await export_customers(client, dest, checkpoint=ckpt, progress=False)

    assert raised.value.filename == str(ckpt)
    assert ".tmp" not in str(raised.value)


@pytest.mark.parametrize("failing", ["fchmod", "replace"])
async def test_an_output_that_cannot_take_its_name_or_mode_names_the_output(
    client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    # The work file written, it could not be given its mode, or its name (a disk error): the
    # error named no file ("error: Input/output error"), or the hidden work file the failed
    # run then removed (".customers.jsonl.xxxxxxxx.part: Input/output error").
    dest = tmp_path / "customers.jsonl"
    real = getattr(os, failing)

    def fails(*args: Any) -> None:
        if failing == "fchmod":
            raise OSError(errno.EIO, "Input/output error")
        if str(args[0]).endswith(".part"):
            raise OSError(errno.EIO, "Input/output error", str(args[0]), None, str(args[1]))
        real(*args)

    monkeypatch.setattr(os, failing, fails)
    with pytest.raises(OSError, match="Input/output error") as raised:
        await export_customers(client, dest, progress=False)

    assert raised.value.filename == str(dest)
    assert ".part" not in str(raised.value)
    assert files_in(tmp_path) == []


async def test_an_export_failing_on_a_full_disk_leaves_what_its_checkpoint_covers(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cutting the file back to its checkpoint flushed first, failed again, and was never done:
    # the file was left longer than its checkpoint, and open, its buffer written out whenever
    # it was collected (into the file a rerun in the same process was writing).
    dest, ckpt = tmp_path / "all.csv", tmp_path / "all.ckpt"
    on_a_disk_with(60_000, monkeypatch)

    with pytest.raises(OSError, match="No space left on device"):
        await export_customers(
            client, dest, format="csv", checkpoint=ckpt, page_size=50, progress=False
        )
    gc.collect()  # an output left open: ResourceWarning, an error here

    assert dest.stat().st_size == json.loads(ckpt.read_bytes())["bytes"]
    monkeypatch.undo()  # space freed: the rerun resumes
    report = await export_customers(
        client, dest, format="csv", checkpoint=ckpt, page_size=50, progress=False
    )
    assert report.resumed
    assert sorted(int(row["id"]) for row in read_csv(dest)) == sim.customer_ids()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("how", ["crash", "server error"])
async def test_resume_after_a_failure_gives_every_customer_once(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, fmt: str, how: str
) -> None:
    dest = tmp_path / f"customers.{fmt}"
    ckpt = tmp_path / "export.ckpt"
    first: dict[str, Any] = {"on_progress": crash_after(3)} if how == "crash" else {}
    if how == "server error":
        sim.faults.paths = ("GET /v1/customers",)
        sim.faults.script(["ok", "ok", "ok", "503"])
    with pytest.raises((Crash, ServerError)):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=50, concurrency=1, progress=False, **first
        )
    state = json.loads(ckpt.read_text(encoding="utf-8"))
    assert state["next_page"] == 4
    assert state["exported"] == 150
    assert dest.stat().st_size == state["bytes"]
    # A kill in the middle of the next write leaves a torn row after the checkpointed bytes.
    with dest.open("ab") as fh:
        fh.write(b'{"id": 3000000999, "name": "half a r')

    report = await export_customers(
        client, dest, checkpoint=ckpt, page_size=50, concurrency=3, progress=False
    )

    rows = read_jsonl(dest) if fmt == "jsonl" else read_csv(dest)
    assert ids_of(rows) == sim.customer_ids()
    assert report.resumed
    assert report.exported == CUSTOMERS
    assert report.pages == CUSTOMERS // 50 - 3  # only the pages not done before
    # The page before the start, read again to see whether anything shifted back, is what the
    # first run wrote, not records the service served twice: it counted them as duplicates.
    assert report.duplicates == 0
    assert report.complete
    assert not ckpt.exists()  # done: the next run starts afresh
    assert files_in(tmp_path) == [dest.name]  # no work file or lock left
    if fmt == "csv":
        assert dest.read_text(encoding="utf-8").count("id,displayName") == 1


async def test_a_resumed_exports_rate_counts_the_customers_of_this_run_only(
    client: DMHubClient, tmp_path: Path
) -> None:
    # It divided every customer in the file, those of the run that crashed included, by this
    # run's seconds: a resume that wrote 100 customers reported the rate of 600.
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=50, progress=False, on_progress=crash_after(10)
        )

    report = await export_customers(client, dest, checkpoint=ckpt, page_size=50, progress=False)

    assert report.exported == CUSTOMERS
    assert report.records_per_second == pytest.approx((CUSTOMERS - 500) / report.seconds)
    assert report.exported_before == 500
    assert "500 exported before" in report.summary()


async def test_resume_keeps_the_page_size_it_began_with(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=50, progress=False, on_progress=crash_after(3)
        )

    # Page 4 of 100 would start at record 300, not 150: records 150-299 would be skipped.
    report = await export_customers(client, dest, checkpoint=ckpt, page_size=100, progress=False)

    assert ids_of(read_jsonl(dest)) == sim.customer_ids()
    assert report.exported == CUSTOMERS
    assert report.complete


@pytest.mark.parametrize("with_checkpoint", [False, True])
async def test_a_relative_output_stays_where_it_was_named_though_the_cwd_changes(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    with_checkpoint: bool,
) -> None:
    # A service that changes its working directory while an export runs (another task's
    # os.chdir): the relative names were taken again in the new one. The file went there,
    # its lock files stayed behind in the first, and a complete export's checkpoint too.
    named, elsewhere = tmp_path / "named", tmp_path / "elsewhere"
    named.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(named)

    def move_away(progress: ExportProgress) -> None:
        if progress.pages == 1:
            os.chdir(elsewhere)

    report = await export_customers(
        client,
        "customers.jsonl",
        checkpoint="customers.ckpt" if with_checkpoint else None,
        page_size=100,
        progress=False,
        on_progress=move_away,
    )

    assert report.complete
    assert report.path == "customers.jsonl"  # as the caller named it
    assert files_in(named) == ["customers.jsonl"]
    assert files_in(elsewhere) == []
    assert ids_of(read_jsonl(named / "customers.jsonl")) == sim.customer_ids()


@pytest.mark.parametrize("where", ["under a file", "in a missing directory"])
@pytest.mark.parametrize("which", ["output", "checkpoint"])
async def test_a_path_whose_directory_is_missing_or_a_file_says_so_before_any_request(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, where: str, which: str
) -> None:
    # `export_customers(dm, "exports/june.jsonl")` before making exports/: "cannot write to
    # 'exports'", and not why; and where that name was a file (a report of the same name),
    # os.lstat's raw NotADirectoryError, past `except InvalidRequestError` (the command
    # line: exit 1, "Not a directory", as if the export had failed, not its flag).
    (tmp_path / "exports").write_text("a report\n", encoding="utf-8")
    folder = tmp_path / ("exports" if where == "under a file" else "missing")
    path = folder / ("june.jsonl" if which == "output" else "june.ckpt")
    dest = path if which == "output" else tmp_path / "june.jsonl"
    checkpoint = path if which == "checkpoint" else None
    sim.counters.reset()

    with pytest.raises(InvalidRequestError) as info:
        await export_customers(client, dest, checkpoint=checkpoint, progress=False)

    said = str(info.value)
    assert said.startswith(f"{which} {str(path)!r}: cannot write to {str(folder)!r}")
    if where == "under a file":
        assert said.endswith("which is not a directory")
    else:
        assert said.endswith("which does not exist: make it first")
    assert files_in(tmp_path) == ["exports"]
    assert sim.counters.total == 0


@pytest.mark.parametrize("which", ["output", "checkpoint"])
async def test_a_path_under_a_file_further_up_says_which_file_before_any_request(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, which: str
) -> None:
    # exports/2026/june.jsonl where exports is a file: "cannot write to 'exports/2026', which
    # does not exist: make it first", and `mkdir -p exports/2026` then failed "Not a
    # directory". The file in the way is named.
    (tmp_path / "exports").write_text("a report\n", encoding="utf-8")
    folder = tmp_path / "exports" / "2026"
    path = folder / ("june.jsonl" if which == "output" else "june.ckpt")
    dest = path if which == "output" else tmp_path / "june.jsonl"
    checkpoint = path if which == "checkpoint" else None
    sim.counters.reset()

    with pytest.raises(InvalidRequestError) as info:
        await export_customers(client, dest, checkpoint=checkpoint, progress=False)

    said = str(info.value)
    assert said.startswith(f"{which} {str(path)!r}: cannot write to {str(folder)!r}")
    assert said.endswith(f"under {str(tmp_path / 'exports')!r}, which is not a directory")
    assert "make it first" not in said
    assert files_in(tmp_path) == ["exports"]
    assert sim.counters.total == 0


@pytest.mark.parametrize("which", ["output", "checkpoint"])
@pytest.mark.parametrize("depth", ["in it", "further down"])
async def test_a_path_through_a_link_loop_is_refused_naming_the_link_before_any_request(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, which: str, depth: str
) -> None:
    # exports/june.jsonl where exports is a link that leads back to itself (a link to itself,
    # two to each other): a raw "OSError: [Errno 40] Too many levels of symbolic links" out of
    # export_customers, naming no link to mend.
    (tmp_path / "exports").symlink_to(tmp_path / "exports")
    folder = tmp_path / "exports" if depth == "in it" else tmp_path / "exports" / "2026"
    path = folder / ("june.jsonl" if which == "output" else "june.ckpt")
    dest = path if which == "output" else tmp_path / "june.jsonl"
    checkpoint = path if which == "checkpoint" else None
    sim.counters.reset()

    with pytest.raises(InvalidRequestError) as info:
        await export_customers(client, dest, checkpoint=checkpoint, progress=False)

    under = "" if depth == "in it" else f" under {str(tmp_path / 'exports')!r},"
    assert str(info.value) == (
        f"{which} {str(path)!r}: cannot write to {str(folder)!r},{under} a symbolic link that"
        " leads back to itself (a loop): mend the link, or give another path"
    )
    assert files_in(tmp_path) == ["exports"]
    assert sim.counters.total == 0


@pytest.mark.parametrize("depth", ["in it", "further down"])
def test_an_output_under_a_directory_it_cannot_enter_is_refused_naming_it(
    tmp_path: Path, depth: str
) -> None:
    # An output in (or below) a directory this user may not enter: a raw PermissionError of
    # os.lstat out of export_customers, naming no directory to fix (a missing one is named).
    locked = tmp_path / "locked"
    locked.mkdir()
    folder = locked if depth == "in it" else locked / "2026"
    path = folder / "june.jsonl"

    said = export_under_unenterable("export_customers", locked, path)

    assert said == (
        f"refused: output {str(path)!r}: cannot write to {str(folder)!r}, permission denied:"
        f" this user cannot enter {str(locked)!r}"
    )
    assert os.listdir(locked) == []


def test_an_output_in_a_directory_it_cannot_write_to_says_why_and_what_to_do(
    tmp_path: Path,
) -> None:
    # An output in a directory read-only to this user (mode 555, as a user for whom it
    # binds): "output '/x/archive/june.jsonl': cannot write to '/x/archive'", saying neither
    # why nor what to do, where the other refusals of the path do.
    locked = tmp_path / "archive"
    locked.mkdir()
    path = locked / "june.jsonl"

    said = export_under_unenterable("export_customers", locked, path, mode=0o555)

    assert said == (
        f"refused: output {str(path)!r}: cannot write to {str(locked)!r}, which this user may"
        " not write in (its mode, or a read-only file system): give a directory it can write to"
    )
    assert os.listdir(locked) == []


async def test_outputs_that_cannot_be_written_are_refused_before_any_request(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    dest = tmp_path / "customers.jsonl"
    dest.write_text("yesterday's export\n", encoding="utf-8")
    (tmp_path / "a-directory").mkdir()
    sim.counters.reset()

    with pytest.raises(InvalidRequestError, match=r"^output .* is a directory"):
        await export_customers(client, tmp_path / "a-directory", progress=False)
    # Which of the two paths: a checkpoint from an unset setting ("") was "'.' is a
    # directory, not a file", and the output blamed.
    with pytest.raises(InvalidRequestError, match=r"^checkpoint '\.' is a directory"):
        await export_customers(client, dest, checkpoint="", progress=False)
    with pytest.raises(InvalidRequestError, match=r"^checkpoint .*c\.ckpt.*: cannot write to"):
        await export_customers(client, dest, checkpoint=tmp_path / "no" / "c.ckpt", progress=False)
    # A NUL in a path no file system takes: os.lstat's raw "ValueError: embedded null byte".
    with pytest.raises(InvalidRequestError, match=r"^output .* holds a NUL character"):
        await export_customers(client, f"{tmp_path}/a\x00.jsonl", progress=False)
    with pytest.raises(InvalidRequestError, match=r"^checkpoint .* holds a NUL character"):
        await export_customers(client, dest, checkpoint=f"{tmp_path}/c\x00", progress=False)

    assert dest.read_text(encoding="utf-8") == "yesterday's export\n"
    assert files_in(tmp_path) == ["a-directory", "customers.jsonl"]
    assert sim.counters.total == 0


async def test_a_checkpoint_of_another_export_is_refused(
    client: DMHubClient, tmp_path: Path
) -> None:
    dest = tmp_path / "lead.jsonl"
    ckpt = tmp_path / "export.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, stage="lead", progress=False, on_progress=crash_after(1)
        )
    before = dest.read_bytes()

    for other in ({"stage": "vip"}, {"stage": "lead", "format": "csv"}):
        with pytest.raises(InvalidRequestError, match="another export"):
            await export_customers(client, dest, checkpoint=ckpt, progress=False, **other)
    with pytest.raises(InvalidRequestError, match="another export"):
        await export_customers(
            client, tmp_path / "elsewhere.jsonl", checkpoint=ckpt, stage="lead", progress=False
        )
    ckpt_junk = tmp_path / "junk.ckpt"
    ckpt_junk.write_text("not json", encoding="utf-8")
    with pytest.raises(InvalidRequestError, match="not a checkpoint"):
        await export_customers(client, dest, checkpoint=ckpt_junk, progress=False)
    assert dest.read_bytes() == before  # nothing touched the half-done export


async def test_a_checkpoint_of_the_first_release_is_refused_with_what_to_do(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    """0.1's checkpoints (an untyped dict, version 1) recorded no service or app: they cannot
    be checked, so they are refused, saying how to go on."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    dest.write_bytes(b'{"id": 3000000001}\n')
    old = {"version": 1, "fingerprint": "0123456789abcdef", "next_page": 2, "page_size": 1}
    ckpt.write_text(json.dumps({**old, "last_id": 3000000001, "bytes": 19}), encoding="utf-8")
    sim.counters.reset()

    with pytest.raises(InvalidRequestError, match=r"written by dmhub-async 0\.1.*start over"):
        await export_customers(client, dest, checkpoint=ckpt, progress=False)

    assert dest.read_bytes() == b'{"id": 3000000001}\n'
    assert sim.counters.total == 0


async def test_a_checkpoint_of_a_later_release_is_refused_saying_so(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    """A checkpoint of the next version (a later release began the export, or the shard, in a
    rolling upgrade) was "not a checkpoint file", and a user deleted it and started over."""
    from dmhub_async.export._checkpoint import CHECKPOINT_VERSION

    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    dest.write_bytes(b'{"id": 3000000001}\n')
    later = {"version": CHECKPOINT_VERSION + 1, "scope": {}, "bytes": 19}
    ckpt.write_text(json.dumps(later), encoding="utf-8")
    sim.counters.reset()

    with pytest.raises(InvalidRequestError) as refused:
        await export_customers(client, dest, checkpoint=ckpt, progress=False)

    said = str(refused.value)
    assert "a later release of dmhub_async" in said
    assert f"checkpoint version {CHECKPOINT_VERSION + 1}" in said
    assert dest.read_bytes() == b'{"id": 3000000001}\n'
    assert ckpt.exists()
    assert sim.counters.total == 0


# -- the data changes during the export -------------------------------------------------------


async def test_an_export_that_ends_in_mismatch_keeps_its_checkpoint_for_the_rerun(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # A sign-up at every count: the counts never agree, and the final check cannot pass. The
    # report says MISMATCH, run it again: the checkpoint stays for that rerun (removed, the
    # rerun found a file and no checkpoint, as after a complete export), which takes the
    # file up and completes it.
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"

    def sign_up_at_each_count(request: Any) -> None:
        if request.path == "/v1/customers/count":
            sim.add_customers(1)

    sim.on_request(sign_up_at_each_count)
    report = await export_customers(client, dest, checkpoint=ckpt, page_size=100, progress=False)
    assert not report.complete
    assert "MISMATCH" in report.summary()
    assert ckpt.exists()
    sim.clear_hooks()
    again = await export_customers(client, dest, checkpoint=ckpt, page_size=100, progress=False)
    assert again.resumed
    assert again.complete
    assert not ckpt.exists()
    assert_once_each(ids_of(read_jsonl(dest)), sim.customer_ids())


@pytest.mark.parametrize("front", [True, False], ids=["ahead of the cursor", "anywhere"])
@pytest.mark.parametrize(
    ("every", "inserts", "deletes"),
    [(5, 3, 2), (2, 7, 5)],
    ids=["some churn", "churn on every other request"],
)
async def test_inserts_and_deletes_during_the_export(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    front: bool,
    every: int,
    inserts: int,
    deletes: int,
) -> None:
    before = set(sim.customer_ids())
    sim.mutate_every(every, inserts=inserts, deletes=deletes, front=front)
    dest = tmp_path / "moving.jsonl"

    report = await export_customers(client, dest, page_size=50, concurrency=4, progress=False)

    after = set(sim.customer_ids())
    assert sim.counters.mutations > 0
    ids = ids_of(read_jsonl(dest))
    assert len(ids) == len(set(ids)) == report.exported  # nothing repeated
    walked = ids[: len(ids) - report.recovered]
    assert walked == sorted(walked)  # the walk in id order; what the final check found after it
    assert sorted((before & after) - set(ids)) == []  # every customer that lived throughout
    # Nothing invented: an id not there before or after must have been inserted (below the
    # lowest id with front inserts, above the highest otherwise) and maybe deleted since.
    lowest, highest = min(before), max(before)
    invented = [i for i in ids if i not in before and i not in after and lowest < i <= highest]
    assert invented == []
    assert report.count_before == len(before)
    assert report.count_after == len(after)
    assert report.count_before != report.count_after
    assert report.verified is not None  # the counts moved: the final check ran
    # Complete means checked: every customer the service holds at the end is in the file.
    assert report.complete == report.verified
    if report.complete:
        assert sorted(after - set(ids)) == []
    else:
        assert "MISMATCH" in report.summary()


def test_report_summary_and_completeness() -> None:
    report = ExportReport("x.jsonl", "jsonl", exported=10, count_before=10, count_after=10)
    assert report.complete
    assert "MISMATCH" not in report.summary()
    # Complete by the counts alone: said so, with what checks every id.
    assert "checked       by the counts alone" in report.summary()
    assert "--verify always" in report.summary()
    report.count_after = 12  # the counts moved and nothing checked the file: not complete
    assert not report.complete
    assert "MISMATCH" in report.summary()
    report.verified, report.recovered = True, 2  # the final check passed
    assert report.complete
    assert "MISMATCH" not in report.summary()
    assert "2 found missing" in report.summary()
    assert "by the counts alone" not in report.summary()
    report.verified = False
    assert not report.complete
    assert "MISMATCH" in report.summary()
    # A final check that failed decides, even with both counts equal to the customers written
    # (as many sign-ups as deletes while it ran).
    report.count_after = 10
    assert not report.complete
    assert "MISMATCH" in report.summary()


def test_a_report_of_one_says_it_in_the_singular() -> None:
    # "exported      1 customers", "1 repeated ids dropped", "(1 retries)".
    report = ExportReport(
        "x.jsonl", "jsonl", exported=1, duplicates=1, retries=1, count_before=1, count_after=1
    )
    summary = report.summary()
    assert "exported      1 customer to x.jsonl (jsonl)" in summary
    assert "duplicates    1 repeated id dropped" in summary
    assert "(1 retry)" in summary


def test_the_readme_example_exports_and_reports(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    [code] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "leads.ckpt" in b]
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert files_in(tmp_path) == ["leads.csv"]  # the checkpoint is gone once done
    rows = read_csv(tmp_path / "leads.csv")
    assert rows
    assert {row["stage"] for row in rows} == {"lead"}
    assert f"exported      {len(rows)} customers to leads.csv (csv)" in result.stdout


async def test_a_csv_with_a_field_past_csvs_limit_resumes(tmp_path: Path) -> None:
    # csv.reader refuses a field over 131,072 characters: the resume read the file back as
    # 5 records where the checkpoint said 200, and refused it as changed by someone else.
    async with (
        DMHubSimulator(customers=0) as sim,
        DMHubClient(
            sim.app_id, sim.secret, base_url=sim.url, token_store=MemoryTokenStore()
        ) as client,
    ):
        for index in range(300):
            long = index == 5
            sim.insert_customer({"name": f"c{index}", "remark": "x" * 140_000 if long else ""})
        await _export_long_csv(sim, client, tmp_path)


async def _export_long_csv(sim: DMHubSimulator, client: DMHubClient, tmp_path: Path) -> None:
    dest, ckpt = tmp_path / "long.csv", tmp_path / "export.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client,
            dest,
            checkpoint=ckpt,
            page_size=100,
            concurrency=1,
            progress=False,
            on_progress=crash_after(2),
        )
    limit = csv.field_size_limit()

    report = await export_customers(
        client, dest, checkpoint=ckpt, page_size=100, concurrency=1, progress=False
    )

    assert report.resumed
    assert report.complete
    assert csv.field_size_limit() == limit  # the process's own limit, as it was
    csv.field_size_limit(2**31 - 1)
    try:
        assert ids_of(read_csv(dest)) == sim.customer_ids()
    finally:
        csv.field_size_limit(limit)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_a_lone_surrogate_sent_by_the_service_is_the_sdks_error_and_resumable(
    sim: DMHubSimulator,
    client: DMHubClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    # JSON may carry "\ud83d" alone (an emoji cut in half by a service counting UTF-16 units),
    # which UTF-8 cannot hold. JSONL refused the page (ResponseDecodeError); the CSV writer
    # raised a raw UnicodeEncodeError from inside the export, naming no customer.
    from aiohttp import web

    from dmhub_async import ResponseDecodeError, _json
    from dmhub_async.testing import _app

    def json_response(data: Any, status: int = 200) -> web.Response:
        body = _json.dumps(data).replace(b"<HALF>", b"\\ud83d")
        return web.Response(body=body, status=status, content_type="application/json")

    monkeypatch.setattr(_app, "json_response", json_response)
    bad = sim.insert_customer({"name": "cut <HALF> here"})  # the highest id: the last page
    dest, ckpt = tmp_path / f"customers.{fmt}", tmp_path / "export.ckpt"

    with pytest.raises(ResponseDecodeError) as caught:
        await export_customers(client, dest, checkpoint=ckpt, page_size=100, progress=False)
    if fmt == "csv":
        assert f"customer {bad['id']}" in str(caught.value)
        assert "field 'displayName'" in str(caught.value)  # the simulator copies name there
    assert ckpt.exists()  # the pages before it are kept

    sim.delete_customer(bad["id"])  # the service repaired: the same call resumes
    sim.insert_customer({"name": "cut here"}, customer_id=bad["id"])
    report = await export_customers(client, dest, checkpoint=ckpt, page_size=100, progress=False)

    rows = read_jsonl(dest) if fmt == "jsonl" else read_csv(dest)
    assert ids_of(rows) == sim.customer_ids()
    assert report.resumed
    assert report.complete


#: ``attr`` values that are no JSON object, as list() refuses them ("expected an object").
NOT_AN_OBJECT = {
    "text": "abc",
    "number": 5,
    "pairs": ["ab", "cd"],
    "empty list": [],
    "false": False,
}


@pytest.mark.parametrize("attr", list(NOT_AN_OBJECT.values()), ids=list(NOT_AN_OBJECT))
@pytest.mark.parametrize("page", ["first", "later"])
def test_an_attr_that_is_no_object_stops_the_csv_naming_the_customer(attr: Any, page: str) -> None:
    # dict(attr) raised a raw ValueError ("abc") or TypeError (5), wrote ["ab", "cd"] as
    # {"a": "b", "c": "d"}, and `or {}` dropped [] and false: the export called itself complete.
    from dmhub_async import ResponseDecodeError
    from dmhub_async.export._writers import CsvWriter

    writer = CsvWriter()
    if page == "later":  # the header is the first page's: a later page's attr meets the columns
        writer.encode([{"id": 1, "attr": {"k": "v"}}])
    with pytest.raises(ResponseDecodeError) as caught:
        writer.encode([{"id": 2, "attr": None}, {"id": 7, "attr": attr}])
    assert f"customer 7, field 'attr': expected an object, got {type(attr).__name__}" in str(
        caught.value
    )
    # A null attr, or none, is no refusal: no custom fields.
    assert writer.encode([{"id": 8, "attr": None}, {"id": 9}]).count(b"\r\n") == 2


async def test_an_attr_that_is_no_object_is_the_csv_exports_error(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiohttp import web

    from dmhub_async import ResponseDecodeError, _json
    from dmhub_async.testing import _app

    def json_response(data: Any, status: int = 200) -> web.Response:
        body = _json.dumps(data).replace(b'{"v":"<PAIRS>"}', b'["ab","cd"]')
        return web.Response(body=body, status=status, content_type="application/json")

    monkeypatch.setattr(_app, "json_response", json_response)
    bad = sim.insert_customer({"name": "x", "attr": {"v": "<PAIRS>"}})
    with pytest.raises(ResponseDecodeError, match=f"customer {bad['id']}, field 'attr'"):
        await export_customers(client, tmp_path / "customers.csv", progress=False)
    with pytest.raises(ResponseDecodeError, match="field 'attr': expected an object, got list"):
        await client.customers.list().to_list()  # the same words


async def test_an_attr_nested_too_deep_for_a_cell_is_the_csv_exports_error(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # orjson reads JSON nested up to 1024 deep (list_rows() yields such a customer), but the
    # csv cell's json.dumps gives up near Python's recursion limit: the CSV export stopped on a
    # raw RecursionError from inside the writer, naming no customer (the CLI: a traceback).
    from aiohttp import web

    from dmhub_async import ResponseDecodeError, _json
    from dmhub_async.testing import _app

    depth = 1010
    deep = b"[" * depth + b"]" * depth

    def json_response(data: Any, status: int = 200) -> web.Response:
        body = _json.dumps(data).replace(b'"<DEEP>"', deep)
        return web.Response(body=body, status=status, content_type="application/json")

    monkeypatch.setattr(_app, "json_response", json_response)
    bad = sim.insert_customer({"name": "x", "attr": {"v": "<DEEP>"}})
    dest, ckpt = tmp_path / "customers.csv", tmp_path / "export.ckpt"
    assert bad["id"] in [row["id"] async for row in client.customers.list_rows()]

    try:  # how deep this Python's json writes: 3.13's goes past orjson's 1024, 3.11's not
        json.dumps(json.loads(deep))
    except RecursionError:
        pass
    else:  # the cell is written, as every other
        report = await export_customers(client, dest, page_size=100, progress=False)
        assert report.complete
        assert deep.decode() in dest.read_text(encoding="utf-8").replace('""', '"')
        return
    with pytest.raises(ResponseDecodeError) as caught:
        await export_customers(client, dest, checkpoint=ckpt, page_size=100, progress=False)
    assert f"customer {bad['id']}'s field 'attr'" in str(caught.value)
    assert "nested" in str(caught.value)
    assert ckpt.exists()  # the pages before it are kept


async def test_a_nul_sent_by_the_service_is_written_or_the_sdks_error(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # JSON may carry "\u0000" in a name. Python 3.10's csv cannot write a NUL at all: the CSV
    # export stopped on a raw `_csv.Error: need to escape, but no escapechar set` naming no
    # customer (the CLI: a traceback). Python 3.11 and later write it as it came.
    from dmhub_async import ResponseDecodeError

    bad = sim.insert_customer({"name": "张\x00三"})
    dest = tmp_path / "customers.csv"

    if sys.version_info >= (3, 11):
        report = await export_customers(client, dest, progress=False)
        assert report.complete
        assert [r["name"] for r in read_csv(dest) if r["id"] == str(bad["id"])] == ["张\x00三"]
    else:
        with pytest.raises(ResponseDecodeError) as caught:
            await export_customers(client, dest, progress=False)
        assert f"customer {bad['id']}" in str(caught.value)
        assert "NUL" in str(caught.value)


async def test_a_work_file_that_cannot_be_made_names_the_destination(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The directory full (or not writable): mkstemp's error named the hidden work file
    # `.customers.jsonl.xxxxxxxx.part`, which the user never asked for, not the destination.
    dest = tmp_path / "customers.jsonl"
    temporary_files_cannot_be_made(monkeypatch, tmp_path / f".{dest.name}.x.part")

    with pytest.raises(OSError, match="No space left on device") as raised:
        await export_customers(client, dest, progress=False)

    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(dest)
    assert files_in(tmp_path) == []


async def test_a_checkpoint_of_other_filters_is_refused_naming_them_as_given(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # The refusal quoted the walks' query strings ("filters: {'select': 'id,dateJoin',
    # 'dateCreatedFrom': ...}"): the wire's names, which the caller never typed, and every
    # filter of both, the one that differs to be found by eye.
    dest, ckpt = tmp_path / "out.jsonl", tmp_path / "out.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client,
            dest,
            checkpoint=ckpt,
            page_size=50,
            progress=False,
            on_progress=crash_after(1),
            select=["date_join", "mobile"],
            date_created_from="2000-01-01T00:00:00Z",
            source="wechat",
        )

    with pytest.raises(InvalidRequestError) as refused:
        await export_customers(
            client,
            dest,
            checkpoint=ckpt,
            progress=False,
            select=["date_join"],
            date_created_from="2001-01-01T00:00:00Z",
            source="wechat",
            gender=1,
        )

    said = str(refused.value)
    assert "select: 'id,date_join,mobile' in the checkpoint, 'id,date_join' now" in said, said
    assert (
        "date_created_from: '2000-01-01T00:00:00' in the checkpoint, '2001-01-01T00:00:00' now"
    ) in said, said
    assert "gender: none in the checkpoint, '1' now" in said, said
    assert "source" not in said  # the same in both
    for wire in ("dateJoin", "dateCreatedFrom", "filters:"):
        assert wire not in said, said


async def test_a_checkpoint_whose_long_id_list_is_no_ids_is_refused_as_no_checkpoint(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    """A checkpoint edited (or damaged) so that its recorded id list, too long to be kept
    whole, holds something other than ids stopped the resume with a raw "ValueError: invalid
    literal for int()" (a traceback on the command line): it is no checkpoint this SDK wrote."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    sim.faults.paths = ("GET /v1/customers",)
    sim.faults.script(["ok", "reset"])
    with pytest.raises(APIConnectionError):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=10, concurrency=1, progress=False
        )
    sim.faults.clear()
    data = json.loads(ckpt.read_text(encoding="utf-8"))
    data["scope"]["filters"]["idList"] = ",".join(["x"] * 3_000)
    ckpt.write_text(json.dumps(data), encoding="utf-8")
    written = dest.read_bytes()
    sim.counters.reset()

    with pytest.raises(InvalidRequestError, match=r"export\.ckpt'? is not a checkpoint file"):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=10, concurrency=1, progress=False
        )

    assert dest.read_bytes() == written
    assert sim.counters.total == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("last_id", "abc"),  # a raw TypeError, compared with the ids read back
        ("last_id", [1]),
        ("last_id", True),
        ("page_size", 0),  # "page_size must be an int from 1 to ...": the caller gave 10
        ("page_size", -3),
        ("next_page", 10**30),  # "start_page must be ...": a parameter no caller gave
        ("bytes", -1),
        ("exported", -1),
        ("duplicates", -5),  # reported as -5 repeated ids dropped
        ("count_before", -4),  # reported as the service's count
    ],
)
async def test_a_checkpoint_edited_to_values_no_export_writes_is_refused_as_no_checkpoint(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, field: str, value: Any
) -> None:
    """A checkpoint edited (or damaged) to hold a value no export writes: a last id that is no
    integer stopped the resume with a raw TypeError ('<=' not supported between 'int' and
    'str', a traceback on the command line); a page size or next page out of range, with an
    error about the caller's own page_size or a start_page it never gave; negative counts
    were taken and reported. It is no checkpoint this SDK wrote, refused before any request."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=10, progress=False, on_progress=crash_after(2)
        )
    data = json.loads(ckpt.read_text(encoding="utf-8"))
    data[field] = value
    ckpt.write_text(json.dumps(data), encoding="utf-8")
    written = dest.read_bytes()
    sim.counters.reset()

    with pytest.raises(InvalidRequestError, match=r"export\.ckpt'? is not a checkpoint file"):
        await export_customers(client, dest, checkpoint=ckpt, page_size=10, progress=False)

    assert dest.read_bytes() == written
    assert sim.counters.total == 0


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: data[: len(data) // 2], id="cut short"),
        pytest.param(lambda data: bytes(range(256)), id="binary"),
    ],
)
async def test_a_damaged_checkpoint_is_refused_saying_what_to_do(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, damage: Any
) -> None:
    """A checkpoint empty, cut short or overwritten (a copy interrupted, a file system that
    lost it in a crash) was refused as "not a checkpoint file", and no more: every other
    refusal of a checkpoint says what to do, this one left the user guessing whether the
    output could be kept. It says so now, before any request, the output untouched."""
    dest, ckpt = tmp_path / "customers.jsonl", tmp_path / "export.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=10, progress=False, on_progress=crash_after(2)
        )
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    written = dest.read_bytes()
    sim.counters.reset()

    with pytest.raises(InvalidRequestError, match=r"is not a checkpoint file") as refused:
        await export_customers(client, dest, checkpoint=ckpt, page_size=10, progress=False)

    assert "delete it to start over" in str(refused.value)
    assert dest.read_bytes() == written
    assert sim.counters.total == 0

    ckpt.unlink()  # as it says: the export starts over, and replaces the output
    report = await export_customers(client, dest, checkpoint=ckpt, page_size=10, progress=False)
    assert report.complete
    assert not report.resumed
    assert [json.loads(line)["id"] for line in dest.read_bytes().splitlines()] == sim.customer_ids()


async def test_a_checkpoint_moved_with_its_output_resumes_but_never_another_outputs(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path
) -> None:
    # A file and its checkpoint moved together resume in their new place (1d4f3a1, for a
    # moved shards directory); a checkpoint kept elsewhere than its output was taken, by its
    # name alone, for an output of that name beside it: `--out /x/out.jsonl --checkpoint
    # /y/out.ckpt`, then `--out /y/out.jsonl` with that checkpoint, resumed into a file the
    # checkpoint was never about. Only an output that is gone from the recorded place moved.
    (first := tmp_path / "first").mkdir()
    (other := tmp_path / "other").mkdir()
    dest, ckpt = first / "out.jsonl", other / "out.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=50, progress=False, on_progress=crash_after(2)
        )

    with pytest.raises(InvalidRequestError, match="belongs to another export"):
        await export_customers(client, other / "out.jsonl", checkpoint=ckpt, progress=False)
    assert not (other / "out.jsonl").exists()
    # Gone from the recorded place, an output of that name elsewhere than beside the
    # checkpoint is not it moved: matched by the name alone, it was resumed.
    (third := tmp_path / "third").mkdir()
    dest.rename(third / "out.jsonl")
    kept = (third / "out.jsonl").read_bytes()
    with pytest.raises(InvalidRequestError, match="belongs to another export"):
        await export_customers(client, third / "out.jsonl", checkpoint=ckpt, progress=False)
    assert (third / "out.jsonl").read_bytes() == kept
    (third / "out.jsonl").rename(dest)

    (moved := tmp_path / "moved").mkdir()
    dest.rename(moved / "out.jsonl")
    ckpt.rename(moved / "out.ckpt")
    report = await export_customers(
        client, moved / "out.jsonl", checkpoint=moved / "out.ckpt", page_size=50, progress=False
    )

    assert report.resumed
    assert report.complete
    assert [json.loads(line)["id"] for line in (moved / "out.jsonl").read_bytes().splitlines()] == (
        sim.customer_ids()
    )


async def test_a_path_led_by_tilde_in_the_library_is_refused_naming_the_home_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python expands no ~: export_sharded(dm, "~/parts") made a directory named "~" where the
    # program ran and wrote the export there; export_customers(dm, "~/june.jsonl") was told
    # "--out ~/x, not --out=~/x", a command line's flag, of a function's argument.
    from dmhub_async.shards import export_sharded

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    async with (
        DMHubSimulator(customers=3) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        with pytest.raises(InvalidRequestError) as sharded:
            await export_sharded(dm, "~/parts", shards=2)
        with pytest.raises(InvalidRequestError) as single:
            await export_customers(dm, "june.jsonl", checkpoint="~/june.ckpt")
    assert str(sharded.value) == (
        "directory '~/parts': a leading ~ is not expanded here (Python takes a path as"
        f" written: os.path.expanduser() expands it): give {str(home / 'parts')!r}"
    )
    assert str(single.value) == (
        "checkpoint '~/june.ckpt': cannot write to '~', which does not exist: a leading ~ is"
        " not expanded here (Python takes a path as written: os.path.expanduser() expands"
        f" it): give {str(home / 'june.ckpt')!r}"
    )
    assert list(work.iterdir()) == []
    assert list(home.iterdir()) == []
    assert sim.counters.total == 0


@pytest.mark.parametrize("given", ["output", "checkpoint"])
async def test_a_path_named_too_long_for_the_files_beside_it_is_refused_before_anything_is_sent(
    tmp_path: Path, given: str
) -> None:
    # 80 Chinese characters and a suffix (245, 246 bytes, under a file system's 255): a raw
    # "OSError: [Errno 36] File name too long" of the hidden file named after it (the output's
    # ".NAME.xxxxxxxx.part" before the first request, the checkpoint's ".tmp" once the first
    # page was read), naming the user's own name.
    name = "\u5ba2" * 80
    out, ckpt = tmp_path / "june.jsonl", tmp_path / "june.ckpt"
    if given == "output":
        out = tmp_path / f"{name}.jsonl"
    else:
        ckpt = tmp_path / f"{name}.ckpt"
    async with (
        DMHubSimulator(customers=3) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        with pytest.raises(InvalidRequestError) as refused:
            await export_customers(dm, out, checkpoint=ckpt, progress=False)
    path = out if given == "output" else ckpt
    beside = 15 if given == "output" else 14  # its ".part", the checkpoint's ".tmp"
    assert str(refused.value) == (
        f"{given} {str(path)!r}: cannot write to it: its name of {len(path.name.encode())}"
        f" bytes is too long for the hidden files written beside it, named after it with {beside}"
        f" bytes more (a name here holds 255): give a name of at most {255 - beside} bytes"
    )
    assert os.listdir(tmp_path) == []
    assert sim.counters.total == 0


@pytest.mark.parametrize("longest", [14, 15])
async def test_a_file_system_whose_names_leave_no_room_beside_one_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, longest: int
) -> None:
    # A file system whose names hold 14 or 15 bytes (System V's, a FAT volume without long
    # names), under the 15 an output's ".NAME.xxxxxxxx.part" adds: "give a name of at most -1
    # bytes" (0 bytes at 15), a length no name has.
    pathconf = os.pathconf
    monkeypatch.setattr(
        os, "pathconf", lambda p, n: longest if n == "PC_NAME_MAX" else pathconf(p, n)
    )
    async with (
        DMHubSimulator(customers=3) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        with pytest.raises(InvalidRequestError) as refused:
            await export_customers(dm, tmp_path / "a.jsonl", progress=False)
    assert str(refused.value) == (
        f"output {str(tmp_path / 'a.jsonl')!r}: cannot write to it: the hidden files written"
        f" beside it are named after it with 15 bytes more, and a name here holds {longest}:"
        " give a path on a file system whose names hold more"
    )
    assert os.listdir(tmp_path) == []
    assert sim.counters.total == 0


async def test_a_path_named_as_long_as_the_files_beside_it_leave_room_for_is_written(
    tmp_path: Path,
) -> None:
    # The refusal above says "give a name of at most 240 bytes": one of 240 is taken, and its
    # hidden files beside it (255 bytes) are written.
    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("a file system whose names hold other than 255 bytes")
    out = tmp_path / ("x" * (240 - len(".jsonl")) + ".jsonl")
    ckpt = tmp_path / ("y" * (240 - len(".ckpt")) + ".ckpt")
    async with (
        DMHubSimulator(customers=3) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        await export_customers(dm, out, checkpoint=ckpt, progress=False)
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.skipif(
    sys.platform in ("win32", "darwin"), reason="a file system naming files in bytes alone"
)
@pytest.mark.parametrize("where", ["its directory", "its name"])
async def test_an_export_whose_path_is_not_utf8_resumes_from_its_checkpoint(
    sim: DMHubSimulator, client: DMHubClient, tmp_path: Path, where: str
) -> None:
    # A name of bytes that are no UTF-8 (a Latin-1 archive's "r\xe9sultats"), as os.listdir()
    # and the command line give it (surrogateescape): taken, then the first checkpoint, which
    # records the output's path, raised a raw "TypeError: str is not valid UTF-8: surrogates
    # not allowed" once the first page was read, and a resume could never be.
    latin = os.fsdecode(b"r\xe9sultats")
    if where == "its directory":
        (tmp_path / latin).mkdir()
        dest, ckpt = tmp_path / latin / "june.jsonl", tmp_path / latin / "june.ckpt"
    else:
        dest, ckpt = tmp_path / f"{latin}.jsonl", tmp_path / f"{latin}.ckpt"
    with pytest.raises(Crash):
        await export_customers(
            client, dest, checkpoint=ckpt, page_size=50, progress=False, on_progress=crash_after(2)
        )

    report = await export_customers(client, dest, checkpoint=ckpt, page_size=50, progress=False)

    assert (report.resumed, report.complete) == (True, True)
    assert ids_of(read_jsonl(dest)) == sim.customer_ids()
    assert not ckpt.exists()


@pytest.mark.parametrize("char", ["\x00", "\ud83d"], ids=["NUL", "lone surrogate"])
@pytest.mark.parametrize("given", ["output", "checkpoint", "sharded", "merged", "merge's dest"])
async def test_a_path_no_file_can_be_named_is_refused_saying_what_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, char: str, given: str
) -> None:
    # Half of an emoji (a name cut in two, or decoded with surrogatepass) was said to be "a NUL
    # character" by export_customers, and came out of export_sharded() and merge() as a raw
    # UnicodeEncodeError, as a NUL did as a raw "ValueError: embedded null byte".
    from dmhub_async.shards import export_sharded, merge

    monkeypatch.chdir(tmp_path)
    name = f"ju{char}ne"  # within the name: what it holds is said alone, not what follows
    async with (
        DMHubSimulator(customers=3) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        call = {
            "output": lambda: export_customers(dm, name, format="jsonl", progress=False),
            "checkpoint": lambda: export_customers(
                dm, "june.jsonl", checkpoint=name, progress=False
            ),
            "sharded": lambda: export_sharded(dm, name, shards=2),
            "merged": lambda: merge(name, "june.jsonl"),
            "merge's dest": lambda: merge("parts", name),
        }[given]
        with pytest.raises(InvalidRequestError) as refused:
            await call()
    said = {
        "\x00": "holds a NUL character, which no file name can",
        "\ud83d": "holds '\\ud83d', which no file name here can (the file system's utf-8 cannot"
        " write it)",
    }[char]
    where = {
        "output": "output",
        "checkpoint": "checkpoint",
        "sharded": "export_sharded(): directory",
        "merged": "merge(): directory",
        "merge's dest": "merge(): dest",
    }[given]
    assert str(refused.value) == f"{where} {name!r} {said}"
    assert os.listdir(tmp_path) == []
    assert sim.counters.total == 0
