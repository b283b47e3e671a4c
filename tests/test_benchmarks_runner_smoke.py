"""The benchmark runner and the overhead benchmark run (``--quick``), so they do not rot; the
runner's summary shows both floors, and the walk's chart is drawn from what the walk wrote."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as runner
from benchmarks import chart
from benchmarks._common import RESULTS, record, record_times, write_results

ROOT = Path(__file__).resolve().parent.parent
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(150)
def test_runner_summary_shows_both_floors_and_draws_the_walk(tmp_path: Path) -> None:
    png, results = tmp_path / "walk.png", tmp_path / "all.json"
    out = _run("--only", "overhead", "--only", "walk", "--chart", str(png), "--json", str(results))
    assert "cores" in out
    assert re.search(
        r"question 1, SDK list\(\) within 1\.15x of the aiohttp \+ orjson floor: \w+", out
    )
    assert re.search(r"question 1, SDK list_rows\(\) within 1\.05x of the aiohttp \+ orjson", out)
    assert re.search(r"overhead\s+ok", out)
    assert re.search(r"walk\s+ok", out)
    summary = out.split("=== summary")[1]
    # The summary comes last, names its machine and command, and every SDK walk of question 1
    # carries its ratio to both floors: never the kinder one alone.
    assert "python -m benchmarks --quick --only overhead" in summary
    assert "Python 3." in summary
    assert "aiohttp " in summary
    for sdk in ("SDK list(), concurrency=1", "SDK list_rows(), concurrency=1"):
        line = next(x for x in summary.splitlines() if x.strip().startswith(sdk))
        assert re.search(
            r"\d+\.\d\dx aiohttp \+ orjson.* · \d+\.\d\dx aiohttp \+ json\.loads", line
        )
    assert re.search(r"SDK 8 .* \d\.\d\dx aiohttp worker floor.* · \d+\.\d\dx ideal\+cost", summary)
    # Every figure went to the JSON, with what the chart needs of the walk.
    document = json.loads(results.read_text(encoding="utf-8"))
    walk = chart.walk_series(document["results"])
    assert set(walk) == {"5 ms a request"}
    assert set(walk["5 ms a request"]["SDK"]) == set(walk["5 ms a request"]["floor"]) == {4, 8}
    if HAS_MATPLOTLIB:
        assert f"chart: {png}" in out
        assert png.read_bytes().startswith(b"\x89PNG")
    else:
        assert "chart: skipped, matplotlib is not installed" in out


def test_runner_skips_a_script_that_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(runner.BENCHMARKS, "nothing", ("bench_nothing", "no question", ()))
    assert runner.main(["--quick", "--only", "nothing"]) == 0
    out = capsys.readouterr().out
    assert "skipped: bench_nothing.py does not exist yet" in out
    assert "(no figures: no script wrote any)" in out


def test_the_runner_gives_json_only_to_the_scripts_that_take_it() -> None:
    here = ROOT / "benchmarks"
    assert runner.takes_json(here / "bench_overhead.py")
    assert runner.takes_json(here / "bench_walk.py")
    assert runner.takes_json(here / "bench_export.py")
    assert not runner.takes_json(here / "bench_simulator.py")


def test_summary_table_gives_every_floor_median_and_noise(tmp_path: Path) -> None:
    RESULTS.clear()  # what other tests' in-process runs recorded
    times = {
        "floor A": [1.0, 1.0, 1.0],
        "floor B": [2.0, 2.0, 2.0],
        "SDK": [1.5, 1.2, 1.8],
        "peer": [9.0, 9.0, 9.0],
    }
    floors = {"A": "floor A", "B": "floor B"}
    record_times("9", "a scenario", times, floors=floors, summary=["SDK"], scale=1)
    record("9", "an ideal", "SDK 4", [0.2, 0.3], floors={"ideal": 0.1})
    write_results(tmp_path / "r.json", "bench_x")
    assert RESULTS == []  # written, then forgotten
    document = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert document["command"].startswith("python -m benchmarks.bench_x")
    assert "cores" in document["machine"]
    table = runner.summary_table(document["results"]).splitlines()
    assert table[1] == "question 9: a scenario"
    # Only the summary's rows; the ratio to each floor with its rounds' min-max.
    assert table[2].split() == [
        "SDK",
        "1.50",
        "ms",
        "±20%",
        "1.50x",
        "A",
        "(1.20-1.80)",
        "·",
        "0.75x",
        "B",
        "(0.60-0.90)",
    ]
    assert table[3] == "question 9: an ideal"
    assert table[4].split()[2:] == ["250.0", "ms", "±20%", "2.50x", "ideal", "(2.00-3.00)"]


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is in the bench group")
def test_the_chart_is_drawn_a_panel_a_latency(tmp_path: Path) -> None:
    results = [
        {
            "question": "3",
            "scenario": f"{latency} ms",
            "contender": f"{who} {n}",
            "median": latency * 64 / n * (1.1 if who == "SDK" else 1.0),
            "concurrency": n,
            "ideal_ms": latency * 60 / n,
        }
        for latency in (20, 50)
        for n in (4, 8)
        for who in ("SDK", "floor")
    ]
    series = chart.walk_series(results)
    assert list(series) == ["20 ms", "50 ms"]
    assert series["20 ms"]["SDK"] == {4: pytest.approx(352.0), 8: pytest.approx(176.0)}
    assert series["50 ms"]["ideal"] == {4: 750.0, 8: 375.0}
    png = chart.walk_chart(results, tmp_path / "w.png", machine="a machine")
    assert png.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="no walk figures"):
        chart.walk_chart([], tmp_path / "none.png")
