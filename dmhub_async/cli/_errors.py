"""Exit codes, and every error as one line in the terms of the command line."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from types import FrameType, MappingProxyType
from typing import Any, Final

from .._exceptions import (
    ALONE_BY_ID,
    NO_DNS_ANSWER,
    NO_PROXY_CONNECTION,
    RAISE_MAX_RESPONSE_SIZE,
    THROUGH_PROXY,
    TLS_FAILURES,
    APIConnectionError,
    AuthenticationError,
    DMHubError,
    InvalidRequestError,
    ResponseTooLargeError,
    without_token_hint,
)
from .._sansio import TOKEN_PATH
from .._validate import misnamed_variables

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_ERROR",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "Interrupted",
    "UsageError",
    "explain",
    "interruptible",
    "noting_work_done",
    "say",
    "stopped_answering",
    "stopped_loading",
    "unnamed_write_error",
    "without_method",
    "work_done",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
#: The reader of the output went away (``| head -1``): 128 + SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 128 + 13
# 128 + the signal's number, as shells report a process a signal ended: 130 SIGINT, 143 SIGTERM.


def say(line: str) -> None:
    """``line`` on standard error, a write that fails there (a full disk under ``2>> run.log``,
    its reader gone) let go: what the command says there (its progress, a warning, a note, its
    error line) is no part of its work, and a failed progress line had failed the export,
    exit 1, its file removed; a failed error line had turned exit 2 or 130 into 1."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def stopped_loading(signum: int = signal.SIGINT) -> int:
    """A Ctrl-C or SIGTERM before the command began (while it loaded, or read its flags): said
    in one line, exit 130 or 143, as one while it runs; nothing had begun, so nothing is left
    to say."""
    say(f"dmhub-async: stopped by {signal.Signals(signum).name}")
    return 128 + signum


class CommandError(Exception):
    """An error already worded for the command line, with its exit code."""

    code = EXIT_ERROR


class UsageError(CommandError):
    """The command line asks for something that cannot be done: a bad flag or value (exit 2)."""

    code = EXIT_USAGE


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the command after it cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def code(self) -> int:
        return 128 + self.signum


#: What `work_done` calls: set by the command line's runner around its command.
_WORK_DONE: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "dmhub_async_cli_work_done", default=None
)


def work_done() -> None:
    """Tell the command line's runner that the command's output is in place (an export's file
    written, its checkpoint removed or kept for a rerun): a first SIGINT or SIGTERM from now on
    no longer cancels it. What is left (its client closed, its report) runs, and the command
    exits with its own code; a second signal still ends it at once.

    A Ctrl-C as an export closed its client (a Redis token store's connection, say) stopped a
    finished export: exit 130, "no output written" said of a complete file, and the rerun was
    refused as "a finished export"."""
    done = _WORK_DONE.get()
    if done is not None:
        done()


@contextlib.contextmanager
def noting_work_done(done: Callable[[], None]) -> Iterator[None]:
    """`work_done` calls ``done`` in the block (the runner's, around its command)."""
    token = _WORK_DONE.set(done)
    try:
        yield
    finally:
        _WORK_DONE.reset(token)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the blocking work of the block.

    The event loop handles them otherwise, and it does not run while blocking work does: a
    merge of gigabytes ignored both until it had written its file. Raised where the work is,
    the error runs its cleanup (a temporary file removed) on its way out.
    """

    came: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        came.append(signum)
        raise Interrupted(signum)

    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: the loop's handling
                previous[signum] = signal.signal(signum, interrupt)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if came:
        # Raised where the work was, and swallowed there: a library's `except Exception` around
        # an optional import (msgspec's of typing_extensions, as the command line loads) lost
        # the signal, and the command ran on. It stops here, once the block has ended.
        raise Interrupted(came[0])


_METHOD = re.compile(r"^\w+\(\): ")
_NO_FLAGS: Mapping[str, str] = MappingProxyType({})
#: What the library's messages name, as a command line user gives it: the client's settings,
#: and the id list (a checkpoint's refusal said "idList: other ids" to a user who had typed
#: --id-list, and who never sees the wire's name).
_SETTINGS = (
    ("allow_incomplete=True (CLI: --allow-incomplete)", "--allow-incomplete"),
    ("allow_insecure_http=True", "--allow-insecure-http"),
    ("base_url", "DMHUB_BASE_URL"),
    ("idList", "--id-list"),
)
#: Each of them as a word of its own: not inside a path the message quotes (a directory
#: ``exports/site_base_url`` was said to be ``exports/site_DMHUB_BASE_URL``, one that does not
#: exist).
_SETTING_WORDS = [
    (re.compile(rf"(?<![\w/.\\-]){re.escape(setting)}(?![\w/\\-]|\.\w)"), where)
    for setting, where in _SETTINGS
]


def without_method(message: str) -> str:
    """A library message without its ``method(): `` prefix: it means nothing on a command line."""
    return _METHOD.sub("", message)


def _auth_hint(err: AuthenticationError) -> str:
    sharing = (
        "another process using the same app id may have taken the token (DM Hub keeps one "
        "token per app id): share it with --token-store or DMHUB_TOKEN_STORE"
    )
    credentials = "check DMHUB_APP_ID and DMHUB_SECRET"
    if err.path == TOKEN_PATH or str(err.code) == "40004":
        # The token request itself was refused, by any code (a wrong secret was 40013 on some
        # services): never another process's doing, which only revokes a token once issued.
        # Not on HTTP 200: no token endpoint where the base URL points, maybe (a 404).
        if err.status >= 300:
            return "check DMHUB_BASE_URL, DMHUB_APP_ID and DMHUB_SECRET"
        return credentials
    return f"{sharing}, or {credentials}"


def _base_url() -> str:
    return os.environ.get("DMHUB_BASE_URL") or "the default base URL"


#: How the client says it was given neither app id and secret nor token.
_NO_CREDENTIALS: Final = "no credentials:"


def _missing_credentials() -> str:
    """The client's "no credentials: pass app_id and secret (or access_token), or set ...",
    as the command line gives them: the variable unset named (it said "no credentials" of a
    DMHUB_APP_ID that was there), and no Python argument, which a command cannot pass."""
    unset = [name for name in ("DMHUB_APP_ID", "DMHUB_SECRET") if not os.environ.get(name)]
    said = f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set" if unset else ""
    return (
        f"{said or 'no credentials'}: set DMHUB_APP_ID and DMHUB_SECRET, your app's credentials"
        + misnamed_variables(os.environ, unset)
    )


def _failed_with(err: BaseException) -> str:
    """The name of the class (aiohttp's) of what ``err`` was raised from, as its redacted
    stand-in keeps it (``original_type``); "" for none."""
    return str(getattr(err.__cause__, "original_type", "")).rpartition(".")[2]


def stopped_answering(err: APIConnectionError) -> CommandError:
    """``err`` after the service had answered in this run: its URL is right, it went away."""
    kind = _failed_with(err)
    if kind == "ClientHttpProxyError":
        return CommandError(str(err))  # the proxy refused: the service did not stop answering
    if kind == "ClientResponseError":
        return CommandError(str(err))  # it answered, not in HTTP: it did not stop answering
    said = str(err).removesuffix(err._hint)
    return CommandError(f"{said}: {_base_url()} stopped answering (it had answered in this run)")


#: How a refusal of another export's checkpoint ends in the library's words.
_DELETE: Final = ": delete it to start over"

#: A filter named in a library message's list of what differs: ``(stage: ...`` or ``; stage: ``.
_NAMED_FILTER = re.compile(r"(?:(?<=\()|(?<=; ))(\w+)(?=: )")


def unnamed_write_error(err: OSError) -> bool:
    """Whether ``err``, a failed write to a standard stream, is one to name the stream in (a
    disk that filled under a redirect, ``> /dev/full``: "No space left on device" said nothing
    of where); not a reader gone (``BrokenPipeError``: exit 141, silently) nor one that names
    its file already."""
    return not isinstance(err, BrokenPipeError) and err.filename is None and bool(err.strerror)


#: The client's size cap as :func:`.too_large` names it: a setting no command takes.
_CAP = re.compile(r"larger than max_response_size \(([\d,]+) bytes\)")


def _too_large(err: ResponseTooLargeError) -> str:
    """An answer over the client's size cap, as a command can act on it: the library's advice
    to raise ``max_response_size`` named a setting no command takes; a page of customers asks
    for fewer of them (a page of 100 with large custom fields passed the cap)."""
    message = without_method(str(err)).replace(RAISE_MAX_RESPONSE_SIZE, "")
    message = _CAP.sub(r"larger than the \1 bytes a command reads", message)
    if err.path == "/v1/customers" and ALONE_BY_ID not in message:
        # (One customer alone too large, asked for by its id: no smaller page holds it.)
        message += (
            ": ask for fewer customers a page: a smaller --page-size (a checkpoint's export"
            " keeps the size it began with)"
        )
    return message


def explain(err: BaseException, flags: Mapping[str, str] = _NO_FLAGS) -> tuple[int, str]:
    """The exit code and the one line to print for ``err``; ``flags``: each filter's flag
    (``--created-from``) by its keyword (``date_created_from``), which a refusal of another
    export's checkpoint or directory names it by (the user typed the flag)."""
    if isinstance(err, (CommandError, Interrupted)):
        return err.code, str(err)
    if isinstance(err, AuthenticationError):
        return EXIT_ERROR, f"{without_token_hint(str(err))}; {_auth_hint(err)}"
    if isinstance(err, APIConnectionError):
        # The library's words on where it found no connection: said below as a command says it.
        said = str(err).removesuffix(err._hint)
        kind = _failed_with(err)
        if kind == "ClientHttpProxyError":
            return EXIT_ERROR, str(err)  # the library's words: the proxy refused, and with what
        if kind in TLS_FAILURES:
            return EXIT_ERROR, str(err)  # the library's words: something answered, not in TLS
        if kind == "ClientResponseError":
            return EXIT_ERROR, str(err)  # the library's words: something answered, not in HTTP
        if kind == "ClientProxyConnectionError" or err._hint.startswith(
            (THROUGH_PROXY, NO_PROXY_CONNECTION)
        ):
            # Sent to a proxy that never answered (or gave no connection in time): the base
            # URL was never reached, nor blamed.
            return EXIT_ERROR, (
                f"{said}: no answer from the proxy the environment names (HTTPS_PROXY, HTTP_PROXY"
                " or the system's): is it right and up? (NO_PROXY names the hosts reached"
                " without it)"
            )
        if err._hint.startswith(NO_DNS_ANSWER):
            # The library's words: the lookup got no answer (this machine offline), which
            # says nothing of the host; "was not found (is DMHUB_BASE_URL right?)" blamed it.
            return EXIT_ERROR, str(err)
        # Nothing answered in this run (else open_client raised stopped_answering's error).
        if kind == "ClientConnectorDNSError":
            # A host mistyped: "no answer from", as of a service down.
            return EXIT_ERROR, (
                f"{said}: the host of {_base_url()} was not found (is DMHUB_BASE_URL right?)"
            )
        return EXIT_ERROR, f"{said}: no answer from {_base_url()} (is DMHUB_BASE_URL right?)"
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename is not None else ""
        return EXIT_ERROR, f"{where}{err.strerror}"
    if isinstance(err, InvalidRequestError) and str(err).startswith(_NO_CREDENTIALS):
        return EXIT_ERROR, _missing_credentials()
    if isinstance(err, ResponseTooLargeError):
        return EXIT_ERROR, _too_large(err)
    if isinstance(err, DMHubError):
        message = without_method(str(err)) or type(err).__name__
        for setting, where in _SETTING_WORDS:
            message = setting.sub(where, message)
        message = _NAMED_FILTER.sub(lambda m: flags.get(m[1], m[1]), message)
        # A checkpoint's refusal: its one way out threw away the progress of a user who had
        # mistyped a flag.
        if "belongs to another export" in message and message.endswith(_DELETE):
            message = message.removesuffix(_DELETE) + (
                ": run it with the flags it was started with to resume that export, or delete"
                " it to start over"
            )
        return EXIT_ERROR, message
    return EXIT_ERROR, str(err) or type(err).__name__
