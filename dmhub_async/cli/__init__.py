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
from collections.abc import Sequence

# Light (the standard library): the rest of the command line is loaded inside main().
from ._errors import (
    EXIT_ERROR,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    interruptible,
    standard_error_open,
    stopped_loading,
)

__all__ = ["EXIT_ERROR", "EXIT_INCOMPLETE", "EXIT_OK", "EXIT_USAGE", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    # No argv: the program itself (the console script, python -m), which ends as run() returns.
    exiting = argv is None
    with standard_error_open(exiting=exiting):
        return _command(argv, exiting=exiting)


def _command(argv: Sequence[str] | None, *, exiting: bool) -> int:
    try:
        # aiohttp, the SDK and the commands: a second or two to load on a busy machine, and a
        # Ctrl-C then printed the traceback of the import it cut (the console script imports
        # this module only, so main() is in place before they load); a SIGTERM killed the
        # command with no line (exit -15). Both raise Interrupted in the block.
        with interruptible():
            from ._main import run
    except KeyboardInterrupt:
        return stopped_loading()
    except Interrupted as err:
        return stopped_loading(err.signum)
    return run(argv, exiting=exiting)


def __getattr__(name: str) -> object:
    """The names this module held before main() loaded the rest itself (``build_parser``...),
    from where they are now, loaded on first use."""
    if not name.startswith("__"):  # asked of any module (pickle, doctest): not ours
        with contextlib.suppress(AttributeError):
            return getattr(importlib.import_module(f"{__name__}._main"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
