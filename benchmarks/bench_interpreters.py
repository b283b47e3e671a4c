"""Benchmark: the same work on several Pythons, side by side (the interpreter's share).

Run ``python -m benchmarks.bench_interpreters --python PATH [--python PATH ...]`` from the
repository; each PATH is another Python with the project's dependencies (a venv with
``pip install -e . --group dev``), and the Python running the script is the reference. Every
round starts one child on each Python in turn (the order reversed every other round), and each
child times, on the same 100-customer page (bench_converter's, 10% of the rows with unknown
fields):

- a pure-Python loop (dict stores, integer arithmetic): how fast the interpreter itself is;
- ``orjson.loads`` of the page: the floors' decode, C;
- the SDK's page reader (``read_customer_page``: msgspec's typed decode, then the generated
  build of each model): what ``list()`` does with a page, C and Python;
- the build alone, from the typed records' tuples: 100 models of 41 fields, Python.

The table gives each figure's median over rounds and its ratio, round by round, to the
reference Python's; the last line per Python, the page reader over ``orjson.loads``, is the
typing's cost on that Python (question 1's gap over its orjson floor). Why it exists: issue
15's figures were all counted and timed on pyenv's CPython 3.11.7, built without
``--enable-optimizations``, and the SDK's Python and the floors' C do not move alike from one
build to another: on Debian's optimized 3.11 orjson's decode gained more than the SDK's page
reader, on pyenv's 3.13.0 the page reader lost more than orjson's decode (the page reader over
``orjson.loads``: 1.40x-1.42x on pyenv's 3.11.7, 1.47x-1.48x and 1.53x-1.55x there;
benchmarks/HISTORY.md, the twenty-eighth round).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    from ._common import (
        REPO,
        interpreter,
        machine_info,
        noise,
        ratios,
        record,
        subprocess_env,
        write_results,
    )
except ImportError:  # run as a file: python benchmarks/bench_interpreters.py
    from _common import (  # type: ignore[no-redef]
        REPO,
        interpreter,
        machine_info,
        noise,
        ratios,
        record,
        subprocess_env,
        write_results,
    )

#: The workloads, in the table's order (what a child times).
WORKLOADS = ("pure-Python loop", "orjson.loads", "page reader", "build of 100 models")


def _pure_python(n: int = 20_000) -> int:
    """A loop of dict stores and integer arithmetic: the interpreter alone."""
    seen: dict[int, int] = {}
    total = 0
    for i in range(n):
        seen[i % 97] = total
        total += i * 3 // 7
        if total & 1:
            total ^= 5
    return total


def _workloads() -> dict[str, Callable[[], object]]:
    """The functions a child times, set up on the page."""
    import msgspec
    import orjson

    from benchmarks.bench_converter import make_page
    from dmhub_async._converter import read_customer_page
    from dmhub_async._converter.codegen import make_tuple_build_fn
    from dmhub_async._converter.converter import make_converter
    from dmhub_async._converter.wire_struct import wire_struct
    from dmhub_async.models import Customer

    body = make_page(100, unknown_share=0.1)
    read_customer_page(body)  # the reader learns the page's unknown keys once, as a walk does
    unknown = ("levelScore", "tags")
    struct = wire_struct(Customer, unknown)
    decoder = msgspec.json.Decoder(msgspec.defstruct("Page", [("rows", list[struct])]))
    astuple = msgspec.structs.astuple
    rows = [astuple(row) for row in decoder.decode(body).rows]
    build = make_tuple_build_fn(Customer, make_converter(), unknown, msgspec.UNSET)
    return {
        "pure-Python loop": _pure_python,
        "orjson.loads": lambda: orjson.loads(body),
        "page reader": lambda: read_customer_page(body),
        "build of 100 models": lambda: [build(row) for row in rows],
    }


def child(number: int, repeat: int) -> dict[str, float]:
    """In a child: each workload's best of ``repeat`` timings of ``number`` calls, a call."""
    times = {}
    for name, work in _workloads().items():
        work()  # warm: the specializing interpreter, the reader's first page
        times[name] = min(timeit.repeat(work, number=number, repeat=repeat)) / number
    return times


def _run_child(python: str, number: int, repeat: int) -> tuple[dict[str, float], str, str]:
    """One child's figures on ``python``, what that Python is (:func:`interpreter`) and its
    version."""
    out = subprocess.run(
        [python, "-m", "benchmarks.bench_interpreters", "--child", str(number), str(repeat)],
        cwd=REPO,
        env=subprocess_env(),  # this repository importable, no DMHUB_ settings
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if out.returncode:
        raise SystemExit(f"{python} failed:\n{out.stderr.strip()}")
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    times = {name: float(result[name]) for name in WORKLOADS}
    return times, str(result["_python"]), str(result["_version"])


def run(
    pythons: list[str], rounds: int, number: int, repeat: int
) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """Each Python's figures over the rounds ({label: {workload: [seconds a call, ...]}}, the
    label its number and version) and what each Python is (:func:`interpreter`), in order."""
    figures: dict[str, dict[str, list[float]]] = {p: {w: [] for w in WORKLOADS} for p in pythons}
    builds: dict[str, str] = {}
    versions: dict[str, str] = {}
    for n in range(rounds):
        for python in reversed(pythons) if n % 2 else pythons:
            times, builds[python], versions[python] = _run_child(python, number, repeat)
            for name, seconds in times.items():
                figures[python][name].append(seconds)
    labels = [f"{i}: {versions[p]}" for i, p in enumerate(pythons, 1)]
    legend = [f"{i}: {builds[p]}" for i, p in enumerate(pythons, 1)]
    return {label: figures[p] for label, p in zip(labels, pythons, strict=True)}, legend


def report(figures: dict[str, dict[str, list[float]]]) -> str:
    """The table: per Python and workload, the median, the noise, and the ratio to the first;
    and per Python, the page reader over orjson in the same child (the typing's cost)."""
    reference = next(iter(figures.values()))
    width = max(len(label) for label in figures)
    lines = [
        f"{'python':<{width}}  {'workload':<20} {'median us':>10} {'noise':>6} {'vs first':>9}"
    ]
    for label, times in figures.items():
        for name in WORKLOADS:
            samples = times[name]
            ratio = statistics.median(ratios(samples, reference[name]))
            lines.append(
                f"{label:<{width}}  {name:<20} {statistics.median(samples) * 1e6:10.1f}"
                f" {f'±{noise(samples):.0%}':>6} {ratio:8.2f}x"
            )
        typing = statistics.median(ratios(times["page reader"], times["orjson.loads"]))
        lines.append(
            f"{label:<{width}}  {'page reader / orjson':<20} {'':>10} {'':>6} {typing:8.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Time the workloads on each Python, alternating, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", default=[], help="another Python (repeatable)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds")
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        times: dict[str, Any] = child(*args.child)
        times["_python"] = interpreter()
        times["_version"] = platform.python_version()
        print(json.dumps(times))
        return 0
    missing = [p for p in args.python if not Path(p).exists()]
    if missing:
        parser.error(f"no such Python: {', '.join(missing)}")
    rounds, number, repeat = (2, 3, 2) if args.quick else (args.rounds, 50, 5)
    print(machine_info())
    started = time.perf_counter()
    figures, legend = run([sys.executable, *args.python], rounds, number, repeat)
    print("\n".join(legend))
    print(f"{rounds} rounds, a child a Python a round; a figure: best of {repeat} x {number} calls")
    print(report(figures))
    first = next(iter(figures.values()))
    for label, times in figures.items():
        for name in WORKLOADS:
            record(
                "interpreters",
                label,
                name,
                times[name],
                floors={"the first Python": first[name]},
                unit="us",
                scale=1e6,
                summary=False,
            )
    print(f"({time.perf_counter() - started:.1f} s in all)")
    if args.json:
        write_results(args.json, "bench_interpreters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
