"""The command line once loaded: its commands run under the signal handlers, errors as one
line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn

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
    say,
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
    bounds: list[threading.Timer] | None = None,
    received: list[int] | None = None,
) -> int:
    """The command, cancelled (so its cleanup runs) by the first SIGINT or SIGTERM; its exit
    code also put in ``ended`` as it ends, before its signal handlers go.

    ``early``: the signals that came before the handlers were in place (the event loop being
    made), which stop the command as they are. ``exiting``: the process ends with the command,
    which, once it has returned its code, ignores both signals (see `run`). ``bounds``: the
    timers of a bounded stop (a command with ``stop_timeout``), for the caller to cancel.
    ``received``: the signals that stopped it; from the first on, a second one ends the process
    at once, here and after (:func:`_exit_on_another`)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    if received is None:
        received = []
    finishing: list[bool] = []  # the command's output is in place (work_done)

    def stop(signum: int) -> None:
        if received:
            # Asked again while the first one's cleanup runs: a write that never returns (a
            # file system gone away) held it for good, and only SIGKILL ended the command.
            # Ended at once; a checkpoint is replaced whole, so a rerun resumes from the last.
            _stopped_again(received[0], signum)
        received.append(signum)
        stop_timeout = getattr(args, "stop_timeout", None)
        if stop_timeout is not None:  # a service's stop (worker): bounded, whatever it waits on
            timers = _bound_the_stop(loop, signum, stop_timeout)
            if bounds is not None:
                bounds.extend(timers)
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
    for noted in early or ():  # two before the loop's handlers: the second exits at once
        stop(noted)
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
        elif received:
            _exit_on_another(received[0])


def _stopped_again(first: int, signum: int) -> NoReturn:
    """A second signal (``signum``) after ``first``: the process ends at once, saying both."""
    first_name, then = (signal.Signals(s).name for s in (first, signum))
    _exit_at_once(signum, f"stopped by {first_name}, then {then}")


def _exit_on_another(first: int) -> None:
    """From now on, SIGINT or SIGTERM ends the process at once (:func:`_stopped_again`): the
    command stopped by ``first`` has ended, and what is left runs without the event loop's
    handlers (asyncio's shutdown, which waits for its executor's threads; the interpreter's
    exit, which waits for the file threads, one perhaps reading from a file system gone away).
    A second signal there killed the process without a word (SIGTERM's default) or printed
    KeyboardInterrupt's traceback from the wait (SIGINT's). The main thread's call."""

    def another(signum: int, frame: FrameType | None) -> None:
        _stopped_again(first, signum)

    for signum in _SIGNALS:
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            signal.signal(signum, another)


#: Once a bounded stop's time is up, how long the event loop has to say what the stop waits on
#: before the process ends without it (a loop held by a call that never returns).
_LOOP_ANSWER = 2.0
#: The awaits of a stop that did not end, named at most this many.
_SHOWN_WAITS = 4


def _bound_the_stop(
    loop: asyncio.AbstractEventLoop, signum: int, seconds: float
) -> list[threading.Timer]:
    """End the process ``seconds`` after ``signum`` (exit 128 + ``signum``) if it is still
    running then, saying on stderr where its tasks wait: a worker whose cleanup waited on
    something that never came stayed in its event loop for good, deaf to the SIGTERM it had
    been sent (a fleet's deploy, a script's ``terminate()``), and said nothing of why.

    The timers are daemon threads (the interpreter's exit does not wait for them): in a
    process that ends with the command, the bound holds from the signal to its end (the
    command's cleanup, asyncio's shutdown after it, the interpreter's, which waits for the
    threads of its executors); `run` called in a program cancels them once it returns.
    """

    def on_loop() -> None:
        _give_up(signum, seconds, _waits(loop))

    def in_time() -> None:
        # The loop's time to answer begins now, not at the signal: started together, a first
        # timer whose thread a loaded machine ran 2 s late came after the second, which said
        # the loop did not answer of one long closed. (Cancelled first, it never runs.)
        timers[1].start()
        try:
            loop.call_soon_threadsafe(on_loop)
        except RuntimeError:  # the loop closed: the interpreter's exit is what waits
            _give_up(signum, seconds, _exit_waits())

    def too_late() -> None:
        _give_up(signum, seconds, "an event loop that does not answer")

    timers = []
    for delay, then in ((seconds, in_time), (_LOOP_ANSWER, too_late)):
        timer = threading.Timer(delay, then)
        timer.daemon = True
        timer.name = "dmhub-stop-bound"
        timers.append(timer)
    timers[0].start()
    return timers


def _give_up(signum: int, seconds: float, waits: str) -> None:
    name = signal.Signals(signum).name
    within = f"its cleanup did not end within {seconds:g} s (waiting on {waits})"
    _exit_at_once(signum, f"stopped by {name}: {within}")


def _exit_at_once(signum: int, said: str) -> NoReturn:
    """End the process now, exit 128 + ``signum``, its cleanup unfinished, saying why.

    os.write, not print: this may run on a thread while the main one holds sys.stderr's lock
    (a write to a full pipe); stderr is line-buffered, so what was said before is out.
    """
    line = f"dmhub-async: {printable(said)}: exiting at once, its cleanup unfinished\n"
    with contextlib.suppress(OSError):
        os.write(2, line.encode("utf-8", "replace"))
    os._exit(128 + signum)


def _exit_waits() -> str:
    """What the interpreter's exit waits for: the threads it joins (the file threads' names,
    ``dmhub-file_0``), which said "an event loop that does not answer" of a loop long closed."""
    current = threading.current_thread()
    names = [
        thread.name
        for thread in threading.enumerate()
        if not thread.daemon and thread is not current and thread is not threading.main_thread()
    ]
    if not names:
        return "the interpreter's exit"
    return f"the interpreter's exit, which waits for threads: {_listed(names, ', ')}"


def _listed(items: list[str], separator: str) -> str:
    """The first ``_SHOWN_WAITS`` of ``items``, and how many more."""
    more = len(items) - _SHOWN_WAITS
    return separator.join(items[:_SHOWN_WAITS]) + (
        f"{separator}and {more} more" if more > 0 else ""
    )


def _waits(loop: asyncio.AbstractEventLoop) -> str:
    """Where the loop's unfinished tasks wait, the innermost await of each: a place in the code
    (``dmhub_async/shards/_queue.py:971 _close``), and the asyncio call it is in, if any."""
    seen: dict[str, None] = {}
    for task in asyncio.all_tasks(loop):
        seen.setdefault(_await_of(task), None)
    if not seen:
        return "no task: asyncio's own shutdown"
    return _listed(list(seen), "; ")


def _await_of(task: asyncio.Task[Any]) -> str:
    ours = inner = ""
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            frame = getattr(awaited, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            name = getattr(awaited, "__qualname__", code.co_name)  # Event.wait, on 3.10 too
            where = _short_path(code.co_filename)
            if where.startswith("asyncio/"):
                inner = inner or f"asyncio's {name}"
            else:
                ours, inner = f"{where}:{frame.f_lineno} {name}", ""
        awaited = (
            getattr(awaited, "cr_await", None)
            or getattr(awaited, "gi_yieldfrom", None)
            or getattr(awaited, "ag_await", None)
        )
    said = ours or "a task"
    return f"{said} in {inner}" if inner else said


def _short_path(filename: str) -> str:
    """``filename`` from its package on (``arq/worker.py``), or its name alone."""
    parts = filename.replace(os.sep, "/").split("/")
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in ("site-packages", "dist-packages") or (
            parts[index].startswith("python3") and index + 1 < len(parts) - 1
        ):
            return "/".join(parts[index + 1 :])
    if "dmhub_async" in parts:
        return "/".join(parts[parts.index("dmhub_async") :])
    return parts[-1]


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
def _signals_noted(
    early: list[int], *, exiting: bool, ended: list[int], received: list[int]
) -> Iterator[None]:
    """SIGINT and SIGTERM put in ``early`` in the block, until the event loop's handlers take
    them: a Ctrl-C as asyncio made its loop raised KeyboardInterrupt inside it, and Python
    printed the half-made loop's error and "coroutine '_run' was never awaited" above the
    one line; a SIGTERM then killed the command with no line at all. At its end, the handlers
    that were in place before it are back, or, for a process that ends with the command
    (``exiting``), both signals are ignored once the command has returned its code or failed
    with an error run() says, and end the process at once once a signal stopped it
    (``received``: see `_run`)."""

    def note(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    previous: dict[int, Any] = {}
    failed = False
    try:
        for signum in _SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: the loop's handling
                previous[signum] = signal.signal(signum, note)
        yield
    except (CommandError, DMHubError, OSError, ValueError):
        # Said in one line by run(), its exit code the command's: ended as one that returned
        # its code (a signal as the interpreter shut down then killed it, exit -2 or -15).
        failed = not received
        raise
    finally:
        if exiting and (ended or failed):
            _ignore_signals()
        elif not (exiting and received):  # else _run's own, to the end of the process
            for noted, handler in previous.items():
                signal.signal(noted, handler)


def run(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run the command line; returns the exit status.

    ``exiting``: the process ends once this returns (the console script, ``python -m``). Then
    SIGINT and SIGTERM are ignored once the command has returned its code (or failed, its
    error said in one line): the interpreter's shutdown after it (a tenth of a second, its
    modules let go) put back the default handlers, and a Ctrl-C or SIGTERM there killed a
    command that had written its output and its report (exit -2 or -15, a shell's 130 or 143):
    a rerun was then refused as "a finished export", and one a moment earlier, after
    ``main()`` returned, printed a traceback.
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
    received: list[int] = []
    bounds: list[threading.Timer] = []
    try:
        with (
            warnings.catch_warnings(),
            _signals_noted(early, exiting=exiting, ended=ended, received=received),
        ):
            # The CLI says it in its own terms (--timezone): see _commands._filters.
            warnings.simplefilter("ignore", NaiveDatetimeWarning)
            return asyncio.run(
                _run(args, ended, early, exiting=exiting, bounds=bounds, received=received)
            )
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were in place, or after
        if ended:
            # After: the command had ended (its output written, its report printed) as
            # asyncio.run shut down; it said "no output written", exit 130, of a complete file.
            return ended[0]
        err: BaseException = Interrupted(signal.SIGINT)
    except (Interrupted, CommandError, DMHubError, OSError, ValueError) as caught:
        err = caught
    finally:
        if not exiting:  # a program's own call: its process goes on without the bound
            for timer in bounds:
                timer.cancel()
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
    say(f"dmhub-async: {printable(message)}")
    return code
