"""RedisRateLimiter: one requests-per-second limit for every client on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _redis import RedisServer, rate_turn, redis_server, store_get

from dmhub_async import (
    DMHubClient,
    DMHubError,
    InvalidRequestError,
    RedisRateLimiter,
    RedisTokenStore,
    TokenStoreError,
)
from dmhub_async._shared_rate import _MAX_RATE, _MIN_RATE, _SPREAD
from dmhub_async.shards._queue import check_queue, worker
from dmhub_async.testing import DMHubSimulator

pytestmark = pytest.mark.timeout(60)


def busiest_second(stamps: list[float]) -> int:
    """The most requests that arrived within any one second (a window from each arrival)."""
    stamps = sorted(stamps)
    return max(sum(1 for s in stamps[i:] if s < start + 1.0) for i, start in enumerate(stamps))


class Recorded(RedisRateLimiter):
    """The limiter, noting when it lets each request go."""

    granted: list[float] = []  # noqa: RUF012 - shared by the three clients on purpose

    async def acquire(self) -> None:
        await super().acquire()
        self.granted.append(time.monotonic())


async def test_three_clients_share_one_limit(redis: RedisServer) -> None:
    Recorded.granted.clear()  # a run of its own: a rerun in the process counted 122 grants
    async with DMHubSimulator(customers=10) as sim:
        waited: list[float] = []  # the waits the limiters asked for, one after another

        async def sleep(seconds: float) -> None:
            waited.append(seconds)
            await asyncio.sleep(seconds)

        limiters = [Recorded(redis.url, 20, key="app", sleep=sleep) for _ in range(3)]
        clients = [
            DMHubClient(sim.app_id, sim.secret, base_url=sim.url, rate_limit=limiter)
            for limiter in limiters
        ]
        started = time.monotonic()
        try:
            await asyncio.gather(*(c.customers.count() for c in clients for _ in range(20)))
        finally:
            for client in clients:
                await client.aclose()
            for limiter in limiters:
                await limiter.aclose()
        took = time.monotonic() - started

    # The limit holds in the limiter's own clock: no second holds more than 20 grants. Seen
    # from outside, each grant is shifted by its round trip to Redis (and here by a busy event
    # loop), so a second measured from another instant may catch one more (docs/sharding.md).
    assert len(Recorded.granted) == 61  # the token request of the three clients, and 60 counts
    assert busiest_second(Recorded.granted) <= 21
    assert took >= 2.9  # 61 requests at 20 a second: the last one a full 3 s after the first
    # And held back no longer than that (not took < 10 s, a loaded machine's): the waits asked
    # for, one at a time, add up to the 3 s the limit requires, each with its spread.
    assert sum(waited) <= 3.0 + _SPREAD * len(waited), waited


async def test_an_unreachable_redis_is_a_dmhub_error_and_nothing_is_sent(tmp_path: Path) -> None:
    async with DMHubSimulator(customers=1) as sim:
        limiter = RedisRateLimiter("redis://127.0.0.1:1/0", 5, timeout=1)
        async with DMHubClient(
            sim.app_id, sim.secret, base_url=sim.url, rate_limit=limiter, max_retries=0
        ) as dm:
            with pytest.raises(DMHubError, match=r"shared rate limit at redis://127\.0\.0\.1:1/0"):
                await dm.customers.count()
        await limiter.aclose()
        assert sim.counters.requests["/v1/customers/count"] == 0


@pytest.mark.parametrize(
    ("url", "rate"),
    [
        ("redis://x/0", 0),
        ("redis://x/0", -1),
        ("redis://x/0", True),
        ("http://x/", 5),
        # Each a raw OverflowError or ValueError making it, or (1e-300, 1e300, 2**64) a
        # window Redis refuses at the first call, reported as "cannot be reached".
        ("redis://x/0", math.inf),
        ("redis://x/0", 10**5000),
        ("redis://x/0", -(10**5000)),
        ("redis://x/0", 1e-320),
        ("redis://x/0", 1e-300),
        ("redis://x/0", 1e300),
        ("redis://x/0", 2**64),
    ],
    ids=[
        *("0", "-1", "True", "http", "inf", "10**5000", "-10**5000"),
        *("1e-320", "1e-300", "1e300", "2**64"),
    ],
)
def test_bad_settings_are_refused(url: str, rate: float) -> None:
    with pytest.raises(InvalidRequestError):
        RedisRateLimiter(url, rate)


@pytest.mark.parametrize("missing", ["limits", "limits.aio.storage", "redis.asyncio"])
def test_a_shared_rate_limit_without_the_redis_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    # Without the extra (or with redis-py installed by hand, no `limits`), a bare
    # "No module named 'limits'" named neither the extra nor what needed it.
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ImportError) as caught:
        RedisRateLimiter("redis://:hunter2@127.0.0.1:6379/0", 10)
    message = str(caught.value)
    assert "RedisRateLimiter needs the redis extra: pip install 'dmhub-async[redis]'" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://:RedisPassw0rd@localhost:6379/0?socket_timeout=abc",
        "redis://:RedisPassw0rd@localhost:6379/0?health_check_interval=RedisPassw0rd",
        "redis://:RedisPassw0rd@localhost:99999/0",
        # redis-py passed an option it does not know to its connection: a TypeError at the
        # first command, which a token store met as an outage (a token fetched per process).
        "redis://:RedisPassw0rd@localhost:6379/0?timeout=5",
        # A protocol redis-py does not speak: its connection refused it with a raw
        # redis.exceptions.ConnectionError (the CLI's --token-store a traceback).
        "redis://:RedisPassw0rd@localhost:6379/0?protocol=9",
        "redis://:RedisPassw0rd@localhost:6379/0?protocol=two",
        # A password with "/", "#" or "?" not percent-encoded (a generated one): its start was
        # read as the port, and redis-py's message quoted it ("... as 'RedisPassw0rd'").
        "redis://:RedisPassw0rd/x9@localhost:6379/0",
        "redis://:RedisPassw0rd#x9@localhost:6379/0",
        "redis://user:RedisPassw0rd?x9@localhost:6379/0",
    ],
    ids=[
        "socket_timeout",
        "a value that is the password",
        "port",
        "an unknown option",
        "a protocol redis-py does not speak",
        "a protocol that is no number",
        "a / in the password",
        "a # in the password",
        "a ? in the password",
    ],
)
@pytest.mark.parametrize("make", [RedisTokenStore, lambda url: RedisRateLimiter(url, 5)])
def test_a_redis_url_redis_py_cannot_read_is_refused_without_its_password(
    url: str, make: Any
) -> None:
    # A raw ValueError from redis-py, where the docs promise InvalidRequestError.
    with pytest.raises(InvalidRequestError, match="redis-py cannot read the URL") as info:
        make(url)
    assert "RedisPassw0rd" not in str(info.value)
    if "protocol=9" in url:  # what to fix, in redis-py's words
        assert str(info.value).endswith("cannot read the URL: protocol must be either 2 or 3")


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
@pytest.mark.parametrize("path", ["/tokens", "/db1", "/1/2", "/0x1"])
@pytest.mark.parametrize("make", [RedisTokenStore, lambda url: RedisRateLimiter(url, 5)])
def test_a_redis_url_whose_path_is_no_database_number_is_refused_as_made(
    path: str, make: Any, scheme: str
) -> None:
    # redis-py reads the path's digits alone, any other as database 0: RedisTokenStore(
    # "redis://HOST/tokens") shared its tokens in database 0 with whatever else was there, and
    # "redis://HOST/1/2" was database 12, without a word (a queue worker refuses both).
    with pytest.raises(InvalidRequestError) as info:
        make(f"{scheme}://:RedisPassw0rd@127.0.0.1:1{path}")
    said = str(info.value)
    assert said.endswith("the URL's path must be a database's number: redis://HOST:PORT/DB")
    assert "RedisPassw0rd" not in said


@pytest.mark.parametrize("path", ["/x", "/tokens/", ""])
@pytest.mark.parametrize(
    "use", [store_get, rate_turn, check_queue], ids=["store", "rate limit", "queue"]
)
async def test_a_redis_url_naming_its_database_in_its_query_is_taken_whatever_its_path(
    tmp_path: Path, use: Callable[[str], Awaitable[None]], path: str
) -> None:
    # ?db=2 names the database (redis-py and arq read it there, the path not at all): a store,
    # a limit or a queue on redis://HOST:PORT/x?db=2 used database 2 before the path was
    # checked, and was then refused "the URL's path must be a database's number".
    with redis_server(tmp_path) as server:
        await asyncio.wait_for(use(f"redis://127.0.0.1:{server.port}{path}?db=2"), 30)
        keyspace = server.command("INFO", "keyspace")
    if use is rate_turn:  # its window's key, in the database named
        assert "db2:keys=" in keyspace
        assert "db0:" not in keyspace


@pytest.mark.parametrize("path", ["", "/", "/0", "/15", "/3/"])
def test_a_redis_url_naming_its_database_or_none_is_taken(path: str) -> None:
    store = RedisTokenStore(f"redis://127.0.0.1:1{path}")
    asyncio.run(store.aclose())


@pytest.mark.parametrize(
    "url",
    [
        "redis://redis.internal/0",  # Redis's own port, 6379, not written
        "redis://:RedisPassw0rd@redis.internal/0",
        # A password holding "@" and ",", not percent-encoded: the rate limit library read the
        # URL on its own, and quoted a piece of it ("Missing host or port in location ...") or
        # all of it ("Unable to parse storage uri redis://:a@b:RedisPassw0rd,y@...").
        "redis://:Xk9@RedisPassw0rd,abc@redis.internal:6379/0",
        "redis://:a@b:RedisPassw0rd,y@redis.internal:6379/0",
    ],
    ids=["no port", "no port, a password", "@ and , in the password", "@ : and , in it"],
)
def test_a_url_redis_py_reads_is_taken_and_its_password_never_shown(url: str) -> None:
    # A raw limits.errors.ConfigurationError, out of `dmhub-async worker --rate-limit` too.
    limiter = RedisRateLimiter(url, 5)
    assert repr(limiter) == "RedisRateLimiter('redis://redis.internal:6379/0', 5/s)"
    asyncio.run(limiter.aclose())


def test_a_password_read_as_a_path_is_not_shown_as_where_redis_is() -> None:
    # "/" in the password, not percent-encoded, after a start of digits: redis-py reads the
    # digits as the port and the rest as the path, and the limiter named its Redis with it.
    # (Now refused: see test_a_password_cut_short_is_refused_before_connecting.)
    with pytest.raises(InvalidRequestError) as refused:
        RedisRateLimiter("redis://:6380/RedisPassw0rd@redis.internal/0", 5)
    assert "RedisPassw0rd" not in str(refused.value)
    assert "6380" not in str(refused.value)


@pytest.mark.parametrize("char", ["/", "#", "?"])
@pytest.mark.parametrize("kind", ["token store", "rate limit", "queue"])
async def test_a_password_cut_short_is_refused_before_connecting(
    redis: RedisServer, kind: str, char: str
) -> None:
    # A password of digits and a /, # or ? not percent-encoded: redis-py reads its start as
    # localhost's port and sends no password. A Redis there without one took the connection:
    # the tokens went to it, unauthenticated, and the queue's jobs, without a word.
    from dmhub_async.shards._queue import check_queue

    url = f"redis://:{redis.port}{char}RedisPassw0rd@10.0.0.9:6379/0"

    async def use() -> None:
        if kind == "token store":
            store = RedisTokenStore(url)
            try:
                await store.get("key")
            finally:
                await store.aclose()
        elif kind == "rate limit":
            limiter = RedisRateLimiter(url, 5)
            try:
                await limiter.acquire()
            finally:
                await limiter.aclose()
        else:
            await check_queue(url)

    redis.command("CONFIG", "RESETSTAT")
    with pytest.raises(InvalidRequestError) as refused:
        await use()
    message = str(refused.value)
    assert "a password's /, #, ? or @ must be percent-encoded" in message
    assert "RedisPassw0rd" not in message
    assert str(redis.port) not in message
    assert not set(redis.commands_served()) - {"config|resetstat", "info"}  # none of ours


@pytest.mark.parametrize(
    "timeout",
    [0, -1, "5", math.inf, math.nan, 10**5000],
    ids=["0", "-1", "a string", "inf", "nan", "10**5000"],
)
def test_a_bad_timeout_is_refused(timeout: Any) -> None:
    with pytest.raises(InvalidRequestError, match="timeout"):
        RedisRateLimiter("redis://x/0", 5, timeout=timeout)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key": None}, "key must be a str, not None"),  # key=os.environ.get(...), unset
        ({"key": 5}, "key must be a str, not 5"),
        (
            {"key": "tenant-\udcff"},  # an environment variable's bytes, not UTF-8
            "RedisRateLimiter(): key holds a lone surrogate ('\\udcff' at 7), which cannot be"
            " sent as UTF-8",
        ),
        ({"sleep": 5}, "sleep must be a function, not 5"),
    ],
    ids=["None", "an int", "a lone surrogate", "a sleep that is no function"],
)
def test_a_bad_key_or_sleep_is_refused_when_made(options: dict[str, Any], message: str) -> None:
    # A key that is no text was taken ("dmhub_async:None", one window for every caller whose
    # setting was unset); one UTF-8 cannot carry failed each request as "the shared rate
    # limit ... cannot be reached", blaming the network; a sleep that is no function raised
    # a raw TypeError at the first wait.
    with pytest.raises(InvalidRequestError) as refused:
        RedisRateLimiter("redis://x/0", 5, **options)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    "rate", [_MIN_RATE, _MAX_RATE, int(_MAX_RATE)], ids=["min", "max", "max int"]
)
async def test_the_slowest_and_fastest_rates_taken_are_ones_redis_keeps(
    redis: RedisServer, rate: float
) -> None:
    limiter = RedisRateLimiter(redis.url, rate, key=f"bounds-{rate!r}")
    try:
        await asyncio.wait_for(limiter.acquire(), 10)  # a Redis refusal would raise DMHubError
        if rate > 1:
            await asyncio.wait_for(limiter.acquire(), 10)  # and within the same second
    finally:
        await limiter.aclose()


def test_a_limit_keeps_no_event_loop_alive_after_its_asyncio_run(redis: RedisServer) -> None:
    # Its lock per event loop (an asyncio.Lock, which refers to its loop once a caller waited
    # on it) was kept in a WeakKeyDictionary by loop: every asyncio.run() whose calls met at the
    # limit (any with two at once) stayed in memory for the life of the process (a job queue's
    # worker, a thread per request: some 5 KB a run).
    import gc
    import weakref

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def job() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        limiter = RedisRateLimiter(redis.url, 1000, key="loops")
        try:
            await asyncio.gather(*(limiter.acquire() for _ in range(3)))
        finally:
            await limiter.aclose()

    for _ in range(5):
        asyncio.run(job())
    gc.collect()

    # The last one may wait until the next loop comes: closed loops are let go then.
    assert sum(ref() is not None for ref in loops) <= 1


def test_one_limiter_serves_every_event_loop_of_a_process(redis: RedisServer) -> None:
    """A RedisRateLimiter made once and used by each asyncio.run() of a job scheduler, or by
    threads each running their own loop: its connections belonged to the first loop, and
    every other run's calls failed with "the shared rate limit ... cannot be reached
    (RuntimeError)", Redis up and well (every second run, and most threads)."""
    from concurrent.futures import ThreadPoolExecutor

    from _redis import leaks_collected

    limiter = RedisRateLimiter(redis.url, 1000, key="every-loop")

    def job(_: int) -> None:
        async def main() -> None:
            await asyncio.wait_for(asyncio.gather(*(limiter.acquire() for _ in range(3))), 10)

        asyncio.run(main())

    for run in range(3):  # a scheduler's runs, one after another
        job(run)
    with ThreadPoolExecutor(4) as pool:  # threads each running their own loop at once
        list(pool.map(job, range(8)))
    asyncio.run(limiter.aclose())

    assert leaks_collected() == []  # each loop's connections were closed with it


@pytest.mark.parametrize(
    ("setup", "path", "said"),
    [
        (("CONFIG", "SET", "maxmemory", "1"), "/0", "maxmemory"),  # full, noeviction
        (("ACL", "SETUSER", "default", "-evalsha", "-eval"), "/0", "no permissions"),
        (None, "/99", "DB index is out of range"),
    ],
    ids=["full", "no-permission", "no-such-database"],
)
async def test_a_redis_that_refuses_the_limit_says_why_not_that_it_cannot_be_reached(
    redis: RedisServer, setup: tuple[str, ...] | None, path: str, said: str
) -> None:
    # A Redis that answers but refuses (full with noeviction, an ACL user without EVALSHA,
    # a database that does not exist) was reported "cannot be reached (ResponseError)": the
    # user looked at the network while Redis said what was wrong.
    if setup is not None:
        redis.command(*setup)
    limiter = RedisRateLimiter(redis.url.removesuffix("/0") + path, 5)
    try:
        with pytest.raises(DMHubError) as caught:
            await limiter.acquire()
    finally:
        await limiter.aclose()
    assert said in str(caught.value)
    assert "cannot be reached" not in str(caught.value)
    assert "no request was sent" in str(caught.value)


class Waited(Exception):
    """A limiter's wait for a place: the test stops there, having seen how long it was."""


@pytest.mark.parametrize(
    ("rate", "granted", "window"),
    [(2.5, 5, 2), (0.3, 3, 10), (0.5, 1, 2), (1 / 3, 1, 3), (20, 20, 1)],
    ids=["2.5", "0.3", "0.5", "1/3", "20"],
)
async def test_a_fractional_rate_holds_exactly(
    redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    rate: float,
    granted: int,
    window: int,
) -> None:
    # 2.5 a second let 2 a second through (a 20 % slower export), 0.3 one every 4 s: the
    # window's count was rounded down. Now rate * window requests go, then the next waits for
    # the window to move on: the same rate as DMHubClient(rate_limit=2.5) keeps in-process.
    # The clock each grant is stamped with (time.time) stands still: the grants' own time on a
    # loaded machine (20 round trips to Redis and a pause of the process past half a second)
    # moved the window on, and the "20" wait fell short of the check below.
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        raise Waited

    limiter = RedisRateLimiter(redis.url, rate, key=f"fraction-{rate!r}", sleep=sleep)
    try:
        for _ in range(granted):
            await limiter.acquire()
        assert waits == []
        with pytest.raises(Waited):
            await limiter.acquire()
    finally:
        await limiter.aclose()
    # Until the window's first place frees (re-read at least every second).
    assert min(window, 1.0) - 0.5 < waits[0] <= min(window, 1.0) + 0.05


@pytest.mark.parametrize("rate", [50.01, 0.007, 1e-3 + 1e-7])
def test_a_rate_no_short_window_can_hold_is_refused_before_anything_is_sent(rate: float) -> None:
    with pytest.raises(InvalidRequestError, match=r"rate .* whole number of requests"):
        RedisRateLimiter("redis://x/0", rate)


@contextlib.contextmanager
def unix_socket_redis(*settings: str) -> Iterator[str]:
    """A redis-server of the test's own listening on a unix socket alone, given more of its
    ``settings`` (``--requirepass PW``): the socket's path."""
    from _redis import REDIS_SERVER, SKIP_REASON

    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    # Short: a unix socket's path is at most 107 bytes, and pytest's tmp_path may be longer.
    with tempfile.TemporaryDirectory(prefix="dmhub-redis-") as directory:
        sock = os.path.join(directory, "redis.sock")
        no_port = ("--port", "0", "--save", "", "--appendonly", "no", "--dir", directory)
        proc = subprocess.Popen(
            [REDIS_SERVER, "--unixsocket", sock, *no_port, *settings],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(1000):  # at most 10 s
                if _accepts(sock) or proc.poll() is not None:
                    break
                time.sleep(0.01)
            assert _accepts(sock), "redis-server does not listen on its socket"
            yield sock
        finally:
            proc.kill()
            proc.wait(timeout=10)


def _accepts(sock: str) -> bool:
    """Whether a redis-server listens on unix socket ``sock``: its file is made before it
    listens, and a connect in between was refused."""
    with socket.socket(socket.AF_UNIX) as conn:
        try:
            conn.connect(sock)
        except OSError:
            return False
    return True


def _keys_at(sock: str, db: int) -> bytes:
    """``KEYS *`` of database ``db`` of the Redis at unix socket ``sock``, its raw answer."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(sock)
        conn.sendall(f"*2\r\n$6\r\nSELECT\r\n${len(str(db))}\r\n{db}\r\n".encode())
        conn.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
        answer = b""
        while answer.count(b"\r\n") < 3:
            answer += conn.recv(4096)
        return answer


async def test_a_unix_socket_redis_keeps_the_limit_as_it_keeps_the_queue() -> None:
    # `worker --redis unix:///run/redis.sock --rate-limit 50`, a queue and a token store the
    # worker took on that URL, stopped at its start: "the shared rate limit needs a redis://
    # or rediss:// URL". Its Redis was said to be at "unix://localhost:6379/PATH".
    with unix_socket_redis() as sock:
        limiter = RedisRateLimiter(f"unix://{sock}?db=2", 5, key="app")
        try:
            assert repr(limiter) == f"RedisRateLimiter('unix://{sock}?db=2', 5/s)"
            for _ in range(5):
                await asyncio.wait_for(limiter.acquire(), 10)
        finally:
            await limiter.aclose()
        assert b"dmhub_async:app" in _keys_at(sock, 2)


@pytest.mark.parametrize(
    ("use", "refused"),
    [
        (
            store_get,
            "GET failed: AuthenticationError: invalid username-password pair or user is"
            " disabled.; no process can share a token through it: give the store a user,"
            " password and database that Redis takes",
        ),
        (
            rate_turn,
            "refused the request: invalid username-password pair or user is disabled.: no"
            " request was sent",
        ),
        (check_queue, "refused: invalid username-password pair or user is disabled: give its"),
    ],
    ids=["store", "rate limit", "queue"],
)
@pytest.mark.parametrize("over", ["tcp", "unix"])
async def test_a_redis_refusing_the_password_is_said_to_refuse_it_over_a_unix_socket_too(
    tmp_path: Path, use: Callable[[str], Awaitable[None]], refused: str, over: str
) -> None:
    # redis-py connects a unix socket with its handshake (AUTH) inside the socket's own try,
    # and says a refusal there as a ConnectionError: over unix://, a wrong password was "cannot
    # be reached" (the rate limit), and the token store took it for an outage (each process
    # then fetching a token of its own, revoking the others'), where redis:// said it refused.
    if over == "unix":
        with (
            unix_socket_redis("--requirepass", "right-pw") as sock,
            pytest.raises(DMHubError) as caught,
        ):
            await asyncio.wait_for(use(f"unix://:wrong-pw@{sock}"), 30)
    else:
        server = RedisServer(tmp_path)
        server.start()
        try:
            assert server.command("CONFIG", "SET", "requirepass", "right-pw") == "+OK"
            with pytest.raises(DMHubError) as caught:
                await asyncio.wait_for(use(f"redis://:wrong-pw@127.0.0.1:{server.port}/0"), 30)
        finally:
            server.kill()
    assert refused in str(caught.value)
    assert getattr(caught.value, "unsafe", True)  # the store's: refused for good


@pytest.mark.parametrize(
    "use", [store_get, rate_turn, check_queue], ids=["store", "rate limit", "queue"]
)
@pytest.mark.parametrize("over", ["tcp", "unix"])
async def test_a_password_written_without_its_colon_refused_is_said_to_need_it(
    tmp_path: Path, use: Callable[[str], Awaitable[None]], over: str
) -> None:
    # redis://PASSWORD@HOST names a user and no password: refused, "invalid username-password
    # pair" said nothing of the colon the password lacks, and the password is never shown.
    if over == "unix":
        with (
            unix_socket_redis("--requirepass", "Rd1sCn4ryPassw0rd") as sock,
            pytest.raises(DMHubError) as caught,
        ):
            await asyncio.wait_for(use(f"unix://Rd1sCn4ryPassw0rd@{sock}"), 30)
    else:
        server = RedisServer(tmp_path)
        server.start()
        try:
            assert server.command("CONFIG", "SET", "requirepass", "Rd1sCn4ryPassw0rd") == "+OK"
            url = f"redis://Rd1sCn4ryPassw0rd@127.0.0.1:{server.port}/0"
            with pytest.raises(DMHubError) as caught:
                await asyncio.wait_for(use(url), 30)
        finally:
            server.kill()
    said = str(caught.value)
    assert "invalid username-password pair" in said
    assert NO_COLON in said
    assert "Rd1sCn4ryPassw0rd" not in said


@pytest.mark.parametrize("use", [store_get, rate_turn], ids=["store", "rate limit"])
async def test_a_password_refused_with_its_colon_is_not_said_to_need_one(
    tmp_path: Path, use: Callable[[str], Awaitable[None]]
) -> None:
    with (
        unix_socket_redis("--requirepass", "right-pw") as sock,
        pytest.raises(DMHubError) as caught,
    ):
        await asyncio.wait_for(use(f"unix://:wrong-pw@{sock}"), 30)
    assert "invalid username-password pair" in str(caught.value)
    assert NO_COLON not in str(caught.value)


#: What a refusal of a user name given no password adds (redis://PASSWORD@HOST).
NO_COLON = (
    "a user name was sent with no password: a password goes after a colon, redis://:PASSWORD@HOST"
)


@pytest.mark.parametrize(
    "use", [store_get, rate_turn, check_queue], ids=["store", "rate limit", "queue"]
)
async def test_a_redis_not_knowing_auth_over_a_unix_socket_is_said_to_refuse_it(
    use: Callable[[str], Awaitable[None]],
) -> None:
    # As above, a Redis (or a proxy) that does not know AUTH: "cannot be reached" and, the
    # queue's, "is Redis running there?", as if Redis were not there; the store's, an outage.
    with (
        unix_socket_redis("--rename-command", "AUTH", "") as sock,
        pytest.raises(DMHubError) as caught,
    ):
        await asyncio.wait_for(use(f"unix://:Rd1sCn4ryPassw0rd@{sock}"), 30)
    said = str(caught.value)
    assert "refused" in said or "Redis does not know that command" in said, said
    assert "unknown command 'AUTH', with args beginning with: '***'" in said
    assert "cannot" not in said, said
    assert "running there" not in said, said
    assert getattr(caught.value, "unsafe", True)


async def test_a_unix_socket_not_there_is_named_by_its_path() -> None:
    limiter = RedisRateLimiter("unix:///nonexistent/redis.sock", 5, timeout=1)
    try:
        with pytest.raises(DMHubError) as caught:
            await limiter.acquire()
    finally:
        await limiter.aclose()
    assert str(caught.value).startswith(
        "the shared rate limit at unix:///nonexistent/redis.sock cannot be reached"
    )


async def test_a_user_s_redis_client_refused_the_password_over_a_unix_socket_is_refused() -> None:
    # RedisTokenStore(client=...) takes a redis.asyncio client of the user's, whose connections
    # are redis-py's own: over unix://, their refusal of the password comes as a
    # ConnectionError raised from it, which the store reads (it was taken for an outage, each
    # process then fetching a token of its own, revoking the others').
    from redis.asyncio import Redis

    with unix_socket_redis("--requirepass", "right-pw") as sock:
        client = Redis(unix_socket_path=sock, password="wrong-pw", socket_timeout=5)
        try:
            with pytest.raises(TokenStoreError) as caught:
                await asyncio.wait_for(RedisTokenStore(client=client).get("app"), 10)
        finally:
            await client.aclose()
    assert "GET failed: AuthenticationError: invalid username-password pair" in str(caught.value)
    assert caught.value.unsafe


async def test_a_queue_worker_refused_the_password_over_a_unix_socket_as_it_starts_stops() -> None:
    # arq makes a worker's pool, and PINGs through it, with redis-py's own connections: over
    # unix://, a refused password came as a ConnectionError raised from the refusal, which the
    # worker's tries waited for as a Redis away (a minute), then raised as it was.
    from redis.exceptions import AuthenticationError

    with unix_socket_redis("--requirepass", "right-pw") as sock:
        client = {"app_id": "a", "secret": "s", "base_url": "http://127.0.0.1:1"}
        arq_worker = worker(f"unix://:wrong-pw@{sock}", handle_signals=False, client=client)
        try:
            with pytest.raises(AuthenticationError, match="invalid username-password pair"):
                await asyncio.wait_for(arq_worker.async_run(), 20)  # its wait: 60 s
        finally:
            await asyncio.wait_for(arq_worker.close(), 20)


def _busy_with_a_script(sock: str) -> socket.socket:
    """A script that runs until killed (``SCRIPT KILL``), sent to the Redis at unix socket
    ``sock`` (given ``--lua-time-limit 10``: Redis 6's name, which 7 takes), once Redis answers
    others ``-BUSY``: the connection that sent it, to close after."""
    busy = socket.socket(socket.AF_UNIX)
    busy.connect(sock)
    busy.sendall(b"*3\r\n$4\r\nEVAL\r\n$17\r\nwhile true do end\r\n$1\r\n0\r\n")
    for _ in range(500):  # at most 5 s
        with socket.socket(socket.AF_UNIX) as ping:
            ping.settimeout(5)
            ping.connect(sock)
            ping.sendall(b"*1\r\n$4\r\nPING\r\n")
            if ping.recv(100).startswith(b"-BUSY"):
                return busy
        time.sleep(0.01)
    busy.close()
    raise AssertionError("the script did not make Redis busy")


def _script_killed(sock: str, busy: socket.socket) -> None:
    with socket.socket(socket.AF_UNIX) as kill:
        kill.settimeout(5)
        kill.connect(sock)
        kill.sendall(b"*2\r\n$6\r\nSCRIPT\r\n$4\r\nKILL\r\n")
        assert kill.recv(100) == b"+OK\r\n"
    busy.close()
    for _ in range(500):  # at most 5 s: the script ends at its next check
        with socket.socket(socket.AF_UNIX) as ping:
            ping.settimeout(5)
            ping.connect(sock)
            ping.sendall(b"*1\r\n$4\r\nPING\r\n")
            if ping.recv(100) == b"+PONG\r\n":
                return
        time.sleep(0.01)
    raise AssertionError("the script was not killed")


@pytest.mark.parametrize("what", ["store", "rate limit"])
async def test_a_unix_socket_redis_busy_as_it_connects_is_used_in_its_database_after(
    what: str,
) -> None:
    # redis-py connects a unix socket with its handshake inside the socket's own try, and left
    # the connection connected when Redis refused the handshake with its own words (-BUSY from
    # a long script as SELECT was sent): the next command ran on that connection, in database
    # 0. A token store on ?db=3 kept the token where no other process looked for it (each
    # fetching its own, revoking the others'); a shared rate limit kept its window there.
    from dmhub_async import Token

    with unix_socket_redis("--lua-time-limit", "10") as sock:
        url = f"unix://{sock}?db=3"
        store = RedisTokenStore(url, socket_timeout=5)
        limiter = RedisRateLimiter(url, 5, key="app", timeout=5)

        async def use() -> None:
            if what == "store":
                await store.set("app", Token("t0k3n", time.time() + 60))
            else:
                await limiter.acquire()

        try:
            busy = _busy_with_a_script(sock)
            try:
                with pytest.raises(DMHubError, match="BUSY"):
                    await asyncio.wait_for(use(), 10)
            finally:
                _script_killed(sock, busy)
            await asyncio.wait_for(use(), 10)
        finally:
            await store.aclose()
            await limiter.aclose()
        kept = "dmhub_async:token:app" if what == "store" else "dmhub_async:app"
        assert (_held_in(sock, 3, kept), _held_in(sock, 0, kept)) == (True, False)


def _held_in(sock: str, db: int, key: str) -> bool:
    """Whether database ``db`` of the Redis at unix socket ``sock`` holds a key naming ``key``
    (the shared rate limit's keys are the limits library's, ``key`` within)."""
    pattern = f"*{key}*"
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(sock)
        conn.sendall(f"*2\r\n$6\r\nSELECT\r\n${len(str(db))}\r\n{db}\r\n".encode())
        conn.sendall(f"*2\r\n$4\r\nKEYS\r\n${len(pattern)}\r\n{pattern}\r\n".encode())
        answer = b""
        while answer.count(b"\r\n") < 2:
            answer += conn.recv(4096)
        assert answer.startswith(b"+OK\r\n*"), answer
        return not answer.startswith(b"+OK\r\n*0\r\n")


@pytest.mark.parametrize(
    "use", [store_get, rate_turn, check_queue], ids=["store", "rate limit", "queue"]
)
async def test_a_unix_socket_not_there_is_named_whole_beside_a_user_name_given_no_password(
    use: Callable[[str], Awaitable[None]],
) -> None:
    # A user name given without a password (an ACL user who needs none) is masked as a
    # password is where Redis quotes AUTH's arguments back (redis://PASSWORD@HOST, its colon
    # left out), but it was masked anywhere, as a password is: the socket's path said
    # "/nonexistent/***/***-server.sock".
    with pytest.raises(DMHubError) as caught:
        await asyncio.wait_for(use("unix://redis@/nonexistent/redis/redis-server.sock"), 30)
    said = str(caught.value)
    assert "Error 2 connecting to /nonexistent/redis/redis-server.sock." in said, said


async def test_a_redis_not_reached_says_why_in_redis_pys_words_never_its_password() -> None:
    # "cannot be reached (ConnectionError)" was all it said, whatever the reason: a TLS Redis
    # whose certificate is of a CA not given (?ssl_ca_certs=), a plain redis:// URL of a TLS
    # Redis, a host name that does not resolve, a port nothing listens on, alike; the queue
    # and the token store on the same URL said redis-py's reason.
    from _redis import server_port

    # Nothing listens there, nor will: this worker's own port. One bound and closed (bind(0))
    # was free for another worker's in-process simulator (which binds port 0) to take, and
    # the limiter then reached an HTTP server, not "Error 111 connecting".
    port = server_port()
    limiter = RedisRateLimiter(f"redis://:RedisPassw0rd@127.0.0.1:{port}/0", 5, timeout=1)
    try:
        with pytest.raises(DMHubError) as caught:
            await limiter.acquire()
    finally:
        await limiter.aclose()
    message = str(caught.value)
    assert message.startswith(f"the shared rate limit at redis://127.0.0.1:{port}/0 cannot be")
    assert f"Error 111 connecting to 127.0.0.1:{port}" in message
    assert message.endswith(": no request was sent")
    assert "RedisPassw0rd" not in message


@pytest.mark.parametrize("kind", ["token store", "rate limit"])
async def test_a_password_read_as_the_port_is_never_said(kind: str) -> None:
    # A password of digits, then a "/" not percent-encoded: redis-py reads its start as the
    # port and connects to localhost there. The store's repr and both errors said it
    # ("RedisTokenStore(None:45123/0 ...)", "Error 111 connecting to localhost:45123").
    from _redis import free_port

    start = str(free_port())  # nothing listens there
    url = f"redis://:{start}/RedisPassw0rd@127.0.0.1:1/0"
    # Refused as it is made now (test_a_password_cut_short_is_refused_before_connecting).
    with pytest.raises(DMHubError) as caught:
        RedisTokenStore(url) if kind == "token store" else RedisRateLimiter(url, 5, timeout=1)
    message = str(caught.value)
    assert start not in message
    assert "RedisPassw0rd" not in message
    assert "a password's /, #, ? or @ must be percent-encoded" in message
