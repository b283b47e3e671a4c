"""The scale-out benchmark runs (``--quick``), so it does not rot."""

from __future__ import annotations

import pytest

from benchmarks import bench_scaleout
from dmhub_async.testing._redis import REDIS_SERVER, SKIP_REASON


@pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)
@pytest.mark.timeout(180)
def test_quick_scaleout_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_scaleout.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1] in ("1", "2")]
    assert [row[0] for row in rows[:2]] == ["1", "2"]
    assert all(float(row[1].replace(",", "")) > 0 for row in rows[:2])  # records/s
    assert "shared rate limit 100/s on 2 workers: 4,000 records" in out
    busiest = int(out.split("the simulator saw held ")[1].split()[0])
    assert busiest <= 101  # the limit, and one for a round trip's jitter (docs/sharding.md)
