"""Benchmark: export N customers from the simulator: records/s and the exporter's peak RSS.

Run ``python benchmarks/bench_export.py`` (10,000 and 100,000 customers; ``--million`` adds
1,000,000; ``--quick`` is a smoke run of a few seconds). The goal is flat memory: the exporter's
peak RSS should not grow with the number of customers, and stay under 150 MB at a million.

The simulator runs in its own process (``dmhub-async simulate``, started by
``_common.simulator_process``), and each export runs in a fresh process too, so the peak RSS
measured (``ru_maxrss``) is the exporter's alone, from the interpreter's start to the end of
the export. ``baseline`` is that process's RSS after its
imports and before the export: ``growth`` is what the export itself added. ``CPU ms/page`` is
the exporter's CPU time (user + system, imports excluded) over the pages it read: the client's
cost of a page, which issue 15 asks to bring down. Each size is exported ``--runs`` times; the
table gives medians with the min-max range. ``--json PATH`` also writes the figures for
``python -m benchmarks``' summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    from ._common import (
        children_stopped_on_sigterm,
        machine_info,
        record,
        simulator_process,
        subprocess_env,
        write_results,
    )
except ImportError:  # run as a file (as the exporter process is): python benchmarks/bench_export.py
    from _common import (  # type: ignore[no-redef]
        children_stopped_on_sigterm,
        machine_info,
        record,
        simulator_process,
        subprocess_env,
        write_results,
    )

TIMEOUT = 1800  # seconds, for any one process

#: ru_maxrss is in kilobytes on Linux, bytes on macOS.
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def _rss_now() -> int:
    """Current RSS in bytes (VmRSS on Linux; the peak so far elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT


def _cpu_seconds() -> float:
    """This process's CPU time so far, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the exporter process ---------------------------------------------------------------------


def worker(url: str, out: str, fmt: str, page_size: int, concurrency: int) -> dict[str, Any]:
    """Export everything from the simulator at ``url``; what it took, as a dict."""
    from dmhub_async import DMHubClient
    from dmhub_async.export import export_customers

    baseline = _rss_now()
    cpu = _cpu_seconds()

    async def run() -> Any:
        async with DMHubClient("sim-app-id", "sim-secret", base_url=url) as dm:
            return await export_customers(
                dm, out, format=fmt, page_size=page_size, concurrency=concurrency, progress=False
            )

    report = asyncio.run(run())
    return {
        "cpu_seconds": _cpu_seconds() - cpu,
        "pages": math.ceil(report.exported / page_size),
        "exported": report.exported,
        "complete": report.complete,
        "seconds": report.seconds,
        "records_per_second": report.records_per_second,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT,
        "baseline_rss": baseline,
        "bytes": os.path.getsize(out),
    }


# -- the driver -------------------------------------------------------------------------------


def export_once(url: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One export in a fresh process."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        url,
        str(out),
        "--format",
        args.format,
        "--page-size",
        str(args.page_size),
        "--concurrency",
        str(args.concurrency),
    ]
    done = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the exporter failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def _spread(values: list[float], fmt: Any) -> str:
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every size, ``args.runs`` times; one summary row per size."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for size in args.sizes:
            with simulator_process(size) as sim:
                runs = []
                for n in range(args.runs):
                    out = Path(tmp) / f"export-{size}-{n}.{args.format}"
                    result = export_once(sim.url, args, out)
                    print(
                        f"  {size:,} customers, run {n + 1}/{args.runs}: "
                        f"{result['records_per_second']:,.0f} records/s, "
                        f"peak RSS {_mb(result['peak_rss'])} MB",
                        file=sys.stderr,
                        flush=True,
                    )
                    out.unlink()
                    if result["exported"] != size or not result["complete"]:
                        raise RuntimeError(f"exported {result['exported']} of {size} customers")
                    runs.append(result)
            rows.append({"customers": size, "runs": runs})
    return rows


def _cpu_per_page(runs: list[dict[str, Any]]) -> list[float]:
    """Each run's exporter CPU seconds over the pages it read."""
    return [r["cpu_seconds"] / max(r["pages"], 1) for r in runs]


def keep(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """:func:`record` each size's records/s, peak RSS and CPU a page for the runner."""
    scenario = f"export to {args.format}, concurrency {args.concurrency}, 0 ms"
    for row in rows:
        runs, size = row["runs"], f"{row['customers']:,} customers"
        rates = [r["records_per_second"] for r in runs]
        record("5", scenario, f"{size}: records/s", rates, unit="rec/s", scale=1, runs=runs)
        peaks = [r["peak_rss"] for r in runs]
        record("5", scenario, f"{size}: peak RSS", peaks, unit="MB", scale=2**-20)
        record("5", scenario, f"{size}: client CPU a page", _cpu_per_page(runs), unit="ms")


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width table."""
    head = (
        f"{'customers':>10}  {'records/s median (min-max)':>28}  "
        f"{'peak RSS MB median (min-max)':>29}  {'baseline MB':>11}  {'growth MB':>9}  "
        f"{'MB on disk':>10}  {'CPU ms/page':>11}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        runs = row["runs"]
        peak = [r["peak_rss"] for r in runs]
        base = [r["baseline_rss"] for r in runs]
        lines.append(
            f"{row['customers']:>10,}  "
            f"{_spread([r['records_per_second'] for r in runs], lambda v: f'{v:,.0f}'):>28}  "
            f"{_spread(peak, _mb):>29}  "
            f"{_mb(statistics.median(base)):>11}  "
            f"{_mb(statistics.median(p - b for p, b in zip(peak, base, strict=True))):>9}  "
            f"{_mb(statistics.median(r['bytes'] for r in runs)):>10}  "
            f"{statistics.median(_cpu_per_page(runs)) * 1e3:>11.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the machine, the settings and the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--million", action="store_true", help="add 1,000,000 customers")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated customer counts")
    parser.add_argument("--runs", type=int, default=3, help="exports per size (median)")
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--json", metavar="PATH", help="also write the figures and raw runs here (for the runner)"
    )
    parser.add_argument("--worker", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        url, out = args.worker
        print(json.dumps(worker(url, out, args.format, args.page_size, args.concurrency)))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.million:
        args.sizes.append(1_000_000)
    if args.quick:
        args.sizes, args.runs = [1000, 3000], 1
    print(machine_info())
    print(
        f"export to {args.format}, page size {args.page_size}, concurrency {args.concurrency}, "
        f"{args.runs} run(s) a size; the simulator in its own process"
    )
    started = time.monotonic()
    rows = run(args)
    print(table(rows))
    print(f"({time.monotonic() - started:.1f} s in all)")
    keep(rows, args)
    if args.json:
        write_results(args.json, "bench_export")
    return 0


if __name__ == "__main__":
    with children_stopped_on_sigterm():  # a kill stops the children too
        sys.exit(main())
