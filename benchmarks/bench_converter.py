"""Benchmark: a 1,000-customer page from bytes to typed objects, ours against the usual tools.

Run ``python -m benchmarks.bench_converter`` (``--quick`` for a smoke run under 2 s). The
contenders run in alternation, round after round, so a noisy neighbour hits them all alike;
each is reported as the median and the min-max of its rounds, and as its median over ours.

- ours: ``dmhub_async._json.loads`` (orjson, with a stdlib fallback) +
  ``dmhub_async._converter.structure_customers``: what the session layer and the converter do
  with every page of a typed walk;
- pydantic: ``TypeAdapter(...).validate_json(bytes)`` with an equivalent v2 model (camelCase
  aliases, aware datetimes, Decimal, extra fields allowed);
- msgspec: ``msgspec.json.decode(bytes, type=...)`` with ``Struct(rename="camel")`` (drops
  unknown fields: it does less than the others);
- orjson / json: plain ``loads``, no typing at all: the floor;
- json.loads + our converter: ours on the standard library's parser (the fallback, and the
  path before the session layer decoded with orjson).
"""

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from dmhub_async._converter import structure_customers
from dmhub_async._json import loads as session_loads
from dmhub_async.models import Gender

try:
    from ._common import alternate, machine_info, ratio_table
except ImportError:  # run as a file: python benchmarks/bench_converter.py
    from _common import alternate, machine_info, ratio_table  # type: ignore[no-redef]

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


def make_customer(rng: random.Random, i: int) -> dict[str, Any]:
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
    if rng.random() < 0.1:
        row["levelScore"] = rng.randint(0, 1000)
        row["tags"] = ["会员", "高价值"]
    return row


def make_page(n: int, seed: int = 1) -> bytes:
    """A ``GET /v1/customers`` answer of ``n`` customers, as the UTF-8 JSON bytes."""
    rng = random.Random(seed)
    page = {"rows": [make_customer(rng, i) for i in range(n)], "records": n, "total": 1}
    return json.dumps(page, ensure_ascii=False).encode()


def _ours() -> Callable[[bytes], int]:
    """The session layer's decode + the converter: what a typed walk does with each page."""
    loads = session_loads

    def run(body: bytes) -> int:
        return len(structure_customers(loads(body)["rows"]))

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


def _msgspec() -> Callable[[bytes], int]:
    """msgspec Structs (camelCase rename); unknown fields are dropped, not kept."""
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
        is_employee: bool | None = None
        campaign_id: str | None = None
        campaign_name: str | None = None
        last_updated: datetime | None = None
        remark: str | None = None
        date_created: datetime | None = None
        attr: dict[str, Any] = msgspec.field(default_factory=dict)
        owner_id: int | str | None = None
        owner_name: str | None = None
        is_member: bool | None = None

    class MsPage(msgspec.Struct):
        rows: list[MsCustomer]
        records: int | None = None
        total: int | None = None

    decoder = msgspec.json.Decoder(MsPage)

    def run(body: bytes) -> int:
        return len(decoder.decode(body).rows)

    return run


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
    "pydantic v2 validate_json(bytes)": _pydantic_json,
    "pydantic v2 json.loads+validate_python": _pydantic_python,
    "msgspec Struct decode": _msgspec,
    "json.loads + our converter (fallback)": _ours_stdlib,
    "orjson.loads (no typing)": _orjson,
    "json.loads (no typing)": _stdlib_json,
}


def run_benchmark(size: int, rounds: int, number: int, pages: int = 8) -> dict[str, list[float]]:
    """Time every available contender, alternating, ``rounds`` times; seconds per page.

    Each timing reads ``number`` pages taken in turn from ``pages`` distinct ones, as an export
    reads new pages (so no cache of ours sees the same timestamps again and again); in a round
    every contender reads the same ones.
    """
    bodies = [make_page(size, seed) for seed in range(1, pages + 1)]
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


def report(times: dict[str, list[float]], size: int, body_len: int) -> str:
    """The results table: median, min-max, and each one's time over ours (median per round)."""
    ours = next(iter(times))
    return "\n".join(
        [
            f"{size} customers, {body_len / 1e6:.2f} MB of JSON per page, "
            f"{len(times[ours])} rounds; ms per page",
            ratio_table(times, reference=ours, ratio_header="vs ours", unit="ms"),
            "vs ours: the median, over rounds, of a contender's time over ours in the same round "
            "(above 1: ours is faster)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the machine, the contenders and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--size", type=int, default=1000, help="customers per page")
    parser.add_argument("--rounds", type=int, default=30, help="alternating rounds")
    parser.add_argument("--number", type=int, default=4, help="pages per timing")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds, args.number = 100, 3, 2
    print(machine_info())
    times = run_benchmark(args.size, args.rounds, args.number)
    print(report(times, args.size, len(make_page(args.size))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
