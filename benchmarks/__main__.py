"""Run every benchmark in turn: ``python -m benchmarks [--quick] [--only NAME]``.

Each script runs in its own Python process, so one's memory (the export's peak RSS above all)
and garbage never weigh on the next; its tables stream through as it prints them. A script
that is missing, or has no ``main(argv)``, is skipped with a note rather than failing the run.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path

try:
    from ._common import machine_info
except ImportError:  # run as a file: python benchmarks/__main__.py
    from _common import machine_info  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent

#: name -> (module in this package, what it answers, arguments of a full run); in this order.
BENCHMARKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "overhead": ("bench_overhead", "questions 1 and 6: request path vs the floor, vs httpx", ()),
    "converter": (
        "bench_converter",
        "question 2: decode + structure of a 1,000-customer page",
        (),
    ),
    "walk": ("bench_walk", "questions 3 and 4: concurrent walk and lookups vs ideal", ()),
    # Question 5 asks for a million customers too: about a minute more, within the budget.
    "export": ("bench_export", "question 5: export records/s and peak RSS", ("--million",)),
    "scaleout": ("bench_scaleout", "question 7: a sharded export on 1-8 arq workers", ()),
    "simulator": ("bench_simulator", "the simulator's filtered list pages", ()),
}
#: The whole suite should stay under this, so people run it.
BUDGET_S = 300.0


def has_main(path: Path) -> bool:
    """Whether the script defines ``main`` taking an ``argv``: the interface the runner needs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.FunctionDef) and node.name == "main" and node.args.args
        for node in tree.body
    )


def run_one(name: str, quick: bool) -> tuple[str, float]:
    """Run one benchmark as ``python -m benchmarks.<module>``; its status and seconds."""
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
    started = time.perf_counter()
    # The parent of the package as the working directory, so `-m benchmarks.x` resolves.
    status = subprocess.run(command, cwd=HERE.parent, check=False).returncode
    elapsed = time.perf_counter() - started
    return ("ok" if status == 0 else f"failed (exit status {status})"), elapsed


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and print a summary; non-zero if any failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke runs of a few seconds each")
    parser.add_argument(
        "--only", action="append", choices=list(BENCHMARKS), help="run only this one (repeatable)"
    )
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    print(machine_info())
    started = time.perf_counter()
    results = {name: run_one(name, args.quick) for name in names}
    total = time.perf_counter() - started
    print("\n=== summary ===")
    for name, (status, seconds) in results.items():
        print(f"{name:<10} {status:<28} {seconds:7.1f} s")
    over = "" if total <= BUDGET_S or args.only else f" (over the {BUDGET_S:.0f} s budget)"
    print(f"{'total':<10} {'':<28} {total:7.1f} s{over}")
    return 1 if any(status.startswith("failed") for status, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
