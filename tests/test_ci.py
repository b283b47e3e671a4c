"""What CI runs: the derandomized property tests, the README's test command, the check that
a Redis test leaves no connection open, and each test's redis-server its own."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from _helpers import hypothesis_profile
from _redis import REDIS_SERVER, SKIP_REASON, PortTaken, RedisServer, no_leaks
from hypothesis import settings

from dmhub_async.testing import _redis


def test_ci_draws_the_same_examples_every_run() -> None:
    assert hypothesis_profile({"CI": "true"}) == "ci"
    assert hypothesis_profile({"CI": "1"}) == "ci"
    ci = settings.get_profile("ci")
    assert ci.derandomize
    assert ci.database is None


def test_a_local_run_explores() -> None:
    assert hypothesis_profile({}) == "default"
    assert hypothesis_profile({"CI": "false"}) == "default"
    assert not settings.get_profile("default").derandomize


def test_this_run_uses_the_profile_its_environment_asks_for() -> None:
    assert settings.default.derandomize == (hypothesis_profile(os.environ) == "ci")


def _leave_a_socket_in_a_cycle() -> None:
    left: list[Any] = [socket.socket()]
    left.append(left)  # only the collector frees it


def test_the_leak_check_finds_a_connection_the_test_left_in_a_cycle() -> None:
    # Objects from before the test are frozen out of the collector's sight while it runs
    # (tests/_redis.py): what the test itself left for the collector must still be found.
    check = no_leaks()
    check.__enter__()
    _leave_a_socket_in_a_cycle()
    with pytest.raises(pytest.fail.Exception, match=r"left open by this test(.|\n)*unclosed"):
        check.__exit__(None, None, None)


@pytest.fixture
def two_dirs(tmp_path: Path) -> tuple[Path, Path]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return tmp_path / "a", tmp_path / "b"


def test_a_redis_server_given_a_port_another_listens_on_starts_on_a_port_of_its_own(
    two_dirs: tuple[Path, Path],
) -> None:
    # free_port() closes its socket before redis-server binds the port: two xdist workers
    # could be given one port. The second's redis-server exited ("Address already in use"),
    # but the first's answered its PING: start() returned, and its test used (and flushed,
    # and killed) the other test's Redis.
    first = RedisServer(two_dirs[0])
    first.start()
    second = RedisServer(two_dirs[1])
    second.port, second.url = first.port, first.url  # what free_port() gave both
    try:
        second.start()
        assert first.command("SET", "first's", "1") == "+OK"
        assert second.command("GET", "first's") == "$-1"  # not there: a server of its own
        assert second.port != first.port
        assert second.url == f"redis://127.0.0.1:{second.port}/0"
    finally:
        second.kill()
        first.kill()


def test_a_redis_server_given_a_port_another_program_answers_on_starts_on_one_of_its_own(
    two_dirs: tuple[Path, Path],
) -> None:
    # A program of another protocol listening on the port (its greeting not UTF-8, as a
    # database's handshake is): start() read that greeting as its own server's INFO, before
    # its redis-server had exited ("Address already in use"), and raised a raw
    # UnicodeDecodeError, its redis-server left unwaited for.
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.05)
    over = threading.Event()

    def greet() -> None:
        while not over.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # no one yet (a timeout)
                continue
            with connection, contextlib.suppress(OSError):
                connection.sendall(b"\xff\xfe\x00not redis\r\n")

    greeter = threading.Thread(target=greet, daemon=True)
    greeter.start()
    server = RedisServer(two_dirs[0])
    taken = listener.getsockname()[1]
    server.port, server.url = taken, f"redis://127.0.0.1:{taken}/0"
    try:
        server.start()
        assert server.port != taken
        assert server.command("PING") == "+PONG"
    finally:
        server.kill()
        over.set()
        greeter.join(5)
        listener.close()


def test_a_redis_server_restarted_on_a_port_another_took_says_so(
    two_dirs: tuple[Path, Path],
) -> None:
    # Restarted (a test of Redis away and back), it keeps its URL: its port taken meanwhile by
    # another's server, that server answered the restart's PING, and the test went on with it.
    server = RedisServer(two_dirs[0])
    server.start()
    server.kill()
    other = RedisServer(two_dirs[1])
    other.port, other.url = server.port, server.url
    other.start()
    try:
        with pytest.raises(PortTaken, match=f"127.0.0.1:{server.port} is another process's"):
            server.start()
    finally:
        server.kill()
        other.kill()


def test_a_server_port_where_the_ephemeral_range_holds_the_servers_ports_is_the_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A machine whose ephemeral range holds the servers' ports (ip_local_port_range 1024
    # 65535): a port drawn from them could be any outgoing connection's meanwhile, so the
    # kernel's own free port is taken instead, as free_port() finds it.
    monkeypatch.setattr(_redis, "_ephemeral", lambda: range(1024, 65536))
    monkeypatch.setattr(_redis, "free_port", lambda: 1)
    assert _redis.server_port({}) == 1


def test_xdist_workers_start_their_redis_servers_on_ports_apart_outside_the_ephemeral_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ports of two workers' servers never meet, and none is a port the kernel hands to an
    # outgoing connection (or to bind(0)) meanwhile: a server restarted on its port found it
    # taken by a client's socket.
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    ephemeral = _redis._ephemeral()
    if ephemeral is None or ephemeral.start < _redis.SERVER_PORTS.stop:
        pytest.skip("no ephemeral range said, or it holds the servers' ports")
    ports = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        ports[worker] = {RedisServer(tmp_path).port for _ in range(30)}
    assert max(ports["gw0"]) < min(ports["gw1"])
    assert not any(port in ephemeral for port in ports["gw0"] | ports["gw1"])
