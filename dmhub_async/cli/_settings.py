"""The client the commands use: its token store, its limits, its log."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import stat
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import platformdirs

from .._atomic import make_private_directory
from .._client import DMHubClient
from .._exceptions import APIConnectionError
from .._logging import logger as library_logger
from .._logging import show_log
from .._redact import redact
from .._token_file import NO_LOCKS, FileTokenStore, holds_only_tokens
from .._token_stores import MemoryTokenStore, RedisTokenStore, TokenStore
from .._validate import may_hold_password, pasted_around
from ._errors import CommandError, UsageError, say, stopped_answering

__all__ = [
    "REDIS_PASSWORD_ENV",
    "TOKEN_STORE_ENV",
    "OneLine",
    "check_credentials",
    "default_token_file",
    "open_client",
    "show_requests",
    "token_store",
    "with_redis_password",
]

TOKEN_STORE_ENV = "DMHUB_TOKEN_STORE"
REDIS_PASSWORD_ENV = "DMHUB_REDIS_PASSWORD"
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def with_redis_password(url: str) -> str:
    """``url`` with ``$DMHUB_REDIS_PASSWORD`` as its password when it names none.

    A password written in ``--redis``, ``--queue`` or ``--token-store`` is on the process list
    (``ps``) of every user of the machine for as long as the command runs; from the
    environment, it never is. Anything but a Redis URL, or one that has a password (before its
    ``@``, or a ``?password=`` of its query, which redis-py reads too; an empty one, which
    redis-py skips, is none), is as given.
    """
    password = os.environ.get(REDIS_PASSWORD_ENV)
    if not password:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # refused where it is used, in its own words
        return url
    # An empty one is none: redis-py skips it (a template's redis://:${PW}@HOST, PW unset).
    if parts.scheme.lower() not in _REDIS_SCHEMES or parts.password:
        return url
    # One of the query was overridden by the variable's (redis-py takes the one before "@").
    if "password" in parse_qs(parts.query):
        return url
    userinfo, _, where = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}:{quote(password, safe='')}@{where}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def default_token_file() -> Path:
    """Where runs on one machine share their token unless told otherwise."""
    return platformdirs.user_cache_path("dmhub-async") / "tokens.json"


def _default_spec() -> str:
    """A file in the cache directory; this run's memory where that cannot be written or its
    files cannot be locked (say so)."""
    path = default_token_file()
    try:
        make_private_directory(path.parent)
        writable = os.access(path.parent, os.W_OK)
    except OSError:
        writable = False
    if writable and _can_lock(path):
        return f"file:{path}"
    cannot = "write" if not writable else "lock files in"
    say(
        f"dmhub-async: warning: cannot {cannot} {path.parent}: the token is kept in memory, so "
        "other runs with this app id will revoke it (see --token-store)"
    )
    return "memory"


def _can_lock(path: Path) -> bool:
    """Whether the token file at ``path`` could be locked: a temporary file beside it (named
    as the store names its own, which it removes if this one is left) is locked and removed.

    A cache directory on a file system without locks (an NFS home whose lock manager is not
    there) is a store that every command refuses (FileTokenStore, ENOLCK): the command's own
    default falls back to memory there, as where the directory cannot be written.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock to lack
        return True
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return True  # the store says what is wrong, in its own words
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno not in NO_LOCKS
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
    return True


def token_store_spec(spec: str | None) -> str:
    """The ``--token-store`` spec in force: the flag's, ``DMHUB_TOKEN_STORE``'s or the default
    (a Redis URL with ``$DMHUB_REDIS_PASSWORD`` as its password when it names none)."""
    spec = spec if spec is not None else os.environ.get(TOKEN_STORE_ENV) or _default_spec()
    return with_redis_password(spec)


def token_store(spec: str | None) -> TokenStore:
    """The store a ``--token-store`` spec names: ``memory``, ``file:PATH`` or ``redis://...``.

    ``None`` takes ``DMHUB_TOKEN_STORE``, else a file in the user's cache directory: DM Hub keeps
    one token per app id, so two runs that do not share it revoke each other's (docs/contract.md,
    "Transport and authentication").
    """
    source = "--token-store" if spec is not None else TOKEN_STORE_ENV
    given = spec if spec is not None else os.environ.get(TOKEN_STORE_ENV) or None
    spec = token_store_spec(spec)
    if spec == "memory":
        return MemoryTokenStore()
    if spec.startswith("file:") and spec != "file:":
        path = Path(spec[len("file:") :]).expanduser()
        # The default file is the command's own: garbage there is replaced.
        if given is not None and path != default_token_file():
            _check_token_file(path, source)
        return FileTokenStore(path)
    if spec.lower().startswith(("redis://", "rediss://", "unix://")):  # as redis-py reads it
        try:
            return RedisTokenStore(spec)
        except ImportError:
            raise UsageError(
                "--token-store redis://... needs the redis extra: pip install 'dmhub-async[redis]'"
            ) from None
        except ValueError as err:
            raise UsageError(f"--token-store: {err}") from None
    # Not quoted if it may hold a password (redis://:PASSWORD@HOST mistyped, or one given as
    # ?password=, which redis-py reads too): stderr goes to terminals and CI logs.
    secret = may_hold_password(spec)
    given = "what was given (not shown: it may hold a password)" if secret else repr(spec)
    raise UsageError(
        f"--token-store (or {TOKEN_STORE_ENV}) must be memory, file:PATH or redis://HOST[:PORT], "
        f"not {given}"
    )


#: The most a token file holds, and more: one of a few entries is a few hundred bytes.
_TOKEN_FILE_MOST = 1 << 20


def _check_token_file(path: Path, source: str) -> None:
    """Refuse a ``file:`` store that holds something other than tokens, before anything is
    sent: a private file of the user's (a credentials file, an SSH key: mode 0600, which the
    store takes) given by mistake was replaced by the token's JSON at the first fetch, its
    content lost for good, and the run went on without a word. A missing or empty file, or one
    a `FileTokenStore` wrote (a JSON object keyed ``base_url|app_id...``), is taken; a link, a
    FIFO, another user's file are the store's to refuse, in its own words.
    """
    try:
        info = path.lstat()
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return
    if info.st_size <= _TOKEN_FILE_MOST:
        try:
            with path.open("rb") as fh:
                raw = fh.read(_TOKEN_FILE_MOST + 1)
        except OSError:  # unreadable (another user's, its mode): the store says so
            return
        if holds_only_tokens(raw):
            return
    raise UsageError(
        f"{source} file:{path}: not a token file (it holds something else), which the token"
        " would replace: name a new file for the token store"
    )


class OneLine(logging.Formatter):
    """A log record as one line, ``dmhub-async: ...``: its message with its white space folded
    and the environment's secrets masked, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        secrets = (os.environ.get("DMHUB_SECRET"), os.environ.get(REDIS_PASSWORD_ENV))
        return f"dmhub-async: {redact(self.text(record), secrets)}"

    def text(self, record: logging.LogRecord) -> str:
        """The record's message on one line."""
        return " ".join(record.getMessage().split())


class _ToStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Records to whatever ``sys.stderr`` is as each is written (as logging's last resort)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_warnings_shown = False


def show_requests(verbose: bool) -> None:
    """``-v``: the library's log on stderr, a line per request and per retry.

    Without it, the library's warnings (a plan taken up, a Redis waited for) are lines of the
    command's own, ``dmhub-async: ...``: without a handler they reached stderr bare, through
    logging's last resort. ``DMHUB_LOG`` set, its handler says them already.
    """
    global _warnings_shown
    if verbose:
        show_log(logging.DEBUG)
    elif not library_logger.handlers and not _warnings_shown:
        _warnings_shown = True
        handler = _ToStderr()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(OneLine())
        library_logger.addHandler(handler)


def check_credentials() -> None:
    """Refuse a ``DMHUB_APP_ID`` or ``DMHUB_SECRET`` with white space or quotes around it,
    before anything is sent (CommandError, exit 1, as credentials the service refuses).

    One pasted with a space (an ``.env`` file, a CI variable) was sent as it was: the service
    refused it, the line said to check both, "if they are right, another process ... may
    have taken the token", and the space was nowhere to see. No app id or secret has one.
    """
    for name in ("DMHUB_APP_ID", "DMHUB_SECRET"):
        if spaced := pasted_around(name, os.environ.get(name) or ""):
            raise CommandError(spaced)


@contextlib.asynccontextmanager
async def open_client(args: argparse.Namespace, concurrency: int) -> AsyncIterator[DMHubClient]:
    """A client for one command: ``concurrency`` requests in flight, the chosen token store."""
    check_credentials()
    store = token_store(args.token_store)
    try:
        # The flag means what it says: the client's own limit (16) must not hold it lower.
        async with DMHubClient(
            max_retries=args.max_retries,
            max_concurrency=concurrency,
            token_store=store,
            timezone=getattr(args, "timezone", None),
            allow_insecure_http=args.allow_insecure_http,
        ) as dm:
            try:
                yield dm
            except APIConnectionError as err:
                # "Is DMHUB_BASE_URL right?" misled where the service had answered at that URL
                # (an export lost after thousands of pages): only the first answer proves it.
                if dm.stats.responses:
                    raise stopped_answering(err) from err
                raise
    finally:
        if isinstance(store, RedisTokenStore):
            await store.aclose()
