"""The instruction-count benchmark: its arithmetic, its contenders' work, its skip note.

The counting itself needs valgrind and minutes, so it is not run here: what is run is every
part it is made of (each contender reads every customer, or makes every call, in a child of
its own, as it would under callgrind).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks import bench_instructions as bi
from benchmarks._common import REPO, simulator_process, subprocess_env

CALLGRIND_TAIL = """==41== Events    : Ir
==41== Collected : 123456789
==41==
==41== I   refs:      123,456,789
"""


def test_the_count_is_read_from_callgrinds_summary() -> None:
    assert bi.collected(CALLGRIND_TAIL) == 123_456_789


def test_output_without_a_count_is_an_error_not_a_zero() -> None:
    with pytest.raises(ValueError, match="no instruction count"):
        bi.collected("==41== Invalid read of size 8\n")


def test_one_runs_count_is_the_difference_over_the_runs_between() -> None:
    # 2 runs: 1,000 start-up + 2 x 500; 5 runs: 1,000 + 5 x 500.
    assert bi.per_run(2_000, 3_500, 2, 5) == 500


@pytest.mark.parametrize(("count_a", "count_b"), [(3_500, 3_500), (3_500, 2_000)])
def test_a_child_that_did_less_than_the_other_gives_no_figure(count_a: int, count_b: int) -> None:
    with pytest.raises(ValueError, match="not more than"):
        bi.per_run(count_a, count_b, 2, 5)


def test_the_table_gives_each_contenders_ratio_to_the_floor() -> None:
    out = bi.table({"floor": 4_000_000, "SDK": 4_800_000}, "floor", "page")
    assert out.splitlines()[1].split()[-2:] == ["4,000", "1.00x"]
    assert out.splitlines()[2].split()[-2:] == ["4,800", "1.20x"]


def test_without_valgrind_it_says_so_and_counts_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bi.shutil, "which", lambda name: None)
    assert bi.main([]) == 0
    assert "skipped: valgrind is not installed" in capsys.readouterr().out


#: Each contender's child, how many runs it is given, and what it prints: the customers it
#: read, or the calls it made.
CHILDREN: list[tuple[str, int, str]] = [
    *((kind, 1, "250") for kind in bi.WALKS.values()),
    *(
        (kind, 3, "3")
        for kind in [
            *bi.CALLS.values(),
            *bi.HELD.values(),  # each lookup finds its customer, or the child fails
            *bi.LOOKUPS.values(),
            *bi.SHORT_LIVED.values(),
        ]
    ),
    *((kind, 1, "1000") for kind in bi.DECODES.values()),
    *((kind, 1, "250") for kind in bi.EXPORTS.values()),
]


@pytest.fixture(scope="module")
def child_env() -> Iterator[dict[str, str]]:
    """The environment of a contender's child: the simulator in a process of its own."""
    with simulator_process(250) as sim:
        yield subprocess_env() | {
            "BENCH_SIM_URL": sim.url,
            "BENCH_SIM_APP_ID": sim.app_id,
            "BENCH_SIM_SECRET": sim.secret,
        }


# One test a child (27 of them): as one test, their 15 s on a quiet machine grew past its
# timeout when the machine was loaded (45 s with other work beside, 90 s under CI's load).
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("kind", "n", "expected"), CHILDREN, ids=[c[0] for c in CHILDREN])
def test_each_contender_does_its_whole_work_in_its_child(
    child_env: dict[str, str], kind: str, n: int, expected: str
) -> None:
    # The diagnostics turn a promise off in their own process only: run as the parent does.
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_instructions", "--child", kind, str(n)],
        env=child_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected], kind


def _counted_by(monkeypatch: pytest.MonkeyPatch, count: Callable[[str, int, object], int]) -> None:
    """valgrind "installed", its counts ``count``'s, the simulators stand-ins."""

    @contextlib.contextmanager
    def fake_simulator(customers: int) -> Iterator[object]:
        yield object()

    monkeypatch.setattr(bi.shutil, "which", lambda name: "/usr/bin/valgrind")
    monkeypatch.setattr(bi, "count", count)
    monkeypatch.setattr(bi, "simulator_process", fake_simulator)


def test_a_run_prints_each_questions_contenders_over_its_floor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Counts as callgrind would give them: start-up, then so much a run, per contender.
    per_run = {
        "floor": 4_000_000,
        "rows": 4_800_000,
        "get": 400_000,
        "request": 460_000,
        "get-64": 380_000,
        "lookup-many": 440_000,
        "get-new-session": 2_000_000,
        "request-new-client": 2_500_000,
    }

    def fake_count(kind: str, n: int, sim: object) -> int:
        return 90_000_000 + n * per_run[kind]

    _counted_by(monkeypatch, fake_count)
    results = tmp_path / "run.json"
    argv = ["--quick", "--question", "4", "--question", "1", "--question", "4c", "--question", "4s"]
    assert bi.main([*argv, "--json", str(results)]) == 0
    out = capsys.readouterr().out
    # --quick walks 300 customers: 3 pages a walk.
    assert "question 1: instructions a page (3 pages a walk" in out
    rows = {line.rsplit(None, 2)[0]: line.split()[-2:] for line in out.splitlines()[3:] if line}
    assert rows["SDK list_rows()"] == ["1,600", "1.20x"]
    assert rows["SDK dm.request"] == ["460", "1.15x"]
    assert "question 4c: instructions a lookup, 64 at a time" in out
    assert rows["SDK lookup_many(concurrency=64)"] == ["440", "1.16x"]  # over its own floor
    assert "question 4s: instructions a short-lived client: made, its token, one call" in out
    assert "k instr/client" in out
    assert rows["SDK: a new DMHubClient, its token, one call"] == ["2,500", "1.25x"]
    assert "question 2" not in out
    figures = {r["contender"]: r for r in json.loads(results.read_text())["results"]}
    assert figures["SDK dm.request"]["ratios"]["floor (instructions)"]["median"] == 1.15
    assert figures["SDK list_rows()"]["median"] == 1600  # k instructions a page


def test_contenders_named_are_counted_alone_beside_their_floor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    counted: list[str] = []

    def fake_count(kind: str, n: int, sim: object) -> int:
        counted.append(kind)
        return 90_000_000 + n * {"floor": 4_000_000, "get": 400_000}.get(kind, 4_400_000)

    _counted_by(monkeypatch, fake_count)
    # A kind and a label; question 4 has neither of them and is not run at all.
    argv = ["--contender", "rows-no-big-int-check", "--contender", "SDK list_rows()"]
    assert bi.main([*argv, "--question", "1", "--question", "4"]) == 0
    assert sorted(set(counted)) == ["floor", "rows", "rows-no-big-int-check"]
    out = capsys.readouterr().out
    assert "question 4" not in out
    rows = {line.rsplit(None, 2)[0]: line.split()[-2:] for line in out.splitlines()[3:] if line}
    assert set(rows) >= {"floor: aiohttp + orjson", "SDK list_rows()"}
    assert rows["diagnostic: list_rows(), big-integer check off"] == [
        "220",
        "1.10x",
    ]  # a page of 20
    assert "SDK list()" not in rows

    # A name that is no contender is refused, naming it, before anything is counted.
    counted.clear()
    with pytest.raises(SystemExit):
        bi.main(["--contender", "rowz"])
    assert "--contender rowz: no such contender" in capsys.readouterr().err
    assert counted == []


@pytest.mark.timeout(90)
def test_the_export_against_another_checkout_imports_that_checkouts_sdk(tmp_path: Path) -> None:
    # A checkout whose package says where it is: the child must export with it, not with
    # this repository's (which python -m would have put first on the path).
    other = tmp_path / "older"
    (other / "dmhub_async").mkdir(parents=True)
    (other / "dmhub_async" / "__init__.py").write_text(
        "raise ImportError('the older checkout was imported')\n"
    )
    with simulator_process(250) as sim:
        env = subprocess_env() | {
            "BENCH_SIM_URL": sim.url,
            "BENCH_SIM_APP_ID": sim.app_id,
            "BENCH_SIM_SECRET": sim.secret,
        }
        seen = {}
        for code in (str(other), str(REPO)):
            env["PYTHONPATH"] = f"{code}/:{env['PYTHONPATH']}"
            done = subprocess.run(
                [sys.executable, bi.__file__, "--child", f"export@{code}/", "1"],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            seen[code] = (done.returncode, done.stdout.split(), done.stderr)
    assert seen[str(other)][0] != 0
    assert "the older checkout was imported" in seen[str(other)][2]
    assert seen[str(REPO)][:2] == (0, ["250"]), seen[str(REPO)][2]


def test_an_export_is_counted_against_another_checkout_as_its_reference(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    older = tmp_path / "older"
    (older / "dmhub_async").mkdir(parents=True)
    (older / "dmhub_async" / "__init__.py").write_text("")
    asked: list[str] = []

    def fake_count(kind: str, n: int, sim: object) -> int:
        asked.append(kind)
        return 90_000_000 + n * (7_000_000 if "@" in kind else 4_000_000)

    _counted_by(monkeypatch, fake_count)
    assert bi.main(["--quick", "--question", "5", "--against", str(older)]) == 0
    out = capsys.readouterr().out
    assert "question 5: instructions a page of a JSONL export (3 pages" in out
    rows = {line.rsplit(None, 2)[0]: line.split()[-2:] for line in out.splitlines()[3:] if line}
    assert rows[f"the same export, dmhub_async at {older}"] == ["2,333", "1.00x"]
    assert rows["SDK export_customers (JSONL, concurrency 8)"] == ["1,333", "0.57x"]
    assert sorted(set(asked)) == ["export", f"export@{older}/"]


def test_against_a_directory_without_the_sdk_is_refused_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(bi.shutil, "which", lambda name: "/usr/bin/valgrind")
    monkeypatch.setattr(bi, "simulator_process", None)  # started, it would raise
    with pytest.raises(SystemExit) as stopped:
        bi.main(["--question", "5", "--against", str(tmp_path)])
    assert stopped.value.code == 2
    assert "no dmhub_async package there" in capsys.readouterr().err


def test_a_child_runs_on_pythons_own_allocator_whatever_the_callers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On glibc's malloc alone (PYTHONMALLOC=malloc) question 4c's count of the same code moved
    # by 3k a lookup from run to run: its consolidations walk the small chunks freed before.
    monkeypatch.setenv("PYTHONMALLOC", "malloc")
    seen: dict[str, str] = {}

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.update(kwargs["env"])  # type: ignore[arg-type]
        return subprocess.CompletedProcess(command, 0, "", CALLGRIND_TAIL)

    monkeypatch.setattr(bi.subprocess, "run", fake_run)

    class Sim:
        url, app_id, secret = "http://127.0.0.1:1", "app", "secret"

    assert bi.count("get-64", 3, Sim()) == 123_456_789
    assert seen["PYTHONMALLOC"] == "pymalloc"
    assert seen["PYTHONHASHSEED"] == "0"
