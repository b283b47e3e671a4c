"""The command line once loaded: its commands run under the signal handlers, errors as one
line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from .._exceptions import DMHubError
from .._query_time import NaiveDatetimeWarning
from .._redact import redact
from .._validate import printable
from ..shards import MANIFEST_NAME
from ._commands import COMMANDS
from ._errors import (
    EXIT_BROKEN_PIPE,
    CommandError,
    Interrupted,
    explain,
    interruptible,
    noting_work_done,
    stopped_loading,
)
from ._files import stop_standard_output
from ._parser import FILTER_FLAGS, build_parser
from ._settings import REDIS_PASSWORD_ENV, show_requests

__all__ = ["run"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Each filter's flag by its keyword, as an error line names it (``--id-list``: its own flag),
#: and what else a checkpoint records, by the flag or variable that gives it: a refusal said
#: "dest: ... in the checkpoint" to a user who had typed --out.
_FLAG_OF = {
    **{name: flag for flag, name in FILTER_FLAGS.items()},
    "id_list": "--id-list",
    "dest": "--out",
    "format": "--format",
    "encoding": "--encoding",
    "app_id": "DMHUB_APP_ID",
}


async def _run(
    args: argparse.Namespace,
    ended: list[int] | None = None,
    early: list[int] | None = None,
    *,
    exiting: bool = False,
) -> int:
    """The command, cancelled (so its cleanup runs) by the first SIGINT or SIGTERM; its exit
    code also put in ``ended`` as it ends, before its signal handlers go.

    ``early``: the signals that came before the handlers were in place (the event loop being
    made), which stop the command as they are. ``exiting``: the process ends with the command,
    which, once it has returned its code, ignores both signals (see `run`)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []
    finishing: list[bool] = []  # the command's output is in place (work_done)

    def stop(signum: int) -> None:
        if received:
            # Asked again while the first one's cleanup runs: a write that never returns (a
            # file system gone away) held it for good, and only SIGKILL ended the command.
            # Ended at once; a checkpoint is replaced whole, so a rerun resumes from the last.
            first, then = (signal.Signals(s).name for s in (received[0], signum))
            print(
                f"dmhub-async: stopped by {first}, then {then}: exiting at once, its cleanup"
                " unfinished",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + signum)
        received.append(signum)
        if finishing:  # its output in place: what is left of it runs, and it says so
            return
        task.cancel()
        # An export's write to a full pipe waits on a thread, which the cancel waits for.
        stop_standard_output(signum)

    installed = []
    for signum in _SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, stop, signum)
            installed.append(signum)
    if early:
        stop(early[0])
    try:
        with noting_work_done(lambda: finishing.append(True)):
            code = await COMMANDS[args.command](args)
        if ended is not None:
            ended.append(code)
        return code
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0]) from None
        raise
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        if exiting and ended:
            _ignore_signals()


def _interrupted(err: Interrupted, args: argparse.Namespace) -> str:
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None and os.path.exists(checkpoint):
        return f"stopped by {err}: rerun the same command to resume from {checkpoint}"
    if getattr(args, "shards", None) is not None and os.path.isfile(
        os.path.join(args.out, MANIFEST_NAME)
    ):
        # The parts and their checkpoints are kept: "no output written" sent users to start over.
        return f"stopped by {err}: rerun the same command to resume from {args.out}"
    if args.command in ("export", "lookup") and getattr(args, "out", None) == "-":
        # Rows went out as they came: "no output written" followed 225 of them.
        return f"stopped by {err}: what went to standard output is incomplete"
    if args.command in ("export", "lookup", "demo", "merge"):
        return f"stopped by {err}: no output written"
    return f"stopped by {err}"


def _ignore_signals() -> None:
    """SIGINT and SIGTERM ignored from now on, in this process (the main thread's call)."""
    for signum in _SIGNALS:
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def _signals_noted(early: list[int], *, exiting: bool, ended: list[int]) -> Iterator[None]:
    """SIGINT and SIGTERM put in ``early`` in the block, until the event loop's handlers take
    them: a Ctrl-C as asyncio made its loop raised KeyboardInterrupt inside it, and Python
    printed the half-made loop's error and "coroutine '_run' was never awaited" above the
    one line; a SIGTERM then killed the command with no line at all. At its end, the handlers
    that were in place before it are back, or, for a process that ends with the command
    (``exiting``) once the command has returned its code, both signals are ignored."""

    def note(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    previous: dict[int, Any] = {}
    try:
        for signum in _SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: the loop's handling
                previous[signum] = signal.signal(signum, note)
        yield
    finally:
        if exiting and ended:
            _ignore_signals()
        else:
            for noted, handler in previous.items():
                signal.signal(noted, handler)


def run(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run the command line; returns the exit status.

    ``exiting``: the process ends once this returns (the console script, ``python -m``). Then
    SIGINT and SIGTERM are ignored once the command has returned its code: the interpreter's
    shutdown after it (a tenth of a second, its modules let go) put back the default
    handlers, and a Ctrl-C or SIGTERM there killed a command that had written its output and
    its report (exit -2 or -15, a shell's 130 or 143): a rerun was then refused as "a finished
    export", and one a moment earlier, after ``main()`` returned, printed a traceback.
    """
    try:
        with interruptible():
            args = build_parser().parse_args(argv)
            show_requests(args.verbose)
    except KeyboardInterrupt:  # a Ctrl-C as the command line is read: nothing begun
        return stopped_loading()
    except Interrupted as stopped:  # a SIGTERM then (or a Ctrl-C, which interruptible() raises)
        return stopped_loading(stopped.signum)
    ended: list[int] = []
    early: list[int] = []
    try:
        with (
            warnings.catch_warnings(),
            _signals_noted(early, exiting=exiting, ended=ended),
        ):
            # The CLI says it in its own terms (--timezone): see _commands._filters.
            warnings.simplefilter("ignore", NaiveDatetimeWarning)
            return asyncio.run(_run(args, ended, early, exiting=exiting))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were in place, or after
        if ended:
            # After: the command had ended (its output written, its report printed) as
            # asyncio.run shut down; it said "no output written", exit 130, of a complete file.
            return ended[0]
        err: BaseException = Interrupted(signal.SIGINT)
    except (Interrupted, CommandError, DMHubError, OSError, ValueError) as caught:
        err = caught
    if isinstance(err, BrokenPipeError):
        # The reader of our output left (`| head -1`): ended silently, as `yes | head` does,
        # not "error: Broken pipe". stdout to /dev/null: the interpreter's last flush at exit
        # would fail on the pipe again.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    code, message = explain(err, _FLAG_OF)
    if isinstance(err, Interrupted):
        message = _interrupted(err, args)
    else:
        secrets = (os.environ.get("DMHUB_SECRET"), os.environ.get(REDIS_PASSWORD_ENV))
        message = "error: " + redact(message, secrets)
    # One line, whatever it quotes (the service's words, a file name): nothing a terminal obeys.
    print(f"dmhub-async: {printable(message)}", file=sys.stderr)
    return code
