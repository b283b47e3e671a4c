"""A sharded export run by a scheduler of the user's own (Celery, Airflow, k8s Jobs).

docs/sharding.md's Celery task wrote parts with no manifest: no late check, no merge, no
verdict on the whole, and a planner that crashed and planned again cut other windows under the
same part names. ``plan_directory``, ``shard_result`` and ``record_results`` give such a run the
manifest the SDK's own runners write. Plain asyncio tasks stand in for the scheduler's here: a
retry, a task stopped mid-shard and sent again, a task delivered twice at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from _helpers import Int64

from dmhub_async import DMHubClient, InvalidRequestError
from dmhub_async.export import ExportProgress
from dmhub_async.shards import (
    Manifest,
    Shard,
    export_shard,
    late_check,
    merge,
    part_name,
    plan_directory,
    record_results,
    shard_result,
)
from dmhub_async.testing import DMHubSimulator

pytestmark = pytest.mark.timeout(120)


async def export_part(
    sim: DMHubSimulator,
    shard: dict[str, Any],
    directory: Path,
    on_progress: Any = None,
) -> dict[str, Any]:
    """The user's task: a shard sent as JSON, its result sent back as JSON."""
    shard = json.loads(json.dumps(shard))
    async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
        part = Shard.from_dict(shard)
        path = directory / part_name(part.index, "jsonl")
        report = await export_shard(
            dm,
            part,
            path,
            checkpoint=f"{path}.ckpt",
            page_size=20,
            concurrency=2,
            on_progress=on_progress,
        )
        sent_back: dict[str, Any] = json.loads(json.dumps(await shard_result(part, report)))
        return sent_back


async def planned(sim: DMHubSimulator, out: Path, shards: int, **options: Any) -> Manifest:
    """The planner's task: ``out`` planned (or its plan taken up) in ``shards`` shards."""
    async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
        return await plan_directory(dm, out, shards, **options)


async def every_part(sim: DMHubSimulator, manifest: Manifest, out: Path) -> list[dict[str, Any]]:
    """Each shard's task run once, in turn: their results."""
    return [await export_part(sim, o.shard.to_dict(), out) for o in manifest.shards]


def merged_ids(directory: Path, dest: Path) -> list[int]:
    merge(directory, dest)
    with dest.open(encoding="utf-8") as fh:
        return [json.loads(line)["id"] for line in fh]


async def test_a_schedulers_run_is_merged_late_checked_and_said_complete(tmp_path: Path) -> None:
    out = tmp_path / "june"
    async with DMHubSimulator(customers=400, seed=11) as sim:
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            manifest = await plan_directory(dm, out, 3)
        sent = [o.shard.to_dict() for o in manifest.shards]
        assert len(sent) == 3

        # Shard 0's first try is stopped mid-shard (its worker shut down): sent again, it
        # resumes from its checkpoint.
        stop = asyncio.Event()

        def stop_after_a_page(progress: ExportProgress) -> None:
            if progress.exported >= 20:
                stop.set()

        first = asyncio.ensure_future(export_part(sim, sent[0], out, stop_after_a_page))
        await asyncio.wait_for(stop.wait(), 30)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        # Shard 1 delivered twice at once (an at-least-once broker): one exports it, the
        # other is refused on the part's lock and retried once the first has ended.
        twice = await asyncio.gather(
            export_part(sim, sent[1], out), export_part(sim, sent[1], out), return_exceptions=True
        )
        refused = [r for r in twice if isinstance(r, BaseException)]
        assert len(refused) == 1
        assert "in use by another export" in str(refused[0])
        results = [r for r in twice if not isinstance(r, BaseException)]
        results.append(await export_part(sim, sent[1], out))  # its retry
        results.append(await export_part(sim, sent[0], out))
        results.append(await export_part(sim, sent[2], out))
        assert results[2]["exported_before"] > 0  # resumed from its checkpoint

        # Signed up after the last shard ended: in no part until the late check.
        late = sim.insert_customer({"name": "signed up after the last shard"})
        manifest = await record_results(out, results)
        assert manifest.complete
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            found = await late_check(dm, out, manifest)
        wanted = sim.customer_ids()

    assert found is not None
    assert found.added == 1
    assert found.verified
    ids = merged_ids(out, tmp_path / "june.jsonl")
    assert late["id"] in ids
    assert sorted(ids) == sorted(wanted)  # every customer, each once
    on_disk = Manifest.read(out)
    assert on_disk is not None
    assert on_disk.complete
    assert on_disk.exported == len(wanted)


async def test_a_planner_run_again_takes_up_its_plan(tmp_path: Path) -> None:
    out = tmp_path / "june"
    async with (
        DMHubSimulator(customers=300, seed=12) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        first = await plan_directory(dm, out, 3)
        result = await export_part(sim, first.shards[0].shard.to_dict(), out)
        await record_results(out, [result])
        # The planner crashed and is run again, customers created meanwhile: the same
        # windows (a new plan cut others, and the first plan's tasks still in the broker
        # wrote their windows over the new plan's parts).
        for n in range(30):
            sim.insert_customer({"name": f"meanwhile {n}"})
        again = await plan_directory(dm, out, 3)
    assert again.plan_id == first.plan_id
    assert [o.shard for o in again.shards] == [o.shard for o in first.shards]
    assert [o.status for o in again.shards] == ["complete", "pending", "pending"]


async def test_a_result_of_another_plan_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    out, other = tmp_path / "june", tmp_path / "july"
    async with (
        DMHubSimulator(customers=300, seed=13) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        await plan_directory(dm, out, 3)
        theirs = await plan_directory(dm, other, 2)
        mine = await export_part(sim, Manifest.read(out).shards[0].shard.to_dict(), out)  # type: ignore[union-attr]
        stray = await export_part(sim, theirs.shards[1].shard.to_dict(), other)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(InvalidRequestError, match=r"shard 1 .* is not of this directory's plan"):
        await record_results(out, [mine, stray])
    with pytest.raises(InvalidRequestError, match="not a result of shard_result"):
        await record_results(out, [{"complete": True, "exported": 3}])
    with pytest.raises(InvalidRequestError, match=r"has no manifest\.json: plan it first"):
        await record_results(tmp_path / "nothing", [mine])
    assert (out / "manifest.json").read_bytes() == before
    assert not (tmp_path / "nothing").exists()


async def test_a_manifest_or_results_of_another_kind_are_refused_naming_them(
    tmp_path: Path,
) -> None:
    # late_check(dm, out, manifest_as_json) (a Celery task's manifest arrives as JSON) was a raw
    # "AttributeError: 'dict' object has no attribute 'id_list_length'", record_results(out,
    # None) a raw "TypeError: 'NoneType' object is not iterable", and record_results(out, one)
    # took a single result as a list of its keys ("not a result of shard_result(): 'complete'").
    out = tmp_path / "june"
    async with (
        DMHubSimulator(customers=100, seed=16) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        manifest = await plan_directory(dm, out, 2)
        results = await every_part(sim, manifest, out)
        before = (out / "manifest.json").read_bytes()
        as_json = json.loads(before)
        sent: list[str] = []
        sim.on_request(lambda request: sent.append(request.path))
        with pytest.raises(
            InvalidRequestError, match=r"^late_check\(\): manifest must be a Manifest or None"
        ):
            await late_check(dm, out, as_json)
        for given in (None, results[0], 5):
            with pytest.raises(
                InvalidRequestError,
                match=r"^record_results\(\): results must be a list of shard_result\(\)'s",
            ):
                await record_results(out, given)
        assert sent == []
        assert (out / "manifest.json").read_bytes() == before
        recorded = await record_results(out, results)  # as a list: recorded
        assert await late_check(dm, out, recorded) is not None
    assert recorded.complete


async def test_a_result_whose_part_was_written_again_since_is_not_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "june"
    async with (
        DMHubSimulator(customers=300, seed=14) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        manifest = await plan_directory(dm, out, 2)
        shard = manifest.shards[0].shard.to_dict()
        old = await export_part(sim, shard, out)
        # A customer of shard 0's window changes; the task, sent again, writes it again.
        first = min(sim.customer_ids())
        await dm.customers.update(first, remark="a much longer remark than it had before")
        new = await export_part(sim, shard, out)
    assert new["sha256"] != old["sha256"]
    with caplog.at_level(logging.WARNING, logger="dmhub_async"):
        stale = await record_results(out, [old])
    assert stale.shards[0].status == "pending"
    assert "shard 0: part-00000.jsonl holds" in caplog.text
    # Recorded with the later task's result, then the earlier one's changes nothing.
    caplog.clear()
    recorded = await record_results(out, [new, old])
    assert recorded.shards[0].status == "complete"
    assert recorded.shards[0].sha256 == new["sha256"]
    assert "not recorded" not in caplog.text


async def test_bad_input_is_refused_before_anything_is_sent_or_written(tmp_path: Path) -> None:
    out = tmp_path / "june"
    async with DMHubSimulator(customers=50, seed=15) as sim:
        sent: list[str] = []

        async def seen(request: Any) -> None:
            sent.append(request.path)

        sim.on_request(seen)
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            with pytest.raises(
                InvalidRequestError, match=r"plan_directory\(\): shards must be an int from 1"
            ):
                await plan_directory(dm, out, 0)
            with pytest.raises(InvalidRequestError, match="format must be 'jsonl' or 'csv'"):
                await plan_directory(dm, out, 2, format="json")
            shard = Shard(0, None, None)
            with pytest.raises(InvalidRequestError, match="expected an ExportReport"):
                await shard_result(shard, {"complete": True})  # type: ignore[arg-type]
    assert not out.exists()
    assert [p for p in sent if p.startswith("/v1/customers")] == []


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"progress": "no"}, "progress must be True or False, not 'no'"),
        ({"verify": "never"}, "verify must be 'auto' or 'always', not 'never'"),
    ],
    ids=["progress", "verify"],
)
async def test_export_shard_refuses_a_bad_setting_in_its_own_name(
    tmp_path: Path, options: dict[str, Any], said: str
) -> None:
    # "export_customers(): progress must be True or False": a function the task never called.
    async with (
        DMHubSimulator(customers=20, seed=17) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        shard = (await plan_directory(dm, tmp_path / "june", 2)).shards[0].shard
        before = dm.stats.requests
        with pytest.raises(InvalidRequestError) as caught:
            await export_shard(dm, shard, tmp_path / "june" / "part.jsonl", **options)
        assert str(caught.value) == f"export_shard(): {said}"
        assert dm.stats.requests == before
    assert not (tmp_path / "june" / "part.jsonl").exists()


async def test_a_finishing_task_run_again_after_the_late_check_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "june"
    async with DMHubSimulator(customers=200, seed=16) as sim:
        manifest = await planned(sim, out, 2)
        results = await every_part(sim, manifest, out)
        sim.insert_customer({"name": "signed up after the last shard"})
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            found = await late_check(dm, out, await record_results(out, results))
        assert found is not None
        assert found.added == 1
        written = (out / "manifest.json").read_bytes()
        # The broker delivers the finishing task again: the last part's result is of it
        # before the late check appended to it.
        with caplog.at_level(logging.WARNING, logger="dmhub_async"):
            again = await record_results(out, results)
        wanted = sim.customer_ids()
    assert again.complete
    assert (out / "manifest.json").read_bytes() == written
    assert caplog.text == ""
    assert sorted(merged_ids(out, tmp_path / "june.jsonl")) == sorted(wanted)


async def test_plan_directory_records_verify_always_and_a_later_plan_keeps_it(
    tmp_path: Path,
) -> None:
    async with (
        DMHubSimulator(40) as sim,
        DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm,
    ):
        with pytest.raises(InvalidRequestError, match="plan_directory\\(\\): verify must be"):
            await plan_directory(dm, tmp_path / "bad", 2, verify="yes")  # type: ignore[arg-type]
        assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
        first = await plan_directory(dm, tmp_path, 2, verify="always")
        again = await plan_directory(dm, tmp_path, 2)  # the planner run again, without it
    assert (first.verify, again.verify) == ("always", "always")
    assert json.loads((tmp_path / "manifest.json").read_text())["verify"] == "always"


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("exported", -5, "exported -5"),
        ("exported", 1.5, "exported 1.5"),
        ("exported", 2**70, "exported"),
        ("complete", "false", "complete 'false'"),
        ("sha256", None, "sha256 None"),
        ("sha256", "not a digest", "sha256 'not a digest'"),
        ("seconds", "x", "seconds 'x'"),
        ("checked", "yes", "checked 'yes'"),
        # Not a shard's dict (a broker's own wrapping): a raw AttributeError from Shard.from_dict.
        ("shard", "part-00000.jsonl", "shard 'part-00000.jsonl'"),
        ("shard", None, "shard None"),
        ("shard", [0, None, None], "shard [0, None, None]"),
    ],
)
async def test_a_result_of_bad_values_is_refused_and_the_manifest_stays_readable(
    tmp_path: Path, key: str, value: Any, said: str
) -> None:
    # A result rebuilt by hand, or mangled by a broker's serializer: only its keys were
    # checked. Written into the manifest, its next read refused the directory as "not a
    # manifest this SDK wrote" (record_results, late_check, merge and reruns all stopped);
    # "complete": "false" was recorded complete, and a complete one without its SHA-256 was
    # merged without its content check.
    out = tmp_path / "june"
    async with DMHubSimulator(customers=60, seed=17) as sim:
        manifest = await planned(sim, out, 2)
        good = await export_part(sim, manifest.shards[0].shard.to_dict(), out)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(InvalidRequestError, match=rf"record_results\(\): .*{re.escape(said)}"):
        await record_results(out, [{**good, key: value}])
    assert (out / "manifest.json").read_bytes() == before
    recorded = await record_results(out, [good])  # the directory still works
    assert recorded.shards[0].status == "complete"


async def test_an_incomplete_result_of_a_part_recorded_complete_since_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Results out of order: the shard's first task ended in MISMATCH (its final check saw
    # the service change), the one sent again wrote the same customers and was recorded
    # complete; the first one's result, recorded after it, turned the shard incomplete and
    # the export with it, the part unchanged.
    out = tmp_path / "june"
    async with DMHubSimulator(customers=60, seed=18) as sim:
        manifest = await planned(sim, out, 2)
        done = await every_part(sim, manifest, out)
    # What shard_result gives of that first task: its part's size, no SHA-256, not complete.
    mismatch = {**done[0], "complete": False, "sha256": None, "checked": True}
    assert (await record_results(out, done)).complete
    written = (out / "manifest.json").read_bytes()
    with caplog.at_level(logging.WARNING, logger="dmhub_async"):
        again = await record_results(out, [mismatch])
    assert again.complete
    assert (out / "manifest.json").read_bytes() == written
    assert caplog.text == ""


async def test_a_part_recorded_without_the_final_check_an_export_asks_for_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Planned with verify="always" (the manifest records it), a task whose export_shard was
    # not given it (the docs' Celery task gives none) ended without its final check: the
    # shard was recorded complete without a word, the manifest still saying "always".
    out = tmp_path / "june"
    async with DMHubSimulator(customers=60, seed=19) as sim:
        manifest = await planned(sim, out, 2, verify="always")
        results = await every_part(sim, manifest, out)
    assert [r["checked"] for r in results] == [False, False]
    with caplog.at_level(logging.WARNING, logger="dmhub_async"):
        recorded = await record_results(out, results)
    assert recorded.complete  # recorded: the customers are there, the check is what is missing
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    assert said[0].startswith(
        "shard 0: part-00000.jsonl: recorded without its final check, which this export asks "
        "for (verify 'always' in its manifest)"
    )


def test_part_name_is_the_shards_file_and_refuses_what_no_shard_is() -> None:
    # A scheduler of the user's own names a part by its shard's index: -1 (a "last" index, a
    # slot not yet given one) was "part--0001.jsonl", a file no manifest holds, and True
    # "part-00001.jsonl", shard 1's.
    assert part_name(3, "jsonl") == "part-00003.jsonl"
    assert part_name(0, "csv") == "part-00000.csv"
    with pytest.raises(InvalidRequestError, match=r"part_name\(\): index must be >= 0, not -1"):
        part_name(-1, "jsonl")
    with pytest.raises(InvalidRequestError, match=r"index must be an int, not True"):
        part_name(True, "jsonl")  # type: ignore[arg-type]


def test_part_name_refuses_an_index_past_its_five_digits() -> None:
    # No upper bound: 100000 was "part-100000.jsonl", out of the parts' order as `ls` lists
    # them, 10**300 a name of 312 bytes no file system holds, 10**5000 a raw "ValueError:
    # Exceeds the limit (4300 digits) for integer string conversion". No plan has more than
    # MAX_SHARDS (4096) shards: every part of one is named in five digits.
    assert part_name(99_999, "jsonl") == "part-99999.jsonl"
    for index, shown in ((100_000, "100000"), (10**5000, "an integer of 16610 bits")):
        with pytest.raises(InvalidRequestError) as refused:
            part_name(index, "jsonl")
        assert str(refused.value) == f"part_name(): index must be <= 99999, not {shown}"


def test_part_name_takes_a_shard_index_of_an_int_class_of_its_own() -> None:
    # numpy's int64 (an index read from a data frame, or from a plan's array) was refused,
    # "part_name(): index must be an int, not int64(3)", as the rest of the SDK takes it.
    assert part_name(Int64(3), "jsonl") == "part-00003.jsonl"  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match=r"part_name\(\): index must be >= 0, not -1"):
        part_name(Int64(-1), "jsonl")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match=r"index must be an int, not 3.0"):
        part_name(3.0, "jsonl")  # type: ignore[arg-type]
