"""Run every benchmark in turn: ``python -m benchmarks [--quick] [--only NAME] [--json PATH]``.

Each script runs in its own Python process, so one's memory (the export's peak RSS above all)
and garbage never weigh on the next; its tables stream through as it prints them. A script
that is missing, or has no ``main(argv)``, is skipped with a note rather than failing the run.

A script that takes ``--json PATH`` is given one: it writes its figures there
(``_common.record``), and the runner prints them at the end as one summary table (contender,
median, noise, ratio to each floor), then draws the walk's chart (``benchmarks/chart.py``;
matplotlib from the ``bench`` group, skipped with a note without it).
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

try:
    from ._common import children_stopped_on_sigterm, machine_info
except ImportError:  # run as a file: python benchmarks/__main__.py
    from _common import children_stopped_on_sigterm, machine_info  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent

#: name -> (module in this package, what it answers, arguments of a full run); in this order.
BENCHMARKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "overhead": ("bench_overhead", "questions 1 and 6: a walk vs both floors, vs httpx", ()),
    "converter": (
        "bench_converter",
        "question 2: decode + structure of a 1,000-customer page",
        (),
    ),
    "walk": ("bench_walk", "questions 3 and 4: concurrent walk and lookups vs floor, ideal", ()),
    # Question 5 asks for a million customers too: about a minute more, within the budget.
    "export": ("bench_export", "question 5: export records/s and peak RSS", ("--million",)),
    # 50,000 customers (the script's default is 100,000): keeps the whole run within budget.
    "scaleout": (
        "bench_scaleout",
        "question 7: a sharded export on 1-8 arq workers",
        ("--customers", "50000"),
    ),
    "simulator": ("bench_simulator", "the simulator's filtered list pages", ()),
}
#: The whole suite should stay under this, so people run it. It was 300 s until question 7
#: (scale-out, 80 s of starting worker processes and exporting) joined: full runs then took
#: 310-341 s, and fewer rounds would widen the medians on a shared host more than the minute
#: is worth.
BUDGET_S = 360.0


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def has_main(path: Path) -> bool:
    """Whether the script defines ``main`` taking an ``argv``: the interface the runner needs."""
    return any(
        isinstance(node, ast.FunctionDef) and node.name == "main" and node.args.args
        for node in _tree(path).body
    )


def takes_json(path: Path) -> bool:
    """Whether the script has a ``--json`` option (a string constant ``"--json"`` in it)."""
    return any(
        isinstance(node, ast.Constant) and node.value == "--json" for node in ast.walk(_tree(path))
    )


def run_one(name: str, quick: bool, results: Path | None) -> tuple[str, float]:
    """Run one benchmark as ``python -m benchmarks.<module>``; its status and seconds.

    With ``results``, a script that takes ``--json`` writes its figures there.
    """
    module, question, full_args = BENCHMARKS[name]
    path = HERE / f"{module}.py"
    print(f"\n=== {name}: {question} ({module}.py) ===", flush=True)
    if not path.exists():
        print(f"skipped: {path.name} does not exist yet")
        return "skipped (missing)", 0.0
    if not has_main(path):
        print(f"skipped: {path.name} has no main(argv)")
        return "skipped (no main)", 0.0
    args = ("--quick",) if quick else full_args
    command = [sys.executable, "-m", f"{HERE.name}.{module}", *args]
    print("$ " + " ".join(["python", *command[1:]]), flush=True)
    if results is not None and takes_json(path):
        command += ["--json", str(results)]
    started = time.perf_counter()
    # The parent of the package as the working directory, so `-m benchmarks.x` resolves.
    script = subprocess.Popen(command, cwd=HERE.parent)
    try:
        status = script.wait()
    except BaseException:
        # Stopped (a kill, Ctrl+C): the script is asked to stop as well, which stops its own
        # children (the simulator, Redis, workers); subprocess.run would kill it outright and
        # leave them serving.
        script.terminate()
        try:
            script.wait(timeout=60)
        except subprocess.TimeoutExpired:
            script.kill()
        raise
    elapsed = time.perf_counter() - started
    return ("ok" if status == 0 else f"failed (exit status {status})"), elapsed


# -- the summary --------------------------------------------------------------------------------


def _ratio(name: str, ratio: Mapping[str, float]) -> str:
    """``1.43x aiohttp + orjson (1.38-1.52)``: the median round ratio, its min-max."""
    low, high = ratio["min"], ratio["max"]
    spread = f" ({low:.2f}-{high:.2f})" if high - low >= 0.005 else ""
    return f"{ratio['median']:.2f}x {name}{spread}"


def _figure(value: float, unit: str) -> str:
    """``1.23 ms``, ``123.4 ms``, ``12,345 rec/s``."""
    digits = ",.0f" if value >= 1000 else ".1f" if value >= 10 else ".2f"
    return f"{value:{digits}} {unit}"


def summary_table(results: Iterable[Mapping[str, Any]]) -> str:
    """The figures a run recorded for its summary, as one table: a heading line a scenario,
    then contender, median, noise, and its ratio to each floor of that scenario."""
    shown = [r for r in results if r.get("summary", True)]
    if not shown:
        return "(no figures: no script wrote any)"
    width = max(len(r["contender"]) for r in shown)
    figures = [_figure(r["median"], r["unit"]) for r in shown]
    cell = max(len("median"), *map(len, figures))
    lines = [
        f"  {'contender':<{width}}  {'median':>{cell}}  {'noise':>5}  "
        "ratio to each floor (median round ratio, min-max)"
    ]
    heading = None
    for r, figure in zip(shown, figures, strict=True):
        if (r["question"], r["scenario"]) != heading:
            heading = (r["question"], r["scenario"])
            lines.append(f"question {r['question']}: {r['scenario']}")
        ratios = " · ".join(_ratio(name, ratio) for name, ratio in r["ratios"].items())
        noise = f"±{r['noise']:.0%}"
        line = f"  {r['contender']:<{width}}  {figure:>{cell}}  {noise:>5}  {ratios}"
        lines.append(line.rstrip())
    lines.append(
        "median: of the alternating rounds; noise: half the min-max spread over the median; "
        "a ratio: the median, over rounds, of the contender's figure over the floor's in the "
        "same round (over an ideal: the median over it); below 1 is faster"
    )
    return "\n".join(lines)


def read_results(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every script's results file that exists, in the order given."""
    documents = []
    for path in paths:
        if path.exists():
            documents.append(json.loads(path.read_text(encoding="utf-8")))
    return documents


def draw_chart(results: list[dict[str, Any]], path: Path, machine: str, command: str) -> str:
    """Draw the walk's chart; a line saying what became of it."""
    try:
        from .chart import walk_chart
    except ImportError:  # run as a file
        from chart import walk_chart  # type: ignore[no-redef]
    try:
        walk_chart(results, path, machine=machine, command=command)
    except ImportError:
        return "chart: skipped, matplotlib is not installed (pip install -e . --group bench)"
    except ValueError as err:
        return f"chart: skipped, {err}"
    return f"chart: {path}"


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and print the summary; non-zero if any failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke runs of a few seconds each")
    parser.add_argument(
        "--only", action="append", choices=list(BENCHMARKS), help="run only this one (repeatable)"
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="write every figure here too")
    parser.add_argument(
        "--chart",
        metavar="PNG",
        type=Path,
        help="draw the walk's chart here (default: benchmarks/walk_concurrency.png after a full "
        "run with the walk; none after --quick)",
    )
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    machine = machine_info()
    print(machine)
    command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchmarks-") as tmp:
        files = {name: Path(tmp) / f"{name}.json" for name in names}
        status = {name: run_one(name, args.quick, files[name]) for name in names}
        documents = read_results(files.values())
    total = time.perf_counter() - started
    results = [r for document in documents for r in document["results"]]
    print("\n=== scripts ===")
    for name, (state, seconds) in status.items():
        print(f"{name:<10} {state:<28} {seconds:7.1f} s")
    over = "" if total <= BUDGET_S or args.only else f" (over the {BUDGET_S:.0f} s budget)"
    print(f"{'total':<10} {'':<28} {total:7.1f} s{over}")
    chart = args.chart
    if chart is None and not args.quick and "walk" in names:
        try:
            from .chart import DEFAULT_PNG
        except ImportError:  # run as a file
            from chart import DEFAULT_PNG  # type: ignore[no-redef]
        chart = DEFAULT_PNG
    if chart is not None:
        print(draw_chart(results, chart, machine, command))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"machine": machine, "command": command, "results": results}, indent=1),
            encoding="utf-8",
        )
    print(f"\n=== summary: {command}, {total:.0f} s ===\n{machine}")
    print(summary_table(results))
    return 1 if any(state.startswith("failed") for state, _ in status.values()) else 0


if __name__ == "__main__":
    with children_stopped_on_sigterm():  # a kill stops the running script, and so its children
        sys.exit(main())
