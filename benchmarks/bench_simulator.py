"""What a list page costs the bundled simulator, filtered and not (issue 14 item 11).

``python -m benchmarks.bench_simulator [--quick] [--customers N]``: the store's time to seed
its customers (100,000 in about 0.3 s; a test counts their bytes, not this), then to answer one
100-row page (``CustomerStore.page``, no HTTP) for a walk's first page and the median of its
next pages, unfiltered, by stage, by source and gender, and by a ten-day ``dateCreated`` range
(what the sharded export asks on every page).
"""

from __future__ import annotations

import argparse
import statistics
import time

from dmhub_async.testing._filters import Filters
from dmhub_async.testing._seeded_rows import CREATED_EPOCH
from dmhub_async.testing._store import CustomerStore

DAY = 86_400
PAGE = 100


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="5,000 customers, 5 pages")
    args = parser.parse_args(argv)
    customers, pages = (5_000, 5) if args.quick else (args.customers, 20)
    store = CustomerStore(0, time.time)
    started = time.perf_counter()
    store.seed(customers)
    seeded = _ms(started)
    first = store.get(store.ids()[0])
    assert first is not None
    cases = {
        "unfiltered": Filters(),
        "stage=lead": Filters(stage="lead"),
        "source + gender": Filters(source=first["source"], gender=1),
        "dateCreated, 10 days": Filters(
            created_from=CREATED_EPOCH + 5 * DAY, created_to=CREATED_EPOCH + 15 * DAY
        ),
    }
    print(f"simulator seeding of {customers:,} customers: {seeded:.0f} ms")
    print(f"simulator list page ({PAGE} rows) on {customers:,} customers, store only")
    print(f"{'filter':24s} {'records':>8s} {'first page':>11s} {'next pages':>11s}")
    for name, f in cases.items():
        started = time.perf_counter()
        records, _ = store.page(f, "id", False, 0, PAGE)
        cold = _ms(started)
        warm = []
        for page in range(1, min(pages, max(2, records // PAGE))):
            started = time.perf_counter()
            store.page(f, "id", False, page * PAGE, PAGE)
            warm.append(_ms(started))
        median = statistics.median(warm) if warm else float("nan")
        print(f"{name:24s} {records:8d} {cold:8.2f} ms {median:8.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
