"""``dmhub-async``: export customers, resolve identities, run the simulator, see a demo.

Credentials come from ``DMHUB_APP_ID``, ``DMHUB_SECRET`` and ``DMHUB_BASE_URL``. Errors are one
line on stderr in the terms of the command line, never a traceback, never a secret. Exit codes:
0 ok, 1 error, 2 usage, 3 incomplete export, 130 SIGINT, 143 SIGTERM. SIGTERM (what systemd,
Docker, Kubernetes and CI send) is handled as Ctrl-C: the command is cancelled, so an export
leaves a consistent checkpoint to resume from, or no file at all.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

# Light (the standard library alone): the console script imports this module, and a signal
# before main() runs is Python's to handle (a traceback, or no line at all). The rest of the
# command line, its own modules too, is loaded inside main(), under its handlers.
if TYPE_CHECKING:
    from ._errors import EXIT_ERROR, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_ERROR", "EXIT_INCOMPLETE", "EXIT_OK", "EXIT_USAGE", "main"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    # No argv: the program itself (the console script, python -m), which ends as run() returns.
    exiting = argv is None
    with standard_error_open(exiting=exiting):
        return _command(argv, exiting=exiting)


def _command(argv: Sequence[str] | None, *, exiting: bool) -> int:
    noted: list[int] = []
    try:
        # aiohttp, the SDK and the commands: a second or two to load on a busy machine. A
        # Ctrl-C then printed the traceback of the import it cut, a SIGTERM killed the command
        # with no line (exit -15); and one raised into orjson's set-up (in C, which does not
        # check the imports it makes for an error) crashed it, exit -11. Noted here, not raised:
        # the command stops once it has loaded.
        with _noted_while_loading(noted):
            from ._main import run
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were in place
        noted.insert(0, signal.SIGINT)
    if noted:
        from ._errors import stopped_loading

        return stopped_loading(noted[0])
    return run(argv, exiting=exiting)


@contextlib.contextmanager
def standard_error_open(*, exiting: bool) -> Iterator[None]:
    """Standard error closed at the start (``2>&-``: a daemon's, a cron line's) made the null
    device for the command: ``sys.stderr`` was None, and the choice of the progress
    (``sys.stderr.isatty()``) raised AttributeError, exit 1 with nothing written and nothing
    said, and ``print(..., file=sys.stderr)`` printed its warning to standard output, into
    the data of ``--out -``.

    A process that ends with the command (``exiting``) also gets its file descriptor 2 on the
    null device, which the next file it opened took otherwise (a write meant for standard
    error, ``os.write(2, ...)``, would go into it). ``sys.stderr`` is None again after.
    """
    if sys.stderr is not None:
        yield
        return
    if exiting:
        try:
            os.fstat(2)
        except OSError:
            fd = os.open(os.devnull, os.O_WRONLY)
            if fd != 2:  # 0 or 1 closed too: they stay closed
                os.dup2(fd, 2)
                os.close(fd)
    with open(os.devnull, "w", encoding="utf-8") as sys.stderr:
        try:
            yield
        finally:
            sys.stderr = None


@contextlib.contextmanager
def _noted_while_loading(noted: list[int]) -> Iterator[None]:
    """SIGINT and SIGTERM put in ``noted`` in the block, raised nowhere; a second one ends the
    process at once (an import that never returns, a module on a file system gone away, is
    not waited for). The handlers in place before it are back at its end."""

    def note(signum: int, frame: FrameType | None) -> None:
        if noted:
            first, then = (signal.Signals(s).name for s in (noted[0], signum))
            line = f"dmhub-async: stopped by {first}, then {then}: exiting at once\n"
            with contextlib.suppress(OSError):
                os.write(2, line.encode())
            os._exit(128 + signum)
        noted.append(signum)

    previous: dict[int, Any] = {}
    try:
        for signum in _SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: the main one's handling
                previous[signum] = signal.signal(signum, note)
        yield
    finally:
        for noting, handler in previous.items():
            signal.signal(noting, handler)


def __getattr__(name: str) -> object:
    """The names this module held before main() loaded the rest itself (``build_parser``,
    ``EXIT_ERROR``...), from where they are now, loaded on first use."""
    if not name.startswith("__"):  # asked of any module (pickle, doctest): not ours
        for home in ("_errors", "_main"):
            with contextlib.suppress(AttributeError):
                return getattr(importlib.import_module(f"{__name__}.{home}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
