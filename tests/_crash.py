"""A harness for exports killed with SIGKILL and rerun: the command in a subprocess, killed at a
named point (tests/_crash_site/sitecustomize.py), rerun until it exits 0, its output checked.

Used by tests/test_cli_crash.py (bounded sweeps) and tests/crash_sweep.py (a long random one).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from _cli_support import TIMEOUT, cli_command

#: The directory whose sitecustomize.py holds the crash points.
CRASH_SITE = Path(__file__).resolve().parent / "_crash_site"


@attrs.define
class Run:
    """One run of the command: its exit, output, the crash point it died at (if any), and the
    pids of its processes still alive a while after it ended (workers it left behind)."""

    returncode: int
    stdout: str
    stderr: str
    crashed_at: str | None
    left_behind: list[int] = attrs.Factory(list)

    @property
    def report(self) -> dict[str, Any]:
        """The ``--report json`` object the run printed last."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def crash_env(env: dict[str, str], at: str | None, log: Path, role: str = "any") -> dict[str, str]:
    """``env`` with the crash point ``at`` (``"page:3"``) armed, or none."""
    new = {k: v for k, v in env.items() if not k.startswith("DMHUB_TEST_CRASH")}
    new["PYTHONPATH"] = os.pathsep.join([str(CRASH_SITE), env.get("PYTHONPATH", "")])
    if at is not None:
        new |= {
            "DMHUB_TEST_CRASH_AT": at,
            "DMHUB_TEST_CRASH_LOG": str(log),
            "DMHUB_TEST_CRASH_ROLE": role,
        }
    return new


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def run_once(
    args: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    at: str | None = None,
    role: str = "any",
    *,
    linger: float = 0.0,
    preexec: Callable[[], None] | None = None,
) -> Run:
    """The command once, with the crash point ``at`` armed, in a process group of its own.

    ``linger``: seconds its other processes (workers) have to end once it has; those still
    alive then are in ``left_behind``. Whatever is left of the group is killed at the end.
    """
    log = cwd / f".crash-{os.getpid()}.log"
    log.unlink(missing_ok=True)
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8") as out,
        tempfile.TemporaryFile("w+", encoding="utf-8") as err,
    ):
        proc = subprocess.Popen(
            cli_command(*args),
            env=crash_env(env, at, log, role),
            cwd=cwd,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=preexec,
        )
        left: list[int] = []
        try:
            proc.wait(timeout=TIMEOUT)
            deadline = time.monotonic() + linger
            while (left := group_members(proc.pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    crashed = log.read_text(encoding="utf-8").strip() if log.exists() else None
    log.unlink(missing_ok=True)
    return Run(proc.returncode, stdout, stderr, crashed or None, left)


def run_until_done(
    args: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    kills: Sequence[str | None],
    *,
    role: str = "any",
    between: Callable[[int], None] | None = None,
    max_runs: int = 12,
    linger: float = 0.0,
) -> list[Run]:
    """Run ``args`` with each crash point of ``kills`` in turn, then unarmed until it exits 0.

    ``between(i)`` runs after run ``i`` (to change the service's data while it is down).
    Returns every run; the last exited 0 (or the assertion says why not).
    """
    runs: list[Run] = []
    plan = list(kills)
    while len(runs) < max_runs:
        at = plan.pop(0) if plan else None
        run = run_once(args, env, cwd, at, role, linger=linger)
        runs.append(run)
        assert "Traceback" not in run.stderr, run.stderr
        if run.returncode == 0 and not plan:
            return runs
        if between is not None:
            between(len(runs) - 1)
    raise AssertionError(f"no clean exit in {max_runs} runs: {summary(runs)}")


def summary(runs: Sequence[Run]) -> str:
    return "; ".join(
        f"rc={r.returncode} at={r.crashed_at} err={r.stderr.strip()[-200:]!r}" for r in runs
    )


# -- checking the output ----------------------------------------------------------------------


def records(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Every record of an export's file; a torn or unreadable one fails the assertion."""
    data = path.read_bytes()
    assert b"\x00" not in data, "NUL bytes in the output"
    if fmt == "jsonl":
        assert data == b"" or data.endswith(b"\n"), f"torn last record: {data[-80:]!r}"
        rows = []
        for number, line in enumerate(data.splitlines(), 1):
            try:
                row = json.loads(line)
            except ValueError:
                raise AssertionError(f"line {number} is no record: {line[:120]!r}") from None
            assert isinstance(row, dict), (number, line[:120])
            assert type(row.get("id")) is int, (number, line[:120])
            rows.append(row)
        return rows
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\r\n"), f"torn last record: {text[-80:]!r}"
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = next(reader)
    assert header[0].removeprefix("\ufeff") == "id", header
    rows = []
    for cells in reader:
        assert len(cells) == len(header), f"torn record: {cells[:3]}"
        rows.append(dict(zip(header, cells, strict=True)))
    assert text.count("\r\nid,") == 0, "a second header"
    return rows


def ids_of(rows: list[dict[str, Any]]) -> list[int]:
    return [int(r["id"]) for r in rows]


def check_export(path: Path, fmt: str, expected: Sequence[int], report: dict[str, Any]) -> None:
    """The file holds every expected customer exactly once, whole; the report says so truly."""
    rows = records(path, fmt)
    ids = ids_of(rows)
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    missing = sorted(set(expected) - set(ids))
    extra = sorted(set(ids) - set(expected))
    assert (repeated, missing[:20], extra[:20]) == ([], [], []), (
        f"{len(repeated)} repeated, {len(missing)} missing, {len(extra)} not at the service"
    )
    assert report["exported"] == len(ids), report
    assert report["complete"] is True, report
