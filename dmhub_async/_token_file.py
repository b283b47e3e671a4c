"""A token store in a private file, for processes on one machine (docs/reliability.md,
"Token stores"): written safely, read only when it is the user's own and nobody else's."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import filelock

from ._atomic import make_private_directory, replace_file
from ._exceptions import InvalidRequestError, TokenStoreError
from ._threads import file_work, on_thread
from ._token_stores import DEFAULT_LIFETIME, FetchFailure, ProcessLocks, Token
from ._validate import check_number, shown_even_half_made, unnameable

__all__ = ["NO_LOCKS", "FileTokenStore", "holds_only_tokens"]

# Not on Windows: there, no links to follow and no FIFO to block on.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_WINDOWS = os.name == "nt"
_LOCK_POLL = 0.02  # seconds between tries of a file lock another process holds
_SECONDS = "a number of seconds, or None"
#: Errors that no wait mends (a read-only file system, no permission, a file where a directory
#: should be, a name too long for the file system: the token file's, or its lock file's and
#: temporary files', which are longer): a store that cannot be read, locked or written for them
#: is an error to fix, not an outage to ride out by fetching alone.
_FOR_GOOD = (
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
    errno.ELOOP,  # a symbolic link to itself, or a ring of them, on the path
)
#: Errors of a file system that cannot lock files (an NFS mount whose lock manager is not there,
#: as in many containers; one without flock): no lock is ever had, so these are for good too.
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP)
#: The suffix of the entry of a key's failed fetch: no token key has a third ``|``.
_FAILED = "|failed"
#: Seconds after which a temporary file of the store's is a dead writer's: a write (or
#: :meth:`FileTokenStore._check_writable`'s probe) keeps one for a moment.
_LEFT_BEHIND = 60.0


class FileTokenStore:
    """Tokens in a private JSON file (mode 0600), file-locked: processes on one machine share them.

    The file is written through a fresh temporary file in the same directory (``mkstemp``) and
    renamed over the old one; links are not followed. A token file (or its directory) that
    another user owns or that others can read or write is refused with a
    :class:`TokenStoreError` (``unsafe=True``); a missing directory is created with mode 0700,
    as is each missing parent of it (one that exists is left as it is).

    ``lock_timeout`` bounds the wait for the file lock; None (the default) sets no bound of the
    store's own: a client waits as long as the holder's token fetch may take, retries included
    (a fixed 60 s sent every waiting process to fetch its own token, revoking the others', once
    a slow token answer was retried past a minute).
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float | None = None) -> None:
        if lock_timeout is not None:
            check_number(
                "lock_timeout", lock_timeout, 0, inclusive=True, finite=True, what=_SECONDS
            )
        # A path-like of bytes was a raw TypeError from Path(); a NUL, which no file name holds,
        # was taken, and each call's ValueError read as the store being down: every client
        # then fetched a token of its own, revoking the others', for as long as it ran. So was
        # a lone surrogate (half an emoji), each call's UnicodeEncodeError.
        name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
        if not isinstance(name, str):
            raise InvalidRequestError(f"path must be a path, not {type(path).__name__}")
        if (why := unnameable(name)) is not None:
            raise InvalidRequestError(f"path {name!r} {why}")
        self.path = Path(name)
        try:
            is_dir = self.path.is_dir()
        except OSError:  # a name too long (a raw OSError out of the constructor): see _FOR_GOOD
            is_dir = False  # the store's first call says what is wrong, before any token fetch
        if is_dir:  # taken, then every call went on without the store
            raise InvalidRequestError(f"{str(self.path)!r} is a directory: name a file in it")
        self._lock_timeout = lock_timeout
        #: The file lock and the process it is for, made at first use: see
        #: :meth:`_process_file_lock`.
        self._file_lock: filelock.FileLock | None = None
        self._file_lock_pid: int | None = None
        # The process's own lock first: the file lock (thread_local=False) is re-entrant, so
        # clients of one store on two threads both held it at once. One for the file, whatever
        # the key, as the file lock is: by key, two app ids' clients on two threads both held
        # it, and their writes of the file raced, one's new token lost.
        self._locks = ProcessLocks()

    def _error(self, message: str, *, unsafe: bool = False) -> TokenStoreError:
        return TokenStoreError(f"{self!r}: {message}", store=repr(self), unsafe=unsafe)

    def _for_good(self, message: str, err: OSError) -> TokenStoreError:
        """A failure to make the directory, read or lock the file: ``unsafe`` when no wait
        mends it.

        Taken as passing, each process that shares the file fetched a token of its own, on every
        refusal for as long as they ran, revoking the others' (a read-only mount: 305 tokens in
        5 s for 4 processes, a quarter of their calls refused).
        """
        # On Windows a denied access is also another program holding the file for a moment
        # (a virus scanner, a writer's rename): a passing failure there.
        passing = _WINDOWS and err.errno in (errno.EACCES, errno.EPERM)
        if err.errno not in _FOR_GOOD + NO_LOCKS or passing:
            return self._error(message)
        if err.errno == errno.ENAMETOOLONG:
            advice = "give the token file a shorter name"
        elif err.errno in NO_LOCKS:
            advice = (
                "keep the token file on a file system that can lock files (a local disk), or "
                "share the token through Redis (RedisTokenStore)"
            )
        else:
            advice = "let this user read and write it, or keep the token file elsewhere"
        return self._error(
            f"{message}: no process can share a token through it; {advice}", unsafe=True
        )

    def _check_owner(self, st: os.stat_result, what: str, path: Path) -> None:
        if not hasattr(os, "getuid"):
            return  # not POSIX: no owners and modes to check
        if st.st_uid != os.getuid():
            raise self._error(
                f"the {what} {str(path)!r} belongs to another user (uid {st.st_uid}): refusing it",
                unsafe=True,
            )
        others = 0o022 if what == "directory" else 0o077
        if st.st_mode & others:
            if what != "directory":
                advice = "chmod 600 it"
            elif st.st_mode & stat.S_ISVTX:
                # A shared directory (/tmp, /var/tmp): chmod 700 on it breaks every other user
                # and service of the machine.
                advice = "keep the token file in a directory of your own (mode 700) instead"
            else:
                advice = "chmod 700 it, or keep the token file in a directory of your own"
            raise self._error(
                f"the {what} {str(path)!r} is open to other users (mode "
                f"{stat.S_IMODE(st.st_mode):o}): refusing it; {advice}",
                unsafe=True,
            )

    def _check_directory(self, *, create: bool) -> bool:
        """Whether the directory exists (made with mode 0700 if ``create``), and is safe."""
        directory = self.path.parent
        try:
            if create:
                make_private_directory(directory)  # a file of that name: see below
            st = directory.stat()
        except FileNotFoundError:
            if create:
                # Made, or found there, and still not there: a symbolic link to nothing on its
                # path (a volume not mounted). As a passing failure, each process fetched a
                # token of its own on every refusal, revoking the others'.
                raise self._error(
                    f"cannot make the directory {str(directory)!r}: a symbolic link on its path"
                    " leads to nothing (a volume not mounted?): refusing it",
                    unsafe=True,
                ) from None
            return False
        except OSError as err:
            raise self._for_good(f"cannot use the directory: {err.strerror}", err) from None
        if not stat.S_ISDIR(st.st_mode):
            # No read or lock could ever succeed: as a passing failure, each process fetched a
            # token of its own on every refusal, revoking the others'.
            raise self._error(
                f"{str(directory)!r} is not a directory: refusing it; name a file in a directory",
                unsafe=True,
            )
        self._check_owner(st, "directory", directory)
        return True

    def _read(self) -> dict[str, Any]:
        if not self._check_directory(create=False):
            return {}
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
        except FileNotFoundError:
            return {}
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise self._error(
                    f"{str(self.path)!r} is a symbolic link: refusing to follow it", unsafe=True
                ) from None
            if err.errno in (errno.EACCES, errno.EPERM):
                # Another user's 0600 file cannot even be opened: refused as such (unsafe), not
                # a passing failure that each process met by fetching a token of its own.
                with contextlib.suppress(OSError):
                    self._check_owner(os.lstat(self.path), "token file", self.path)
            # One's own file without read permission (chmod 000): as a passing failure, no
            # read ever succeeded, the file was never written again, and each process fetched
            # a token of its own on every refusal.
            raise self._for_good(f"cannot read the token file: {err.strerror}", err) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                # Unsafe: as a passing failure, every process fetched a token of its own on
                # every refusal, revoking the others' (a FIFO, a directory made there since).
                raise self._error(
                    f"{str(self.path)!r} is not a regular file: refusing it", unsafe=True
                )
            self._check_owner(st, "token file", self.path)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read()
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            # Garbage, nested past the parser's depth included, holds no token: replaced at the
            # next fetch. Raised, it failed every read, and the file was never written again.
            return {}
        return data if isinstance(data, dict) else {}

    def _check_writable(self) -> None:
        """The directory made if need be, and a token could be written in it: a temporary file
        made there and removed, as :meth:`_write` makes one.

        The lock is taken only to fetch a token and write it: a directory that could be locked
        but not written (``chmod 500`` once a run had made the lock file) let each process
        fetch a token and keep it unshared on every refusal, revoking the others'. Found here,
        it is an error to fix before any token is fetched.
        """
        self._check_directory(create=True)
        try:
            fd, tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
        except OSError as err:
            raise self._for_good(f"cannot write the token file: {err.strerror}", err) from None
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # taken for a dead writer's: see below
            os.unlink(tmp)

    def _check_lockable(self) -> None:
        """:meth:`_check_writable`, and the lock file no link and no directory: an error to
        fix, before any token is fetched.

        Either (a dotfile manager's link, a leftover) could never be locked (ELOOP, EISDIR),
        and each process fetched a token without the store on every refusal, revoking the
        others' (two clients taking turns: a token a call).
        """
        self._check_writable()
        lock_path = self._lock_path()
        try:
            st = os.lstat(lock_path)
        except FileNotFoundError:
            return  # the file lock makes it
        except OSError as err:
            raise self._for_good(f"cannot lock the token file: {err.strerror}", err) from None
        if not stat.S_ISREG(st.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise self._error(
                f"the lock file {lock_path!r} is {what}: refusing it; remove it", unsafe=True
            )

    def _lock_path(self) -> str:
        return str(self.path) + ".lock"

    def _write(self, data: dict[str, Any]) -> None:
        self._check_directory(create=True)
        # mkstemp: O_EXCL, no link followed, mode 0600, a name nobody can guess ahead. No
        # fsync: a token lost in a crash is fetched again.
        replace_file(self.path, json.dumps(data).encode("utf-8"), sync=False)

    async def get(self, key: str) -> Token | None:
        """The stored token for ``key``, or None (read on a thread: see :func:`.on_thread`)."""
        # Not waited for when cancelled: a read changes nothing.
        return Token.from_json((await file_work(self._read)).get(key))

    async def set(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key`` (callers hold :meth:`lock`), on a thread."""
        await on_thread(
            lambda: self._update(key, token.to_json(), drop=key + _FAILED, now=token.issued_at)
        )

    async def get_failure(self, key: str) -> FetchFailure | None:
        """The failed fetch recorded for ``key``, or None (an entry of its own beside the
        token's, which releases before it never read)."""
        return FetchFailure.from_json((await file_work(self._read)).get(key + _FAILED))

    async def set_failure(self, key: str, failure: FetchFailure) -> None:
        """Record a failed fetch for ``key`` (callers hold :meth:`lock`), on a thread."""
        await on_thread(
            lambda: self._update(key + _FAILED, failure.to_json(), now=failure.failed_at)
        )

    def _update(
        self, entry: str, value: dict[str, Any], *, drop: str | None = None, now: float | None
    ) -> None:
        """Write ``value`` at ``entry`` (and remove ``drop``); ``now`` is the time by the writer's
        clock (a token's issue, a failure's), which prunes the file (:func:`_drop_expired`)."""
        data = self._read()
        data[entry] = value
        if drop is not None:
            data.pop(drop, None)
        self._remove_left_behind()
        if now is not None:
            # By the earlier of the two clocks: a client's injected one (a test's, years back)
            # never makes a token it has just written, or its neighbours', expired.
            _drop_expired(data, keep=entry, before=min(now, time.time()) - DEFAULT_LIFETIME)
        try:
            self._write(data)
        except OSError as err:
            raise self._error(f"cannot write the token file: {err.strerror}") from None

    def _remove_left_behind(self) -> None:
        """Remove the temporary files of writes that never ended (a process killed while it
        wrote, the machine's power lost), older than :data:`_LEFT_BEHIND`.

        Nothing removed them: each kill at that moment left one more hidden file beside the
        token file for good, a token in it (mode 0600, but on disk long after anyone needed it).
        Called with the file lock held, as every write is; one younger than that may be a write
        in flight (a store used without the lock, a probe) and is left.
        """
        # mkstemp's names alone (8 characters between): any hidden file of that prefix and
        # suffix was taken for one, the user's ".tokens.json.backup.tmp" removed.
        ours = re.compile(rf"\.{re.escape(self.path.name)}\.[a-z0-9_]{{8}}\.tmp")
        cutoff = time.time() - _LEFT_BEHIND
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return
        for entry in entries:
            if not ours.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):  # gone already, or not ours to remove: left
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """This process's lock for the file, then the file lock that other processes see: one
        holder at a time whatever the ``key``, since every key is written to the one file.

        The file lock is tried without blocking and waited for on the event loop, so a caller
        that gives up (a timeout, a cancellation) never leaves it held. Each try, like every
        other touch of the files, runs on a thread (:func:`.on_thread`).
        """
        async with self._locks.hold(""):
            await on_thread(self._check_lockable)
            file_lock = self._process_file_lock()
            await self._acquire_file_lock(file_lock)
            try:
                yield
            finally:
                await on_thread(file_lock.release)

    def _process_file_lock(self) -> filelock.FileLock:
        """The file lock of this process, made anew in a child forked after the store was made
        (gunicorn's ``--preload``, multiprocessing's fork workers): filelock refuses a lock
        inherited across fork (a RuntimeError), so every worker fetched a token of its own,
        revoking the others'."""
        pid = os.getpid()
        if self._file_lock is None or self._file_lock_pid != pid:
            self._file_lock = filelock.FileLock(self._lock_path(), thread_local=False, mode=0o600)
            self._file_lock_pid = pid
        return self._file_lock

    async def _acquire_file_lock(self, file_lock: filelock.FileLock) -> None:
        loop = asyncio.get_running_loop()
        limit = self._lock_timeout
        deadline = math.inf if limit is None else loop.time() + limit
        while True:
            # Taken by a try the caller gave up on: released at once.
            if await on_thread(lambda: self._try_lock(file_lock), _undo_lock(file_lock)):
                return
            if loop.time() >= deadline:
                raise self._error(f"the file lock was not had in {limit:g} s")
            await asyncio.sleep(_LOCK_POLL)

    def _try_lock(self, file_lock: filelock.FileLock) -> bool:
        """Whether the file lock is taken now (never waiting for another process's)."""
        try:
            file_lock.acquire(blocking=False)
        except filelock.Timeout:
            return False
        except OSError as err:
            raise self._for_good(f"cannot lock the token file: {err.strerror}", err) from None
        return True

    @shown_even_half_made
    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"


def holds_only_tokens(raw: bytes) -> bool:
    """Whether ``raw`` is what this store writes, a JSON object keyed ``base_url|app_id...``
    (an empty one too): the command line refuses a ``file:`` store holding anything else,
    which the store would replace at its first write."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and all("|" in key for key in data)


def _drop_expired(data: dict[str, Any], *, keep: str, before: float) -> None:
    """Remove from ``data`` the tokens that expired, and the failure records whose hold was
    over, ``before`` that time, but ``keep``, the entry being written: nobody can use them.
    (``before`` is a token's lifetime ago: a process whose clock is behind by less than that
    never loses a token it still takes for live.)

    Never removed, the file kept every token each app id, base URL and secret (each test run's,
    each rotated secret's) had ever held: 206 entries on one machine, 176 of them expired, all
    read and written again at every fetch. An entry that is neither (another release's) is
    kept: it may be another process's live token.
    """
    for key in [k for k, v in data.items() if k != keep and _expired(k, v, before)]:
        del data[key]


def _expired(key: str, value: Any, now: float) -> bool:
    if key.endswith(_FAILED):
        failure = FetchFailure.from_json(value)
        return failure is not None and failure.until <= now
    token = Token.from_json(value)
    return token is not None and token.expires_at <= now


def _undo_lock(file_lock: filelock.FileLock) -> Callable[[bool], None]:
    def undo(taken: bool) -> None:
        if taken:
            file_lock.release()

    return undo
