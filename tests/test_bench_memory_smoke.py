"""The memory benchmark runs (``--quick``), so it does not rot."""

from __future__ import annotations

import re

import pytest

from benchmarks import bench_memory


def test_quick_memory_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_memory.main(["--quick"]) == 0
    out = capsys.readouterr().out
    # Read-ahead within the docs' bounds at both run lengths (how close to them depends on the
    # machine's timing): a walk at concurrency 8, about 2 x 8; lookup_iter at 32, 4 x 32.
    ahead = [int(n) for n in re.findall(r"walk +\d+ pages: at most (\d+) pages ahead", out)]
    assert len(ahead) == 2, out
    assert all(0 < n <= 2 * 8 for n in ahead), out
    read = [int(n) for n in re.findall(r"lookup_iter +\d+: input read ahead (\d+)", out)]
    assert len(read) == 2, out
    assert all(0 < n <= 4 * 32 for n in read), out
    assert "kept errors, too large" in out
