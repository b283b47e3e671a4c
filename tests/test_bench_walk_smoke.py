"""The walk benchmark's quick mode runs, and its walks and lookups return everything."""

from __future__ import annotations

import gc
import itertools
import math
import os
import urllib.request

import pytest

from benchmarks import bench_walk
from benchmarks._common import simulator_process

LABELS = ("floor 4", "SDK 4", "floor 8", "SDK 8", "floor concurrency 64", "SDK concurrency 64")


@pytest.mark.timeout(60)
def test_bench_walk_quick(capsys: pytest.CaptureFixture[str]) -> None:
    ratios = bench_walk.main(["--quick"])
    assert set(ratios) == {"walk@4@5ms", "walk@8@5ms", "lookups@64"}
    assert all(r > 0 and math.isfinite(r) for r in ratios.values())
    out = capsys.readouterr().out
    assert "cores" in out
    # The SDK beside the aiohttp worker floor and the ideal plus cost, and the verdict.
    for label in LABELS:
        assert label in out
    assert "vs floor" in out
    assert "vs ideal+cost" in out
    assert "of it gc ms" in out  # the garbage collector's share of each contender's CPU
    rows = [row for line in out.splitlines() if (row := line.split())[:3] == ["5", "ms", "SDK"]]
    assert rows
    assert all(float(row[-1]) >= 0 for row in rows)
    assert "question 3, SDK within 1.05x of the aiohttp worker floor" in out


def test_the_gc_clock_counts_only_while_installed() -> None:
    clock = bench_walk.GcClock()
    gc.callbacks.append(clock)
    try:
        garbage = [[] for _ in range(10_000)]
        for a, b in itertools.pairwise(garbage):
            a.append(b)  # a chain for the collector to walk
        gc.collect()
    finally:
        gc.callbacks.remove(clock)
    counted = clock.seconds
    assert counted > 0
    gc.collect()
    assert clock.seconds == counted
    clock("stop", {"generation": 0})  # the end of a collection it never saw begin
    assert clock.seconds == counted


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
    assert set(ratios) == {"walk@4@5ms", "walk@8@5ms"}
    assert "SDK request path, 8 wkrs" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_bench_walk_schedule_quick(capsys: pytest.CaptureFixture[str]) -> None:
    # The paginator's schedule against N workers on the in-process fake: the fake's fetch must
    # keep the paginator's signature (a drift once made this mode fail with a TypeError).
    ratios = bench_walk.main(["--quick", "--schedule"])
    assert set(ratios) == {f"schedule@{n}" for n in bench_walk.WALK_CONCURRENCIES}
    assert all(r > 0 and math.isfinite(r) for r in ratios.values())
    assert "workers" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_bench_walk_diagnose_lookups_quick(capsys: pytest.CaptureFixture[str]) -> None:
    ratios = bench_walk.main(["--quick", "--diagnose-lookups"])
    assert set(ratios) == {"lookups@64"}
    out = capsys.readouterr().out
    for label in ("SDK lookup(), 64 wkrs", "SDK dm.request, 64 wkrs"):
        assert f"{label}: client CPU" in out
