"""``dmhub-async`` never destroys a file: outputs are checked before anything is sent.

Issue 14 items 5, 6 and 8: the input as the output, links, FIFOs, devices, read-only and existing
files; ``--out -``; no partial lookup output on an error; a bad row or a GBK file named by line.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import json
import lzma
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _cli_support import (
    ServedSimulator,
    assert_one_line_error,
    cli_command,
    cli_in_process,
    jsonl_ids,
    read_csv,
    run_cli,
    serve,
)
from _helpers import run_unprivileged, temporary_files_cannot_be_made, umask_watched

from dmhub_async.shards import Manifest

CUSTOMERS = 120


@pytest.fixture
def served() -> Iterator[ServedSimulator]:
    """A smaller simulator than the other CLI tests' (tests/conftest.py's ``env`` uses it)."""
    yield from serve(CUSTOMERS)


def requests(served: ServedSimulator) -> int:
    return sum(served.sim.counters.routes.values())


def write_identities(path: Path, rows: list[tuple[str, str]], encoding: str = "utf-8") -> None:
    with path.open("w", newline="", encoding=encoding) as fh:
        csv.writer(fh).writerows([("type", "value"), *rows])


def known_identities(served: ServedSimulator, customers: int) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for customer_id in served.ids()[:customers]:
        for type_, value, _name in served.call(served.sim.identities, customer_id):
            found[(type_, value)] = str(customer_id)
    return found


def test_lookup_refuses_to_write_over_its_input(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    ids = tmp_path / "ids.csv"
    write_identities(ids, [("wechat", "o1"), ("email", "a@example.com")])
    before = ids.read_bytes()

    result = run_cli("lookup", "--in", "ids.csv", "--out", "./ids.csv", env=env, cwd=tmp_path)

    assert_one_line_error(result, 2, "--out", "input")
    assert ids.read_bytes() == before
    assert requests(served) == 0


@pytest.mark.parametrize("name", ["found.json", "found.xlsx", "found.XLS"])
def test_lookup_refuses_an_output_named_as_another_format_than_csv_or_jsonl(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, name: str
) -> None:
    # `--out found.json` would be CSV rows (or JSON lines) under a JSON name, exit 0: the next
    # program reading it as its name says failed on its first line. (.jsonl writes JSON lines.)
    write_identities(tmp_path / "ids.csv", [("wechat", "o1")])

    result = run_cli("lookup", "--in", "ids.csv", "--out", name, env=env, cwd=tmp_path)

    assert_one_line_error(result, 2, f"--out {name}", "found.csv", "found.jsonl", "--format")
    assert requests(served) == 0
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device", "directory"])
def test_export_refuses_an_output_that_is_not_a_regular_file(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "precious.jsonl"
    target.write_text("keep me\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    if kind == "symlink":
        out.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(out)
    elif kind == "directory":
        out.mkdir()
    else:
        out = Path("/dev/full")

    result = run_cli("export", "--out", str(out), "--force", env=env, cwd=tmp_path)

    assert_one_line_error(result, 2, "--out")
    assert target.read_text(encoding="utf-8") == "keep me\n"
    if kind == "symlink":
        assert out.is_symlink()
    assert requests(served) == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("command", ["export", "lookup"])
def test_an_output_named_as_a_directory_is_refused_not_written_as_a_file(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, command: str
) -> None:
    # `--out exports/` (meant: into that directory, not made yet) wrote a file named "exports".
    write_identities(tmp_path / "ids.csv", [("mobile", "13800000000")])
    args = ["--in", "ids.csv"] if command == "lookup" else []

    result = run_cli(command, *args, "--out", "exports/", env=env, cwd=tmp_path)

    assert_one_line_error(result, 2, "--out exports/", "directory")
    assert not (tmp_path / "exports").exists()
    assert requests(served) == 0


@pytest.mark.parametrize("where", ["under a file", "in a missing directory"])
@pytest.mark.parametrize("command", ["export", "lookup"])
def test_an_output_whose_directory_is_missing_or_a_file_is_a_usage_error_saying_which(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, command: str, where: str
) -> None:
    # `--out exports/june.csv` where exports was a file: exit 1 and "exports/june.csv: Not
    # a directory", as if the run had failed; where it did not exist yet, "cannot write to
    # 'exports'", and not why.
    write_identities(tmp_path / "ids.csv", [("mobile", "13800000000")])
    (tmp_path / "exports").write_text("a report\n", encoding="utf-8")
    folder = "exports" if where == "under a file" else "missing"
    args = ["--in", "ids.csv"] if command == "lookup" else []

    result = run_cli(command, *args, "--out", f"{folder}/june.csv", env=env, cwd=tmp_path)

    why = "is not a directory" if where == "under a file" else "does not exist"
    assert_one_line_error(result, 2, f"--out '{folder}/june.csv'", f"'{folder}', which {why}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "ids.csv"]
    assert requests(served) == 0


@pytest.mark.parametrize("where", ["under a file", "a link to nothing"])
def test_a_sharded_export_whose_directory_cannot_be_made_is_a_usage_error_saying_why(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, where: str
) -> None:
    # `export --shards 2 --out exports/parts` where exports was a file: exit 1, as if the run
    # had failed (an export to one file there is exit 2); --out a link to a directory not
    # there (unmounted): exit 1 and "parts: File exists", of a path the user saw none at.
    (tmp_path / "exports").write_text("a report\n", encoding="utf-8")
    (tmp_path / "parts").symlink_to(tmp_path / "unmounted")
    out = "exports/parts" if where == "under a file" else "parts"

    result = run_cli("export", "--shards", "2", "--out", out, env=env, cwd=tmp_path)

    why = "'exports' is not a directory" if where == "under a file" else "which does not exist"
    assert_one_line_error(result, 2, f"--out {out!r}", why)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "parts"]
    assert requests(served) == 0


@pytest.mark.parametrize("shards", [False, True])
def test_an_out_under_a_directory_it_cannot_enter_is_a_usage_error_naming_it(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, shards: bool
) -> None:
    # `export --out locked/2026/june.jsonl` (or --shards 2 --out locked/2026/parts) where this
    # user may not enter locked: "june.jsonl: Permission denied", exit 1, as if the run had
    # failed, naming no directory to fix (a missing one is a usage error naming it).
    locked = tmp_path / "locked"
    locked.mkdir()
    out = f"{locked}/2026/parts" if shards else f"{locked}/2026/june.jsonl"
    more = ["--shards", "2"] if shards else []

    result = run_unprivileged(
        cli_command("export", *more, "--out", out), locked, env=env, cwd=tmp_path
    )

    assert_one_line_error(result, 2, "--out", out, "permission denied", "cannot enter")
    assert result.stderr.rstrip().endswith(f"{locked}'")  # quoted, as a one-file --out's
    assert os.listdir(locked) == []
    assert requests(served) == 0


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--out", "loop/june.jsonl"],
        ["export", "--out", "loop/june.jsonl", "--checkpoint", "june.ckpt"],
        ["export", "--out", "june.jsonl", "--checkpoint", "loop/june.ckpt"],
        ["lookup", "--in", "ids.csv", "--out", "loop/found.csv"],
    ],
    ids=["export", "export-with-checkpoint", "checkpoint", "lookup"],
)
def test_an_out_through_a_link_loop_is_a_usage_error_naming_the_link(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    # `--out loop/june.jsonl`, loop a link that leads back to itself (or two to each other):
    # "loop/june.jsonl: Too many levels of symbolic links", exit 1, as if the run had failed;
    # with an input or a checkpoint beside it, a traceback (RuntimeError: Symlink loop from).
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    write_identities(tmp_path / "ids.csv", [("mobile", "13800000000")])
    flag = "--checkpoint" if "loop/june.ckpt" in command else "--out"

    result = run_cli(*command, env=env, cwd=tmp_path)

    assert_one_line_error(
        result, 2, f"{flag} 'loop/", "cannot write to 'loop', a symbolic link that leads back to"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.csv", "loop"]
    assert requests(served) == 0


@pytest.mark.parametrize("links", ["a loop", "a chain"])
def test_a_lookup_input_through_a_link_loop_or_chain_is_said_as_such(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, links: str
) -> None:
    # `lookup --in loop/in.csv`: "--in loop/in.csv: no such file", of a link that leads back
    # to itself; and of a file that is there at the end of a chain of 45 links, more than the
    # system follows.
    if links == "a loop":
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        given, first = "loop/in.csv", "loop"
        said = "a symbolic link that leads back to itself (a loop)"
    else:
        write_identities(tmp_path / "real.csv", [("mobile", "13800000000")])
        (tmp_path / "l45").symlink_to(tmp_path / "real.csv")
        for n in range(44, -1, -1):
            (tmp_path / f"l{n}").symlink_to(tmp_path / f"l{n + 1}")
        given = first = "l0"
        said = "a symbolic link through too many levels of symbolic links"

    result = run_cli("lookup", "--in", given, "--out", "found.csv", env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, f"--in {given}: cannot read it: {first!r} is {said}")
    assert "no such file" not in result.stderr
    assert not (tmp_path / "found.csv").exists()
    assert requests(served) == 0


@pytest.mark.parametrize("made", [True, False])
def test_shards_under_a_directory_it_cannot_write_to_are_a_usage_error_naming_it(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, made: bool
) -> None:
    # `export --shards 2 --out archive/parts` where archive is read-only to this user (or
    # `--out archive`): "/x/archive/parts: Permission denied" (".manifest.json.lock: ..."),
    # exit 1, as if the run had failed, where a directory it may not enter is a usage error
    # naming it.
    locked = tmp_path / "archive"
    locked.mkdir()
    out = f"{locked}/parts" if made else str(locked)

    result = run_unprivileged(
        cli_command("export", "--shards", "2", "--out", out),
        locked,
        mode=0o555,
        env=env,
        cwd=tmp_path,
    )

    said = "made" if made else "written to"
    assert_one_line_error(result, 2, f"--out {out!r} cannot be {said}: this user cannot write")
    assert os.listdir(locked) == []
    assert requests(served) == 0


@pytest.mark.parametrize("under", [False, True])
def test_shards_whose_name_is_too_long_are_a_usage_error_naming_it(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, under: bool
) -> None:
    # `export --shards 2 --out <90 Chinese characters>` (270 bytes, over a file system's 255):
    # "...: File name too long", exit 1, as if the run had failed, naming no flag, where
    # `--out` of one file so named is a usage error naming it.
    out = "\u5ba2" * 90 + ("/parts" if under else "")

    result = run_cli("export", "--shards", "2", "--out", out, env=env, cwd=tmp_path)

    assert_one_line_error(result, 2, f"--out {out!r} cannot be made: File name too long")
    assert os.listdir(tmp_path) == []
    assert requests(served) == 0


@pytest.mark.parametrize(
    ("flag", "command"),
    [
        ("--out", ["export"]),
        ("--checkpoint", ["export", "--out", "june.jsonl"]),
        ("--out", ["lookup", "--in", "in.csv"]),
    ],
)
def test_a_file_named_too_long_for_the_files_beside_it_is_a_usage_error_naming_it(
    served: ServedSimulator,
    in_process: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    flag: str,
    command: list[str],
) -> None:
    # A name of 80 Chinese characters (246 bytes with its suffix, under a file system's 255)
    # is a file the system takes, but not the hidden ones written beside it, named after it
    # (".NAME.xxxxxxxx.part", ".NAME.lock"): "/x/NAME: File name too long", exit 1, naming no
    # flag, as a failed run; a --checkpoint so named after the count and the first page.
    write_identities(tmp_path / "in.csv", [("wechat", "o1")])
    suffix = ".csv" if command[0] == "lookup" else ".ckpt" if flag == "--checkpoint" else ".jsonl"
    name = "\u5ba2" * 80 + suffix

    result = cli_in_process(capsys, *command, flag, name)

    # The export's own output has its ".part" (15 bytes more), the others a ".tmp" (14).
    most = 240 if command[0] == "export" and flag == "--out" else 241
    assert_one_line_error(result, 2, f"{flag} '{name}'", f"give a name of at most {most} bytes")
    assert os.listdir(tmp_path) == ["in.csv"]
    assert requests(served) == 0


@pytest.mark.parametrize("where", ["a file", "under a file", "parts of another export"])
def test_shards_refused_name_their_directory_quoted(
    served: ServedSimulator,
    in_process: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    where: str,
) -> None:
    # `export --shards 2 --out $'june\n.jsonl'`: "--out june\n.jsonl: not a directory", the
    # name unquoted (and a directory named `june\n.jsonl`, backslash and n, said the same),
    # where a one-file --out is quoted: "--out 'june\n.jsonl' is a directory".
    name = "june\n.jsonl"
    if where == "parts of another export":
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-00000.jsonl").write_text("", encoding="utf-8")
    else:
        (tmp_path / name).write_text("", encoding="utf-8")
    out = f"{name}/parts" if where == "under a file" else name
    said = {
        "a file": f"--out {name!r}: not a directory (--shards writes one)",
        "under a file": f"--out {out!r} cannot be made: {name!r} is not a directory",
        "parts of another export": f"--out {name!r} holds part-00000.jsonl but no manifest",
    }[where]

    result = cli_in_process(capsys, "export", "--shards", "2", "--out", out)

    assert_one_line_error(result, 2, said)
    assert requests(served) == 0


@pytest.mark.parametrize(
    ("flag", "command"),
    [
        ("--checkpoint", ["export", "--force", "--out", "june.jsonl"]),
        ("--out", ["lookup", "--in", "in.csv"]),
        ("--out", ["merge", "parts"]),
    ],
)
def test_a_file_whose_only_neighbour_is_its_tmp_takes_a_name_of_241_bytes(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, flag: str, command: list[str]
) -> None:
    # A checkpoint, a lookup's or a merge's output has one file written beside it, mkstemp's
    # ".NAME.xxxxxxxx.tmp" (14 bytes more): a name of 241 bytes worked (a checkpoint of an
    # export in progress among them), and was refused as the export's output is, by the
    # 15 bytes of its ".part", said "15 bytes more ... at most 240", which it is not.
    write_identities(tmp_path / "in.csv", [("wechat", "o1")])
    if command[0] == "merge":
        assert (
            run_cli("export", "--shards", "2", "--out", "parts", env=env, cwd=tmp_path).returncode
            == 0
        )
    suffix = {"export": ".ckpt", "lookup": ".csv", "merge": ".jsonl"}[command[0]]
    fits, over = ("x" * (n - len(suffix)) + suffix for n in (241, 242))

    assert run_cli(*command, flag, fits, env=env, cwd=tmp_path).returncode == 0, fits
    result = run_cli(*command, flag, over, env=env, cwd=tmp_path)

    assert_one_line_error(
        result,
        2,
        f"{flag} '{over}'",
        "named after it with 14 bytes more (a name here holds 255): give a name of at most 241",
    )


@pytest.mark.parametrize("shards", [False, True])
def test_an_out_whose_tilde_no_shell_expanded_says_so(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, shards: bool
) -> None:
    # `--out=~/exports/june.jsonl` (a shell expands ~ only where a word starts): "cannot
    # write to '~/exports', which does not exist: make it first", of the user's own
    # ~/exports; with --shards, a directory named "~" was made where the command ran, exit 0.
    home = tmp_path / "home"
    (home / "exports").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    out = "~/exports/parts" if shards else "~/exports/june.jsonl"
    more = ["--shards", "2"] if shards else []

    result = run_cli("export", *more, f"--out={out}", env={**env, "HOME": str(home)}, cwd=work)

    # The path meant, not its directory: `--out /home/exports` would be refused as one.
    meant = home / "exports" / ("parts" if shards else "june.jsonl")
    assert_one_line_error(result, 2, "~ is not expanded", "give", str(meant))
    assert list(work.iterdir()) == []
    assert list((home / "exports").iterdir()) == []
    assert requests(served) == 0


@pytest.mark.skipif(os.sep != "/", reason="a drive letter is a path of this machine's own")
@pytest.mark.parametrize(
    ("flag", "command"),
    [
        ("--out", ["export", "--out", "C:\\exports\\june.jsonl"]),
        ("--out", ["export", "--shards", "2", "--out", "c:\\exports\\parts"]),
        ("--checkpoint", ["export", "--out", "june.jsonl", "--checkpoint", "D:\\june.ckpt"]),
        ("--out", ["lookup", "--in", "ids.csv", "--out", "C:\\found.csv"]),
    ],
    ids=["export", "sharded export", "checkpoint", "lookup"],
)
def test_a_windows_path_is_a_usage_error_naming_its_flag(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, flag: str, command: list[str]
) -> None:
    # `--out 'C:\exports\june.jsonl'`, a Windows path typed on Linux: exported, exit 0, to
    # a file of that one name, backslashes and all, in the directory the command ran in.
    write_identities(tmp_path / "ids.csv", [("mobile", "13800000000")])
    given = command[command.index(flag) + 1]

    result = run_cli(*command, env=env, cwd=tmp_path)

    assert_one_line_error(result, 2, f"{flag} {given}: a Windows path", f"./{given}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.csv"]
    assert requests(served) == 0


@pytest.mark.skipif(os.sep != "/", reason="a drive letter is a path of this machine's own")
@pytest.mark.parametrize(
    ("flag", "command"),
    [
        ("--out", ["export", "--shards", "2", "--out", "C:/exports/parts"]),
        ("--out", ["export", "--out", "c:/exports/june.jsonl"]),
        ("--checkpoint", ["export", "--out", "june.jsonl", "--checkpoint", "D:/june.ckpt"]),
    ],
    ids=["sharded export", "export", "checkpoint"],
)
def test_a_windows_path_with_forward_slashes_is_a_usage_error_naming_its_flag(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, flag: str, command: list[str]
) -> None:
    # Windows takes C:/exports/parts as it takes C:\exports\parts: typed on Linux, a sharded
    # export made ./C:/exports/parts where the command ran and exported there, exit 0; a
    # file's --out was told to make the directory 'C:' first.
    given = command[command.index(flag) + 1]

    result = run_cli(*command, env=env, cwd=tmp_path)

    # The way round it names works (./C:/... alone was refused "make it first").
    assert_one_line_error(
        result, 2, f"{flag} {given}: a Windows path", f"make the directory ./{given[:2]} first"
    )
    assert list(tmp_path.iterdir()) == []
    assert requests(served) == 0


@pytest.mark.skipif(os.sep != "/", reason="a drive letter is a path of this machine's own")
def test_a_path_under_a_directory_named_like_a_drive_that_is_there_is_taken(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # A directory of that name here (one a run of an earlier release made): its path is one
    # of this machine's, resumed or written as before.
    (tmp_path / "C:").mkdir()
    result = run_cli("export", "--out", "C:/june.jsonl", "-q", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert len(jsonl_ids(tmp_path / "C:" / "june.jsonl")) == CUSTOMERS


def test_a_name_led_by_dot_slash_and_a_drive_letter_is_written_as_given(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # The way round the refusal above, which it names: a file so named is a legal one here.
    result = run_cli("export", "--out", "./C:\\june.jsonl", "-q", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert len(jsonl_ids(tmp_path / "C:\\june.jsonl")) == CUSTOMERS


@pytest.mark.parametrize("command", ["export", "lookup"])
@pytest.mark.parametrize("out", ["~", "~/", "~/exports/"])
def test_an_out_of_a_home_directory_whose_tilde_no_shell_expanded_says_so(
    served: ServedSimulator,
    in_process: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    out: str,
    command: str,
) -> None:
    # `export --out=~` (or ~/, or ~/exports/; a shell expands ~ only where a word starts):
    # "the format is read from the name ...: name it ~.jsonl", or "--out ~/ names a
    # directory", saying nothing of the ~, where --out=~/exports/june.jsonl says it.
    home = tmp_path / "home"
    (home / "exports").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    write_identities(work / "ids.csv", [("mobile", "13800000000")])
    more = ["--in", "ids.csv"] if command == "lookup" else []
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)

    result = cli_in_process(capsys, command, *more, f"--out={out}")

    meant = str(home) + out[1:]  # the home, as written after it
    assert_one_line_error(
        result, 2, f"--out {out}: a leading ~ is not expanded here", f"give a file in {meant}"
    )
    assert sorted(p.name for p in work.iterdir()) == ["ids.csv"]
    assert list((home / "exports").iterdir()) == []
    assert requests(served) == 0


def test_a_checkpoint_whose_tilde_no_shell_expanded_names_its_own_flag(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # `--checkpoint=~/june.ckpt`: "a shell expands it only where a word starts: --out ~/x,
    # not --out=~/x", of a --checkpoint.
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()

    result = run_cli(
        "export",
        "--out",
        "june.jsonl",
        "--checkpoint=~/june.ckpt",
        env={**env, "HOME": str(home)},
        cwd=work,
    )

    assert_one_line_error(
        result,
        2,
        "--checkpoint '~/june.ckpt': cannot write to '~', which does not exist: a leading ~ is"
        " not expanded here (a shell expands it only where a word starts: --checkpoint ~/x,"
        f" not --checkpoint=~/x): give {str(home / 'june.ckpt')!r}",
    )
    assert list(work.iterdir()) == []
    assert requests(served) == 0


@pytest.mark.parametrize("checkpoint", ["~", "~/", "~/exports/"])
def test_a_checkpoint_of_a_home_directory_whose_tilde_no_shell_expanded_says_so(
    served: ServedSimulator,
    in_process: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    checkpoint: str,
) -> None:
    # `--checkpoint=~` (or ~/): as --out=~, no shell expanded it; the export ran, its
    # checkpoint a file named "~" where the command ran (left there by a failed or stopped
    # run), where `--checkpoint ~` is refused as the directory it names.
    home = tmp_path / "home"
    (home / "exports").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)

    result = cli_in_process(capsys, "export", "--out", "june.jsonl", f"--checkpoint={checkpoint}")

    meant = str(home) + checkpoint[1:]  # the home, as written after it
    assert_one_line_error(
        result,
        2,
        f"--checkpoint {checkpoint}: a leading ~ is not expanded here (a shell expands it only"
        f" where a word starts: --checkpoint ~/x, not --checkpoint=~/x): give a file in {meant}",
    )
    assert list(work.iterdir()) == []
    assert list((home / "exports").iterdir()) == []
    assert requests(served) == 0


def test_an_out_in_a_missing_directory_called_tilde_here_is_not_said_the_home(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # `--out ./~/june.jsonl`, no "~" directory here: "a leading ~ is not expanded here: give
    # /home/u/june.jsonl", of a path that named no home (Path("./~/x") reads "~/x").
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()

    result = run_cli("export", "--out", "./~/june.jsonl", env={**env, "HOME": str(home)}, cwd=work)

    assert_one_line_error(
        result,
        2,
        "--out './~/june.jsonl': cannot write to './~', which does not exist: make it first",
    )
    assert "give" not in result.stderr
    assert list(work.iterdir()) == []
    assert requests(served) == 0


@pytest.mark.parametrize("out", ["./~/june.jsonl", "~/june.jsonl", "./~/2026/june.jsonl"])
def test_an_out_under_a_file_called_tilde_here_is_said_under_a_file(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, out: str
) -> None:
    # A file named "~" here (an `export --out ~` of a shell that expanded nothing): told
    # "cannot write to './~', which does not exist: make it first", and `mkdir ./~` failed
    # "File exists".
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "~").write_text("an export\n")

    result = run_cli("export", "--out", out, env={**env, "HOME": str(home)}, cwd=work)

    shown = out if out.startswith("./") else f"./{out}"
    if "2026" in out:
        said = "cannot write to './~/2026', under './~', which is not a directory"
    else:
        said = "cannot write to './~', which is not a directory"
    assert_one_line_error(result, 2, f"--out {shown!r}: {said}")
    assert "give" not in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["~"]
    assert requests(served) == 0


@pytest.mark.parametrize("flag", ["--in", "--id-list"])
def test_an_input_whose_tilde_no_shell_expanded_says_so(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, flag: str
) -> None:
    # `lookup --in=~/ids.csv` (or `export --id-list=~/ids.txt`; a shell expands ~ only where
    # a word starts): "--in ~/ids.csv: no such file", of the user's own file, saying nothing
    # of why, where --out=~/... says it.
    home = tmp_path / "home"
    home.mkdir()
    write_identities(home / "ids.csv", [("mobile", "13800000000")])
    (home / "ids.txt").write_text("1\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    if flag == "--in":
        command, name = ["lookup", "--out", "found.csv"], "ids.csv"
    else:
        command, name = ["export", "--out", "june.jsonl"], "ids.txt"

    result = run_cli(*command, f"{flag}=~/{name}", env={**env, "HOME": str(home)}, cwd=work)

    assert_one_line_error(
        result,
        1,
        f"{flag} ~/{name}: no such file",
        f"~ is not expanded here (a shell expands it only where a word starts: {flag} ~/x,",
        f"give {home / name}",
    )
    assert list(work.iterdir()) == []
    assert requests(served) == 0
    # A ~ file that is not in the home either: no such file, with no path to give.
    result = run_cli(*command, f"{flag}=~/other", env={**env, "HOME": str(home)}, cwd=work)
    assert_one_line_error(result, 1, f"{flag} ~/other: no such file")
    assert "give" not in result.stderr


@pytest.mark.parametrize(
    "where", ["under a directory it cannot enter", "a file it may not read", "a name too long"]
)
def test_a_lookup_input_that_cannot_be_looked_at_is_refused_naming_the_flag(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, where: str
) -> None:
    # `lookup --in locked/in.csv`, locked a directory this user may not enter (or in.csv a
    # file it may not read), or a name longer than a file system takes: "locked/in.csv:
    # Permission denied" (or "...: File name too long"), exit 1, naming no flag, where
    # --id-list's says "--id-list ...: cannot read it".
    if where == "a name too long":
        given, strerror = "\u5ba2" * 90 + ".csv", "File name too long"
        result = run_cli("lookup", "--in", given, "--out", "found.csv", env=env, cwd=tmp_path)
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        write_identities(locked / "in.csv", [("mobile", "13800000000")])
        given, strerror = "locked/in.csv", "Permission denied"
        command = cli_command("lookup", "--in", given, "--out", "found.csv")
        mode = 0
        if where == "a file it may not read":  # in a directory it may list, not write in
            (locked / "in.csv").chmod(0)
            mode = 0o555
        result = run_unprivileged(command, locked, mode=mode, env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, f"--in {given}: cannot read it: {strerror}")
    assert requests(served) == 0
    assert not (tmp_path / "found.csv").exists()


def test_a_merge_whose_tilde_no_shell_expanded_says_so(
    in_process: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # `merge '~/parts'` (quoted, or "$DIR" of DIR='~/parts': no shell expands a ~ then):
    # "~/parts: no such directory", of the user's own ~/parts, saying nothing of why, where
    # --out=~/... and --in=~/... say it.
    home = tmp_path / "home"
    (home / "parts").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)

    result = cli_in_process(capsys, "merge", "~/parts", "--out", "all.jsonl")

    assert_one_line_error(
        result,
        1,
        "'~/parts': no such directory: a leading ~ is not expanded here (a shell expands it",
        f"give {str(home / 'parts')!r}",
    )
    assert list(work.iterdir()) == []
    # A ~ directory that is not in the home either: no such directory, with no path to give.
    result = cli_in_process(capsys, "merge", "~/other", "--out", "all.jsonl")
    assert_one_line_error(result, 1, "'~/other': no such directory")
    assert "give" not in result.stderr


@pytest.mark.parametrize("depth", ["itself", "in it"])
def test_a_merge_of_a_directory_it_cannot_enter_says_so(
    env: dict[str, str], tmp_path: Path, depth: str
) -> None:
    # `merge locked/parts` where this user may not enter locked: "locked/parts: no such
    # directory", of one that may well be there; `merge locked`: "locked/manifest.json:
    # Permission denied", a file nobody named.
    locked = tmp_path / "locked"
    locked.mkdir()
    where = locked if depth == "itself" else locked / "parts"

    result = run_unprivileged(
        cli_command("merge", str(where), "--out", "all.jsonl"), locked, env=env, cwd=tmp_path
    )

    assert_one_line_error(result, 1, f"{str(where)!r} cannot be read", "permission denied")
    assert result.stderr.rstrip().endswith(f"cannot enter {str(locked)!r}")
    assert sorted(os.listdir(tmp_path)) == ["locked"]


def test_a_sharded_out_naming_a_directory_called_tilde_here_is_written_there(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # `--shards 2 --out ./~/parts`: a directory literally named "~" where the command runs,
    # as the user wrote it (no shell expands "./~"), was refused as "a leading ~ is not
    # expanded here: give /home/u/parts" (Path("./~/parts") reads "~/parts").
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()

    result = run_cli(
        "export", "--shards", "2", "--out", "./~/parts", env={**env, "HOME": str(home)}, cwd=work
    )

    assert result.returncode == 0, result.stderr
    manifest = Manifest.read(work / "~" / "parts")
    assert manifest is not None
    assert manifest.complete
    assert manifest.exported == CUSTOMERS
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("kind", ["directory", "in a missing directory", "symlink"])
def test_export_refuses_a_checkpoint_that_cannot_be_one_as_a_usage_error(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, kind: str
) -> None:
    # Exit 1, as if the export had failed, rather than 2: the command line was wrong.
    checkpoint = tmp_path / "export.ckpt"
    if kind == "directory":
        checkpoint.mkdir()
    elif kind == "symlink":
        checkpoint.symlink_to(tmp_path / "elsewhere")
    else:
        checkpoint = tmp_path / "missing" / "export.ckpt"

    result = run_cli(
        "export", "--out", "out.jsonl", "--checkpoint", str(checkpoint), env=env, cwd=tmp_path
    )

    assert_one_line_error(result, 2, "--checkpoint")
    assert requests(served) == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_an_existing_output_needs_force_and_a_read_only_one_is_refused(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "all.jsonl"
    out.write_text("an earlier export\n", encoding="utf-8")

    refused = run_cli("export", "--out", "all.jsonl", env=env, cwd=tmp_path)
    assert_one_line_error(refused, 2, "--force")
    assert out.read_text(encoding="utf-8") == "an earlier export\n"
    assert requests(served) == 0

    forced = run_cli("export", "--out", "all.jsonl", "--force", env=env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert jsonl_ids(out) == served.ids()

    out.chmod(0o444)
    read_only = run_cli("export", "--out", "all.jsonl", "--force", env=env, cwd=tmp_path)
    assert_one_line_error(read_only, 2, "read-only")
    assert jsonl_ids(out) == served.ids()


def test_a_read_only_output_of_a_checkpoint_is_refused_saying_how_to_resume(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # An export stopped with a checkpoint, its file made read-only since (or left by a run as
    # another user, root's by sudo): the rerun was told to "give another file", which the
    # checkpoint then refused as another export's. The file is its export's to resume.
    command = ["export", "--out", "some.jsonl", "--checkpoint", "some.ckpt", "--page-size", "20"]
    served.sim.faults.paths = ("GET /v1/customers",)
    served.sim.faults.script(["ok"] * 3 + ["reset"])
    failed = run_cli(*command, "--max-retries", "0", "-q", env=env, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    out, ckpt = tmp_path / "some.jsonl", tmp_path / "some.ckpt"
    written = out.read_bytes()
    out.chmod(0o444)
    served.sim.counters.reset()

    refused = run_cli(*command, env=env, cwd=tmp_path)

    assert_one_line_error(refused, 2, "some.jsonl is read-only", "make it writable to resume")
    assert "give another file" not in refused.stderr
    assert requests(served) == 0
    assert out.read_bytes() == written
    assert ckpt.exists()

    out.chmod(0o644)  # as it says
    resumed = run_cli(*command, "--report", "json", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed"] is True
    assert jsonl_ids(out) == served.ids()


def test_a_rerun_without_the_checkpoint_it_left_in_the_working_directory_names_it(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # Exported to another directory (exports/), its checkpoint kept where the command ran,
    # stopped midway, and run again without --checkpoint: only the output's own directory
    # was searched for it, and the rerun said "exists: pass --force to overwrite it", which
    # threw away what was exported.
    (tmp_path / "exports").mkdir()
    out = tmp_path / "exports" / "some.jsonl"
    command = ["export", "--out", "exports/some.jsonl", "--page-size", "20"]
    served.sim.faults.paths = ("GET /v1/customers",)
    served.sim.faults.script(["ok"] * 3 + ["reset"])
    failed = run_cli(
        *command, "--checkpoint", "some.ckpt", "--max-retries", "0", "-q", env=env, cwd=tmp_path
    )
    assert failed.returncode == 1, failed.stderr
    assert (tmp_path / "some.ckpt").exists()
    written = out.read_bytes()
    served.sim.counters.reset()

    refused = run_cli(*command, env=env, cwd=tmp_path)

    assert_one_line_error(refused, 2, "in progress", "rerun with --checkpoint some.ckpt")
    assert requests(served) == 0
    assert out.read_bytes() == written


def test_lookup_to_stdout_puts_the_report_on_stderr(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    expected = known_identities(served, 5)
    write_identities(tmp_path / "ids.csv", list(expected))

    result = run_cli("lookup", "--in", "ids.csv", "--out", "-", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert {(r["type"], r["value"]): r["customer_id"] for r in rows} == expected
    assert f"resolved {len(expected)} identities" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.csv"]


def test_a_failed_lookup_leaves_no_output_and_keeps_the_old_one(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    expected = known_identities(served, 30)
    write_identities(tmp_path / "ids.csv", list(expected))
    (tmp_path / "found.csv").write_text("an earlier result\n", encoding="utf-8")
    served.sim.faults.script(["ok"] * 10 + ["503"] * 50)  # fails after a few lookups

    result = run_cli(
        "lookup",
        "--in",
        "ids.csv",
        "--out",
        "found.csv",
        "--force",
        "--max-retries",
        "0",
        "--concurrency",
        "2",
        env=env,
        cwd=tmp_path,
    )

    assert_one_line_error(result, 1, "503")
    assert (tmp_path / "found.csv").read_text(encoding="utf-8") == "an earlier result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["found.csv", "ids.csv"]


def _made_while_it_runs(served: ServedSimulator, path: Path, route: str) -> None:
    """``path`` written by "another run" as the command's first ``route`` request comes:
    after the command checked that its --out does not exist, before it puts its own there."""

    def make(request: Any) -> None:
        if f"{request.method} {request.path}" == route and not path.exists():
            path.write_text("another run's result\n", encoding="utf-8")

    served.call(served.sim.on_request, make)


def test_a_lookup_does_not_replace_an_output_made_while_it_ran(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # Two lookups to one --out, neither with --force (cron jobs overlapping): both passed the
    # check that --out does not exist, both exited 0, and the one that ended last replaced
    # the other's result without a word.
    expected = known_identities(served, 5)
    write_identities(tmp_path / "ids.csv", list(expected))
    found = tmp_path / "found.csv"
    _made_while_it_runs(served, found, "GET /v1/customeridentities")

    result = run_cli("lookup", "--in", "ids.csv", "--out", "found.csv", env=env, cwd=tmp_path)

    assert_one_line_error(result, 2, "--out found.csv", "--force")
    assert found.read_text(encoding="utf-8") == "another run's result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["found.csv", "ids.csv"]


@pytest.mark.parametrize("checkpoint", [[], ["--checkpoint", "all.ckpt"]], ids=["", "ckpt"])
def test_an_export_does_not_replace_an_output_made_while_it_ran(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, checkpoint: list[str]
) -> None:
    # Two exports to one --out: the second checked --out as the first was still at work (its
    # rows in a hidden file), and took the lock once the first had ended: exit 0 both, the
    # first's file replaced without --force.
    out = tmp_path / "all.jsonl"
    _made_while_it_runs(served, out, "GET /v1/customers")

    result = run_cli("export", "--out", "all.jsonl", *checkpoint, env=env, cwd=tmp_path)

    assert_one_line_error(result, 2, "--out all.jsonl", "--force")
    assert out.read_text(encoding="utf-8") == "another run's result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl"]


def test_a_bad_row_is_named_by_file_and_line_before_any_request(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "ids.csv").write_text(
        "type,value\nwechat,o1\n\nemail\nwechat,o2\n", encoding="utf-8"
    )

    result = run_cli("lookup", "--in", "ids.csv", "--out", "r.csv", env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, "ids.csv:4:", "type,value")
    assert requests(served) == 0
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize(
    ("content", "encoding", "code", "said"),
    [
        (b"wechat," + b"x" * 200_000 + b"\n", None, 1, "ids.csv:1: not a CSV line"),
        ("type,value\nwechat,o-1\n".encode("utf-16"), "utf-16", 2, "--encoding utf-16"),
        ("type,value\nwechat,o-1\n".encode("utf-16-le"), None, 1, "a UTF-16 file"),
        (b"type,value\nwechat,o-1\n", "rot13", 2, "--encoding rot13"),
    ],
    ids=[
        "a field past csv's limit",
        "UTF-16",
        "UTF-16 as UTF-8",
        "rot13",
    ],
)
def test_a_file_that_is_not_csv_text_is_one_line_naming_it_before_any_request(
    served: ServedSimulator,
    env: dict[str, str],
    tmp_path: Path,
    content: bytes,
    encoding: str | None,
    code: int,
    said: str,
) -> None:
    # Each was a raw traceback (csv.Error, TypeError) or a row of NUL characters.
    (tmp_path / "ids.csv").write_bytes(content)
    flags = ["--encoding", encoding] if encoding else []

    result = run_cli("lookup", "--in", "ids.csv", "--out", "r.csv", *flags, env=env, cwd=tmp_path)

    assert_one_line_error(result, code, said)
    assert requests(served) == 0
    assert not (tmp_path / "r.csv").exists()


def test_an_unclosed_quote_is_named_by_the_line_it_opens_on(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # The quote on line 3 took the 20,000 lines after it into its value until csv's limit:
    # the error named line 13,110, a good row, and said only "field larger than field limit".
    (tmp_path / "ids.csv").write_bytes(
        b'type,value\nwechat,o1\nwechat,"o2\n' + b"wechat,o3\n" * 20_000
    )

    result = run_cli("lookup", "--in", "ids.csv", "--out", "r.csv", env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, "ids.csv:3: a quote opened on this line is not closed")
    assert requests(served) == 0
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize(
    "content",
    [
        b'type,value,remark\nwechat,o1,\nwechat,o2,"VIP\n' + b"wechat,o3,\n" * 40,
        b'type,value\nwechat,o1\nwechat,"o2\n' + b"wechat,o3\n" * 40,
        b'type,value\nwechat,o1\nwechat,"o2\n',
    ],
    ids=["in a remark", "in a value", "on the last line"],
)
def test_an_unclosed_quote_the_file_ends_in_is_named_by_the_line_it_opens_on(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, content: bytes
) -> None:
    # A quote never closed in a file too short to reach csv's limit took every line after it
    # into its cell until the end of the file: in a remark, the 40 rows after it were never
    # looked up, and the lookup ended with exit 0, two rows written; in a value, the error
    # was "ids.csv:3: identity value holds a control character".
    (tmp_path / "ids.csv").write_bytes(content)

    result = run_cli("lookup", "--in", "ids.csv", "--out", "r.csv", env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, "ids.csv:3: a quote opened on this line is not closed")
    assert requests(served) == 0
    assert not (tmp_path / "r.csv").exists()


def test_a_gbk_file_names_encoding_and_reads_with_it(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    name = "小羊苏西"
    customer_id = served.ids()[0]
    served.call(served.sim.store.bind, customer_id, "myshop", name, None)
    write_identities(tmp_path / "ids.csv", [("wechat", "o-nobody"), ("myshop", name)], "gbk")

    plain = run_cli("lookup", "--in", "ids.csv", "--out", "r.csv", env=env, cwd=tmp_path)
    assert_one_line_error(plain, 1, "ids.csv:3:", "UTF-8", "--encoding")
    assert not (tmp_path / "r.csv").exists()

    gbk = run_cli(
        "lookup", "--in", "ids.csv", "--out", "r.csv", "--encoding", "gbk", env=env, cwd=tmp_path
    )
    assert gbk.returncode == 0, gbk.stderr
    with (tmp_path / "r.csv").open(newline="", encoding="gbk") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["value"], r["customer_id"]) for r in rows] == [
        ("o-nobody", ""),
        (name, str(customer_id)),
    ]


def test_export_to_stdout_puts_the_report_on_stderr(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli("export", "--out", "-", "--concurrency", "4", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == served.ids()
    assert f"exported      {CUSTOMERS} customers" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_to_a_pipe_its_reader_closes_ends_quietly(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # `dmhub-async export --out - | head -1`: it ended "dmhub-async: error: Broken pipe", exit
    # 1, noise in every such pipeline. A command whose reader left ends as a shell's `yes | head`
    # does: silent, 141 (128 + SIGPIPE).
    import fcntl
    import subprocess

    read_end, write_end = os.pipe()
    # A pipe of a page (Linux's F_SETPIPE_SZ), so the export outgrows it whatever its size.
    if hasattr(fcntl, "F_SETPIPE_SZ"):  # Python 3.10+ on Linux; elsewhere 120 rows outgrow it
        fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen(
        cli_command("export", "--out", "-", "--page-size", "10"),
        env=env,
        cwd=tmp_path,
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        first = json.loads(reader.readline())
    # head -1 has its line, and is gone
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141, err

    assert first["id"] == served.ids()[0]
    assert err == ""


def polling(thread: threading.Thread) -> bool:
    """Whether ``thread`` waits in ``poll`` (Linux's /proc says so)."""
    wchan = Path(f"/proc/self/task/{thread.native_id}/wchan")
    with contextlib.suppress(OSError):
        return "poll" in wchan.read_text(encoding="ascii")
    return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc")
def test_standard_output_written_on_a_thread_is_whole_and_stopped_by_a_signal() -> None:
    # An export writes its rows on a thread (the event loop stays free), where no signal
    # handler can raise: a write to a full pipe there waited for the reader, and SIGTERM's
    # cancel waited for the write. The event loop's handler stops it instead.
    from dmhub_async.cli._errors import Interrupted
    from dmhub_async.cli._files import _SignalledStdout, stop_standard_output

    read_end, write_end = os.pipe()
    out = _SignalledStdout(write_end)
    data = bytes(range(256)) * 1_000  # many times a pipe's room, written a room at a time
    returned: list[int] = []
    writer = threading.Thread(target=lambda: returned.append(out.write(data)))
    stalled: list[BaseException] = []

    def write_to_a_full_pipe() -> None:
        try:
            out.write(b"x" * (1 << 20))  # more than the pipe takes, and no reader
        except BaseException as err:  # what the thread raised, checked below
            stalled.append(err)

    try:
        writer.start()
        received = b""
        with os.fdopen(os.dup(read_end), "rb", buffering=0) as reader:
            while len(received) < len(data):
                received += reader.read(65536)
        writer.join(10)
        assert returned == [len(data)]
        assert received == data  # every byte once, in order

        writer = threading.Thread(target=write_to_a_full_pipe)
        writer.start()
        deadline = time.monotonic() + 10
        while not polling(writer) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert polling(writer), "the write did not wait for room in the pipe"
        stop_standard_output(15)  # SIGTERM, as the event loop's handler passes it
        writer.join(10)
        assert not writer.is_alive(), "a signal did not stop a write to a full pipe"
    finally:
        os.close(read_end)  # a write still waiting fails (EPIPE) and the thread ends
        writer.join(10)
        os.close(write_end)
    assert [type(err) for err in stalled] == [Interrupted]
    assert out.write(b"dropped") == len(b"dropped")  # once stopped, later rows are dropped
    out.close()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc")
def test_standard_output_set_non_blocking_waits_for_room_on_the_main_thread() -> None:
    # A lookup writes its rows on the main thread. A standard output that is a non-blocking
    # pipe (one a Node.js parent or a CI runner set O_NONBLOCK), whose reader is slower than
    # the answers: the first write to find it full failed, and the run with it, "standard
    # output: Resource temporarily unavailable" (exit 1), rows short. It waits for room,
    # as a blocking pipe's write does.
    from dmhub_async.cli._files import _SignalledStdout

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    out = _SignalledStdout(write_end)
    data = bytes(range(256)) * 1_000  # many times a pipe's room
    received: list[bytes] = []

    def reader() -> None:  # reads once the write waits for room (or fails), to the end
        deadline = time.monotonic() + 10
        while not polling(threading.main_thread()) and not done.is_set():
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        with os.fdopen(read_end, "rb") as fh:
            received.append(fh.read())

    done = threading.Event()
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert out.write(data) == len(data)
    finally:
        done.set()
        out.close()
        os.close(write_end)
        thread.join(10)
    assert received == [data]  # every byte once, in order


def test_csv_select_writes_only_those_columns_with_excels_mark(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli(
        "export",
        "--out",
        "few.csv",
        "--select",
        "name,mobile",
        "--encoding",
        "utf-8-sig",
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    raw = (tmp_path / "few.csv").read_bytes()
    assert raw.startswith(codecs.BOM_UTF8)
    assert raw.count(codecs.BOM_UTF8) == 1
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert rows[0] == ["id", "name", "mobile"]
    assert rows[1:] == [[str(c["id"]), c["name"] or "", c["mobile"] or ""] for c in served.rows()]


def test_excels_mark_is_for_csv_only(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli("export", "--out", "a.jsonl", "--encoding", "utf-8-sig", env=env, cwd=tmp_path)

    assert_one_line_error(result, 2, "--encoding", "CSV")
    assert requests(served) == 0


def test_lookup_input_takes_spaces_after_commas_and_a_header_after_blank_lines(
    tmp_path: Path,
) -> None:
    # `wechat, "o-1"` kept its quotes in the value (and was not found, without a word); a
    # header after blank lines was looked up as the identity ("type", "value").
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _identities

    path = tmp_path / "ids.csv"
    path.write_text('\n\ntype, value\nwechat, "o-1"\n email , o-2\n"wechat" , o-3\n', "utf-8")
    assert list(_identities(path, "utf-8")) == [
        Identity("wechat", "o-1"),
        Identity("email", "o-2"),
        Identity("wechat", "o-3"),
    ]


def test_lookup_input_refuses_a_cell_past_the_value_unless_a_header_names_it(
    tmp_path: Path,
) -> None:
    # `wechat,o-1,x`: a value holding an unquoted comma, split in two: its first part was
    # looked up (and "not found", or worse, another customer's), the rest dropped without a
    # word. Empty cells after the value (Excel's trailing commas) are no value; a header that
    # names more columns declares them, as a file exported with a name column has.
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_text("wechat,o-1,,\nshop,acme,inc\n", "utf-8")
    with pytest.raises(
        CommandError, match=r"ids\.csv:2: expected type,value, found 3 cells.*quote"
    ):
        list(_identities(path, "utf-8"))
    # The row itself is not quoted: it is personal data (a mobile, the name beside it), and
    # a line of 200 KB was the whole "one-line" error.
    for row in ("mobile,13800138000,王伟", f"wechat,{'x' * 100_000},{'y' * 100_000}"):
        path.write_text(row + "\n", "utf-8")
        with pytest.raises(CommandError) as refused:
            list(_identities(path, "utf-8"))
        said = str(refused.value)
        assert said.startswith(f"{path}:1: expected type,value, found 3 cells"), said
        assert "13800138000" not in said
        assert "王伟" not in said
        assert len(said) < 300 + len(str(path))

    path.write_text("type,value,name\nwechat,o-1,Wang\nemail,o-2,\n", "utf-8")
    assert list(_identities(path, "utf-8")) == [
        Identity("wechat", "o-1"),
        Identity("email", "o-2"),
    ]


def test_lookup_input_of_two_joined_excel_files_names_the_second_mark(tmp_path: Path) -> None:
    # `cat a.csv b.csv` of two Excel "CSV UTF-8" files: the second's byte order mark began a
    # line, and its first identity was looked up with the mark (and "not found", without a word).
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_bytes("\ufeffwechat,o-1\r\n".encode() * 2)
    with pytest.raises(CommandError, match=r"ids\.csv:2: identity type holds a byte order mark"):
        list(_identities(path, "utf-8"))


@pytest.mark.parametrize("encoding", ["gbk", "big5", "latin-1"])
def test_lookup_input_in_utf8_with_its_mark_read_as_another_encoding_is_an_error(
    tmp_path: Path, encoding: str
) -> None:
    # An Excel "CSV UTF-8" file given --encoding gbk (the README's advice for Excel's CSV on
    # Chinese Windows): its mark was read as text ('锘縲echat'), and its first identity was
    # "not found" (or its header looked up as one), exit 0, without a word.
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_bytes(codecs.BOM_UTF8 + b"wechat,o-1\r\nwechat,o-2\r\n")
    with pytest.raises(CommandError, match=r"ids\.csv:1: .*UTF-8.*--encoding utf-8"):
        list(_identities(path, encoding))


def test_output_to_a_closed_standard_output_is_a_usage_error(tmp_path: Path) -> None:
    # Started with >&-: a raw AttributeError traceback ('NoneType' object has no attribute).
    import subprocess
    import sys

    (tmp_path / "ids.csv").write_text("wechat,o-1\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "dmhub_async", "lookup", "--in", "ids.csv", "--out", "-"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
        close_fds=True,
        preexec_fn=lambda: os.close(1),
        env={**os.environ, "DMHUB_ACCESS_TOKEN": "t", "DMHUB_BASE_URL": "http://127.0.0.1:9"},
    )
    assert result.returncode == 2, result.stderr
    assert "standard output is closed" in result.stderr
    assert "Traceback" not in result.stderr


def with_stderr_closed(
    args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    """The command started with its standard error closed (``2>&-``, a daemon's or a cron
    line's), its standard output captured."""
    return subprocess.run(
        cli_command(*args),
        cwd=cwd,
        stdout=subprocess.PIPE,
        timeout=60,
        check=False,
        close_fds=True,
        preexec_fn=lambda: os.close(2),
        env=env,
    )


def test_an_export_with_standard_error_closed_writes_its_file(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # `export --out c.jsonl 2>&-` exited 1 having written nothing, and said nothing: a raw
    # AttributeError ('NoneType' object has no attribute 'isatty') as it chose its progress.
    result = with_stderr_closed(["export", "--out", "c.jsonl"], env, tmp_path)

    assert result.returncode == 0
    assert sorted(jsonl_ids(tmp_path / "c.jsonl")) == sorted(served.ids())
    assert b"exported" in result.stdout  # the report, on standard output as ever


def test_a_warning_with_standard_error_closed_stays_out_of_the_data(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # `export --out - -q 2>&-` with a cache directory it cannot write: print(file=None) wrote
    # the warning "the token is kept in memory" into standard output, a line of the JSON
    # lines that no JSON reader takes.
    (tmp_path / "not-a-directory").write_text("")
    env = {**env, "XDG_CACHE_HOME": str(tmp_path / "not-a-directory")}
    result = with_stderr_closed(["export", "--out", "-", "-q"], env, tmp_path)

    assert result.returncode == 0
    lines = result.stdout.decode("utf-8").splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(served.ids())


def test_an_output_file_never_widens_the_umask_other_threads_create_files_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # To give `lookup --out FILE` 0666 less the umask, the CLI read the umask by setting it to
    # 0 and back: a file another thread made at that moment was writable by every user.
    from dmhub_async.cli._files import replace_on_success

    with (
        umask_watched(monkeypatch, tmp_path) as made,
        replace_on_success(str(tmp_path / "found.csv"), "utf-8") as out,
    ):
        out.write("type,value,customer_id\n")

    assert all(mode & 0o077 == 0 for mode in made), [oct(mode) for mode in made]
    assert (tmp_path / "found.csv").stat().st_mode & 0o777 == 0o600  # 0666 less 077


@pytest.mark.parametrize(
    ("row", "said"),
    [
        ("mobile,1.38001E+10", "scientific notation"),
        ("member-card,6.22848E+15", "scientific notation"),
        ("member-card,6.228480e+18", "scientific notation"),
        ("mobile,13800138000.0", ".0"),
        ("mobile,'13800138000", "apostrophe"),
        ("mobile,\uff11\uff13\uff18\uff10\uff10\uff11\uff13\uff18\uff10\uff10\uff10", "full-width"),
        ('mobile,"=""13800138000"""', "formula"),
    ],
    ids=[
        "scientific",
        "scientific, any type",
        "scientific as pandas writes it",
        "trailing .0",
        "apostrophe",
        "full-width",
        "formula",
    ],
)
def test_lookup_input_refuses_a_number_excel_mangled_naming_its_line(
    tmp_path: Path, row: str, said: str
) -> None:
    # A mobile column Excel or WPS left as a number: 1.38001E+10 (its digits lost), 13800138000.0,
    # '13800138000, full-width digits, ="13800138000". Each was looked up as it was, "not found",
    # exit 0, without a word: a customer the file held reported as no customer.
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_text(f"type,value\r\nmobile,13800138000\r\n{row}\r\n", "utf-8")
    with pytest.raises(CommandError, match=rf"ids\.csv:3: .*{re.escape(said)}") as caught:
        list(_identities(path, "utf-8"))
    value = next(csv.reader([row]))[1]
    assert value not in str(caught.value)  # a line, not its value: personal data
    assert "\n" not in str(caught.value)

    path.write_text("type,value\r\nmobile,13800138000\r\nwechat,o-1.0\r\nmobile,+86 138\r\n")
    assert [i.value for i in _identities(path, "utf-8")] == ["13800138000", "o-1.0", "+86 138"]


XLSX = b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00b\xee\x9dh^\x01\x00\x00\x90\x04\x00\x00"
XLS = bytes.fromhex("d0cf11e0a1b11ae1") + bytes(24) + b"\x3e\x00\x03\x00\xfe\xff\x09\x00"
UNICODE_TEXT = "type\tvalue\r\nmobile\t13800138000\r\n".encode("utf-16")  # Excel's Unicode Text


@pytest.mark.parametrize("encoding", ["utf-8", "gbk", "gb18030", "latin-1"])
@pytest.mark.parametrize(
    ("content", "said"),
    [
        (UNICODE_TEXT, "UTF-16"),
        ("type,value\r\nmobile,13800138000\r\n".encode("utf-16-be"), "UTF-16"),
        (codecs.BOM_UTF16_BE + "mobile,13800138000\r\n".encode("utf-16-be"), "UTF-16"),
        (XLSX, "workbook"),
        (XLS, "workbook"),
        (gzip.compress(b"type,value\r\nwechat,o-1\r\n"), "gzip"),
        (lzma.compress(b"type,value\r\nwechat,o-1\r\n"), "xz"),
    ],
    ids=["Excel's Unicode Text", "UTF-16 BE, no mark", "UTF-16 BE", ".xlsx", ".xls", ".gz", ".xz"],
)
def test_lookup_input_that_is_utf16_a_workbook_or_compressed_says_so_in_any_encoding(
    tmp_path: Path, content: bytes, said: str, encoding: str
) -> None:
    # Read as UTF-8, Excel's "Unicode Text" (UTF-16 with its mark) and an .xlsx renamed .csv
    # were "not UTF-8 text (byte 0xff): ... save CSV as --encoding gbk", and with --encoding
    # gbk "not gbk text": advice that goes round in a circle. As Latin-1, a workbook was "a
    # UTF-16 file?".
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_bytes(content)
    with pytest.raises(CommandError, match=r"ids\.csv:1: ") as caught:
        list(_identities(path, encoding))
    assert said in str(caught.value)
    assert "CSV UTF-8" in str(caught.value)
    assert "--encoding gbk" not in str(caught.value)


@pytest.mark.parametrize("encoding", ["gbk", "gb2312", "cp936"])
def test_lookup_input_beyond_gbk_read_as_gbk_is_told_gb18030(tmp_path: Path, encoding: str) -> None:
    # A name with a character GBK lacks (刘䶮), in a file WPS saved as GB18030: "--encoding gbk"
    # failed with "not gbk text ... Excel on Chinese Windows saves CSV as --encoding gbk", the
    # encoding just given.
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_bytes("type,value\r\nwechat,o-1\r\nmyshop,刘䶮\r\n".encode("gb18030"))
    with pytest.raises(CommandError, match=r"ids\.csv:3: ") as caught:
        list(_identities(path, encoding))
    assert "--encoding gb18030" in str(caught.value)
    assert "--encoding gbk" not in str(caught.value)

    assert list(_identities(path, "gb18030"))[1] == Identity("myshop", "刘䶮")


@pytest.mark.parametrize(
    "header",
    [
        "类型,值",
        "身份类型,身份值,姓名",
        "标识类型,标识值",
        "identityType,identityValue",
        "TYPE,VALUE",
    ],
)
def test_lookup_input_takes_a_header_in_chinese_or_in_the_apis_names(
    tmp_path: Path, header: str
) -> None:
    # "类型,值" was looked up as the identity ("类型", "值"), a row "not found" in the output;
    # "类型,值,姓名" was refused at line 1 as "expected type,value ... a header naming more
    # columns allows them", the header it was.
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _identities

    path = tmp_path / "ids.csv"
    name = ",王伟" if header.count(",") == 2 else ""  # a column the header names
    path.write_text(f"{header}\r\nmobile,13800138000{name}\r\nwechat,o-1\r\n", "utf-8")
    assert list(_identities(path, "utf-8")) == [
        Identity("mobile", "13800138000"),
        Identity("wechat", "o-1"),
    ]


@pytest.mark.parametrize(
    ("header", "line"),
    [
        ("value,type", 1),
        ("identityValue,identityType", 1),
        ("值,类型,姓名", 1),
        ("type,value\r\nmobile,13800138000\r\nVALUE,TYPE", 3),  # files joined: cat a.csv b.csv
    ],
)
def test_lookup_input_whose_header_names_the_value_first_is_refused(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, header: str, line: int
) -> None:
    # "value,type" (a system that writes the value first) was looked up as the identity
    # ("value", "type"), and every row under it with its type and value swapped:
    # ("13800138000", "mobile"), each "not found", exit 0: the customers the file named
    # reported as none.
    (kind, value), *_ = known_identities(served, 1)  # a customer's: found, in type,value
    path = tmp_path / "ids.csv"
    path.write_text(f"{header}\r\n{value},{kind}\r\n", "utf-8")

    result = run_cli("lookup", "--in", "ids.csv", "--out", "r.csv", env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, f"ids.csv:{line}:", "type column first")
    assert value not in result.stderr  # a line, not its rows: personal data
    assert requests(served) == 0
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("kind", ["mobile", "Email", "wechat-unionid"])
def test_lookup_input_with_no_header_and_its_columns_swapped_is_refused(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, kind: str
) -> None:
    # An export that writes the value first, with no header: each row ("13800138000",
    # "mobile") was looked up as the identity of type "13800138000", "not found", exit 0:
    # the customers the file named reported as none, as a "value,type" header's were.
    (found, value), *_ = known_identities(served, 1)
    path = tmp_path / "ids.csv"
    path.write_text(f"{found},{value}\r\n{value},{kind}\r\n", "utf-8")

    result = run_cli("lookup", "--in", "ids.csv", "--out", "r.csv", env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, "ids.csv:2:", f"{kind}", "type column first")
    assert value not in result.stderr  # a line, not its rows: personal data
    assert requests(served) == 0
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("header", ["type,value", "identityType,identityValue,remark"])
def test_lookup_input_under_a_header_takes_a_value_named_as_an_identity_type(
    tmp_path: Path, header: str
) -> None:
    # A header says which column is the type: a row of an identity type of the user's own
    # whose value reads as a built-in type's name (a username "email") was refused as its
    # columns swapped, "are the columns swapped? ... put the type column first", of a file
    # that had put it first; the whole lookup refused for the one row.
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    extra = "," if header.count(",") == 2 else ""
    path.write_text(
        f"{header}\r\nmobile,13800138000{extra}\r\nusername,email{extra}\r\nnick,Mobile\r\n"
        # A type in the reference's style (lower case, dashes) as long as an openid.
        f"order-platform-customer-code,wechat{extra}\r\n"
        # One of mixed case, longer than an openid, that holds an openid's shape within it.
        f"Shop_Taobao_Account_Number_2024,mobile{extra}\r\n",
        "utf-8",
    )
    assert list(_identities(path, "utf-8")) == [
        Identity("mobile", "13800138000"),
        Identity("username", "email"),
        Identity("nick", "Mobile"),
        Identity("order-platform-customer-code", "wechat"),
        Identity("Shop_Taobao_Account_Number_2024", "mobile"),
    ]
    # With no header, the row is still refused as swapped, saying how to tell it is not.
    path.write_text("username,email\r\n", "utf-8")
    with pytest.raises(CommandError, match="a first line type,value says so"):
        list(_identities(path, "utf-8"))


@pytest.mark.parametrize(
    "row",
    [
        "13800138000,mobile",
        "+8613800138000,Mobile",
        "zhang@example.com,email",
        # As a phone or a spreadsheet writes a number, an address typed with a Chinese input
        # method, and WeChat's ids (an openid, a unionid): each was looked up as a type of
        # that name, "not found", exit 0.
        "(+86) 138-0013-8000,mobile",
        "138.0013.8000,mobile",
        "1.38001E+10,mobile",
        "zhang\uff20example.com,email",
        # Its marks as a Chinese input method types them (full-width), or a web page's
        # no-break space: looked up as a type, "not found", exit 0.
        "\uff08\uff0b86\uff09138\uff0d0013\uff0d8000,mobile",
        "138\u30000013\u30008000,mobile",
        "+86\u00a0138\u00a00013\u00a08000,mobile",
        "oLVPpjqs2BhvzwPj5A-vTYAX3GLc,wechat",
        "o6_bmjrPTlm6_2sgVt7hMZOPfL2M,wechat-unionid",
    ],
)
@pytest.mark.parametrize("header", ["type,value", "identityType,identityValue"])
def test_lookup_input_under_a_header_with_a_row_swapped_is_refused(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, header: str, row: str
) -> None:
    # A header naming the type first, over rows whose columns are swapped (pasted in the other
    # order): since the header was taken to say no row is swapped, "13800138000,mobile" was
    # looked up as an identity of a type "13800138000", "not found", exit 0, every row so. A
    # type holds no @ and is not a number: such a row is refused, as with no header, never
    # quoting the row (personal data).
    (tmp_path / "ids.csv").write_text(f"{header}\nmobile,13800000000\n{row}\n", "utf-8")

    result = run_cli("lookup", "--in", "ids.csv", "--out", "r.csv", env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, "ids.csv:3:", "are the columns swapped?")
    assert row.split(",")[0] not in result.stderr
    assert requests(served) == 0
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize(
    ("given", "said"), [("missing.csv", "no such file"), ("folder", "directory")]
)
def test_lookup_input_that_is_no_file_says_what_it_is(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, given: str, said: str
) -> None:
    # A directory was "--in ...: no such file", of a path that is there.
    (tmp_path / "folder").mkdir()

    result = run_cli("lookup", "--in", given, "--out", "r.csv", env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, f"--in {given}", said)
    assert requests(served) == 0
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("given", ["-", "fifo"])
def test_lookup_reads_standard_input_or_a_pipe(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, given: str
) -> None:
    # `cut -d, -f1,2 export.csv | dmhub-async lookup --in - ...` and `--in <(iconv ...)` were
    # refused ("it is read twice: save it to a file first"): the rows are copied first, to a
    # file only the user can read, removed at the end; a bad row names its line of "<stdin>".
    expected = known_identities(served, 3)
    text = "type,value\r\n" + "".join(f"{t},{v}\r\n" for t, v in expected)
    os.mkfifo(tmp_path / "fifo")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**env, "TMPDIR": str(tmp)}

    def run(content: str) -> subprocess.CompletedProcess[str]:
        if given == "-":
            return run_cli(
                "lookup", "--in", "-", "--out", "-", env=env, cwd=tmp_path, input=content
            )
        feeding = threading.Thread(
            target=(tmp_path / "fifo").write_text, args=(content,), daemon=True
        )
        feeding.start()  # blocks until the command opens the pipe
        try:
            return run_cli("lookup", "--in", "fifo", "--out", "-", env=env, cwd=tmp_path)
        finally:
            feeding.join(timeout=10)

    result = run(text)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert {(r["type"], r["value"]): r["customer_id"] for r in rows} == expected
    assert list(tmp.iterdir()) == []  # the copy removed

    bad = run(text + "mobile,13800138000.0\r\n")
    assert_one_line_error(
        bad, 1, f"{'<stdin>' if given == '-' else 'fifo'}:5: mobile value ends in .0"
    )
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"], ids=["CR (a Mac's)", "LF", "CRLF"])
def test_lookup_input_is_read_in_bounded_memory_whatever_its_line_ends(
    tmp_path: Path, end: str
) -> None:
    # A file whose lines end in a CR alone (Excel for Mac) is one line to a binary file's
    # iterator: it was read whole into memory (and its text beside it), 8 MB for 8 MB. Measured
    # in a process of its own: tracemalloc counts every thread's allocations, and in the whole
    # suite another test's thread once put 105 MB in this one's peak.
    path = tmp_path / "ids.csv"
    rows = 24_000
    path.write_text(end.join(f"wechat,o-{i:0120d}" for i in range(rows)) + end, "utf-8")
    assert path.stat().st_size >= 3_000_000
    code = (
        "import sys, tracemalloc\n"
        "from pathlib import Path\n"
        "from dmhub_async.cli._commands import _identities\n"
        "tracemalloc.start()\n"
        "read = sum(1 for _ in _identities(Path(sys.argv[1]), 'utf-8'))\n"
        "print(read, tracemalloc.get_traced_memory()[1])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,  # this checkout's dmhub_async first, as the suite's
    )
    assert result.returncode == 0, result.stderr
    read, peak = map(int, result.stdout.split())
    assert read == rows
    assert peak < 1_000_000, peak


def test_lookup_input_of_one_endless_line_names_it(tmp_path: Path) -> None:
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_bytes(b"type,value\r\nwechat,o-1\r\nwechat," + b"o" * 3_000_000)
    with pytest.raises(CommandError, match=r"^.*ids\.csv:3: a line of more than 1 MiB"):
        list(_identities(path, "utf-8"))


@pytest.mark.parametrize(
    "content",
    [
        b"sep=,\r\ntype,value\r\nwechat,o-1\r\nmobile,13800138000\r\n",  # Excel's hint line
        b"type,value\r\nwechat,o-1\r\nmobile,13800138000\r\n\x1a",  # DOS's end of file
        b"wechat,o-1\r\nmobile,13800138000\x1a",  # on the last row itself
    ],
    ids=["sep=,", "Ctrl-Z", "Ctrl-Z on the last row"],
)
def test_lookup_input_reads_excels_sep_line_and_a_dos_end_of_file(
    tmp_path: Path, content: bytes
) -> None:
    # `sep=,` (the line that tells Excel the separator) was "identity value must be a
    # non-empty string"; a file ending in Ctrl-Z (copy /b a.csv+b.csv, DOS tools) was
    # "expected type,value, not '\x1a'", or "holds a control character".
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _identities

    path = tmp_path / "ids.csv"
    path.write_bytes(content)
    assert list(_identities(path, "utf-8")) == [
        Identity("wechat", "o-1"),
        Identity("mobile", "13800138000"),
    ]


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (
            "sep=;\r\ntype;value\r\nwechat;o-1\r\n",
            "ids.csv:1: separated by ';' (its sep= line), not commas",
        ),
        ("sep=\t\r\nwechat\to-1\r\n", "ids.csv:1: separated by tabs (its sep= line), not commas"),
        ("type,value\r\nwechat\uff0co-1\r\n", "ids.csv:2: separated by full-width commas (\uff0c)"),
        ("wechat,o-1\r\nmobile\uff0c138\uff0cx\r\n", "ids.csv:2: separated by full-width commas"),
    ],
    ids=["sep=;", "sep=tab", "full-width comma", "full-width commas"],
)
def test_lookup_input_with_another_separator_says_which(
    tmp_path: Path, content: str, said: str
) -> None:
    # Each was "expected type,value, not 'wechat，o-1' (a value holding a comma must be
    # quoted...)": advice about quoting for a file typed with a Chinese input method's comma.
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_text(content, "utf-8")
    with pytest.raises(CommandError) as caught:
        list(_identities(path, "utf-8"))
    assert said in str(caught.value)
    assert "o-1" not in str(caught.value)  # the line, not its values


def test_lookup_of_an_excel_csv_utf8_writes_the_mark_excel_reads_it_by(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # An Excel "CSV UTF-8" file (its mark first) gave a result without the mark: opened in
    # Excel (double-click), every Chinese value in it was mojibake (小羊苏西 as 灏忕緤...).
    name = "小羊苏西"
    customer_id = served.ids()[0]
    served.call(served.sim.store.bind, customer_id, "myshop", name, None)
    write_identities(tmp_path / "ids.csv", [("myshop", name), ("wechat", "o-nobody")], "utf-8-sig")

    result = run_cli("lookup", "--in", "ids.csv", "--out", "r.csv", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    raw = (tmp_path / "r.csv").read_bytes()
    assert raw.startswith(codecs.BOM_UTF8)
    assert raw.decode("utf-8-sig").splitlines()[1] == f"myshop,{name},{customer_id}"

    plain = run_cli("lookup", "--in", "ids.csv", "--out", "-", env=env, cwd=tmp_path)
    assert plain.stdout.startswith("type,value,customer_id")  # a pipe gets no mark


def test_lookup_input_with_a_macs_cr_line_ends_reads_as_its_rows(tmp_path: Path) -> None:
    # A CSV saved by Excel for Mac ("CSV (Macintosh)"), or by any tool that ends lines in a
    # lone CR, was refused whole: "ids.csv:1: not a CSV line (new-line character seen in
    # unquoted field - do you need to open the file in universal-newline mode?)".
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_bytes('类型,值\rwechat,o-1\r\rmyshop,"小羊,苏西"\rmobile,13800138000'.encode("gbk"))
    assert list(_identities(path, "gbk")) == [
        Identity("wechat", "o-1"),
        Identity("myshop", "小羊,苏西"),
        Identity("mobile", "13800138000"),
    ]

    path.write_bytes(b"type,value\rwechat,o-1\r\nemail\rwechat,o-2\r")
    with pytest.raises(CommandError, match=r"ids\.csv:3: expected type,value"):
        list(_identities(path, "utf-8"))
    path.write_bytes(b"type,value\rwechat,o-1\rwechat,\xff\r")
    with pytest.raises(CommandError, match=r"ids\.csv:3: not UTF-8 text"):
        list(_identities(path, "utf-8"))


def test_lookup_input_of_files_joined_with_their_headers_skips_each_header(
    tmp_path: Path,
) -> None:
    # `cat shop1.csv shop2.csv > ids.csv` (or Excel sheets pasted one under the other): the
    # second header was looked up as the identity ("type", "value"), a row "not found" in the
    # result; one naming a name column had its rows refused.
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _identities

    path = tmp_path / "ids.csv"
    path.write_text(
        "type,value\r\nwechat,o-1\r\n类型,值,姓名\r\nwechat,o-2,王伟\r\nType,Value\r\nemail,a@b.c\r\n",
        "utf-8",
    )
    assert list(_identities(path, "utf-8")) == [
        Identity("wechat", "o-1"),
        Identity("wechat", "o-2"),
        Identity("email", "a@b.c"),
    ]


def test_lookup_input_separated_by_tabs_is_named_so(tmp_path: Path) -> None:
    # Excel's and WPS's "Text (Tab delimited)", GBK on Chinese Windows: "expected type,value,
    # not 'type\tvalue' (a value holding a comma must be quoted ...)", about commas.
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.txt"
    path.write_bytes("类型\t值\r\nmobile\t13800138000\r\n".encode("gbk"))
    with pytest.raises(CommandError, match=r"ids\.txt:1: .*tab.*save it as CSV") as caught:
        list(_identities(path, "gbk"))
    assert "comma must be quoted" not in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        b"type,value\r\nwechat,o-1\x00\r\nwechat,o-2\r\n",
        b"type,value\r\nwechat,o-1\r\n" + bytes(4096),  # zeros after the end: a crash's
    ],
    ids=["a NUL in a value", "zeros after the last line"],
)
def test_lookup_input_holding_a_nul_byte_names_it_not_utf16(tmp_path: Path, content: bytes) -> None:
    # Each was "holds NUL characters: a UTF-16 file (Excel's Unicode Text)?": the file is
    # UTF-8 (UTF-16 is named by its mark, or by NULs between its ASCII characters).
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_bytes(content)
    with pytest.raises(CommandError, match=r"ids\.csv:[23]: .*NUL") as caught:
        list(_identities(path, "utf-8"))
    assert "UTF-16" not in str(caught.value)

    path.write_bytes("type,value\r\nwechat,o-1\r\n".encode("utf-16-le"))  # no mark
    with pytest.raises(CommandError, match=r"ids\.csv:1: .*UTF-16"):
        list(_identities(path, "utf-8"))


@pytest.mark.parametrize(
    "address", ["wang\uff20example.com", "wang@example\u3002com", "\uff57ang@example.com"]
)
def test_lookup_input_refuses_an_email_typed_in_full_width(tmp_path: Path, address: str) -> None:
    # Typed with a Chinese input method left in full-width mode: wang＠example.com,
    # wang@example。com. Each was looked up as it was, "not found", exit 0, without a word.
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_text(f"type,value\r\nemail,li@example.com\r\nemail,{address}\r\n", "utf-8")
    with pytest.raises(CommandError, match=r"ids\.csv:3: email value .*full-width") as caught:
        list(_identities(path, "utf-8"))
    assert address not in str(caught.value)  # a line, not its value: personal data

    path.write_text("email,王@例子.中国\r\n", "utf-8")  # an address in Chinese is one
    assert list(_identities(path, "utf-8")) == [Identity("email", "王@例子.中国")]


@pytest.mark.parametrize(
    ("content", "encoding"),
    [
        ("type,value\r\nwechat,o-1\r\nmyshop,小羊".encode()[:-1], "utf-8"),
        ("type,value\r\nwechat,o-1\r\nmyshop,小羊".encode("gbk")[:-1], "gbk"),
    ],
    ids=["UTF-8", "GBK"],
)
def test_lookup_input_cut_inside_its_last_character_names_the_line(
    tmp_path: Path, content: bytes, encoding: str
) -> None:
    # A file cut short in the middle of a character at its end (a download stopped, `head -c`):
    # "error: 'utf-8' codec can't decode byte 0xe7 in position 0: unexpected end of data", no
    # file, no line, Python's words.
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_bytes(content)
    with pytest.raises(CommandError, match=r"ids\.csv:3: .*cut") as caught:
        list(_identities(path, encoding))
    assert "codec" not in str(caught.value)


@pytest.mark.parametrize("encoding", ["gbk", "gb2312", "big5"])
def test_lookup_input_in_utf8_read_as_gbk_is_told_utf8(tmp_path: Path, encoding: str) -> None:
    # A UTF-8 file without the mark (WPS, a web system's export) given --encoding gbk, as the
    # README advises for Excel's CSV: "not gbk text ... --encoding gb18030", which reads it as
    # mojibake (李娜 as 鏉庡): every Chinese value looked up "not found".
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    path.write_bytes("type,value\r\nwechat,o-1\r\nmyshop,李娜\r\n".encode())
    with pytest.raises(CommandError, match=r"ids\.csv:3: ") as caught:
        list(_identities(path, encoding))
    assert "UTF-8 text" in str(caught.value)
    assert "--encoding utf-8" in str(caught.value)
    assert "gb18030" not in str(caught.value)


@pytest.mark.parametrize("encoding", ["gbk", "gb18030"])
def test_lookup_input_in_utf8_that_reads_as_gbk_mojibake_is_refused(
    tmp_path: Path, encoding: str
) -> None:
    # A UTF-8 file whose every line happens to read as GBK (王伟 as 鐜嬩紵, 张敏 as 寮犳晱):
    # looked up as mojibake, every Chinese value "not found", exit 0, without a word.
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _identities
    from dmhub_async.cli._errors import CommandError

    path = tmp_path / "ids.csv"
    content = "type,value\r\nwechat,o-1\r\nmyshop,王伟\r\nmyshop,张敏\r\n"
    path.write_bytes(content.encode())
    with pytest.raises(CommandError, match=r"ids\.csv:3: UTF-8 text, not .*--encoding utf-8"):
        list(_identities(path, encoding))

    path.write_bytes(content.encode(encoding))  # the same in GBK: read as it is
    assert [i.value for i in _identities(path, encoding)] == ["o-1", "王伟", "张敏"]
    path.write_bytes("myshop,王伟\r\n".encode())  # one line alone may be GBK: not refused
    assert list(_identities(path, encoding)) == [Identity("myshop", "鐜嬩紵")]


def test_lookup_input_rows_after_a_cell_with_line_breaks_are_named_by_their_first_line(
    tmp_path: Path,
) -> None:
    # A remark typed with Alt+Enter in Excel spans lines in the CSV: its row was numbered by
    # its last line, so a lookup that failed named the line after it ("ids.csv:3" for the
    # row on line 2), and a bad row further down was named right only by chance.
    from dmhub_async import Identity
    from dmhub_async.cli._commands import _numbered_identities

    path = tmp_path / "ids.csv"
    path.write_text('类型,值,备注\r\nwechat,o-1,"第一行\r\n第二行"\r\n\r\nwechat,o-2\r\n', "utf-8")
    assert list(_numbered_identities(path, "utf-8")) == [
        (2, Identity("wechat", "o-1")),
        (5, Identity("wechat", "o-2")),
    ]


@pytest.mark.parametrize(
    ("given", "meant"), [("ANSI", "gbk"), ("UTF-8-BOM", "utf-8-sig"), ("utf8bom", "utf-8-sig")]
)
def test_an_encoding_named_as_windows_names_it_points_to_its_name_here(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, given: str, meant: str
) -> None:
    # Notepad's and Notepad++'s names ("ANSI", what Excel's CSV is on Chinese Windows;
    # "UTF-8-BOM"): "--encoding 'ANSI': no such encoding", and no word of what to give.
    (tmp_path / "ids.csv").write_text("wechat,o-1\n", encoding="utf-8")

    result = run_cli(
        "lookup", "--in", "ids.csv", "--out", "r.csv", "--encoding", given, env=env, cwd=tmp_path
    )

    assert_one_line_error(result, 2, "--encoding", f"--encoding {meant}")
    assert requests(served) == 0


def test_a_large_finished_export_is_read_only_in_part_to_say_what_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The refusal of an existing --out read the whole file back (and held every id it read):
    # minutes and gigabytes of memory for an export of tens of millions, to say "exists".
    from dmhub_async.cli import _files

    out = tmp_path / "customers.jsonl"
    out.write_bytes(b"".join(b'{"id": %d}\n' % i for i in range(1, 101)))
    monkeypatch.setattr(_files, "_READ_BACK", 11 * 10)  # the first ten records

    with pytest.raises(_files.UsageError, match="at least 10 customers"):
        _files.check_output(str(out), force=False, checkpoint="customers.ckpt")


@pytest.mark.parametrize(("fmt", "text"), [("jsonl", b""), ("csv", b"id,name\r\n")])
def test_a_finished_export_of_no_customer_reads_as_one(
    tmp_path: Path, fmt: str, text: bytes
) -> None:
    # A checkpointed export whose filters matched nobody ends with an empty file (a CSV's
    # header alone); the same command again said it "does not read as an export".
    from dmhub_async.cli import _files

    out = tmp_path / f"customers.{fmt}"
    out.write_bytes(text)
    with pytest.raises(_files.UsageError) as refused:
        _files.check_output(str(out), force=False, checkpoint="customers.ckpt", fmt=fmt)
    assert "reads as a finished export (0 customers)" in str(refused.value)
    assert "pass --force to export it again" in str(refused.value)

    out.write_bytes(b"id,name\r\n" if fmt == "jsonl" else b'{"id": 1}\n')  # the other's
    with pytest.raises(_files.UsageError, match="does not read as an export"):
        _files.check_output(str(out), force=False, checkpoint="customers.ckpt", fmt=fmt)
    out.write_bytes(b"\r\n")  # a blank line: no header at all (an IndexError, not a refusal)
    with pytest.raises(_files.UsageError, match="does not read as an export"):
        _files.check_output(str(out), force=False, checkpoint="customers.ckpt", fmt=fmt)


def test_a_failed_output_replace_raises_its_own_error_not_its_temp_files_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # `lookup --out FILE` failed its rename (the file system gone read-only), and the removal
    # of its temporary file failed after it: the removal's error was raised instead, naming a
    # hidden `.found.csv.xxxxxxxx.part`, the real failure only its context (as 7652dfe fixed
    # for the export's files).
    import errno

    from dmhub_async.cli._files import replace_on_success

    out = tmp_path / "found.csv"
    out.write_text("old\n")

    def rename_fails(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error", str(src), None, str(dst))

    def unlink_fails(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EROFS, "Read-only file system", str(args[0]))

    monkeypatch.setattr(os, "replace", rename_fails)
    monkeypatch.setattr(os, "unlink", unlink_fails)
    monkeypatch.setattr(Path, "unlink", unlink_fails)

    with (
        pytest.raises(OSError, match="Input/output error") as raised,
        replace_on_success(str(out), "utf-8", force=True) as fh,
    ):
        fh.write("type,value,customer_id\n")

    assert raised.value.errno == errno.EIO
    assert out.read_text() == "old\n"
    assert "could not remove the temporary file" in caplog.text
    assert "Read-only file system" in caplog.text


def test_a_lookup_timing_out_while_its_output_is_written_is_said_as_a_timeout(
    tmp_path: Path,
) -> None:
    # The service's timeout (APITimeoutError, a TimeoutError and so an OSError) raised while
    # rows are written is the service's, not the file's: it keeps its words.
    from dmhub_async import APITimeoutError
    from dmhub_async.cli._files import replace_on_success

    out = tmp_path / "found.csv"
    with pytest.raises(APITimeoutError) as raised, replace_on_success(str(out), "utf-8"):
        raise APITimeoutError("no answer in 30 s")

    assert str(raised.value) == "no answer in 30 s"
    assert raised.value.filename is None
    assert list(tmp_path.iterdir()) == []


def test_an_output_whose_temporary_file_cannot_be_made_is_named_not_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The directory full (or not writable): mkstemp's error named the hidden
    # `.found.csv.xxxxxxxx.part` the user never asked for, not `found.csv`.
    from dmhub_async.cli._errors import explain
    from dmhub_async.cli._files import replace_on_success

    out = tmp_path / "found.csv"
    temporary_files_cannot_be_made(monkeypatch, tmp_path / ".found.csv.ab12cd34.part")

    with pytest.raises(OSError, match="No space") as raised, replace_on_success(str(out), "utf-8"):
        pass

    assert explain(raised.value) == (1, f"{out}: No space left on device")
    assert not out.exists()


@pytest.mark.parametrize("fails", ["making", "writing"])
def test_standard_input_that_cannot_be_copied_says_where_and_why_not_the_hidden_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fails: str
) -> None:
    # `lookup --in -` copies its rows to a temporary file first (they are read twice). With the
    # temporary directory full, the error named the hidden copy nobody asked for
    # ("/tmp/.dmhub-lookup-k2j4.csv: No space left on device") or no file at all.
    from dmhub_async.cli import _files
    from dmhub_async.cli._errors import CommandError, explain

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(_files.tempfile, "tempdir", None)  # TMPDIR read again
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"type,value\n")))
    full = OSError(28, "No space left on device")
    if fails == "making":
        temporary_files_cannot_be_made(monkeypatch, tmp_path / ".dmhub-lookup-k2j4.csv")
    else:

        def copy_lines(*args: object) -> None:
            raise full

        monkeypatch.setattr(_files, "_copy_lines", copy_lines)

    # Before: the OSError itself, said as "<its file>: <why>" by the command line.
    with pytest.raises((CommandError, OSError)) as raised, _files.read_twice("-"):
        pytest.fail("no copy was made: nothing to read")
    code, line = explain(raised.value)

    assert code == 1
    assert line == (
        f"--in -: cannot copy it to a temporary file in {tmp_path} (its rows are read twice):"
        " No space left on device; set TMPDIR to a directory with room"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_lookups_output_is_on_disk_before_it_takes_the_old_ones_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The output took its name unsynced: after a power loss just then, `lookup --force` could
    # leave an empty file where the old result was (the rename on disk, the data not). Its
    # rows are now synced before the rename, as an export's are.
    from dmhub_async.cli._files import replace_on_success

    out = tmp_path / "found.csv"
    out.write_text("an earlier result\n", encoding="utf-8")
    synced: list[tuple[int, str]] = []
    fsync = os.fsync

    def watched(fd: int) -> None:
        synced.append((os.fstat(fd).st_size, out.read_text(encoding="utf-8")))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", watched)
    with replace_on_success(str(out), "utf-8", force=True) as text:
        text.write("type,value,customer_id\r\nmobile,13800000000,42\r\n")

    rows = "type,value,customer_id\r\nmobile,13800000000,42\r\n"
    assert out.read_bytes().decode() == rows
    # Synced whole, while the old file still held the name.
    assert (len(rows), "an earlier result\n") in synced


class _EndlessZeros(io.RawIOBase):
    """``/dev/zero`` as standard input: NUL bytes and no line end, for ever (here: until 64 MiB,
    so that a copy that never stops fails the test rather than fill the disk)."""

    def __init__(self) -> None:
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.given >= 64 << 20:
            return 0
        size = min(len(buffer), 1 << 20)
        buffer[:size] = bytes(size)
        self.given += size
        return size


def test_standard_input_of_one_endless_line_is_refused_as_it_is_copied(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `lookup --in -` (or --in /dev/zero, or a device: anything but a regular file) copies its
    # rows to a temporary file before reading them. /dev/zero was copied at 190 MB/s until the
    # temporary directory was full, as its one line (refused at 1 MiB once read) had no end.
    from dmhub_async.cli import _files
    from dmhub_async.cli._errors import CommandError

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(_files.tempfile, "tempdir", None)  # TMPDIR read again
    zeros = _EndlessZeros()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(zeros)))

    with pytest.raises(CommandError) as raised, _files.read_twice("-"):
        pytest.fail("an endless line was copied whole")

    assert str(raised.value) == (
        "<stdin>:1: a line of more than 1 MiB, which no row of identities is: is it the file you"
        " meant?"
    )
    assert zeros.given < 4 << 20  # read no further than the line's bound, and a block or so
    assert list(tmp_path.iterdir()) == []  # the copy removed


@pytest.mark.parametrize(
    "given",
    [b"", b"type,value\r\n", b"\xef\xbb\xbftype,value\n\n  \n", b"sep=,\n\x1a"],
    ids=["empty", "a header alone", "a marked header and blank lines", "sep= and Ctrl-Z"],
)
def test_a_lookup_of_no_identity_exits_1_as_an_id_list_of_no_id_does(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, given: bytes
) -> None:
    # `lookup` of an input with no row exited 0 with a file of its header ("resolved 0
    # identities"), where `export --id-list` of an empty file exits 1: the README's table
    # says a file read is 1. Both now refuse an input with nothing to look up, sending nothing.
    (tmp_path / "ids.csv").write_bytes(given)
    (tmp_path / "ids.txt").write_bytes(b"")

    from_file = run_cli("lookup", "--in", "ids.csv", "--out", "found.csv", env=env, cwd=tmp_path)
    from_stdin = run_cli(
        "lookup", "--in", "-", "--out", "found.csv", env=env, cwd=tmp_path, input=given.decode()
    )
    id_list = run_cli("export", "--out", "a.jsonl", "--id-list", "ids.txt", env=env, cwd=tmp_path)

    assert_one_line_error(from_file, 1, "--in ids.csv: holds no identity (type,value rows")
    assert_one_line_error(from_stdin, 1, "--in -: holds no identity (type,value rows")
    assert_one_line_error(id_list, 1, "--id-list ids.txt: holds no customer id")
    assert not (tmp_path / "found.csv").exists()
    assert not (tmp_path / "a.jsonl").exists()
    assert requests(served) == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX: SIGKILL, flock")
def test_a_lookup_killed_outright_leaves_temporary_files_the_next_lookup_removes(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # A lookup killed with SIGKILL (the OOM killer, kill -9) left its copy of standard input
    # (.dmhub-lookup-xxxxxxxx.csv, personal data) in $TMPDIR and its unfinished result
    # (.found.csv.xxxxxxxx.tmp) beside --out, for good: each such kill left two more. The next
    # lookup removes those older than a minute that are a lookup's own, held by no live run.
    import fcntl

    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**env, "TMPDIR": str(temp)}
    rows = "type,value\r\n" + "".join(f"mobile,1380000{i:04d}\r\n" for i in range(20))
    killed = (
        "import os, signal, sys\n"
        "from dmhub_async.cli import main\n"
        "def die(*args):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.fchmod = die  # as the result's temporary file is made: both files exist\n"
        "sys.exit(main(['lookup', '--in', '-', '--out', 'found.csv']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", killed],
        env=env,
        cwd=tmp_path,
        input=rows,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    (copy,) = temp.iterdir()
    assert re.fullmatch(r"\.dmhub-lookup-\w{8}\.csv", copy.name)
    assert copy.read_bytes() == rows.encode()
    (result,) = [p for p in tmp_path.iterdir() if p.name.startswith(".found.csv.")]
    assert result.name.endswith(".tmp")

    def aged(path: Path, text: str | None = "") -> Path:
        if text is not None:
            path.write_text(text)
        os.utime(path, (time.time() - 3600, time.time() - 3600), follow_symlinks=False)
        return path

    for path in (copy, result):
        aged(path, None)
    young = temp / ".dmhub-lookup-young123.csv"
    young.write_text("a run between mkstemp and its lock")
    held = aged(temp / ".dmhub-lookup-held1234.csv")
    target = aged(tmp_path / "target.csv", "keep me")
    link = temp / ".dmhub-lookup-link1234.csv"
    link.symlink_to(target)
    aged(link, None)
    others = [
        aged(temp / ".dmhub-lookup-notes.csv"),  # not a name mkstemp gives
        aged(temp / "dmhub-lookup-abcd1234.csv"),
        aged(tmp_path / ".found.csv.abcd1234.part"),  # an export's work file
        aged(tmp_path / ".other.csv.abcd1234.tmp"),  # beside another output
    ]
    write_identities(tmp_path / "ids.csv", [("mobile", "13800000000")])
    with held.open("rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_SH)  # a live run's
        again = run_cli("lookup", "--in", "ids.csv", "--out", "found.csv", env=env, cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert not copy.exists()
    assert not result.exists()
    assert read_csv(tmp_path / "found.csv")[0]["value"] == "13800000000"
    assert sorted(p.name for p in temp.iterdir()) == sorted(
        [young.name, held.name, link.name, others[0].name, others[1].name]
    )
    assert target.read_text() == "keep me"
    assert all(p.exists() for p in others)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reopens /proc/self/fd (Linux)")
def test_standard_input_from_a_file_is_read_where_it_is_not_copied(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `dmhub-async lookup --in - < ids.csv` copied the whole file to $TMPDIR before its first
    # lookup, as if it were a pipe: gigabytes written and read again, twice the disk, and
    # refused ("cannot copy it to a temporary file ... No space left on device") where the
    # temporary directory was small. A file can be read twice where it is.
    from dmhub_async import Identity
    from dmhub_async.cli import _files
    from dmhub_async.cli._commands import _identities

    path = tmp_path / "ids.csv"
    path.write_bytes(b"type,value\r\nwechat,o-1\r\nmobile,13800138000\r\n")
    temporary_files_cannot_be_made(monkeypatch, tmp_path / ".dmhub-lookup-k2j4.csv")
    expected = [Identity("wechat", "o-1"), Identity("mobile", "13800138000")]
    with path.open("rb") as raw:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))
        with _files.read_twice("-") as (infile, name):
            assert name == "<stdin>"
            # Read twice (the check, then the lookups), whole each time.
            assert list(_identities(infile, "utf-8", name)) == expected
            assert list(_identities(infile, "utf-8", name)) == expected


def test_standard_input_from_a_file_read_in_part_already_is_read_from_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `{ read -r first; dmhub-async lookup --in - ...; } < ids.csv`: the shell read the first
    # line, and the lookup takes the rest, as a pipe's reader would (a copy of what is left).
    from dmhub_async import Identity
    from dmhub_async.cli import _files
    from dmhub_async.cli._commands import _identities

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(_files.tempfile, "tempdir", None)  # TMPDIR read again
    path = tmp_path / "ids.csv"
    path.write_bytes(b"wechat,o-skipped\nwechat,o-2\n")
    with path.open("rb") as raw:
        raw.seek(len(b"wechat,o-skipped\n"))
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))
        with _files.read_twice("-") as (infile, name):
            assert list(_identities(infile, "utf-8", name)) == [Identity("wechat", "o-2")]
    assert list(tmp_path.iterdir()) == [path]  # the copy removed


@pytest.mark.parametrize(
    ("fmt", "covered", "records", "newer", "left_behind"),
    [
        # Pages of 10: more than 2 pages (20 records) past the bytes it covers.
        ("jsonl", 1_000, 20, 1, False),
        ("jsonl", 1_000, 21, 1, True),
        # A CSV's newline within a quoted field ends no record.
        ("csv", 1_000, 20, 1, False),
        ("csv", 1_000, 21, 1, True),
        # Written in the checkpoint's second (a coarse clock), or before it: in progress.
        ("jsonl", 1_000, 500, 0, False),
        ("jsonl", 1_000, 500, -1, False),
        # A checkpoint that covers no byte: none to count from.
        ("jsonl", 0, 500, 1, False),
    ],
)
@pytest.mark.parametrize("moved", [False, True], ids=["in place", "moved with its file"])
def test_a_checkpoint_is_said_left_behind_only_past_two_pages_of_a_later_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moved: bool,
    fmt: str,
    covered: int,
    records: int,
    newer: int,
    left_behind: bool,
) -> None:
    # A plain rerun of an export stopped in progress (its file at most a page of records past
    # its checkpoint) is told to resume it; one whose file a later --force export wrote whole
    # (more than two pages past) is told so: the records past it, and the file's time, decide.
    from dmhub_async.cli import _files

    monkeypatch.chdir(tmp_path)
    out = tmp_path / f"out.{fmt}"
    # A CSV's records each hold a newline within a quoted field, which ends no record.
    record = b'1,"a\nb"\n' if fmt == "csv" else b"{}\n"
    out.write_bytes(b"x" * covered + record * records)
    ckpt = tmp_path / "out.ckpt"
    # Moved: the checkpoint names the file where both were (resumed where they are now).
    dest = tmp_path / "gone" / out.name if moved else out
    scope = {"dest": str(dest), "format": fmt}
    recorded = {"scope": scope, "exported": 100, "bytes": covered, "page_size": 10}
    ckpt.write_text(json.dumps(recorded), "utf-8")
    os.utime(ckpt, (1_000_000, 1_000_000))
    os.utime(out, (1_000_000 + newer, 1_000_000 + newer))

    with pytest.raises(_files.UsageError) as refused:
        _files.check_output(out.name, force=False, export=True)

    said = str(refused.value)
    assert ("written after checkpoint out.ckpt" in said) is left_behind, said
    assert ("an export in progress (100 customers so far)" in said) is not left_behind
