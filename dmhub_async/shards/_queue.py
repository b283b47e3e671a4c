"""Shards on machines: arq job queues on Redis (``dmhub-async worker`` / ``export --queue``).

One arq job per shard. The coordinator (``export --queue``) enqueues the shards still to do,
under job ids made from the export directory and the shard, so a rerun never doubles a job; it
follows their progress in Redis and writes the manifest. Workers (``dmhub-async worker``) take
their credentials from their own environment (never from Redis), share the appid's one token
through :class:`~dmhub_async.RedisTokenStore` on the same Redis, and, with a rate limit, share
one limit through :class:`~dmhub_async.RedisRateLimiter`.

A worker killed mid-shard: arq keeps the job queued and marks it in progress only while the
worker that holds it lives, because the job renews arq's in-progress key every few seconds
(:data:`HEARTBEAT`) with a short life (:data:`IN_PROGRESS_TTL`); arq's own default would keep a
dead worker's job for the whole job timeout plus 10 s. Another worker then takes the job, which
resumes from the shard's checkpoint beside its part file: the output directory must be storage
that every worker can write (a shared volume, NFS), at the coordinator's path or at one the
worker maps it to (``worker(mounts=)``, ``dmhub-async worker --mount``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import re
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, TypeVar

from .._exceptions import (
    AuthenticationError,
    DMHubError,
    InvalidRequestError,
    without_token_hint,
)
from .._redact import MASK, no_colon_hint, redis_password, redis_secret, without_password
from .._redis_send import (
    pool_connections,
    redis_refusal,
    redis_words_shown,
    sending_cancellably,
)
from .._sansio import TOKEN_PATH
from .._shared_rate import check_shared_rate
from .._tasks import to_the_end
from .._tasks import within as _bounded_in_time
from .._validate import (
    PERCENT_ENCODE,
    arguments_forgotten_if_refused,
    check_concurrency,
    check_flag,
    check_number,
    check_password_read,
    check_redis_options,
    password_misread,
    printable,
    redis_url_error,
    redis_where,
    unnameable,
)
from .._version import __version__
from ..export._export import Verify, check_verify, retries_of
from ..export._output import InUseError
from ._manifest import (
    LEFT_ON_THE_QUEUE,
    MANIFEST_NAME,
    Manifest,
    ManifestWriter,
    ShardOutcome,
    checkpoint_name,
    one_spelling,
    part_name,
)
from ._plan import Shard

if TYPE_CHECKING:
    from arq.connections import ArqRedis
from ._run import (
    ProgressBar,
    TotalProgress,
    coordinating,
    export_shard,
    failure_reason,
    pending,
    record_result,
    result_of,
    stopped,
)

__all__ = [
    "HEARTBEAT",
    "ID_SLICE_JOB_VERSION",
    "IN_PROGRESS_TTL",
    "JOB_NAME",
    "JOB_VERSION",
    "QUEUE_TIMEOUT",
    "REDIS_RETRIES",
    "REDIS_WAIT",
    "VERIFY_JOB_VERSION",
    "WINDOW_JOB_VERSION",
    "check_mounts",
    "check_queue",
    "job_version",
    "mark_token_store",
    "queue_redis_error",
    "queue_settings",
    "run_on_queue",
    "worker",
    "worker_credentials_hint",
]

logger = logging.getLogger("dmhub_async")
_T = TypeVar("_T")

JOB_NAME = "dmhub_export_shard"
#: The shape of a job, of its result and of the files they name (the shard, the part, its
#: checkpoint), as a coordinator and its workers must read them alike. A release that changes
#: it in a way another release would misread takes the next number; a worker refuses a job of
#: any other (and a coordinator a result), saying both releases. A job or result without one
#: is of version 1: releases up to 0.1.0 (95c90cd) sent none, and read what this one sends.
#: 2: a shard of an ``id_list`` naming its slice of the list in the export's directory
#: (``Shard.id_slice``): a worker of version 1 would export its window without the ids, every
#: customer of it. Sent only then: a shard of a window goes as version 1, which every release
#: reads.
#: 3: the job's ``verify`` (``"always"``: the shard's final check runs even when its walk saw
#: no change). A worker of version 2 reads no such key: it would export the shard unchecked
#: and say complete. Sent only then: a job without it (``"auto"``) goes as version 1 or 2.
JOB_VERSION = 3
#: The version of a job of a ``dateCreated`` window.
WINDOW_JOB_VERSION = 1
#: The version of a job of a slice of an ``id_list``.
ID_SLICE_JOB_VERSION = 2
#: The version of a job exported with ``verify="always"`` (a window's or a slice's).
VERIFY_JOB_VERSION = 3
#: The versions of the jobs (and results) this release reads.
_READ_VERSIONS = (WINDOW_JOB_VERSION, ID_SLICE_JOB_VERSION, VERIFY_JOB_VERSION)
#: Seconds between renewals of a running job's in-progress mark.
HEARTBEAT = 5.0
#: Seconds a dead worker's job stays marked in progress: it is taken over within about this.
IN_PROGRESS_TTL = 20.0
#: A shard may take hours; liveness is the heartbeat's job, not the timeout's.
JOB_TIMEOUT = 24 * 3600
#: Tries of one shard (a kill, a failure, a worker stopped by SIGTERM: arq counts each run
#: begun) before arq gives it up.
MAX_TRIES = 5
#: What a shard whose tries are spent says beside arq's words.
_TRIES_SPENT = (
    "its job was stopped or failed on each of its tries (a worker killed or stopped by "
    "SIGTERM counts one); rerun the export, which resumes it from its checkpoint"
)
#: How long a job may wait in the queue: arq's default, a day, failed the shards still queued
#: after a day behind long ones ("job expired") without a try. As long as results are kept.
QUEUED_FOR = 7 * 24 * 3600
_PROGRESS_EVERY = 0.5
#: Seconds the coordinator waits for one answer of the queue's Redis as its run starts (before
#: anything is enqueued) before it stops with "cannot reach the queue's Redis". Once the run
#: has begun, a Redis that does not answer is waited for as the workers wait (REDIS_WAIT).
QUEUE_TIMEOUT = 10.0
#: Tries of a worker's Redis command while Redis is away (a restart, a failover): with their
#: backoff, about a minute; past it the worker stops ("cannot reach the queue's Redis").
REDIS_RETRIES = 32
#: Seconds a worker's (and, once its run has begun, the coordinator's) Redis command is tried
#: for while Redis is away, whichever of this and :data:`REDIS_RETRIES` ends first: a
#: command's tries no longer hold its connection's tries (32 of them for each of 32), and a
#: try of a Redis that does not answer (frozen, or cut off) ends after :data:`REDIS_ANSWER`.
REDIS_WAIT = 60.0
#: Seconds a try of a worker's Redis command waits for its answer (arq's pool reads without a
#: timeout: a Redis paused, or a partition that drops packets, held the worker for ever).
REDIS_ANSWER = 10.0
#: Seconds between a worker's health records in Redis (arq's, an hour by default): a worker
#: busy with its shards sent Redis nothing else of its own, so saw nothing of its going.
HEALTH_EVERY = 5.0
#: Seconds a stopping worker waits for each of its last commands (one try each), and for the
#: progress writes still pending: a healthy Redis answers in milliseconds, and a frozen one
#: held a stop already past its wait for 10 s a command.
CLOSE_ANSWER = 2.0
#: Seconds of the coordinator's polls, its shards waiting, with no worker's health record in
#: the queue's Redis (each worker writes arq's every :data:`HEALTH_EVERY` seconds, kept one
#: more) before it says that no worker serves the queue: it waited for ever without a word.
NO_WORKER_AFTER = 30.0
#: Seconds of polls a shard's part may stay unseen by the coordinator as its worker reported
#: it (missing, or of another size) before the shard fails: an NFS client's attribute and
#: lookup caches may show another machine's new file late (60 s at most, by default).
PART_SEEN_WITHIN = 60.0
#: The key a coordinator sets in its token store's Redis, after the store's prefix, a job naming
#: its rest: a worker whose own store lacks it keeps the app's token elsewhere (see
#: _check_same_token_store). Under the prefix: a store of the same Redis with a prefix of its
#: own keeps its token under another key, which the mark in the Redis alone did not tell.
TOKEN_STORE_MARK = "store-mark:"
#: Seconds a coordinator waits for its token store's Redis as it sets its mark (each poll).
MARK_ANSWER = 5.0
#: Seconds a worker looks for the coordinator's mark, every MARK_LOOK_EVERY, before it refuses
#: a job: a job taken just before its Redis was flushed (or restarted) is checked just after,
#: before the coordinator's next poll has set the mark again.
MARK_LOOKED_FOR = 5.0
MARK_LOOK_EVERY = 0.5
#: A mark's name as a coordinator makes it (secrets.token_hex), and as one is taken from a job.
_MARK_NAME = re.compile(r"[0-9a-f]{1,64}")


def _progress_key(export_id: str, plan_id: str) -> str:
    """The hash of the shards' progress; of one plan, as the jobs' ids (see job_id_of)."""
    plan = f"{plan_id}:" if plan_id else ""  # a manifest written before plans had ids
    return f"dmhub_async:export:{export_id}:{plan}progress"


def export_id_of(directory: Path) -> str:
    """The export's id: the same directory is the same export, on every machine. Its path's
    bytes as the file system names them: a name not UTF-8 (``surrogateescape``'s) was a raw
    UnicodeEncodeError of ``--queue``, and a UTF-8 one's id is as it was."""
    return hashlib.sha256(os.fsencode(os.path.abspath(directory))).hexdigest()[:16]


def _absolute(directory: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(directory))


def queue_settings(redis_url: object, name: str) -> Any:
    """arq's ``RedisSettings`` of ``redis_url``, or InvalidRequestError before anything is
    planned or enqueued (arq's own errors were a raw RuntimeError or ValueError, late).

    The user, password and TLS options are redis-py's reading of the URL, as the token store
    and the shared rate limit on the same URL read them: arq's own kept a percent-encoded
    password as typed (``%2F``, and every ``!`` or ``+`` of ``DMHUB_REDIS_PASSWORD``) and
    dropped ``?ssl_ca_certs=``, so workers and the coordinator were refused by a Redis the
    token store reached.
    """
    from redis.asyncio.connection import parse_url

    if not isinstance(redis_url, str):
        raise InvalidRequestError(f"{name} must be a redis:// URL, not {type(redis_url).__name__}")
    try:
        settings = _settings_class().from_dsn(redis_url)
        read: dict[str, Any] = dict(parse_url(redis_url))
    except (RuntimeError, ValueError):
        # Not repeated: it may hold a password. One cut short by a /, # or ? read as the port
        # is said so, as the token store on such a URL says it (README): it was "no URL" alone.
        hint = f" ({PERCENT_ENCODE})" if password_misread(redis_url) else ""
        raise InvalidRequestError(
            f"{name} must be a URL such as redis://HOST:PORT/DB (or rediss://, unix://){hint}"
        ) from None
    check_password_read(name, redis_url)  # read, but a password cut short: not sent
    settings.username, settings.password = read.get("username"), read.get("password")
    for option in _TLS_OPTIONS:
        if read.get(option) is not None:
            setattr(settings, option, read[option])
    return settings


@functools.cache
def _settings_class() -> Any:
    """arq's ``RedisSettings``, shown without its password.

    Its repr (a dataclass's: every field) showed the password wherever a worker's
    ``redis_settings`` was shown, and in the variables of arq's frames that an error tracker
    records (Sentry's default) of a worker's every Redis error.
    """
    import dataclasses

    from arq.connections import RedisSettings

    class _QueueSettings(RedisSettings):
        @classmethod
        def from_dsn(cls, dsn: str) -> RedisSettings:
            read = RedisSettings.from_dsn(dsn)  # arq's makes a RedisSettings, whatever cls
            return cls(**{f.name: getattr(read, f.name) for f in dataclasses.fields(read)})

        def __repr__(self) -> str:
            def shown(name: str) -> Any:
                value = getattr(self, name)
                # And a user name given without a password: one written without its colon
                # (redis://PASSWORD@HOST), which redis-py sends (see redis_secret).
                secret = name == "password" or (name == "username" and not self.password)
                return MASK if secret and value else value

            fields = ", ".join(f"{f.name}={shown(f.name)!r}" for f in dataclasses.fields(self))
            return f"RedisSettings({fields})"

    return _QueueSettings


#: The TLS options of a ``rediss://`` URL's query that redis-py reads and arq's settings take.
_TLS_OPTIONS = (
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_check_hostname",
)


async def check_queue(
    redis_url: str, name: str = "the queue", *, password_hint: str | None = None
) -> None:
    """Reach the queue's Redis once, or DMHubError naming where (not the password): before a
    plan is made, rather than a raw ConnectionError after it. ``password_hint``: where the
    password goes, said when Redis refuses it (the command line's variable)."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    queue_settings(redis_url, name)
    try:
        client = Redis.from_url(redis_url, socket_connect_timeout=10, socket_timeout=10)
    except ValueError as err:  # a query value it cannot read
        raise redis_url_error(name, redis_url, err) from None
    sending_cancellably(client.connection_pool)
    try:
        check_redis_options(name, redis_url, client.connection_pool)
        await _ping(client)
        # Written to, as the queue is: a replica (read-only) answered the PING, the export was
        # planned (its requests sent) and refused at its first enqueue, a worker at its first
        # write; and, a replica met once a run has begun being waited for (a failover), each
        # only after a minute. A key of arq's prefix, which a queue's Redis user may write.
        await client.set(_WRITABLE_KEY, b"1", px=1000)
    except (RedisError, OSError) as err:
        raise queue_redis_error(redis_url, err, password_hint=password_hint) from None
    finally:
        await client.aclose()


#: The key check_queue writes (for a second) to find the queue's Redis writable.
_WRITABLE_KEY = "arq:dmhub-async:writable"


async def _ping(client: Any) -> None:
    """PING the queue's Redis, waiting for one that is loading its dataset as for a restart.

    A Redis restarted with persistence answers ``-LOADING`` (redis-py's BusyLoadingError) until
    its dataset is read: the coordinator and ``dmhub-async worker`` took it for a Redis not
    there and stopped at their start, where a restart is waited for (:data:`REDIS_RETRIES`
    tries, about a minute). A Redis not there at all is still said at once.
    """
    from redis.asyncio.retry import Retry
    from redis.exceptions import BusyLoadingError

    loading = Retry(_backoff(), REDIS_RETRIES, supported_errors=(BusyLoadingError,))
    await loading.call_with_retry(client.ping, _loading_seen)


async def _loading_seen(err: Exception) -> None:
    logger.info("the queue's Redis is loading its dataset: waiting for it")


#: Set while a command is tried (see _waiting): a connect inside one of its tries is tried once.
_TRYING: contextvars.ContextVar[bool] = contextvars.ContextVar("dmhub_redis_trying", default=False)


def _waiting(
    retries: int | None = None,
    answer: float | None = None,
    *,
    redis_url: str | None = None,
    who: str = "the worker",
) -> Any:
    """The tries of a queue's Redis command while Redis is away: :data:`REDIS_RETRIES` (or
    ``retries``) with a backoff up to 2 s, for :data:`REDIS_WAIT` seconds at most, each try
    answered within :data:`REDIS_ANSWER` (or ``answer``) seconds and within the time left
    (else redis-py's TimeoutError). Given ``redis_url``, the wait is said (:class:`_Away`),
    ``who`` waiting."""
    tries = REDIS_RETRIES if retries is None else retries
    away = _Away(redis_url, who) if redis_url is not None else None
    return _waiting_class()(_backoff(), tries, REDIS_WAIT, answer or REDIS_ANSWER, away)


class _Away:
    """Says, once, that the queue's Redis is waited for and until when, then that it is back or
    that the wait is over: a worker or coordinator waiting said nothing for up to about 90 s.

    One for all the commands of a pool, whose connections each take a deep copy of its
    ``Retry``: a copy is this one.
    """

    def __init__(self, redis_url: str, who: str) -> None:
        self.where, self.who = redis_where(redis_url), who
        self.password = redis_password(redis_url)
        self.since: float | None = None
        #: When the wait for Redis ends, for every command of the pool: that of the command
        #: whose try first failed. Each command had a wait of its own, and the ~16 queued
        #: behind the pool's lock (progress writes, the heartbeat, arq's health record) took
        #: their minute each, one after the other: a worker that said it stops ran on for
        #: minutes, and a SIGTERM took the whole --stop-timeout.
        self.until: float | None = None
        self.said_over = False
        #: The last failed try was refused as a write to a replica (READONLY), not unanswered.
        self.read_only = False

    def __deepcopy__(self, memo: dict[int, Any]) -> _Away:
        return self

    def failed(self, error: BaseException, until: float, began: float | None = None) -> None:
        """A try failed; ``until``: when the command's tries end, ``began``: when the failed
        try was sent (``time.monotonic()``; now if None).

        Redis is away since that try was sent: one frozen left it unanswered its 10 s, and
        "is back, after 6 s" was counted from its end, 10 s short of the wait.

        A replica (a failover, a URL naming one) answers, and refuses each write: it was said
        to "not answer", then to "not come back", sending an operator to the network.
        """
        from redis.exceptions import ReadOnlyError

        self.read_only = isinstance(error, ReadOnlyError)
        if self.since is not None:
            return
        now = time.monotonic()
        self.since = now if began is None else min(began, now)
        self.until = until
        said = redis_words_shown(error, self.password, 200)  # as redis-py sends it
        reason = (said or type(error).__name__).rstrip(".")
        left = max(until - now, 0.0)
        at = time.strftime("%H:%M:%S", time.localtime(time.time() + left))
        if self.read_only:
            state, wait = "is a read-only replica", "waits for it to take writes again"
            reason += "), failed over?"
        else:
            state, wait = "does not answer", "waits for it"
            reason += ")"
        logger.warning(
            "the queue's Redis at %s %s (%s: %s %s until %s (%d s more), then stops",
            self.where,
            state,
            reason,
            self.who,
            wait,
            at,
            round(left),
        )

    def answered(self) -> None:
        if self.since is None or self.said_over:
            # Said to stop: a command of its close that Redis then answered (unfrozen) said
            # "is back: the worker goes on" of a worker that was stopping.
            return
        logger.warning(
            "the queue's Redis at %s is back, after %d s: %s goes on",
            self.where,
            round(time.monotonic() - self.since),
            self.who,
        )
        self.since, self.until, self.said_over = None, None, False

    def ends(self, until: float) -> float:
        """When a command's tries end, ``until`` its own end: at the wait's end, if Redis is
        waited for (and at once, once the wait is over: the worker stops)."""
        return until if self.until is None else min(until, self.until)

    def gave_up(self, wait: float) -> None:
        if self.since is None or self.said_over:
            return
        self.said_over = True
        if self.read_only:
            logger.warning(
                "the queue's Redis at %s still refused writes as a read-only replica after"
                " %s s: %s stops",
                self.where,
                f"{wait:g}",
                self.who,
            )
            return
        logger.warning(
            "the queue's Redis at %s did not come back within %s s: %s stops",
            self.where,
            f"{wait:g}",
            self.who,
        )


@functools.cache
def _waiting_class() -> Any:
    """redis-py's ``Retry``, bounded in time, and not within itself.

    redis-py tries a command with its connection's ``Retry``, and each try's connect with the
    same one: a worker's command to a Redis that refused took 32 connects of 32 tries each
    (half an hour), and one to a Redis that accepted and never answered, for ever.
    """
    from redis.asyncio.retry import Retry
    from redis.exceptions import AuthenticationError as RedisAuthenticationError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    class _Waiting(Retry):
        #: A connection's connect, handshake and all, is tried as one (see _redis_send).
        tries_whole_connects = True

        def __init__(
            self, backoff: Any, retries: int, wait: float, answer: float, away: _Away | None
        ) -> None:
            super().__init__(backoff, retries)
            self.wait, self.answer, self.away = wait, answer, away

        async def call_with_retry(self, do: Any, fail: Any) -> Any:
            if _TRYING.get():  # a connect within a command's try: the command's tries count
                try:
                    return await do()
                except self._supported_errors as error:
                    await fail(error)
                    raise
            trying = _TRYING.set(True)
            try:
                return await self._tries(do, fail)
            finally:
                _TRYING.reset(trying)

        async def _tries(self, do: Any, fail: Any) -> Any:
            self._backoff.reset()  # type: ignore[no-untyped-call]
            mine = time.monotonic() + self.wait
            failures = 0
            while True:
                # One wait for all the pool's commands (and those of a worker's rate limit),
                # not one each: see _Away.until.
                until = mine if self.away is None else self.away.ends(mine)
                began = time.monotonic()
                within = max(min(self.answer, until - began), 0.001)
                try:
                    try:
                        # Not asyncio.wait_for: on 3.10 and 3.11 it drops a cancel landing as
                        # the answer is read (a worker's SIGTERM, and the worker polled on).
                        answer = await _bounded_in_time(do(), within)
                    except asyncio.TimeoutError:  # the read cancelled: its connection closed
                        raise RedisTimeoutError(f"no answer in {within:.3g} s") from None
                except self._supported_errors as error:
                    if isinstance(error, RedisAuthenticationError) or (
                        redis_refusal(error) is not error
                    ):
                        # Answered, and refused (redis-py's AuthenticationError is a
                        # ConnectionError; over a unix socket, any refusal of its handshake
                        # is one, as the connect these tries make whole, redis-py's, says it):
                        # a password changed on Redis as the run went on was waited for as a
                        # Redis away ("does not answer"), a minute for a password no wait puts
                        # right. Raised at once, as at the start.
                        await fail(error)
                        raise
                    failures += 1
                    await fail(error)
                    pause = self._backoff.compute(failures)
                    if self.away is not None:
                        self.away.failed(error, until, began)
                    if failures > self._retries or time.monotonic() + pause >= until:
                        if self.away is not None:
                            self.away.gave_up(self.wait)
                        raise error
                    await asyncio.sleep(pause)
                else:
                    if self.away is not None:
                        self.away.answered()
                    return answer

    return _Waiting


def _away_errors() -> list[type[BaseException]]:
    """The errors of a queue's Redis waited for once a run has begun: away (refused, reset,
    silent) or, failed over, a replica now.

    A failover makes the Redis a worker is connected to a replica (REPLICAOF), which refuses
    each write ("READONLY") until it is a primary again, or the connection made anew reaches
    the new one: the worker stopped at its next write ("refused: You can't write against a
    read only replica"), every worker of the fleet in a 5 s failover, the export left waiting
    on none. Its connection is closed and the command tried again, as for a restart.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ReadOnlyError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return [RedisConnectionError, RedisTimeoutError, OSError, ReadOnlyError]


def _backoff() -> Any:
    """The backoff between tries of a Redis away or loading: up to 2 s, about a minute in all."""
    from redis.backoff import ExponentialBackoff

    return ExponentialBackoff(cap=2.0, base=0.1)


#: What to do about a queue's Redis not reached as a run starts (before anything is queued).
UNREACHED = "is Redis running there, and is the URL right?"
#: ... and about one gone mid-run, past the tries (the coordinator's manifest kept).
GONE_MID_RUN = "the manifest is written as it stands: rerun the same command once it is back"
#: ... and about one whose TLS certificate this machine did not trust (a ``rediss://`` URL).
UNTRUSTED = (
    "its TLS certificate was not trusted: give the URL the certificate of its CA"
    " (?ssl_ca_certs=PATH), and the host name its certificate names"
)
#: What to do about a queue's Redis full under ``noeviction`` (redis-py's OutOfMemoryError).
FULL = "it is full: free some of its memory or raise its maxmemory, then rerun the same command"


def queue_redis_error(
    redis_url: str,
    err: BaseException,
    *,
    password_hint: str | None = None,
    then: str = UNREACHED,
) -> DMHubError:
    """The error of a queue's Redis that does not answer, or answers with a refusal.

    Reached and refused (full under ``noeviction``, an ACL user without a command arq needs,
    a database that does not exist, a wrong password), it was "cannot reach", which sent the
    user to the network: Redis's own words say what to fix, as the shared rate limit says
    them (the password masked: see without_password). A password missing or refused ("Authentication
    required.") says where one goes: ``password_hint``, else the URL; a Redis not reached,
    what to do next: ``then`` (it said only why, "Error 111 connecting to HOST:PORT").
    """
    from redis.exceptions import AuthenticationError as RedisAuthenticationError
    from redis.exceptions import BusyLoadingError, OutOfMemoryError, ResponseError

    where = redis_where(redis_url)
    # Of a connection of the SDK's (sending_cancellably), or raised by the worker's main: a
    # refusal of a unix socket's handshake comes as itself, as over TCP.
    # A refusal of the password met in a transaction (arq's enqueue watches its keys) comes
    # up as redis-py's WatchError, "A ConnectionError occurred on while watching one or more
    # keys", the refusal its context: said as "cannot reach", then, at random.
    context = err.__context__
    if not isinstance(err, RedisAuthenticationError) and isinstance(
        context, RedisAuthenticationError
    ):
        err = context
    # Redis's words may quote the password, as redis-py sends it (see without_password).
    reason = redis_words_shown(err, redis_password(redis_url))
    if isinstance(err, RedisAuthenticationError):
        hint = password_hint or "give its password in the URL, redis://:PASSWORD@HOST:PORT/DB"
        hint += no_colon_hint(redis_password(redis_url))
        return DMHubError(f"the queue's Redis at {where} refused: {reason.rstrip('.')}: {hint}")
    if isinstance(err, OutOfMemoryError):
        return DMHubError(f"the queue's Redis at {where} refused: {reason.rstrip('.')}: {FULL}")
    if isinstance(err, (ResponseError, BusyLoadingError)):
        return DMHubError(f"the queue's Redis at {where} refused: {reason}")
    # Why, in redis-py's words ("Error 111 connecting to HOST:PORT. Connect call failed",
    # "Connection lost"): it was the error's type alone, "ConnectionError".
    why = (reason or type(err).__name__).rstrip(".")
    if _certificate_refused(err):
        # A Redis that answered, with a certificate of a CA this machine does not know (a
        # private one's): "is Redis running there, and is the URL right?" sent the user to it.
        then = UNTRUSTED
    return DMHubError(f"cannot reach the queue's Redis at {where}: {why}: {then}")


def _certificate_refused(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from or in) is a TLS certificate not
    verified, as redis-py's ConnectionError of a ``rediss://`` connect carries it."""
    import ssl

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ssl.SSLCertVerificationError):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return False


def worker_credentials_hint(err: AuthenticationError, whose: str = "the workers'") -> str:
    """What to do about a shard a worker's credentials failed: check them where it runs.

    A worker reads DMHUB_APP_ID and DMHUB_SECRET from its own environment, on its own machine,
    so the coordinator's, which planned the export, may be right and a worker's wrong: the
    report said "error_code 40004: the params is illegal", then "rerun the same command",
    which failed the same way.
    """
    check = f"check {whose} DMHUB_APP_ID and DMHUB_SECRET (each worker reads its own environment)"
    if err.path == TOKEN_PATH or str(err.code) == "40004":
        # The token request itself was refused (by any code: 40013 on some services): the
        # credentials, never another process's fetch, which only revokes a token once issued.
        return check
    return (
        f"{check}, or whether another process using the same app id, not sharing the queue's "
        "token store, took the token (DM Hub keeps one token per app id)"
    )


def job_id_of(export_id: str, plan_id: str, index: int) -> str:
    """The job of one shard: a rerun of the coordinator finds the same job, never a second.

    The plan's id is part of it: an export started again in the same directory (deleted, or a
    new one at the same path) found the earlier export's results, kept in Redis for a week,
    and took them for its own, complete with no part written.
    """
    plan = f"{plan_id}:" if plan_id else ""  # a manifest written before plans had ids
    return f"dmhub-export:{export_id}:{plan}{index:05d}"


async def _export_shard_job(ctx: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The arq job: export one shard, renewing the job's in-progress mark while it runs."""
    from arq.constants import in_progress_key_prefix

    _check_same_version(task)  # first: a job of another shape may be misread in any field
    redis = ctx["redis"]
    in_progress = in_progress_key_prefix + ctx["job_id"]
    shard = Shard.from_dict(task["shard"])
    _check_known_filters(shard, task)
    try:
        directory = await _local_directory(task, ctx.get("mounts") or {})
    except _OfAnotherPlan as err:
        raise InvalidRequestError(await _said_of_another_plan(redis, task, err)) from None
    fmt = task["format"]
    progress_key = _progress_key(task["export_id"], task.get("plan_id", ""))
    last = 0.0

    takeover, every = ctx["takeover"], ctx["heartbeat"]
    _check_same_service(ctx["client"], task)
    # A client given an access token (no app id) fetches none, so revokes no one's: its store
    # goes unused, and such a worker was refused as keeping "the app's token" in it.
    fetches = getattr(ctx["client"], "app_id", None) is not None
    await _check_same_token_store(
        ctx.get("token_store_used") if fetches else None, task, ctx.get("sleep") or asyncio.sleep
    )

    ended = False

    async def heartbeat() -> None:
        from redis.exceptions import RedisError

        # Until the shard ends, not only until cancelled: a cancel was lost as a Redis answer
        # arrived (asyncio.wait_for, 3.10 and 3.11; a command's tries no longer use it, but a
        # command of arq's or redis-py's own may still lose one); the beat went on for ever.
        while not ended:
            # SET, not PEXPIRE: the mark comes back after Redis lost it (flushed, restarted),
            # so the job the coordinator enqueues again then is not taken from this worker.
            # A Redis away for a moment stops neither the beat nor the shard.
            with contextlib.suppress(RedisError, OSError):
                await redis.set(in_progress, b"1", px=int(takeover * 1000))
            if not ended:
                await asyncio.sleep(every)

    writing: asyncio.Future[Any] | None = None

    def on_progress(done: Any) -> None:
        nonlocal last, writing
        now = time.monotonic()
        # One write at a time: progress is the latest count, and a Redis away queued one write
        # every half second, each its own wait for Redis behind the pool's lock (see
        # _Away.until): the worker ran on for minutes after it said it stops.
        if writing is not None and not writing.done():
            return
        if now - last >= _PROGRESS_EVERY:
            last = now
            writing = asyncio.ensure_future(
                redis.hset(progress_key, str(shard.index), done.exported)
            )
            # Kept until written, no longer: a worker running for days held every one it made.
            pending = ctx["pending_progress"]
            pending.add(writing)
            writing.add_done_callback(functools.partial(_written, pending))

    beating = asyncio.ensure_future(heartbeat())
    try:
        report = await export_shard(
            ctx["client"],
            shard,
            directory / part_name(shard.index, fmt),
            checkpoint=directory / checkpoint_name(shard.index, fmt),
            format=fmt,
            page_size=task["page_size"],
            # The worker's own (--concurrency), for its machine, else the export's.
            concurrency=ctx.get("concurrency") or task["concurrency"],
            on_progress=on_progress,
            # A job of a coordinator of an earlier release has none: auto, as then.
            verify=task.get("verify", "auto"),
        )
        await redis.hset(progress_key, str(shard.index), report.exported)
        await redis.expire(progress_key, 7 * 24 * 3600)
        # Still beating: a complete part's SHA-256 is read here, and hashing gigabytes may take
        # longer than the mark lives. With the heartbeat stopped as the export ended, the mark
        # lapsed meanwhile, and another worker took the job, found the part's lock free and
        # exported the complete shard again from the start, over the part this result names.
        result = await result_of(report)
    except InUseError as err:  # export_shard's: the part's lock
        if ctx.get("job_try", 1) >= MAX_TRIES:  # its last try: failed, saying why
            raise
        raise _still_exported(shard.index, err, takeover) from None
    finally:
        ended = True
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
    # The job's own version: a coordinator of an earlier release reads the result of its job.
    version = task.get("job_version", 1)
    return {**result, "job_version": version, "release": __version__}


def _still_exported(index: int, err: InUseError, takeover: float) -> Exception:
    """arq's ``Retry`` of a shard whose part another worker is still exporting.

    A worker's in-progress mark is lost when the queue's Redis is away for longer than its
    life (frozen, restarted from a snapshot, failed over to a replica behind it), or the
    worker is paused that long: another worker then takes the job, while the first still
    exports the shard. The part's lock refused the second, and the shard was recorded failed
    ("in use by another export"), the coordinator ending the export as failed while the first
    worker went on writing it. Tried again in ``takeover`` seconds instead, by when the first
    worker's heartbeat has put its mark back (no worker takes the job while it is there), the
    job ends with the first worker's result; a first worker gone by then has released the
    lock, and the shard resumes from its checkpoint.
    """
    from arq.worker import Retry

    logger.warning(
        "shard %d: another worker is still exporting it (%s): left to it, and tried again in "
        "%s s if it has not ended by then",
        index,
        printable(str(err))[:300],
        f"{takeover:g}",
    )
    return Retry(defer=takeover)


#: What a worker that does not find the coordinator's directory is told to do.
_MAP_IT = (
    "mount the shared directory at that path, or tell the worker where it is mounted "
    "(dmhub-async worker --mount COORDINATOR_PATH=LOCAL_PATH; worker(mounts=))"
)


def check_mounts(mounts: object) -> dict[str, str]:
    """``worker(mounts=)`` as the job reads it: absolute paths, each normalised, the
    coordinator's distinct; or InvalidRequestError, when the worker is made."""
    if not isinstance(mounts, Mapping):
        raise InvalidRequestError(
            "worker(): mounts must be a mapping of the coordinator's paths to this worker's, "
            f"not {type(mounts).__name__}"
        )
    checked: dict[str, str] = {}
    for theirs, mine in mounts.items():
        for path in (theirs, mine):
            if not isinstance(path, (str, os.PathLike)) or not os.path.isabs(path):
                raise InvalidRequestError(
                    f"worker(): mounts: {printable(str(path))[:200]!r} is not an absolute path"
                )
            text = os.fspath(path)
            if isinstance(text, str) and (why := unnameable(text)) is not None:
                # Taken, every job mapped through it failed "not a directory on this worker"
                raise InvalidRequestError(f"worker(): mounts: {text!r} {why}")
        key = os.path.normpath(os.fspath(theirs))
        if key in checked:
            raise InvalidRequestError(f"worker(): mounts: {key} is mapped twice")
        checked[key] = os.path.normpath(os.fspath(mine))
    return checked


async def _local_directory(task: dict[str, Any], mounts: Mapping[str, str]) -> Path:
    """The job's directory on this worker: the coordinator's path, or where ``mounts`` maps
    it (the longest of the coordinator's paths it lies in), checked to be the job's export.

    A job names the directory by the coordinator's path: a worker that mounts the shared
    volume elsewhere failed every shard ("cannot write to ..."). Mapped or not, the directory
    must hold the manifest of the job's plan (its id): a mount to another export's directory,
    or to an empty one, or a directory of the worker's own at the coordinator's path, would
    have exported the shard there.
    """
    named = os.fspath(task["directory"])
    for theirs in sorted(mounts, key=len, reverse=True):
        rest = _within(named, theirs)
        if rest is None:
            continue
        local = Path(mounts[theirs], rest)
        mount = f"{theirs}={mounts[theirs]}"
        where = f"the export's directory {named}, mapped to {local} (mount {mount})"
        await asyncio.to_thread(_check_same_plan, local, task, where)
        return local
    if not await asyncio.to_thread(os.path.isdir, named):
        raise InvalidRequestError(
            f"the export's directory {named} is not on this worker: {_MAP_IT}"
        )
    # Unmapped too: a worker with a directory of its own at that path (not the shared volume)
    # exported its shard there, and the coordinator recorded it complete, the part on no
    # machine the coordinator could merge from.
    await asyncio.to_thread(_check_same_plan, Path(named), task, f"the export's directory {named}")
    return Path(named)


def _within(path: str, prefix: str) -> PurePath | None:
    """``path`` relative to ``prefix`` (``.`` when the same), or None when it is not in it."""
    try:
        return PurePath(os.path.normpath(path)).relative_to(prefix)
    except ValueError:
        return None


def _check_same_plan(local: Path, task: dict[str, Any], where: str) -> None:
    """Refuse a mapped directory that is not the job's export's (on a thread: file work)."""
    import orjson

    if not local.is_dir():
        raise InvalidRequestError(f"{where} is not a directory on this worker: check the mount")
    try:
        raw = (local / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise InvalidRequestError(
            f"{where} holds no {MANIFEST_NAME}: not the export's directory; check the mount"
        ) from None
    try:
        recorded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        recorded = None
    if not isinstance(recorded, dict):
        raise InvalidRequestError(f"{where} holds a {MANIFEST_NAME} this SDK did not write")
    # The plan's id, made when the directory was planned: the same export, not only a
    # directory of the same name. A job of a coordinator of 0.1.0 carries none: its service.
    plan = task.get("plan_id") or ""
    if plan:
        mine, theirs = recorded.get("plan_id"), plan
    else:
        mine = (recorded.get("base_url"), recorded.get("app_id"), recorded.get("format"))
        theirs = (task.get("base_url"), task.get("app_id"), task.get("format"))
    if mine != theirs:
        said = printable(str(mine))[:80]
        # Another plan's id is all a worker sees: a job left on the queue by an earlier export
        # at this path (its directory deleted and exported again) reads the same as a mount to
        # another export's directory. It was said to be the mount alone, which was right.
        why = (
            "a job of another plan: one left on the queue by an earlier export at this path"
            " (its directory since deleted and exported again), which needs nothing done, or a"
            " mount to another export's directory: check the mount"
            if plan
            else "check the mount"
        )
        message = (
            f"{where} holds another export's {MANIFEST_NAME} (plan {said}, the job's "
            f"{printable(str(theirs))[:80]}): the worker exported nothing; {why}"
        )
        if plan and isinstance(mine, str):
            raise _OfAnotherPlan(message, mine, where)
        raise InvalidRequestError(message)
    _check_not_complete(local, recorded, task, where)


class _OfAnotherPlan(InvalidRequestError):
    """:func:`_check_same_plan`'s refusal of a directory holding the manifest of another plan
    (``plan``), which :func:`_said_of_another_plan` may tell apart."""

    def __init__(self, message: str, plan: str, where: str) -> None:
        super().__init__(message)
        self.plan, self.where = plan, where


async def _said_of_another_plan(redis: Any, task: dict[str, Any], err: _OfAnotherPlan) -> str:
    """``err``'s words, or, when this Redis holds a job of the directory's plan under the job's
    own export id (the same path: that plan's coordinator enqueued it here), that this job is
    an earlier plan's, left on the queue: nothing to check. Either way on a worker's refusal,
    one Redis command; Redis refusing it leaves ``err``'s words."""
    from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix

    shard = task.get("shard")
    index = shard.get("index") if isinstance(shard, dict) else None
    indices = {0, index} if isinstance(index, int) and 0 <= index < 100_000 else {0}
    ids = [job_id_of(str(task.get("export_id")), err.plan, i) for i in sorted(indices)]
    prefixes = (job_key_prefix, result_key_prefix, in_progress_key_prefix)
    try:
        found = await redis.exists(*(prefix + job_id for job_id in ids for prefix in prefixes))
    except Exception:  # redis-py's errors, whatever the version: not told apart
        return str(err)
    if not found:
        return str(err)
    return (
        f"{err.where} holds the {MANIFEST_NAME} of a later plan of this export ({err.plan}),"
        f" whose jobs this Redis holds: this job ({task.get('plan_id')}) was left on the queue"
        " by an earlier export at this path, its directory since deleted and exported again;"
        " the worker exported nothing, and nothing needs doing"
    )


def _check_not_complete(
    local: Path, recorded: dict[str, Any], task: dict[str, Any], where: str
) -> None:
    """Refuse the job of a shard its manifest records complete, its part still as recorded.

    Only a job left on the queue does that: a coordinator enqueues the shards not complete,
    and records one complete only once its job has ended. An export stopped on its queue and
    finished by another run (``--workers``, one process) left its jobs there, and a worker
    that came later exported each complete part again from the start, over the part the
    manifest recorded: truncated while it ran, then holding customers the late check had not
    recorded (the merge of the complete export refused it).
    """
    shard, shards = task.get("shard"), recorded.get("shards")
    if not isinstance(shard, dict) or not isinstance(shards, list):
        return  # a manifest of no shards' entries (an earlier release's) is not checked
    index = shard.get("index")
    fmt = task.get("format", "jsonl")
    name = part_name(index, fmt) if type(index) is int and index >= 0 else None
    for entry in shards:
        if not isinstance(entry, dict) or entry.get("file") != name or name is None:
            continue
        size = entry.get("size")
        if entry.get("status") != "complete" or not isinstance(size, int):
            return
        try:
            if (local / name).stat().st_size != size:
                return  # changed since: the coordinator exports it again
        except OSError:
            return
        raise InvalidRequestError(
            f"shard {index} is complete in the {MANIFEST_NAME} of {where} ({name}, {size:,} bytes):"
            " this job was left on the queue by an earlier run of the export; the worker"
            " exported nothing, the part left as recorded"
        )


def _written(pending: set[asyncio.Future[Any]], writing: asyncio.Future[Any]) -> None:
    """A progress write done: out of the worker's pending set, its error (a Redis away for a
    moment) seen, as the close's gather saw it: progress is a hint, the part is the record."""
    pending.discard(writing)
    if not writing.cancelled():
        writing.exception()


def job_version(shard: Shard, verify: Verify = "auto") -> int:
    """The version of ``shard``'s job, exported with ``verify``: the lowest that carries it,
    for the releases it serves."""
    if verify != "auto":
        return VERIFY_JOB_VERSION
    return ID_SLICE_JOB_VERSION if shard.id_slice is not None else WINDOW_JOB_VERSION


def _check_same_version(task: dict[str, Any]) -> None:
    """Refuse a job of another :data:`JOB_VERSION` than this worker's, before it is read.

    A rolling upgrade (a coordinator of one release, workers of another on one queue): a
    worker exported a job as it read it, and wrote a part the coordinator then misread.
    """
    theirs = task.get("job_version", 1)
    if theirs not in _READ_VERSIONS:
        raise InvalidRequestError(
            _mixed_releases(
                f"this worker runs dmhub_async {__version__} (job version {JOB_VERSION}), "
                f"the coordinator {_release_of(task)} (job version {theirs!r}): the worker "
                "exported nothing"
            )
        )


def _check_known_filters(shard: Shard, task: dict[str, Any]) -> None:
    """Refuse a job whose shard carries a filter this release has not, before it is exported.

    A job of a coordinator of another release (or one made by hand) failed with
    ``export_customers``' raw TypeError, which the coordinator's report said as "TypeError".
    """
    from ..resources._filters import FILTER_NAMES

    unknown = [printable(str(name))[:40] for name in shard.filters if name not in FILTER_NAMES]
    if unknown:
        names = ", ".join(repr(n) for n in unknown[:5])
        raise InvalidRequestError(
            _mixed_releases(
                f"the job's shard has a filter this worker's dmhub_async {__version__} does not "
                f"know ({names}), sent by a coordinator of {_release_of(task)}: the worker "
                "exported nothing"
            )
        )


def _secret_of(settings: Any) -> str | None:
    """The secret arq's ``RedisSettings`` sends Redis: its password, or a user name given with
    none (``redis://PASSWORD@HOST``, which redis-py sends as a user name)."""
    return redis_secret(getattr(settings, "password", None), getattr(settings, "username", None))


def _release_of(sent: dict[str, Any]) -> str:
    release = sent.get("release")
    return printable(str(release))[:40] if release is not None else "0.1.0 or earlier"


def _mixed_releases(what: str) -> str:
    return (
        f"{what}; run one release on the coordinator and every worker of a queue (upgrade "
        "them together, or give each release its own Redis), then rerun the export"
    )


def _check_same_service(client: Any, task: dict[str, Any]) -> None:
    """Refuse a shard of an export from another service or app than this worker's client.

    The base URLs are compared in one spelling, as the token store keys them (the host's case,
    a default port): a worker whose DMHUB_BASE_URL spelled the coordinator's service otherwise
    (``https://API.example.com:443``) refused every shard as another export's.
    """
    mine = (client.base_url, client.app_id)
    theirs = (task.get("base_url", client.base_url), task.get("app_id", client.app_id))
    if (one_spelling(mine[0]), mine[1]) != (one_spelling(theirs[0]), theirs[1]):
        if mine[1] is None and one_spelling(mine[0]) == one_spelling(theirs[0]):
            # A worker given an access token alone, on an export planned with an app id: it
            # was said to have taken "another export's shard" (of "app None"), and told to
            # give each app workers of their own, of the very export it serves.
            raise InvalidRequestError(
                f"a worker given an access token alone took a shard of an export of {theirs[0]}"
                f" planned with app {theirs[1]}, which it cannot show is its token's app (it has"
                " no app id), and exported nothing: give the worker the app's id and secret"
                " (DMHUB_APP_ID and DMHUB_SECRET, or worker()'s client app_id and secret) in"
                " place of the token"
            )
        if theirs[1] is None and one_spelling(mine[0]) == one_spelling(theirs[0]):
            # The other way round: an export planned with an access token alone, whose job
            # carries no app id, was "another export's shard, of ... (app None)" too.
            raise InvalidRequestError(
                f"a worker of app {mine[1]} took a shard of an export of {theirs[0]} planned with"
                " an access token alone, which cannot show its app is the worker's (it has no"
                " app id), and exported nothing: plan the export with the app's id and secret"
                " in place of the token"
            )
        raise InvalidRequestError(
            f"a worker exporting from {mine[0]} (app {mine[1]}) took another export's shard, "
            f"of {theirs[0]} (app {theirs[1]}), and exported nothing: give each service or "
            "app workers of their own (its own Redis, or Redis database)"
        )


class TokenStoreMark:
    """The mark a coordinator keeps in its token store's Redis while it runs (see
    :func:`mark_token_store`): ``name`` goes in each job, :meth:`keep` sets it again.

    Set once, at the start, it was lost with the data of a Redis flushed or restarted without
    persistence, which the queue takes (its lost jobs are enqueued again): each job enqueued
    again, or taken after a token store of its own restarted, was refused by every worker as
    of "not the coordinator's token store", its shard failed.
    """

    def __init__(self, url: str, name: str, prefix: str) -> None:
        self._url = url
        self.name = name
        self._prefix = prefix
        self._keys = [prefix + TOKEN_STORE_MARK + name]
        self._redis: Any = None

    def also(self, name: object) -> bool:
        """Keep the mark ``name`` too (from the next :meth:`keep` on): that of the jobs an
        earlier run of the export left on the queue, which this run follows as they are.
        Whether it is new (a mark, not kept yet).

        Its own alone was set again: the token store's Redis restarted without its data (or
        flushed) since that run, every worker refused each such job as of "not the
        coordinator's token store", the same store blamed as another, its shard failed.
        """
        if not isinstance(name, str) or not _MARK_NAME.fullmatch(name):
            return False
        key = self._prefix + TOKEN_STORE_MARK + name
        if key in self._keys:
            return False
        self._keys.append(key)
        return True

    async def keep(self) -> bool:
        """Set the mark (again): False when the store cannot be reached or refuses it."""
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        try:
            if self._redis is None:
                self._redis = Redis.from_url(
                    self._url, socket_connect_timeout=MARK_ANSWER, socket_timeout=MARK_ANSWER
                )
                sending_cancellably(self._redis.connection_pool)
            for key in self._keys:
                await self._redis.set(key, b"1", ex=QUEUED_FOR + JOB_TIMEOUT)
        except (RedisError, OSError, ValueError):
            return False
        return True

    async def aclose(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await to_the_end(redis.aclose())


async def mark_token_store(url: str, prefix: str | None = None) -> TokenStoreMark | None:
    """Set a mark in the token store at ``url`` (a Redis; its keys' ``prefix``, by default
    ``RedisTokenStore``'s), for the jobs to name: a worker then tells whether its own store is
    that one. None when it cannot be set (no check then).

    The coordinator keeps it there as it runs (:meth:`TokenStoreMark.keep`, at each poll) and
    closes it at its end (:meth:`TokenStoreMark.aclose`)."""
    import secrets

    from .._token_stores import REDIS_TOKEN_PREFIX

    mark = TokenStoreMark(
        url, secrets.token_hex(8), REDIS_TOKEN_PREFIX if prefix is None else prefix
    )
    if not await mark.keep():
        await mark.aclose()
        return None
    return mark


async def _check_same_token_store(
    store: Any, task: dict[str, Any], sleep: Callable[[float], Awaitable[None]]
) -> None:
    """Refuse a job whose coordinator keeps the app's token in another store than this worker.

    DM Hub keeps one token per app id, and each fetched revokes the last: a worker whose
    machine named another Redis in DMHUB_TOKEN_STORE (or --token-store) and the others took
    turns revoking each other's token, and their shards failed as they ran, parts half written,
    with error_code 40001. A job of a coordinator that set no mark, a store that is no
    ``RedisTokenStore`` (a program's own) or one that cannot be read now is not checked.

    A mark not found is looked for again, for :data:`MARK_LOOKED_FOR` seconds (``sleep``),
    before the job is refused: one taken just before its Redis was flushed was refused as of
    another store, though the coordinator's next poll set the mark again.
    """
    from .._auth import RedisTokenStore

    mark = task.get("token_store_mark")
    if not isinstance(mark, str) or not isinstance(store, RedisTokenStore):
        return
    from redis.exceptions import RedisError

    looks = max(1, round(MARK_LOOKED_FOR / MARK_LOOK_EVERY))
    for look in range(looks):
        if look:
            await sleep(MARK_LOOK_EVERY)
        try:
            found = await (await store._client()).exists(store._prefix + TOKEN_STORE_MARK + mark)
        except (RedisError, OSError):
            return  # its errors are said by the token fetches that need it
        except RuntimeError as err:
            # A client= of another event loop (used in a set-up's asyncio.run()): the shard
            # failed with a raw "RuntimeError: Event loop is closed", where the store recovers,
            # or says why in its own words (TokenStoreError).
            if "loop" not in str(err):
                raise
            return
        if found:
            return
    if not found:
        raise InvalidRequestError(
            f"this worker keeps the app's token in {store!r}, which is not the coordinator's "
            "token store: DM Hub keeps one token per app id, so the two would revoke each "
            "other's token as the shard runs; the worker exported nothing. Give the coordinator "
            "and every worker one token store (the queue's Redis, unless --token-store or "
            "DMHUB_TOKEN_STORE names the same other Redis on each), then rerun the export"
        )


@arguments_forgotten_if_refused
def worker(
    redis_url: str,
    *,
    client: dict[str, Any] | None = None,
    rate_limit: float | None = None,
    max_jobs: int = 1,
    concurrency: int | None = None,
    burst: bool = False,
    heartbeat: float = HEARTBEAT,
    takeover: float = IN_PROGRESS_TTL,
    handle_signals: bool = True,
    mounts: Mapping[str, str] | None = None,
) -> Any:
    """An arq ``Worker`` that exports shards; ``.run()`` it (the CLI's ``dmhub-async worker``).

    Args:
        redis_url: the queue's Redis, ``redis://HOST:PORT/DB``; also the shared token store and
            the shared rate limit.
        client: more ``DMHubClient`` keyword arguments (credentials default to the environment).
        rate_limit: requests per second shared by every worker of the app on this Redis
            given the same rate (one given another keeps a window of its own, one given None
            is not limited: give each the same), or None.
        max_jobs: shards this worker exports at once.
        concurrency: requests this worker keeps in flight, its ``max_jobs`` shards together
            (its client's ``max_concurrency``), and the pages each shard walks at once, in
            place of the export's ``concurrency`` (the job's): a bigger machine (or a
            smaller one) than the coordinator's. None: each shard walks the export's
            ``concurrency``, within the client's own limit (16, or ``client``'s).
        burst: stop when the queue is empty (for tests and batch machines).
        heartbeat: seconds between renewals of a running job's in-progress mark.
        takeover: seconds after its worker dies that a job is taken over (> ``heartbeat``).
        handle_signals: let arq handle SIGINT/SIGTERM (False inside a program that does).
        mounts: where this worker mounts the export directories' shared volume when not at
            the coordinator's path: ``{"/exports": "/mnt/exports"}`` exports a job of
            ``/exports/june`` into ``/mnt/exports/june``, once that directory is found to hold
            the job's export (the plan id of its ``manifest.json``), else fails the shard
            saying so. Absolute paths; the longest of the coordinator's paths that holds the
            job's directory applies.

    A Redis that goes away (restarted, failed over) is waited for, about a minute
    (:data:`REDIS_RETRIES` tries of each command, within :data:`REDIS_WAIT` seconds, each
    answered within :data:`REDIS_ANSWER`); past that ``run()`` raises redis-py's
    ConnectionError (or TimeoutError: a Redis paused or cut off).
    """
    # Its client's settings (the secret among them): in this frame's variables and the
    # startup's, which an error tracker records, shown by their names alone.
    settings = _ClientSettings(client or {})
    del client
    # Finite: an infinite takeover was taken, then every job failed renewing its mark.
    check_number("worker(): heartbeat", heartbeat, 0, inclusive=False, finite=True)
    check_number("worker(): takeover", takeover, 0, inclusive=False, finite=True, high=1e9)
    settings_of_redis = queue_settings(redis_url, "worker(): redis_url")
    if not heartbeat < takeover:
        raise InvalidRequestError("worker(): heartbeat must be positive and below takeover")
    check_number("worker(): max_jobs", max_jobs, 1, inclusive=True, kind=int)
    # arq reads them by truthiness: burst="false" (a setting read as text) stopped the worker
    # as soon as the queue was empty.
    check_flag("worker", "burst", burst)
    check_flag("worker", "handle_signals", handle_signals)
    if concurrency is not None:
        concurrency = check_concurrency(concurrency, "worker(): concurrency")
    if rate_limit is not None:  # checked by the limiter too, but only at the worker's start
        check_shared_rate("worker(): rate_limit", rate_limit)
    mapped = check_mounts(mounts) if mounts is not None else {}
    from arq.worker import func

    # A Redis restarted or failed over is waited for: without tries, the worker's first poll
    # after it went away raised, and every worker of the fleet exited. Each command (and each
    # connection) is tried again, with a backoff up to 2 s, for about a minute (REDIS_WAIT),
    # each try answered within REDIS_ANSWER; arq's own tries at the start would repeat that
    # minute five times.
    settings_of_redis.retry = _waiting(redis_url=redis_url)
    # A refused connection is an OSError (redis-py's tries know only its own errors).
    settings_of_redis.retry_on_error = _away_errors()
    settings_of_redis.conn_retries = 0

    from .._auth import RedisTokenStore
    from .._client import DMHubClient
    from .._shared_rate import RedisRateLimiter

    if concurrency is not None:
        settings.setdefault("max_concurrency", concurrency)

    async def startup(ctx: dict[str, Any]) -> None:
        await _say_clock_behind(ctx.get("redis"))
        kwargs = _ClientSettings(settings)
        # A store made here is closed at shutdown; one passed in is its maker's to close.
        ctx["token_store"] = None if "token_store" in kwargs else RedisTokenStore(redis_url)
        kwargs.setdefault("token_store", ctx["token_store"])
        ctx["token_store_used"] = kwargs["token_store"]  # checked against each job's mark
        limiter = None
        if rate_limit is not None:
            app_id = kwargs.get("app_id") or os.environ.get("DMHUB_APP_ID") or "default"
            limiter = RedisRateLimiter(redis_url, rate_limit, key=str(app_id))
            # Its Redis is the queue's: waited for as the worker's commands wait (one wait, the
            # same _Away), not a shard failed the moment Redis restarts.
            limiter.waiting_as(settings_of_redis.retry, tuple(settings_of_redis.retry_on_error))
            kwargs["rate_limit"] = limiter
        ctx["limiter"] = limiter
        ctx["client"] = DMHubClient(**kwargs)
        ctx["pending_progress"] = set()
        ctx["heartbeat"], ctx["takeover"] = heartbeat, takeover
        ctx["concurrency"] = concurrency
        ctx["mounts"] = mapped

    async def shutdown(ctx: dict[str, Any]) -> None:
        if ctx.get("shut_down"):  # once, whether arq's close ran it or _ShardWorker's
            return
        ctx["shut_down"] = True
        await _close(ctx.get("client"), ctx.get("limiter"), ctx.get("pending_progress") or set())
        if ctx.get("token_store") is not None:
            await ctx["token_store"].aclose()

    job = func(_export_shard_job, name=JOB_NAME, max_tries=MAX_TRIES, timeout=JOB_TIMEOUT)
    arq_worker = _worker_class()(
        functions=[job],
        redis_settings=settings_of_redis,
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=max_jobs,
        burst=burst,
        keep_result=7 * 24 * 3600,
        # A result without its job's arguments: they hold the export's filters (personal
        # data: a mobile number), and arq kept them for as long as the result, a week.
        job_serializer=_without_arguments,
        poll_delay=0.5,
        # Redis heard from while the worker's shards run: it stops once Redis is gone.
        health_check_interval=HEALTH_EVERY,
        handle_signals=handle_signals,
    )
    # arq marks a job in progress for its whole timeout plus 10 s; the job's heartbeat keeps
    # the mark alive while its worker lives, so a short first mark is safe.
    arq_worker.in_progress_timeout_s = takeover
    return arq_worker


async def _redis_now(pool: Any) -> datetime | None:
    """The queue's Redis's clock now (``TIME``), or None for a Redis user refused it (an ACL
    user given arq's commands alone): a job is then due by this machine's clock, as arq has it.
    """
    from redis.exceptions import ResponseError

    try:
        seconds, micros = await pool.time()
    except ResponseError:  # NoPermissionError: refused, not away (that is waited for)
        return None
    return datetime.fromtimestamp(seconds + micros / 1e6, tz=timezone.utc)


class _ClientSettings(dict[str, Any]):
    """A worker's ``DMHubClient`` keyword arguments, shown by their names alone: the app secret
    is among them, and they are variables of the frames (the worker's, its startup's) of an
    error raised as the worker is made or starts (a client setting refused), which an error
    tracker records with their ``repr``."""

    def __repr__(self) -> str:
        return f"<client settings: {', '.join(map(str, self))}>"


#: Seconds a worker's clock may be behind the queue's Redis's before it says so as it starts.
CLOCK_BEHIND_SAID = 5.0


async def _say_clock_behind(redis: Any) -> None:
    """A WARNING when this machine's clock is behind the queue's Redis's by more than
    :data:`CLOCK_BEHIND_SAID`: a job is due by Redis's clock (the coordinator enqueues it so)
    and arq takes it once the worker's own clock says it is due, so such a worker sat idle,
    alive and silent, for the difference."""
    from arq import utils
    from redis.exceptions import RedisError

    if redis is None:
        return
    try:
        now = await _redis_now(redis)
    except (RedisError, OSError):  # said by the commands after, as they are waited for
        return
    if now is None:  # a Redis user refused TIME: nothing to compare with
        return
    behind = now.timestamp() - utils.timestamp_ms() / 1000  # arq's worker's clock
    if behind > CLOCK_BEHIND_SAID:
        logger.warning(
            "this machine's clock is %d s behind the queue's Redis's: this worker takes each "
            "shard about %d s after it is due (a worker goes by its own clock): set its clock "
            "right (NTP)",
            round(behind),
            round(behind),
        )


def _without_arguments(data: dict[str, Any]) -> bytes:
    """arq's serializer (pickle), a job's result kept without the job's arguments.

    A result holds the job's arguments (arq's ``'a'``), so the shard and its filters, for the
    week Redis keeps it; the coordinator reads only the result itself (``'r'``), as do the
    releases before this one. A job (no ``'r'``) is as arq writes it.
    """
    import pickle

    if "r" in data and "a" in data:
        data = {**data, "a": (), "k": {}}
    return pickle.dumps(data)


@functools.cache
def _worker_class() -> Any:
    """arq's ``Worker``, whose close neither waits for nor fails on a Redis gone by then."""
    from arq.worker import Worker
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    class _ShardWorker(Worker):
        #: Whether its close has cancelled its jobs (see _jobs_ended).
        _jobs_cancelled = False

        def handle_sig(self, signum: Any) -> None:
            if not self._jobs_cancelled:  # its close cancels once, and says so once
                super().handle_sig(signum)

        async def main(self) -> None:
            """arq's main, its pool's every read answered within :data:`REDIS_ANSWER`.

            arq's pool reads without a timeout: a try of a command is bounded (_waiting), but
            not the reads a new connection makes as it connects (redis-py's CLIENT SETINFO),
            which a frozen Redis left unanswered for ever.

            Redis's errors are raised from here, without redis-py's frames and the errors they
            chained: the variables of those frames that an error tracker records (Sentry's
            default) held the password (redis-py's AUTH arguments, as a connection is made).
            Nor in their words: a Redis that does not know AUTH quotes it (without_password).
            """
            try:
                await self._main()
            except (RedisError, OSError) as caught:
                # A refusal over a unix socket, as over TCP: arq's pool, made and PINGed as
                # the worker starts, has redis-py's own connections (see redis_refusal).
                err = redis_refusal(caught)
                del caught
                said = str(err)
                if isinstance(err, RedisError):  # one message; an OSError's errno is kept
                    # No variable of this frame, which the error's traceback keeps, holds
                    # the password: an error tracker records them.
                    masked = without_password(said, _secret_of(self.redis_settings))
                    if masked != said:
                        err.args = (masked,)
                raise err.with_traceback(None) from None

        async def _main(self) -> None:
            if self._pool is None:
                from arq.connections import create_pool

                made = create_pool(
                    self.redis_settings,
                    job_deserializer=self.job_deserializer,
                    job_serializer=self.job_serializer,
                    default_queue_name=self.queue_name,
                    expires_extra_ms=self.expires_extra_ms,
                )
                try:
                    # A SIGTERM as the pool is made stops the worker (not so asyncio.wait_for).
                    self._pool = await _bounded_in_time(made, REDIS_WAIT + REDIS_ANSWER)
                except asyncio.TimeoutError:  # as a command's tries say it: "cannot reach"
                    raise RedisTimeoutError(f"no answer in {REDIS_WAIT:g} s") from None
            _answered_within(self._pool, REDIS_ANSWER)
            # A SIGTERM as a poll's command is sent stops the worker: it polled on.
            sending_cancellably(self._pool.connection_pool)
            await super().main()

        async def start_jobs(self, job_ids: list[bytes]) -> None:
            """arq's, a job's transaction tried again when Redis cut its connection inside it.

            arq takes a job by WATCHing its in-progress mark, then reading it: a connection cut
            in between (a restart, a failover) came out of redis-py as a WatchError ("A
            ConnectionError occurred on while watching one or more keys"), which no try makes
            again: the worker stopped at once, "cannot reach the queue's Redis", where a Redis
            away is waited for. Redis is waited for as any command waits, and the job taken
            anew (no EXEC was sent): see :func:`_watched_again`.
            """
            for job_id in job_ids:
                await _watched_again(self.pool, functools.partial(self._start_job, job_id))

        async def _start_job(self, job_id: bytes) -> None:
            """arq's ``start_jobs`` of one job; cut off by its Redis inside the transaction,
            the job's place (its semaphore, its count), which arq took first, given back."""
            from redis.exceptions import WatchError

            try:
                await super().start_jobs([job_id])
            except WatchError as err:
                if isinstance(err.__context__, tuple(_away_errors())):
                    self.job_counter -= 1
                    self.sem.release()
                raise

        async def finish_job(self, *args: Any, **kwargs: Any) -> None:
            """arq's, whose error is taken from its task even when no job waits for it.

            arq records a job's end in a task of its own (``asyncio.shield``): the close
            cancels the job outside it (see :meth:`_jobs_ended`), and the record, left to fail
            on its own against a Redis gone (a busy ``--rate-limit`` worker whose Redis stayed
            away past its wait), reached stderr as asyncio's "Task exception was never
            retrieved" with a 60-line traceback of redis-py's. Awaited, the job still gets the
            error; left, the job is run again once its in-progress mark lapses.
            """
            _retrieved_in_its_own_task(_ShardWorker.finish_job.__code__)
            await super().finish_job(*args, **kwargs)

        async def finish_failed_job(self, *args: Any, **kwargs: Any) -> None:
            """arq's, whose error is taken from its task as :meth:`finish_job`'s is."""
            _retrieved_in_its_own_task(_ShardWorker.finish_failed_job.__code__)
            await super().finish_failed_job(*args, **kwargs)

        async def close(self) -> None:
            """Stop: arq's close, which tells Redis the worker is gone; with Redis away, the
            worker's own shutdown all the same, at once.

            arq's close raised redis-py's error (the CLI's SIGTERM a traceback), and skipped
            the shutdown that closes the client; with the tries for a restarting Redis, it
            waited a minute first. The health key it could not delete expires on its own.
            """
            pool = self._pool
            if pool is not None:  # one try each, answered in CLOSE_ANSWER: a frozen Redis too
                once = _waiting(retries=0, answer=CLOSE_ANSWER)
                _answered_within(pool, CLOSE_ANSWER)
                pool.connection_pool.set_retry(once)
                pool.connection_pool.connection_kwargs["retry"] = once  # its new connections
                # arq closes its pool with redis-py's close(), deprecated for aclose() (the
                # same, under its new name): under `python -W error` (a test suite's
                # filterwarnings = error) every stop of a worker was a DeprecationWarning's
                # traceback, its connections left open.
                pool.close = pool.aclose
            try:
                await self._jobs_ended()
                await super().close()
            except (RedisError, OSError) as err:
                # INFO: nothing to act on (the health key expires on its own), and a warning
                # reached the CLI's stderr unprefixed, a second line where the docs say one.
                logger.info("the queue's Redis is away as the worker stops: %s", type(err).__name__)
                self._pool = None
                if self.on_shutdown is not None:
                    await self.on_shutdown(self.ctx)
                if pool is not None:
                    await pool.aclose()

        async def _jobs_ended(self) -> None:
            """The jobs cancelled, as arq's close cancels them, and waited for to their end,
            whatever it is; then out of ``tasks``, where arq's close gathers them.

            A job already recording its end (arq's ``finish_job``, shielded) is cancelled in
            that shield, and its CancelledError, gathered, came out of the close: a busy
            worker with a shared rate limit whose Redis stayed away past its wait (its job
            failed as the wait ended, with the worker's commands) stopped in a traceback, not
            "cannot reach the queue's Redis", its shutdown skipped (its client left open). A
            Redis error a job ended with is raised, as arq's gather raised it.
            """
            import signal

            if not self._handle_signals:  # arq's close's own first step (said: SIGUSR1)
                self.handle_sig(signal.SIGUSR1)
                self._jobs_cancelled = True  # not said again by arq's close, 0 jobs to cancel
            tasks = dict(self.tasks)
            if tasks:
                await asyncio.wait(tasks.values())  # a cancel of the close itself still stops it
            error: BaseException | None = None
            for job_id, task in tasks.items():
                self.tasks.pop(job_id, None)
                if not task.cancelled() and task.exception() is not None and error is None:
                    error = task.exception()
            if error is not None:
                raise error

    return _ShardWorker


def _retrieved_in_its_own_task(code: types.CodeType) -> None:
    """The exception of the task running the coroutine of ``code`` (a record arq shields in
    a task of its own) taken once it ends, so that asyncio does not say it, unretrieved, with
    its traceback; nothing when the coroutine runs in its caller's task."""
    task = asyncio.current_task()
    if task is not None and getattr(task.get_coro(), "cr_code", None) is code:
        task.add_done_callback(_exception_taken)


def _exception_taken(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _answered_within(pool: Any, seconds: float) -> None:
    """Every read of ``pool``'s connections, theirs now and those it makes, bounded."""
    connections = pool.connection_pool
    connections.connection_kwargs["socket_timeout"] = seconds
    for connection in pool_connections(connections):
        connection.socket_timeout = seconds


async def _close(client: Any, limiter: Any, writes: set[asyncio.Future[Any]]) -> None:
    if writes:  # hints: those a Redis gone leaves unanswered are not waited for (CLOSE_ANSWER)
        _, unwritten = await asyncio.wait(set(writes), timeout=CLOSE_ANSWER)
        for writing in unwritten:
            writing.cancel()
        await asyncio.gather(*writes, return_exceptions=True)
    if client is not None:
        await client.aclose()
    if limiter is not None:
        await limiter.aclose()


async def run_on_queue(
    redis_url: str,
    directory: str | os.PathLike[str],
    manifest: Manifest,
    *,
    page_size: int = 100,
    concurrency: int = 8,
    progress: bool = True,
    on_total: TotalProgress | None = None,
    poll: float = 0.5,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    takeover: float = IN_PROGRESS_TTL,
    verify: Verify = "auto",
    password_hint: str | None = None,
    token_store_mark: TokenStoreMark | None = None,
) -> Manifest:
    """Enqueue the manifest's pending shards, follow them to the end, and write the manifest.

    ``verify`` is each shard's export's, as for ``export_customers``, carried by its job: a job
    with ``"always"`` is of job version 3, which a worker of an earlier release refuses (its
    shard failed, saying both releases) rather than export it unchecked.

    A shard's job that Redis loses (flushed, or restarted without its data) is enqueued again,
    to start ``takeover`` seconds later (the workers' own ``takeover``).

    ``password_hint``: where the Redis password goes, said when Redis refuses it, at the start
    or mid-run (the CLI's variable; by default, the URL).

    ``token_store_mark``: :func:`mark_token_store`'s mark in the coordinator's token store,
    carried by each job: a worker whose own store lacks it refuses the job (see
    ``_check_same_token_store``). It is set again at each poll (a Redis flushed or restarted
    lost it, and every worker then refused the jobs enqueued again), with the marks of the jobs
    an earlier run left on the queue, which this one follows; its caller closes it.

    Returns when every shard has ended (complete, incomplete or failed after arq's tries).

    A Redis that goes away once the run has begun (restarted, failed over, frozen, cut off) is
    waited for as the workers wait, about a minute (:data:`REDIS_RETRIES` tries of each
    command within :data:`REDIS_WAIT` seconds, each answered within :data:`REDIS_ANSWER`).

    Raises:
        DMHubError: the queue's Redis cannot be reached at the start (or leaves its first
            command unanswered for :data:`QUEUE_TIMEOUT` seconds), or stays away past those
            tries; or it refuses (full, a wrong password...), in Redis's own words (the
            manifest is written as it stands, and a rerun carries on).
    """
    from arq.connections import ArqRedis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError

    check_flag("run_on_queue", "progress", progress)
    check_verify(verify, "run_on_queue(): ")
    queue_settings(redis_url, "run_on_queue(): redis_url")  # a URL arq and redis-py read
    where = _absolute(directory)
    todo = {o.shard.index: o for o in pending(manifest.shards)}
    with coordinating(where):
        # Every command bounded (arq's own pool has no read timeout): a Redis that stopped
        # answering (paused, or cut off by a partition that drops packets) held the
        # coordinator for ever.
        pool = ArqRedis.from_url(
            redis_url,
            socket_timeout=QUEUE_TIMEOUT,
            socket_connect_timeout=QUEUE_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # at the start, a Redis not there is said at once
            retry_on_error=[RedisConnectionError, OSError],  # not a timeout: see above
        )
        sending_cancellably(pool.connection_pool)  # a Ctrl-C as a command is sent stops it
        try:
            await _ping(pool)
            await _take_over_a_run_elsewhere(pool, where, manifest, todo)
        except (RedisError, OSError) as err:
            await to_the_end(pool.aclose())
            raise queue_redis_error(redis_url, err, password_hint=password_hint) from None
        except BaseException:
            await to_the_end(pool.aclose())
            raise
        _wait_as_the_workers_do(pool, redis_url)
        bar = ProgressBar(progress, manifest, on_total)
        settings = (page_size, concurrency, poll, sleep, takeover, verify, token_store_mark)
        try:
            served = _Served(redis_where(redis_url), where)
            return await _follow(pool, where, manifest, todo, bar, *settings, served)
        except RedisError as err:  # gone mid-run: the manifest is written as it stands
            gone = queue_redis_error(redis_url, err, password_hint=password_hint, then=GONE_MID_RUN)
            raise gone from None


def _wait_as_the_workers_do(pool: ArqRedis, redis_url: str) -> None:
    """From the run's start on, a Redis that goes away is waited for as the workers wait:
    refused or reset (a restart, a failover), or silent (frozen, cut off), each of the pool's
    commands tried for :data:`REDIS_WAIT` seconds, each try answered within
    :data:`REDIS_ANSWER`.

    The export stopped at once, the fleet still running: a command that met a connection
    reset was tried again, but the connection the pool found closed as it handed it out (a
    poll's wait after a restart) was made again outside the command's tries, with redis-py's
    own, which take no refused connect (an OSError). And a Redis that left one command
    unanswered for :data:`QUEUE_TIMEOUT` seconds stopped it, where its workers wait a minute:
    a Redis frozen for 15 s (a paused VM, a snapshot of a big dataset) ended the export
    while its workers carried every shard on. Each connection, those of the pool now and
    those it makes, takes these errors and tries.
    """
    errors = _away_errors()
    waiting = _waiting(redis_url=redis_url, who="the export")
    waiting.update_supported_errors(errors)
    connections = pool.connection_pool
    connections.set_retry(waiting)
    connections.connection_kwargs["retry"] = waiting
    connections.connection_kwargs["retry_on_error"] = errors
    for connection in pool_connections(connections):
        connection.retry_on_error = list(errors)
    _answered_within(pool, REDIS_ANSWER)


async def _take_over_a_run_elsewhere(
    pool: ArqRedis, where: Path, manifest: Manifest, todo: dict[int, ShardOutcome]
) -> None:
    """Take over, or refuse, the jobs of this plan at another path that are on the queue.

    The export's id, and so its jobs' ids, are of its path: rerun at another one (the
    directory moved, or mounted elsewhere) while its first run's jobs were still queued or
    running, the coordinator enqueued a second job for each shard, and two workers exported
    one shard into one part (the same files), kept apart only by the part's file lock where
    file locks hold. A job stays in arq's queue until it ends; those of this plan (its id is
    in theirs) under another export id are the other run's.

    One a worker is exporting (its in-progress mark set) is refused: it ends with its shard.
    Those no worker has are taken off the queue, for this run to enqueue its own (each shard
    resumes from its checkpoint): this run holds the directory's lock, so no coordinator
    follows them, and refused, a rerun waited for as long as they stayed queued, for ever
    with no worker serving the queue (arq keeps a job's entry after its data expired).
    """
    from arq.constants import default_queue_name

    if not manifest.plan_id or not todo:  # a manifest of 0.1.0's: its jobs name no plan
        return
    mine = export_id_of(where)
    theirs: dict[str, int] = {}
    for raw in await pool.zrange(default_queue_name, 0, -1):
        parts = raw.decode(errors="replace").split(":")
        if len(parts) != 4 or parts[0] != "dmhub-export" or parts[2] != manifest.plan_id:
            continue
        if parts[1] != mine and parts[3].isdigit() and int(parts[3]) in todo:
            theirs[raw.decode()] = int(parts[3])
    if not theirs:
        return
    at = await _old_directory(pool, list(theirs))
    exported = [i for job_id, i in theirs.items() if await _in_progress(pool, job_id)]
    if exported:
        shards, verb, them, their, ended = _shards_said(exported)
        each = "each of them" if len(exported) > 1 else "it"
        raise InvalidRequestError(
            f"{shards} of this export {verb} being exported by a worker for its run at {at}: "
            f"two workers would export {each} at once. Rerun the export at {at} to follow "
            f"{them} to {their} end, or rerun here once {ended} ended"
        )
    taken = [i for job_id, i in theirs.items() if await _take_off_the_queue(pool, job_id)]
    if len(taken) < len(theirs):  # a worker took one meanwhile: refused, as above
        return await _take_over_a_run_elsewhere(pool, where, manifest, todo)
    shards, verb, *_ = _shards_said(taken)
    logger.warning(
        "%s of this export %s left on the queue by its run at %s, whose coordinator has "
        "stopped (this run holds the directory's lock) and which no worker has taken: taken "
        "off the queue, and enqueued for this run",
        shards,
        "was" if verb == "is" else "were",
        at,
    )
    return None


async def _enqueue_job(pool: ArqRedis, *args: Any, **kwargs: Any) -> Any:
    """arq's ``enqueue_job``, tried again when Redis cut its connection inside its transaction
    (see :func:`_watched_again`)."""
    return await _watched_again(pool, lambda: pool.enqueue_job(*args, **kwargs))


async def _watched_again(pool: ArqRedis, transaction: Callable[[], Awaitable[_T]]) -> _T:
    """``transaction()``, one that WATCHes a key then reads it (arq's enqueue, a job taken off
    the queue), made anew when Redis cut its connection in between.

    A connection cut there (a restart, a failover, a rotated password's clients killed) is no
    try redis-py makes again, and came out as its WatchError ("A ConnectionError occurred on
    while watching one or more keys"): the export stopped at once, "cannot reach the queue's
    Redis", though Redis was there, or refused the password. Redis is waited for as any
    command waits (a PING: a Redis away, or one that refuses, raises its own error), and the
    transaction made anew (no EXEC was sent).
    """
    from redis.exceptions import WatchError

    for _ in range(REDIS_RETRIES):
        try:
            return await transaction()
        except WatchError as err:  # arq's own, of a key changed, it takes for "already queued"
            if not isinstance(err.__context__, tuple(_away_errors())):
                raise
        await pool.ping()
    return await transaction()


def _shards_said(indexes: list[int]) -> tuple[str, str, str, str, str]:
    """``shards 0, 1 and 2``, its verb and pronouns; a run of thousands: six, and how many more."""
    indexes = sorted(indexes)
    if len(indexes) == 1:
        return f"shard {indexes[0]}", "is", "it", "its", "it has"
    shown = [str(i) for i in indexes[:6]]
    last = f"{len(indexes) - 5} more" if len(indexes) > 6 else shown[-1]
    return f"shards {', '.join(shown[:-1])} and {last}", "are", "them", "their", "they have"


async def _old_directory(pool: ArqRedis, job_ids: list[str]) -> str:
    """The directory the first of ``job_ids`` whose data is still in Redis names."""
    from arq.jobs import DeserializationError, Job

    for job_id in job_ids:
        with contextlib.suppress(DeserializationError):  # a job of another version: not named
            info = await Job(job_id, pool).info()
            task = info.args[0] if info is not None and info.args else None
            old = task.get("directory") if isinstance(task, dict) else None
            if old:
                return printable(str(old))[:300]
    return "another path"


async def _mark_of(job: Any) -> object:
    """The token-store mark the task of ``job`` (queued, or running) names, if any."""
    from arq.jobs import DeserializationError

    with contextlib.suppress(DeserializationError):  # a job of another version: none read
        info = await job.info()
        task = info.args[0] if info is not None and info.args else None
        return task.get("token_store_mark") if isinstance(task, dict) else None
    return None


async def _in_progress(pool: ArqRedis, job_id: str) -> bool:
    from arq.constants import in_progress_key_prefix

    return bool(await pool.exists(in_progress_key_prefix + job_id))


async def _take_off_the_queue(pool: ArqRedis, job_id: str) -> bool:
    """Remove a queued job no worker has, as a worker takes one (arq's ``start_jobs``): its
    in-progress mark watched, and set in the same transaction, so a worker taking it at that
    moment fails its own. Whether it was removed (not: a worker has it now).

    Made anew when Redis cut the connection between the WATCH and the read (a rerun stopped
    "cannot reach the queue's Redis", Redis there): see :func:`_watched_again`."""
    return await _watched_again(pool, lambda: _take_off_the_queue_once(pool, job_id))


async def _take_off_the_queue_once(pool: ArqRedis, job_id: str) -> bool:
    from arq.constants import (
        default_queue_name,
        in_progress_key_prefix,
        job_key_prefix,
        retry_key_prefix,
    )
    from redis.exceptions import WatchError

    mark = in_progress_key_prefix + job_id
    async with pool.pipeline(transaction=True) as pipe:
        await pipe.watch(mark)
        if await pipe.exists(mark):
            return False
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.psetex(mark, int(IN_PROGRESS_TTL * 1000), b"1")  # a worker's WATCH fails
        pipe.zrem(default_queue_name, job_id)
        pipe.delete(job_key_prefix + job_id, retry_key_prefix + job_id)
        try:
            await pipe.execute()
        except WatchError:
            return False
    return True


async def _follow(
    pool: ArqRedis,
    where: Path,
    manifest: Manifest,
    todo: dict[int, ShardOutcome],
    bar: ProgressBar,
    page_size: int,
    concurrency: int,
    poll: float,
    sleep: Callable[[float], Awaitable[None]],
    takeover: float,
    verify: Verify,
    token_store_mark: TokenStoreMark | None,
    served: _Served,
) -> Manifest:
    """Enqueue ``todo`` on ``pool`` (the jobs not there already) and follow them to the end."""
    from arq.constants import job_key_prefix
    from arq.jobs import Job, JobStatus

    export_id = export_id_of(where)
    manifest_writes = ManifestWriter(manifest, where)

    async def enqueue(index: int, defer: float | None = None) -> None:
        task = {
            # The shape of this job: a worker of a release that reads another refuses it.
            "job_version": job_version(todo[index].shard, verify),
            "release": __version__,
            # A shard of an id list names its slice: a few hundred bytes, not the list (its
            # worker reads it from the export's directory, which every worker shares).
            "shard": todo[index].shard.without_ids().to_dict(),
            "directory": str(where),
            "format": manifest.format,
            "page_size": page_size,
            "concurrency": concurrency,
            "export_id": export_id,
            # Sent only when not the default: a job without it is one every release reads.
            **({"verify": verify} if verify != "auto" else {}),
            "plan_id": manifest.plan_id,
            # Whose customers the export is of: a worker of another service or app on the
            # same Redis refuses the shard rather than fill its part with its own customers.
            "base_url": manifest.base_url,
            "app_id": manifest.app_id,
            # Where the coordinator keeps the app's token: a worker keeping it elsewhere refuses.
            **({"token_store_mark": token_store_mark.name} if token_store_mark else {}),
        }
        # Due by the queue's Redis's clock, not this machine's: arq queues a job due at the
        # enqueuer's clock (or a defer past it) and a worker takes those due by its own, so a
        # coordinator 10 minutes ahead of its workers had them idle, alive and silent, for 10
        # minutes before its first shard began.
        due = await _redis_now(pool)
        if due is not None:
            due = due + timedelta(seconds=defer or 0.0)
        job = jobs[index]
        for _ in range(2):
            queued = await _enqueue_job(
                pool,
                JOB_NAME,
                task,
                _job_id=job.job_id,
                _defer_until=due,
                _defer_by=defer if due is None else None,
                _expires=QUEUED_FOR,
            )
            if queued is not None or await job.status() != JobStatus.not_found:
                return
            # Not enqueued, and in the queue neither: its data is there without its place in
            # the queue (the queue's key evicted under an allkeys- maxmemory-policy, or
            # deleted), and arq enqueues no job whose data is there. The coordinator said
            # "enqueued again" at every poll, for ever, and no worker took the shard. No worker
            # can take a job that is not in the queue: its data goes, and it is enqueued anew.
            await pool.delete(job_key_prefix + job.job_id)

    progress_key = _progress_key(export_id, manifest.plan_id)
    waited: dict[int, float] = {}  # seconds of polls each ended shard's part was not seen
    try:
        jobs: dict[int, Any] = {}
        for index, outcome in todo.items():
            job_id = job_id_of(export_id, manifest.plan_id, index)
            job = jobs[index] = Job(job_id, pool)
            status = await job.status()
            sent = job_version(outcome.shard, verify)
            if status == JobStatus.complete and not await _usable(job, where / outcome.file, sent):
                await pool.delete(f"arq:result:{job_id}", f"arq:retry:{job_id}")
                status = JobStatus.not_found
            if status == JobStatus.not_found:
                # A job that starts the shard afresh: what the progress hash holds of it is an
                # earlier job's (a part deleted since), and was heard as this run's, the
                # shard done before a worker took it.
                await pool.hdel(progress_key, str(index))  # type: ignore[misc]
                await enqueue(index)
            elif (
                status != JobStatus.complete
                and token_store_mark is not None
                and token_store_mark.also(await _mark_of(job))
            ):
                # An earlier run's job, followed as it is: its mark kept too, or a token store
                # restarted since (its mark gone) had every worker refuse it as another's. Set
                # now: a worker may take the job before this loop's end (many shards).
                await token_store_mark.keep()
            outcome.status = "running"
        while todo:
            if token_store_mark is not None:
                # Before a job is enqueued again: a Redis flushed or restarted lost the mark
                # with the jobs, and every worker refused the jobs enqueued again.
                await token_store_mark.keep()
            done: dict[bytes, bytes] = await pool.hgetall(progress_key)  # type: ignore[misc]
            for shard_index, exported in done.items():
                # Of the shards still followed alone: an ended job's count is its result's
                # (ProgressBar.settled), which a progress write landing late (its worker cut
                # off from Redis, retrying) took back, to the end of the export.
                if int(shard_index) in todo:
                    bar.update(int(shard_index), int(exported))
            ended = False  # a shard found ended by this poll, recorded in the manifest
            for index in list(todo):
                status = await jobs[index].status()
                if status == JobStatus.not_found:
                    # Neither queued, nor running, nor ended: Redis lost it (flushed, or
                    # restarted without its data). Enqueued again, it resumes from the
                    # shard's checkpoint. Deferred by a takeover time: a worker still
                    # exporting the shard has put its in-progress mark back by then, and
                    # no other worker takes the job from it.
                    logger.warning(
                        "shard %d: its job is gone from the queue's Redis: enqueued again", index
                    )
                    await enqueue(index, defer=takeover)
                if status != JobStatus.complete:
                    continue
                info = await _result_info(jobs[index])
                if _expired(info):
                    # Its data gone before a worker read it (a Redis flushed then, or a wait
                    # past QUEUED_FOR): never tried, so tried again.
                    logger.warning("shard %d: its job expired in the queue: enqueued again", index)
                    job_id = jobs[index].job_id
                    await pool.delete(f"arq:result:{job_id}", f"arq:retry:{job_id}")
                    await enqueue(index, defer=takeover)
                    continue
                unseen = _unseen_part(
                    where, todo[index], info, job_version(todo[index].shard, verify)
                )
                if unseen is not None:
                    # The polls slept since the first look that missed it: that look counted
                    # a whole poll, and at a poll of 60 s a part shown late failed at once.
                    waited[index] = waited[index] + poll if index in waited else 0.0
                    if waited[index] < PART_SEEN_WITHIN:
                        continue  # followed on: it may show late (NFS)
                outcome = todo.pop(index)
                if unseen is None:
                    _record(outcome, info, verify=verify)
                else:
                    outcome.status, outcome.error = "failed", unseen
                    outcome.retries = info.result.get("retries")
                bar.settled(outcome)
                ended = True
            if ended:
                # Once for the shards this poll found ended: a write each, in turn, was the
                # whole manifest each time (1,000 shards: 26 ms a write, 26 s before the next
                # poll, when a coordinator took up shards its workers had ended).
                await manifest_writes.write()
            if todo:
                await served.check(pool, todo, poll)
                await sleep(poll)
    finally:
        bar.close()
        # Its workers go on without it: the shard may be running, or done, on the queue.
        stopped(manifest.shards, LEFT_ON_THE_QUEUE)
        try:
            await manifest_writes.write()
        finally:
            # Closed even when the write raises, and to its end: a second cancel (a task
            # group's after a timeout's, anyio's at every turn) landing as it wrote, or as it
            # closed, left the pool's connections open, for the collector to find.
            await to_the_end(pool.aclose())
    return manifest


class _Served:
    """Says, once, that no worker serves the queue while shards wait in it, then that one does.

    A coordinator started before its workers (or left by all of them) waited for ever without
    a word, not even a progress line. Each worker keeps arq's health record in Redis (written
    every :data:`HEALTH_EVERY` seconds, kept one more; an earlier release's, every hour, kept
    an hour more): none there for :data:`NO_WORKER_AFTER` seconds of polls is said.
    """

    def __init__(self, redis_where: str, directory: Path) -> None:
        self.where, self.directory = redis_where, printable(str(directory))
        #: Seconds of polls since the first look that found no worker's health record (None:
        #: the last look found one). The first look counts none: a poll of 60 s said "for
        #: 30 s" at the first look, as the workers started with the coordinator came.
        self.unserved: float | None = None
        self.said = False

    async def check(self, pool: ArqRedis, todo: Mapping[int, Any], poll: float) -> None:
        """One poll's look at the workers' health record (``todo``: the shards waiting)."""
        from arq.constants import default_queue_name, health_check_key_suffix

        if await pool.exists(default_queue_name + health_check_key_suffix):
            if self.said:
                logger.warning("a worker serves the queue at %s: the export goes on", self.where)
            self.unserved, self.said = None, False
            return
        # The poll slept since the last look, when that one found none too.
        self.unserved = 0.0 if self.unserved is None else self.unserved + poll
        if self.said or self.unserved < NO_WORKER_AFTER:
            return
        self.said = True
        shards, verb, *_ = _shards_said(list(todo))
        logger.warning(
            "no worker has served the queue at %s for %s s: %s of %s %s in it; start "
            "`dmhub-async worker --redis URL` on machines that share %s (the export goes on "
            "as they take them)",
            self.where,
            f"{NO_WORKER_AFTER:g}",
            shards,
            self.directory,
            "waits" if verb == "is" else "wait",
            self.directory,
        )


def _unseen_part(where: Path, outcome: ShardOutcome, info: Any, sent: int) -> str | None:
    """Why the part a worker reported is not in the coordinator's directory as it reported it
    (missing, or of another size), or None (seen; or a result that names no size).

    A worker whose machine held a copy of the export's ``manifest.json`` at the job's path (or
    one ``--mount`` mapped there), not the shared volume, passed the plan's check and wrote its
    parts there: each shard was recorded complete, the report said so (exit code 0), and the
    coordinator's directory held no part, which only a merge then found.
    """
    if info is None or not info.success or _result_version_error(info.result, sent) is not None:
        return None
    reported = info.result.get("size") if isinstance(info.result, dict) else None
    if not isinstance(reported, int):
        return None  # a worker of an earlier release, or a part it could not stat
    part = where / outcome.file
    try:
        size = part.stat().st_size  # one stat a shard, as it ends (a sync function)
    except FileNotFoundError:
        here = f"{printable(str(where))} holds no {outcome.file}"
    except OSError as err:
        here = f"{printable(str(part))} cannot be read ({err.strerror or type(err).__name__})"
    else:
        if size == reported:
            return None
        here = f"{printable(str(part))} holds {size:,} bytes"
    return (
        f"its worker wrote {outcome.file} ({reported:,} bytes) where this coordinator does not "
        f"see it: {here}. That worker's directory is not the shared one (another volume, or a "
        "copy of the export's manifest.json, at that path): give every worker the export's "
        "shared directory (worker --mount COORDINATOR_PATH=LOCAL_PATH), then rerun the export"
    )


async def _usable(job: Any, part: Path, sent: int) -> bool:
    """Whether a finished job's result can stand for its shard, of job version ``sent`` (else
    the shard runs again): complete, of a worker that read the job as sent, and its part still
    the size it had then (not deleted or cut short since)."""
    info = await _result_info(job)
    if info is None or not info.success or not info.result.get("complete"):
        return False
    if _result_version_error(info.result, sent) is not None:
        return False
    try:
        size = part.stat().st_size  # noqa: ASYNC240 - one stat a shard, when taken up
    except FileNotFoundError:
        return False
    return info.result.get("size") in (None, size)


async def _result_info(job: Any) -> Any:
    """The job's result (None when it is gone); one this process cannot read is a failure.

    arq pickles a failed job's error: one that does not unpickle here (a class of another
    version, or of a package this process lacks) raised DeserializationError out of the
    coordinator, on every rerun too, for as long as Redis kept the result.
    """
    from arq.jobs import DeserializationError

    try:
        return await job.result_info()
    except DeserializationError as err:
        cause = err.__cause__
        why = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
        error = DMHubError(f"the worker's result could not be read ({why[:300]})")
        return types.SimpleNamespace(success=False, result=error)


def _expired(info: Any) -> bool:
    """Whether a job's result is arq's "job expired": a worker took it and found no data."""
    from arq.worker import JobExecutionFailed

    error = getattr(info, "result", None) if info is not None and not info.success else None
    return isinstance(error, JobExecutionFailed) and str(error) == "job expired"


def _record(outcome: ShardOutcome, info: Any, *, verify: Verify = "auto") -> None:
    if info is None:
        outcome.status, outcome.error = "failed", "the job's result is gone"
        outcome.retries = None
    elif (
        info.success
        and (mixed := _result_version_error(info.result, job_version(outcome.shard, verify)))
        is not None
    ):
        outcome.status, outcome.error = "failed", mixed
        outcome.retries = None
    elif info.success:
        record_result(outcome, info.result)
    else:
        error = info.result
        # An OSError as the other runners say it (the part, and why): it said "OSError" alone.
        # Any other error by its type: its text may hold what a manifest should not.
        if isinstance(error, (TimeoutError, asyncio.TimeoutError)) and not str(error):
            # arq's job timeout (asyncio's wait_for): the reason was empty, "failed" alone.
            message = (
                f"timed out: its job ran past arq's job timeout ({JOB_TIMEOUT // 3600} h); "
                "rerun the export, which resumes it from its checkpoint"
            )
        elif isinstance(error, (DMHubError, OSError)):
            message = failure_reason(error)
            if isinstance(error, AuthenticationError):
                message = f"{without_token_hint(message)}: {worker_credentials_hint(error)}"
        elif (
            type(error).__name__ == "JobExecutionFailed" and type(error).__module__ == "arq.worker"
        ):
            # arq's own, whose words are its (no data of ours): "max 5 retries exceeded" was
            # said "JobExecutionFailed" alone, its reason on the last worker's stderr only.
            message = f"{error}: {_TRIES_SPENT}" if "retries exceeded" in str(error) else str(error)
        else:
            message = type(error).__name__
        outcome.status, outcome.error = "failed", message
        # The export's own error carries its retries (pickled with it): None from a worker
        # of an earlier release, or for a job that failed outside the export.
        outcome.retries = retries_of(error)


def _result_version_error(result: Any, sent: int) -> str | None:
    """Why a worker's result for a job of version ``sent`` is not one this coordinator reads
    (another :data:`JOB_VERSION`), or None: its part is not recorded, as if complete, in a
    manifest of another shape.

    A result that carries no version comes from a worker that checks none (0.1.0): it read a
    window's job as sent, but exported a slice of an ``id_list`` as its whole window (customers
    not on the list among them) and a ``verify="always"`` job without its final check."""
    theirs = result.get("job_version", 1) if isinstance(result, dict) else 1
    if theirs not in _READ_VERSIONS:
        return _mixed_releases(
            f"a worker of dmhub_async {_release_of(result)} (job version {theirs!r}) exported "
            f"this shard, and this coordinator runs {__version__} (job version {JOB_VERSION}): "
            "its part is not taken"
        )
    if sent != WINDOW_JOB_VERSION and not (isinstance(result, dict) and "job_version" in result):
        return _mixed_releases(
            f"a worker of dmhub_async {_release_of(result)}, which reads no job version, exported "
            f"this shard's job of job version {sent} ({_UNREAD[sent]}), and this coordinator runs "
            f"{__version__}: its part is not taken"
        )
    return None


#: What a worker that reads no job version missed in a job of each later version.
_UNREAD = {
    ID_SLICE_JOB_VERSION: "a slice of an id list, which such a worker exports as the whole "
    "dateCreated window, customers not on the list among them",
    VERIFY_JOB_VERSION: 'verify="always", which such a worker skips (and a slice of an id list '
    "it exports as the whole window)",
}
