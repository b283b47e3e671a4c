"""The export benchmark runs (``--quick``), so it does not rot."""

from __future__ import annotations

import pytest

from benchmarks import bench_export


def test_quick_export_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_export.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "records/s" in out
    assert "peak RSS" in out
    rows = [
        line.split() for line in out.splitlines() if line.strip().startswith(("1,000", "3,000"))
    ]
    assert [row[0] for row in rows] == ["1,000", "3,000"]
    assert all(float(row[1].replace(",", "")) > 0 for row in rows)  # records/s
