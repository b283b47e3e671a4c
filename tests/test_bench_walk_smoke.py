"""The walk benchmark's quick mode runs, and its walks and lookups return everything."""

from __future__ import annotations

import math
import os
import urllib.request

import pytest

from benchmarks import bench_walk
from benchmarks._common import simulator_process

LABELS = ("SDK sequential", "floor sequential", "SDK concurrency 8", "floor concurrency 64")


@pytest.mark.timeout(60)
def test_bench_walk_quick(capsys: pytest.CaptureFixture[str]) -> None:
    ratios = bench_walk.main(["--quick"])
    assert set(ratios) == {"walk@1", "walk@4", "walk@8", "lookups@64"}
    # Never faster than the latency allows (else the ideal is wrong).
    assert all(r >= 0.95 and math.isfinite(r) for r in ratios.values())
    out = capsys.readouterr().out
    assert "cores" in out
    # The SDK beside the aiohttp floor, at every concurrency, and the verdict on question 3.
    for label in LABELS:
        assert label in out
    assert "question 3, SDK within 1.2x of ideal" in out


@pytest.mark.timeout(30)
def test_simulator_process_starts_serves_and_stops() -> None:
    with simulator_process(10, latency_ms=1) as sim:
        assert sim.url.startswith("http://127.0.0.1:")
        query = f"grant_type=client_credentials&appid={sim.app_id}&secret={sim.secret}"
        with urllib.request.urlopen(f"{sim.url}/security/accesstoken?{query}", timeout=10) as r:
            assert b"access_token" in r.read()
        pid = sim.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (and reaped) once the block ends


@pytest.mark.timeout(60)
def test_bench_walk_diagnose_quick(capsys: pytest.CaptureFixture[str]) -> None:
    ratios = bench_walk.main(["--quick", "--diagnose"])
    assert set(ratios) == {"walk@1", "walk@4", "walk@8"}
    out = capsys.readouterr().out
    assert "SDK request, 8 workers" in out
    assert "floor, paginator sched. 8" in out
