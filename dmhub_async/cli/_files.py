"""Outputs that never destroy a file, and inputs read line by line in a named encoding."""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import json
import os
import re
import select
import signal
import stat
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, Protocol, TextIO, cast

from .._atomic import held as live_run_holds
from .._atomic import hold, open_to_read, replacing
from .._exceptions import InvalidRequestError
from ..export._checkpoint import moved_with_it
from ..export._export import check_output_name
from ..export._output import (
    BESIDE,
    REPLACED_BESIDE,
    check_path,
    looping,
    looping_link,
    not_expanded,
    unexpanded_home,
    wait_for_room,
)
from ..export._writers import is_utf8, scan
from ._errors import CommandError, Interrupted, UsageError, interruptible, unnamed_write_error

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "STDOUT",
    "appeared",
    "check_local",
    "check_output",
    "counted_noting",
    "decoded_lines",
    "export_stdout",
    "no_such_file",
    "read_id_file",
    "read_twice",
    "remove_left_behind",
    "replace_on_success",
    "stdout_bytes",
    "stop_standard_output",
]

#: Whether a write can wait for room and a stop at once (not on Windows).
_CAN_POLL: Final = hasattr(select, "poll")
#: ``--out -``: the data goes to standard output (and the report to standard error).
STDOUT = "-"
#: ``--in -``: the rows come from standard input.
STDIN = "-"


#: The standard outputs of this process's runs, which a signal the event loop receives stops.
_OUTPUTS: weakref.WeakSet[_SignalledStdout] = weakref.WeakSet()


class _SignalledStdout(io.BufferedIOBase):
    """Standard output whose writes Ctrl-C and SIGTERM stop.

    A write to a full pipe (``| less``, a consumer that hangs) blocks, and with it the event
    loop that handles the signals: both did nothing until the reader read or went away. Here a
    signal raises :class:`Interrupted` in the write. Nothing is buffered (so nothing is left to
    flush into the full pipe at exit), and once stopped, what is still written is dropped.

    A write on the main thread (a lookup's rows) is stopped by the signal's own handler; one
    on a thread (an export's, which leaves the event loop free), where no handler runs, by
    :func:`stop_standard_output`, which the event loop's handler calls: the thread waits for
    room in the pipe or for that, and writes no more than the pipe then has room for.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._stopped = False
        self._signalled: int | None = None
        self._wake: tuple[int, int] | None = None  # the pipe stop() wakes a waiting write by
        self._made = threading.Lock()
        try:
            self._whole = stat.S_ISREG(os.fstat(fd).st_mode)  # a file: never waits on a reader
        except OSError:
            self._whole = False
        _OUTPUTS.add(self)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: ReadableBuffer, /) -> int:
        view = memoryview(data).cast("B")
        if self._stopped:
            return len(view)
        try:
            if threading.current_thread() is threading.main_thread() or not _CAN_POLL:
                with interruptible():
                    done = 0
                    while done < len(view):
                        try:
                            done += os.write(self._fd, view[done:])
                        except BlockingIOError:
                            # Set non-blocking by another (a Node.js parent, a CI runner):
                            # full, it failed the run; it waits for room as a blocking pipe
                            # does (a signal stops the wait too).
                            wait_for_room(self._fd)
            else:
                self._write_until_stopped(view)
        except Interrupted:
            self._stopped = True
            raise
        except OSError as err:
            if not unnamed_write_error(err):
                raise
            # Named, as a file --out names itself (`--out - > /dev/full`).
            raise OSError(err.errno, err.strerror, "standard output") from None
        return len(view)

    def stop(self, signum: int) -> None:
        """A write waiting on a thread (and every later one) raises :class:`Interrupted`."""
        self._signalled = signum
        with self._made:  # not a pipe close() has let go of: its number may be another file's
            if self._wake is not None:
                with contextlib.suppress(OSError):
                    os.write(self._wake[1], b"\0")

    def close(self) -> None:
        with self._made:
            wake, self._wake = self._wake, None
        if wake is not None:
            for fd in wake:
                os.close(fd)
        super().close()  # standard output itself stays open

    def _write_until_stopped(self, view: memoryview) -> None:
        """``view`` written from a thread, a pipe's room at a time, until :meth:`stop`."""
        with self._made:
            if self._wake is None:
                self._wake = os.pipe()
            wake = self._wake[0]
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        poller.register(wake, select.POLLIN)
        # Room for PIPE_BUF bytes once a pipe polls writable: a write of no more never waits.
        step = len(view) if self._whole else select.PIPE_BUF
        done = 0
        while done < len(view):
            if self._signalled is not None:
                raise Interrupted(self._signalled)
            ready = dict(poller.poll())
            if self._signalled is not None or wake in ready:
                raise Interrupted(self._signalled or signal.SIGTERM)
            # Writable, or an error (a reader gone): the write says which (BrokenPipeError).
            done += os.write(self._fd, view[done : done + step])


def stop_standard_output(signum: int) -> None:
    """``signum`` received by the event loop: standard output's writes on threads stop."""
    for output in list(_OUTPUTS):
        output.stop(signum)


def stdout_bytes() -> BinaryIO:
    """Standard output as bytes, for ``--out -``, its blocked writes stopped by a signal."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced (a test's capture): as it is
        return sys.stdout.buffer
    return cast(BinaryIO, _SignalledStdout(fd))  # a binary stream, as typing does not see


#: On a terminal, each control character a row holds is shown as a visible stand-in: C0
#: controls (tab and newline excepted) and DEL as their Unicode control pictures (ESC as
#: U+241B), C1 controls (CSI U+009B...) as U+FFFD. A carriage return is handled apart.
_SHOWN_CONTROLS: Final = {
    **{code: 0x2400 + code for code in range(0x20) if code not in (0x09, 0x0A, 0x0D)},
    0x7F: 0x2421,
    **dict.fromkeys(range(0x80, 0xA0), 0xFFFD),
}
_LONE_CR: Final = re.compile("\r(?!\n)")
#: Where a line ends in a CR alone (a Mac's CSV): csv reads such a line as one, as it reads a
#: line ending in CRLF or LF, when it is handed out alone.
_AFTER_LONE_CR: Final = re.compile("(?<=\r)(?!\n)")


class _ShownControls(io.BufferedIOBase):
    """A terminal's standard output, for an export's UTF-8 rows: their control characters
    shown, not obeyed.

    A CSV cell went to the terminal as raw bytes, and a customer's name holding ESC could
    set the window title, clear the screen or rewrite the lines before it (JSONL escapes
    them). A pipe or a file gets the rows exactly as they are; only what a person reads
    is changed. Each write is whole rows (the export encodes a page at a time), so whole
    characters: a CSV's CRLF line ends stay, a carriage return alone is shown (U+240D).
    """

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._stream.fileno()

    def flush(self) -> None:
        self._stream.flush()

    def write(self, data: ReadableBuffer, /) -> int:
        view = memoryview(data).cast("B")
        text = str(view, "utf-8", "replace").translate(_SHOWN_CONTROLS)
        self._stream.write(_LONE_CR.sub("\u240d", text).encode())
        return len(view)


def export_stdout() -> BinaryIO:
    """:func:`stdout_bytes` for an export's rows: on a terminal, their control characters
    shown, not obeyed (:class:`_ShownControls`); in a pipe or a file, exact."""
    stream = stdout_bytes()
    try:
        on_terminal = os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):  # replaced (a test's capture): as it is
        return stream
    return cast(BinaryIO, _ShownControls(stream)) if on_terminal else stream


def _check_path(path: str, flag: str, beside: int) -> None:
    """The export's ``check_path`` (a regular file or nothing yet, in a writable directory) of
    ``path`` as given (``./~/x`` names no home), its refusal a usage error naming ``flag``."""
    try:
        check_path(path, flag, beside=beside)
    except InvalidRequestError as err:
        message = str(err)
        raise UsageError(message if flag in message else f"{flag}: {message}") from None


def check_checkpoint(checkpoint: str) -> None:
    """Refuse a ``--checkpoint`` the export would refuse (a directory, a link, a directory
    that does not exist) as a usage error, before anything is sent: it was exit 1. One of the
    home whose ``~`` no shell expanded is refused as ``--out``'s is (:func:`check_output`)."""
    check_local("--checkpoint", checkpoint)
    _check_home("--checkpoint", checkpoint)
    _check_path(checkpoint, "--checkpoint", REPLACED_BESIDE)


#: A Windows path's start, a drive and a backslash (``C:\exports\june.jsonl``).
_DRIVE: Final = re.compile(r"[A-Za-z]:\\")
#: Or a drive and a slash (``C:/exports/june.jsonl``), which Windows takes the same way.
_DRIVE_SLASH: Final = re.compile(r"[A-Za-z]:/")


def check_local(flag: str, path: str) -> None:
    """Refuse ``path``, given to ``flag``, that is a Windows path (``C:\\exports\\june.jsonl``)
    where a path has no drive: it was taken as one name, backslashes and all, a file written
    where the command ran, exit 0. ``./C:\\x`` names such a file, as written. One with
    forward slashes (``C:/exports/parts``) is refused when no directory ``C:`` is here: a
    sharded export made one where the command ran and exported there, exit 0."""
    if os.sep != "/":
        return
    if _DRIVE.match(path):
        raise UsageError(
            f"{flag} {path}: a Windows path, read here as one name, backslashes and all: give"
            f" a path of this machine, with / (or ./{path} for that name)"
        )
    if _DRIVE_SLASH.match(path) and not os.path.isdir(path[:2]):
        raise UsageError(
            f"{flag} {path}: a Windows path, read here as under a directory {path[:2]} where the"
            f" command runs, which is not there: give a path of this machine (or make the"
            f" directory ./{path[:2]} first, to write under it)"
        )


def _check_home(flag: str, path: str) -> None:
    """Refuse ``path``, given to ``flag``, that is a directory of the home as written after a
    ``~`` no shell expanded (``--out=~``, ``--checkpoint=~/``): taken as written, it named a
    file ``~`` where the command ran, or was refused saying nothing of the ``~``."""
    if (home := unexpanded_home(path)) is not None and os.path.isdir(home):
        raise UsageError(f"{flag} {path}: {not_expanded(flag)}: give a file in {home}")


def check_output(
    out: str,
    *,
    force: bool,
    resumable: bool = False,
    inputs: Iterable[str | None] = (),
    stdout: bool = True,
    checkpoint: str | None = None,
    fmt: str = "jsonl",
    export: bool = False,
    beside: int = BESIDE,
) -> None:
    """Refuse, before anything is sent, an ``--out`` whose writing would destroy something.

    The input (or checkpoint) itself; what the export refuses too (a link, FIFO, device or
    directory: writing there would replace the link, block, or fill a disk); a read-only file;
    and an existing file unless ``--force`` (or ``resumable``: a checkpoint says the file is an
    export in progress). ``stdout``: whether ``-`` means standard output to this command.
    ``checkpoint``, ``fmt``: an export's checkpoint (which does not exist) and format, for the
    refusal of an existing file to say whether it reads as a finished export
    (:func:`_exists_without_checkpoint`); ``export``: the command is an export, whose refusal
    names the checkpoint of an export in progress to ``out`` (:func:`_checkpoint_of`).
    ``beside``: how much longer the longest name written beside ``out`` is (see ``check_path``).
    """
    if out == STDOUT:
        if not stdout:  # it was written as a file named "-", over one already there
            raise UsageError("--out -: this command writes a file, not standard output")
        if sys.stdout is None or getattr(sys.stdout, "closed", False):  # started with >&-
            raise UsageError("--out -: standard output is closed: give --out a file")
        return
    check_local("--out", out)
    # --out=~ or --out=~/exports/ (no shell expands a ~ after "="): "the format is read from
    # the name: name it ~.jsonl", or "names a directory", saying nothing of the ~.
    _check_home("--out", out)
    if out.endswith(("/", os.sep)) and not os.path.isdir(out):
        # Path("exports/") is "exports": a file of that name was written where a directory was
        # meant (an existing directory is refused below, as any directory is).
        raise UsageError(f"--out {out} names a directory: give a file, in it or elsewhere")
    path = Path(out)
    try:
        check_output_name(path)  # written as plain text under a name gunzip or tar refused
    except InvalidRequestError as err:
        raise UsageError(f"--out {err}") from None
    for other in inputs:
        if other is not None and other != STDOUT and _same_file(path, Path(other)):
            raise UsageError(f"--out {out} is also an input of this command: give another file")
    _check_path(out, "--out", beside)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    # No write bit at all is read-only even to root, whom os.access lets write anything.
    if not info.st_mode & 0o222 or not os.access(path, os.W_OK):
        if resumable:
            # Its checkpoint's export: "give another file" was refused by that checkpoint as
            # another export's.
            raise UsageError(
                f"--out {out} is read-only: make it writable to resume the export of its "
                f"checkpoint ({checkpoint}), or delete both to start over"
            )
        raise UsageError(f"--out {out} is read-only: give another file")
    if not (force or resumable):
        if export and (found := _checkpoint_of(out, checkpoint)):
            # Stopped midway, then run again without its --checkpoint (or with one misspelt):
            # "exists: pass --force", which threw away what was exported, or "reads as a
            # finished export", of a partial file.
            where, exported, stale = found
            which = f"of another checkpoint, {where}" if checkpoint else f"of checkpoint {where}"
            if stale:
                # A stopped export's checkpoint, the file written whole since by an export
                # without it (--force), which leaves it: "an export in progress" of a whole
                # export, whose resume re-read most of it.
                raise UsageError(
                    f"--out {out} exists, written after checkpoint {where} of an export to it"
                    f" that stopped at {exported:,} customers, and more than two of its pages"
                    " longer than that export left it: most likely a later export without that"
                    " checkpoint (--force) wrote it whole, and left the checkpoint behind; pass"
                    f" --force to export it again (and delete {where}), or rerun with"
                    f" --checkpoint {where} to resume the stopped export"
                )
            raise UsageError(
                f"--out {out} exists, an export in progress ({exported:,} customers so far) "
                f"{which}: rerun with --checkpoint {where} to resume it, or pass --force to "
                "export it again"
            )
        if checkpoint is not None:
            raise UsageError(_exists_without_checkpoint(out, checkpoint, fmt))
        raise UsageError(f"--out {out} exists: pass --force to overwrite it")


#: The most entries of a directory looked at, and the largest file read, for a checkpoint of an
#: existing ``--out`` (a refusal does not read through a directory of a million files).
_CHECKPOINT_SEARCH: Final = 10_000
_CHECKPOINT_SIZE: Final = 64 << 10


def _checkpoint_of(out: str, checkpoint: str | None) -> tuple[str, int, bool] | None:
    """A checkpoint of an export in progress to ``out``, in ``out``'s directory, the given
    ``checkpoint``'s or the working directory: its path (as beside ``out`` when it is there),
    the customers it counts, and whether it is stale (:func:`_left_behind`); None when none
    is found. Only names and counts are read: never a token or a secret.

    The working directory too: an export to another one (``--out exports/c.jsonl
    --checkpoint c.ckpt``) run again without its checkpoint was told only to ``--force`` it,
    which threw away what was exported."""
    target = os.path.realpath(out)
    places = [os.path.dirname(out)]
    if checkpoint is not None:
        places.append(os.path.dirname(checkpoint))
    places.append("")  # the working directory, where a checkpoint is named as given
    for place in dict.fromkeys(places):
        try:
            with os.scandir(place or ".") as entries:
                for number, entry in enumerate(entries):
                    if number >= _CHECKPOINT_SEARCH:
                        break
                    if (
                        entry.is_file(follow_symlinks=False)
                        and _WRITTEN_UNTIL_RENAMED.fullmatch(entry.name) is None
                        and (counted := _counted_for(entry, target)) is not None
                    ):
                        exported, stale = counted
                        return os.path.join(place, entry.name), exported, stale
        except OSError:  # a directory that cannot be listed: nothing found there
            continue
    return None


#: ``mkstemp``'s name of a file written until it is renamed in place (``_atomic.replacing``):
#: a checkpoint's, whole, left by a run killed just before its rename, was named for the
#: checkpoint ("rerun with --checkpoint .out.ckpt.k2j4m9xq.tmp"), a file the next export sweeps.
_WRITTEN_UNTIL_RENAMED: Final = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp", re.DOTALL)


def _counted_for(entry: os.DirEntry[str], target: str) -> tuple[int, bool] | None:
    """The customers ``entry`` counts when it is a checkpoint of an export to ``target``, and
    whether it is stale (:func:`_left_behind`)."""
    try:
        if entry.stat(follow_symlinks=False).st_size > _CHECKPOINT_SIZE:
            return None
        # Not blocking, nor through a link, should it have become a FIFO or one since.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(entry.path, flags), "rb") as fh:
            data = fh.read(_CHECKPOINT_SIZE)
        if b'"scope"' not in data or b'"dest"' not in data:
            return None
        recorded = json.loads(data)
        dest = recorded["scope"]["dest"]
        exported = recorded["exported"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):  # no checkpoint
        return None
    if not isinstance(dest, str) or not isinstance(exported, int) or isinstance(exported, bool):
        return None
    if os.path.realpath(dest) == target:
        return exported, _left_behind(entry, recorded, target)
    # A file and its checkpoint moved together (resumed there, as the export takes them), and
    # only then: one kept apart from its output (--out x/out.jsonl --checkpoint y/out.ckpt)
    # was named for y/out.jsonl, a file beside it, and its resume refused "another export's".
    try:
        moved = moved_with_it(Path(entry.path), dest, target)
    except (OSError, RuntimeError):  # a path it cannot resolve (a loop of links): not found
        return None
    return (exported, _left_behind(entry, recorded, target)) if moved else None


def _left_behind(entry: os.DirEntry[str], recorded: dict[str, object], target: str) -> bool:
    """Whether the checkpoint ``entry`` (read as ``recorded``) of an export to ``target`` is a
    stopped export's left behind by a later one that wrote ``target`` whole without it (an
    ``export --force`` with no ``--checkpoint``, which leaves it): the file was written after
    the checkpoint, and holds more than two pages of records (of the checkpoint's size) past
    the bytes it covers. An export stopped in progress wrote at most the page after its
    checkpoint's (or, stopped in its final check, the customers it found missing: a guess,
    then, which is why the refusal says "most likely" and still offers the resume). Said,
    never acted on.

    Records, not bytes: two pages at the mean length of the customers it covers called an
    export in progress stale when its next page held longer customers (a page of 1, or
    customers of 2,000 characters after 50 short ones), and advised --force of it."""
    covered, page = recorded.get("bytes"), recorded.get("page_size")
    scope = recorded.get("scope")
    fmt = scope.get("format") if isinstance(scope, dict) else None
    if not (isinstance(covered, int) and isinstance(page, int)) or min(covered, page) <= 0:
        return False
    try:
        if os.stat(target).st_mtime <= entry.stat(follow_symlinks=False).st_mtime:
            return False
        return _records_past(target, covered, 2 * page + 1, csv=fmt == "csv") > 2 * page
    except OSError:
        return False


def _records_past(path: str, start: int, most: int, *, csv: bool) -> int:
    """The whole records of the regular file at ``path`` from byte ``start``, counted up to
    ``most``: its lines, or a CSV's records (a newline within a quoted field is none; its
    quotes, doubled within one, say where it is), in its first :data:`_READ_BACK` bytes from
    there. Nothing of anything but a regular file."""
    fh, info = open_to_read(path)
    counted, quoted, read = 0, False, 0
    with fh:
        if not stat.S_ISREG(info.st_mode):
            return 0
        fh.seek(start)
        while counted < most and read < _READ_BACK and (block := fh.read(_RECORDS_BLOCK)):
            read += len(block)
            if not csv or (not quoted and b'"' not in block):
                counted += block.count(b"\n")
                continue
            for mark in _CSV_MARK.finditer(block):
                if mark.group() == b'"':
                    quoted = not quoted
                elif not quoted:
                    counted += 1
    return counted


#: The bytes :func:`_records_past` reads at once.
_RECORDS_BLOCK: Final = 1 << 16
#: What :func:`_records_past` reads of a CSV: a quote, or the end of a line.
_CSV_MARK: Final = re.compile(rb'["\n]')


#: The most of an existing ``--out`` read to say whether it reads as an export: 64 MiB, 0.43 s
#: (80,658 of the demo's customers of 830 bytes).
_READ_BACK: Final = 64 << 20


def _exists_without_checkpoint(out: str, checkpoint: str, fmt: str) -> str:
    """Why an export with ``checkpoint`` refuses ``out``, which exists and no checkpoint covers.

    The export that wrote it may have ended: it removes its checkpoint then, and a run killed
    just after printed no report. Its rerun said only "exists: pass --force", as of any file.
    Its start is read (as a resume reads a file back, :data:`_READ_BACK` bytes at most: a
    refusal does not read gigabytes) to say whether it reads as an export.
    """
    try:
        with open(out, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            found = scan(fh, fmt, min(size, _READ_BACK))
    except OSError:
        found, size = None, 0
    # None customers: an empty file, a CSV's header alone (a finished export of nobody: its
    # filters matched none; it "did not read as an export").
    nobody = (
        found is not None
        and found.end == size
        and (size == 0 or (found.header or ())[:1] == ("id",))
    )
    if found is None or (found.count == 0 and not nobody):
        return (
            f"--out {out} exists and does not read as an export ({fmt}), and there is no "
            f"checkpoint {checkpoint} of one in progress: pass --force to overwrite it"
        )
    # Past the bytes read, or customers the final check appended after the ordered ones.
    count = f"{'' if found.end == size else 'at least '}{found.count:,} customers"
    return (
        f"--out {out} exists and reads as a finished export ({count}): an export removes "
        f"its checkpoint ({checkpoint}) when it ends, and one killed just then printed no "
        "report; pass --force to export it again"
    )


def no_such_file(flag: str, given: str) -> str:
    """``FLAG GIVEN: no such file``; for a ``~/ids.csv`` no shell expanded (``--in=~/ids.csv``)
    that is in the home, the path meant: "no such file" alone, of the user's own file, said
    nothing of why. One through a link that goes round (or through more links than are
    followed) is said as such: it was "no such file" too."""
    if (link := looping(Path(given))) is not None:
        return f"{flag} {given}: cannot read it: {str(link)!r} is {looping_link(link)}"
    said = f"{flag} {given}: no such file"
    home = unexpanded_home(given)
    if home is None or not os.path.isfile(home):
        return said
    return f"{said}: {not_expanded(flag)}: give {home}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        # realpath, not resolve(): a link loop on the way raised RuntimeError, a traceback
        return os.path.realpath(a) == os.path.realpath(b)


#: Seconds after which a lookup's temporary file that no live run holds is a killed run's: one
#: younger may be a run's between ``mkstemp`` and :func:`.hold`.
_LEFT_BEHIND: Final = 60.0
#: ``mkstemp``'s names of a lookup's copy of its input (:func:`read_twice`), in the
#: temporary directory.
_INPUT_COPY: Final = re.compile(r"\.dmhub-lookup-[a-z0-9_]{8}\.csv")


def remove_left_behind(out: str) -> None:
    """Remove the temporary files that lookups killed outright (SIGKILL, the OOM killer, a
    power cut) left behind: copies of their input (``.dmhub-lookup-xxxxxxxx.csv``, personal
    data) in the temporary directory, and unfinished results (``.NAME.xxxxxxxx.tmp``) beside
    ``out``. Nothing removed them: each such kill left one more, for good.

    Only a lookup's own: named as ``mkstemp`` names them, a regular file of this user's,
    older than :data:`_LEFT_BEHIND` and held by no live run (:func:`.hold`). Silently: a
    file that cannot be checked or removed is left.
    """
    places = [(tempfile.gettempdir(), _INPUT_COPY)]
    if out != STDOUT:
        path = Path(out)
        places.append(
            (str(path.parent), re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp"))
        )
    cutoff = time.time() - _LEFT_BEHIND
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    for directory, ours in places:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if not ours.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(info.st_mode) or info.st_mtime >= cutoff:
                    continue
                if (uid is not None and info.st_uid != uid) or live_run_holds(entry.path):
                    continue
                os.unlink(entry.path)


@contextlib.contextmanager
def replace_on_success(out: str, encoding: str, *, force: bool = False) -> Iterator[TextIO]:
    """A text stream for ``out`` that becomes ``out`` only when the block ends without error.

    A file at ``out`` then (made while the block ran: another run to the same ``--out``) is
    replaced only with ``force``; else it is kept, and the run refused (exit 2, as a file there
    as it began would have been), its rows thrown away.

    Rows go to a temporary file of an unpredictable name beside ``out`` (``_atomic.replacing``:
    created with ``O_EXCL``, so no link is followed; the mode a plain ``open()`` gives); any
    error or signal removes it, so a failed run leaves no partial output and the old file, if
    any, untouched. A temporary file that cannot be removed is left with a warning: the run's
    own error is the one raised, not the removal's.
    """
    if out == STDOUT:
        sys.stdout.flush()
        if getattr(sys.stdout, "buffer", None) is None:  # a replaced sys.stdout: text only
            yield sys.stdout
            return
        # Written through: each row out as it is answered, as an export writes each page. A
        # pipe got them 8 KB (some 200 rows) at a time, a slow service's for minutes, and a
        # run killed outright lost them.
        stream = io.TextIOWrapper(stdout_bytes(), encoding=encoding, newline="", write_through=True)
        try:
            yield stream
        finally:
            stream.flush()
            stream.detach()  # sys.stdout keeps its buffer
        return
    # Synced before it takes the name: after a power loss just then, a `--force` run could
    # leave an empty file where the old result was (the rename on disk, the data not).
    try:
        with replacing(Path(out), output=True, replace=force) as raw:
            text = io.TextIOWrapper(raw, encoding=encoding, newline="")
            yield text
            text.detach()  # its rows flushed into the file, which replacing closes and renames
    except FileExistsError as err:
        if err.filename != str(Path(out)):
            raise
        raise appeared(out) from None


def appeared(out: str) -> UsageError:
    """The refusal of an ``--out`` that another program made while the run wrote its own."""
    return UsageError(
        f"--out {out} was made by another program while this run wrote its own (another run"
        " to the same --out?): it is left as it is, and this run's result was not written;"
        " pass --force to overwrite it"
    )


@contextlib.contextmanager
def read_twice(given: str, copying: Noting | None = None) -> Iterator[tuple[Path, str]]:
    """``--in given`` as a file that can be read twice, and the name its messages give it.
    ``copying``: what a copy's progress is noted in (``with copying() as note``, told the
    lines copied so far), when one is made.

    The rows are read twice (every one checked before anything is sent), so standard input
    (``-``) or a pipe (``<(iconv -f gbk -t utf-8 ids.csv)``) is first copied to a temporary
    file only this user can read (it holds personal data), removed at the end, whatever
    happens. A regular file is read where it is, standard input redirected from one
    (``< ids.csv``) too where the system can open it again (:func:`_stdin_file`).
    """
    path = Path(given)
    if given != STDIN and path.is_file():
        yield path, given
        return
    if given == STDIN and (again := _stdin_file()) is not None:
        yield again, "<stdin>"
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dmhub-lookup-", suffix=".csv")  # 0600
    except OSError as err:
        raise _not_copied(given, err) from err
    holder = os.dup(fd)  # held open, and locked, until it is removed: see remove_left_behind
    hold(holder)  # a live run's: remove_left_behind leaves it
    try:
        try:
            with (
                open(fd, "wb") as copy,
                interruptible(),
                copying() if copying is not None else contextlib.nullcontext() as note,
            ):
                if given != STDIN:
                    with path.open("rb") as source:
                        _copy_lines(source, copy, given, note)
                elif sys.stdin is None or getattr(sys.stdin, "closed", False):  # <&-
                    raise CommandError("--in -: standard input is closed: give --in a file")
                else:
                    _copy_lines(sys.stdin.buffer, copy, "<stdin>", note)
        except OSError as err:
            if err.filename not in (None, tmp):  # the input's own (a FIFO that went away)
                raise
            raise _not_copied(given, err) from err
        yield Path(tmp), "<stdin>" if given == STDIN else given
    finally:
        try:
            os.unlink(tmp)
        finally:
            os.close(holder)


#: What makes a progress that blocking work notes its rows in (``note(rows)``; None: none).
Noting = Callable[[], contextlib.AbstractContextManager[Callable[[int], None] | None]]


def _stdin_file() -> Path | None:
    """Standard input as a name that opens it anew, when it is a regular file not yet read
    (``--in - < ids.csv``): read twice where it is, as ``--in ids.csv`` is. It was copied whole
    to the temporary directory first, as a pipe is: gigabytes before the first lookup, and
    refused where that directory was small.

    Linux's ``/proc/self/fd/N`` opens the file itself again (elsewhere ``/dev/fd/N`` shares
    the offset, and the second reading would find nothing): None, a copy, on other systems,
    for a pipe or a device, and for a file of which something (``read`` in the shell) has
    taken a part already: the rows are what is left of it.
    """
    try:
        fd = sys.stdin.fileno()
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or os.lseek(fd, 0, os.SEEK_CUR) != 0:
            return None
        again = Path(f"/proc/self/fd/{fd}")
        with again.open("rb") as fh:  # opened anew, and readable by this user
            reopened = os.fstat(fh.fileno())
    except (AttributeError, OSError, ValueError):  # closed, replaced, no /proc: a copy
        return None
    if (reopened.st_dev, reopened.st_ino) != (info.st_dev, info.st_ino):
        return None
    return again


class _Reads(Protocol):
    """What :func:`_byte_lines` reads: a binary file, or a :class:`_Copied` one."""

    def read(self, size: int, /) -> bytes: ...


class _Copied:
    """A binary input whose every block read is also written to ``copy``."""

    def __init__(self, source: BinaryIO, copy: BinaryIO) -> None:
        self._source, self._copy = source, copy

    def read(self, size: int) -> bytes:
        block = self._source.read(size)
        self._copy.write(block)
        return block


def _copy_lines(
    source: BinaryIO, copy: BinaryIO, where: str, note: Callable[[int], None] | None = None
) -> None:
    """Copy ``source`` to ``copy``, refusing a line of more than 1 MiB as it comes, as the
    rows' first reading would: an input of one endless line (``--in /dev/zero``) was copied
    until the temporary directory was full, and only then refused. ``note``: told the lines
    copied so far, after each (progress)."""
    counted_noting(_byte_lines(_Copied(source, copy), where), note)


def counted_noting(items: Iterable[object], note: Callable[[int], None] | None) -> int:
    """How many ``items`` there are, read to the end; ``note`` (progress), when given, told
    the count so far after each (no call a row without one: 2,000,000 rows a lookup)."""
    if note is None:
        return sum(1 for _ in items)
    total = 0
    for total, _ in enumerate(items, 1):
        note(total)
    return total


def _not_copied(given: str, err: OSError) -> CommandError:
    """``--in given`` could not be copied to the temporary directory: said of the user's
    input and of that directory, not of the hidden copy (``/tmp/.dmhub-lookup-k2j4.csv: No
    space left on device``), nor of no file at all (a failed write names none)."""
    room = err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    return CommandError(
        f"--in {given}: cannot copy it to a temporary file in {tempfile.gettempdir()} (its rows"
        f" are read twice): {err.strerror or err}"
        + ("; set TMPDIR to a directory with room" if room else "")
    )


#: What a file that is no CSV text starts with, and what it is: each was "not UTF-8 text (byte
#: 0xff): ... --encoding gbk", and with gbk "not gbk text", advice going round in a circle.
_SAVE_AS_CSV: Final = "save it as CSV in Excel or WPS (CSV UTF-8)"
_DECOMPRESS, _GIVE_CSV = "decompress it first", "and give the CSV UTF-8 within"
_NOT_CSV: Final = (
    (codecs.BOM_UTF16_LE, "a UTF-16 file (Excel: Unicode Text)", _SAVE_AS_CSV),  # UTF-32 LE too
    (codecs.BOM_UTF16_BE, "a UTF-16 file", _SAVE_AS_CSV),
    (b"PK\x03\x04", "an Excel workbook (.xlsx, or another zip file)", _SAVE_AS_CSV),
    (bytes.fromhex("d0cf11e0a1b11ae1"), "an Excel workbook (.xls, or WPS .et)", _SAVE_AS_CSV),
    (b"\x1f\x8b", "a gzip file", f"{_DECOMPRESS} (gunzip) {_GIVE_CSV}"),
    (b"\xfd7zXZ\x00", "an xz file", f"{_DECOMPRESS} (unxz) {_GIVE_CSV}"),
    (b"\x28\xb5\x2f\xfd", "a zstd file", f"{_DECOMPRESS} (unzstd) {_GIVE_CSV}"),
)


def _check_not_binary(where: str, first: bytes) -> None:
    """Refuse a file whose first line says it is UTF-16, a workbook or compressed, whatever
    ``--encoding``."""
    for start, what, advice in _NOT_CSV:
        if first.startswith(start):
            raise CommandError(f"{where}:1: {what}, not CSV text: {advice}")


#: The first byte of a character of three bytes or four in UTF-8: a CJK one, among others.
_CJK_UTF8: Final = re.compile(b"[\xe0-\xf4]")


#: The longest line read: a row of identities is a few hundred bytes, a cell at most csv's
#: 131,072 characters; a file of one endless line was read whole before csv refused it.
_LONGEST_LINE: Final = 1 << 20
_BLOCK: Final = 1 << 16


def _byte_lines(fh: _Reads, where: str, row: str = "row of identities") -> Iterator[bytes]:
    """The lines of ``fh``, each ending in LF, CRLF or a CR alone (the last maybe in none),
    without a Ctrl-Z that ends the file (DOS's mark of its end).

    A binary file's own lines end at LF alone: a file whose lines end in a CR (Excel for Mac)
    was one line, read whole into memory. Read in blocks, at most :data:`_LONGEST_LINE` held
    (a longer line is refused as no ``row`` of the file).
    """
    held = b""
    lines = 0
    while block := fh.read(_BLOCK):
        parts = (held + block).splitlines(keepends=True)  # at LF, CRLF and a lone CR
        held = parts.pop()
        if held.endswith(b"\n"):  # a whole line; one ending in CR may be CRLF's first half
            parts.append(held)
            held = b""
        lines += len(parts)
        yield from parts
        if len(held) > _LONGEST_LINE:
            raise CommandError(
                f"{where}:{lines + 1}: a line of more than 1 MiB, which no {row} is: is it the"
                " file you meant?"
            )
    held = held.removesuffix(b"\x1a")  # DOS's end of file (Ctrl-Z): copy /b a.csv+b.csv
    if held:
        yield held


def decoded_lines(path: Path, encoding: str, name: str | None = None) -> Iterator[str]:
    """The lines of ``path`` decoded one by one, so that a bad byte is reported with its line
    (of ``name``: where it was read from, when ``path`` is its copy).

    For the encodings CSV files come in (UTF-8, GBK, GB18030, Big5, Latin-1...), in which a
    newline byte is always a newline. A line ends at LF, or at a CR alone (a Mac's CSV).
    """
    where = str(path) if name is None else name
    decoder = codecs.getincrementaldecoder(encoding)()
    name = codecs.lookup(encoding).name
    utf8 = name.startswith("utf-8")
    # Advice that never names the encoding that just failed.
    if utf8:
        advice = "(Excel on Chinese Windows saves CSV as --encoding gbk)"
    elif name in ("gbk", "gb2312"):  # a name with 䶮 (no GBK character), saved as GB18030
        advice = "(rare characters, beyond GBK: --encoding gb18030, which reads GBK files too)"
    else:
        advice = "(or none: UTF-8 is the default)"
    number = 0  # the lines handed out; a lone CR (a Mac's CSV) ends one too
    last = 1  # the line the file ends on
    # Lines not ASCII: those that are UTF-8 holding CJK (the first of them), and the others.
    utf8_lines, first_utf8, other_lines = 0, 0, 0
    with path.open("rb") as fh:
        for raw in _byte_lines(fh, where):
            last = number + 1 + raw.count(b"\r") - raw.endswith(b"\r\n")
            if not utf8 and not raw.isascii():
                if _CJK_UTF8.search(raw) and is_utf8(raw):
                    utf8_lines, first_utf8 = utf8_lines + 1, first_utf8 or number + 1
                else:
                    other_lines += 1
            if number == 0:
                _check_not_binary(where, raw)
                if not utf8 and raw.startswith(codecs.BOM_UTF8):
                    # Read as GBK, the mark was text ('锘縲echat'): the first row was not found.
                    raise CommandError(
                        f"{where}:1: starts with the mark of a UTF-8 file (Excel: CSV UTF-8), "
                        f"not {encoding} text: give --encoding utf-8 (the default)"
                    )
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError as err:
                line = number + 1 + raw[: err.start].count(b"\r")
                if not utf8 and is_utf8(raw):  # told gb18030, it read as mojibake
                    raise CommandError(
                        f"{where}:{line}: UTF-8 text, not {encoding}: give --encoding utf-8 (the"
                        " default)"
                    ) from None
                raise CommandError(
                    f"{where}:{line}: not {'UTF-8' if utf8 else encoding} text (byte "
                    f"0x{err.object[err.start]:02x}): give the file's encoding with --encoding "
                    + advice
                ) from None
            if not text:  # only the start of a character: the file ends inside it (below)
                continue
            if text.count("\r") <= text.endswith("\r\n"):  # no lone CR: the usual line
                number += 1
                yield text
                continue
            for part in _AFTER_LONE_CR.split(text):
                if part:
                    number += 1
                    yield part
        try:
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError:  # was Python's words: "unexpected end of data", no line
            raise CommandError(
                f"{where}:{last}: ends inside a character: the file was cut short (a copy or a"
                " download not finished?): get it whole"
            ) from None
        if tail:
            yield tail
    if utf8_lines >= 2 and not other_lines:
        # UTF-8 that happened to read as mojibake (王伟 as 鐜嬩紵): its Chinese values were
        # looked up so, all "not found". GBK text is UTF-8 holding CJK on about one line in a
        # thousand (rare characters); on two lines and no other, one file in a million.
        raise CommandError(
            f"{where}:{first_utf8}: UTF-8 text, not {encoding} (each line with Chinese reads as"
            " UTF-8): give --encoding utf-8 (the default)"
        )


#: The largest customer id (ids are 64-bit ints on the wire, as ``check_id`` holds them).
_LAST_ID: Final = 2**63 - 1
#: The most of a line that is no id quoted in its refusal: the file may be another one
#: (a log, a configuration), and a message must not carry much of it.
_QUOTED: Final = 40


def read_id_file(given: str) -> list[int]:
    """The customer ids of ``--id-list given`` (``-``: standard input, ``<stdin>`` in
    messages), one a line (blank lines and the white space around an id skipped, repeats
    kept: the export drops them), checked before anything is sent: a file that cannot be read,
    a line that is no id (``ids.txt:7: ...``, quoting at most :data:`_QUOTED` characters of
    it) or a file of no id is a :class:`CommandError`.

    Read a block at a time (:func:`_byte_lines`: a line of more than 1 MiB is refused, not held);
    the ids kept as ints, for the export's own checks (``checked_ids``) and walk.
    """
    if given == STDIN:
        if sys.stdin is None or getattr(sys.stdin, "closed", False):  # started with <&-
            raise CommandError("--id-list -: standard input is closed: give --id-list a file")
        with interruptible():
            ids = _ids_in(sys.stdin.buffer, "<stdin>")
    else:
        path = Path(given)
        try:
            a_directory = path.is_dir()
        except OSError:  # under one it may not enter, a name too long: the open's refusal,
            # below, names the flag (this look's raised "locked/ids.txt: Permission denied")
            a_directory = False
        if a_directory:
            raise CommandError(f"--id-list {given} is a directory: give a file of ids, one a line")
        try:
            with path.open("rb") as fh, interruptible():  # 300,000 lines: 0.1 s, a signal heard
                ids = _ids_in(fh, given)
        except FileNotFoundError:
            raise CommandError(no_such_file("--id-list", given)) from None
        except OSError as err:  # unreadable (its mode), or a read that failed
            raise CommandError(
                f"--id-list {given}: cannot read it: {err.strerror or err}"
            ) from None
    if not ids:
        raise CommandError(f"--id-list {given}: holds no customer id (one id a line)")
    return ids


#: A line of UTF-16 read as bytes: ASCII characters with a NUL beside each (LE or BE).
_UTF16: Final = re.compile(rb"[\x01-\x7f]\x00[\x01-\x7f]\x00|\x00[\x01-\x7f]\x00[\x01-\x7f]")


def _ids_in(fh: BinaryIO, where: str) -> list[int]:
    """The ids of :func:`read_id_file`, read from ``fh`` (named ``where``)."""
    ids: list[int] = []
    for number, raw in enumerate(_byte_lines(fh, where, "customer id"), 1):
        text = raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw
        text = text.strip()
        if not text:
            continue
        # bytes.isdigit() is ASCII alone: no sign, point, exponent or full-width digit. Its
        # length is counted past the zeros padding it: an id padded to a fixed width of more
        # than 19 characters (a spreadsheet's format, a CHAR column) was refused as no id.
        digits = text.lstrip(b"0") or b"0"
        if text.isdigit() and len(digits) <= 19 and (value := int(digits)) <= _LAST_ID:
            ids.append(value)
            continue
        if text.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _UTF16.search(text):
            # Windows PowerShell's `>` writes UTF-16: its line was quoted as '��3\x000\x00...'.
            raise CommandError(
                f"{where}:{number}: a UTF-16 file (Windows PowerShell's >, Excel's Unicode Text),"
                " not one id a line in UTF-8: save it as UTF-8 (Out-File -Encoding utf8)"
            )
        # Characters, not bytes: a cut at 40 bytes split a character (a line of 王, a JSON
        # lines file given by mistake), shown as a replacement character the file does not hold.
        head = text[: _QUOTED * 4].decode("utf-8", "replace")
        shown = head[:_QUOTED]
        more = "..." if len(head) > _QUOTED or len(text) > _QUOTED * 4 else ""
        raise CommandError(
            f"{where}:{number}: not a customer id: {shown!r}{more} (one id a line, a whole "
            f"number from 0 to {_LAST_ID})"
        )
    return ids
