"""The interpreters benchmark runs (``--quick``), so it does not rot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks import _common, bench_interpreters


def test_quick_run_times_each_workload_on_each_python(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The same Python twice: two children a round, the second's ratios to the first.
    assert bench_interpreters.main(["--quick", "--python", sys.executable]) == 0
    out = capsys.readouterr().out
    assert f"1: {_common.interpreter()}" in out
    assert f"2: {_common.interpreter()}" in out
    rows = [line.split("  ") for line in out.splitlines() if line.startswith(("1: ", "2: "))]
    table = {(row[0], row[1].strip()) for row in rows if len(row) > 2}
    for n in ("1", "2"):
        for workload in (*bench_interpreters.WORKLOADS, "page reader / orjson"):
            assert (f"{n}: {sys.version.split()[0]}", workload) in table
    assert all(line.rstrip().endswith("x") for line in out.splitlines() if "  pure-Python" in line)


def test_a_python_that_does_not_exist_is_refused_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "python3.99"
    with pytest.raises(SystemExit) as exit_info:
        bench_interpreters.main(["--quick", "--python", str(missing)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"no such Python: {missing}" in captured.err
    assert "pure-Python" not in captured.out


def test_the_machine_line_names_the_python_build() -> None:
    line = _common.machine_info()
    assert f"Python {sys.version.split()[0]} at {sys.base_prefix} (configured with" in line
