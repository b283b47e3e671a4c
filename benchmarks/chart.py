"""The walk's chart: time against concurrency for the SDK, the aiohttp worker floor and the ideal.

``python -m benchmarks`` draws it after a full run (``--chart PATH`` to choose where; the
published one is ``benchmarks/walk_concurrency.png``); ``python -m benchmarks.chart
RESULTS.json [-o PNG]`` draws it again from the figures a run wrote (``python -m benchmarks
--json RESULTS.json``, or ``python -m benchmarks.bench_walk --json RESULTS.json``).

It reads question 3's records (``_common.record_rows``): per latency, the median walk time of
``SDK N`` and ``floor N`` and the ideal plus cost at each N. matplotlib comes from the ``bench``
dependency group; without it, :func:`walk_chart` raises ``ImportError`` and the runner says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: The published chart, shown in benchmarks/README.md.
DEFAULT_PNG = Path(__file__).resolve().parent / "walk_concurrency.png"


def walk_series(
    results: Iterable[Mapping[str, Any]],
) -> dict[str, dict[str, dict[int, float]]]:
    """Question 3's figures by latency: ``{"20 ms": {"SDK": {N: ms}, "floor": ..., "ideal":
    ...}}``, latencies in the order of the run."""
    series: dict[str, dict[str, dict[int, float]]] = {}
    for r in results:
        n = r.get("concurrency")
        if r.get("question") != "3" or n is None:
            continue
        lines = series.setdefault(r["scenario"], {"SDK": {}, "floor": {}, "ideal": {}})
        kind = r["contender"].split()[0]
        if r["contender"] in (f"SDK {n}", f"floor {n}"):
            lines[kind][n] = r["median"]
        if r.get("ideal_ms"):
            lines["ideal"][n] = r["ideal_ms"]
    return {latency: lines for latency, lines in series.items() if lines["SDK"]}


def walk_chart(
    results: Iterable[Mapping[str, Any]],
    path: Path = DEFAULT_PNG,
    *,
    machine: str = "",
    command: str = "python -m benchmarks",
) -> Path:
    """Draw the chart to ``path`` (PNG): a panel a latency; ``ImportError`` without matplotlib,
    ``ValueError`` when the results hold no walk."""
    series = walk_series(results)
    if not series:
        raise ValueError("no walk figures (question 3) in these results")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    width = max(10.0, 4.0 * len(series))
    fig, axes = plt.subplots(1, len(series), figsize=(width, 4.6), squeeze=False)
    styles = {
        "SDK": {"label": "SDK list(concurrency=N)", "color": "#1f77b4", "marker": "o", "lw": 2.2},
        "floor": {"label": "aiohttp worker floor", "color": "#ff7f0e", "marker": "s", "ls": "--"},
        "ideal": {"label": "ideal + cost", "color": "#555555", "marker": "", "ls": ":"},
    }
    for ax, (latency, lines) in zip(axes[0], series.items(), strict=True):
        for kind, style in styles.items():
            points = sorted(lines[kind].items())
            if points:
                ax.plot([n for n, _ in points], [ms for _, ms in points], **style)
        for n, ms in sorted(lines["SDK"].items()):
            floor = lines["floor"].get(n)
            if floor:  # the SDK over the floor, from the medians (the tables give round ratios)
                ax.annotate(
                    f"{ms / floor:.2f}x",
                    (n, ms),
                    textcoords="offset points",
                    xytext=(7, 5),
                    ha="left",
                    fontsize=8,
                    color=styles["SDK"]["color"],
                )
        ns = sorted(lines["SDK"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlim(ns[0] / 1.3, ns[-1] * 1.3)
        ax.set_ylim(bottom=0, top=max(v for line in lines.values() for v in line.values()) * 1.15)
        ax.set_title(latency)
        ax.set_xlabel("concurrency N (pages in flight)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("a whole walk, median ms")
    axes[0][0].legend(loc="upper right", fontsize=8)
    fig.suptitle(
        "A walk against concurrency, question 3 (labels: the SDK over the floor)", fontsize=11
    )
    footer = f"{command}\n{machine}" if machine else command
    fig.text(0.5, 0.01, footer, ha="center", va="bottom", fontsize=6.5, color="#444444")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Draw the chart from a results file (the runner's ``--json`` or bench_walk's)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("results", type=Path, help="a JSON file a run wrote (--json)")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_PNG, help="the PNG")
    args = parser.parse_args(argv)
    document = json.loads(args.results.read_text(encoding="utf-8"))
    results = document["results"]
    walk_chart(
        results,
        args.output,
        machine=document.get("machine", ""),
        command=document.get("command", "python -m benchmarks"),
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
