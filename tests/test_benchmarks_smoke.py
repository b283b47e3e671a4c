"""The converter benchmark runs (``--quick``), so it does not rot."""

from __future__ import annotations

import pytest

pytest.importorskip("pydantic")
pytest.importorskip("msgspec")
pytest.importorskip("orjson")

from benchmarks import bench_converter


def test_quick_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_converter.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "pydantic v2 validate_json" in out
    assert "ours" in out
    assert "cores" in out
