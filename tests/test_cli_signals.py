"""SIGTERM and SIGINT, sent for real to ``python -m dmhub_async`` in the middle of its work.

Issue 14 item 6: SIGTERM is what systemd, Docker, Kubernetes and CI send. Either signal leaves a
consistent checkpoint to resume from, or no file at all, and exits 128 + the signal's number.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _cli_support import (
    TIMEOUT,
    Held,
    ServedSimulator,
    base_env,
    jsonl_ids,
    run_cli,
)

LIST = "GET /v1/customers"


def log_of(cwd: Path) -> Path:
    """Where the command's output goes: beside ``cwd``, whose listing the tests check."""
    return cwd.parent / f"{cwd.name}.log"


def interrupt(
    args: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    signum: int,
    started: Callable[[], bool] | Held,
    python: tuple[str, ...] = ("-m", "dmhub_async"),
    group: bool = False,
) -> tuple[int, str]:
    """Run ``python -m dmhub_async ARGS``, send ``signum`` once ``started()``; code and output.

    ``started`` a :class:`Held` (``served.hold(5, LIST)``): once the simulator holds a request
    of the command's, let go once the signal is sent: it lands mid-work however late this
    thread runs (a window of simulated latency alone was missed under load).
    ``group``: to its whole process group, as a terminal's Ctrl-C does (its children too).
    """
    with log_of(cwd).open("w+b") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *python, *args],
            env=env,
            cwd=cwd,
            stdout=stderr,
            stderr=subprocess.STDOUT,
            start_new_session=group,
        )
        try:
            if isinstance(started, Held):
                started.wait(proc)
            else:
                deadline = time.monotonic() + TIMEOUT
                while time.monotonic() < deadline and proc.poll() is None:
                    if started():
                        break
                    time.sleep(0.005)
            assert proc.poll() is None, "the command ended before it could be interrupted"
            if group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            if isinstance(started, Held):
                # The signal is pending: the command handles it before it can end, and its
                # workers (which end with the page they are on) can now end that page.
                started.release()
            try:
                proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                state = signal_state(proc.pid)
                proc.kill()
                proc.wait(timeout=10)
                stderr.seek(0)
                said = stderr.read().decode("utf-8", "replace")
                pytest.fail(f"running {TIMEOUT} s after the signal: {state}; it said {said!r}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if isinstance(started, Held):
                started.release()  # whatever happened
        stderr.seek(0)
        text = stderr.read().decode("utf-8")
    assert "Traceback" not in text
    return proc.returncode, text


def signal_state(pid: int) -> str:
    """What decides whether a process takes a signal: its state (a stopped one takes none)
    and its blocked, ignored, caught and pending signals, from ``/proc`` (Linux)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as err:
        return f"no /proc status ({err})"
    return "; ".join(
        line.replace("\t", " ")
        for line in status.splitlines()
        if line.startswith(("State", "Sig", "Shd"))
    )


def held_then_signalled(
    script: str,
    args: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    marker: str,
    signum: int | tuple[int, ...],
    waiting: str,
    check: Callable[[], bool] | None = None,
) -> tuple[int, str]:
    """Run ``script`` (its ``{args!r}`` filled in), which touches ``marker`` where it holds
    until the file ``go`` is there; send ``signum`` there (once ``check()`` holds; each of
    several, one after the other), then let it go on: its exit code and its output (stdout
    and stderr)."""
    with log_of(cwd).open("w+b") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script.format(args=args)],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while not (cwd / marker).exists() and proc.poll() is None:
                assert time.monotonic() < deadline, waiting
                time.sleep(0.005)
            assert check is None or check()
            for sent in signum if isinstance(signum, tuple) else (signum,):
                proc.send_signal(sent)
            (cwd / "go").touch()
            proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        out.seek(0)
        return proc.returncode, out.read().decode("utf-8")


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_a_signal_without_checkpoint_leaves_no_file(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, signum: int, code: int
) -> None:
    # --no-progress: its line every 5 s came above the one checked, once a run took that long.
    args = ["export", "--out", "all.jsonl", "--page-size", "50", "--concurrency", "1"]
    returncode, stderr = interrupt(
        [*args, "--no-progress"],
        env=env,
        cwd=tmp_path,
        signum=signum,
        started=served.hold(5, LIST),
    )

    assert returncode == code, stderr
    assert (
        stderr.strip()
        == f"dmhub-async: stopped by {signal.Signals(signum).name}: no output written"
    )
    assert list(tmp_path.iterdir()) == []  # no all.jsonl, no hidden .part


def test_sigterm_leaves_a_checkpoint_that_resumes_exactly(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    args = ["export", "--out", "all.jsonl", "--checkpoint", "all.ckpt", "--page-size", "50"]

    returncode, stderr = interrupt(
        [*args, "--concurrency", "1"],
        env=env,
        cwd=tmp_path,
        signum=signal.SIGTERM,
        started=served.hold(5, LIST),
    )

    assert returncode == 143, stderr
    assert "rerun the same command to resume from all.ckpt" in stderr
    state = json.loads((tmp_path / "all.ckpt").read_text(encoding="utf-8"))
    out = tmp_path / "all.jsonl"
    assert 0 < state["exported"] < len(served.ids())
    work = tmp_path / state.get("part", out.name)  # the file the checkpoint covers
    assert len(jsonl_ids(work)) == state["exported"]  # it ends where the checkpoint says
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["all.ckpt", work.name])

    resumed = run_cli(*args, env=env, cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr
    assert jsonl_ids(out) == served.ids()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl"]


def sigterm_mid_lookup(
    served: ServedSimulator, env: dict[str, str], cwd: Path, out: str
) -> tuple[int, str]:
    """A lookup of 300 identities to ``out``, sent SIGTERM after its tenth request."""
    with (cwd / "ids.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("wechat", f"o-{n}") for n in range(300)])
    return interrupt(
        ["lookup", "--in", "ids.csv", "--out", out, "--concurrency", "2"],
        env=env,
        cwd=cwd,
        signum=signal.SIGTERM,
        started=served.hold(9),  # its tenth request held
    )


def test_sigterm_mid_lookup_leaves_no_output(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    returncode, stderr = sigterm_mid_lookup(served, env, tmp_path, "found.csv")

    assert returncode == 143, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.csv"]


def test_sigterm_stops_the_simulator(tmp_path: Path) -> None:
    returncode, stderr = interrupt(
        ["simulate", "--port", "0", "--customers", "10"],
        env=base_env(tmp_path / "cache"),
        cwd=tmp_path,
        signum=signal.SIGTERM,
        started=lambda: "Ctrl+C" in log_of(tmp_path).read_text(encoding="utf-8"),
    )

    assert returncode == 143
    assert stderr.strip().endswith("dmhub-async: stopped by SIGTERM")


@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGINT, False)],
    ids=["Ctrl-C", "TERM", "INT"],
)
def test_a_signal_mid_export_on_worker_processes_is_one_line(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, signum: int, group: bool
) -> None:
    # The worker processes printed raw tracebacks: KeyboardInterrupt on a terminal's Ctrl-C
    # (it reaches the whole group), BrokenPipeError once the stopped coordinator had gone.
    args = ["export", "--out", "parts", "--shards", "4", "--workers", "2"]

    returncode, output = interrupt(
        [*args, "--concurrency", "1", "--page-size", "50", "--no-progress"],
        env=env,
        cwd=tmp_path,
        signum=signum,
        started=served.hold(5, LIST),
        group=group,
    )

    name = signal.Signals(signum).name
    assert returncode == 128 + signum, output
    assert (
        output == f"dmhub-async: stopped by {name}: rerun the same command to resume from parts\n"
    )
    resumed = run_cli(*args, "-q", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ids = [i for part in sorted((tmp_path / "parts").glob("part-*.jsonl")) for i in jsonl_ids(part)]
    assert sorted(ids) == sorted(served.ids())


#: ``dmhub-async ARGS`` whose simulator seeds in steps of 50 ms until a file ``go`` is there
#: (a minute at most: the test makes none), saying when it starts (a file ``seeding``) and when
#: it is done (``seeded``). A fixed 5 s of seeding was over before a signal sent late (a loaded
#: machine), and the test failed on ``seeded``.
SLOW_SEED = """
import sys, time
from pathlib import Path
from dmhub_async.testing import _store
seed = _store.CustomerStore.seed
def slow_seed(self, n):
    Path("seeding").touch()
    deadline = time.monotonic() + 60
    seed(self, n)
    while not Path("go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    Path("seeded").touch()
_store.CustomerStore.seed = slow_seed
from dmhub_async.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["simulate", "--port", "0", "--customers", "1000"], ""),
        (["demo", "--customers", "1000", "--out", "demo.jsonl"], ": no output written"),
    ],
    ids=["simulate", "demo"],
)
def test_a_signal_while_the_simulator_seeds_stops_at_once(
    tmp_path: Path, args: list[str], said: str, signum: int, code: int
) -> None:
    # Seeding is blocking work (7 s at 20 million customers, a minute at 100 million): the
    # event loop that handles the signals did not run until it had ended.
    returncode, output = interrupt(
        args,
        env=base_env(tmp_path / "cache"),
        cwd=tmp_path,
        signum=signum,
        started=lambda: (tmp_path / "seeding").exists(),
        python=("-c", SLOW_SEED),
    )

    assert returncode == code, output
    assert not (tmp_path / "seeded").exists()  # stopped mid-seeding, not once it was done
    name = signal.Signals(signum).name
    assert output.strip().splitlines()[-1] == f"dmhub-async: stopped by {name}{said}"
    assert not (tmp_path / "demo.jsonl").exists()


#: ``dmhub-async ARGS`` whose first import of ``{module}`` (the simulator, which ``simulate``
#: and ``demo`` load once their command runs, on the event loop) is held in steps of 10 ms
#: until a file ``go`` is there (5 s at most), saying when it starts (``importing``); its
#: seeding then says it ran (``seeded``).
HELD_AS_IT_LOADS_THE_SIMULATOR = """
import importlib.abc, sys, time
from pathlib import Path

class Hold(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            Path("importing").touch()
            deadline = time.monotonic() + 5
            while not Path("go").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return None

sys.meta_path.insert(0, Hold())
from dmhub_async.testing import _store
seed = _store.CustomerStore.seed
def seed_and_say(self, n):
    seed(self, n)
    Path("seeded").touch()
_store.CustomerStore.seed = seed_and_say
from dmhub_async.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
@pytest.mark.parametrize(
    ("args", "module", "said"),
    [
        (["simulate", "--port", "0", "--customers", "1000"], "dmhub_async.testing._serve", ""),
        (
            ["demo", "--customers", "1000", "--out", "demo.jsonl"],
            "dmhub_async.testing._simulator",
            ": no output written",
        ),
    ],
    ids=["simulate", "demo"],
)
def test_a_signal_while_the_command_loads_the_simulator_stops_it_before_it_seeds(
    tmp_path: Path, args: list[str], module: str, said: str, signum: int, code: int
) -> None:
    # Loaded on the event loop, whose handlers only note a signal for the loop: the loop ran
    # once the load and the whole seeding had ended (5 s for 5 million customers, under load),
    # not at once.
    returncode, output = interrupt(
        args,
        env=base_env(tmp_path / "cache"),
        cwd=tmp_path,
        signum=signum,
        started=lambda: (tmp_path / "importing").exists(),
        python=("-c", HELD_AS_IT_LOADS_THE_SIMULATOR.format(module=module)),
    )

    assert returncode == code, output
    assert not (tmp_path / "seeded").exists(), output  # stopped as it loaded, not once seeded
    name = signal.Signals(signum).name
    assert output.strip().splitlines()[-1] == f"dmhub-async: stopped by {name}{said}"
    assert not (tmp_path / "demo.jsonl").exists()


def test_a_signal_mid_lookup_to_standard_output_says_its_rows_are_incomplete(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # It said "no output written" after rows had gone to standard output.
    returncode, output = sigterm_mid_lookup(served, env, tmp_path, "-")

    assert returncode == 143, output
    assert output.strip().splitlines()[-1] == (
        "dmhub-async: stopped by SIGTERM: what went to standard output is incomplete"
    )
    assert "no output written" not in output


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_a_signal_mid_merge_stops_it_and_leaves_no_file(
    in_process: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    code: int,
) -> None:
    # The merge is blocking work: the event loop, which handled the signals, did not run until
    # it ended, so a merge of gigabytes ignored Ctrl-C and SIGTERM (Docker's SIGKILL followed,
    # and left the hidden temporary file), then wrote the file and exited 0.
    from dmhub_async.cli import _shards, main

    assert main(["export", "--out", "parts", "--shards", "2", "-q"]) == 0
    merge = _shards.merge_parts

    def merge_signalled(*args: Any, **kwargs: Any) -> tuple[int, list[str]]:
        os.kill(os.getpid(), signum)  # pending as the merge starts: it arrives mid-merge
        return merge(*args, **kwargs)

    monkeypatch.setattr(_shards, "merge_parts", merge_signalled)

    assert main(["merge", "parts", "--out", "all.jsonl"]) == code

    said = capsys.readouterr()
    assert said.err == f"dmhub-async: stopped by {signal.Signals(signum).name}: no output written\n"
    assert said.out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["parts"]  # no all.jsonl, nor a hidden .tmp


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_a_signal_while_the_lookup_checks_its_input_stops_the_check(
    served: ServedSimulator,
    in_process: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    code: int,
) -> None:
    # Every row is checked before a request, in one blocking pass (2,000,000 rows: 7 s): the
    # event loop, which handled the signals, did not run until it had read the whole file, so
    # Ctrl-C and SIGTERM waited that long (Docker's SIGKILL comes after 10 s).
    from dmhub_async.cli import _commands, main

    with (tmp_path / "ids.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("wechat", f"o-{n}") for n in range(1000)])
    identities = _commands._identities
    read: list[int] = []

    def signalled(*args: Any) -> Any:
        for n, identity in enumerate(identities(*args)):
            if not read and n == 10:
                os.kill(os.getpid(), signum)  # at the 10th row of the check
            yield identity
        read.append(n + 1)

    monkeypatch.setattr(_commands, "_identities", signalled)

    assert main(["lookup", "--in", "ids.csv", "--out", "found.csv", "-q"]) == code

    assert read == []  # the check stopped at the signal, not at the end of the file
    said = capsys.readouterr()
    assert said.err == f"dmhub-async: stopped by {signal.Signals(signum).name}: no output written\n"
    assert sum(served.sim.counters.routes.values()) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.csv"]


def test_a_signal_mid_sharded_export_says_a_rerun_resumes_it(
    served: ServedSimulator,
    in_process: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It said "no output written" over a directory of a manifest, parts and their checkpoints,
    # which the same command resumes: told that, a user started over from nothing.
    from dmhub_async.cli import _shards, main

    served.sim.faults.latency = 0.01

    class SignalAfterAPage:
        sent = False

        def update(self, done: int, total: int | None) -> None:
            # Once: both shards' first pages may come in one turn of the loop, before it runs
            # the handler of the first signal, and a second one exits at once (os._exit),
            # taking the test's process with it.
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    progress_lines = _shards.ProgressLines
    monkeypatch.setattr(_shards, "ProgressLines", SignalAfterAPage)
    args = ["export", "--out", "parts", "--shards", "2", "--concurrency", "1", "--page-size", "50"]

    assert main(args) == 143

    said = capsys.readouterr().err
    assert said == "dmhub-async: stopped by SIGTERM: rerun the same command to resume from parts\n"
    assert (tmp_path / "parts" / "manifest.json").exists()
    monkeypatch.setattr(_shards, "ProgressLines", progress_lines)
    assert main([*args, "-q"]) == 0
    ids = [i for part in sorted((tmp_path / "parts").glob("part-*.jsonl")) for i in jsonl_ids(part)]
    assert sorted(ids) == sorted(served.ids())


def blocked_writing(pid: int) -> bool:
    """Whether a thread of ``pid`` waits to write to a full pipe (Linux's /proc says so): in
    the write (a lookup's rows, on the main thread), or polling for room (an export's, on a
    thread; nothing else in the command polls: the event loop waits in epoll)."""
    waits = ("pipe", "poll_schedule_timeout")
    for wchan in Path(f"/proc/{pid}/task").glob("*/wchan"):
        with contextlib.suppress(OSError):
            if any(wait in wchan.read_text(encoding="ascii") for wait in waits):
                return True
    return False


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("command", ["export", "lookup"])
def test_a_signal_stops_a_run_whose_standard_output_is_a_full_pipe(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, command: str
) -> None:
    # `dmhub-async export --out - | less`, or a consumer that hangs: the write to the full pipe
    # blocked the event loop, which handles the signals, so Ctrl-C and SIGTERM did nothing
    # until the reader read or went away (Kubernetes' SIGKILL followed).
    with (tmp_path / "ids.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("wechat", f"o-{n}-{'x' * 60}") for n in range(3000)])
    args = ["--in", "ids.csv"] if command == "lookup" else []
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:  # full from the start: the first write waits with nothing written
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    try:
        with log_of(tmp_path).open("w+b") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dmhub_async", command, *args, "--out", "-"],
                env=env,
                cwd=tmp_path,
                stdout=write_end,  # never read
                stderr=stderr,
            )
            os.close(write_end)
            write_end = -1
            try:
                deadline = time.monotonic() + TIMEOUT
                while not blocked_writing(proc.pid) and time.monotonic() < deadline:
                    assert proc.poll() is None, "the command ended before it filled the pipe"
                    time.sleep(0.005)
                assert blocked_writing(proc.pid)
                proc.send_signal(signal.SIGTERM)
                returncode = proc.wait(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            stderr.seek(0)
            said = stderr.read().decode("utf-8")
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)

    assert returncode == 143, said
    assert "Traceback" not in said
    assert said.strip().splitlines()[-1] == (
        "dmhub-async: stopped by SIGTERM: what went to standard output is incomplete"
    )


#: The command line as its console script (``dmhub-async``) starts it, or ``python -m``, with
#: a hook that sends the command SIGINT or SIGTERM in one of the imports it makes as it starts:
#: Ctrl-C as soon as the command was typed, at a known place rather than at a time a loaded
#: machine makes random. ``at``: the import's name; ``inside``: the first import made while
#: that of ``inside`` runs (orjson's set-up, in C, imports uuid). A file ``signalled`` says the
#: place was reached (a test whose place is never reached would test nothing).
SIGNALLED_AS_IT_LOADS = """
import importlib.abc, os, pathlib, runpy, signal, sys, time

class Signal(importlib.abc.MetaPathFinder):
    inside_it = False

    def find_spec(self, name, path, target=None):
        if name == {inside!r}:
            self.inside_it = True
        elif name == {at!r} or self.inside_it:
            sys.meta_path.remove(self)
            pathlib.Path("signalled").touch()
            for signum in {signums!r}:
                os.kill(os.getpid(), signum)
            time.sleep(0.01)  # a step for Python to run the handler in (it runs at the next)
        return None

sys.meta_path.insert(0, Signal())
sys.argv = ["dmhub-async", "--version"]
if {module!r}:
    runpy.run_module({module!r}, run_name="__main__")
else:
    from dmhub_async.cli import main
    sys.exit(main())
"""

#: Where in the command line's start-up the signal comes, as (``at``, ``inside``).
_LOADING_PLACES = {
    # Its first module, as the console script imports main(): before main() ran, so before it
    # handled any signal (SIGINT: Python's traceback, exit 1; SIGTERM: exit -15, no line).
    "its first module": ("dmhub_async.cli._errors", None),
    # The package's log switch (and logging, 4 ms of loading), which `import dmhub_async` made
    # before main() ran: the same.
    "the log switch": ("dmhub_async._logging", None),
    # Inside orjson's set-up: a signal raised into it crashed the command (exit -11, SIGSEGV).
    "orjson's set-up": (None, "orjson.orjson"),
    # aiohttp's import, a second of loading on a busy machine.
    "aiohttp": ("aiohttp", None),
}


def signalled_as_it_loads(
    tmp_path: Path, place: str, signums: list[int], module: str = ""
) -> tuple[subprocess.CompletedProcess[str], bool]:
    """The command line run with `SIGNALLED_AS_IT_LOADS` at ``place``; and whether it got there."""
    at, inside = _LOADING_PLACES[place]
    script = SIGNALLED_AS_IT_LOADS.format(
        at=at, inside=inside, signums=[int(s) for s in signums], module=module
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=base_env(tmp_path / "cache"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, (tmp_path / "signalled").exists()


@pytest.mark.parametrize(
    ("place", "module"),
    [
        ("its first module", ""),
        ("its first module", "dmhub_async"),
        ("the log switch", ""),
        ("the log switch", "dmhub_async"),
        ("orjson's set-up", ""),
        ("aiohttp", ""),
        ("aiohttp", "dmhub_async"),
    ],
    ids=[
        "first module",
        "first module python -m",
        "log switch",
        "log switch python -m",
        "orjson",
        "aiohttp",
        "aiohttp python -m",
    ],
)
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
def test_a_signal_while_the_command_line_loads_exits_in_one_line(
    tmp_path: Path, place: str, module: str, signum: int, code: int
) -> None:
    # SIGINT printed Python's traceback of the import it cut (aiohttp's, the SDK's), exit 1;
    # SIGTERM killed the command with no line (exit -15), for the second or two it loads.
    # Then one in orjson's set-up crashed it (exit -11), a plain `import orjson` too: raised
    # into the set-up's own imports, an error it does not check for. And one as the console
    # script imported main(), before main() ran, still did either.
    result, reached = signalled_as_it_loads(tmp_path, place, [signum], module)

    assert reached, result.stderr
    assert (result.returncode, result.stderr) == (
        code,
        f"dmhub-async: stopped by {signal.Signals(signum).name}\n",
    )
    assert result.stdout == ""  # not the version: the command stopped


def test_a_second_signal_while_the_command_line_loads_ends_it_at_once(tmp_path: Path) -> None:
    # The first one is noted as the command line loads (raised into the import, it crashed
    # orjson's set-up); a second one ends it at once: an import held for good (a module on a
    # file system gone away) is not waited for.
    result, reached = signalled_as_it_loads(tmp_path, "aiohttp", [signal.SIGINT, signal.SIGTERM])

    assert reached, result.stderr
    assert (result.returncode, result.stdout, result.stderr) == (
        143,
        "",
        "dmhub-async: stopped by SIGINT, then SIGTERM: exiting at once\n",
    )


def test_the_command_line_run_in_process_gives_the_programs_signal_handlers_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # main() notes SIGINT and SIGTERM while the command line loads. Left in place after it, a
    # program calling main() had its own handlers replaced for good: a Ctrl-C then was noted
    # and nothing else (the program deaf to it), a second one ended it at once with exit 130.
    from dmhub_async.cli import main

    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not sent")

    before = {signum: signal.signal(signum, mine) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        missing = tmp_path / "no-such-export"
        assert main(["merge", str(missing), "--out", str(tmp_path / "merged.jsonl")]) == 1
        assert {s: signal.getsignal(s) for s in before} == dict.fromkeys(before, mine)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert capsys.readouterr().err == f"dmhub-async: error: {str(missing)!r}: no such directory\n"


#: The console script, whose signal lands in an import a library makes inside ``try: ...
#: except Exception:`` (msgspec's ``from typing_extensions import ...``, the first import of
#: typing_extensions as the command line loads): the import is aiohttp's, held until the signal
#: has raised there, and the error is swallowed as msgspec's optional import swallows it.
SWALLOWED_AS_IT_LOADS = """
import importlib.abc, os, signal, sys, time

class Swallow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "aiohttp":
            sys.meta_path.remove(self)
            try:
                os.kill(os.getpid(), {signum})
                time.sleep(0.01)  # a step for Python to run the handler in (it runs at the next)
            except Exception:
                pass
        return None

sys.meta_path.insert(0, Swallow())
sys.argv = ["dmhub-async", "--version"]
from dmhub_async.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
def test_a_signal_a_library_swallows_as_the_command_line_loads_still_stops_it(
    tmp_path: Path, signum: int, code: int
) -> None:
    # msgspec imports typing_extensions inside `except Exception`: a signal that landed there,
    # half a second after the command started, raised the command line's Interrupted (an
    # Exception) into it, and was lost: `simulate` served on, deaf to that SIGTERM, and any
    # other command ran to its end (exit 0 or 1, not 143).
    result = subprocess.run(
        [sys.executable, "-c", SWALLOWED_AS_IT_LOADS.format(signum=int(signum))],
        env=base_env(tmp_path / "cache"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout == ""  # not the version: the command stopped
    assert result.stderr == f"dmhub-async: stopped by {signal.Signals(signum).name}\n"


#: The console script (``sys.exit(main())``), held once ``main()`` has returned until the test
#: says go: the moment, a tenth of a second on a busy machine, as the interpreter shuts down
#: after an export that has written its file and its report.
HELD_AFTER_ITS_END = """
import pathlib, sys, time
from dmhub_async.cli import main

sys.argv = ["dmhub-async", *{args!r}]
code = main()
pathlib.Path("ended").touch()
deadline = time.monotonic() + 60
while not pathlib.Path("go").exists() and time.monotonic() < deadline:
    time.sleep(0.005)
sys.exit(code)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_once_the_export_has_ended_leaves_it_ended(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, signum: int
) -> None:
    # It killed the command as it exited (SIGINT: a traceback from the console script, exit
    # -2; SIGTERM: exit -15, no line), a shell's 130 or 143 for an export that had written its
    # file and its report, removed its checkpoint, and whose rerun was refused as finished.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = ["export", "--out", "all.jsonl", "--checkpoint", "all.ckpt", "--report", "json"]
    exited, said = held_then_signalled(
        HELD_AFTER_ITS_END,
        args,
        env=env,
        cwd=cwd,
        marker="ended",
        signum=signum,
        waiting="the export did not end",
    )

    assert exited == 0, said
    assert "Traceback" not in said
    assert json.loads(said)["complete"] is True
    assert sorted(jsonl_ids(cwd / "all.jsonl")) == served.ids()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_once_a_command_has_failed_leaves_its_error(tmp_path: Path, signum: int) -> None:
    # It killed the command as it exited (SIGINT: a traceback from the console script under
    # the error line, exit -2; SIGTERM: exit -15), a shell's 130 or 143 for a command that had
    # failed and said why: a script read "stopped by a signal", not the error.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    exited, said = held_then_signalled(
        HELD_AFTER_ITS_END,
        ["merge", "no-such-directory", "--out", "all.jsonl"],
        env=base_env(tmp_path / "cache"),
        cwd=cwd,
        marker="ended",
        signum=signum,
        waiting="the merge did not end",
    )

    assert (exited, said) == (1, "dmhub-async: error: 'no-such-directory': no such directory\n")


#: The command line held as asyncio makes its event loop, before the command's handlers are in
#: place, until SIGINT or SIGTERM comes.
HELD_AS_ITS_LOOP_IS_MADE = """
import asyncio.events, pathlib, sys, time
from dmhub_async.cli import main

made = asyncio.events.new_event_loop

def held():
    pathlib.Path("making").touch()
    deadline = time.monotonic() + 60
    while not pathlib.Path("go").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    return made()

asyncio.events.new_event_loop = held
sys.argv = ["dmhub-async", *{args!r}]
sys.exit(main())
"""


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        (signal.SIGINT, 130, "stopped by SIGINT: no output written"),
        (signal.SIGTERM, 143, "stopped by SIGTERM: no output written"),
        # Two: the second ends it at once, as it does once the loop handles them (it stopped
        # on the first, the second forgotten).
        (
            (signal.SIGINT, signal.SIGTERM),
            143,
            "stopped by SIGINT, then SIGTERM: exiting at once, its cleanup unfinished",
        ),
    ],
    ids=["INT", "TERM", "INT TERM"],
)
def test_a_signal_as_the_event_loop_is_made_stops_the_command_in_one_line(
    served: ServedSimulator,
    env: dict[str, str],
    tmp_path: Path,
    signum: int | tuple[int, ...],
    code: int,
    line: str,
) -> None:
    # SIGINT raised KeyboardInterrupt inside asyncio's new loop: its half-made loop's error
    # and "coroutine '_run' was never awaited" came above the line; SIGTERM killed the
    # command with no line (exit -15).
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = ["export", "--out", "all.jsonl", "--checkpoint", "all.ckpt"]
    exited, said = held_then_signalled(
        HELD_AS_ITS_LOOP_IS_MADE,
        args,
        env=env,
        cwd=cwd,
        marker="making",
        signum=signum,
        waiting="the command did not start",
    )

    assert exited == code, said
    assert said == f"dmhub-async: {line}\n"
    assert sorted(p.name for p in cwd.iterdir()) == ["go", "making"]
    assert served.sim.counters.total == 0  # stopped before a request


#: The console script, its export's client held as it closes (after the export has written its
#: file and removed its checkpoint) until the test says go: where a Redis token store's
#: connection, or aiohttp's, is closed.
HELD_AS_ITS_CLIENT_CLOSES = """
import asyncio, pathlib, sys
from dmhub_async import DMHubClient
from dmhub_async.cli import main

closing = DMHubClient.aclose

async def held(self):
    pathlib.Path("closing").touch()
    for _ in range(12_000):  # a minute at most
        if pathlib.Path("go").exists():
            break
        await asyncio.sleep(0.005)
    await closing(self)

DMHubClient.aclose = held
sys.argv = ["dmhub-async", *{args!r}]
sys.exit(main())
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_as_a_finished_export_closes_its_client_leaves_it_finished(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, signum: int
) -> None:
    # It cancelled the command there: exit 130 or 143 and "no output written" of a complete
    # file whose checkpoint the export had removed, and the rerun was refused as finished.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = ["export", "--out", "all.jsonl", "--checkpoint", "all.ckpt", "--report", "json"]
    exited, said = held_then_signalled(
        HELD_AS_ITS_CLIENT_CLOSES,
        args,
        env=env,
        cwd=cwd,
        marker="closing",
        signum=signum,
        waiting="the export did not end",
        check=lambda: not (cwd / "all.ckpt").exists(),
    )

    assert exited == 0, said
    assert json.loads(said)["complete"] is True
    assert sorted(jsonl_ids(cwd / "all.jsonl")) == served.ids()


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_as_a_whole_sharded_export_closes_its_client_leaves_it_whole(
    served: ServedSimulator,
    in_process: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    workers: int,
) -> None:
    # Every part complete and the late check run, the signal came as the command closed its
    # client: it said "rerun the same command to resume", exit 130 or 143, of a whole export.
    from dmhub_async import DMHubClient
    from dmhub_async.cli import main
    from dmhub_async.shards import Manifest

    closing = DMHubClient.aclose
    sent: list[int] = []

    async def signalled(self: DMHubClient) -> None:
        manifest = Manifest.read(tmp_path / "parts")
        # Once: a second signal ends the command at once (os._exit), and this process with it.
        if not sent and manifest is not None and manifest.complete:
            sent.append(signum)
            os.kill(os.getpid(), signum)
            try:
                await asyncio.sleep(0)  # the loop runs the handler here, as the client closes
            finally:
                await closing(self)
            return
        await closing(self)

    monkeypatch.setattr(DMHubClient, "aclose", signalled)
    args = ["export", "--out", "parts", "--shards", "2", "--workers", str(workers)]

    code = main([*args, "--report", "json", "--no-progress"])

    said = capsys.readouterr()
    assert sent == [signum]
    assert code == 0, said.err
    report = json.loads(said.out)
    assert report["complete"] is True
    assert report["late_check"] is not None  # it ran before the signal
    assert said.err == ""
    ids = [i for part in sorted((tmp_path / "parts").glob("part-*.jsonl")) for i in jsonl_ids(part)]
    assert sorted(ids) == sorted(served.ids())


async def _held_in(event: asyncio.Event) -> None:
    await event.wait()


def test_a_bounded_stop_names_the_innermost_await_of_each_task() -> None:
    # What a worker whose stop did not end within --stop-timeout says it waited on: the place
    # in the code of each task's innermost await, and the asyncio call it is in.
    from dmhub_async.cli import _main

    async def scene() -> str:
        event = asyncio.Event()
        held = asyncio.ensure_future(_held_in(event))
        sleeping = asyncio.ensure_future(asyncio.sleep(3600))
        await asyncio.sleep(0)  # both started
        try:
            return _main._waits(asyncio.get_running_loop())
        finally:
            held.cancel()
            sleeping.cancel()
            await asyncio.gather(held, sleeping, return_exceptions=True)

    waits = asyncio.run(scene()).split("; ")

    line = _held_in.__code__.co_firstlineno + 1
    assert f"test_cli_signals.py:{line} _held_in in asyncio's Event.wait" in waits
    assert "a task in asyncio's sleep" in waits
    assert len(waits) == 3  # and the test's own, scene()


def test_a_program_running_the_worker_command_keeps_no_stop_bound_once_it_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # main([...]) called in a program (a test, a supervisor): once it has returned, the bound
    # of a stop it was sent (--stop-timeout) is off; it would have ended the whole program, a
    # process that goes on, when the time was up.
    from dmhub_async.cli import _commands, _main, main

    gave_up: list[int] = []
    monkeypatch.setattr(_main, "_give_up", lambda signum, *_: gave_up.append(signum))

    async def serving(args: Any) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(3600)  # cancelled by the signal
        return 0

    monkeypatch.setitem(_commands.COMMANDS, "worker", serving)
    argv = ["worker", "--redis", "redis://127.0.0.1:1/0", "--stop-timeout", "0.2"]

    code = main(argv)

    assert code == 143
    for thread in threading.enumerate():
        if thread.name == "dmhub-stop-bound":
            thread.join(10)  # a cancelled timer's ends at once; one left on, at 0.2 s and 2.2
    assert gave_up == []


#: A command (``demo``, or ``worker``: one with a bounded stop) whose read from a file system
#: gone away is still on its file thread when a signal stops it: the read is let go (nothing
#: to undo), the command ends, and the interpreter's exit waits for the thread (60 s here).
_STALLED_READ = """
import asyncio, pathlib, sys, threading
from dmhub_async._threads import file_work
from dmhub_async.cli import _commands, main

def stalled_read():
    pathlib.Path("reading").touch()
    threading.Event().wait(60)

async def command(args):
    await file_work(stalled_read)
    return 0

_commands.COMMANDS[sys.argv[1]] = command
raise SystemExit(main())
"""


def _stopped_while_a_read_stalls(
    tmp_path: Path, argv: list[str], first: int, second: int | None
) -> tuple[int, str]:
    """(exit code, stderr) of a `_STALLED_READ` command sent ``first`` as it reads, then, once
    it has said it stopped, ``second``; waited for 30 s, half its read's 60."""
    (tmp_path / "stalled.py").write_text(_STALLED_READ, encoding="utf-8")
    with log_of(tmp_path).open("w+b") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "stalled.py", *argv],
            cwd=tmp_path,
            env=base_env(tmp_path / "cache"),
            stderr=stderr,
        )
        deadline = time.monotonic() + TIMEOUT

        def until(done: Callable[[], bool]) -> None:
            while not done():
                assert proc.poll() is None, "it ended before the test's signal"
                assert time.monotonic() < deadline
                time.sleep(0.01)

        try:
            until((tmp_path / "reading").exists)
            proc.send_signal(first)
            if second is not None:
                until(lambda: b"stopped by" in log_of(tmp_path).read_bytes())
                proc.send_signal(second)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        stderr.seek(0)
        return code, stderr.read().decode("utf-8")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (signal.SIGINT, signal.SIGINT),
        (signal.SIGTERM, signal.SIGTERM),
        (signal.SIGINT, signal.SIGTERM),
    ],
    ids=["INT INT", "TERM TERM", "INT TERM"],
)
def test_a_second_signal_as_the_process_waits_for_a_stalled_read_exits_at_once_in_one_line(
    tmp_path: Path, first: int, second: int
) -> None:
    # The first signal stopped the command, which said so; the interpreter's exit then waited
    # for its file thread, stuck in a read from a file system gone away. A second Ctrl-C
    # printed KeyboardInterrupt's traceback from that wait; a second SIGTERM killed the
    # process without a word. A second signal ends it at once, as during the command's cleanup.
    code, said = _stopped_while_a_read_stalls(tmp_path, ["demo"], first, second)

    names = [signal.Signals(s).name for s in (first, second)]
    assert code == 128 + second, said
    assert "Traceback" not in said
    assert said.splitlines() == [
        f"dmhub-async: stopped by {names[0]}: no output written",
        f"dmhub-async: stopped by {names[0]}, then {names[1]}: exiting at once, its cleanup"
        " unfinished",
    ], said  # said by the second signal's ending, within half the read's 60 s (not took < 20)


def test_a_bounded_stop_past_its_event_loop_names_the_threads_the_exit_waits_for(
    tmp_path: Path,
) -> None:
    # A worker's stop bound (--stop-timeout) that ran out in the interpreter's exit, the event
    # loop closed, said 2 s later "waiting on an event loop that does not answer".
    argv = ["worker", "--redis", "redis://127.0.0.1:1/0", "--stop-timeout", "0.5"]

    code, said = _stopped_while_a_read_stalls(tmp_path, argv, signal.SIGTERM, None)

    # Said by the bound's own timer (at 0.5 s), not by the one 2 s later for a loop that does
    # not answer (which says so): told apart by their words, not by a loaded machine's clock.
    assert code == 143, said
    assert said.splitlines() == [
        "dmhub-async: stopped by SIGTERM",
        "dmhub-async: stopped by SIGTERM: its cleanup did not end within 0.5 s (waiting on the"
        " interpreter's exit, which waits for threads: dmhub-file_0): exiting at once, its"
        " cleanup unfinished",
    ], said


def test_a_bound_whose_timer_ran_late_still_names_what_the_exit_waits_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bound's two timers were started together at the signal, the first at the bound's
    # 0.5 s, the second ("an event loop that does not answer") 2 s after it: a first one whose
    # thread a loaded machine ran 2 s late came after the second, which said the loop did not
    # answer of one closed long before. The loop's 2 s begin when the bound's time is up.
    from dmhub_async.cli import _main

    class Said(Exception):
        pass

    def exit_at_once(signum: int, said: str) -> None:
        raise Said(said)

    timers: list[Any] = []

    class Timer:  # threading.Timer's, run when the test says
        def __init__(self, interval: float, function: Callable[[], None]) -> None:
            self.interval, self.function, self.started = interval, function, False
            self.daemon, self.name = False, ""
            timers.append(self)

        def start(self) -> None:
            self.started = True

        def cancel(self) -> None:
            pass

    monkeypatch.setattr(_main, "_exit_at_once", exit_at_once)
    monkeypatch.setattr(threading, "Timer", Timer)
    loop = asyncio.new_event_loop()
    loop.close()  # the command ended: the interpreter's exit is what waits

    _main._bound_the_stop(loop, signal.SIGTERM, 0.5)

    # A loaded machine runs the first timer's thread last: every other one started, first.
    said: list[tuple[float, str]] = []
    while started := [timer for timer in timers if timer.started]:
        timer = started[-1]
        timer.started = False
        with pytest.raises(Said) as ended:
            timer.function()
        said.append((timer.interval, str(ended.value)))
    assert said[0][1].startswith(
        "stopped by SIGTERM: its cleanup did not end within 0.5 s (waiting on the interpreter's"
        " exit"
    ), said
    # Had that not ended the process, the loop's 2 s are counted from the bound's end.
    assert [interval for interval, _ in said] == [0.5, _main._LOOP_ANSWER], said
