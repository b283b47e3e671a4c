"""The library's log switch: ``DMHUB_LOG=debug|info`` shows its log on stderr (as ``OPENAI_LOG``).

The library logs on ``logging.getLogger("dmhub_async")``: DEBUG per request (method, path,
status, milliseconds; the token redacted), INFO per retry. Without the switch it adds no handler
and leaves logging to the application; ``dmhub-async -v`` turns the same output on.
"""

from __future__ import annotations

import logging
import os

__all__ = ["LOG_ENV", "LOG_LEVELS", "setup_logging", "show_log"]

LOG_ENV = "DMHUB_LOG"
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

logger = logging.getLogger("dmhub_async")
_handler: logging.Handler | None = None


def show_log(level: int) -> None:
    """Show the library's log at ``level`` and above on stderr (one handler, however often)."""
    global _handler
    if _handler is None:
        _handler = logging.StreamHandler()
        _handler.setFormatter(logging.Formatter(_FORMAT))
        _handler.addFilter(_not_shown_by_the_root)
        logger.addHandler(_handler)
    logger.setLevel(level)


def _not_shown_by_the_root(record: logging.LogRecord) -> bool:
    """Whether the switch's handler shows ``record``: not when another handler the record
    reaches (the root's, or one the application put on the library's logger) shows it on the
    same stream, in the application's own format.

    The library's records go on to the root's handlers as any library's do: with the
    application's ``logging.basicConfig`` beside ``DMHUB_LOG``, each line was on stderr twice.
    A handler that writes elsewhere (a file), or not at the record's level, leaves it to this
    one; so does one with filters of its own (it may drop the library's records), and every
    root handler when the records do not reach the root (``propagate`` turned off, as
    applications do against lines shown twice): either way, no line was shown at all. The
    handlers are those the record meets as logging hands it on, from its own logger up: an
    application's stderr handler on ``dmhub_async`` itself, the library's propagation turned
    off (the usual way to give a library its own format), had each line shown twice.
    """
    stream = getattr(_handler, "stream", None)
    current: logging.Logger | None = logging.getLogger(record.name)
    while current is not None:
        for handler in current.handlers:
            if (
                handler is not _handler
                and getattr(handler, "stream", None) is stream
                and record.levelno >= handler.level
                and not handler.filters
            ):
                return False
        current = current.parent if current.propagate else None
    return True


def setup_logging() -> None:
    """Apply ``DMHUB_LOG`` when it is set (called once, on import of the package)."""
    value = os.environ.get(LOG_ENV, "").strip().lower()
    if not value:
        return
    level = LOG_LEVELS.get(value)
    if level is None:
        # A typo should not silently show nothing: say so, through logging's last resort.
        logger.warning("%s=%r is not one of %s: ignored", LOG_ENV, value, ", ".join(LOG_LEVELS))
        return
    show_log(level)
