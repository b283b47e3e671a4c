"""The command line shares its token (issue 13 item 7): DM Hub keeps one token per app id.

By default the CLI keeps it in a file in the user's cache directory, so two runs on one machine
share it without being told; ``--token-store``/``DMHUB_TOKEN_STORE`` choose another store.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

import pytest
from _cli_support import TIMEOUT, base_env, cli_command, jsonl_ids, simulator_process

from dmhub_async import (
    AuthenticationError,
    DMHubClient,
    FileTokenStore,
    MemoryTokenStore,
    RedisTokenStore,
)
from dmhub_async.cli import main
from dmhub_async.cli._errors import EXIT_ERROR, EXIT_USAGE, UsageError, explain
from dmhub_async.cli._settings import token_store
from dmhub_async.testing import DMHubSimulator


@pytest.mark.parametrize("code", [40001, 42001])
def test_a_refused_token_says_why_runs_must_share_it(code: int) -> None:
    # It said "DM Hub keeps one a app id".
    exit_code, line = explain(AuthenticationError("refused", status=401, code=code))

    assert exit_code == EXIT_ERROR
    assert "(DM Hub keeps one token per app id): share it with --token-store" in line
    assert "DMHUB_APP_ID and DMHUB_SECRET" in line


@pytest.mark.parametrize(
    ("status", "code", "check"),
    [
        (200, "40004", "check DMHUB_APP_ID and DMHUB_SECRET"),
        (200, "40013", "check DMHUB_APP_ID and DMHUB_SECRET"),
        (404, 404, "check DMHUB_BASE_URL, DMHUB_APP_ID and DMHUB_SECRET"),
    ],
    ids=["40004", "another code", "no token endpoint there"],
)
def test_a_refused_token_request_says_only_what_to_check(
    status: int, code: int | str, check: str
) -> None:
    # The token request itself refused (a wrong secret, 40004 or any other code; a base URL
    # with no token endpoint) is never another process's doing: the line said "another process
    # using the same app id may have taken the token ..., or check DMHUB_APP_ID and
    # DMHUB_SECRET" of 40013, and named no DMHUB_BASE_URL of a 404.
    refused = AuthenticationError("refused", status=status, code=code, path="/security/accesstoken")

    exit_code, line = explain(refused)

    assert exit_code == EXIT_ERROR
    assert line.endswith(f"; {check}"), line
    assert "another process" not in line
    assert "--token-store" not in line


async def test_a_refused_token_request_is_one_line_naming_the_variables_once() -> None:
    # The library's message says what to check in Python's words (app_id and secret); the
    # command line's says it in its own, once, not both.
    async with DMHubSimulator(customers=1) as sim:
        dm = DMHubClient(sim.app_id, "wrong", base_url=sim.url, token_store=MemoryTokenStore())
        async with dm:
            with pytest.raises(AuthenticationError) as info:
                await dm.customers.count()

    assert "check app_id and secret" in str(info.value)
    exit_code, line = explain(info.value)
    assert exit_code == EXIT_ERROR
    assert "app_id" not in line, line
    assert line.count("DMHUB_APP_ID and DMHUB_SECRET") == 1, line


def test_store_specs_name_the_existing_stores(tmp_path: Path) -> None:
    assert isinstance(token_store("memory"), MemoryTokenStore)
    file_store = token_store(f"file:{tmp_path}/t.json")
    assert isinstance(file_store, FileTokenStore)
    assert file_store.path == tmp_path / "t.json"
    redis_store = token_store("redis://127.0.0.1:1/0")  # connects lazily: nothing listens
    assert isinstance(redis_store, RedisTokenStore)
    asyncio.run(redis_store.aclose())


@pytest.mark.parametrize("spec", ["file:", "mem", "/tmp/tokens.json", "http://127.0.0.1"])
def test_a_bad_store_spec_is_a_usage_error_naming_the_flag(spec: str) -> None:
    with pytest.raises(UsageError, match="--token-store"):
        token_store(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "rediss:/:Hunter2Redis@cache.internal:6380/0",  # a slash short
        "redis+sentinel://:Hunter2Redis@cache.internal:26379",
        " redis://user:Hunter2Redis@cache.internal",  # pasted with a space
        # A / in the password, not percent-encoded: its start was read as the port, and
        # redis-py's refusal quoted it ("... integer value as 'Hunter2Redis'").
        "redis://:Hunter2Redis/x9@cache.internal:6380/0",
        # A password in the query, which redis-py reads (and the CLI keeps over the
        # variable's), under a scheme mistyped: no "@", so the spec was quoted whole.
        "redi://cache.internal:6380/0?password=Hunter2Redis",
        "rediss:/cache.internal:6380/0?db=1&PASSWORD=Hunter2Redis",
    ],
)
def test_a_bad_store_spec_never_shows_the_redis_password(spec: str) -> None:
    # The usage error quoted the spec whole, its password on stderr and in CI logs.
    with pytest.raises(UsageError, match="--token-store") as caught:
        token_store(spec)
    assert "Hunter2Redis" not in str(caught.value)


def test_a_redis_url_is_taken_in_any_case_of_its_scheme() -> None:
    # RedisTokenStore (and redis-py) take REDIS://; the CLI refused it, quoting the password.
    store = token_store("REDIS://:Hunter2Redis@127.0.0.1:1/0")
    assert isinstance(store, RedisTokenStore)
    asyncio.run(store.aclose())


def test_a_redis_store_takes_its_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the command line could give a Redis password: on every user's process list (ps).
    monkeypatch.setenv("DMHUB_REDIS_PASSWORD", "p@ss/w:rd#1")
    for spec, user in (
        ("redis://127.0.0.1:1/0", None),
        ("rediss://ops@127.0.0.1:1/0", "ops"),
        # An empty password, which redis-py skips (a template's redis://:${PW}@HOST, PW unset):
        # none was sent, the variable's never, and Redis refused "Authentication required".
        ("redis://:@127.0.0.1:1/0", None),
        ("redis://ops:@127.0.0.1:1/0", "ops"),
    ):
        store = token_store(spec)
        assert isinstance(store, RedisTokenStore)
        kwargs = store._redis.connection_pool.connection_kwargs
        assert (kwargs.get("username"), kwargs["password"]) == (user, "p@ss/w:rd#1")
        asyncio.run(store.aclose())
    # A password in the URL is the one used, before its "@" or in its query, which redis-py
    # reads too: one given as ?password= was overridden by the variable's, refused by Redis.
    for spec in ("redis://:its-own@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=its-own"):
        own = token_store(spec)
        assert isinstance(own, RedisTokenStore)
        assert own._redis.connection_pool.connection_kwargs["password"] == "its-own"
        asyncio.run(own.aclose())


def test_the_default_is_a_file_in_the_cache_directory_unless_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("DMHUB_TOKEN_STORE", raising=False)
    default = token_store(None)
    assert isinstance(default, FileTokenStore)
    assert default.path == tmp_path / "dmhub-async" / "tokens.json"

    monkeypatch.setenv("DMHUB_TOKEN_STORE", "memory")
    assert isinstance(token_store(None), MemoryTokenStore)
    assert isinstance(token_store(f"file:{tmp_path}/x.json"), FileTokenStore)  # the flag wins


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX modes")
def test_the_default_token_files_missing_directories_are_made_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A first run on a new account made ~/.cache 0755 (only dmhub-async/ was 0700).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.delenv("DMHUB_TOKEN_STORE", raising=False)
    old = os.umask(0o022)
    try:
        assert isinstance(token_store(None), FileTokenStore)
    finally:
        os.umask(old)
    made = [
        tmp_path / "home",
        tmp_path / "home" / ".cache",
        tmp_path / "home" / ".cache" / "dmhub-async",
    ]
    assert [oct(stat.S_IMODE(d.stat().st_mode)) for d in made] == ["0o700"] * 3


def test_an_unwritable_cache_directory_falls_back_to_memory_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DMHUB_TOKEN_STORE", raising=False)

    assert isinstance(token_store(None), MemoryTokenStore)
    assert "warning: cannot write" in capsys.readouterr().err


def test_a_cache_directory_that_cannot_lock_files_falls_back_to_memory_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cache directory on a file system without locks (an NFS home whose lock manager is
    not there: ENOLCK), which FileTokenStore refuses: the command's own default store falls
    back to memory there, saying so, as where it cannot write, instead of failing every
    command with TokenStoreError. Its probe leaves no file behind."""
    fcntl = pytest.importorskip("fcntl")
    import errno

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DMHUB_TOKEN_STORE", raising=False)

    assert isinstance(token_store(None), MemoryTokenStore)
    assert "warning: cannot lock files in" in capsys.readouterr().err
    assert list((tmp_path / "cache" / "dmhub-async").iterdir()) == []


def test_a_cache_directory_that_can_lock_files_keeps_the_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DMHUB_TOKEN_STORE", raising=False)

    store = token_store(None)
    assert isinstance(store, FileTokenStore)
    assert store.path == tmp_path / "cache" / "dmhub-async" / "tokens.json"
    assert capsys.readouterr().err == ""
    assert list((tmp_path / "cache" / "dmhub-async").iterdir()) == []


def test_two_concurrent_exports_for_one_app_id_both_finish_complete(tmp_path: Path) -> None:
    customers = 2000
    # 20 pages one at a time at 20 ms: both runs overlap for most of their walks. Without a
    # shared token each run's token fetch revokes the other's, and a run fails with 40001.
    with simulator_process(
        "--customers", str(customers), "--latency-ms", "20", cwd=tmp_path
    ) as settings:
        env = {**base_env(tmp_path / "cache"), **settings}
        runs = [
            subprocess.Popen(
                cli_command("export", "--out", f"run{n}.jsonl", "--concurrency", "1", "-q"),
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(2)
        ]
        results = [run.communicate(timeout=TIMEOUT) for run in runs]

    expected = DMHubSimulator(customers).customer_ids()
    for n, (run, (_, stderr)) in enumerate(zip(runs, results, strict=True)):
        assert run.returncode == 0, stderr
        assert jsonl_ids(tmp_path / f"run{n}.jsonl") == expected
    token_file = tmp_path / "cache" / "dmhub-async" / "tokens.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX modes")
@pytest.mark.parametrize("source", ["flag", "environment"])
def test_a_file_store_that_holds_something_else_is_refused_not_replaced(
    in_process: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    source: str,
) -> None:
    # `--token-store file:credentials`, a private file of the user's (0600, which the store
    # takes) given by mistake: the run went on without a word and the token's JSON replaced
    # the file, its content lost for good.
    private = tmp_path / "credentials"
    private.write_text("export DMHUB_SECRET=kept-elsewhere\n", encoding="utf-8")
    private.chmod(0o600)
    Path("ids.csv").write_text("mobile,13800000000\n", encoding="utf-8")
    flags = ["--token-store", f"file:{private}"] if source == "flag" else []
    if source == "environment":
        monkeypatch.setenv("DMHUB_TOKEN_STORE", f"file:{private}")

    code = main(["lookup", "--in", "ids.csv", "--out", "found.csv", "-q", *flags])

    assert code == EXIT_USAGE
    named = "--token-store" if source == "flag" else "DMHUB_TOKEN_STORE"
    assert f"{named} file:{private}: not a token file" in capsys.readouterr().err
    assert private.read_text(encoding="utf-8") == "export DMHUB_SECRET=kept-elsewhere\n"
    assert not Path("found.csv").exists()


def test_a_file_store_takes_a_new_an_empty_or_a_token_file(
    in_process: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("ids.csv").write_text("mobile,13800000000\n", encoding="utf-8")
    empty = tmp_path / "empty.json"
    empty.touch(mode=0o600)
    for store in (tmp_path / "new.json", tmp_path / "new.json", empty):  # made, then reused
        flags = ["--token-store", f"file:{store}"]
        assert main(["lookup", "--in", "ids.csv", "--out", "-", "-q", *flags]) == 0
    assert "access_token" in empty.read_text(encoding="utf-8")
    capsys.readouterr()


def test_garbage_in_the_default_token_file_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The command's own file: garbage there holds no token, and is replaced at the next fetch.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("DMHUB_TOKEN_STORE", raising=False)
    (tmp_path / "dmhub-async").mkdir(mode=0o700)
    (tmp_path / "dmhub-async" / "tokens.json").write_text("{garbage", encoding="utf-8")
    assert isinstance(token_store(None), FileTokenStore)
