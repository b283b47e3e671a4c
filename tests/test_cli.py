"""``dmhub-async`` end to end: the command in a subprocess, real files, a simulator on loopback.

Most tests serve an in-process simulator from a background thread (so a test can read and
change its data); one serves it with ``dmhub-async simulate`` in a subprocess. Every
subprocess call has a timeout, and every server is stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import errno
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from _cli_support import (
    APP_ID,
    CUSTOMERS,
    SECRET,
    TIMEOUT,
    ServedSimulator,
    assert_once_each,
    assert_one_line_error,
    base_env,
    cli_command,
    jsonl_ids,
    read_csv,
    run_cli,
    simulator_process,
)
from _helpers import a_worker
from _redis import PORT_TRIES, server_port

from dmhub_async import DMHubClient, MemoryTokenStore
from dmhub_async.cli import _report, main
from dmhub_async.testing import DMHubSimulator

# -- export -----------------------------------------------------------------------------------


def test_export_jsonl_is_complete_and_unique(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli("export", "--out", "all.jsonl", "--concurrency", "4", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    out = tmp_path / "all.jsonl"
    assert jsonl_ids(out) == served.ids()
    assert f"exported      {CUSTOMERS} customers" in result.stdout
    assert f"count         {CUSTOMERS} before, {CUSTOMERS} after" in result.stdout
    assert "MISMATCH" not in result.stdout
    text = out.read_text(encoding="utf-8")
    assert "中国" in text
    with out.open(encoding="utf-8") as fh:
        assert [json.loads(line) for line in fh] == served.rows()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl"]


def test_export_csv_is_complete_quoted_and_flattened(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    tricky = 'Zhang, "老张"\nsecond line'
    served.call(
        served.sim.insert_customer,
        {"name": tricky, "city": "上海", "attr": {"attr1": "a,b"}},
        customer_id=7,
    )

    result = run_cli("export", "--out", "all.csv", "--page-size", "80", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "all.csv")
    assert_once_each([int(r["id"]) for r in rows], served.ids())
    assert len(rows) == CUSTOMERS + 1
    assert {"attr.attr1", "attr.attr2"} <= set(rows[0])
    assert rows[0]["id"] == "7"
    assert rows[0]["name"] == tricky
    assert rows[0]["city"] == "上海"
    assert rows[0]["attr.attr1"] == "a,b"


def _export_to_a_terminal(env: dict[str, str], cwd: Path, *args: str) -> bytes:
    """What ``dmhub-async export --out - ARGS`` shows on a terminal (a raw pty: no newline
    translation), its stderr dropped."""
    import os
    import pty
    import tty

    shown, terminal = pty.openpty()
    tty.setraw(terminal)
    with subprocess.Popen(
        cli_command("export", "--out", "-", *args),
        env=env,
        cwd=cwd,
        stdout=terminal,
        stderr=subprocess.DEVNULL,
    ) as process:
        os.close(terminal)
        chunks = []
        with contextlib.suppress(OSError):  # EIO once the command has exited
            while chunk := os.read(shown, 65536):
                chunks.append(chunk)
        os.close(shown)
        assert process.wait(TIMEOUT) == 0
    return b"".join(chunks)


def test_export_to_a_terminal_shows_control_characters_a_pipe_gets_them_as_they_are(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # A CSV cell went to the terminal as raw bytes: a name could set the window title,
    # clear the screen or rewrite the line before it (JSONL escapes them). Shown, not obeyed,
    # on a terminal; exact in a pipe or a file.
    name = "Mallory\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\rX\tY\nZ"
    served.call(served.sim.insert_customer, {"name": name}, customer_id=7)
    args = ("--format", "csv", "--select", "name", "--no-progress")

    piped = subprocess.run(
        cli_command("export", "--out", "-", *args),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    on_terminal = _export_to_a_terminal(env, tmp_path, *args)

    assert piped.returncode == 0, piped.stderr
    first = piped.stdout.split(b"\r\n", 2)[1]
    assert first.decode() == '7,"' + name.replace('"', '""') + '"'
    assert on_terminal.startswith(b"id,name\r\n")
    shown = on_terminal.decode().split("\r\n", 2)[1]
    assert shown == '7,"Mallory\u241b]0;pwned\u2407\u241b[2J\ufffd31m\u2421\u240dX\tY\nZ"'
    assert len(on_terminal.split(b"\r\n")) == len(piped.stdout.split(b"\r\n"))


def test_export_filters_give_exactly_the_matching_set(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    everyone = served.rows()

    no_stage = run_cli(
        "export", "--out", "nostage.csv", "--stage", "", "--no-progress", env=env, cwd=tmp_path
    )
    narrow = run_cli(
        "export",
        "--out",
        "narrow.jsonl",
        "--source",
        "wechat",
        "--gender",
        "1",
        "--created-from",
        "2016-01-01T03:00:00",
        "--created-to",
        "2016-01-01T20:00:00",
        "--updated-to",
        "2016-03-01T00:00:00",
        "--select",
        "name,source, gender",
        env=env,
        cwd=tmp_path,
    )

    assert no_stage.returncode == 0, no_stage.stderr
    expected = [r["id"] for r in everyone if not r["stage"]]
    assert 0 < len(expected) < CUSTOMERS
    assert [int(r["id"]) for r in read_csv(tmp_path / "nostage.csv")] == expected

    assert narrow.returncode == 0, narrow.stderr
    expected = [
        r["id"]
        for r in everyone
        if r["source"] == "wechat"
        and r["gender"] == 1
        and "2016-01-01T03:00:00Z" <= r["dateCreated"] <= "2016-01-01T20:00:00Z"
        and r["lastUpdated"] <= "2016-03-01T00:00:00Z"
    ]
    assert 0 < len(expected) < 200
    with (tmp_path / "narrow.jsonl").open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    assert [r["id"] for r in rows] == expected
    assert {tuple(sorted(r)) for r in rows} == {("gender", "id", "name", "source")}


def test_export_during_deletes_reports_the_mismatch_and_exits_3(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    before = set(served.ids())
    served.call(served.sim.mutate_every, 3, inserts=2, deletes=4, front=False)

    result = run_cli("export", "--out", "moving.jsonl", "--concurrency", "1", env=env, cwd=tmp_path)

    after = set(served.ids())
    ids = jsonl_ids(tmp_path / "moving.jsonl")
    assert len(ids) == len(set(ids))
    assert (before & after) - set(ids) == set()
    assert f"count         {len(before)} before, {len(after)} after" in result.stdout
    assert len(ids) not in (len(before), len(after))
    assert result.returncode == 3
    assert "MISMATCH" in result.stdout


def test_an_export_without_a_checkpoint_that_ended_in_mismatch_says_its_rerun_needs_force(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # Its report said "run it again", and the same command was refused: "--out moving.jsonl
    # exists: pass --force" (the file in place, finished, no checkpoint covering it).
    hook = served.call(served.sim.mutate_every, 3, inserts=2, deletes=4, front=False)
    args = ["export", "--out", "moving.jsonl", "--concurrency", "1"]

    first = run_cli(*args, env=env, cwd=tmp_path)

    assert first.returncode == 3, first.stderr
    assert "MISMATCH" in first.stdout
    assert "again         run it again with --force (it replaces the file)" in first.stdout
    served.call(served.sim.state.hooks.remove, hook)  # the customers stop changing
    assert run_cli(*args, env=env, cwd=tmp_path).returncode == 2  # as the report says
    again = run_cli(*args, "--force", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(jsonl_ids(tmp_path / "moving.jsonl")) == sorted(served.ids())
    assert "again " not in again.stdout


def test_a_rerun_of_an_export_that_ended_in_mismatch_checks_again_not_refused_as_finished(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # An export with a checkpoint that ended in MISMATCH removed its checkpoint as a complete
    # one does: run again, as its report says to, it was refused as "a finished export", just
    # as a complete one is, and the user could take the file for a complete export. The
    # checkpoint is kept: the rerun takes it up, checks the file against the service again,
    # and says what it found.
    hook = served.call(served.sim.mutate_every, 3, inserts=2, deletes=4, front=False)
    args = ["export", "--out", "moving.jsonl", "--checkpoint", "moving.ckpt", "--concurrency", "1"]

    first = run_cli(*args, env=env, cwd=tmp_path)

    assert first.returncode == 3, first.stderr
    assert "MISMATCH" in first.stdout
    assert (tmp_path / "moving.ckpt").exists()
    served.call(served.sim.state.hooks.remove, hook)  # the customers stop changing

    again = run_cli(*args, env=env, cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert "resumed       from a checkpoint" in again.stdout
    assert "verified      every customer the service holds is in the file" in again.stdout
    assert "MISMATCH" not in again.stdout
    ids = jsonl_ids(tmp_path / "moving.jsonl")
    assert set(served.ids()) - set(ids) == set()  # those deleted after they were written stay
    assert len(ids) == len(set(ids))
    assert not (tmp_path / "moving.ckpt").exists()  # complete now: a rerun starts over


@pytest.mark.parametrize("shards", [[], ["--shards", "2"]], ids=["file", "shards"])
def test_quiet_says_an_export_is_incomplete(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, shards: list[str]
) -> None:
    # -q prints errors only; an incomplete export exits 3 and says so in one line on stderr.
    # A sharded one said nothing at all: exit 3 and an empty stderr.
    served.call(served.sim.mutate_every, 3, inserts=2, deletes=4, front=False)

    result = run_cli(
        "export",
        "--out",
        "moving.jsonl",
        "--concurrency",
        "1",
        "-q",
        *shards,
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("dmhub-async: incomplete: "), result.stderr
    assert result.stderr.count("\n") == 1
    if not shards:  # the file is in place: the same command needs --force
        assert result.stderr.rstrip().endswith("run it again with --force (it replaces the file)")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_sigkill_mid_export_then_resume_gives_every_customer_once(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, fmt: str
) -> None:
    out, ckpt = tmp_path / f"big.{fmt}", tmp_path / "big.ckpt"
    args = ["export", "--out", out.name, "--checkpoint", ckpt.name, "--page-size", "50"]
    # Its sixth page held until it is killed: 20 ms of latency a page kept it running 0.7 s
    # past the fifth, and a test's thread run late under load found it ended (exit 0).
    held = served.hold(5, "GET /v1/customers")
    proc = subprocess.Popen(
        cli_command(*args, "--concurrency", "1"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        held.wait(proc)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists() and json.loads(ckpt.read_text(encoding="utf-8"))["exported"] >= 200:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the export ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        held.release()
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    state = json.loads(ckpt.read_text(encoding="utf-8"))
    assert 200 <= state["exported"] < CUSTOMERS
    assert out.stat().st_size >= state["bytes"]
    half_done = out.read_bytes()

    # The checkpoint belongs to this export only: another one is refused and nothing changes.
    other = run_cli(*args, "--stage", "lead", env=env, cwd=tmp_path)
    assert_one_line_error(other, 1, "another export")
    assert out.read_bytes() == half_done

    resumed = run_cli(*args, "--concurrency", "4", env=env, cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    if fmt == "jsonl":
        ids = jsonl_ids(out)
    else:
        ids = [int(r["id"]) for r in read_csv(out)]
        assert out.read_text(encoding="utf-8").count("id,displayName,") == 1
    assert ids == served.ids()
    assert not ckpt.exists()


@pytest.mark.parametrize(
    ("changed", "said"),
    [
        (["--out", "other.jsonl"], "(--out: "),
        (["--out", "some.csv"], "(--out: "),
        (["--format", "csv"], "(--format: 'jsonl' in the checkpoint, 'csv' now)"),
    ],
)
def test_a_checkpoint_of_another_export_names_the_flags_and_says_how_to_resume(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, changed: list[str], said: str
) -> None:
    # "belongs to another export (dest: '/.../some.jsonl' in the checkpoint, '/.../other.jsonl'
    # now): delete it to start over": the library's names (dest, format), never typed, and
    # the one way out given threw away the progress of a user who had mistyped --out.
    command = ["export", "--checkpoint", "some.ckpt", "--page-size", "20"]
    served.sim.faults.paths = ("GET /v1/customers",)
    served.sim.faults.script(["ok"] * 3 + ["reset"])
    failed = run_cli(
        *command, "--out", "some.jsonl", "--max-retries", "0", "-q", env=env, cwd=tmp_path
    )
    assert failed.returncode == 1, failed.stderr
    assert (tmp_path / "some.ckpt").exists()
    if "--format" in changed:
        changed = ["--out", "some.jsonl", *changed]

    refused = run_cli(*command, *changed, env=env, cwd=tmp_path)

    assert_one_line_error(
        refused, 1, "belongs to another export", said, "run it with the flags it was started with"
    )
    for name in ("(dest:", "(format:", "; format:"):
        assert name not in refused.stderr
    assert (tmp_path / "some.ckpt").exists()


def test_simulate_command_serves_an_export(tmp_path: Path) -> None:
    with simulator_process("--customers", "300", "--seed", "9", cwd=tmp_path) as settings:
        result = subprocess.run(
            cli_command("export", "--out", "sim.jsonl"),
            env={**base_env(tmp_path / "cache"), **settings},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert jsonl_ids(tmp_path / "sim.jsonl") == DMHubSimulator(300, seed=9).customer_ids()


@contextlib.contextmanager
def simulating(*args: str, cwd: Path) -> Iterator[tuple[queue.Queue[str | None], int]]:
    """``dmhub-async simulate --port PORT ARGS``: its stdout lines (None at the end), its port.

    The port is one of this xdist worker's own, outside the ephemeral range (``server_port``):
    one bound and closed (``bind(0)``) was free for any other worker's server or connection to
    take in the second the command took to start, and the test then failed on "the simulator
    ended", or went on with the other's server. One found taken all the same is left for
    another.
    """
    with contextlib.ExitStack() as stack:
        for _ in range(PORT_TRIES):
            port = server_port()
            # A file: a pipe that no one reads may fill.
            errors = stack.enter_context(tempfile.TemporaryFile("w+"))
            server = subprocess.Popen(
                cli_command("simulate", "--port", str(port), *args),
                env=base_env(cwd / "cache"),
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
            if _listening(server, port):
                break
            server.communicate()  # ended: its stdout read to the end, and closed
            errors.seek(0)
            said = errors.read()
            assert f"--port {port} is in use" in said, f"the simulator ended: {said}"
        else:
            raise AssertionError(f"every port tried was another's ({PORT_TRIES} of them)")
        lines: queue.Queue[str | None] = queue.Queue()

        def read(stdout: IO[str]) -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        assert server.stdout is not None
        reader = threading.Thread(target=read, args=(server.stdout,), daemon=True)
        reader.start()
        try:
            yield lines, port
        finally:
            server.terminate()
            server.wait(timeout=10)
            reader.join(10)
            server.stdout.close()


def _listening(server: subprocess.Popen[str], port: int) -> bool:
    """Whether ``server`` listens on ``port`` (False: it ended first, its port taken)."""
    deadline = time.monotonic() + TIMEOUT
    while server.poll() is None:  # until it listens
        assert time.monotonic() < deadline, "the simulator never listened"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return True
    return False


def rest(lines: queue.Queue[str | None]) -> list[str]:
    """What the stopped simulator printed that was not read yet."""
    printed = []
    while (line := lines.get(timeout=10)) is not None:
        printed.append(line)
    return printed


@pytest.mark.parametrize("quiet", [[], ["-q"]])
def test_simulate_report_json_is_one_object_to_connect_with(
    quiet: list[str], tmp_path: Path
) -> None:
    # It was ignored: the text banner came out, -q or not.
    with simulating("--customers", "30", "--report", "json", *quiet, cwd=tmp_path) as (lines, port):
        line = lines.get(timeout=TIMEOUT)
        assert line is not None
        ready = json.loads(line)
        assert ready["base_url"] == f"http://127.0.0.1:{port}"
        assert (ready["customers"], ready["seed"]) == (30, 0)

        async def count() -> int:
            async with DMHubClient(
                ready["app_id"],
                ready["secret"],
                base_url=ready["base_url"],
                token_store=MemoryTokenStore(),
            ) as dm:
                return await dm.customers.count()

        assert asyncio.run(count()) == 30
    assert rest(lines) == []  # no banner, no "Press Ctrl+C"


def test_simulate_on_a_port_in_use_says_to_give_another(tmp_path: Path) -> None:
    # "--port 8080: error while attempting to bind on address ('127.0.0.1', 8080): address
    # already in use": asyncio's words, and no word of what to do.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = subprocess.run(
            cli_command("simulate", "--port", str(port), "--customers", "10"),
            env=base_env(tmp_path / "cache"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    assert_one_line_error(result, 1, f"--port {port} is in use", "--port 0")
    assert "attempting" not in result.stderr


def test_a_simulator_process_whose_port_was_taken_is_started_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tests' simulator processes: a port that another worker's server or connection took
    # (bound: a connection's own port, a server yet to listen) before theirs bound it ended
    # them, and the test failed on "the simulator ended". Another port is tried.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        ports = iter([busy, server_port()])
        monkeypatch.setattr(sys.modules[__name__], "server_port", lambda: next(ports))
        with simulating("--customers", "3", "--report", "json", cwd=tmp_path) as (lines, port):
            line = lines.get(timeout=TIMEOUT)
    assert port != busy
    assert line is not None
    assert json.loads(line)["base_url"] == f"http://127.0.0.1:{port}"


def test_simulate_quiet_prints_nothing(tmp_path: Path) -> None:
    # It printed its banner.
    with simulating("--customers", "30", "-q", cwd=tmp_path) as (lines, _):
        pass
    assert rest(lines) == []


# -- bad input --------------------------------------------------------------------------------


def closed_port() -> int:
    """A port nothing listens on, nor will while the test runs: this worker's own
    (``server_port``). One bound and closed (``bind(0)``) was free for another worker's
    simulator to take in the second a command took to start, and the command meant to find
    no answer there exported from it, with the credentials every simulator serves."""
    return server_port()


BAD_INPUTS: list[tuple[str, list[str], dict[str, str | None], int, tuple[str, ...]]] = [
    ("no credentials", [], {"DMHUB_APP_ID": None, "DMHUB_SECRET": None}, 1, ("credentials",)),
    ("wrong secret", [], {"DMHUB_SECRET": "wrong-" + SECRET}, 1, ("DMHUB_SECRET",)),
    ("unreachable", ["--max-retries", "0"], {"DMHUB_BASE_URL": "closed"}, 1, ("no answer",)),
    ("bad gender", ["--gender", "7"], {}, 2, ("--gender",)),
    ("bad date", ["--created-from", "notadate"], {}, 2, ("--created-from",)),
    ("bad field", ["--select", "name,nosuchfield"], {}, 2, ("--select", "nosuchfield")),
    # "unknown customer field 'mobil'", and no word of the field meant.
    ("misspelt field", ["--select", "name,mobil"], {}, 2, ("'mobil'", "did you mean 'mobile'?")),
    (
        "misspelt wire field",
        ["--select", "datecreated"],
        {},
        2,
        ("'datecreated'", "did you mean 'dateCreated'?"),
    ),
    # Each flag was checked alone: the range was refused later, exit 1, in library names.
    (
        "times the wrong way round",
        ["--created-from", "2016-01-02", "--created-to", "2016-01-01"],
        {},
        2,
        ("--created-to is before --created-from",),
    ),
    (
        "updated the wrong way round",
        ["--updated-from", "2020-01-02T00:00:00+08:00", "--updated-to", "2020-01-01T00:00Z"],
        {},
        2,
        ("--updated-to is before --updated-from",),
    ),
    # `--select "$FIELDS"` with FIELDS unset: a file of ids alone, exit 0.
    ("no field selected", ["--select", ""], {}, 2, ("--select", "--select id")),
    ("only commas selected", ["--select", " , "], {}, 2, ("--select",)),
    ("bad page size", ["--page-size", "0"], {}, 2, ("--page-size",)),
    # Written as plain JSONL under a name that gunzip refused.
    ("a compressed name", ["--out", "x.csv.gz"], {}, 2, ("x.csv.gz", "compressed")),
    ("a tarball name", ["--out", "x.jsonl.tgz"], {}, 2, ("x.jsonl.tgz", "compressed")),
    ("a zstd name", ["--out", "x.jsonl.zstd"], {}, 2, ("x.jsonl.zstd", "compressed")),
    ("a tar name", ["--out", "x.jsonl.tar"], {}, 2, ("x.jsonl.tar", "tar archive")),
    ("a name ending in a space", ["--out", "x.csv "], {}, 2, ("'x.csv '", "ends in a space")),
    ("bad url", [], {"DMHUB_BASE_URL": "ftp://example"}, 1, ("DMHUB_BASE_URL", "ftp://")),
    # The field given, quoted back as the flag: "unknown customer field '--select'".
    ("a field named as a flag", ["--select", "name,select"], {}, 2, ("'select'",)),
    # Under the URL's limit as a count sends them, past it as the export's walks do (its
    # sort, its final check's select=id; a shard's window): refused by the walk as
    # "list_rows(): the filters take ...", exit 1, after every customer was walked.
    # What the walks add is said as sent ("select=id"), not as a flag the user never gave
    # ("--select=id").
    (
        "filters past the walk's URL",
        ["--stage", "x" * 6115],
        {},
        2,
        ("filters take", "6144", "sort by id and select=id)"),
    ),
    (
        "filters past a shard's URL",
        ["--out", "parts", "--shards", "2", "--stage", "x" * 6100],
        {},
        2,
        ("filters take", "6144", "sort by id and select=id)"),
    ),
]


@pytest.mark.parametrize(
    ("args", "env_changes", "code", "words"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_one_line_on_stderr(
    served: ServedSimulator,
    env: dict[str, str],
    tmp_path: Path,
    args: list[str],
    env_changes: dict[str, str | None],
    code: int,
    words: tuple[str, ...],
) -> None:
    for key, value in env_changes.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = f"http://127.0.0.1:{closed_port()}" if value == "closed" else value

    result = run_cli("export", "--out", "x.jsonl", *args, env=env, cwd=tmp_path)

    assert_one_line_error(result, code, *words)
    # Refused at once: nothing sent (a wrong secret, its one token request), nothing retried.
    # This was the command's wall time under 10 s, which a loaded machine's interpreter
    # start-up alone passed (6 of 22 cases in one run of this file beside other tests).
    wrong_secret = env_changes.get("DMHUB_SECRET") is not None
    refused = {"GET /security/accesstoken": 1} if wrong_secret else {}
    assert {route: n for route, n in served.sim.counters.routes.items() if n} == refused
    assert not (tmp_path / "x.jsonl").exists()
    token = served.sim.access_token
    assert token is None or token not in result.stderr


@pytest.mark.parametrize("shards", [False, True], ids=["export", "sharded export"])
def test_an_id_list_export_whose_filters_leave_its_ids_room_is_exported(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, shards: bool
) -> None:
    # The walks of an id list carry its ids, and the longest of them must fit: a stage of
    # 6,088 bytes leaves 15 bytes of URL, room for the simulator's 10-digit ids (as
    # export_customers and export_sharded take it), not for one of 19 digits. The command
    # line kept room for 19 before reading --id-list: refused, exit 2, what the library
    # exports. Filters leaving the ids no room are still refused before anything is sent.
    stage = "x" * 6088
    wanted = served.call(served.sim.insert_customer, {"name": "staged", "stage": stage})["id"]
    (tmp_path / "ids.txt").write_text(f"{wanted}\n", encoding="utf-8")
    out = ["--out", "parts", "--shards", "2"] if shards else ["--out", "x.jsonl"]
    flags = [*out, "--id-list", "ids.txt", "--no-progress"]

    result = run_cli("export", *flags, "--stage", stage, env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    if shards:
        merged = run_cli("merge", "parts", "--out", "x.jsonl", env=env, cwd=tmp_path)
        assert merged.returncode == 0, merged.stderr
    assert jsonl_ids(tmp_path / "x.jsonl") == [wanted]

    before = sum(served.sim.counters.routes.values())
    refused = run_cli("export", *flags, "--force", "--stage", "x" * 6094, env=env, cwd=tmp_path)
    assert_one_line_error(refused, 2, "filters take too much of the URL")
    assert sum(served.sim.counters.routes.values()) == before


@pytest.mark.parametrize(
    ("unset", "said"),
    [
        (("DMHUB_SECRET",), "DMHUB_SECRET is not set"),
        (("DMHUB_APP_ID",), "DMHUB_APP_ID is not set"),
        (("DMHUB_APP_ID", "DMHUB_SECRET"), "DMHUB_APP_ID and DMHUB_SECRET are not set"),
    ],
)
@pytest.mark.parametrize("command", ["export", "lookup"])
def test_missing_credentials_are_named_as_the_command_line_gives_them(
    served: ServedSimulator,
    env: dict[str, str],
    tmp_path: Path,
    unset: tuple[str, ...],
    said: str,
    command: str,
) -> None:
    # "no credentials: pass app_id and secret (or access_token), or set DMHUB_APP_ID and
    # DMHUB_SECRET", for a DMHUB_SECRET alone left unset: the words of a Python call, which a
    # command line user cannot pass, and "no credentials" where one of the two was there.
    for name in unset:
        env[name] = ""  # `export DMHUB_SECRET=` is unset too
    (tmp_path / "ids.csv").write_text("wechat,o1\n", encoding="utf-8")
    args = ["--in", "ids.csv", "--out", "x.csv"] if command == "lookup" else ["--out", "x.jsonl"]

    result = run_cli(command, *args, env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, said, "set DMHUB_APP_ID and DMHUB_SECRET")
    assert "app_id" not in result.stderr
    assert "access_token" not in result.stderr
    assert sum(served.sim.counters.routes.values()) == 0


@pytest.mark.parametrize(
    ("misnamed", "meant"),
    [
        ("DMHUB_APPID", "DMHUB_APP_ID"),
        ("dmhub_app_id", "DMHUB_APP_ID"),
        ("DMHUB_APP_SECRET", "DMHUB_SECRET"),
    ],
)
@pytest.mark.parametrize("command", ["export", "lookup"])
def test_a_credential_set_under_a_misspelt_name_is_named_with_the_one_meant(
    served: ServedSimulator,
    env: dict[str, str],
    tmp_path: Path,
    misnamed: str,
    meant: str,
    command: str,
) -> None:
    # `export DMHUB_APPID=...` (the service's own word is appid): "DMHUB_APP_ID is not set:
    # set DMHUB_APP_ID and DMHUB_SECRET", where the user saw it set, a letter apart.
    env[misnamed] = env.pop(meant)
    (tmp_path / "ids.csv").write_text("wechat,o1\n", encoding="utf-8")
    args = ["--in", "ids.csv", "--out", "x.csv"] if command == "lookup" else ["--out", "x.jsonl"]

    result = run_cli(command, *args, env=env, cwd=tmp_path)

    assert_one_line_error(
        result, 1, f"{meant} is not set", f"{misnamed} is set: did you mean {meant}?"
    )
    assert env[misnamed] not in result.stderr
    assert sum(served.sim.counters.routes.values()) == 0


@pytest.mark.parametrize(
    ("name", "value", "said", "advice"),
    [
        ("DMHUB_SECRET", f"{SECRET} ", "DMHUB_SECRET ends with white space", "remove it"),
        ("DMHUB_APP_ID", f" {APP_ID}", "DMHUB_APP_ID starts with white space", "remove it"),
        ("DMHUB_SECRET", f'"{SECRET}"', "DMHUB_SECRET is in quotes", "remove them"),
        ("DMHUB_APP_ID", f"'{APP_ID}'", "DMHUB_APP_ID is in quotes", "remove them"),
    ],
    ids=["spaced-secret", "spaced-app_id", "quoted-secret", "quoted-app_id"],
)
@pytest.mark.parametrize("command", ["export", "lookup", "worker"])
def test_credentials_pasted_with_white_space_or_quotes_are_refused_before_anything_is_sent(
    served: ServedSimulator,
    env: dict[str, str],
    tmp_path: Path,
    name: str,
    value: str,
    said: str,
    advice: str,
    command: str,
) -> None:
    # A secret pasted with a space after it (an .env file, a CI variable), or read with its
    # quotes (`export $(cat .env)`, docker's --env-file), was sent as it was: refused by the
    # service, the line said "check DMHUB_APP_ID and DMHUB_SECRET; if they are right, another
    # process ... may have taken the token", and the space or the quotes were nowhere to see.
    env[name] = value
    (tmp_path / "ids.csv").write_text("wechat,o1\n", encoding="utf-8")
    args = {
        "export": ["--out", "x.jsonl"],
        "lookup": ["--in", "ids.csv", "--out", "x.csv"],
        # Its every job would fail so: refused before it reaches its Redis (none here).
        "worker": ["--redis", "redis://127.0.0.1:1/0", "--burst"],
    }[command]

    result = run_cli(command, *args, env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, said, advice)
    assert value.strip("'\" ") not in result.stderr
    assert sum(served.sim.counters.routes.values()) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.csv"]


def test_a_base_url_that_is_a_calls_url_is_refused_before_anything_is_sent(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # DMHUB_BASE_URL set to a call's URL from the contract: the token request went to
    # /v1/customers/security/accesstoken, and the line said "invalid access_token; another
    # process using the same app id may have taken the token ..., or check DMHUB_APP_ID and
    # DMHUB_SECRET", none of which was wrong.
    env["DMHUB_BASE_URL"] = served.sim.url + "/v1/customers"

    result = run_cli("export", "--out", "x.jsonl", env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, "DMHUB_BASE_URL", f"pass {served.sim.url!r}")
    assert "another process" not in result.stderr
    assert "DMHUB_SECRET" not in result.stderr
    assert sum(served.sim.counters.routes.values()) == 0
    assert list(tmp_path.iterdir()) == []


def test_a_service_that_stops_answering_mid_run_is_not_blamed_on_the_base_url(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # Every lost connection asked "is DMHUB_BASE_URL right?", an export that failed after
    # thousands of pages included: the service had answered at that URL all along.
    served.sim.faults.paths = ("GET /v1/customers",)
    served.sim.faults.script(["ok"] * 3 + ["reset"])  # three pages, then the connection drops

    result = run_cli(
        "export",
        "--out",
        "x.jsonl",
        "--concurrency",
        "1",
        "--max-retries",
        "0",
        env=env,
        cwd=tmp_path,
    )

    assert_one_line_error(result, 1, "stopped answering", env["DMHUB_BASE_URL"])
    assert "DMHUB_BASE_URL right" not in result.stderr


def test_a_proxy_that_does_not_answer_is_named_not_the_base_url(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # With HTTP_PROXY naming a proxy that was down, the one line asked "is DMHUB_BASE_URL
    # right?" of a base URL nothing had been sent to: the proxy never answered.
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        env.pop(name, None)
    env["HTTP_PROXY"] = f"http://corp-user:ProxyPassw0rd@127.0.0.1:{closed_port()}"
    # Off this machine: plain http to it goes past every proxy. Only the proxy is asked for it.
    env["DMHUB_BASE_URL"] = "http://dmhub.invalid:8080"

    result = run_cli(
        "export",
        "--out",
        "x.jsonl",
        "--max-retries",
        "0",
        "--allow-insecure-http",
        env=env,
        cwd=tmp_path,
    )

    assert_one_line_error(result, 1, "ClientProxyConnectionError", "HTTP_PROXY", "proxy")
    assert "DMHUB_BASE_URL right" not in result.stderr
    assert "ProxyPassw0rd" not in result.stderr
    assert served.sim.counters.routes["GET /security/accesstoken"] == 0


def test_unwritable_output_is_one_line_and_sends_nothing(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli("export", "--out", "/nonexistent/dir/x.jsonl", env=env, cwd=tmp_path)

    assert_one_line_error(result, 2, "/nonexistent/dir")
    assert served.sim.counters.routes["GET /v1/customers"] == 0


def test_lookup_input_that_does_not_exist(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("lookup", "--in", "nope.csv", "--out", "r.csv", env=env, cwd=tmp_path)
    assert_one_line_error(result, 1, "nope.csv")


# -- lookup and demo --------------------------------------------------------------------------


def test_lookup_resolves_identities_to_customer_ids(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    expected: dict[tuple[str, str], str] = {}
    for customer_id in served.ids()[:40]:
        for type_, value, _name in served.call(served.sim.identities, customer_id):
            expected[(type_, value)] = str(customer_id)
    assert {t for t, _ in expected} >= {"wechat", "myshop-account"}
    expected[("wechat", "o-nobody-has-this")] = ""
    expected[("email", "nobody@example.com")] = ""
    with (tmp_path / "ids.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["type", "value"])
        writer.writerows(expected)

    result = run_cli(
        "lookup",
        "--in",
        "ids.csv",
        "--out",
        "found.csv",
        "--concurrency",
        "8",
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "found.csv")
    assert {(r["type"], r["value"]): r["customer_id"] for r in rows} == expected
    assert [(r["type"], r["value"]) for r in rows] == list(expected)  # input order
    assert f"{len(expected) - 2} found, 2 not found" in result.stdout


def _lookup_failing_at_line_9(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, fault: str
) -> subprocess.CompletedProcess[str]:
    """`lookup` of 20 identities, one at a time, no retries: the 7th (line 9) meets ``fault``."""
    lines = ["type,value", "", *(f"wechat,o-row-{i}" for i in range(20))]
    (tmp_path / "ids.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    served.sim.faults.paths = ("GET /v1/customeridentities",)
    served.sim.faults.script(["ok"] * 6 + [fault])
    return run_cli(
        "lookup",
        "--in",
        "ids.csv",
        "--out",
        "found.csv",
        "--concurrency",
        "1",
        "--max-retries",
        "0",
        env=env,
        cwd=tmp_path,
    )


def test_a_failed_lookup_names_the_input_line_it_failed_on(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # The error was "GET /v1/customeridentities -> HTTP 500" alone: with thousands of rows, a
    # row the service keeps refusing could only be found by splitting the file.
    result = _lookup_failing_at_line_9(served, env, tmp_path, "500")

    assert_one_line_error(result, 1, "ids.csv:9:", "HTTP 500", "run it again")
    assert "o-row-6" not in result.stderr  # the line, not its identity (personal data)
    assert not (tmp_path / "found.csv").exists()


@contextlib.contextmanager
def _echoing_service() -> Iterator[str]:
    """A service on 127.0.0.1, on a thread of its own, whose lookups fail quoting the
    identity they were asked for, as a service's words may (its base URL)."""
    from aiohttp import web

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"error_code": 0, "access_token": "e" * 32, "expires_in": 7200})

    async def lookup(request: web.Request) -> web.Response:
        value = request.query.get("identityValue")
        body = {"error_code": 50000, "error_description": f"lookup of {value} failed"}
        return web.json_response(body, status=500)

    app = web.Application()
    app.router.add_get("/security/accesstoken", token)
    app.router.add_get("/v1/customeridentities", lookup)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.mark.parametrize("identity", ["13812345678", "5000"])
def test_a_failed_lookup_never_shows_the_identity_the_service_quoted(
    env: dict[str, str], tmp_path: Path, identity: str
) -> None:
    # "ids.csv:2: its lookup failed: ... lookup of 13812345678 failed": the line, as the README
    # says, and the identity too (personal data, in a CI log) where the service quoted it. Masked
    # in the service's words alone: an identity of 4 digits (a member number) masked in the
    # whole line took the error code's digits too ("error_code ***0"), the client's words.
    (tmp_path / "ids.csv").write_text(f"type,value\nmobile,{identity}\n", encoding="utf-8")
    with _echoing_service() as base_url:
        result = run_cli(
            "lookup",
            "--in",
            "ids.csv",
            "--out",
            "found.csv",
            "--max-retries",
            "0",
            env={**env, "DMHUB_BASE_URL": base_url},
            cwd=tmp_path,
        )

    assert_one_line_error(result, 1, "ids.csv:2: its lookup failed:", "lookup of *** failed")
    assert "HTTP 500, error_code 50000: lookup of *** failed" in result.stderr
    assert identity not in result.stderr.replace("50000", "")
    assert not (tmp_path / "found.csv").exists()


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("429", ("HTTP 429", "rate limit", "lower --concurrency")),
        ("503", ("HTTP 503", "the service's", "run it again")),
        ("502", ("HTTP 502", "the service's", "run it again")),
    ],
)
def test_a_lookup_the_service_rate_limits_is_not_blamed_on_its_input_line(
    served: ServedSimulator,
    env: dict[str, str],
    tmp_path: Path,
    fault: str,
    words: tuple[str, ...],
) -> None:
    # A 429 that outlasted the retries was said as the line's ("ids.csv:9: its lookup failed:
    # ... HTTP 429 ...; if that line fails again, check or remove it"): the app's rate limit,
    # which any row would have met, had a job check and drop a good row; so did a service
    # unavailable (503) or a gateway's failure (502).
    result = _lookup_failing_at_line_9(served, env, tmp_path, fault)

    assert_one_line_error(result, 1, *words)
    assert "ids.csv:9" not in result.stderr
    assert "remove it" not in result.stderr
    assert not (tmp_path / "found.csv").exists()


def test_a_lookup_asked_to_wait_longer_than_a_retry_waits_says_so(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # A 429 asking for 120 s, more than the 60 s a retry waits, is raised at once, with no
    # retry: "the rate limit outlasted the retries: run it again with ... more --max-retries"
    # sent its user to rerun with more retries, which met it again at once.
    (tmp_path / "ids.csv").write_text("wechat,o-1\nwechat,o-2\n", encoding="utf-8")
    served.sim.faults.paths = ("GET /v1/customeridentities",)
    served.sim.faults.retry_after = 120
    served.sim.faults.script(["429"])
    lookups = served.sim.counters.requests
    before = lookups["/v1/customeridentities"]
    result = run_cli(
        "lookup",
        "--in",
        "ids.csv",
        "--out",
        "found.csv",
        "--concurrency",
        "1",
        "--max-retries",
        "4",
        env=env,
        cwd=tmp_path,
    )

    assert_one_line_error(result, 1, "HTTP 429", "Retry-After 120s", "longer than the 60 s")
    assert "--max-retries" not in result.stderr
    assert "ids.csv:1" not in result.stderr
    assert lookups["/v1/customeridentities"] - before == 1  # not retried, as it says
    assert not (tmp_path / "found.csv").exists()


def test_demo_exports_a_seeded_simulator(tmp_path: Path) -> None:
    env = base_env(tmp_path / "cache")
    result = subprocess.run(
        cli_command("demo", "--customers", "500"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    ids = jsonl_ids(tmp_path / "dmhub-demo.jsonl")
    assert len(ids) == len(set(ids)) == 500
    assert "exported      500 customers" in result.stdout


def with_stdout(
    command: list[str], env: dict[str, str], cwd: Path, stdout: Any
) -> subprocess.CompletedProcess[str]:
    """``command`` run with ``stdout`` (a file, a descriptor) as its standard output."""
    return subprocess.run(
        command,
        env=env,
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def into_full_stdout(
    command: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``command`` run with its standard output a full disk (``> /dev/full``)."""
    with open("/dev/full", "wb") as full:
        return with_stdout(command, env, cwd, full)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("report", ["text", "json"])
@pytest.mark.parametrize("command", ["export", "lookup"])
def test_a_report_to_a_full_standard_output_is_named_in_the_error(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, command: str, report: str
) -> None:
    # `export --out x.jsonl --report json > /dev/full` exited 1 saying only "error: No space
    # left on device": not where (the file written was fine), nor that only the report was lost.
    (tmp_path / "ids.csv").write_text("mobile,13800000000\n", encoding="utf-8")
    args = (
        ["--in", "ids.csv", "--out", "found.csv"] if command == "lookup" else ["--out", "c.jsonl"]
    )
    result = into_full_stdout(cli_command(command, *args, "--report", report), env, tmp_path)

    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        "dmhub-async: error: standard output: No space left on device (the report was not"
        " written)\n"
    )
    assert (tmp_path / args[-1]).stat().st_size > 0  # the output itself is written


@pytest.mark.parametrize("report", ["text", "json"])
@pytest.mark.parametrize("command", ["export", "lookup"])
def test_a_report_whose_standard_output_reader_went_away_is_no_exit_141(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, command: str, report: str
) -> None:
    # `export --out c.jsonl --report json | consumer` whose consumer had left: the file was
    # written whole, and the command ended silently with 141, which says the reader of --out -
    # went away (the data cut short), where there was no --out -: as a full standard output,
    # a report that cannot be written is an error of its own, naming it (exit 1).
    (tmp_path / "ids.csv").write_text("mobile,13800000000\n", encoding="utf-8")
    args = (
        ["--in", "ids.csv", "--out", "found.csv"] if command == "lookup" else ["--out", "c.jsonl"]
    )
    read, write = os.pipe()
    os.close(read)  # the reader of standard output, gone
    try:
        result = with_stdout(cli_command(command, *args, "--report", report), env, tmp_path, write)
    finally:
        os.close(write)

    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        "dmhub-async: error: standard output: Broken pipe (the report was not written)\n"
    )
    if command == "export":
        assert sorted(jsonl_ids(tmp_path / "c.jsonl")) == sorted(served.ids())
    else:
        assert (tmp_path / "found.csv").read_text(encoding="utf-8").count("\n") == 2


@pytest.mark.parametrize("report", ["text", "json"])
def test_a_report_read_by_head_1_is_one_write_not_an_error(report: str) -> None:
    # `export --out c.jsonl | head -1` with PYTHONUNBUFFERED=1 (as many container images set
    # it): the report went out in two writes, its text and then its line end, and head, gone
    # with its one line, left the second to meet a broken pipe: "dmhub-async: error: standard
    # output: Broken pipe (the report was not written)", exit 1, of a report whose line was
    # read and an export complete (2 runs in 3). The report is one write: the reader takes
    # what it wants of it. A stream that breaks after its first write stands for that reader.
    class _FirstWriteOnly(io.RawIOBase):
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            if self.written:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")
            self.written.append(bytes(data))
            return len(data)

    raw = _FirstWriteOnly()
    # PYTHONUNBUFFERED's standard output: unbuffered bytes, text written through.
    out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # type: ignore[arg-type]
    data = {"path": "c.jsonl", "exported": 1500}
    text = "exported      1500 customers to c.jsonl (jsonl)\ncomplete      yes"

    _report.print_report(data, text, style=report, quiet=False, out=out)

    [written] = raw.written
    expected = json.dumps(data) if report == "json" else text
    assert written.decode("utf-8") == expected + "\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["export", "lookup"])
def test_a_full_standard_output_is_named_in_the_error(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, command: str
) -> None:
    # `--out - > /dev/full` (a disk that filled under a redirect) said "error: No space left on
    # device", naming nothing: a file --out names itself (`found.csv: No space ...`).
    (tmp_path / "ids.csv").write_text("mobile,13800000000\n", encoding="utf-8")
    args = ["--in", "ids.csv"] if command == "lookup" else []
    result = into_full_stdout(cli_command(command, *args, "--out", "-", "-q"), env, tmp_path)

    assert result.returncode == 1, result.stderr
    assert result.stderr == "dmhub-async: error: standard output: No space left on device\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--port", "0", "--customers", "10"],
        ["simulate", "--port", "0", "--customers", "10", "--report", "json"],
        ["demo", "--customers", "10", "--latency-ms", "0", "--out", "d.jsonl"],
    ],
    ids=["simulate", "simulate-json", "demo"],
)
def test_settings_or_banner_to_a_full_standard_output_name_it(
    tmp_path: Path, args: list[str]
) -> None:
    # `simulate > /dev/full` said "error: --port 0: No space left on device", blaming the port
    # it had bound; `demo > /dev/full` a bare "error: No space left on device", of no file.
    result = into_full_stdout(cli_command(*args), base_env(tmp_path / "cache"), tmp_path)

    assert result.returncode == 1, result.stderr
    assert result.stderr == "dmhub-async: error: standard output: No space left on device\n"
    assert not (tmp_path / "d.jsonl").exists()


class _FullDisk(io.TextIOBase):
    """A standard error on a full disk (``2>> run.log``, its file system full): every write
    fails with ENOSPC, and is counted."""

    def __init__(self) -> None:
        self.tried = 0

    def write(self, text: str) -> int:
        self.tried += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def isatty(self) -> bool:
        return False


def test_progress_and_warnings_to_a_full_standard_error_leave_the_export_whole(
    in_process: dict[str, str],
    served: ServedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # `export --out c.jsonl 2>>run.log`, the log's disk full: the first progress line (5 s
    # in) failed the export, exit 1, its file removed and its pages fetched for nothing, and
    # the warning that the token is kept in memory (a cache directory it cannot write) failed
    # it before its first request. Neither is the export's work.
    monkeypatch.setattr(_report, "PROGRESS_EVERY", 0.0)
    monkeypatch.setattr(_report, "TICK_EVERY", 0.0)
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-directory"))
    stderr = _FullDisk()
    monkeypatch.setattr(sys, "stderr", stderr)

    code = main(["export", "--out", "c.jsonl", "--concurrency", "2"])

    assert code == 0
    assert sorted(jsonl_ids(tmp_path / "c.jsonl")) == sorted(served.ids())
    assert stderr.tried >= 2  # the warning and the progress lines were said, and failed


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_error_line_to_a_full_standard_error_keeps_its_exit_code(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # A refusal (exit 2: --out exists) whose line could not be written ended in that write's
    # OSError, exit 1, as any error: a script told "usage" from "error" by the code alone.
    (tmp_path / "c.jsonl").write_text("{}\n", encoding="utf-8")
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            cli_command("export", "--out", "c.jsonl"),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=full,
            timeout=TIMEOUT,
            check=False,
        )

    assert result.returncode == 2


@pytest.mark.parametrize("report", ["text", "json"])
def test_a_report_whose_standard_error_reader_went_away_is_no_exit_141(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, report: str
) -> None:
    # `export --out - 2>>(a logger that exited) | consumer`: the data went out whole, its
    # reader still there, and the report to standard error met a broken pipe. The command
    # ended silently with 141, which says the reader of --out - went away (the data cut
    # short), where a report that cannot be written is an error of its own (exit 1).
    read, write = os.pipe()
    os.close(read)  # the reader of standard error, gone
    try:
        result = subprocess.run(
            cli_command("export", "--out", "-", "--report", report),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=write,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(write)

    ids = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    assert sorted(ids) == sorted(served.ids())
    assert result.returncode == 1


@pytest.mark.parametrize("report", ["text", "json"])
def test_simulate_whose_reader_went_away_ends_silently(tmp_path: Path, report: str) -> None:
    # `dmhub-async simulate | head -0` said "error: --port 0: Broken pipe", exit 1: the reader
    # of its settings gone is a pipe's end (exit 141, as `--out - | head -1`), not the port's.
    read, write = os.pipe()
    os.close(read)  # no reader, from the start
    try:
        result = with_stdout(
            cli_command("simulate", "--port", "0", "--customers", "10", "--report", report),
            base_env(tmp_path / "cache"),
            tmp_path,
            write,
        )
    finally:
        os.close(write)

    assert (result.returncode, result.stderr) == (141, "")


def test_a_demo_started_without_standard_output_still_exports(tmp_path: Path) -> None:
    # With no standard output (`>&-`) there is no banner to write, and nothing to fail on.
    result = subprocess.run(
        cli_command("demo", "--customers", "10", "--latency-ms", "0", "--out", "d.jsonl"),
        env=base_env(tmp_path / "cache"),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        timeout=TIMEOUT,
        check=False,
        preexec_fn=lambda: os.close(1),
    )

    assert (result.returncode, result.stderr) == (0, "")
    assert len(jsonl_ids(tmp_path / "d.jsonl")) == 10


def test_export_verify_always_runs_the_final_check_the_library_offers(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # One delete and one insert between two page reads leave the count as it was, and with
    # nothing else to suggest a change the final check did not run: the export could miss a
    # customer and say complete (docs/reliability.md's "balanced churn"). The library's
    # verify="always" runs that check after every export; the command line had no way to ask.
    run = [
        run_cli(
            "export", "--out", f"{name}.jsonl", *flags, "--report", "json", env=env, cwd=tmp_path
        )
        for name, flags in (("plain", ()), ("checked", ("--verify", "always")))
    ]

    assert [r.returncode for r in run] == [0, 0], run[1].stderr
    plain, checked = (json.loads(r.stdout) for r in run)
    assert plain["verified"] is None
    assert checked["verified"] is True
    assert jsonl_ids(tmp_path / "checked.jsonl") == served.ids()


def test_a_quiet_sharded_export_left_incomplete_says_so_naming_its_directory_quoted(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # `export --shards N -q` that left a part incomplete ended with exit 3 and no word of what
    # to do; its line now says it, the directory quoted as its refusals quote it (a newline
    # in the name split the line). Each shard's pages fail, with no retry.
    served.sim.faults.paths = ("GET /v1/customers",)
    served.sim.faults.script(["reset"] * 100)  # the plan's counts are another path's

    result = run_cli(
        "export", "--out", "my\nparts", "--shards", "2", "--concurrency", "1",
        "--max-retries", "0", "-q", env=env, cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "dmhub-async: incomplete: 0 of 2 parts complete in 'my\\nparts'; rerun the same"
        " command to finish them"
    ), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("runner", ["in-process", "workers", "queue"])
def test_a_sharded_export_with_verify_always_checks_every_shard(
    served: ServedSimulator,
    env: dict[str, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    runner: str,
) -> None:
    # `--shards 2 --verify always` was refused (usage error): a sharded export took no verify,
    # and a closed window of a filtered export could lose a customer to balanced churn with
    # nothing to find it (docs/sharding.md, known limit). Now each shard runs its final check
    # (id-only pages of its window) wherever it runs: here, on worker processes, on a queue.
    closed_window_id_pages = 0

    def hook(request: Any) -> None:
        nonlocal closed_window_id_pages
        query = request.query
        if (
            request.path == "/v1/customers"
            and query.get("select") == "id"
            and "dateCreatedTo" in query
        ):
            closed_window_id_pages += 1

    served.sim.on_request(hook)
    how: tuple[str, ...] = ()
    if runner == "workers":
        how = ("--workers", "2")
    with contextlib.ExitStack() as stack:
        if runner == "queue":
            redis = request.getfixturevalue("redis")
            stack.enter_context(a_worker(redis.url, env))
            how = ("--queue", redis.url)
        seen = []
        for name, flags in (("plain", ()), ("checked", ("--verify", "always"))):
            result = run_cli(
                "export", "--out", name, "--shards", "2", *how, *flags, "-q", env=env, cwd=tmp_path
            )
            assert result.returncode == 0, result.stderr
            # Each page answered before the shard's end, and so before the command's.
            seen.append(closed_window_id_pages)
            closed_window_id_pages = 0

    assert seen[0] == 0  # nothing changed: auto runs no shard's check
    assert seen[1] > 0
    for name in ("plain", "checked"):
        parts = sorted((tmp_path / name).glob("part-*.jsonl"))
        assert sorted(i for part in parts for i in jsonl_ids(part)) == served.ids()
