"""What a run tells its user: progress lines for logs, and the report as text or JSON."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TextIO, cast

import attrs

from .._validate import printable
from .._words import counted
from ..export import ExportProgress, ExportReport
from ._errors import CommandError, say, unnamed_write_error

__all__ = [
    "PROGRESS_EVERY",
    "READ_NOTE_EVERY",
    "TICK_EVERY",
    "ProgressLines",
    "export_report",
    "ids_listed",
    "print_report",
    "reading",
    "standard_output",
    "ticking",
]

#: Seconds between two progress lines: often enough to see a job move, rare enough for a log.
PROGRESS_EVERY = 5.0
#: Seconds between two looks of :func:`ticking` at progress that no page moved.
TICK_EVERY = 1.0
#: Rows between two looks of :func:`reading`'s progress at the clock (or its bar).
READ_NOTE_EVERY = 10_000


def _now() -> float:
    """The clock of :func:`reading`'s lines (a test's own in its place)."""
    return time.monotonic()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressLines:
    """Progress for a log or CI, where a bar cannot redraw: a line every few seconds.

    Every ``every`` seconds (:data:`PROGRESS_EVERY` unless given) a line says what is done, of
    how many, the rate since the start and the time left. ``checked``: whether a final check
    may follow the last of them (an export's), which a line then says. ``first``: what was
    done at the start (the rate's count starts there), else the first update's figure.
    """

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        every: float | None = None,
        what: str = "customers",
        checked: bool = True,
        clock: Callable[[], float] = time.monotonic,
        first: int | None = None,
    ) -> None:
        self._out = out
        self._every = PROGRESS_EVERY if every is None else every
        self._what = what
        self._checked = checked
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._first = first  # None: the first update's (a resumed export's, rated from it)
        self._last: tuple[int, int | None] | None = None

    def __call__(self, progress: ExportProgress) -> None:
        self.update(progress.exported, progress.total)

    def update(self, done: int, total: int | None) -> None:
        """Note ``done`` of ``total``; print a line when the last one is ``every`` seconds old."""
        self._line(done, total, moved=True)

    def tick(self) -> None:
        """The last figures again when the last line is ``every`` seconds old, nothing having
        moved since: a slow service, or an export's final check once its walk is done (which
        said nothing for as long as it took, 19 s for 50,000 customers at 30 ms)."""
        if self._last is not None:
            self._line(*self._last, moved=False)

    def _line(self, done: int, total: int | None, *, moved: bool) -> None:
        now = self._clock()
        if self._first is None:
            self._first = done  # a resumed export: the rate counts this run only
        self._last = (done, total)
        if now - self._last_line < self._every:
            return
        self._last_line = now
        line = f"dmhub-async: {done:,}"
        if total and done >= total and not moved and self._checked:
            line += f"/{total:,} {self._what} (100%), checking them against the service"
        else:
            rate = (done - self._first) / (now - self._started) if now > self._started else 0.0
            if total:
                line += f"/{total:,} {self._what} ({100 * done / total:.0f}%)"
            else:
                line += f" {self._what}"
            line += f", {rate:,.0f}/s"
            if total and rate > 0:
                line += f", ETA {_duration(max(total - done, 0) / rate)}"
        if self._out is None:
            say(line)
        else:
            print(line, file=self._out, flush=True)


@contextlib.contextmanager
def reading(what: str, *, quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """What blocking work over an input notes its rows in, ``note(rows)`` (every row; it looks
    at them every :data:`READ_NOTE_EVERY`, a log's lines every :data:`TICK_EVERY` s too): a
    bar on a terminal, gone at the end, as an export's is; in a log a line every
    :data:`PROGRESS_EVERY` seconds, rows coming or not (``dmhub-async: 200,000 {what},
    52,311/s``); None (nothing) when ``quiet``.

    A lookup copies a pipe's rows to a temporary file, and checks every row, before its first
    request: 4.4 s a million rows, plus however long the pipe's producer takes, said nothing,
    and a CI job that kills a silent step killed it.
    """
    if quiet:
        yield None
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc=what, unit=" rows", unit_scale=True, leave=False, file=sys.stderr)
        seen = 0

        def drawn(rows: int) -> None:
            nonlocal seen
            if rows % READ_NOTE_EVERY == 0:
                bar.update(rows - seen)
                seen = rows

        try:
            yield drawn
        finally:
            bar.close()
        return
    # The rows noted here, said by a thread of its own every TICK_EVERY (a line once
    # PROGRESS_EVERY has passed): the work blocks on its reads, and a pipe whose producer gave
    # a row a second, or none yet, went without a line for as long as it took, where the
    # clock was looked at only every READ_NOTE_EVERY rows.
    lines = ProgressLines(what=what, checked=False, clock=_now, first=0)
    seen = 0
    done = threading.Event()
    lock = threading.Lock()  # the lines' one writer at a time

    def said(rows: int) -> None:
        nonlocal seen
        seen = rows
        if rows % READ_NOTE_EVERY == 0:
            with lock:
                lines.update(rows, None)

    def tick() -> None:
        while not done.wait(TICK_EVERY):
            with lock:
                lines.update(seen, None)

    ticker = threading.Thread(target=tick, name="dmhub-reading-progress", daemon=True)
    ticker.start()
    try:
        yield said
    finally:
        done.set()
        ticker.join()


@contextlib.asynccontextmanager
async def ticking(lines: ProgressLines | None) -> AsyncIterator[None]:
    """``lines`` ticked every :data:`TICK_EVERY` seconds while the block runs (an export), so
    that a log gets its line every few seconds when no page comes."""
    if lines is None:
        yield
        return

    async def tick() -> None:
        while True:
            await asyncio.sleep(TICK_EVERY)
            lines.tick()

    task = asyncio.get_running_loop().create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def ids_listed(listed: int, exported: int, *, complete: bool) -> str:
    """``500 ids listed, 390 of them of no customer, or of one the filters leave out``: what
    an export of an id list (``listed`` ids, each once) says of its size, in one process or in
    shards. An id of no customer is no error, and a complete export of one exports nothing."""
    said = f"{counted(listed, 'id')} listed"
    if complete and exported < listed:  # exported: each listed id once at most
        said += f", {listed - exported:,} of them of no customer, or of one the filters leave out"
    return said


def export_report(report: ExportReport) -> dict[str, Any]:
    """The report as plain data: its fields and what it concludes."""
    data = attrs.asdict(report)
    data["complete"] = report.complete
    data["records_per_second"] = round(report.records_per_second, 1)
    return data


def print_report(data: dict[str, Any], text: str, *, style: str, quiet: bool, out: TextIO) -> None:
    """``text`` for people (unless ``quiet``), or ``data`` as one JSON object for scripts.

    A file name that is not UTF-8 (GBK bytes, read by Python as lone surrogates) failed a
    strict stream (``PYTHONIOENCODING=utf-8``) after the run: JSON then writes it as escapes
    (``\\udcbf``, read back as the same name), text with backslashes.
    """
    if style == "json":
        line = json.dumps(data, ensure_ascii=False, default=str)
        if not _writable(line, out):
            line = json.dumps(data, default=str)
    elif quiet:
        return
    else:
        # A name in it (--out, a directory) shown, not obeyed, as in the error line.
        line = "\n".join(shown(part) for part in text.split("\n"))
        if not _writable(line, out):
            encoding = getattr(out, "encoding", None) or "utf-8"
            line = line.encode(encoding, "backslashreplace").decode(encoding)
    stream = out if out is not None else sys.stdout
    if stream is None:  # started with >&-: nothing written, as print does
        return
    try:
        # One write, its line end with it: print's two (the text, then "\n"), each its own
        # under PYTHONUNBUFFERED=1, had `| head -1`, gone with the first, break the second:
        # exit 1, "the report was not written", of a report read and an export complete.
        stream.write(line + "\n")
        stream.flush()
    except OSError as err:
        # The reader of the report gone (a logger that exited, a consumer of --report json)
        # while the data went whole to a file, or to standard output: exit 141, said of the
        # data's reader, sent scripts to rerun a complete export. Said as any failed write of
        # the report; the reader of one pipe that takes both (--out - 2>&1) gone is the
        # data's, left to exit 141. The report is on standard output only when the data is not.
        apart = isinstance(err, BrokenPipeError) and (
            out is not sys.stderr or _apart(out, sys.stdout)
        )
        if not (apart or unnamed_write_error(err)):
            raise
        # Said of the stream and of the report: a user whose export file was written in full
        # took the bare exit 1 for a failed export.
        where = "standard error" if out is sys.stderr else "standard output"
        raise CommandError(f"{where}: {err.strerror} (the report was not written)") from None


def _apart(one: TextIO, other: TextIO | None) -> bool:
    """Whether two standard streams are not one file (one pipe, as ``2>&1`` makes them)."""
    try:
        mine, theirs = os.fstat(one.fileno()), os.fstat(other.fileno())  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):  # none, closed, or no file: not the data's
        return True
    return (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino)


@contextlib.contextmanager
def _said_of_standard_output() -> Iterator[None]:
    """A failed write in the block said of standard output (a reader gone left as it is)."""
    try:
        yield
    except OSError as err:
        if not unnamed_write_error(err):
            raise  # BrokenPipeError: exit 141, silently, as `yes | head`
        raise CommandError(f"standard output: {err.strerror}") from None


class _StandardOutput(io.TextIOBase):
    """``sys.stdout`` (as it is at each call), a failed write said of it; none (started with
    ``>&-``), nothing written, as ``print`` does."""

    def write(self, text: str) -> int:
        if sys.stdout is None:
            return len(text)
        with _said_of_standard_output():
            return sys.stdout.write(text)

    def flush(self) -> None:
        if sys.stdout is None:
            return
        with _said_of_standard_output():
            sys.stdout.flush()


def standard_output() -> TextIO:
    """Standard output for lines that are no report (``simulate``'s settings, ``demo``'s
    banner), its failed write an error naming it: ``simulate > /dev/full`` said "--port 0: No
    space left on device", blaming the port it had bound, and ``demo`` a bare "No space left
    on device", of no file."""
    return cast(TextIO, _StandardOutput())


def shown(line: str) -> str:
    """``line`` (a report's line, or a file name in it) with its control and format characters
    escaped (:func:`printable`), so that a terminal shows them, not obeys them; a lone
    surrogate (a name not in UTF-8) is left to the stream."""
    if line.isprintable():
        return line
    return "".join(c if "\ud800" <= c <= "\udfff" else printable(c) for c in line)


def _writable(text: str, out: TextIO) -> bool:
    """Whether ``out`` can write ``text`` (its encoding, its error handler)."""
    try:
        text.encode(
            getattr(out, "encoding", None) or "utf-8", getattr(out, "errors", None) or "strict"
        )
    except UnicodeError:
        return False
    return True
