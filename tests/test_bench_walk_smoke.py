"""The walk benchmark's quick mode runs, and its walks and lookups return everything."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_walk.py"


@pytest.mark.timeout(60)
def test_bench_walk_quick(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_walk", BENCH)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ratios = bench.main(["--quick"])
    assert set(ratios) == {"walk@1", "walk@4", "walk@8", "lookups@64"}
    # Never faster than the latency allows (else the ideal is wrong), and concurrency helps.
    assert all(r >= 0.95 and math.isfinite(r) for r in ratios.values())
    out = capsys.readouterr().out
    assert "sequential" in out
    assert "concurrency 64" in out
