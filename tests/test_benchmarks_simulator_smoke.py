"""The simulator benchmark runs (``--quick``), so it does not rot."""

from __future__ import annotations

import pytest

from benchmarks import bench_simulator


def test_quick_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_simulator.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "5,000 customers" in out
    for case in ("unfiltered", "stage=lead", "source + gender", "dateCreated, 10 days"):
        assert case in out
