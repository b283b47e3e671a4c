"""redis-py's connections, each command's send cancellable in any turn of the event loop.

redis-py sends a command through ``asyncio.wait_for`` when its connection has a socket timeout,
and every connection the SDK makes has one (a frozen Redis must not hold a call for ever). On
Python 3.10 and 3.11, ``asyncio.wait_for`` drops a cancel that lands in the turn its call ends
(CPython gh-86296; 3.12 rewrote it): the caller goes on as if never cancelled. A queue worker's
SIGTERM is one such cancel, landing as the worker polls the queue (a send every half second):
the worker polled on, still running long after it was told to stop. redis-py 8.1 still sends so.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import contextvars
import functools
import importlib
from collections.abc import Iterator
from typing import Any, TypeVar

from ._redact import without_password
from ._tasks import within
from ._validate import printable

__all__ = [
    "pool_connections",
    "redis_refusal",
    "redis_words",
    "redis_words_shown",
    "require_redis_extra",
    "sending_cancellably",
    "start_without_password",
]

#: The id of the connection whose UNWATCH this task has sent, until its answer is read (see
#: _cancellable).
_UNWATCHING: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "dmhub_redis_unwatching", default=None
)


#: redis-py's words for a refusal of a command sent in a pipeline, between the command (with
#: every argument) and the refusal's own words.
_OF_A_PIPELINE = " of pipeline caused error: "


def redis_words(err: BaseException) -> str:
    """Redis's own words of ``err``: of a command of a pipeline (arq enqueues a job and writes
    its end in transactions), without redis-py's preface, ``Command # 1 (SET KEY VALUE) of
    pipeline caused error: ('...',)``, which put the command first with every argument (a
    job's pickled bytes) on the error's one line."""
    said = str(err)
    if not said.startswith("Command # "):
        return said
    _, found, words = said.rpartition(_OF_A_PIPELINE)  # the last: its arguments may hold it
    if not found:
        return said
    with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
        read = ast.literal_eval(words)  # redis-py 5 writes the error's args, a tuple
        if isinstance(read, tuple) and read and isinstance(read[0], str):
            return read[0]
    return words


_E = TypeVar("_E", bound=BaseException)


def redis_refusal(err: _E) -> _E | Exception:
    """``err``, or the refusal it stands for: redis-py connects a unix socket with its handshake
    (AUTH, SELECT) inside the socket's own try, and says what Redis refused there (a wrong
    password, an AUTH it does not know) as a ConnectionError raised from that refusal. Over
    ``unix://``, a refused password was taken for a Redis away: the token store's an outage
    (each process fetching a token of its own), the rate limit's "cannot be reached", the
    queue's a minute's wait; over ``redis://``, each says it refused.

    The connections the SDK makes (:func:`sending_cancellably`) raise the refusal itself; it
    is read here only where redis-py's own connect may have said it: a user's client given to
    the token store, arq's pool, made and PINGed as a queue worker starts, and a queue's tries
    of a connect whole (see ``shards._queue._waiting``)."""
    from redis.exceptions import AuthenticationError, ConnectionError, ResponseError

    cause = err.__cause__
    if (
        isinstance(err, ConnectionError)
        and not isinstance(err, AuthenticationError)
        and isinstance(cause, (AuthenticationError, ResponseError))
    ):
        return cause
    return err


def redis_words_shown(err: BaseException, password: str | None, most: int = 300) -> str:
    """What Redis said of ``err``, fit to show in a message or a log line: its own words
    (:func:`redis_words`), ``password`` (the one redis-py sent) masked where Redis quotes it back
    (:func:`~dmhub_async._redact.without_password`), as one line a terminal never obeys
    (:func:`~dmhub_async._validate.printable`), and at most ``most`` characters; "" for an error
    that says nothing. Only their start is looked at: a megabyte of quotes (a proxy, another
    service on Redis's port) took seconds to look for the password in."""
    said = start_without_password(redis_words(err), password, most + _MASKED_MARGIN)
    return printable(said)[:most]


#: The characters of Redis's words masked beyond those shown (see :func:`redis_words_shown`).
_MASKED_MARGIN = 4096


def start_without_password(words: str, password: str | None, size: int) -> str:
    """The first ``size`` characters of ``words`` (Redis's) with ``password`` masked
    (:func:`~dmhub_async._redact.without_password`), less their last ``len(password)`` when
    ``words`` are longer: a password cut there is no longer known, and the copies of it masked
    before made the start shorter, which brought the cut one into what is said (40 quotes of a
    password of 128 characters: its first 73 said)."""
    said = without_password(words[:size], password)
    if password and len(words) > size:
        said = said[: max(0, len(said) - len(password))]
    return said


def require_redis_extra(what: str, *modules: str) -> None:
    """An ImportError naming the extra to install, where a module of ``modules`` (parents
    first) is missing: without the ``redis`` extra, a bare "No module named 'redis'" (or
    'limits') named neither the extra nor ``what`` needed it."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            kind = ModuleNotFoundError if isinstance(err, ModuleNotFoundError) else ImportError
            raise kind(
                f"{what} needs the redis extra: pip install 'dmhub-async[redis]' ({err})",
                name=err.name,
            ) from None


def sending_cancellably(pool: Any) -> Any:
    """``pool`` (a redis-py asyncio ``ConnectionPool``), its connections (those it holds now and
    those it makes) sending each command within their socket timeout through :func:`within`,
    in the caller's own task, where a cancel cannot be missed; returns ``pool``."""
    pool.connection_class = _cancellable(pool.connection_class)
    for connection in pool_connections(pool):
        kind: Any = type(connection)
        connection.__class__ = _cancellable(kind)
    return pool


def pool_connections(pool: Any) -> Iterator[Any]:
    """The connections ``pool`` (a redis-py asyncio ``ConnectionPool``) holds now, idle and in
    use; those it makes later take its ``connection_kwargs`` and ``connection_class``."""
    for which in ("_available_connections", "_in_use_connections"):
        yield from getattr(pool, which, ())


@functools.cache
def _cancellable(base: Any) -> Any:
    """``base``, a redis-py connection class, sending as :func:`sending_cancellably` says."""
    if getattr(base, "_sends_cancellably", False):
        return base
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    class Cancellable(base):  # type: ignore[misc]  # a class redis-py picked
        __slots__ = ()  # redis-py's connections have slots: the same layout, to swap a class
        _sends_cancellably = True

        async def connect(self: Any) -> None:
            try:
                await self._connected()
            except RedisConnectionError as err:
                refusal = redis_refusal(err)
                if refusal is err:
                    raise
            else:
                return
            # Over a unix socket, redis-py reads the handshake (AUTH, SELECT) inside the
            # socket's own try, says Redis's refusal there as a ConnectionError raised from it,
            # and, a refusal in Redis's own words (-BUSY as SELECT was sent, AUTH unknown),
            # left the connection connected: the next command ran on it, in database 0 (a
            # token store on ?db=3 kept its token where no other process looked), or without
            # AUTH. Closed, and the refusal raised as over TCP.
            await self.disconnect()
            raise refusal

        async def _connected(self: Any) -> None:
            if self.is_connected or not getattr(self.retry, "tries_whole_connects", False):
                await super().connect()
                return
            # A queue's tries (shards._queue._waiting), of the whole connect: redis-py tries
            # the socket's alone, then reads the handshake (CLIENT SETINFO) outside every try.
            # A frozen Redis accepts the socket (the kernel queues it): that counted as Redis
            # back, and the handshake's unanswered read stopped a busy worker 10 s into a 30 s
            # freeze. The connect's own tries within these are one (the queue's _TRYING).
            whole = super().connect
            await self.retry.call_with_retry(whole, lambda error: self.disconnect())

        async def send_command(self: Any, *args: Any, **kwargs: Any) -> None:
            if args and args[0] == "UNWATCH":
                if not self.is_connected:
                    # A pipeline's reset, its connection closed by an error inside its WATCH:
                    # a connection made anew watches nothing. redis-py connected again to send
                    # it, and a Redis frozen (or cut off) left the handshake unanswered: its
                    # TimeoutError came out of the reset in place of the WatchError that has
                    # the transaction made anew, and a queue's export or worker stopped
                    # mid-freeze. Refused as redis-py's reset expects of a connection gone.
                    raise RedisConnectionError("not connected: it watches nothing")
                _UNWATCHING.set(id(self))  # its answer unread: see read_response
            await super().send_command(*args, **kwargs)

        async def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _UNWATCHING.get() != id(self):
                return await super().read_response(*args, **kwargs)
            _UNWATCHING.set(None)
            try:
                return await super().read_response(*args, **kwargs)
            except RedisTimeoutError as err:
                # UNWATCH left unanswered (Redis frozen as a transaction ended unsent, as arq's
                # check of a job another worker has ends): the connection is closed, and no
                # longer watches; said as a connection lost, which redis-py's pipeline reset
                # takes. Its TimeoutError came out of the reset, and an idle worker stopped
                # one answer into a freeze its wait is for.
                await self.disconnect(nowait=True)
                raise RedisConnectionError(str(err)) from None

        async def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
            if not self.is_connected:
                await self.connect()  # its reads within the socket timeout, as redis-py has them
            elif check_health:
                await self.check_health()
            bound = self.socket_timeout
            if not bound:
                await super().send_packed_command(command, check_health=False)
                return
            # redis-py's own send, which writes in this task when the timeout is None; bounded
            # here as redis-py bounds it, saying it as redis-py says it.
            self.socket_timeout = None
            try:
                await within(super().send_packed_command(command, check_health=False), bound)
            except asyncio.TimeoutError:
                await self.disconnect(nowait=True)
                raise RedisTimeoutError("Timeout writing to socket") from None
            finally:
                if self.socket_timeout is None:  # not set meanwhile (a worker's close sets it)
                    self.socket_timeout = bound

    Cancellable.__name__ = Cancellable.__qualname__ = base.__name__
    Cancellable.__module__ = __name__
    return Cancellable
