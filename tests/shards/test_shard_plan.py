"""plan_shards: disjoint dateCreated windows of about equal size, found with count probes."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from shard_support import exported_ids

from dmhub_async import (
    EMPTY_STAGE,
    DMHubClient,
    Gender,
    InvalidRequestError,
    NaiveDatetimeWarning,
    ServerError,
)
from dmhub_async.shards import (
    MAX_SHARDS,
    Manifest,
    Shard,
    export_sharded,
    late_check,
    merge,
    plan_directory,
    plan_shards,
    record_results,
)
from dmhub_async.shards._run import coordinating, prepare
from dmhub_async.testing import DMHubSimulator

IMPORT_SECOND = 1_591_000_000.0  # 2020-06-01T08:26:40Z


@pytest.fixture
async def sim() -> AsyncIterator[DMHubSimulator]:
    async with DMHubSimulator(customers=2_000) as simulator:
        yield simulator


@pytest.fixture
async def dm(sim: DMHubSimulator) -> AsyncIterator[DMHubClient]:
    async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as client:
        yield client


def in_window(shard: Shard, created: str) -> bool:
    moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    return (shard.start is None or moment >= shard.start) and (
        shard.end is None or moment < shard.end
    )


async def test_windows_are_disjoint_cover_everyone_and_are_about_equal(
    sim: DMHubSimulator, dm: DMHubClient
) -> None:
    shards = await plan_shards(dm, 8)

    assert [s.index for s in shards] == list(range(8))
    assert shards[0].start is None
    assert shards[-1].end is None
    assert all(a.end == b.start for a, b in itertools.pairwise(shards))
    for customer_id in sim.customer_ids():
        created = sim.customer(customer_id)["dateCreated"]  # type: ignore[index]
        assert sum(in_window(s, created) for s in shards) == 1
    assert sum(s.planned_count for s in shards) == 2_000
    assert all(240 <= s.planned_count <= 260 for s in shards), [s.planned_count for s in shards]
    # Bisection on every edge at once: rounds of ~log2(seconds since 1970), never a walk.
    assert dm.stats.requests < 200
    assert sim.counters.requests["/v1/customers"] == 0


async def test_exporting_every_shard_gives_every_customer_once(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    manifest = await export_sharded(dm, tmp_path / "out", 5, progress=False)

    assert manifest.complete
    assert manifest.exported == 2_000
    written = merge(tmp_path / "out", tmp_path / "all.jsonl")
    ids = [orjson.loads(line)["id"] for line in (tmp_path / "all.jsonl").read_bytes().splitlines()]
    assert written == 2_000
    assert sorted(ids) == sorted(sim.customer_ids())
    assert ids == sorted(ids, key=lambda i: ids.index(i))  # shard order, each part by id
    on_disk = Manifest.read(tmp_path / "out")
    assert on_disk is not None
    assert on_disk.status() == "complete"
    assert [s.file for s in on_disk.shards] == [f"part-{i:05d}.jsonl" for i in range(5)]


async def test_a_dense_second_of_a_little_more_than_a_share_is_noted_as_its_own_window() -> None:
    # docs/sharding.md: "a second that alone holds more than a share (a bulk import) becomes a
    # window of its own, said in the shard's `note`". 300 of 500 customers in one second with
    # --shards 2 (a share of 250) planned 3 windows, the dense one without a note: nothing said
    # why the plan had more shards than asked (a note came only past 1.5 shares).
    moments: list[float] = []

    def tick() -> float:
        return moments[-1] if moments else IMPORT_SECOND

    async with DMHubSimulator(clock=tick) as sim:
        for i in range(100):
            moments.append(IMPORT_SECOND - 3_000 * (100 - i))
            sim.insert_customer({"name": "before"})
        moments.append(IMPORT_SECOND)
        for _ in range(300):
            sim.insert_customer({"name": "imported"})
        for i in range(100):
            moments.append(IMPORT_SECOND + 3_000 * (i + 1))
            sim.insert_customer({"name": "after"})
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            plan = await plan_shards(dm, 2, now=datetime(2021, 1, 1, tzinfo=timezone.utc))

    assert [s.planned_count for s in plan] == [100, 300, 100]
    assert [s.note for s in plan] == [
        None,
        "300 customers were created within one second: this window cannot be split",
        None,
    ]


async def test_a_skewed_set_is_planned_exported_and_complete(tmp_path: Path) -> None:
    # 90% of the customers created in one import second: that second cannot be split. The
    # plan a minute after it (one within it leaves that second to the last window, open).
    now = [IMPORT_SECOND]
    async with DMHubSimulator(customers=200, clock=lambda: now[0]) as sim:
        for _ in range(1_800):
            sim.insert_customer({"name": "imported"})
        now[0] += 60
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            shards = await plan_shards(dm, 8)
            manifest = await export_sharded(dm, tmp_path / "out", 8, progress=False)
        ids = sim.customer_ids()

    heavy = [s for s in shards if s.planned_count >= 1_800]
    assert len(heavy) == 1
    assert heavy[0].note
    assert "one second" in heavy[0].note
    assert heavy[0].end is not None
    assert heavy[0].start is not None
    assert (heavy[0].end - heavy[0].start).total_seconds() == 1
    assert len(shards) < 8  # edges that fell together are one
    assert manifest.complete
    assert manifest.exported == 2_000
    merge(tmp_path / "out", tmp_path / "all.jsonl")
    exported = [orjson.loads(x)["id"] for x in (tmp_path / "all.jsonl").read_bytes().splitlines()]
    assert sorted(exported) == sorted(ids)


async def test_the_callers_filters_and_bounds_are_kept(
    sim: DMHubSimulator, dm: DMHubClient
) -> None:
    start = datetime(2016, 1, 2, tzinfo=timezone.utc)
    shards = await plan_shards(dm, 4, gender=Gender.FEMALE, date_created_from=start)

    assert shards[0].start == start
    assert shards[-1].end is None
    assert all(s.filters == {"gender": 2} for s in shards)
    expected = await dm.customers.count(gender=2, date_created_from=start)
    assert sum(s.planned_count for s in shards) == expected
    counted = [await dm.customers.count(**s.export_filters()) for s in shards]
    assert counted == [s.planned_count for s in shards]


async def test_an_empty_set_is_one_open_shard(sim: DMHubSimulator, dm: DMHubClient) -> None:
    shards = await plan_shards(dm, 8, email="nobody@example.invalid")
    assert len(shards) == 1
    assert (shards[0].start, shards[0].end, shards[0].planned_count) == (None, None, 0)


async def test_a_plan_from_a_service_whose_date_no_datetime_holds_is_made_as_without_one() -> None:
    # The plan reads its first count's Date (the service's clock). One whose hour is a number
    # no datetime holds raised email.utils' OverflowError, raw, after the count.
    async def huge_date(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Date"] = "Mon, 01 Jan 2026 99999999999999999999:00:00 GMT"

    sim = DMHubSimulator(customers=400)
    sim.app.on_response_prepare.append(huge_date)
    async with sim, DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
        shards = await plan_shards(dm, 4)

    assert sum(s.planned_count for s in shards) == 400
    assert len(shards) == 4
    assert shards[-1].end is None


async def test_a_shard_survives_json(sim: DMHubSimulator, dm: DMHubClient) -> None:
    shards = await plan_shards(dm, 3, stage="lead")
    assert [Shard.from_dict(orjson.loads(orjson.dumps(s.to_dict()))) for s in shards] == shards


@pytest.mark.parametrize("given", ["part-00000.jsonl", None, 5, [0, None, None]])
def test_a_shard_read_from_what_is_no_dict_is_refused_in_words(given: Any) -> None:
    # A task's argument of another kind (a broker's wrapping, the part's name): a raw
    # AttributeError ("'str' object has no attribute 'get'").
    with pytest.raises(InvalidRequestError, match=r"^not a shard: expected to_dict\(\)'s dict"):
        Shard.from_dict(given)


_UTC_2020 = datetime(2020, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "kwargs",
    [
        # Exported nothing and reported the shard complete.
        {"start": _UTC_2020 + timedelta(days=1), "end": _UTC_2020},
        {"start": _UTC_2020, "end": _UTC_2020},
        # Read in each worker's own time zone: workers in two zones lose or repeat customers.
        {"start": datetime(2020, 1, 1), "end": None},
        {"start": None, "end": "2020-01-01T00:00:00Z"},
        {"start": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23))), "end": None},
        {"index": -1},
        {"index": "0"},
        {"index": True},
        {"planned_count": -5},
        {"filters": ["stage"]},
        {"note": 5},
    ],
    ids=[
        "ends before it starts",
        "empty window",
        "naive start",
        "end a str",
        "start without UTC form",
        "index -1",
        "index a str",
        "index a bool",
        "planned_count -5",
        "filters a list",
        "note an int",
    ],
)
def test_a_shard_that_is_no_window_is_refused(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"index": 0, "start": None, "end": None} | kwargs
    with pytest.raises(InvalidRequestError, match=r"^Shard: "):
        Shard(**fields)


async def test_a_shard_in_another_zone_is_the_same_window_in_utc(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    planned = (await plan_shards(dm, 2))[1]
    assert planned.start is not None
    shanghai = timezone(timedelta(hours=8))
    moved = Shard(1, planned.start.astimezone(shanghai), None, planned.filters)

    assert moved.start == planned.start
    assert moved.start.tzinfo is timezone.utc
    assert moved.describe() == planned.describe()
    assert moved.export_filters() == planned.export_filters()


def test_a_window_of_the_first_centuries_is_described_in_iso_8601() -> None:
    # strftime's %Y writes the year 1 as "1" on Linux (as the filters' comment says of the
    # year 5): a plan from date(1, 1, 1) described its first shard "[1-01-01T00:00:00Z, ...)",
    # in the reports, logs and refusals that name it, a form no ISO 8601 reader takes.
    shard = Shard(0, datetime(1, 1, 1, tzinfo=timezone.utc), datetime(999, 12, 31, tzinfo=UTC8))

    assert shard.describe() == "[0001-01-01T00:00:00Z, 0999-12-30T16:00:00Z)"
    assert Shard(1, None, datetime(2024, 1, 1, 0, 0, 5, tzinfo=UTC8)).describe() == (
        "[-inf, 2023-12-31T16:00:05Z)"
    )


UTC8 = timezone(timedelta(hours=8))


async def test_a_sort_given_as_none_is_not_given(sim: DMHubSimulator, dm: DMHubClient) -> None:
    """None is "not given", as for every filter and in list(): the plan refused
    ``sort_order=None`` as a sort a sharded export does not take."""
    shards = await plan_shards(dm, 2, sort_by=None, sort_order=None)  # type: ignore[arg-type]
    assert sum(s.planned_count for s in shards) == 2_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": 10_000},
        {"n": "4"},
        {"n": 2, "sort_by": "id"},
        {"n": 2, "stage": 5},
        # Raw errors after the first count was sent: AttributeError, OverflowError.
        {"n": 2, "now": 5},
        {"n": 2, "now": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23)))},
        # A raw OverflowError after every count probe (CLI: a traceback): the last window
        # ends the second after this one, which no datetime holds.
        {"n": 2, "date_created_to": "9999-12-31T23:59:59+00:00"},
        {"n": 2, "date_created_to": datetime.max.replace(tzinfo=timezone.utc)},
    ],
    ids=[
        "n 0",
        "n 10,000",
        "n a str",
        "sort_by",
        "stage an int",
        "now an int",
        "now year 0",
        "to the last second",
        "to datetime.max",
    ],
)
async def test_bad_input_sends_nothing(
    sim: DMHubSimulator, dm: DMHubClient, kwargs: dict[str, object]
) -> None:
    with pytest.raises(InvalidRequestError):
        await plan_shards(dm, **kwargs)  # type: ignore[arg-type]
    assert dm.stats.requests == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        # Planned (counts sent, a manifest written), then every shard failed with the error.
        {"page_size": 0},
        {"concurrency": "1"},
        # A raw TypeError at the first progress, after the plan.
        {"on_total": 5},
        {"on_total": lambda done: None},
        # A raw ValueError: the message wrote out an integer of 5,000 digits.
        {"format": 10**5000},
        {"parallel": 0},
    ],
    ids=[
        "page_size 0",
        "concurrency a str",
        "on_total an int",
        "on_total of one argument",
        "format 5,000 digits",
        "parallel 0",
    ],
)
async def test_a_sharded_export_with_bad_input_sends_and_writes_nothing(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequestError):
        await export_sharded(dm, tmp_path / "out", 2, progress=False, **kwargs)
    assert dm.stats.requests == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("function", ["plan_shards", "export_sharded", "plan_directory"])
@pytest.mark.parametrize("rerun", [False, True], ids=["new", "rerun"])
async def test_a_misspelt_filter_is_named_as_the_sharding_functions_own_argument(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path, function: str, rerun: bool
) -> None:
    # `stag="lead"` for `stage`: the TypeError named `count()`, which the caller never called
    # (the plan's first probe), or on a rerun blamed the directory's other export's filters.
    out = tmp_path / "out"
    if rerun:
        await export_sharded(dm, out, 2, progress=False, stage="lead")
    before = dm.stats.requests
    manifest = (out / "manifest.json").read_bytes() if rerun else None
    misspelt: dict[str, Any] = {"stag": "lead"}
    calls = {
        "plan_shards": lambda: plan_shards(dm, 2, **misspelt),
        "export_sharded": lambda: export_sharded(dm, out, 2, progress=False, **misspelt),
        "plan_directory": lambda: plan_directory(dm, out, 2, **misspelt),
    }
    with pytest.raises(TypeError) as caught:
        await calls[function]()
    assert str(caught.value) == f"{function}() got an unexpected keyword argument 'stag'"
    assert dm.stats.requests == before
    if rerun:
        assert (out / "manifest.json").read_bytes() == manifest
    else:
        assert not out.exists()


@pytest.mark.parametrize("function", ["plan_shards", "export_sharded", "plan_directory"])
@pytest.mark.parametrize(
    ("filters", "said"),
    [
        ({"select": ["mobil"]}, "select: unknown customer field 'mobil' (did you mean 'mobile'?)"),
        ({"stage": 5}, "stage must be a string"),
        ({"gender": 7}, "gender must be 0, 1 or 2, not 7"),
        ({"email": "a@b.c\n"}, "email holds a control character"),
        ({"sort_by": "name"}, "sort_by not allowed: a sharded export walks by id"),
        (
            {"date_created_from": "garbage"},
            "date_created_from must be a datetime, a date or an ISO 8601 string, not 'garbage'",
        ),
        (
            {"last_updated_from": "2024-02-01T00:00Z", "last_updated_to": "2024-01-01T00:00Z"},
            "last_updated_to is before last_updated_from",
        ),
        (
            {"date_created_from": "2024-02-01T00:00Z", "date_created_to": "2024-01-01T00:00Z"},
            "date_created_to is before date_created_from",
        ),
        ({"id_list": [-1]}, "id_list[0]: customer id -1 is out of range"),
        ({"id_list": [1], "stage": 5}, "stage must be a string"),
    ],
    ids=[
        "select",
        "stage",
        "gender",
        "email",
        "sort_by",
        "a time",
        "updated range",
        "created range",
        "id",
        "stage beside ids",
    ],
)
async def test_a_bad_filter_is_refused_in_the_name_of_the_sharding_function_called(
    sim: DMHubSimulator,
    dm: DMHubClient,
    tmp_path: Path,
    function: str,
    filters: dict[str, Any],
    said: str,
) -> None:
    # export_sharded(select=["mobil"]) said "count(): select: ...", the plan's probe, and a
    # bad time or id "plan_shards(): ...": functions the caller never called, as
    # export_customers names itself ("export_customers(): select: ...").
    out = tmp_path / "out"
    calls = {
        "plan_shards": lambda: plan_shards(dm, 2, **filters),
        "export_sharded": lambda: export_sharded(dm, out, 2, progress=False, **filters),
        "plan_directory": lambda: plan_directory(dm, out, 2, **filters),
    }
    with pytest.raises(InvalidRequestError) as caught:
        await calls[function]()
    assert str(caught.value).startswith(f"{function}(): {said}")
    assert dm.stats.requests == 0
    assert not out.exists()


@pytest.mark.parametrize("given", [b"out", 5, None], ids=["bytes", "an int", "None"])
@pytest.mark.parametrize(
    ("function", "name"),
    [
        ("export_sharded", "directory"),
        ("plan_directory", "directory"),
        ("late_check", "directory"),
        ("record_results", "directory"),
        ("merge", "directory"),
        ("merge", "dest"),
    ],
)
async def test_a_path_of_another_type_is_refused_naming_it_as_export_customers_refuses_one(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path, function: str, name: str, given: Any
) -> None:
    # A raw TypeError from deep inside pathlib ("argument should be a str object or an
    # os.PathLike object returning str, not <class 'bytes'>"), where export_customers and
    # FileTokenStore say "checkpoint must be a path, not bytes".
    out = tmp_path / "out"
    await export_sharded(dm, out, 2, progress=False)
    before = dm.stats.requests
    paths = {"directory": out, "dest": tmp_path / "all.jsonl", name: given}
    calls = {
        "export_sharded": lambda: export_sharded(dm, given, 2, progress=False),
        "plan_directory": lambda: plan_directory(dm, given, 2),
        "late_check": lambda: late_check(dm, given),
        "record_results": lambda: record_results(given, []),
        "merge": lambda: asyncio.to_thread(merge, paths["directory"], paths["dest"]),
    }
    with pytest.raises(InvalidRequestError) as caught:
        await calls[function]()
    assert str(caught.value) == f"{function}(): {name} must be a path, not {type(given).__name__}"
    assert dm.stats.requests == before
    assert not (tmp_path / "all.jsonl").exists()


class TypedId(int):
    """A customer id of the caller's own type, whose ``str`` is its repr: ``CustomerId(7)``."""

    def __repr__(self) -> str:
        return f"CustomerId({int(self)})"


@pytest.mark.parametrize(
    "make",
    [
        lambda ids: (i for i in ids),
        iter,
        set,
        tuple,
        lambda ids: dict.fromkeys(ids).keys(),
        # Written to id_list.txt as CustomerId(7): the plan's read of it was a raw ValueError.
        lambda ids: [TypedId(i) for i in ids],
    ],
    ids=["generator", "iterator", "set", "tuple", "dict keys", "an int subclass"],
)
async def test_a_sharded_export_takes_an_id_list_of_any_iterable_as_the_same_list(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path, make: Callable[[list[int]], Any]
) -> None:
    # A generator was read by the manifest's record of the filters, then found empty by the
    # plan's first count: InvalidRequestError "count(): id_list is empty", nothing exported.
    ids = sim.customer_ids()[::7]

    manifest = await export_sharded(dm, tmp_path / "out", 3, progress=False, id_list=make(ids))
    planned = await plan_shards(dm, 3, id_list=make(ids))

    assert manifest.complete
    assert sorted(exported_ids(tmp_path / "out")) == sorted(ids)
    assert sum(s.planned_count for s in planned) == len(ids)


async def test_a_sharded_export_takes_a_select_of_a_generator_as_the_same_list(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # The manifest's record of the filters read the generator, and the plan's first count
    # found it empty: "count(): select names no field", nothing exported.
    manifest = await export_sharded(
        dm, tmp_path / "out", 3, progress=False, select=(f for f in ["name"])
    )

    assert manifest.complete
    assert manifest.filters["select"] == ["name"]
    assert sorted(exported_ids(tmp_path / "out")) == sorted(sim.customer_ids())


async def test_a_rerun_takes_up_the_plan_in_the_directory(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    first = await export_sharded(dm, tmp_path / "out", 4, progress=False)
    sent: list[dict[str, str]] = []
    sim.on_request(lambda request: sent.append(dict(request.query)))
    again = await export_sharded(dm, tmp_path / "out", 4, progress=False)

    assert again.shards == first.shards
    # Every shard complete: nothing planned or exported. The late check of the open-ended
    # last window alone: two id-only walks that agree (5 pages of its 500 customers) and a
    # count before and after each.
    last = first.shards[-1].shard
    assert last.start is not None
    assert last.end is None
    assert again.late_check is not None
    assert again.late_check.added == 0
    assert len(sent) == 2 * (2 + 5)
    assert all("dateCreatedFrom" in q and "dateCreatedTo" not in q for q in sent)
    assert all(q.get("select") == "id" for q in sent if "pageSize" in q), sent
    with pytest.raises(InvalidRequestError, match="other filters"):
        await export_sharded(dm, tmp_path / "out", 4, stage="lead", progress=False)


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ({"stage": ""}, {"stage": EMPTY_STAGE}),
        ({"select": ["name", "mobile"]}, {"select": "name,mobile"}),
        ({"select": ["name", "mobile"]}, {"select": "name, mobile"}),
        ({"select": ["name"]}, {"select": ["id", "name"]}),
        ({"select": ["date_join"]}, {"select": ["dateJoin"]}),
    ],
    ids=["EMPTY_STAGE for ''", "a str select", "a str select with spaces", "id named", "wire name"],
)
async def test_a_rerun_with_the_same_filters_spelt_another_way_takes_up_the_plan(
    sim: DMHubSimulator,
    dm: DMHubClient,
    tmp_path: Path,
    first: dict[str, Any],
    then: dict[str, Any],
) -> None:
    # Refused as "a sharded export with other filters (stage: '' in the directory's export,
    # '_empty' now)": the CLI's `--select name,mobile` (a list) resumed from Python with
    # select="name,mobile", or `--stage ''` with EMPTY_STAGE, which the README gives as the
    # same filter. A single-file export's checkpoint compares the query as sent, and resumes.
    out = tmp_path / "out"
    begun = await plan_directory(dm, out, 2, **first)  # planned, no shard run yet
    assert not begun.complete
    again = await export_sharded(dm, out, 2, progress=False, **then)
    assert again.complete
    assert [o.shard for o in again.shards] == [o.shard for o in begun.shards]
    with pytest.raises(InvalidRequestError, match="other filters"):
        await export_sharded(dm, out, 2, progress=False, stage="lead")


async def test_a_rerun_from_a_base_url_spelt_another_way_takes_up_the_plan(
    sim: DMHubSimulator, tmp_path: Path
) -> None:
    # Rerun from a machine whose DMHUB_BASE_URL spells the service otherwise (the host's case,
    # a default port), which the token store and a part's checkpoint take for one: refused as
    # "a sharded export with other DMHUB_BASE_URL: use a new directory (or delete this one)",
    # a half-done export its operator was told to delete.
    out = tmp_path / "out"
    port = sim.url.rsplit(":", 1)[1]
    async with DMHubClient(sim.app_id, sim.secret, base_url=f"http://localhost:{port}") as first:
        begun = await plan_directory(first, out, 2)  # planned, no shard run yet
    async with DMHubClient(sim.app_id, sim.secret, base_url=f"http://LOCALHOST:{port}") as then:
        again = await export_sharded(then, out, 2, progress=False)
    assert again.complete
    assert [o.shard for o in again.shards] == [o.shard for o in begun.shards]
    assert again.exported == sim.customers_count()
    other = f"http://localhost:{int(port) + 1}"
    async with DMHubClient(sim.app_id, sim.secret, base_url=other, max_retries=0) as elsewhere:
        with pytest.raises(InvalidRequestError, match="other base_url"):
            await export_sharded(elsewhere, out, 2, progress=False)
        assert elsewhere.stats.requests == 0


async def test_a_second_coordinator_of_the_directory_is_refused_at_once(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # Two coordinators planned, ran and wrote the one manifest over each other, and failed
    # each other's shards on the parts' locks. The lock is an OS file lock: another process
    # holding it is what this test's own FileLock is.
    import filelock

    out = tmp_path / "out"
    out.mkdir()
    other = filelock.FileLock(out / ".manifest.json.lock", timeout=0)
    with other:
        with pytest.raises(InvalidRequestError, match="in use by another export"):
            await export_sharded(dm, out, 4, progress=False)
        with pytest.raises(InvalidRequestError, match="in use by another export"):
            await prepare(dm, out, 4)
    assert dm.stats.requests == 0
    assert [p.name for p in out.iterdir()] == [".manifest.json.lock"]  # the holder's: no plan
    manifest = await export_sharded(dm, out, 4, progress=False)  # once it is free
    assert manifest.complete
    assert not (out / ".manifest.json.lock").exists()  # and free again after


async def test_a_coordinator_runs_its_own_plan_under_its_lock(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    out = tmp_path / "new" / "out"
    with coordinating(out):  # as the CLI does: the plan, then the run, one lock
        manifest = await prepare(dm, out, 2)
        manifest = await export_sharded(dm, out, 2, progress=False)
        assert (out / ".manifest.json.lock").exists()
    assert manifest.complete
    assert not (out / ".manifest.json.lock").exists()
    with pytest.raises(InvalidRequestError):  # a plan that fails leaves no directory made
        await export_sharded(dm, tmp_path / "never", 0, progress=False)
    assert not (tmp_path / "never").exists()


def test_a_misspelt_or_mistyped_filter_fails_a_type_check(
    tmp_path: Path, mypy_strict: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # plan_shards and export_sharded took **filters as Any: a misspelt filter passed
    # mypy --strict (and an editor offered no filter names), while export_customers, with
    # the same filters, had them typed.
    user = tmp_path / "user.py"
    user.write_text(
        "from dmhub_async import DMHubClient\n"
        "from dmhub_async.shards import export_sharded, plan_shards\n"
        "\n"
        "\n"
        "async def main(dm: DMHubClient) -> None:\n"
        "    await plan_shards(dm, 4, stgae='lead')\n"
        "    await export_sharded(dm, 'out', 4, stage=5)\n"
        "    await plan_shards(dm, 4, stage='lead', gender=1, date_created_from='2024-01-01')\n"
        "    await export_sharded(dm, 'out', 4, format='csv', source='web', select=['name'])\n",
        encoding="utf-8",
    )
    # This checkout's package, a user's --strict alone (as tests/test_readme.py does).
    result = mypy_strict(user, cwd=tmp_path, mypy_path=Path(__file__).resolve().parents[2])
    out = result.stdout + result.stderr
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["6", "7"], out
    assert '"stgae"' in errors[0]
    assert '"stage"' in errors[1]


async def test_a_count_that_fails_stops_the_plans_other_counts(sim: DMHubSimulator) -> None:
    # A round of bisection sends up to n - 1 counts at once. One of them failing (a 500 past
    # the retries, a token refused for good) raised at once, and the others went on in the
    # background, each with its retries: thousands at n=4096, holding the client's slots, so
    # the caller's next call (a retried plan) waited behind them.
    held = asyncio.Event()
    in_flight, failed = 0, False

    async def fail_one_of_a_round(request: web.Request) -> None:
        nonlocal in_flight, failed
        if request.path != "/v1/customers/count":
            return
        in_flight += 1
        try:
            for _ in range(20):  # the other counts of the round arrive
                await asyncio.sleep(0)
            if failed:
                await held.wait()  # an answer slow to come
            elif in_flight >= 2:
                failed = True
                sim.faults.script(["500"])  # this one: the simulator draws it next
        finally:
            in_flight -= 1

    sim.on_request(fail_one_of_a_round)
    async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url, max_retries=0) as dm:
        try:
            with pytest.raises(ServerError):
                await asyncio.wait_for(plan_shards(dm, 8), 5)
            left = [t for t in asyncio.all_tasks() if "count_before" in repr(t.get_coro())]
            assert not left  # before: the round's other counts, waiting for their answers
            assert dm._session._limits._free == 16  # every slot back for the next call
        finally:
            held.set()


@pytest.fixture
def machine_in_shanghai(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's local zone is Asia/Shanghai (UTC+8) for the test."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset: POSIX only")
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("machine_in_shanghai")
@pytest.mark.parametrize("zone", ["UTC", None])
async def test_a_naive_now_is_read_in_the_clients_timezone_not_the_machines(
    zone: str | None,
) -> None:
    # 100 customers created one a second from 2024-01-01T00:00:00Z; planned at 01:00 UTC.
    # A naive now was read in the machine's zone, 01:00 in Shanghai, 17:00 UTC the day
    # before: every customer came after it, and the plan was one shard of 100, not 4 of 25.
    created = [datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()]
    async with DMHubSimulator(clock=lambda: created[0]) as sim:
        for _ in range(100):
            sim.insert_customer({"name": "x"})
            created[0] += 1
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url, timezone=zone) as dm:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                shards = await plan_shards(dm, 4, now=datetime(2024, 1, 1, 1, 0))

    assert [s.planned_count for s in shards] == [25, 25, 25, 25]
    # Without a timezone setting, read as UTC and said, as a naive time filter is.
    assert [(w.category, w.filename) for w in caught] == (
        [] if zone else [(NaiveDatetimeWarning, __file__)]
    )


async def test_a_sharded_exports_manifest_and_a_plan_of_ids_have_short_reprs(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path
) -> None:
    # export_sharded's result printed every shard's window, file, digest and counts (3,440
    # characters for 8 shards), and a shard of a plan of ids every id of its slice.
    manifest = await export_sharded(dm, tmp_path / "out", 8, progress=False)
    assert repr(manifest) == (
        "<Manifest complete: jsonl, 8 shards (8 complete), 2,000 exported of 2,000 planned, "
        f"base_url={sim.url!r}, app_id={sim.app_id!r}>"
    )
    ids = list(range(1, 300_001))
    (first, *_) = await plan_shards(dm, 2, id_list=ids, stage="lead")
    assert len(repr(first)) < 400
    assert "filters={'stage': 'lead', 'id_list': <150,000 ids>}" in repr(first)
    assert sim.secret not in repr(manifest) + repr(first)


async def test_one_of_a_thing_is_said_in_the_singular(tmp_path: Path) -> None:
    # "1 customers were created within one second" in a shard's note, "1 shards" in the
    # manifest's repr: a count of one said as many.
    async with (
        DMHubSimulator(customers=1) as one,
        DMHubClient(one.app_id, one.secret, base_url=one.url) as dm,
    ):
        plan = await plan_shards(dm, 3)
        manifest = await export_sharded(dm, tmp_path / "out", 1, progress=False)

    notes = [s.note for s in plan if s.note]
    assert notes == ["1 customer was created within one second: this window cannot be split"]
    assert "json, 1 shard (1 complete), 1 exported" in repr(manifest).replace("jsonl", "json")


async def test_a_plan_has_more_than_n_shards_only_for_a_dense_second_as_documented() -> None:
    # `--shards 2 --mobile X` gave 3 parts where the docs said "at most n": a second that
    # alone holds more than a share is a window of its own beside the n the counts cut (a
    # cap would merge it into a neighbour past its share). The docs now say so, and the bound.
    async with (
        DMHubSimulator(customers=1) as one,
        DMHubClient(one.app_id, one.secret, base_url=one.url) as dm,
    ):
        plan = await plan_shards(dm, 2)

    assert len(plan) == 3
    assert [s.planned_count for s in plan] == [0, 1, 0]
    assert plan[1].note is not None
    doc = " ".join((plan_shards.__doc__ or "").split())
    assert "at most ``2 * n - 1``" in doc
    assert "at most ``n`` disjoint windows" not in doc
    sharding = " ".join((Path(__file__).parents[2] / "docs" / "sharding.md").read_text().split())
    assert "at most `2n - 1`" in sharding
    assert "into at most `n` windows" not in sharding


async def test_a_rerun_with_another_count_over_a_dense_second_says_the_plan_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 400 customers over 2016 and 600 imported in one second: `--shards 2` plans 3 windows,
    # `--shards 3` would plan 4 others. Rerun with 3, the directory's plan of 3 shards was
    # taken up without a word: its count was guessed from its shards, and 3 is what it held.
    now = [1_591_000_000.0]
    async with DMHubSimulator(400, clock=lambda: now[0]) as sim:
        for _ in range(600):
            sim.insert_customer({"name": "imported"})
        now[0] += 60  # planned after the import's second
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            assert len(await plan_shards(dm, 3)) == 4  # what a new directory would plan
            first = await prepare(dm, tmp_path / "out", 2)
            assert len(first.shards) == 3
            caplog.clear()
            again = await prepare(dm, tmp_path / "out", 2)
            said_again = [r.getMessage() for r in caplog.records]
            caplog.clear()
            other = await prepare(dm, tmp_path / "out", 3)

    assert said_again == []
    assert len(again.shards) == len(other.shards) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'out'}: its plan of 3 shards, made for 2, is taken up, not one of the 3 "
        "asked for: a rerun keeps the plan its directory holds (each shard its window, its "
        "part and its checkpoint); to plan 3, export to a new directory"
    ]


@pytest.mark.parametrize(
    ("customers", "ids", "asked", "planned"),
    [(1, None, 2, 3), (0, None, 4, 1), (50, [3, 1, 2], 8, 3)],
    ids=["a-dense-second", "nobody", "fewer-ids-than-shards"],
)
async def test_a_rerun_of_the_same_count_says_nothing_of_its_plans_count(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    customers: int,
    ids: list[int] | None,
    asked: int,
    planned: int,
) -> None:
    # A plan whose count is not the one asked (a dense second's window beside them, nobody
    # to cut, fewer ids than shards) is this ask's all the same: rerun alike, nothing to say.
    filters: dict[str, Any] = {} if ids is None else {"id_list": ids}
    async with (
        DMHubSimulator(customers=customers) as few,
        DMHubClient(few.app_id, few.secret, base_url=few.url) as dm,
    ):
        first = await export_sharded(dm, tmp_path / "out", asked, progress=False, **filters)
        caplog.clear()
        again = await export_sharded(dm, tmp_path / "out", asked, progress=False, **filters)
        said = caplog.text
        caplog.clear()
        other = await export_sharded(dm, tmp_path / "out", asked + 5, progress=False, **filters)

    assert len(first.shards) == len(again.shards) == len(other.shards) == planned
    assert "is taken up" not in said
    if ids is not None or not customers:  # 3 ids, or nobody: 13 or 9 shards plan the same
        assert "is taken up" not in caplog.text


async def test_a_dense_second_at_the_plans_own_start_is_its_first_window(tmp_path: Path) -> None:
    # 900 customers imported in one second, 100 after, exported from that second on: the
    # plan probed the second before its own start and failed, "count(): date_created_to is
    # before date_created_from", a filter the caller never gave, after its counts were sent.
    now = [IMPORT_SECOND]
    start = datetime.fromtimestamp(IMPORT_SECOND, timezone.utc)
    async with DMHubSimulator(customers=0, clock=lambda: now[0]) as sim:
        for _ in range(900):
            sim.insert_customer({"name": "imported"})
        for k in range(100):
            now[0] = IMPORT_SECOND + 10 + k
            sim.insert_customer({"name": "later"})
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            plan = await plan_shards(dm, 4, date_created_from=start)
            manifest = await export_sharded(
                dm, tmp_path / "out", 4, progress=False, date_created_from=start
            )
        ids = sim.customer_ids()

    assert (plan[0].start, plan[0].end) == (start, start + timedelta(seconds=1))
    assert plan[0].planned_count == 900
    assert (
        plan[0].note == "900 customers were created within one second: this window cannot be split"
    )
    assert sum(s.planned_count for s in plan) == 1_000
    assert manifest.complete
    merge(tmp_path / "out", tmp_path / "all.jsonl")
    exported = [orjson.loads(x)["id"] for x in (tmp_path / "all.jsonl").read_bytes().splitlines()]
    assert sorted(exported) == sorted(ids)


@pytest.mark.parametrize("shards", [0, -1, MAX_SHARDS + 1, "2", 2.0, True])
async def test_a_rerun_with_a_shard_count_no_plan_takes_is_refused_as_a_new_plan_is(
    sim: DMHubSimulator, dm: DMHubClient, tmp_path: Path, shards: Any
) -> None:
    # Refused in a new directory, a count of 0 or "2" was taken on a rerun of a planned one,
    # its warning saying "to plan 0, export to a new directory", which refuses it.
    await export_sharded(dm, tmp_path / "out", 2, progress=False)
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    sent = dm.stats.requests

    for call in (
        lambda: export_sharded(dm, tmp_path / "out", shards, progress=False),
        lambda: plan_directory(dm, tmp_path / "out", shards),
        lambda: export_sharded(dm, tmp_path / "new", shards, progress=False),
    ):
        with pytest.raises(
            InvalidRequestError, match=f"shards must be an int from 1 to {MAX_SHARDS}"
        ):
            await call()

    assert dm.stats.requests == sent
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
    assert not (tmp_path / "new").exists()


async def test_a_dense_second_at_the_plans_own_end_is_a_window_of_its_own() -> None:
    # 100 customers over the minutes before, 900 imported in the last second of
    # --created-to: every edge fell on the plan's end, and `--shards 4` planned one shard of
    # all 1,000, the import no window of its own (as it is anywhere else in the range).
    now = [IMPORT_SECOND - 200]
    end = datetime.fromtimestamp(IMPORT_SECOND, timezone.utc)
    async with DMHubSimulator(customers=0, clock=lambda: now[0]) as sim:
        for k in range(100):
            now[0] = IMPORT_SECOND - 200 + k
            sim.insert_customer({"name": "before"})
        now[0] = IMPORT_SECOND
        for _ in range(900):
            sim.insert_customer({"name": "imported"})
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            plan = await plan_shards(dm, 4, date_created_to=end)

    assert [(s.start, s.end, s.planned_count) for s in plan] == [
        (None, end, 100),
        (end, end + timedelta(seconds=1), 900),
    ]
    assert (
        plan[1].note == "900 customers were created within one second: this window cannot be split"
    )
