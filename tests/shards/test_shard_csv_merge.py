"""A sharded CSV export merges into one CSV whatever `attr` keys each part's first page had.

A CSV part's ``attr.*`` columns are the keys of its own first page: with custom attributes
differing between windows, parts of one export had other headers, and ``merge`` refused the
export's own part ("has other columns than part-00000.csv: it is not this export's part").
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _cli_support import ServedSimulator, run_cli, served_env

from dmhub_async import DMHubClient, InvalidRequestError
from dmhub_async.shards import export_sharded, merge
from dmhub_async.testing import DMHubSimulator, FakeClock

pytestmark = pytest.mark.timeout(120)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the records (each by column name) of ``path``, every record as wide as
    the header."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, records = rows[0], rows[1:]
    assert all(len(record) == len(header) for record in records)
    return header, [dict(zip(header, record, strict=True)) for record in records]


def cell(value: Any) -> str:
    """A value as the CSV writer writes it in an ``attr.*`` cell."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def attr_of(record: dict[str, str]) -> dict[str, str]:
    """A merged record's custom attributes: its ``attr.*`` cells and its ``attr`` JSON cell."""
    found = {k[5:]: v for k, v in record.items() if k.startswith("attr.") and v != ""}
    for key, value in json.loads(record["attr"] or "{}").items():
        assert key not in found, (key, record)
        found[key] = cell(value)
    return found


@pytest.fixture
def served() -> Iterator[ServedSimulator]:
    # The colleague's case: 60 seeded customers (with attr1 and attr2) and one of attr={}.
    server = ServedSimulator(60, seed=5)
    server.start()
    try:
        server.call(server.sim.insert_customer, {"name": "no attributes", "attr": {}})
        yield server
    finally:
        server.stop()


def test_the_cli_merges_a_csv_export_whose_parts_have_other_attr_columns(
    served: ServedSimulator, tmp_path: Path
) -> None:
    env = served_env(served, tmp_path / "cache")
    out = tmp_path / "out"
    export = run_cli(
        "export",
        "--out",
        str(out),
        "--shards",
        "61",
        "--format",
        "csv",
        "-q",
        env=env,
        cwd=tmp_path,
    )
    assert export.returncode == 0, export.stderr
    headers = {part.read_bytes().split(b"\r\n", 1)[0] for part in out.glob("part-*.csv")}
    assert len(headers) > 1  # the case: parts of other attr.* columns

    merged = run_cli("merge", str(out), "--out", str(tmp_path / "all.csv"), env=env, cwd=tmp_path)

    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.startswith("merged 61 records from "), merged.stdout
    header, records = read_csv(tmp_path / "all.csv")
    assert header[-4:] == ["attr.attr1", "attr.attr2", "attr", "extra"]
    wanted = {row["id"]: row for row in served.rows()}
    assert sorted(int(r["id"]) for r in records) == sorted(wanted)
    for record in records:
        row = wanted[int(record["id"])]
        assert record["name"] == cell(row["name"])
        assert record["dateCreated"] == row["dateCreated"]
        # "" is the cell of a value of None or "": not said in the record
        wanted_attr = {k: cell(v) for k, v in (row.get("attr") or {}).items()}
        assert attr_of(record) == {k: v for k, v in wanted_attr.items() if v != ""}


async def test_a_key_kept_in_one_part_s_attr_json_goes_to_its_column(tmp_path: Path) -> None:
    # Part 0's first page has the key "a", part 1's "b": each part holds the other's key (first
    # seen after its first page) in its attr JSON cell. Merged, each key is in its column.
    clock = FakeClock()
    out = tmp_path / "out"
    attrs = [
        {"a": "1"},
        {"a": "2"},
        {"b": 7, "a": "3"},  # part 0's page 2: b in its JSON
        {},
        {"b": 'x\r\ny, "q"'},  # part 1's first page: b a column; a quoted line break
        {"b": "z"},
        {"a": "7", "c": Decimal("12345678901234567.89")},  # part 1's page 2: a (and c) in its JSON
        {"b": 1.5},
    ]
    async with DMHubSimulator(clock=clock) as sim:
        for i, attr in enumerate(attrs):
            remark = 'one\r\ntwo, "three"' if i == 4 else None
            sim.insert_customer({"name": f"c{i}", "remark": remark, "attr": attr})
            clock.advance(86_400)
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            manifest = await export_sharded(dm, out, 2, format="csv", page_size=2, progress=False)
    assert manifest.complete
    part_headers = [read_csv(out / s.file)[0] for s in manifest.shards]
    assert [[c for c in h if c.startswith("attr.")] for h in part_headers] == [
        ["attr.a"],
        ["attr.b"],
    ]

    assert merge(out, tmp_path / "all.csv") == len(attrs)

    header, records = read_csv(tmp_path / "all.csv")
    assert header == [*part_headers[0][:-3], "attr.a", "attr.b", "attr", "extra"]
    by_name = {r["name"]: r for r in records}
    assert [r["name"] for r in records] == [f"c{i}" for i in range(len(attrs))]
    assert (by_name["c2"]["attr.a"], by_name["c2"]["attr.b"], by_name["c2"]["attr"]) == (
        "3",
        "7",
        "",
    )
    assert (by_name["c6"]["attr.a"], by_name["c6"]["attr.b"]) == ("7", "")
    assert json.loads(by_name["c6"]["attr"], parse_float=Decimal) == {"c": attrs[6]["c"]}
    # every digit, as the writer writes a cell holding such a number (compact)
    assert by_name["c6"]["attr"] == '{"c":12345678901234567.89}'
    assert by_name["c4"]["attr.b"] == 'x\r\ny, "q"'
    assert by_name["c4"]["remark"] == 'one\r\ntwo, "three"'
    assert by_name["c7"]["attr.b"] == "1.5"
    assert all(r["extra"] == "" for r in records)


async def test_a_part_whose_columns_are_the_merged_ones_is_copied_as_it_is(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    async with DMHubSimulator(clock=clock) as sim:
        for i, attr in enumerate([{"a": "1"}, {"a": "2"}, {"a": 'q"\n', "b": "3"}, {"b": "4"}]):
            sim.insert_customer({"name": f"c{i}", "attr": attr})
            clock.advance(86_400)
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            manifest = await export_sharded(dm, out, 2, format="csv", page_size=2, progress=False)

    merge(out, tmp_path / "all.csv")

    # Part 0 (attr.a) is written again under attr.a,attr.b; part 1 (attr.a,attr.b) as it is.
    first, second = ((out / s.file).read_bytes() for s in manifest.shards)
    merged = (tmp_path / "all.csv").read_bytes()
    assert merged.startswith(second.split(b"\r\n", 1)[0])
    assert merged.endswith(second.split(b"\r\n", 1)[1])
    assert first.split(b"\r\n", 1)[1] not in merged


async def test_another_export_s_part_of_other_attr_columns_is_still_refused(
    tmp_path: Path,
) -> None:
    # Its columns differ only in attr.*, as this export's own parts may: its content, checked
    # against the SHA-256 the manifest records, still tells it from this export's.
    out, other = tmp_path / "out", tmp_path / "other"
    async with (
        DMHubSimulator(customers=200, seed=3) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        await export_sharded(dm, out, 2, format="csv", progress=False)
        for row_id in sim.customer_ids():
            await dm.customers.update(row_id, attr={"other": "x"})
        await export_sharded(dm, other, 2, format="csv", progress=False)
    theirs = (other / "part-00001.csv").read_bytes()
    assert theirs.split(b"\r\n", 1)[0] != (out / "part-00001.csv").read_bytes().split(b"\r\n")[0]
    (out / "part-00001.csv").write_bytes(theirs)

    with pytest.raises(InvalidRequestError, match=r"part-00001\.csv"):
        merge(out, tmp_path / "all.csv")
    assert not (tmp_path / "all.csv").exists()


async def _three_parts_the_last_with_its_own_attr(out: Path) -> Any:
    """A CSV export in 3 parts: parts 0 and 1 of attr key "a", part 2 of "c" alone."""
    clock = FakeClock()
    async with DMHubSimulator(clock=clock) as sim:
        for i, attr in enumerate([{"a": "1"}, {"a": "2"}, {"a": "3"}, {"a": "4"}, {"c": "5"}]):
            sim.insert_customer({"name": f"c{i}", "attr": attr})
            clock.advance(86_400)
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            manifest = await export_sharded(dm, out, 3, format="csv", progress=False)
    assert manifest.complete
    assert [s.exported for s in manifest.shards] == [2, 2, 1]
    return manifest


@pytest.mark.parametrize("how", ["complete, cut short", "failed, shorter than its checkpoint"])
async def test_a_part_left_out_adds_no_column_to_the_merged_header(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    # merge --allow-incomplete left out a part cut short since it was exported, but its
    # attr.* columns were in the merged header all the same: a column no merged record has,
    # of customers the file does not hold.
    out = tmp_path / "out"
    await _three_parts_the_last_with_its_own_attr(out)
    last = out / "part-00002.csv"
    if how.startswith("complete"):
        last.write_bytes(last.read_bytes()[:-3])  # cut short since: left out
    else:  # its shard failed, its checkpoint covering more than the part holds
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        manifest["shards"][2]["status"] = "failed"
        (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        (out / "part-00002.csv.ckpt").write_text(
            json.dumps({"bytes": last.stat().st_size + 1}), encoding="utf-8"
        )

    assert merge(out, tmp_path / "all.csv", allow_incomplete=True) == 4

    assert "part-00002.csv: left out" in caplog.text
    header, records = read_csv(tmp_path / "all.csv")
    assert [c for c in header if c.startswith("attr")] == ["attr.a", "attr"]
    assert [r["name"] for r in records] == ["c0", "c1", "c2", "c3"]
    # the parts merged are copied as they are: the merged header is theirs
    assert (tmp_path / "all.csv").read_bytes() == (out / "part-00000.csv").read_bytes() + (
        out / "part-00001.csv"
    ).read_bytes().split(b"\r\n", 1)[1]
