"""Benchmark: a 1,000-customer page from bytes to typed objects, ours against the usual tools.

Run ``python -m benchmarks.bench_converter`` (``--quick`` for a smoke run under 2 s). The
contenders run in alternation, round after round, so a noisy neighbour hits them all alike;
each is reported as the median and the min-max of its rounds, and as its median over ours.

- ours: ``dmhub_async._json.loads`` (orjson, with a stdlib fallback) +
  ``dmhub_async._converter.structure_customers``: what the session layer and the converter do
  with every page of a typed walk;
- ours, page reader: ``dmhub_async._converter.read_customer_page``, bytes to models: msgspec's
  typed decode (the optional ``fast`` extra) with each record msgspec refuses (an unknown
  field...) read the lenient way;
- pydantic: ``TypeAdapter(...).validate_json(bytes)`` with an equivalent v2 model (camelCase
  aliases, aware datetimes, Decimal, extra fields allowed);
- msgspec: ``msgspec.json.decode(bytes, type=...)`` with ``Struct(rename="camel")`` (drops
  unknown fields: it does less than the others);
- orjson / json: plain ``loads``, no typing at all: the floor;
- json.loads + our converter: ours on the standard library's parser (the fallback, and the
  path before the session layer decoded with orjson).
- orjson + attrs build, no conversion: every wire key read and every slot of a ``Customer`` set,
  nothing checked or converted: the floor of any converter that builds attrs models from
  orjson's dicts in Python (ours does that, plus the conversions).
- msgspec Struct + attrs build: msgspec's typed decode, then the same attrs build from each
  Struct: what a converter built on msgspec could reach at best (no UTC or gender fix-up).

Every ratio is the median, over rounds, of a contender's time over the reference's in the same
round, and its spread the interquartile range of those round ratios: a noisy machine widens the
spread, and a ratio whose spread is wide is not a figure to publish.
"""

import argparse
import json
import operator
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import attrs

from dmhub_async._converter import read_customer_page, structure_customers, wire_names
from dmhub_async._converter.names import wire_order
from dmhub_async._json import loads as session_loads
from dmhub_async.models import Customer, Gender

try:
    from ._common import alternate, machine_info, record_times, write_results
except ImportError:  # run as a file: python benchmarks/bench_converter.py
    from _common import (  # type: ignore[no-redef]
        alternate,
        machine_info,
        record_times,
        write_results,
    )

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂"
_PLACES = [
    ("中国", "上海", "上海", "浦东新区"),
    ("中国", "北京", "北京", "朝阳区"),
    ("中国", "广东", "深圳", "南山区"),
    ("中国", "浙江", "杭州", "西湖区"),
]
_EPOCH = datetime(2016, 1, 1, tzinfo=timezone.utc)


def _timestamp(rng: random.Random) -> str:
    """A random contract-form UTC timestamp within three years."""
    moment = _EPOCH + timedelta(seconds=rng.randrange(3 * 365 * 86400))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_customer(rng: random.Random, i: int, unknown_share: float = 0.1) -> dict[str, Any]:
    """One realistic wire customer: Chinese text, every field, some nulls, sometimes extras."""
    name = rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.randint(1, 2)))
    country, province, city, county = rng.choice(_PLACES)
    created = _timestamp(rng)
    full = rng.random() < 0.8
    row: dict[str, Any] = {
        "id": 100_000 + i,
        "displayName": name,
        "name": name,
        "img": f"https://img.example.com/avatar/{i}.png" if full else None,
        "gender": rng.choice([None, 0, 1, 2]),
        "mobile": f"186{rng.randrange(10**8):08d}",
        "mobileVerified": rng.random() < 0.5,
        "email": f"user{i}@example.com" if full else None,
        "emailVerified": rng.random() < 0.3,
        "birthday": f"19{rng.randint(60, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "wechat": f"wx_{i}" if full else None,
        "nickName": rng.choice([None, name + "的微信", "小" + name[-1]]),
        "country": country,
        "province": province,
        "city": city,
        "county": county,
        "homeAddress": f"{city}市{county}幸福路{rng.randint(1, 999)}号" if full else None,
        "officeAddress": f"{city}市{county}科技园{rng.randint(1, 50)}栋" if full else None,
        "qq": str(rng.randrange(10**9)) if full else None,
        "weibo": None,
        "stage": rng.choice(["lead", "customer", None]),
        "dateJoin": created,
        "source": rng.choice(["web", "wechat", "offline"]),
        "contentName": rng.choice(["春季促销", "双十一活动", None]),
        "company": "某某科技有限公司" if full else None,
        "title": rng.choice(["经理", "工程师", None]),
        "industry": rng.choice(["互联网", "零售", None]),
        "employeeNumber": rng.choice([None, 50, 200, 5000]),
        "annualRevenue": rng.choice([None, 1_000_000, 2_500_000.5, 12_345.67]),
        "website": "https://example.com" if full else None,
        "telephone": "021-12345678" if full else None,
        "ownerId": rng.choice([None, 17]),
        "ownerName": rng.choice([None, "销售一部"]),
        "isEmployee": False,
        "campaignId": rng.choice([None, "c-2017-01"]),
        "campaignName": rng.choice([None, "新年活动"]),
        "lastUpdated": _timestamp(rng),
        "remark": rng.choice([None, "重要客户", "vip"]),
        "isMember": rng.random() < 0.2,
        "dateCreated": created,
        "attr": {"attr1": rng.choice([None, "西门剑铺"]), "attr2": rng.randint(0, 100)},
    }
    if rng.random() < unknown_share:
        row["levelScore"] = rng.randint(0, 1000)
        row["tags"] = ["会员", "高价值"]
    return row


def make_page(n: int, seed: int = 1, unknown_share: float = 0.1) -> bytes:
    """A ``GET /v1/customers`` answer of ``n`` customers, as the UTF-8 JSON bytes.

    ``unknown_share`` of the rows carry two fields the model does not know.
    """
    rng = random.Random(seed)
    rows = [make_customer(rng, i, unknown_share) for i in range(n)]
    page = {"rows": rows, "records": n, "total": 1}
    return json.dumps(page, ensure_ascii=False).encode()


def _ours() -> Callable[[bytes], int]:
    """The session layer's decode + the converter: what a typed walk does with each page."""
    loads = session_loads

    def run(body: bytes) -> int:
        return len(structure_customers(loads(body)["rows"]))

    return run


def _ours_page_reader() -> Callable[[bytes], int]:
    """The converter's page reader: bytes to models, msgspec first when installed."""

    def run(body: bytes) -> int:
        return len(read_customer_page(body)[0])

    return run


def _ours_stdlib() -> Callable[[bytes], int]:
    """json.loads + the converter: ours when a body falls back to the standard library."""
    loads = json.loads

    def run(body: bytes) -> int:
        return len(structure_customers(loads(body)["rows"]))

    return run


def _pydantic_adapter() -> Any:
    """A pydantic v2 ``TypeAdapter`` of a page of a model equivalent to ``Customer``."""
    import pydantic
    from pydantic.alias_generators import to_camel

    class PydCustomer(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(
            alias_generator=to_camel, extra="allow", populate_by_name=True
        )

        id: int | None = None
        display_name: str | None = None
        name: str | None = None
        img: str | None = None
        gender: Gender | None = Gender.UNKNOWN
        mobile: str | None = None
        mobile_verified: bool | None = None
        email: str | None = None
        email_verified: bool | None = None
        birthday: str | None = None
        wechat: str | None = None
        nick_name: str | None = None
        country: str | None = None
        province: str | None = None
        city: str | None = None
        county: str | None = None
        home_address: str | None = None
        office_address: str | None = None
        qq: str | None = None
        weibo: str | None = None
        stage: str | None = None
        date_join: datetime | None = None
        source: str | None = None
        content_name: str | None = None
        company: str | None = None
        title: str | None = None
        industry: str | None = None
        employee_number: int | None = None
        annual_revenue: Decimal | None = None
        website: str | None = None
        telephone: str | None = None
        is_employee: bool | None = None
        campaign_id: str | None = None
        campaign_name: str | None = None
        last_updated: datetime | None = None
        remark: str | None = None
        date_created: datetime | None = None
        attr: dict[str, Any] = pydantic.Field(default_factory=dict)
        owner_id: int | str | None = None
        owner_name: str | None = None
        is_member: bool | None = None

    class PydPage(pydantic.BaseModel):
        rows: list[PydCustomer]
        records: int | None = None
        total: int | None = None

    return pydantic.TypeAdapter(PydPage)


def _pydantic_json() -> Callable[[bytes], int]:
    """pydantic v2 ``validate_json``: parses and validates the bytes in Rust."""
    adapter = _pydantic_adapter()

    def run(body: bytes) -> int:
        return len(adapter.validate_json(body).rows)

    return run


def _pydantic_python() -> Callable[[bytes], int]:
    """``json.loads`` + pydantic v2 ``validate_python``: a pydantic SDK on this session layer."""
    adapter = _pydantic_adapter()
    loads = json.loads

    def run(body: bytes) -> int:
        return len(adapter.validate_python(loads(body)).rows)

    return run


def _attrs_builder(order: list[str]) -> Callable[[Any], Customer]:
    """A function that sets the slots of a fresh ``Customer`` from a tuple in ``order``."""
    targets = ", ".join(f"self.{name}" for name in order)
    source = (
        "def build(values):\n"
        "    self = _new(_cls)\n"
        f"    ({targets},) = values\n"
        "    self.extra = {}\n"
        "    return self\n"
    )
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": Customer}
    exec(source, namespace)
    return namespace["build"]  # type: ignore[no-any-return]


_FIELDS = [a.name for a in attrs.fields(Customer) if a.name != "extra"]


def _orjson_bare() -> Callable[[bytes], int]:
    """orjson + every slot set from the row, nothing converted: the floor of our approach."""
    import orjson

    names = wire_names(Customer)
    read = operator.itemgetter(*(names[f] for f in _FIELDS))
    build = _attrs_builder(_FIELDS)
    get = dict.get

    def row(o: dict[str, Any]) -> Customer:
        try:
            return build(read(o))
        except KeyError:
            return build([get(o, names[f]) for f in _FIELDS])

    def run(body: bytes) -> int:
        return len([row(o) for o in orjson.loads(body)["rows"]])

    return run


def _msgspec_attrs() -> Callable[[bytes], int]:
    """msgspec's typed decode, then the attrs build from each Struct (a what-if)."""
    import msgspec

    decoder = msgspec.json.Decoder(_msgspec_page_type())
    astuple = msgspec.structs.astuple
    build = _attrs_builder(wire_order(Customer))  # the Struct's order

    def run(body: bytes) -> int:
        return len([build(astuple(s)) for s in decoder.decode(body).rows])

    return run


def _msgspec() -> Callable[[bytes], int]:
    """msgspec Structs (camelCase rename); unknown fields are dropped, not kept."""
    import msgspec

    decoder = msgspec.json.Decoder(_msgspec_page_type())

    def run(body: bytes) -> int:
        return len(decoder.decode(body).rows)

    return run


def _msgspec_page_type() -> Any:
    """The msgspec Struct of a page of customers, fields in the order the service sends them.

    msgspec finds each key at its first guess when the fields come in the record's order; in
    ``Customer``'s order (this reference until issue 15's thirtieth round, when the SDK's
    reader took the service's) it scans for four keys a record, 4% of its decode.
    """
    import msgspec

    class MsCustomer(msgspec.Struct, rename="camel", kw_only=True):
        id: int | None = None
        display_name: str | None = None
        name: str | None = None
        img: str | None = None
        gender: Gender | None = Gender.UNKNOWN
        mobile: str | None = None
        mobile_verified: bool | None = None
        email: str | None = None
        email_verified: bool | None = None
        birthday: str | None = None
        wechat: str | None = None
        nick_name: str | None = None
        country: str | None = None
        province: str | None = None
        city: str | None = None
        county: str | None = None
        home_address: str | None = None
        office_address: str | None = None
        qq: str | None = None
        weibo: str | None = None
        stage: str | None = None
        date_join: datetime | None = None
        source: str | None = None
        content_name: str | None = None
        company: str | None = None
        title: str | None = None
        industry: str | None = None
        employee_number: int | None = None
        annual_revenue: Decimal | None = None
        website: str | None = None
        telephone: str | None = None
        owner_id: int | str | None = None
        owner_name: str | None = None
        is_employee: bool | None = None
        campaign_id: str | None = None
        campaign_name: str | None = None
        last_updated: datetime | None = None
        remark: str | None = None
        is_member: bool | None = None
        date_created: datetime | None = None
        attr: dict[str, Any] = msgspec.field(default_factory=dict)

    class MsPage(msgspec.Struct):
        rows: list[MsCustomer]
        records: int | None = None
        total: int | None = None

    assert list(MsCustomer.__struct_fields__) == wire_order(Customer)
    return MsPage


def _orjson() -> Callable[[bytes], int]:
    """orjson.loads only: parsing, no typing (the floor)."""
    import orjson

    def run(body: bytes) -> int:
        return len(orjson.loads(body)["rows"])

    return run


def _stdlib_json() -> Callable[[bytes], int]:
    """json.loads only: the standard library's parse, no typing."""

    def run(body: bytes) -> int:
        return len(json.loads(body)["rows"])

    return run


CONTENDERS: dict[str, Callable[[], Callable[[bytes], int]]] = {
    "ours (_json.loads + cattrs converter)": _ours,
    "ours, page reader (msgspec + lenient rows)": _ours_page_reader,
    "pydantic v2 validate_json(bytes)": _pydantic_json,
    "pydantic v2 json.loads+validate_python": _pydantic_python,
    "msgspec Struct decode": _msgspec,
    "msgspec Struct + attrs build (what-if)": _msgspec_attrs,
    "orjson + attrs build, no conversion (floor)": _orjson_bare,
    "json.loads + our converter (fallback)": _ours_stdlib,
    "orjson.loads (no typing)": _orjson,
    "json.loads (no typing)": _stdlib_json,
}


def run_benchmark(
    size: int, rounds: int, number: int, pages: int = 8, unknown_share: float = 0.1
) -> dict[str, list[float]]:
    """Time every available contender, alternating, ``rounds`` times; seconds per page.

    Each timing reads ``number`` pages taken in turn from ``pages`` distinct ones, as an export
    reads new pages (so no cache of ours sees the same timestamps again and again); in a round
    every contender reads the same ones.
    """
    bodies = [make_page(size, seed, unknown_share) for seed in range(1, pages + 1)]
    batches = [[bodies[(r * number + i) % pages] for i in range(number)] for r in range(rounds)]
    contenders: dict[str, Callable[[], float]] = {}
    for label, factory in CONTENDERS.items():
        try:
            run = factory()
        except ImportError as err:
            print(f"skipping {label}: {err}")
            continue
        if run(bodies[0]) != size:  # warm up, and check every one read every row
            raise AssertionError(f"{label} read the wrong number of rows")
        contenders[label] = _timed(run, iter(batches))
    return alternate(contenders, rounds)


def _timed(run: Callable[[bytes], int], batches: Any) -> Callable[[], float]:
    """A round of ``run``: the next batch, timed; seconds per page."""
    clock = time.perf_counter

    def timing() -> float:
        batch = next(batches)
        start = clock()
        for body in batch:
            run(body)
        return (clock() - start) / len(batch)

    return timing


MSGSPEC = "msgspec Struct decode"


def _ratio(samples: list[float], reference: list[float]) -> str:
    """The median round ratio and its interquartile range, as ``2.41x (2.30-2.55)``."""
    round_ratios = [t / ref for t, ref in zip(samples, reference, strict=True)]
    if len(round_ratios) < 2:
        return f"{round_ratios[0]:.2f}x"
    low, _, high = statistics.quantiles(round_ratios, n=4)
    return f"{statistics.median(round_ratios):.2f}x ({low:.2f}-{high:.2f})"


def report(times: dict[str, list[float]], size: int, body_len: int) -> str:
    """The results table: median, min-max, and each one's time over ours and over msgspec."""
    ours = next(iter(times))
    references = [label for label in (ours, MSGSPEC) if label in times]
    header = f"{'contender':<44} {'median ms':>9} {'min-max':>13}" + "".join(
        f" {'vs ' + ('ours' if r == ours else 'msgspec'):>19}" for r in references
    )
    lines = [
        f"{size} customers, {body_len / 1e6:.2f} MB of JSON per page, "
        f"{len(times[ours])} rounds; ms per page",
        header,
    ]
    for label, samples in times.items():
        span = f"{min(samples) * 1e3:.2f}-{max(samples) * 1e3:.2f}"
        cells = "".join(f" {_ratio(samples, times[r]):>19}" for r in references)
        lines.append(f"{label:<44} {statistics.median(samples) * 1e3:9.2f} {span:>13}{cells}")
    lines.append(
        "vs X: the median, over rounds, of a contender's time over X's in the same round, and "
        "(in brackets) the interquartile range of those ratios"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the machine, the contenders and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--size", type=int, default=1000, help="customers per page")
    parser.add_argument("--rounds", type=int, default=30, help="alternating rounds")
    parser.add_argument("--number", type=int, default=4, help="pages per timing")
    parser.add_argument(
        "--unknown-share",
        type=float,
        action="append",
        help="share of rows with fields the model does not know (repeatable; default 0.1 and 0)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds, args.number = 100, 3, 2
    print(machine_info())
    for share in args.unknown_share or [0.1, 0.0]:
        times = run_benchmark(args.size, args.rounds, args.number, unknown_share=share)
        print(f"\n--- {share:.0%} of the rows with unknown fields ---")
        print(report(times, args.size, len(make_page(args.size, unknown_share=share))))
        floors = {"msgspec": MSGSPEC, "orjson, no typing": "orjson.loads (no typing)"}
        shown = [x for x in times if share and x.startswith(("ours", "pydantic v2 validate_json"))]
        scenario = f"{args.size:,} customers a page, {share:.0%} unknown fields"
        record_times("2", scenario, times, floors=floors, summary=shown)
    if args.json:
        write_results(args.json, "bench_converter")
    return 0


if __name__ == "__main__":
    sys.exit(main())
