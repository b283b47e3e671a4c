"""``dmhub-async lookup``'s progress while the service is slow, and its JSON lines output."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _cli_support import TIMEOUT, ServedSimulator, cli_command
from aiohttp import web

from dmhub_async.cli import _report, main


def _identities(served: ServedSimulator, path: Path) -> list[tuple[str, str, int | None]]:
    """An input of 10 bound identities and 2 of no one's: ``(type, value, customer_id)``."""
    rows: list[tuple[str, str, int | None]] = []
    for customer_id in served.ids():
        for type_, value, _name in served.call(served.sim.identities, customer_id)[:1]:
            rows.append((type_, value, customer_id))
        if len(rows) == 10:
            break
    rows[3:3] = [("wechat", "o-nobody-has-this", None), ("email", "nobody@example.com", None)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("type", "value"), *((t, v) for t, v, _ in rows)])
    return rows


def test_lookup_progress_lines_go_on_before_the_first_answer(
    in_process: dict[str, str],
    served: ServedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Lines came only with answers: a slow service (or a token that took long) showed
    # nothing at all until the first one, where a CI job that kills a silent step killed it.
    # Every look of the ticker prints here, so lines said while no answer had come show.
    monkeypatch.setattr(_report, "PROGRESS_EVERY", 0.0)
    monkeypatch.setattr(_report, "TICK_EVERY", 0.0)
    rows = _identities(served, Path("ids.csv"))

    assert main(["lookup", "--in", "ids.csv", "--out", "found.csv", "--concurrency", "1"]) == 0

    err = capsys.readouterr().err.splitlines()
    waiting = [line for line in err if line.startswith(f"dmhub-async: 0/{len(rows)} identities")]
    assert len(waiting) >= 2, err  # said again while nothing moved, not once
    assert err[-1].startswith(f"dmhub-async: {len(rows)}/{len(rows)} identities (100%)")
    assert "checking them" not in "\n".join(err)  # the export's words, not a lookup's


def test_a_lookups_progress_after_its_last_answer_says_no_check() -> None:
    # The export's "(100%), checking them against the service" is its final check's: a
    # lookup that waited on its client's close after its last answer would have said so.
    now = [100.0]
    out = io.StringIO()
    lines = _report.ProgressLines(out, what="identities", checked=False, clock=lambda: now[0])

    lines.update(0, 12)
    now[0] = 101.0
    lines.update(12, 12)  # 1 s after the start: no line yet
    now[0] = 106.0
    lines.tick()

    assert out.getvalue().splitlines() == ["dmhub-async: 12/12 identities (100%), 2/s, ETA 0:00:00"]


def test_reading_a_slow_pipe_says_so_every_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    # `slow_query | dmhub-async lookup --in - ...`: the copy looked at the clock only every
    # 10,000 rows, so a producer giving a row a second (or none yet) left the log without a
    # line for as long as it took, where a line every 5 seconds is promised and a CI job that
    # kills a silent step killed it. Here 3 rows have come, and the next does not.
    now = [100.0]
    noted = threading.Event()

    def clock() -> float:
        # Still until the 3 rows are noted (a tick of the thread before them, on a busy
        # machine, said "0 lines"), then each look more than PROGRESS_EVERY after the last.
        if noted.is_set():
            now[0] += 6.0
        return now[0]

    monkeypatch.setattr(_report, "_now", clock)
    monkeypatch.setattr(_report, "TICK_EVERY", 0.001)
    err = _Said()
    monkeypatch.setattr(sys, "stderr", err)
    with _report.reading("lines of --in - copied", quiet=False) as note:
        assert note is not None
        for rows in (1, 2, 3):
            note(rows)
        noted.set()
        # The read blocks here: no row, no call of note().
        assert err.written.wait(30), "no line while the input was read"

    assert err.getvalue().splitlines()[0].startswith("dmhub-async: 3 lines of --in - copied, ")


class _Said(io.StringIO):
    """A standard error that says when something was written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self.written.set()
        return written


@pytest.mark.parametrize("out", ["found.jsonl", "found.NDJSON"])
def test_lookup_writes_json_lines_to_a_jsonl_out(
    in_process: dict[str, str],
    served: ServedSimulator,
    capsys: pytest.CaptureFixture[str],
    out: str,
) -> None:
    # `--out found.jsonl` was refused: CSV was all a lookup wrote. A GBK input (Excel's on
    # Chinese Windows) gives JSON lines in UTF-8, as JSON is: its values the same text.
    rows = _identities(served, Path("ids.csv"))
    rows.append(("email", "王伟@example.com", None))
    with Path("ids.csv").open("a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow(rows[-1][:2])
    Path("ids.csv").write_text(Path("ids.csv").read_text("utf-8"), "gbk")

    code = main(["lookup", "--in", "ids.csv", "--out", out, "--encoding", "gbk"])

    assert code == 0, capsys.readouterr().err
    lines = Path(out).read_bytes().decode("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"type": t, "value": v, "customer_id": c} for t, v, c in rows
    ]
    assert f"{len(rows) - 3} found, 3 not found -> {out}" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--format", "jsonl"], []], ids=["jsonl", "csv"])
def test_lookup_to_standard_output_is_csv_unless_format_says_jsonl(
    in_process: dict[str, str],
    served: ServedSimulator,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
) -> None:
    rows = _identities(served, Path("ids.csv"))

    assert main(["lookup", "--in", "ids.csv", "--out", "-", "-q", *flags]) == 0

    out = capsys.readouterr().out
    if flags:
        assert [json.loads(line) for line in out.splitlines()] == [
            {"type": t, "value": v, "customer_id": c} for t, v, c in rows
        ]
    else:
        assert list(csv.reader(out.splitlines())) == [
            ["type", "value", "customer_id"],
            *([t, v, "" if c is None else str(c)] for t, v, c in rows),
        ]


def test_a_lookups_report_writes_its_counts_as_its_total(
    in_process: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # "resolved 1,200 identities: 0 found, 1200 not found": the total with a separator,
    # the two counts that make it up without.
    rows = [("mobile", str(13700000000 + i)) for i in range(1200)]
    with Path("ids.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("type", "value"), *rows])

    assert main(["lookup", "--in", "ids.csv", "--out", "found.csv", "--concurrency", "16"]) == 0

    assert "resolved 1,200 identities: 0 found, 1,200 not found -> found.csv" in (
        capsys.readouterr().out
    )


def _piped(monkeypatch: pytest.MonkeyPatch, rows: int, *, ticking: bool = False) -> None:
    """Standard input a pipe of ``rows`` identities of no one (copied first, as a pipe is).
    ``ticking``: ten seconds pass at each look at the clock, a note every 10 rows read."""
    if ticking:
        ticks = iter(range(0, 10_000, 10))
        monkeypatch.setattr(_report, "_now", lambda: float(next(ticks)), raising=False)
        monkeypatch.setattr(_report, "READ_NOTE_EVERY", 10, raising=False)
        monkeypatch.setattr(_report, "TICK_EVERY", 3600.0)  # the clock looked at by rows alone
    data = "type,value\n" + "".join(f"email,nobody{i}@example.com\n" for i in range(rows))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data.encode())))


def test_lookup_says_how_far_it_has_read_its_input_before_the_first_request(
    in_process: dict[str, str],
    served: ServedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `--in -` (a pipe) is copied to a temporary file, then every row of it checked, before
    # the first request: 4.4 s a million rows, plus its producer's time, with no line at all,
    # and a CI job that kills a silent step killed it. Ten seconds pass at each look here.
    _piped(monkeypatch, 30, ticking=True)

    assert main(["lookup", "--in", "-", "--out", "found.csv"]) == 0

    err = capsys.readouterr().err.splitlines()
    assert err[:6] == [
        "dmhub-async: 10 lines of --in - copied to a temporary file, 1/s",
        "dmhub-async: 20 lines of --in - copied to a temporary file, 1/s",
        "dmhub-async: 30 lines of --in - copied to a temporary file, 1/s",
        "dmhub-async: 10 rows of --in - checked, 1/s",
        "dmhub-async: 20 rows of --in - checked, 1/s",
        "dmhub-async: 30 rows of --in - checked, 1/s",
    ], err
    assert all("--in" not in line for line in err[6:]), err
    assert served.sim.counters.total > 0  # and then looked up


def test_lookup_reading_its_input_says_nothing_when_quiet_and_draws_a_bar_on_a_terminal(
    in_process: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _piped(monkeypatch, 30, ticking=True)
    assert main(["lookup", "--in", "-", "--out", "quiet.csv", "-q"]) == 0
    assert capsys.readouterr().err == ""

    # On a terminal, a bar (as an export's), gone once the input is read: no line for a log.
    _piped(monkeypatch, 30)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert main(["lookup", "--in", "-", "--out", "found.csv"]) == 0
    err = capsys.readouterr().err
    assert "rows of --in - checked" in err, err
    assert "copied to a temporary file" in err, err
    assert "dmhub-async: 10 lines" not in err, err


@pytest.mark.parametrize("flags", [["--format", "jsonl"], []], ids=["jsonl", "csv"])
def test_a_lookup_to_standard_output_that_fails_before_any_answer_writes_nothing_there(
    in_process: dict[str, str],
    served: ServedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
) -> None:
    # `lookup --out - > found.csv` with a wrong secret left found.csv holding the CSV header,
    # a result of no row, as a lookup that found no one has; an export to standard output
    # writes nothing there when it fails so.
    _identities(served, Path("ids.csv"))
    monkeypatch.setenv("DMHUB_SECRET", "not-the-secret")

    assert main(["lookup", "--in", "ids.csv", "--out", "-", "-q", *flags]) == 1

    out, err = capsys.readouterr()
    assert "DMHUB_SECRET" in err
    assert out == ""


@pytest.mark.parametrize("flags", [["--format", "jsonl"], []], ids=["jsonl", "csv"])
def test_a_lookup_to_standard_output_writes_each_row_as_it_is_answered(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, flags: list[str]
) -> None:
    # `lookup --out - | consumer` got its rows 8 KB at a time (about 200), all of them at the
    # end of a short run: a slow service's answers sat in a buffer for minutes, and a run
    # killed outright lost them, where an export to standard output writes each page as it
    # comes. Seen from the service: by the time a lookup is asked, the answers before it
    # are out (one at a time, each asked once the one before it is written).
    rows = _identities(served, tmp_path / "ids.csv")
    stdout = tmp_path / "stdout"
    written_then: list[int] = []

    def look(request: web.Request) -> None:
        if request.path == "/v1/customeridentities":
            written_then.append(stdout.read_bytes().count(b"\n"))

    served.call(served.sim.on_request, look)
    try:
        with stdout.open("wb") as out:
            result = subprocess.run(
                cli_command(
                    "lookup", "--in", "ids.csv", "--out", "-", "-q", "--concurrency", "1", *flags
                ),
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
    finally:
        served.call(served.sim.clear_hooks)

    assert result.returncode == 0, result.stderr
    header = 0 if flags else 1  # CSV's, written with the first row
    assert written_then == [0, *(header + answered for answered in range(1, len(rows)))]
