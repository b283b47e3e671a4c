"""A model-based check: a real client drives the simulator through random sequences of every
operation (create, upsert with identities, update to values and to null, delete, get, identities
add/find/lookup/list, count and list/list_rows with filters, sorts, selects and page sizes, customer
statistics), and each answer is checked against a plain model of what docs/contract.md says the
service holds. It found a create that made a duplicate after a delete (tests/simulator/
test_sim_api.py). Derandomized and bounded: about 10 s here.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from dmhub_async import APIError, DMHubClient, Identity, MemoryTokenStore, NotFoundError
from dmhub_async._converter import wire_names
from dmhub_async.models.customer import Customer
from dmhub_async.testing import DMHubSimulator, FakeClock

WIRE = wire_names(Customer)
SEEDED = 6

MOBILES = ["13800000001", "13800000002"]
EMAILS = ["a@x.cn"]
STAGES = ["lead", "customer", None]
SOURCES = ["web", "shop", None]
TYPES = ["wechat", "email", "my-shop"]
VALUES = ["v1", "v2", "v3"]

text = st.sampled_from(["", "小D", "Bob", "x y"])
field_values = {
    "name": st.one_of(st.none(), text),
    "nick_name": st.one_of(st.none(), text),
    "mobile": st.sampled_from([None, *MOBILES]),
    "email": st.sampled_from([None, *EMAILS]),
    "mobile_verified": st.one_of(st.none(), st.booleans()),
    "stage": st.sampled_from([*STAGES, ""]),
    "source": st.sampled_from(SOURCES),
    "gender": st.sampled_from([None, 0, 1, 2]),
    "remark": st.one_of(st.none(), text),
    "employee_number": st.one_of(st.none(), st.integers(0, 1000)),
    "annual_revenue": st.one_of(st.none(), st.sampled_from([Decimal("1.5"), Decimal("10")])),
    "is_employee": st.one_of(st.none(), st.booleans()),
    "attr": st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["attr1", "attr2"]), st.one_of(st.none(), st.sampled_from(["p", "q"]))
        ),
    ),
}
MODEL_FIELDS = list(field_values)


def fields_st(min_size: int = 0):  # type: ignore[no-untyped-def]
    return st.fixed_dictionaries({}, optional={k: v for k, v in field_values.items()}).filter(
        lambda d: len(d) >= min_size
    )


identity_st = st.builds(
    Identity, st.sampled_from(TYPES), st.sampled_from(VALUES), st.sampled_from([None, "n1", "n2"])
)


def iso_epoch(s: str) -> int:
    return int(
        datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    )


class Model:
    def __init__(self) -> None:
        self.rows: dict[int, dict] = {}  # id -> snake_case values, plus created/updated epochs
        self.bound: dict[tuple[str, str], tuple[int, str | None]] = {}
        self.stats: set[int] = set()


def apply(row: dict, fields: dict, clear: bool) -> None:
    fields = dict(fields)
    for addr, flag in (("mobile", "mobile_verified"), ("email", "email_verified")):
        after = fields.get(addr, row.get(addr))
        if after is None and not clear:  # a null that cannot clear keeps the address
            after = row.get(addr)
        if row.get(flag) and flag in fields and not fields[flag] and after == row.get(addr):
            del fields[flag]
    for k, v in fields.items():
        if k == "attr":
            if v is None:
                if clear:
                    row["attr"] = {}
                continue
            attr = dict(row.get("attr") or {})
            for a, x in v.items():
                if x is not None or clear:
                    attr[a] = x
            row["attr"] = attr
        elif v is None:
            if clear:
                row[k] = (
                    False if k in ("mobile_verified", "email_verified", "is_employee") else None
                )
        else:
            row[k] = v


def norm(k: str, v):  # type: ignore[no-untyped-def]
    if k == "gender":
        return int(v or 0)
    if k in ("mobile_verified", "email_verified", "is_employee"):
        return bool(v)
    if k == "attr":
        return dict(v or {})
    if k == "annual_revenue" and v is not None:
        return Decimal(str(v))
    return v


class Machine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.sim = DMHubSimulator(SEEDED, seed=3, clock=self.clock, page_cap=5)
        self.run(self.sim.start())
        self.dm = DMHubClient(
            self.sim.app_id,
            self.sim.secret,
            base_url=self.sim.url,
            clock=self.clock,
            sleep=self.clock.sleep,
            token_store=MemoryTokenStore(),
            timezone="UTC",
            max_retries=0,
        )
        self.m = Model()
        self.log: list[str] = []
        # The seeded world, read once through the store (the truth at the start).
        for cid in self.sim.store.ids():
            w = self.sim.store.get(cid)
            row = {k: norm(k, w.get(WIRE[k])) for k in MODEL_FIELDS}
            row["email_verified"] = bool(w.get("emailVerified"))
            row["display"] = w.get("displayName")  # one in sixteen has none (README)
            row["created"] = iso_epoch(w["dateCreated"])
            row["updated"] = iso_epoch(w["lastUpdated"])
            self.m.rows[cid] = row
            for t, v, n in self.sim.store.identities(cid):
                self.m.bound[(t, v)] = (cid, n)
        self.m.stats = set(self.sim.store._stat_ids.tolist())

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def teardown(self) -> None:
        self.run(self.dm.aclose())
        self.run(self.sim.aclose())
        self.loop.close()

    def now(self) -> int:
        return int(self.clock.now)

    def ids(self) -> list[int]:
        return sorted(self.m.rows)

    def holders(self, field: str, value) -> list[int]:  # type: ignore[no-untyped-def]
        return [i for i, r in sorted(self.m.rows.items()) if r.get(field) == value]

    def match(self, fields: dict) -> list[int]:
        if fields.get("mobile"):
            h = self.holders("mobile", fields["mobile"])
            if h:
                return h
        if fields.get("email"):
            h = self.holders("email", fields["email"])
            if h:
                return h
        return []

    def new_row(self, cid: int, fields: dict) -> None:
        row = {k: None for k in MODEL_FIELDS}
        row.update(
            gender=0, mobile_verified=False, email_verified=False, is_employee=False, attr={}
        )
        apply(row, fields, clear=False)
        row["created"] = row["updated"] = self.now()
        row["display"] = row["name"] or row["nick_name"]
        self.m.rows[cid] = {k: norm(k, v) if k in MODEL_FIELDS else v for k, v in row.items()}

    def update_row(self, cid: int, fields: dict, clear: bool) -> None:
        row = self.m.rows[cid]
        apply(row, fields, clear)
        for k in MODEL_FIELDS:
            row[k] = norm(k, row.get(k))
        row["updated"] = self.now()
        row["display"] = row["name"] or row["nick_name"]

    def check_customer(self, c: Customer, fields=None) -> None:  # type: ignore[no-untyped-def]
        row = self.m.rows[c.id]
        for k in fields or MODEL_FIELDS:
            got = norm(k, getattr(c, k))
            assert got == row[k], (c.id, k, got, row[k])
        if not fields:
            assert c.display_name == row["display"], (c.display_name, row)
            assert int(c.date_created.timestamp()) == row["created"]
            assert int(c.last_updated.timestamp()) == row["updated"], (
                c.last_updated,
                row["updated"],
            )

    # -- rules --------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0, 1, 59, 3600]))
    def tick(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(fields=fields_st())
    def create(self, fields: dict) -> None:
        matched = self.match(fields)
        c = self.run(self.dm.customers.create(**fields))
        self.log.append(f"create {fields} -> {c.id}")
        if matched:
            assert c.id in matched, (c.id, matched)
            self.update_row(c.id, fields, clear=False)
        else:
            assert c.id not in self.m.rows
            self.new_row(c.id, fields)
        self.check_customer(c)

    @rule(
        idents=st.lists(identity_st, min_size=1, max_size=3, unique_by=lambda i: (i.type, i.value)),
        fields=fields_st(),
    )
    def upsert(self, idents: list[Identity], fields: dict) -> None:
        owner = None
        for i in idents:
            if (i.type, i.value) in self.m.bound:
                owner = [self.m.bound[(i.type, i.value)][0]]
                break
        if owner is None:
            owner = self.match(fields)
        c = self.run(self.dm.customers.create_with_identities(idents, **fields))
        self.log.append(f"upsert {idents} {fields} -> {c.id}")
        if owner:
            assert c.id in owner, (c.id, owner)
            self.update_row(c.id, fields, clear=False)
        else:
            assert c.id not in self.m.rows
            self.new_row(c.id, fields)
        for i in idents:
            self.m.bound.setdefault((i.type, i.value), (c.id, i.name))
        self.check_customer(c)

    @precondition(lambda self: self.m.rows)
    @rule(data=st.data(), fields=fields_st(min_size=1))
    def update(self, data, fields: dict) -> None:  # type: ignore[no-untyped-def]
        cid = data.draw(st.sampled_from(self.ids()))
        c = self.run(self.dm.customers.update(cid, **fields))
        self.log.append(f"update {cid} {fields}")
        self.update_row(cid, fields, clear=True)
        self.check_customer(c)

    @precondition(lambda self: self.m.rows)
    @rule(data=st.data())
    def delete(self, data) -> None:  # type: ignore[no-untyped-def]
        cid = data.draw(st.sampled_from(self.ids()))
        self.run(self.dm.customers.delete(cid))
        self.log.append(f"delete {cid}")
        del self.m.rows[cid]
        self.m.bound = {k: v for k, v in self.m.bound.items() if v[0] != cid}
        self.m.stats.discard(cid)

    @rule(cid=st.integers(1, 10**6))
    def missing(self, cid: int) -> None:
        if cid in self.m.rows:
            return
        for call in (
            self.dm.customers.get(cid),
            self.dm.customers.delete(cid),
            self.dm.customers.update(cid, remark="x"),
        ):
            try:
                self.run(call)
            except NotFoundError:
                pass
            else:
                raise AssertionError(f"no NotFoundError for {cid}")

    @precondition(lambda self: self.m.rows)
    @rule(data=st.data())
    def get(self, data) -> None:  # type: ignore[no-untyped-def]
        cid = data.draw(st.sampled_from(self.ids()))
        self.check_customer(self.run(self.dm.customers.get(cid)))

    @precondition(lambda self: self.m.rows)
    @rule(data=st.data(), ident=identity_st)
    def add_identity(self, data, ident: Identity) -> None:  # type: ignore[no-untyped-def]
        cid = data.draw(st.sampled_from(self.ids()))
        key = (ident.type, ident.value)
        if key in self.m.bound and self.m.bound[key][0] != cid:
            try:
                self.run(self.dm.identities.add(cid, ident))
            except APIError:
                return
            raise AssertionError("bound to another, yet added")
        b = self.run(self.dm.identities.add(cid, ident))
        self.m.bound.setdefault(key, (cid, ident.name))
        assert (b.customer_id, b.type, b.value, b.name) == (
            cid,
            ident.type,
            ident.value,
            self.m.bound[key][1],
        ), b

    @rule(ident=identity_st)
    def find(self, ident: Identity) -> None:
        key = (ident.type, ident.value)
        found = self.run(self.dm.identities.find(ident))
        want = [(self.m.bound[key][0], self.m.bound[key][1])] if key in self.m.bound else []
        assert [(f.customer_id, f.name) for f in found] == want, (found, want)
        assert self.run(self.dm.identities.lookup(ident)) == (want[0][0] if want else None)

    @rule(data=st.data())
    def list_identities(self, data) -> None:  # type: ignore[no-untyped-def]
        pool = [*self.ids(), 10**7]
        cids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4))
        got = self.run(self.dm.identities.list(cids))
        want = sorted((v[0], k[0], k[1], v[1]) for k, v in self.m.bound.items() if v[0] in cids)
        assert sorted((g.customer_id, g.type, g.value, g.name) for g in got) == want, (got, want)

    def filters_st(self):  # type: ignore[no-untyped-def]
        t0 = min((r["created"] for r in self.m.rows.values()), default=self.now())
        times = st.sampled_from(sorted({t0, self.now(), self.now() - 1, self.now() - 3600}))
        return st.fixed_dictionaries(
            {},
            optional={
                "stage": st.sampled_from(["lead", "customer", "_empty", ""]),
                "source": st.sampled_from(["web", "shop"]),
                "gender": st.sampled_from([0, 1, 2]),
                "mobile": st.sampled_from(MOBILES),
                "email": st.sampled_from(EMAILS),
                "id_list": st.lists(st.sampled_from([*self.ids(), 10**7]), min_size=1, max_size=4),
                "date_created_from": times,
                "date_created_to": times,
                "last_updated_from": times,
                "last_updated_to": times,
            },
        )

    def expected(self, f: dict) -> list[int]:
        out = []
        for cid, r in sorted(self.m.rows.items()):
            if "stage" in f:
                if f["stage"] in ("_empty", ""):
                    if r["stage"]:
                        continue
                elif r["stage"] != f["stage"]:
                    continue
            if "source" in f and r["source"] != f["source"]:
                continue
            if "gender" in f and r["gender"] != f["gender"]:
                continue
            if "mobile" in f and r["mobile"] != f["mobile"]:
                continue
            if "email" in f and r["email"] != f["email"]:
                continue
            if "id_list" in f and cid not in f["id_list"]:
                continue
            if "date_created_from" in f and r["created"] < f["date_created_from"]:
                continue
            if "date_created_to" in f and r["created"] > f["date_created_to"]:
                continue
            if "last_updated_from" in f and r["updated"] < f["last_updated_from"]:
                continue
            if "last_updated_to" in f and r["updated"] > f["last_updated_to"]:
                continue
            out.append(cid)
        return out

    @staticmethod
    def sent(f: dict) -> dict:
        return {
            k: (datetime.fromtimestamp(v, timezone.utc) if k.startswith(("date_", "last_")) else v)
            for k, v in f.items()
        }

    def bad_range(self, f: dict) -> bool:
        return any(
            a in f and b in f and f[a] > f[b]
            for a, b in (
                ("date_created_from", "date_created_to"),
                ("last_updated_from", "last_updated_to"),
            )
        )

    @rule(data=st.data())
    def count(self, data) -> None:  # type: ignore[no-untyped-def]
        f = data.draw(self.filters_st())
        if self.bad_range(f):
            return
        n = self.run(self.dm.customers.count(**self.sent(f)))
        assert n == len(self.expected(f)), (f, n, self.expected(f))

    @rule(
        data=st.data(),
        page_size=st.integers(1, 7),
        rows=st.booleans(),
        sort=st.sampled_from([None, "id", "name", "stage", "gender", "employee_number"]),
        order=st.sampled_from([None, "asc", "desc"]),
        select=st.one_of(
            st.none(),
            st.lists(
                st.sampled_from(["name", "mobile", "stage", "gender", "attr", "employee_number"]),
                min_size=1,
                max_size=3,
                unique=True,
            ),
        ),
        concurrency=st.sampled_from([1, 3]),
    )
    def walk(self, data, page_size, rows, sort, order, select, concurrency) -> None:  # type: ignore[no-untyped-def]
        f = data.draw(self.filters_st())
        if self.bad_range(f):
            return
        kw = self.sent(f)
        if sort:
            kw["sort_by"] = sort
        if order:
            kw["sort_order"] = order
        if select:
            kw["select"] = select
        meth = self.dm.customers.list_rows if rows else self.dm.customers.list

        async def go():  # type: ignore[no-untyped-def]
            return [x async for x in meth(page_size=page_size, concurrency=concurrency, **kw)]

        got = self.run(go())
        want = self.expected(f)
        ids = [g["id"] if rows else g.id for g in got]
        assert sorted(ids) == want, (f, kw, ids, want)
        assert len(set(ids)) == len(ids)
        if sort in (None, "id"):
            assert ids == (want[::-1] if order == "desc" else want), (ids, want)
        else:
            vals = [self.m.rows[i][sort] for i in ids]
            keyed = [(0,) if v is None else (1, v) for v in vals]
            exp = sorted(keyed, reverse=order == "desc")
            assert keyed == exp, (sort, order, vals)
        for g in got:
            if rows:
                row = self.m.rows[g["id"]]
                for k in select or MODEL_FIELDS:
                    assert WIRE[k] in g or k == "attr", (k, g)  # none on some (README)
                    assert norm(k, g[WIRE[k]]) == row[k], (k, g, row)
                if select:
                    extra = set(g) - {"id", *(WIRE[k] for k in select)}
                    assert not extra, extra
            else:
                self.check_customer(g, select)

    @rule(data=st.data(), page_size=st.integers(1, 7), order=st.sampled_from([None, "desc"]))
    def statistics(self, data, page_size, order) -> None:  # type: ignore[no-untyped-def]
        cid = data.draw(st.one_of(st.none(), st.sampled_from([*sorted(self.m.rows), 10**7])))

        async def go():  # type: ignore[no-untyped-def]
            kw = {"customer_id": cid} if cid is not None else {}
            if order:
                kw["sort_order"] = order
            return [s async for s in self.dm.customer_statistics.list(page_size=page_size, **kw)]

        got = [s.customer_id for s in self.run(go())]
        want = sorted(self.m.stats) if cid is None else sorted(self.m.stats & {cid})
        if order == "desc":
            want = want[::-1]
        assert got == want, (got, want)


Machine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
TestModel = Machine.TestCase
