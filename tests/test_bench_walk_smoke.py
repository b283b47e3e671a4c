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
    assert "full gc" in out  # and the rounds a full collection fell in
    rows = [row for line in out.splitlines() if (row := line.split())[:3] == ["5", "ms", "SDK"]]
    assert rows
    assert all(float(row[-2]) >= 0 for row in rows)
    assert all(row[-1] in ("0/1", "1/1") for row in rows)  # one round each in the quick run
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
    assert clock.full == 1  # gc.collect() collects the oldest generation: a full collection
    gc.collect()
    assert clock.seconds == counted
    assert clock.full == 1
    clock("stop", {"generation": 2})  # the end of a collection it never saw begin
    assert clock.seconds == counted
    assert clock.full == 1


def test_a_young_collection_is_not_counted_full() -> None:
    clock = bench_walk.GcClock()
    gc.callbacks.append(clock)
    try:
        gc.collect(0)
        gc.collect(1)
    finally:
        gc.callbacks.remove(clock)
    assert clock.full == 0
    assert clock.seconds > 0


def test_a_missed_cell_names_the_full_collections_in_the_sdks_rounds() -> None:
    row = bench_walk.Row("50 ms", "SDK 32", [0.2, 0.2, 0.2], 0.05, client_full=[0, 1, 2])
    assert bench_walk._miss([1.01, 1.09, 1.16], row) == (
        "1.09x (1.01-1.16), a full collection in 2 of its 3 rounds"
    )
    row.client_full = [0, 0, 0]
    assert bench_walk._miss([1.01, 1.09, 1.16], row) == "1.09x (1.01-1.16)"


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
    thresholds = gc.get_threshold()
    ratios = bench_walk.main(["--quick", "--diagnose", "--gc-threshold", "1500"])
    assert set(ratios) == {"walk@4@5ms", "walk@8@5ms"}
    out = capsys.readouterr().out
    assert "SDK request path, 8 wkrs" in out
    # The run's own threshold, said; the caller's set back after it.
    assert f"the collector's thresholds: {(1500, *thresholds[1:])}" in out
    assert gc.get_threshold() == thresholds


def test_a_negative_gc_threshold_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    thresholds = gc.get_threshold()
    with pytest.raises(SystemExit):
        bench_walk.main(["--gc-threshold", "-1"])
    assert "--gc-threshold must be 0 or more, not -1" in capsys.readouterr().err
    assert gc.get_threshold() == thresholds


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
