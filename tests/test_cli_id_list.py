"""``dmhub-async export --id-list FILE``: the customers of a file of ids, in every export mode.

The library exported an ``id_list`` (one process, a checkpoint, shards on processes or a
queue); the command line had no way to give one: a user with 300,000 ids in a file had none.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from _cli_support import (
    SECRET,
    ServedSimulator,
    assert_one_line_error,
    cli_command,
    cli_in_process,
    jsonl_ids,
    read_csv,
    run_cli,
)
from _helpers import a_worker, run_unprivileged
from _redis import RedisServer

pytestmark = pytest.mark.timeout(180)

#: Ids of no customer: past every id the simulator gives.
NOBODY = 9_000_000_000


def requests(served: ServedSimulator) -> int:
    return sum(served.sim.counters.routes.values())


def listed(served: ServedSimulator, share: int = 3) -> list[int]:
    """Every ``share``-th customer's id, shuffled, some twice, and ids of no customer."""
    ids = served.ids()[::share]
    given = [*ids, *ids[:25], NOBODY, NOBODY + 7]
    random.Random(4).shuffle(given)
    return given


def write_ids(path: Path, ids: list[int], *, newline: str = "\n", prefix: str = "") -> Path:
    """``ids`` one a line, with blank lines and white space around some, as files come."""
    lines = [f"  {i}\t" if k % 7 == 0 else str(i) for k, i in enumerate(ids)]
    lines[len(lines) // 2 : len(lines) // 2] = ["", "   "]
    path.write_bytes((prefix + newline.join(lines) + newline + newline).encode())
    return path


def parts(directory: Path) -> list[int]:
    """Every customer id in the parts of a sharded JSONL export, repeats kept."""
    return [i for part in sorted(directory.glob("part-*.jsonl")) for i in jsonl_ids(part)]


def test_an_export_of_an_id_list_file_has_each_listed_customer_once(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    given = listed(served)
    write_ids(tmp_path / "ids.txt", given, newline="\r\n", prefix="\ufeff")  # Notepad's

    result = run_cli("export", "--out", "some.jsonl", "--id-list", "ids.txt", env=env, cwd=tmp_path)
    as_json = run_cli(
        "export",
        "--out",
        "some.csv",
        "--id-list",
        "ids.txt",
        "--select",
        "name",
        "--report",
        "json",
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    wanted = sorted(set(given) & set(served.ids()))
    assert jsonl_ids(tmp_path / "some.jsonl") == wanted  # in id order, each once
    count = len(wanted)
    assert f"exported      {count} customers" in result.stdout
    assert f"count         {count} before, {count} after" in result.stdout
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert (report["exported"], report["complete"]) == (count, True)
    rows = read_csv(tmp_path / "some.csv")
    assert [int(r["id"]) for r in rows] == wanted
    assert list(rows[0]) == ["id", "name"]


def test_an_id_list_is_combined_with_the_other_filters(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    given = listed(served, share=2)
    write_ids(tmp_path / "ids.txt", given)
    since = "2016-01-02T00:00:00Z"

    result = run_cli(
        "export",
        "--out",
        "leads.jsonl",
        "--id-list",
        "ids.txt",
        "--stage",
        "lead",
        "--created-from",
        since,
        "-q",
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    rows = {row["id"]: row for row in served.rows()}
    wanted = [
        i
        for i in sorted(set(given) & set(rows))
        if rows[i]["stage"] == "lead" and rows[i]["dateCreated"] >= since
    ]
    assert wanted  # the test means something
    assert jsonl_ids(tmp_path / "leads.jsonl") == wanted


def test_a_checkpointed_export_of_an_id_list_resumes_with_the_list_in_another_order(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    given = listed(served)
    write_ids(tmp_path / "ids.txt", given)
    write_ids(tmp_path / "reversed.txt", [*given[::-1], *given[:40]])
    write_ids(tmp_path / "other.txt", given[1:])
    command = ["export", "--out", "some.jsonl", "--checkpoint", "some.ckpt", "--page-size", "20"]
    # Three pages, then the connection drops: the run fails with its checkpoint kept.
    served.sim.faults.paths = ("GET /v1/customers",)
    served.sim.faults.script(["ok"] * 3 + ["reset"])

    failed = run_cli(
        *command, "--id-list", "ids.txt", "--max-retries", "0", "-q", env=env, cwd=tmp_path
    )
    assert failed.returncode == 1, failed.stderr
    assert (tmp_path / "some.ckpt").exists()
    other = run_cli(*command, "--id-list", "other.txt", env=env, cwd=tmp_path)
    none = run_cli(*command, env=env, cwd=tmp_path)
    resumed = run_cli(*command, "--id-list", "reversed.txt", env=env, cwd=tmp_path)

    # Named by the flag the user typed: "idList" is the library's (and the wire's) name.
    assert_one_line_error(other, 1, "belongs to another export (--id-list: other ids")
    assert_one_line_error(none, 1, "belongs to another export (--id-list: only the checkpoint")
    for refused in (other, none):
        assert "idList" not in refused.stderr
    assert str(NOBODY) not in other.stderr  # the lists are not quoted
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed       from a checkpoint" in resumed.stdout
    assert jsonl_ids(tmp_path / "some.jsonl") == sorted(set(given) & set(served.ids()))
    assert not (tmp_path / "some.ckpt").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sharded_export_of_an_id_list_has_each_listed_customer_once(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, workers: int
) -> None:
    given = listed(served)
    write_ids(tmp_path / "ids.txt", given)
    write_ids(tmp_path / "again.txt", given[::-1])
    write_ids(tmp_path / "other.txt", given[1:])
    command = ["export", "--out", "parts", "--shards", "3", "--workers", str(workers)]

    result = run_cli(*command, "--id-list", "ids.txt", "--stage", "lead", env=env, cwd=tmp_path)
    sent = requests(served)
    again = run_cli(
        *command, "--id-list", "again.txt", "--stage", "lead", "--report", "json",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    other = run_cli(*command, "--id-list", "other.txt", "--stage", "lead", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    leads = {row["id"] for row in served.rows() if row["stage"] == "lead"}
    wanted = sorted(set(given) & leads)
    assert parts(tmp_path / "parts") == wanted  # each once, in id order across the parts
    # The same ids in another order: the same export, taken up complete, nothing sent.
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["complete"] is True
    assert requests(served) == sent
    # Named by the flag the user gave: "other filters" alone sent them looking through
    # every flag for one they had changed.
    assert_one_line_error(other, 1, "other filters (--id-list: other ids")
    assert "id_list" not in other.stderr


def test_a_sharded_export_of_ids_of_no_customer_reports_the_ids_listed_not_a_count(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # Its report said "1,000 counted when planned" of an export of 402 customers, complete:
    # nothing was counted (a plan of ids sends nothing), and 598 customers looked missing.
    given = [*served.ids()[:300], *range(NOBODY, NOBODY + 200)]
    write_ids(tmp_path / "ids.txt", given)
    command = ["export", "--out", "parts", "--shards", "4", "--id-list", "ids.txt"]

    text = run_cli(*command, "--stage", "lead", env=env, cwd=tmp_path)
    as_json = run_cli(*command, "--stage", "lead", "--report", "json", env=env, cwd=tmp_path)
    windows = run_cli("export", "--out", "all", "--shards", "2", env=env, cwd=tmp_path)

    assert text.returncode == 0, text.stderr
    leads = len([row for row in served.rows()[:300] if row["stage"] == "lead"])
    assert 0 < leads < 300
    assert text.stdout.splitlines()[0] == (
        f"exported {leads} customers in 4 parts to parts (4 of 4 complete; 500 ids listed, "
        f"{500 - leads} of them of no customer, or of one the filters leave out; 0 retries)"
    )
    report = json.loads(as_json.stdout)
    assert (report["complete"], report["exported"], report["ids_listed"]) == (True, leads, 500)
    # A plan of windows still says what it counted.
    assert windows.returncode == 0, windows.stderr
    assert "1,500 counted when planned" in windows.stdout


def test_an_export_of_ids_of_no_customer_in_one_process_reports_the_ids_listed(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # Its report said "exported 110 customers ... count 110 before, 110 after" of a list of
    # 500 ids: nothing said that 390 of them were of no customer (the sharded report does).
    given = [*served.ids()[:300], *range(NOBODY, NOBODY + 200), *served.ids()[:10]]  # repeats
    write_ids(tmp_path / "ids.txt", given)
    command = ["export", "--id-list", "ids.txt", "--stage", "lead"]

    text = run_cli(*command, "--out", "some.jsonl", env=env, cwd=tmp_path)
    as_json = run_cli(*command, "--out", "more.jsonl", "--report", "json", env=env, cwd=tmp_path)
    unlisted = run_cli("export", "--out", "all.jsonl", "--report", "json", env=env, cwd=tmp_path)

    assert text.returncode == 0, text.stderr
    leads = len([row for row in served.rows()[:300] if row["stage"] == "lead"])
    assert 0 < leads < 300
    assert (
        f"id list       500 ids listed, {500 - leads} of them of no customer, or of one the "
        "filters leave out"
    ) in text.stdout.splitlines()
    report = json.loads(as_json.stdout)
    assert (report["complete"], report["exported"], report["ids_listed"]) == (True, leads, 500)
    assert json.loads(unlisted.stdout)["ids_listed"] is None


def test_a_queued_export_of_an_id_list_gives_its_workers_the_ids_through_its_directory(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, redis: RedisServer
) -> None:
    given = listed(served)
    write_ids(tmp_path / "ids.txt", given)

    with a_worker(redis.url, env, tmp_path) as worker_said:
        result = run_cli(
            "export",
            "--out",
            "parts",
            "--shards",
            "3",
            "--queue",
            redis.url,
            "--id-list",
            "ids.txt",
            "--report",
            "json",
            env=env,
            cwd=tmp_path,
        )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["complete"] is True
    assert parts(tmp_path / "parts") == sorted(set(given) & set(served.ids()))
    assert "Traceback" not in worker_said[0], worker_said
    assert SECRET not in worker_said[0]
    # A job names its slice of the list in the directory, not the ids (nor on a command line).
    assert (tmp_path / "parts" / "id_list.txt").exists()


#: Files of ids refused before anything is sent, and what the one line says.
BAD_FILES: list[tuple[str, bytes | None, tuple[str, ...]]] = [
    ("missing", None, ("--id-list ids.txt: no such file",)),
    ("empty", b"", ("--id-list ids.txt: holds no customer id",)),
    ("blank lines alone", b"\n  \r\n\t\n", ("--id-list ids.txt: holds no customer id",)),
    ("a word", b"3000000001\n\nname\n", ("ids.txt:3: not a customer id: 'name'",)),
    ("a float", b"3000000001\n3000000002.0\n", ("ids.txt:2: not a customer id: '3000000002.0'",)),
    ("negative", b"-5\n", ("ids.txt:1: not a customer id: '-5'",)),
    ("a sign", b"+5\n", ("ids.txt:1: not a customer id: '+5'", "from 0 to")),
    ("too big", b"1\n9223372036854775808\n", ("ids.txt:2:", "'9223372036854775808'")),
    ("two columns", b"1,wang\n", ("ids.txt:1: not a customer id: '1,wang'",)),
    ("full-width digits", "１２３\n".encode(), ("ids.txt:1: not a customer id: '１２３'",)),
    ("a long line", b"1\n" + b"x" * 5000 + b"\n", ("ids.txt:2:", "'" + "x" * 40 + "'...")),
    ("a lone CR ends a line", b"1\r2\rthree\r", ("ids.txt:3: not a customer id: 'three'",)),
    # Quoted to 40 characters, not bytes: a cut at 40 bytes split a character.
    ("a line of names", ("1\n" + "王" * 30 + "\n").encode(), (f"id: '{'王' * 30}' (one id",)),
    ("a long line of names", ("王" * 50 + "\n").encode(), (f"id: '{'王' * 40}'... (one",)),
    # Windows PowerShell's `>` writes UTF-16: its line was quoted as '��3\x000\x000\x00...'.
    (
        "UTF-16",
        "3000000001\r\n3000000002\r\n".encode("utf-16"),
        ("ids.txt:1: a UTF-16 file", "save it as UTF-8"),
    ),
    (
        "UTF-16 without its mark",
        "3000000001\r\n".encode("utf-16-le"),
        ("ids.txt:1: a UTF-16 file", "save it as UTF-8"),
    ),
]


@pytest.mark.parametrize(
    ("content", "words"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_a_file_of_ids_that_is_not_one_is_refused_naming_its_line_before_anything_is_sent(
    served: ServedSimulator,
    in_process: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    content: bytes | None,
    words: tuple[str, ...],
) -> None:
    # In this process: three runs of a new interpreter for each of 17 files took 58 s a file
    # on one core, for a refusal said before any request (the file's read is the same code).
    if content is not None:
        (tmp_path / "ids.txt").write_bytes(content)

    runs = [
        cli_in_process(capsys, "export", "--out", "x.jsonl", "--id-list", "ids.txt", *more)
        for more in ([], ["--checkpoint", "x.ckpt"], ["--shards", "2"])
    ]

    for result in runs:
        assert_one_line_error(result, 1, *words)
        assert "x" * 41 not in result.stderr
    assert requests(served) == 0
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["ids.txt"] if content is not None else [])  # no output, no checkpoint


@pytest.mark.parametrize("where", ["under a directory it cannot enter", "a name too long"])
def test_a_file_of_ids_that_cannot_be_looked_at_is_refused_naming_the_flag(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path, where: str
) -> None:
    # `--id-list locked/ids.txt`, locked a directory this user may not enter, or a name longer
    # than a file system takes: "locked/ids.txt: Permission denied" (of the look for a
    # directory, before the read whose refusal names the flag), exit 1, naming no flag.
    if where == "a name too long":
        given, strerror = "\u5ba2" * 90 + ".txt", "File name too long"
        result = run_cli("export", "--out", "x.jsonl", "--id-list", given, env=env, cwd=tmp_path)
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        (locked / "ids.txt").write_text("3000000001\n", encoding="utf-8")
        given, strerror = "locked/ids.txt", "Permission denied"
        command = cli_command("export", "--out", "x.jsonl", "--id-list", given)
        result = run_unprivileged(command, locked, env=env, cwd=tmp_path)

    assert_one_line_error(result, 1, f"--id-list {given}: cannot read it: {strerror}")
    assert requests(served) == 0
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("out", ["ids.jsonl", "./ids.jsonl"])
def test_an_export_over_its_own_id_list_is_refused_even_with_force(
    served: ServedSimulator,
    in_process: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    out: str,
) -> None:
    # `--out ids.jsonl --id-list ids.jsonl --force` replaced the list with the export, exit 0:
    # the command's own input, which --out refuses (lookup's --in, a checkpoint), was not
    # counted as one.
    ids = write_ids(tmp_path / "ids.jsonl", served.ids()[:10])
    given = ids.read_bytes()

    result = cli_in_process(capsys, "export", "--out", out, "--id-list", "ids.jsonl", "--force")

    assert_one_line_error(result, 2, f"--out {out} is also an input of this command")
    assert ids.read_bytes() == given
    assert requests(served) == 0


def test_ids_from_standard_input(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    given = listed(served)
    text = "\n".join(map(str, given)) + "\n"

    result = run_cli(
        "export", "--out", "parts", "--shards", "2", "--id-list", "-", "-q", env=env,
        cwd=tmp_path, input=text,
    )  # fmt: skip
    bad = run_cli(
        "export", "--out", "x.jsonl", "--id-list", "-", env=env, cwd=tmp_path,
        input="3000000001\n\nnope\n",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert parts(tmp_path / "parts") == sorted(set(given) & set(served.ids()))
    assert_one_line_error(bad, 1, "<stdin>:3: not a customer id: 'nope'")


def test_a_file_of_ids_that_is_a_directory_or_holds_a_secret_is_refused_without_it(
    served: ServedSimulator,
    in_process: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # Another file given by mistake (an env file): its line quoted, never the secret.
    (tmp_path / "settings.env").write_text(f"DMHUB_SECRET={SECRET}\n", encoding="utf-8")
    (tmp_path / "ids").mkdir()

    wrong_file = cli_in_process(capsys, "export", "--out", "x.jsonl", "--id-list", "settings.env")
    directory = cli_in_process(capsys, "export", "--out", "x.jsonl", "--id-list", "ids")

    assert_one_line_error(wrong_file, 1, "settings.env:1: not a customer id")
    assert SECRET[:8] not in wrong_file.stderr
    assert_one_line_error(directory, 1, "--id-list ids is a directory")
    assert requests(served) == 0


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_ids_padded_with_zeros_are_the_ids_however_wide_the_padding(
    tmp_path: Path, newline: str
) -> None:
    # "A whole number from 0 to 2^63 - 1", the refusal says; one padded with zeros to a fixed
    # width (a column formatted so in a spreadsheet, a database's CHAR(24)) past 19 characters
    # was refused as no id, though the same id padded to 19 went in.
    from dmhub_async.cli._files import read_id_file
    from dmhub_async.resources._filters import checked_ids

    wide = [3_000_000_007, 0, 2**63 - 1, 42]
    lines = [f"{i:024d}" for i in wide] + [f"{wide[0]:019d}", "", "  "]
    path = tmp_path / "ids.txt"
    path.write_bytes(("\ufeff" + newline.join(lines) + newline).encode())

    ids = read_id_file(str(path))

    assert ids == [*wide, wide[0]]
    assert checked_ids("export_customers", ids) == ids  # as the library takes them


def test_an_id_past_the_last_is_refused_whatever_its_padding(tmp_path: Path) -> None:
    from dmhub_async.cli._errors import CommandError
    from dmhub_async.cli._files import read_id_file

    path = tmp_path / "ids.txt"
    path.write_bytes(b"1\n0000" + str(2**63).encode() + b"\n")
    with pytest.raises(
        CommandError, match=r"ids\.txt:2: not a customer id: '00009223372036854775808'"
    ):
        read_id_file(str(path))


def test_a_checkpoint_of_other_filters_is_refused_naming_their_flags(
    served: ServedSimulator, env: dict[str, str], tmp_path: Path
) -> None:
    # The refusal named the wire's query ("filters: {'stage': 'lead', 'dateCreatedFrom':
    # ...}"), not --stage or --created-from, which the user typed (c9e4696 for --id-list).
    command = ["export", "--out", "some.jsonl", "--checkpoint", "some.ckpt", "--page-size", "20"]
    served.sim.faults.paths = ("GET /v1/customers",)
    served.sim.faults.script(["ok"] * 3 + ["reset"])
    since = "2000-01-01T00:00:00Z"
    failed = run_cli(
        *command, "--created-from", since, "--max-retries", "0", "-q", env=env, cwd=tmp_path
    )
    assert failed.returncode == 1, failed.stderr
    assert (tmp_path / "some.ckpt").exists()

    other = run_cli(
        *command, "--created-from", since, "--stage", "lead", "--select", "date_join",
        env=env, cwd=tmp_path,
    )  # fmt: skip

    assert_one_line_error(
        other,
        1,
        "belongs to another export (",
        "--stage: none in the checkpoint, 'lead' now",
        "--select: none in the checkpoint, 'id,date_join' now",
    )
    assert "--created-from" not in other.stderr  # the same in both
    for wire in ("dateCreatedFrom", "dateJoin", "filters:"):
        assert wire not in other.stderr, other.stderr
