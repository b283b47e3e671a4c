"""What a user of ``dmhub-async`` expects of a command line (issue 14 items 7-9, issue 17 item 7).

``--version``, ``python -m dmhub_async``, a default and an example in every ``--help``, usage
errors (exit 2) for values out of range, progress lines in a log, ``--quiet``, ``--report json``,
``-v`` and ``DMHUB_LOG`` to see requests and retries.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from _cli_support import (
    CUSTOMERS,
    SECRET,
    ServedSimulator,
    assert_one_line_error,
    base_env,
    jsonl_ids,
    run_cli,
)
from aiohttp import web

from dmhub_async import __version__
from dmhub_async.cli import _parser, _report, main
from dmhub_async.testing._simulator import MAX_CUSTOMERS


def python_m(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dmhub_async", *args],
        env=base_env(cwd / "cache"),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_and_python_m(tmp_path: Path) -> None:
    result = python_m("--version", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dmhub-async {__version__}"


@pytest.mark.parametrize("command", ["export", "lookup", "simulate", "demo", "worker", "merge"])
def test_every_help_shows_defaults_an_example_and_the_exit_codes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])

    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert f"example:\n  dmhub-async {command} " in text
    assert "(default: " in text
    assert "130 SIGINT" in text
    assert "143 SIGTERM" in text


@pytest.mark.parametrize("command", ["export", "lookup", "simulate", "demo", "worker", "merge"])
def test_every_help_lists_each_exit_code_of_the_readme(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The help's list ended at 143: 141, what `dmhub-async export --out - | head -1` exits
    # with (the README's table has it), was not in it.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    codes = re.findall(r"^\| (\d+) \|", readme, re.M)
    assert "141" in codes
    with pytest.raises(SystemExit):
        main([command, "--help"])

    epilog = capsys.readouterr().out.split("exit codes:")[1]
    assert [code for code in codes if not re.search(rf"\b{code}\b", epilog)] == []


@pytest.mark.parametrize(
    ("command", "verbose"),
    [
        ("export", "log every request and retry on stderr"),
        ("lookup", "log every request and retry on stderr"),
        ("demo", "log every request and retry on stderr"),
        ("worker", "log every request and retry, and each job's start and end, on stderr"),
        # It serves requests, and logs only those a client left before its answer.
        (
            "simulate",
            "log on stderr each request a client left before its answer (the requests served "
            "are not logged)",
        ),
        ("merge", "no effect: merge sends no request (its warnings show without it)"),
    ],
)
def test_each_verbose_help_says_what_it_shows(
    command: str, verbose: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every command's -v said "log every request and retry on stderr": merge sends none, and
    # simulate logs none of those it serves.
    with pytest.raises(SystemExit):
        main([command, "--help"])

    text = " ".join(capsys.readouterr().out.split())
    assert f"-v, --verbose {verbose} -q, --quiet" in text


@pytest.mark.parametrize("command", ["export", "lookup"])
def test_the_help_says_a_file_read_that_is_missing_or_bad_exits_1_not_2(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The help said "1 error, 2 usage (a bad flag, ...)": a missing or bad --id-list or --in
    # file read as a bad flag's value, and exits 1 (as the README's table says: "a file").
    with pytest.raises(SystemExit):
        main([command, "--help"])

    epilog = " ".join(capsys.readouterr().out.split("exit codes:")[1].split())
    assert "1 error (the service, the network, the credentials, a file read:" in epilog
    # and a full disk, as the README's table says (the help left it out)
    assert "--in or --id-list missing, unreadable, empty or with a bad line; a disk full)" in epilog


def test_export_help_shows_a_sharded_export_on_processes_and_on_a_queue(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `export --help` showed two single-file examples, none of --shards, --workers or --queue,
    # whose `--out` is then a directory: the README's commands were nowhere in the help.
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    export = capsys.readouterr().out
    examples = export.split("example:\n", 1)[1].split("\n\n", 1)[0]

    assert "dmhub-async export --out exports/june --shards 16 --workers 4" in examples
    assert "dmhub-async export --out /shared/june --shards 64 --queue redis://" in examples


def test_the_shards_help_says_a_rerun_keeps_the_plan_and_the_last_window_is_checked_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `export --help` said only how --shards cuts a new export: a rerun with another N on the
    # directory takes up its plan (a warning after the fact), and once every part is complete
    # the last window is checked again for customers created since (the late check): neither
    # was in the help.
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    shards = text.split("--shards N ", 1)[1].split(" --workers K ", 1)[0]

    assert "a rerun on the directory resumes the plan it holds, whatever N" in shards, shards
    assert (
        "once every part is complete, the last window is checked again and the customers "
        "created since its shard ended are added to its part"
    ) in shards, shards


def test_the_token_store_help_says_where_a_queue_keeps_the_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `worker --help` said --token-store defaults to $DMHUB_TOKEN_STORE, else a file in the
    # cache directory: a worker (and `export --queue`) shares the token through the queue's
    # Redis unless --token-store is given, and reads no DMHUB_TOKEN_STORE.
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    worker = " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    export = " ".join(capsys.readouterr().out.split())

    # It now reads a Redis there, and refuses a file or memory (which the workers cannot share),
    # in --token-store too, where one was taken.
    assert "default: $DMHUB_TOKEN_STORE if a redis:// URL, else the queue's Redis" in worker
    assert "a file or memory, given here or in $DMHUB_TOKEN_STORE, is refused" in worker
    assert "a file or memory, given here or in $DMHUB_TOKEN_STORE, is refused" in export
    assert "a file in your cache directory" not in worker
    assert "with --queue: $DMHUB_TOKEN_STORE if a redis:// URL, else the queue's Redis" in export
    # Every Redis URL the option takes (the README says it takes these), not redis:// alone.
    for help_text in (worker, export):
        assert "a Redis (redis://HOST, rediss://HOST, unix://PATH)" in help_text


def test_help_shows_a_default_of_zero_and_no_default_of_an_on_off_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 0 == False: a default of 0 was taken for a switch's False and not shown.
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])

    text = " ".join(capsys.readouterr().out.split())
    assert "seed of the data and the faults (default: 0)" in text
    assert "added to every answer (default: 0.0)" in text
    assert "share of requests that fail (default: 0.0)" in text
    assert "(default: False)" not in text


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["simulate", "--port", "70000"], ("--port", "65535")),
        (["simulate", "--latency-ms", "-1"], ("--latency-ms",)),
        # Taken: the demo then waited for ever on its first answer.
        (["demo", "--latency-ms", "inf"], ("--latency-ms", "finite")),
        (["simulate", "--fault-rate", "nan"], ("--fault-rate",)),
        # Not a usage error: the simulator's own, after the flags were read.
        (["demo", "--customers", "1000000000"], ("--customers", "100000000")),
        (["simulate", "--customers", "-1"], ("--customers",)),
        (["export", "--out", "x.jsonl", "--concurrency", "65"], ("--concurrency", "64")),
        (["lookup", "--in", "a", "--out", "b", "--concurrency", "100000"], ("--concurrency",)),
        (["export", "--out", "x.jsonl", "--page-size", "101"], ("--page-size", "100")),
        (["export", "--out", "x.jsonl", "--timezone", "Asia/Shang"], ("--timezone",)),
        # A directory of the zone database, or a name too long for a file name: a raw
        # IsADirectoryError (OSError) and its traceback, exit 1.
        (["export", "--out", "x.jsonl", "--timezone", "Asia"], ("--timezone", "'Asia'")),
        (["export", "--out", "x.jsonl", "--timezone", "America"], ("--timezone", "'America'")),
        (["export", "--out", "x.jsonl", "--timezone", "a" * 300], ("--timezone", "IANA")),
        # A zone in another case, or its city alone: DMHubClient(timezone=...) names the one
        # meant, the flag said "(say Asia/Shanghai, or UTC)" of any.
        (
            ["export", "--out", "x.jsonl", "--timezone", "america/new_york"],
            ("--timezone", "(did you mean 'America/New_York'?)"),
        ),
        (
            ["export", "--out", "x.jsonl", "--timezone", "tokyo"],
            ("--timezone", "'tokyo' (did you mean 'Asia/Tokyo'?)"),
        ),
        # A rate the shared limit cannot keep: exit 1 once the worker had reached its Redis,
        # naming the Python argument (rate_limit), not the flag.
        (
            ["worker", "--redis", "redis://127.0.0.1:1/0", "--rate-limit", "50.01"],
            ("--rate-limit", "50.01", "round it"),
        ),
        (["worker", "--redis", "redis://127.0.0.1:1/0", "--rate-limit", "1e16"], ("--rate-limit",)),
        # `--queue "$QUEUE"` with QUEUE unset: taken as no queue, the shards all ran on this
        # machine, in one process, exit 0 (and without --shards, no word either).
        (["export", "--out", "d", "--shards", "4", "--queue", ""], ("--queue", "no Redis")),
        (["export", "--out", "x.jsonl", "--queue", " "], ("--queue", "no Redis")),
        # Read as ".": "error: --id-list  is a directory", exit 1, of an unset variable.
        (["export", "--out", "x.jsonl", "--id-list", ""], ("--id-list", "names no file")),
    ],
)
def test_values_out_of_range_are_usage_errors(
    args: list[str], words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)

    assert exited.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line
    assert line.startswith("dmhub-async: error: ")
    for word in words:
        assert word in line


def test_the_flags_seed_what_the_simulator_takes() -> None:
    assert _parser.MAX_SEEDED == MAX_CUSTOMERS


def test_progress_lines_say_done_total_rate_and_eta() -> None:
    now = [100.0]
    out = io.StringIO()
    lines = _report.ProgressLines(out, every=5.0, clock=lambda: now[0])

    for done, at in [(100, 101.0), (200, 104.9), (500, 105.0), (600, 106.0), (1000, 110.0)]:
        now[0] = at
        lines.update(done, 1500)

    assert out.getvalue().splitlines() == [
        "dmhub-async: 500/1,500 customers (33%), 80/s, ETA 0:00:12",
        "dmhub-async: 1,000/1,500 customers (67%), 90/s, ETA 0:00:06",
    ]


def test_progress_lines_go_on_while_nothing_moves_and_say_the_check() -> None:
    # A resumed export of 50,000 at 30 ms printed "37,500/50,000 (75%) ... ETA 0:00:02",
    # then nothing for 19 s while the final check walked the service's ids: no line every
    # 5 seconds, as promised, where a CI job that kills a silent step would have killed it.
    now = [100.0]
    out = io.StringIO()
    lines = _report.ProgressLines(out, every=5.0, clock=lambda: now[0])

    lines.tick()  # nothing known yet: nothing to say
    for done, at, call in [
        (100, 101.0, "update"),
        (500, 105.0, "update"),
        (500, 109.0, "tick"),  # 4 s since the last line: none
        (500, 110.0, "tick"),  # the service slow: the same figures, the rate falling
        (1500, 111.0, "update"),  # the walk done, 1 s after the last line: none
        (1500, 116.0, "tick"),  # the final check: said so, every 5 s
        (1500, 121.0, "tick"),
    ]:
        now[0] = at
        if call == "update":
            lines.update(done, 1500)
        else:
            lines.tick()

    assert out.getvalue().splitlines() == [
        "dmhub-async: 500/1,500 customers (33%), 80/s, ETA 0:00:12",
        "dmhub-async: 500/1,500 customers (33%), 40/s, ETA 0:00:25",
        "dmhub-async: 1,500/1,500 customers (100%), checking them against the service",
        "dmhub-async: 1,500/1,500 customers (100%), checking them against the service",
    ]


def test_an_exports_progress_lines_go_on_after_its_last_page(
    in_process: dict[str, str],
    served: ServedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A line whenever the ticker looks: the count read after the walk (and, on a resumed
    # export, the final check) is said, where nothing was printed after the last page.
    monkeypatch.setattr(_report, "PROGRESS_EVERY", 0.0)
    monkeypatch.setattr(_report, "TICK_EVERY", 0.0, raising=False)

    assert main(["export", "--out", "a.jsonl", "--concurrency", "2"]) == 0
    shown = capsys.readouterr()
    assert (
        f"dmhub-async: {CUSTOMERS:,}/{CUSTOMERS:,} customers (100%), checking them against the"
        " service"
    ) in shown.err.splitlines()
    assert jsonl_ids(Path("a.jsonl")) == served.ids()


def test_progress_lines_in_a_log_and_none_when_quiet(
    in_process: dict[str, str],
    served: ServedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(_report, "PROGRESS_EVERY", 0.0)  # a line a page

    assert main(["export", "--out", "a.jsonl", "--page-size", "100", "--concurrency", "2"]) == 0
    shown = capsys.readouterr()
    progress = [line for line in shown.err.splitlines() if line.startswith("dmhub-async: ")]
    assert len(progress) == CUSTOMERS // 100
    assert progress[-1].startswith(f"dmhub-async: {CUSTOMERS:,}/{CUSTOMERS:,} customers (100%)")
    assert f"exported      {CUSTOMERS} customers" in shown.out

    assert main(["export", "--out", "b.jsonl", "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert (quiet.out, quiet.err) == ("", "")
    assert jsonl_ids(Path("b.jsonl")) == served.ids()


def test_report_json_for_scripts(
    in_process: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--out", "a.jsonl", "--report", "json", "-q"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["exported"] == CUSTOMERS
    assert report["complete"] is True
    assert report["path"] == "a.jsonl"
    assert report["count_before"] == report["count_after"] == CUSTOMERS


@pytest.mark.parametrize("report", ["json", "text"])
def test_the_report_of_an_output_named_in_bytes_that_are_not_utf8(
    env: dict[str, str], tmp_path: Path, report: str
) -> None:
    """A file name that is no UTF-8 (one made on Chinese Windows, unzipped: GBK bytes) comes to
    Python with lone surrogates. With standard output strict UTF-8 (``PYTHONIOENCODING=utf-8``,
    as many container images set; a Windows console redirected to a file), the report failed
    after the export had written every customer: exit 1, "'utf-8' codec can't encode
    characters", no report."""
    name = os.fsdecode("客户".encode("gbk") + b".jsonl")
    env = {**env, "PYTHONIOENCODING": "utf-8"}

    result = run_cli("export", "--out", name, "--report", report, env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert jsonl_ids(tmp_path / name) != []
    if report == "json":
        data = json.loads(result.stdout)
        assert data["exported"] == CUSTOMERS
        assert data["path"] == name  # the name as Python holds it: open() finds the file
    else:
        assert f"{CUSTOMERS} customers to" in result.stdout


def test_the_text_report_shows_an_outputs_control_characters_not_obeys_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    # The error line escaped a file name's control characters, the report of a run that
    # succeeded wrote them as they were: a name holding an escape sequence (a name made from a
    # customer's field, a file unzipped) cleared the screen or set the window title of whoever
    # read it, and a line break in it forged a line of the report.
    name = "leads\x1b]0;owned\x07\x1b[2J\nexported      0 customers.jsonl"

    result = run_cli("export", "--out", name, env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert jsonl_ids(tmp_path / name) != []
    assert "\x1b" not in result.stdout
    assert "\x07" not in result.stdout
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"exported      {CUSTOMERS} customers to leads\\x1b]0;owned\\x07")
    assert "\\nexported      0 customers.jsonl (jsonl)" in first


def test_the_sharded_export_and_merge_reports_show_names_not_obey_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    directory, merged = "parts\x1b[2J", "all\x1b]0;owned\x07.jsonl"

    exported = run_cli("export", "--out", directory, "--shards", "2", env=env, cwd=tmp_path)
    joined = run_cli("merge", directory, "--out", merged, env=env, cwd=tmp_path)

    assert exported.returncode == 0, exported.stderr
    assert joined.returncode == 0, joined.stderr
    assert "\x1b" not in exported.stdout + joined.stdout
    assert "in 2 parts to parts\\x1b[2J (2 of 2 complete" in exported.stdout
    assert joined.stdout == (
        f"merged {CUSTOMERS:,} records from parts\\x1b[2J into all\\x1b]0;owned\\x07.jsonl\n"
    )


def test_verbose_shows_requests_and_retries_without_the_token(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    served.sim.faults.script(["ok", "503"])  # the count, then the first page fails once

    result = run_cli("export", "--out", "a.jsonl", "-v", "-q", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "DEBUG dmhub_async: GET /v1/customers" in result.stderr
    assert "INFO dmhub_async: retrying GET /v1/customers" in result.stderr
    token = served.sim.access_token
    assert token is not None
    assert token not in result.stderr


def _count_with_dmhub_log(
    env: dict[str, str], value: str, first: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A program that runs ``first``, then counts the customers with DMHubClient(), run to
    its end with ``DMHUB_LOG=value``."""
    script = (
        f"{first}\n"
        "import asyncio\n"
        "from dmhub_async import DMHubClient\n"
        "async def main():\n"
        "    async with DMHubClient() as dm:\n"
        "        print(await dm.customers.count())\n"
        "asyncio.run(main())\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "DMHUB_LOG": value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


@pytest.mark.parametrize(("value", "shown"), [("debug", True), ("info", False), ("", False)])
def test_dmhub_log_shows_the_library_log(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, value: str, shown: bool
) -> None:
    result = _count_with_dmhub_log(env, value)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(CUSTOMERS)
    assert ("DEBUG dmhub_async: GET /v1/customers/count" in result.stderr) is shown
    assert SECRET not in result.stderr


def test_a_misspelt_dmhub_log_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import dmhub_async"],
        env={**base_env(tmp_path), "DMHUB_LOG": "dbug"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0
    assert "DMHUB_LOG='dbug' is not one of debug, info: ignored" in result.stderr


def test_demo_says_its_simulated_latency(tmp_path: Path) -> None:
    result = python_m("demo", "--customers", "300", "--latency-ms", "5", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "delayed 5 ms to imitate a network" in result.stdout
    assert "no client can beat 160,000 customers/s" in result.stdout
    assert "exported      300 customers" in result.stdout

    loopback = python_m("demo", "--customers", "30", "--latency-ms", "0", cwd=tmp_path)
    assert loopback.returncode == 0, loopback.stderr
    assert "answers are not delayed: loopback speed" in loopback.stdout
    assert "imitate" not in loopback.stdout  # "delayed 0 ms to imitate a network"

    quiet = python_m("demo", "--customers", "300", "--force", "-q", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert (quiet.stdout, quiet.stderr) == ("", "")


def test_the_readme_demo_runs_twice_in_one_directory(tmp_path: Path) -> None:
    # The README's first command, run again where it ran: it refused "--out dmhub-demo.jsonl
    # exists: pass --force", exit 2. Its own file is replaced; a file the user named is not.
    for _ in range(2):
        again = python_m("demo", "--customers", "300", "--latency-ms", "0", "-q", cwd=tmp_path)
        assert (again.returncode, again.stderr) == (0, "")
        assert len((tmp_path / "dmhub-demo.jsonl").read_bytes().splitlines()) == 300

    (tmp_path / "mine.jsonl").write_text("keep\n", encoding="utf-8")
    refused = python_m("demo", "--customers", "3", "--out", "mine.jsonl", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--out mine.jsonl exists: pass --force" in refused.stderr
    assert (tmp_path / "mine.jsonl").read_text(encoding="utf-8") == "keep\n"


def test_a_demo_keeps_a_file_made_at_its_out_while_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `demo --out mine.jsonl` without --force checked that mine.jsonl was not there as it
    # began, then renamed its export over the file another run put there meanwhile: exit 0,
    # that run's result gone, where export, lookup and merge keep it (README, "Outputs are
    # never destroyed").
    from dmhub_async.cli import _commands

    mine = tmp_path / "mine.jsonl"
    export = _commands.export_customers

    async def made_meanwhile(*args: Any, **kwargs: Any) -> Any:
        mine.write_text("another run's result\n", encoding="utf-8")
        return await export(*args, **kwargs)

    monkeypatch.setattr(_commands, "export_customers", made_meanwhile)
    monkeypatch.chdir(tmp_path)

    code = main(["demo", "--customers", "30", "--latency-ms", "0", "-q", "--out", "mine.jsonl"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("dmhub-async: error: --out mine.jsonl was made by another program"), err
    assert "pass --force" in err
    assert mine.read_text(encoding="utf-8") == "another run's result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.jsonl"]


def test_the_demo_report_suggests_no_flag_the_demo_refuses(tmp_path: Path) -> None:
    # Its report said "(--verify always) checks every id": the demo has no --verify, and
    # refused it (exit 2, "unrecognized arguments").
    result = python_m("demo", "--customers", "30", "--latency-ms", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'leaves equal: verify="always" checks every id' in result.stdout
    assert "--verify" not in result.stdout
    refused = python_m("demo", "--customers", "30", "--verify", "always", cwd=tmp_path)
    assert refused.returncode == 2  # what the report would have had the user type


def test_demo_report_json_is_one_object(tmp_path: Path) -> None:
    # `demo --report json | jq .exported`: the banner lines came first, and jq failed on them.
    result = python_m(
        "demo", "--customers", "300", "--latency-ms", "1", "--report", "json", cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["exported"] == 300
    assert report["complete"] is True


def test_no_credentials_is_one_line(tmp_path: Path) -> None:
    result = run_cli("export", "--out", "a.jsonl", env=base_env(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, 1, "DMHUB_APP_ID", "DMHUB_SECRET")


def test_timezone_reads_times_without_offset_in_that_zone(
    in_process: dict[str, str], served: ServedSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    shanghai = ["--created-from", "2016-01-01T11:00", "--created-to", "2016-01-02T04:00"]
    utc = ["--created-from", "2016-01-01T03:00Z", "--created-to", "2016-01-01T20:00:00+00:00"]

    assert main(["export", "--out", "sh.jsonl", *shanghai, "--timezone", "Asia/Shanghai"]) == 0
    assert main(["export", "--out", "utc.jsonl", *utc]) == 0
    assert "note" not in capsys.readouterr().err

    expected = [
        r["id"]
        for r in served.rows()
        if "2016-01-01T03:00:00Z" <= r["dateCreated"] <= "2016-01-01T20:00:00Z"
    ]
    assert 0 < len(expected) < CUSTOMERS
    assert jsonl_ids(Path("sh.jsonl")) == jsonl_ids(Path("utc.jsonl")) == expected

    assert main(["export", "--out", "naive.jsonl", *shanghai]) == 0
    err = capsys.readouterr().err
    assert "note: --created-from and --created-to without an offset read as UTC" in err
    assert "--timezone" in err


def test_plain_http_off_this_machine_needs_allow_insecure_http(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # 0.0.0.0 is not a loopback name, yet on Linux a connection to it reaches this machine.
    env["DMHUB_BASE_URL"] = served.sim.url.replace("127.0.0.1", "0.0.0.0")

    refused = run_cli("export", "--out", "a.jsonl", env=env, cwd=tmp_path)
    assert_one_line_error(refused, 1, "DMHUB_BASE_URL", "plain http", "--allow-insecure-http")
    assert sum(served.sim.counters.routes.values()) == 0

    allowed = run_cli("export", "--out", "a.jsonl", "--allow-insecure-http", env=env, cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert jsonl_ids(tmp_path / "a.jsonl") == served.ids()


def test_allow_insecure_http_reaches_the_worker_processes_of_a_sharded_export(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # The flag reached the plan's client alone: each worker process's client refused the plain
    # http URL as it was made, each died in a traceback, 3 times a shard, every shard failed
    # ("its worker died 3 times"), exit 3.
    env["DMHUB_BASE_URL"] = served.sim.url.replace("127.0.0.1", "0.0.0.0")
    args = ["--out", "parts", "--shards", "2", "--workers", "2", "--allow-insecure-http"]

    done = run_cli("export", *args, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    merged = run_cli("merge", "parts", "--out", "all.jsonl", env=env, cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr

    assert jsonl_ids(tmp_path / "all.jsonl") == served.ids()


def test_a_worker_given_allow_insecure_http_takes_a_plain_http_url(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, redis: Any
) -> None:
    # `worker --allow-insecure-http` (in its --help) was not passed to its client: the worker
    # stopped as it started, "pass --allow-insecure-http if you must", the flag given.
    env["DMHUB_BASE_URL"] = served.sim.url.replace("127.0.0.1", "0.0.0.0")
    worker = ["worker", "--redis", redis.url, "--burst"]

    refused = run_cli(*worker, env=env, cwd=tmp_path)
    assert_one_line_error(refused, 1, "DMHUB_BASE_URL", "plain http", "--allow-insecure-http")
    allowed = run_cli(*worker, "--allow-insecure-http", env=env, cwd=tmp_path)

    assert allowed.returncode == 0, allowed.stderr  # the queue empty: --burst ends it


@pytest.mark.parametrize(
    "args",
    [
        ["export", "--out", "a.jsonl", "--allow"],
        ["lookup", "--in", "ids.csv", "--out", "found.csv", "--allow"],
        ["worker", "--redis", "redis://127.0.0.1:1", "--allow"],
        ["merge", "parts", "--out", "all.jsonl", "--allow"],
        ["export", "--out", "a.jsonl", "--conc", "2"],
        ["export", "--out", "a.jsonl", "--for", "csv"],
    ],
)
def test_a_flag_is_taken_only_as_it_is_spelt_not_abbreviated(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse took any unique start of a flag: `--allow` was --allow-insecure-http (the
    # secret sent in clear) or merge's --allow-incomplete, without a word; and a start that
    # was unique once stopped a script when a flag was added (0.1.0's `--for csv` was
    # --format, and is now --format or --force).
    with pytest.raises(SystemExit) as exited:
        main(args)

    assert exited.value.code == 2
    line = capsys.readouterr().err.strip()
    flag = next(arg for arg in args if arg in ("--allow", "--conc", "--for"))
    assert line.startswith(f"dmhub-async: error: unrecognized arguments: {flag}"), line
    assert "\n" not in line


@pytest.mark.parametrize("store", ["memory", "file"])
def test_worker_processes_get_the_page_size_and_concurrency_asked_for(
    in_process: dict[str, str],
    served: ServedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    store: str,
) -> None:
    # With a memory token store the workers were given no settings but the client's: they
    # walked pages of 100, 8 at a time, whatever --page-size and --concurrency said.
    from dmhub_async.cli import _shards
    from dmhub_async.shards import Manifest

    given: list[Any] = []

    async def run_in_processes(
        settings: Any, directory: Any, manifest: Manifest, *_: Any, **__: Any
    ) -> Manifest:
        given.append(settings)
        return manifest

    monkeypatch.setattr(_shards, "run_in_processes", run_in_processes)
    spec = "memory" if store == "memory" else f"file:{tmp_path / 'tokens.json'}"
    args = ["--workers", "2", "--page-size", "40", "--concurrency", "3", "--token-store", spec]
    main(["export", "--out", "parts", "--shards", "2", "-q", *args])

    (settings,) = given
    assert (settings.page_size, settings.concurrency) == (40, 3)
    assert settings.token_redis is None
    if store == "file":
        assert settings.token_file == str(tmp_path / "tokens.json")
    else:
        # "This run only": the planner's and the workers' one token, in a private file of
        # the run (not "", the workers' own memory: a second token revoking the planner's),
        # removed as the run ends.
        private = Path(settings.token_file)
        assert private.parent.name.startswith("dmhub-tokens-")
        assert not private.parent.exists()


def test_demo_refuses_an_out_of_dash_rather_than_write_a_file_of_that_name(
    tmp_path: Path,
) -> None:
    # "-" passed the output checks as standard output, then the demo wrote a file named "-",
    # over one already there without --force, read-only or not.
    dash = tmp_path / "-"
    dash.write_text("keep me\n", encoding="utf-8")
    dash.chmod(0o444)

    result = python_m("demo", "--customers", "3", "--latency-ms", "0", "--out", "-", cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "not standard output" in result.stderr
    assert dash.read_text(encoding="utf-8") == "keep me\n"


@pytest.mark.parametrize(
    "flags", [["--queue", "redis://127.0.0.1:1/0"], ["--workers", "4"]], ids=["queue", "workers"]
)
def test_queue_or_workers_without_shards_is_a_usage_error(
    in_process: dict[str, str],
    served: ServedSimulator,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
) -> None:
    # Both were ignored: the export ran here, in one process, on a token of its own (the
    # queue's workers share theirs in its Redis: each fetch revoked the other's).
    assert main(["export", "--out", "a.jsonl", "-q", *flags]) == 2

    line = capsys.readouterr().err.strip()
    assert "\n" not in line
    assert flags[0] in line
    assert "--shards" in line
    assert sum(served.sim.counters.routes.values()) == 0
    assert not Path("a.jsonl").exists()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "gbk", "nosuchcodec"])
def test_a_sharded_export_refuses_an_encoding_it_would_not_write(
    in_process: dict[str, str],
    served: ServedSimulator,
    capsys: pytest.CaptureFixture[str],
    encoding: str,
) -> None:
    # --encoding was ignored with --shards: utf-8-sig parts had no mark for Excel, and a name
    # that is no encoding at all was taken.
    args = ["export", "--out", "parts", "--shards", "2", "--format", "csv", "--encoding", encoding]
    assert main([*args, "-q"]) == 2

    line = capsys.readouterr().err.strip()
    assert "\n" not in line
    assert f"--encoding {encoding}" in line
    assert sum(served.sim.counters.routes.values()) == 0
    assert not Path("parts").exists()


def test_no_progress_holds_for_a_sharded_export_too(
    in_process: dict[str, str],
    served: ServedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # --shards printed progress lines in a log (a bar on a terminal) whatever --no-progress said.
    monkeypatch.setattr(_report, "PROGRESS_EVERY", 0.0)  # a line a page

    assert main(["export", "--out", "parts", "--shards", "2", "--no-progress"]) == 0

    shown = capsys.readouterr()
    assert shown.err == ""
    assert f"exported {CUSTOMERS:,} customers in" in shown.out


@pytest.mark.parametrize("flag", ["--mobile", "--email"])
@pytest.mark.parametrize("shards", [[], ["--shards", "2"]], ids=["file", "shards"])
def test_a_filter_pasted_with_spaces_is_a_usage_error(
    in_process: dict[str, str],
    served: ServedSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    shards: list[str],
) -> None:
    # `--mobile " 13900000000"` matched no one: an export of nothing, exit 0, "complete".
    code = main(["export", "--out", "found.jsonl", flag, " 13900000000 ", "-q", *shards])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("dmhub-async: error: ")
    assert flag in err
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    assert sum(served.sim.counters.routes.values()) == 0  # nothing sent, no token either


def test_an_error_text_from_the_service_cannot_drive_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service's words in an error (its ``error_description``, a customer's name it
    echoes) are the one line the CLI prints on stderr. Printed as sent, an escape sequence in
    them drove the operator's terminal (OSC 52 set the clipboard, ``ESC [2J`` cleared the
    screen) and a line break printed a line of the service's own making."""
    description = (
        "客户 \x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J名字\r\ndmhub-async: exported 1500 customers"
        "\u2028\u202e\x9b31m"
    )

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"error_code": 0, "access_token": "a" * 32, "expires_in": 7200})

    async def count(request: web.Request) -> web.Response:
        body = {"error_code": 40005, "error_description": description}
        return web.json_response(body, status=400)

    app = web.Application()
    app.router.add_get("/security/accesstoken", token)
    app.router.add_get("/v1/customers/count", count)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(app)
    try:
        asyncio.run_coroutine_threadsafe(runner.setup(), loop).result(10)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(site.start(), loop).result(10)
        port = runner.addresses[0][1]
        for key, value in base_env(tmp_path / "cache").items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("DMHUB_BASE_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("DMHUB_APP_ID", "app")
        monkeypatch.setenv("DMHUB_SECRET", SECRET)
        monkeypatch.chdir(tmp_path)

        code = main(["export", "--out", "a.jsonl", "--no-progress", "--token-store", "memory"])
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1, err  # one line
    assert err.endswith("\n")
    assert "客户" in err  # the service's words, readable
    assert "名字" in err
    assert all(c.isprintable() for c in err[:-1]), repr(err)  # and nothing a terminal obeys
    assert "\\x1b]52;c;" in err  # shown for what it is


@pytest.mark.parametrize(
    ("out", "names"),
    [
        ("customers.json", "customers.jsonl (JSON lines) or customers.csv, or give --format"),
        ("customers.txt", "customers.jsonl (JSON lines) or customers.csv, or give --format"),
        ("customers", "customers.jsonl (JSON lines) or customers.csv, or give --format"),
    ],
)
def test_an_export_named_as_no_format_it_writes_is_refused_unless_format_says_it(
    in_process: dict[str, str],
    served: ServedSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    out: str,
    names: str,
) -> None:
    # `export --out customers.json` wrote JSON lines under a JSON name, exit 0, without a word:
    # a JSON reader failed on its second line. The README: the format follows the extension.
    assert main(["export", "--out", out, "-q"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"dmhub-async: error: --out {out}: the format is read from the name, .jsonl, .ndjson or"
        f" .csv: name it {names} jsonl|csv\n"
    )
    assert main(["demo", "--out", out, "--customers", "5", "-q"]) == 2
    assert "or give --format" not in capsys.readouterr().err  # demo has no --format
    assert not (tmp_path / out).exists()
    assert served.sim.counters.routes["GET /security/accesstoken"] == 0
    # Said, the format is taken whatever the name; .ndjson is JSON lines too.
    assert main(["export", "--out", out, "--format", "jsonl", "-q"]) == 0
    assert main(["export", "--out", "all.NDJSON", "-q"]) == 0
    assert (tmp_path / out).read_bytes() == (tmp_path / "all.NDJSON").read_bytes()
    assert (tmp_path / out).read_bytes().startswith(b'{"')


def test_worker_takes_q_and_report_as_0_1_0_did_and_says_they_do_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `worker -q` and `worker --report json` changed nothing (a worker prints its errors and
    # failed shards alone, and writes no report): refusing them would turn a fleet's units of
    # 0.1.0 into a crash loop. Their help says so; --report json says it as the worker starts.
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "-q, --quiet no effect: a worker prints only its errors and failed shards" in text
    assert "--report {text,json} no effect: a worker writes no report" in text

    code = main(["worker", "--redis", "redis://127.0.0.1:9/0", "-q", "--report", "json"])

    err = capsys.readouterr().err.splitlines()
    assert code == 1  # no Redis there
    assert err[0].startswith("dmhub-async: --report json: no effect: a worker writes no report")
    assert len(err) == 2, err


def test_a_ctrl_c_as_a_finished_command_exits_keeps_its_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A Ctrl-C after the command had ended (its file written, its report printed, its signal
    # handlers removed), as asyncio.run shut down, was a KeyboardInterrupt taken for one
    # before the start: "stopped by SIGINT: no output written", exit 130, and the complete
    # file's rerun refused as a finished export. The command's own outcome stands.
    real_run = asyncio.run

    def run_then_ctrl_c(coro: Any) -> Any:
        real_run(coro)
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(asyncio, "run", run_then_ctrl_c)
    code = main(["demo", "--customers", "30", "--out", "d.jsonl", "--report", "json"])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert "stopped by" not in err
    assert json.loads(out.splitlines()[-1])["complete"] is True
    assert len((tmp_path / "d.jsonl").read_bytes().splitlines()) == 30


@pytest.mark.parametrize(
    ("root", "ours", "apps"),
    [
        ("logging.basicConfig(level=logging.DEBUG, format='APP %(message)s')", 0, 1),
        ("logging.basicConfig(level=logging.WARNING, format='APP %(message)s')", 0, 1),
        (
            "h = logging.StreamHandler(); h.setLevel(logging.WARNING);"
            " h.setFormatter(logging.Formatter('APP %(message)s'));"
            " logging.getLogger().addHandler(h)",
            1,
            0,
        ),
        ("logging.basicConfig(filename='app.log', format='APP %(message)s')", 1, 0),
        (
            "logging.basicConfig(level=logging.DEBUG, format='APP %(message)s');"
            " logging.getLogger('dmhub_async').propagate = False",
            1,
            0,
        ),
        (
            "logging.basicConfig(level=logging.DEBUG, format='APP %(message)s');"
            " logging.getLogger().handlers[0].addFilter("
            "lambda record: not record.name.startswith('dmhub_async'))",
            1,
            0,
        ),
        (
            "logging.basicConfig(level=logging.DEBUG, format='ROOT %(message)s');"
            " h = logging.StreamHandler(); h.setFormatter(logging.Formatter('APP %(message)s'));"
            " lib = logging.getLogger('dmhub_async'); lib.addHandler(h); lib.propagate = False",
            0,
            1,
        ),
        (
            "h = logging.StreamHandler(); h.setFormatter(logging.Formatter('APP %(message)s'));"
            " logging.getLogger('dmhub_async').addHandler(h)",
            0,
            1,
        ),
    ],
    ids=[
        "basicConfig",
        "basicConfig at WARNING",
        "a stderr handler at WARNING",
        "to a file",
        "basicConfig, the library not propagating",
        "basicConfig filtering the library out",
        "a stderr handler of the application's on the library's logger, not propagating",
        "a stderr handler of the application's on the library's logger",
    ],
)
def test_dmhub_log_beside_the_applications_logging_shows_each_line_once(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, root: str, ours: int, apps: int
) -> None:
    # DMHUB_LOG=debug beside the application's own logging.basicConfig printed each of the
    # library's lines twice on stderr: the switch's handler's, and the root's (the records
    # propagate, as any library's). A root handler on stderr shows it now, in the
    # application's format; one that shows nothing at that level, or writes to a file, leaves
    # it to the switch. So does a root handler with a filter (it may drop the library's lines),
    # and every one when the library's logger does not propagate: both showed no line at all.
    # A stderr handler the application put on the library's own logger (its propagation
    # turned off, the usual way to give a library its own format) shows it too: each line was
    # shown twice, its own and the switch's.
    result = _count_with_dmhub_log(env, "debug", first=f"import logging; {root}", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "GET /v1/customers/count" in line]
    assert sum("DEBUG dmhub_async: GET" in line for line in lines) == ours, result.stderr
    assert sum(line.startswith("APP GET") for line in lines) == apps, result.stderr
    assert len(lines) == 1, result.stderr
