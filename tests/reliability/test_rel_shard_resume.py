"""A sharded export resumed after customers signed up while it was down (the chaos soak's find).

Shard 0 of two fails (its first page answered 503, ``max_retries=0``: a run killed with that
shard unfinished), the open-ended last window completes; a customer signs up; the same
export is run again and says complete. A single-file export resumed so finds the sign-up in
its final check (``test_rel_resume.py``); the sharded one did not look at the last window
again, and said complete without it. The late check (docs/sharding.md) finds it now.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from rel_support import two_apps

from dmhub_async import DMHubClient, InvalidRequestError
from dmhub_async.shards import export_sharded, late_check, merge
from dmhub_async.testing import DMHubSimulator


def read_ids(path: Path) -> list[int]:
    with path.open(encoding="utf-8", newline="") as fh:
        if path.suffix == ".csv":
            return [int(row["id"]) for row in csv.DictReader(fh)]
        return [json.loads(line)["id"] for line in fh]


def digests(directory: Path) -> dict[str, str]:
    """Each file of ``directory`` (the manifest, the parts) by its SHA-256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


async def test_a_sign_up_while_a_sharded_export_was_down_is_exported(
    connect: Any, tmp_path: Path
) -> None:
    async with DMHubSimulator(customers=400, seed=11) as sim:
        first_window_fails = True

        def hook(request: web.Request) -> None:
            query = request.query
            if (
                first_window_fails
                and request.method == "GET"
                and request.path == "/v1/customers"
                and "dateCreatedTo" in query
                and "dateCreatedFrom" not in query
            ):
                sim.faults.script(["503"])

        sim.on_request(hook)
        dm: DMHubClient = connect(sim, max_retries=0)
        out = tmp_path / "parts"

        manifest = await export_sharded(dm, out, 2, progress=False)
        assert [o.status for o in manifest.shards] == ["failed", "complete"]

        signed_up = sim.insert_customer({"name": "signed up while the export was down"})
        first_window_fails = False
        manifest = await export_sharded(dm, out, 2, progress=False)
        assert manifest.complete

        merge(out, tmp_path / "merged.jsonl")
        ids = read_ids(tmp_path / "merged.jsonl")
        assert len(ids) == len(set(ids))
        assert signed_up["id"] in ids
        assert set(ids) == set(sim.customer_ids())


async def test_a_rerun_removes_the_temporary_files_of_a_run_killed_writing_them(
    connect: Any, tmp_path: Path
) -> None:
    """A run SIGKILLed while it wrote its manifest (or its id list) leaves the ``mkstemp`` file
    it was writing, ``.manifest.json.xxxxxxxx.tmp``; each kill one more. The soak found one
    left after the rerun completed: a single-file export's rerun removes its own so."""
    async with DMHubSimulator(customers=300, seed=12) as sim:
        dm: DMHubClient = connect(sim)
        out = tmp_path / "parts"
        assert (await export_sharded(dm, out, 2, progress=False)).complete
        left = [out / ".manifest.json.k1ll3d_0.tmp", out / ".id_list.txt.k1ll3d_1.tmp"]
        for path in left:
            path.write_bytes(b'{"format": "jsonl", "sha')  # cut short by the kill
        other = out / "notes.tmp"  # not a work file of the export's: kept
        other.write_bytes(b"mine")

        assert (await export_sharded(dm, out, 2, progress=False)).complete

        assert not [p.name for p in left if p.exists()]
        assert other.read_bytes() == b"mine"


@pytest.mark.parametrize(
    ("select", "first_without"),
    [(None, None), (["attr"], None), (["attr"], "empty"), (["attr"], "absent")],
    ids=[
        "all",
        "custom-fields",
        "custom-fields-first-customers-without",
        "custom-fields-first-customers-sent-without",
    ],
)
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_a_token_clients_sharded_export_is_rerun_by_its_own_apps_token_alone(
    clock: Any, tmp_path: Path, fmt: str, select: list[str] | None, first_without: str | None
) -> None:
    """A client given an access token has no app id for the manifest to record: app B's
    token at the same host took up app A's complete sharded export, its late check
    appending B's sign-ups to A's last part, status complete. B is now refused before
    anything is written; A's renewed token takes the export up, its sign-ups appended once,
    the first customers of every part deleted since. An export of custom fields alone
    (``select=["attr"]``) was compared by ids alone, and B took it up; so was one whose
    parts' first customers have no custom field (read as ids alone, nothing further looked
    up), or sent without ``attr`` at all (as some live answers are: docs/contract.md)."""
    filters: dict[str, Any] = {} if select is None else {"select": select}

    def client(token: str) -> DMHubClient:
        return DMHubClient(access_token=token, base_url=apps.url, clock=clock, sleep=clock.sleep)

    out = tmp_path / "parts"
    async with two_apps(300) as apps:
        if select is not None:
            # A custom field of each customer's own (a member number): the simulator's others
            # are of a few values, which tell apps apart little better than ids (documented).
            for n, customer_id in enumerate(apps.a.customer_ids()):
                if first_without and n % 100 < 20:  # the oldest of each part: none at all
                    row = apps.a.store.update(customer_id, {"attr": None}, clear=True)
                    if first_without == "absent":
                        del row["attr"]  # sent without the key
                    continue
                apps.a.store.update(
                    customer_id, {"attr": {"member": f"A{customer_id}"}}, clear=False
                )
        async with client(apps.token(apps.a)) as dm:
            manifest = await export_sharded(dm, out, 3, format=fmt, progress=False, **filters)
        assert manifest.complete
        apps.a.add_customers(4)
        apps.b.add_customers(5)
        before = digests(out)
        token_b = apps.token(apps.b)
        async with client(token_b) as dm:
            with pytest.raises(InvalidRequestError, match="holds customers of another app") as err:
                await export_sharded(dm, out, 3, format=fmt, progress=False, **filters)
        assert "export to a new directory" in str(err.value)
        assert token_b not in str(err.value)
        assert digests(out) == before

        deleted = []
        for part in sorted(out.glob(f"part-*.{fmt}")):
            deleted += read_ids(part)[:4]  # more than the check looks up in each
        for customer_id in deleted:
            apps.a.delete_customer(customer_id)
        async with client(apps.token(apps.a)) as dm:
            manifest = await export_sharded(dm, out, 3, format=fmt, progress=False, **filters)
        assert manifest.complete
        merge(out, tmp_path / f"merged.{fmt}")
        ids = read_ids(tmp_path / f"merged.{fmt}")
        assert len(ids) == len(set(ids))
        assert set(ids) == set(apps.a.customer_ids()) | set(deleted)


async def test_a_token_clients_rerun_of_large_custom_fields_looks_their_owner_up_in_halves(
    clock: Any, tmp_path: Path
) -> None:
    """A token client's rerun of ``select=["attr"]`` compares the custom fields of the
    customers it looks up: with the parts' first customers deleted since, up to 100 spread
    over them, in one request, whose answer of large custom fields (pages of 5 had fitted the
    client's ``max_response_size``) failed the rerun with ResponseTooLargeError, at every
    rerun. They are looked up in halves, as the final check fetches."""

    def client(token: str) -> DMHubClient:
        return DMHubClient(
            access_token=token,
            base_url=apps.url,
            clock=clock,
            sleep=clock.sleep,
            max_response_size=200_000,
        )

    out = tmp_path / "parts"
    filters: dict[str, Any] = {"select": ["attr"], "page_size": 5}
    async with two_apps(300) as apps:
        for customer_id in apps.a.customer_ids():  # 30 KB each
            fields = {"attr": {"notes": f"{customer_id}" + "x" * 30_000}}
            apps.a.store.update(customer_id, fields, clear=True)
        async with client(apps.token(apps.a)) as dm:
            manifest = await export_sharded(dm, out, 3, progress=False, **filters)
        assert manifest.complete
        deleted = []
        for part in sorted(out.glob("part-*.jsonl")):
            deleted += read_ids(part)[:6]  # more than the check looks up in each first
        for customer_id in deleted:
            apps.a.delete_customer(customer_id)
        apps.a.add_customers(2)

        async with client(apps.token(apps.a)) as dm:
            manifest = await export_sharded(dm, out, 3, progress=False, **filters)
        assert manifest.complete
        merge(out, tmp_path / "merged.jsonl")
        ids = read_ids(tmp_path / "merged.jsonl")
        assert len(ids) == len(set(ids))
        assert set(ids) == set(apps.a.customer_ids()) | set(deleted)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
async def test_a_token_clients_rerun_over_a_named_pipe_in_a_parts_place_does_not_hang(
    clock: Any, tmp_path: Path
) -> None:
    """The rerun of a token client looks up customers of its parts before anything else: a
    named pipe put in a part's place was opened to be read, and the rerun waited for a
    writer for ever. It is passed over, and the shard exported again, as before."""
    out = tmp_path / "parts"
    async with DMHubSimulator(customers=300, seed=11) as sim:

        def client() -> DMHubClient:
            token = sim.tokens.issue()
            return DMHubClient(access_token=token, base_url=sim.url, clock=clock, sleep=clock.sleep)

        async with client() as dm:
            await export_sharded(dm, out, 3, progress=False)
        part = out / "part-00000.jsonl"
        part.unlink()
        os.mkfifo(part)
        async with client() as dm:
            manifest = await asyncio.wait_for(export_sharded(dm, out, 3, progress=False), 30)
        assert manifest.complete
        merge(out, tmp_path / "merged.jsonl")
        assert sorted(read_ids(tmp_path / "merged.jsonl")) == sim.customer_ids()


@pytest.mark.parametrize("credentials", ["app id", "access token"])
async def test_late_check_given_another_apps_client_appends_nothing_to_the_last_part(
    clock: Any, tmp_path: Path, credentials: str
) -> None:
    """``late_check(client, directory)`` (after ``run_in_processes``, ``run_on_queue`` or a
    scheduler's results) compared the client with nothing the manifest records: app B's
    client, with its own app id at another base URL or with its token at the same host,
    appended B's sign-ups (some 60) to app A's last part, the export complete. B is refused
    before it sends or writes anything; A's own renewed token checks the window as before."""
    out = tmp_path / "parts"
    async with two_apps(300) as apps:
        if credentials == "app id":
            a_url, b_url = apps.a.url, apps.b.url  # each app its own service
        else:
            a_url = b_url = apps.url  # one host, each request to its token's app

        def client(sim: DMHubSimulator, url: str) -> DMHubClient:
            if credentials == "app id":
                return DMHubClient(
                    sim.app_id, sim.secret, base_url=url, clock=clock, sleep=clock.sleep
                )
            token = apps.token(sim)
            return DMHubClient(access_token=token, base_url=url, clock=clock, sleep=clock.sleep)

        async with client(apps.a, a_url) as dm:
            manifest = await export_sharded(dm, out, 3, progress=False)
        assert manifest.complete
        apps.a.add_customers(4)
        apps.b.add_customers(5)
        before = digests(out)
        sent: list[str] = []
        apps.b.on_request(lambda request: sent.append(request.path))
        async with client(apps.b, b_url) as dm:
            with pytest.raises(InvalidRequestError, match="another") as err:
                await late_check(dm, out)
        assert "late_check" in str(err.value)
        assert digests(out) == before
        # The other service is sent nothing; a token's app, the look-ups by id alone (the
        # parts' first customers, then customers spread over them).
        assert sent == ([] if credentials == "app id" else ["/v1/customers"] * 2)

        async with client(apps.a, a_url) as dm:
            checked = await late_check(dm, out)
        assert checked is not None
        assert checked.added == 4
        merge(out, tmp_path / "merged.jsonl")
        ids = read_ids(tmp_path / "merged.jsonl")
        assert sorted(ids) == apps.a.customer_ids()


async def test_a_token_clients_rerun_of_half_done_shards_looks_their_owner_up_once(
    clock: Any, tmp_path: Path
) -> None:
    """A token client's rerun asks the service whose the directory's customers are once, as it
    takes the plan up; each half-done shard's resume asked again (one look-up by id a shard:
    17 for 16 shards), though its part is one of the directory's already checked."""
    out = tmp_path / "parts"
    async with DMHubSimulator(customers=800, seed=3) as sim:

        def client() -> DMHubClient:
            return DMHubClient(
                access_token=sim.tokens.issue(),
                base_url=sim.url,
                max_retries=0,
                clock=clock,
                sleep=clock.sleep,
            )

        def third_page_fails(request: web.Request) -> None:
            if request.path == "/v1/customers" and request.query.get("page") == "3":
                sim.faults.script(["503"])

        sim.on_request(third_page_fails)
        async with client() as dm:
            first = await export_sharded(dm, out, 4, progress=False, page_size=50)
        assert [o.status for o in first.shards].count("complete") == 0
        sim.clear_hooks()
        look_ups: list[str] = []

        def owner_look_up(request: web.Request) -> None:
            if "idList" in request.query and request.query["select"].startswith("id,dateCreated"):
                look_ups.append(request.query["idList"])

        sim.on_request(owner_look_up)
        async with client() as dm:
            again = await export_sharded(dm, out, 4, progress=False, page_size=50)
        assert again.complete
        assert len(look_ups) == 1
        merge(out, tmp_path / "merged.jsonl")
        assert sorted(read_ids(tmp_path / "merged.jsonl")) == sim.customer_ids()
