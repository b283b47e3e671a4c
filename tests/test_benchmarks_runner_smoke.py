"""The benchmark runner and the overhead benchmark run (``--quick``), so they do not rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as runner

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_runner_runs_the_overhead_benchmark() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "overhead"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "cores" in out
    assert re.search(r"SDK list\(\), concurrency=1 .* \d+\.\d\dx", out)
    assert re.search(r"question 1, SDK sequential within 1\.10x of the floor: \w+", out)
    assert re.search(r"overhead\s+ok", out)


def test_runner_skips_a_script_that_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(runner.BENCHMARKS, "nothing", ("bench_nothing", "no question", ()))
    assert runner.main(["--quick", "--only", "nothing"]) == 0
    out = capsys.readouterr().out
    assert "skipped: bench_nothing.py does not exist yet" in out
