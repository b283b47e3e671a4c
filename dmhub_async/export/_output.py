"""Where an export's rows go, safely: a locked destination, and a checkpoint that matches it.

Without a checkpoint, rows go to a work file made by ``mkstemp`` next to the destination (an
unpredictable name, created exclusively, no link followed) that replaces it only when the
export is complete; any failure removes it. With a checkpoint, rows go to the destination
itself (opened without following a link), so that a rerun finds them: it checks the file
against the checkpoint before going on (docs/reliability.md, "Resuming an export"). Or rows
go straight to a binary stream, not resumable.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import select
import socket
import stat
from pathlib import Path
from typing import IO, Final

import attrs
import filelock

from .._atomic import give_open_mode, held, naming, put_in_place, remove_or_warn, temporary_beside
from .._exceptions import InvalidRequestError
from .._threads import on_thread
from .._validate import unnameable
from ._checkpoint import Checkpoint, ExportScope, read_checkpoint, write_checkpoint
from ._owner import Sample, first_records, selected_fields, spread_records
from ._writers import Scan, scan

__all__ = [
    "Output",
    "check_path",
    "denied",
    "looping",
    "looping_link",
    "not_expanded",
    "open_output",
    "wait_for_room",
]

logger = logging.getLogger("dmhub_async")
#: Open without following a link, and without blocking on a FIFO (where the OS has them).
_SAFE_OPEN = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


#: Bytes the longest name written beside a file adds to its own: an export's work file,
#: mkstemp's ``.NAME.xxxxxxxx.part`` (its ``.lock``, less).
BESIDE: Final = len("..xxxxxxxx.part")
#: Of a file written whole and renamed in place (a checkpoint, a merge's or a lookup's output):
#: mkstemp's ``.NAME.xxxxxxxx.tmp``. A name of 241 bytes worked, refused by :data:`BESIDE`.
REPLACED_BESIDE: Final = len("..xxxxxxxx.tmp")


def check_path(path: str | os.PathLike[str], what: str, *, beside: int = BESIDE) -> None:
    """Refuse a path that is not a regular file (or nothing yet) in a writable directory.

    ``path`` as given (text: the command line's ``./~/x`` is no home, which ``Path`` drops).
    ``beside``: how many bytes longer than its own the longest name written beside it is
    (:data:`BESIDE`, an export's output; :data:`REPLACED_BESIDE`, a file written whole)."""
    given = os.fspath(path)
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # a file where its directory should be
        # (said below): raw out of export_customers, and exit 1 on the command line.
        mode = None
    except ValueError:  # "embedded null byte", raw out of export_customers and merge; a
        # lone surrogate's UnicodeEncodeError, which was said to be a NUL
        why = unnameable(given) or "holds a NUL character, which no file name can"
        raise InvalidRequestError(f"{what} {str(path)!r} {why}") from None
    except PermissionError:  # under a directory this user may not enter: raw, naming none
        raise InvalidRequestError(
            f"{what} {str(path)!r}: cannot write to {str(path.parent)!r}, {denied(path)}"
        ) from None
    except OSError as err:  # a link on the way that leads to itself, a name too long: raw
        # out of export_customers and merge, and "Too many levels of symbolic links", exit 1
        raise InvalidRequestError(f"{what} {str(path)!r}: {_unreachable(path, err)}") from None
    # Each refusal names ``what``: a checkpoint of an unset setting ("") was "'.' is a
    # directory, not a file", which the user took for the output.
    if mode is not None and stat.S_ISDIR(mode):
        raise InvalidRequestError(f"{what} {str(path)!r} is a directory, not a file")
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise InvalidRequestError(f"{what} {str(path)!r} is {kind}: give a regular file")
    if not path.parent.is_dir():
        # "cannot write to 'exports'" said nothing of why: made not yet, or a file. A file
        # further up (exports/2026 where exports is one) is named: "does not exist: make it
        # first", and `mkdir -p exports/2026` failed "Not a directory".
        there = nearest_existing(path)
        shown, parent = str(path), str(path.parent)
        if unexpanded_home(os.path.dirname(given)) is not None:
            # --out=~/exports/june.jsonl (no shell expands a ~ after "="): "does not exist:
            # make it first", of the user's own ~/exports. The path meant is named, not its
            # directory (which, given to --out, is refused as one); so is the setting given
            # (--checkpoint was told "--out ~/x").
            home = os.path.expanduser(path)
            why = f"which does not exist: {not_expanded(what)}: give {home!r}"
        else:
            # ./~/june.jsonl: a directory named "~" here, as written, which was said to be
            # the home ("give '/root/june.jsonl'"), and named "~" as Path writes it; not yet
            # made, or under a file named "~" here (said "does not exist", of a file), as
            # any other.
            shown, parent = _here(shown), _here(parent)
            if there is None or there.is_dir():
                why = "which does not exist: make it first"
            elif there == path.parent:
                why = "which is not a directory"
            else:
                why = f"under {_here(str(there))!r}, which is not a directory"
        raise InvalidRequestError(f"{what} {shown!r}: cannot write to {parent!r}, {why}")
    if not os.access(path.parent, os.W_OK):
        # Why, and what to do: "cannot write to '/x/archive'" said neither.
        raise InvalidRequestError(
            f"{what} {str(path)!r}: cannot write to {str(path.parent)!r}, which this user may"
            " not write in (its mode, or a read-only file system): give a directory it can"
            " write to"
        )
    _check_room_beside(path, what, beside)


def _check_room_beside(path: Path, what: str, beside: int) -> None:
    """Refuse a name the file system takes but not the hidden files named after it beside it
    (``beside`` bytes longer): 80 Chinese characters and ``.jsonl`` (246 bytes) failed
    "File name too long" of the user's own name, a raw OSError out of export_customers and
    exit 1 naming no flag, a checkpoint's once the first page was read."""
    try:
        longest = os.pathconf(path.parent, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no such limit said here (Windows)
        return
    size = len(os.fsencode(path.name))
    if 0 < longest <= beside:  # no name leaves room: "at most -1 bytes" (0 at 15) was said
        raise InvalidRequestError(
            f"{what} {str(path)!r}: cannot write to it: the hidden files written beside it are"
            f" named after it with {beside} bytes more, and a name here holds {longest}: give a"
            " path on a file system whose names hold more"
        )
    if 0 < longest < size + beside:
        raise InvalidRequestError(
            f"{what} {str(path)!r}: cannot write to it: its name of {size} bytes is too long"
            f" for the hidden files written beside it, named after it with {beside} bytes more"
            f" (a name here holds {longest}): give a name of at most {longest - beside} bytes"
        )


def _unreachable(path: Path, err: OSError) -> str:
    """Why ``path`` cannot be reached, where a look at it failed with ``err``: the symbolic
    link above it that leads back to itself (a loop), named, or the system's words."""
    if err.errno != errno.ELOOP:
        return f"cannot write to it: {err.strerror}"
    link = looping(path.parent) or path.parent
    where = "" if link == path.parent else f" under {str(link)!r},"
    return (
        f"cannot write to {str(path.parent)!r},{where} {looping_link(link)}: mend the link, or"
        " give another path"
    )


def looping_link(link: Path) -> str:
    """What ``link``, found by :func:`looping`, is: a symbolic link that leads back to itself
    (a loop), or the first of a chain longer than the system follows (40 links on Linux),
    which its ELOOP says too: said a loop, it was not one."""
    if _loops(Path(os.path.realpath(link))):  # resolved as far as it goes: it goes round
        return "a symbolic link that leads back to itself (a loop)"
    return "a symbolic link through too many levels of symbolic links (more than are followed)"


def looping(path: Path) -> Path | None:
    """The first of ``path`` and the directories above it whose links go round in a loop
    (a link to itself, or two to each other), or None."""
    return next((p for p in (*reversed(path.parents), path) if _loops(p)), None)


def _loops(path: Path) -> bool:
    """Whether following the links of ``path`` goes round in a loop."""
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def _here(path: str) -> str:
    """``path`` as a name here: led by ``./`` when it starts with ``~``, no home's."""
    return os.path.join(".", path) if path.startswith("~") else path


def not_expanded(flag: str) -> str:
    """Why a path given to ``flag`` (a command line's, ``--out``; else a function's argument,
    which no shell read) with a leading ``~`` names no home here."""
    if not flag.startswith("--"):
        return (
            "a leading ~ is not expanded here (Python takes a path as written:"
            " os.path.expanduser() expands it)"
        )
    return (
        "a leading ~ is not expanded here (a shell expands it only where a word starts: "
        f"{flag} ~/x, not {flag}=~/x)"
    )


#: Why a path's leading ``~`` names no home here.
NOT_EXPANDED: Final = not_expanded("--out")


def unexpanded_home(path: str | os.PathLike[str]) -> str | None:
    """``path`` with its leading ``~`` (or ``~user``) expanded, when nothing of that name is
    where it would be made (no shell expanded it); None for any other path. Given as text
    (the command line's ``--out``), a path led by ``./`` is none: ``./~/parts`` names a
    directory called ``~`` here, as written (``Path`` drops the ``./``, and it was refused)."""
    text = os.fspath(path)
    parts = Path(text).parts
    first = parts[0] if parts else ""
    if not text.startswith("~") or os.path.lexists(first):
        return None
    home = os.path.expanduser(text)
    return None if home == text else home


def denied(path: Path, *, quoted: bool = True) -> str:
    """Why ``path`` cannot be reached, where a look at it was denied: the directory above it
    this user may not enter (the nearest it can see), named (``quoted``: as ``repr``)."""
    where = nearest_existing(path)
    shown = "a directory above it" if where is None else repr(str(where)) if quoted else where
    return f"permission denied: this user cannot enter {shown}"


def nearest_existing(path: Path) -> Path | None:
    """The nearest of ``path``'s parents that exists (a directory, or a file where one should
    be), or None: what a refusal to make or write below it names."""
    return next((p for p in path.parents if os.path.lexists(p)), None)


async def open_output(
    dest: Path | IO[bytes],
    checkpoint: Path | None,
    scope: ExportScope | None,
    *,
    replace: bool = True,
) -> Output:
    """An :class:`Output` for ``dest``, opened on a thread when it is a file.

    A resume reads back all the file its checkpoint covers (1.6 s for a million customers,
    186 MB): on the event loop, every other coroutine of the service stood still meanwhile.
    Cancelled while the thread works, the output it opens is closed (its locks released, the
    file left resumable) before the cancellation is raised. ``replace``: see :class:`Output`.
    """
    if not isinstance(dest, Path):
        return Output(dest, checkpoint, scope)  # a stream: nothing to lock or read back
    return await on_thread(lambda: Output(dest, checkpoint, scope, replace=replace), Output.close)


class Output:
    """The open output of one export: ``write``, ``commit`` after a page, ``finish`` or ``close``.

    ``resumed`` is the checkpoint read and ``found`` what the file was checked to hold (both
    None for a new export); ``samples``, of a resume that recorded no app id, the first
    customers the file holds, whose owner the export checks before it goes on (``_owner``).
    ``replace`` false: a file at ``dest`` that no checkpoint resumes is refused as the output
    is opened, and the file written never takes the place of one another program put at
    ``dest`` meanwhile (``FileExistsError`` naming it: :func:`put_in_place`).
    """

    def __init__(
        self,
        dest: Path | IO[bytes],
        checkpoint: Path | None,
        scope: ExportScope | None,
        *,
        replace: bool = True,
    ) -> None:
        self._replace = replace
        self.resumed: Checkpoint | None = None
        self.found: Scan | None = None
        self.samples: list[Sample] = []
        self._format = "jsonl" if scope is None else scope.format
        # A field selected that a JSON line was sent without is one left empty (``_owner``).
        self._selected = selected_fields(None if scope is None else scope.filters.get("select"))
        self._locks: list[tuple[filelock.BaseFileLock, Path]] = []
        self._checkpoint = checkpoint
        self._committed: int | None = None  # bytes the checkpoint on disk covers
        self._work: Path | None = None  # the file written, removed if nothing can resume it
        if not isinstance(dest, Path):
            self.fh, self._dest = dest, None
            return
        assert scope is not None
        self._dest = dest
        try:
            # A merge locks its file too: a lock file that does not say which holds it (one
            # 0.1.0 wrote, during a rolling upgrade) names both, not "another export".
            self._locks.append(_lock(dest, by="another export or merge"))
            if checkpoint is not None:
                self._locks.append(_lock(checkpoint))
            if checkpoint is not None:
                self.resumed = read_checkpoint(checkpoint, scope)
                if self.resumed is not None:
                    _take_up_work(self.resumed, dest)
            for path in (dest, checkpoint):
                if path is not None:
                    _sweep(path)
            if not replace and self.resumed is None and os.path.lexists(dest):
                # Not to be replaced, and no checkpoint resumes it: refused now. It was found
                # only as the export put its own file there, at its end (with a checkpoint, its
                # first page), every page requested and the rows thrown away.
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest))
            if checkpoint is None:
                self.fh, self._work = _new_part(dest)
                return
            if self.resumed is not None:
                self.fh, self._work = _open_in_place(dest), dest
                self._check_against(self.resumed, scope)
            else:
                # A new export: beside the output until its first checkpoint, then in its
                # place. It was cut to nothing at once, so a run that failed before its first
                # page (a wrong secret, a signal) removed the file it was to replace.
                self.fh, self._work = _new_part(dest)
        except BaseException:
            if self._work is not None and not self.fh.closed:
                self.fh.close()
            self._unlock()
            raise

    def _check_against(self, resumed: Checkpoint, scope: ExportScope) -> None:
        """Check the file against ``resumed``, and cut it back to what verifies.

        A repair (the file shorter than recorded) is checkpointed at once: the old checkpoint
        pointed past the file's end, and a failure before the next page's checkpoint left other
        records there (customers deleted while down), which every rerun refused as foreign.
        """
        assert self._dest is not None
        found = self.found = _verified(self.fh, resumed, scope.format, self._dest)
        with naming(self._dest):
            self.fh.truncate(found.end)  # a torn record after the checkpoint, or a repair
            if scope.app_id is None:  # a token's: nothing recorded says whose the file is
                self.samples = first_records(
                    self.fh, scope.format, found.end, selected=self._selected
                )
        self.fh.seek(0, os.SEEK_END)
        if (found.end, found.count, found.last_id) != (
            resumed.bytes,
            resumed.exported,
            resumed.last_id,
        ):
            assert self._checkpoint is not None
            with naming(self._dest):
                os.fsync(self.fh.fileno())
            resumed = attrs.evolve(
                resumed,
                bytes=found.end,
                exported=found.count,
                last_id=found.last_id,
                header=found.header,
            )
            write_checkpoint(self._checkpoint, resumed)
            self.resumed = resumed
        self._committed = resumed.bytes

    def spread_samples(self) -> list[Sample]:
        """Customers spread over what the file was checked to hold (a read of it all), for
        the owner's check (``_owner``); blocking work, done before anything is written."""
        assert self._dest is not None
        assert self.found is not None
        found = self.found
        try:
            with naming(self._dest):
                return spread_records(
                    self.fh, self._format, found.end, found.count, selected=self._selected
                )
        finally:
            self.fh.seek(0, os.SEEK_END)

    @property
    def resumable(self) -> bool:
        """Whether this output keeps a checkpoint."""
        return self._checkpoint is not None

    def write(self, data: bytes) -> None:
        """Append ``data`` (blocking work: the export calls it on a thread, as ``commit``)."""
        if self._dest is None:
            if isinstance(self.fh, io.RawIOBase):
                _write_all(self.fh, data)
            else:
                self.fh.write(data)
            return
        with naming(self._dest):  # a full disk: the error says which file had no room
            self.fh.write(data)

    def tell(self) -> int:
        """Bytes written so far."""
        return self.fh.tell()

    def commit(self, checkpoint: Checkpoint) -> None:
        """Record ``checkpoint``, once the data it points past is on disk."""
        assert self._checkpoint is not None
        assert self._dest is not None
        with naming(self._dest):
            self.fh.flush()
            os.fsync(self.fh.fileno())
        work = self._work
        if work is not None and work != self._dest:
            # The first checkpoint: the file takes the output's place once the checkpoint is
            # in place. It took it first, and a checkpoint the disk had no room for left
            # nothing to resume: the file was removed, and the output it had replaced
            # (yesterday's export) with it. The checkpoint names the work file, so that a run
            # killed between the two renames finds the data there: without a checkpoint, the
            # file in the output's place was refused by every rerun as an existing output.
            write_checkpoint(self._checkpoint, attrs.evolve(checkpoint, work=work.name))
            self._committed = checkpoint.bytes
            try:
                self._work = self._in_place(work)
            except FileExistsError:
                # Another program's file there: kept, and nothing left to resume over it.
                self._committed = None
                self._checkpoint.unlink(missing_ok=True)
                raise
        else:
            write_checkpoint(self._checkpoint, checkpoint)
            self._committed = checkpoint.bytes

    def _in_place(self, work: Path) -> Path:
        """The file written (open, synced) takes the output's name, and its mode."""
        assert self._dest is not None
        with naming(self._dest, work):
            give_open_mode(self.fh.fileno())  # as open() would have made it
            put_in_place(work, self._dest, replace=self._replace)
        return self._dest

    def finish(self, complete: bool = True) -> None:
        """The export is done: the file is in place, and once ``complete`` the checkpoint goes.

        One that ended in MISMATCH keeps a checkpoint that covers its file: removed, the
        rerun its report asks for found a file and no checkpoint, as after a complete export,
        and the CLI refused it as "a finished export". Kept, the rerun takes the file up (the
        customers the final check appended after the checkpoint are cut, and found again)
        and checks it against the service again.
        """
        if self._work is None or self._dest is None:
            self.fh.flush()
            return  # a stream: the caller closes it
        with naming(self._dest):
            self.fh.flush()
            os.fsync(self.fh.fileno())
        if self._work != self._dest:
            self._in_place(self._work)
        self.fh.close()
        self._work = None
        if self._checkpoint is not None and (complete or self._committed is None):
            self._checkpoint.unlink(missing_ok=True)  # done: a rerun starts a new export

    def close(self) -> None:
        """Release the output; after a failure leave a resumable file, or none."""
        try:
            if self._work is not None:
                self._abandon(self._work)
        finally:
            self._unlock()

    def _abandon(self, work: Path) -> None:
        # Never through the buffer: flushing it first (close, truncate) failed again on the
        # full disk that failed the run, and the file was left as it was, still open.
        if self._committed is None:
            try:
                _close_unflushed(self.fh)
            finally:
                # No checkpoint covers it: nothing could resume it; left, the next export to
                # the same file removes it (_sweep).
                remove_or_warn(work, "work file")
        elif not self.fh.closed:
            try:
                if self.fh.tell() > self._committed:
                    # What the checkpoint covers, no more: the buffer holds only what is after.
                    os.ftruncate(self.fh.fileno(), self._committed)
            finally:
                _close_unflushed(self.fh)

    def _unlock(self) -> None:
        for lock, path in reversed(self._locks):
            _release(lock, path)
        self._locks.clear()


def _verified(fh: IO[bytes], resumed: Checkpoint, fmt: str, path: Path) -> Scan:
    """What the file holds, checked against the checkpoint.

    The file may end in a torn record after what the checkpoint covers (a kill mid-write): it
    is cut off. A file shorter than the checkpoint says (truncated, or not flushed before a
    crash) is repaired back to its last whole record, and the walk resumes after that one.
    Anything else (other records where the checkpoint's should be) is refused.
    """
    size = os.fstat(fh.fileno()).st_size
    found = scan(fh, fmt, min(size, resumed.bytes))
    # A CSV's header edited in place (``name`` as ``Name``, as long): its records read back
    # as the checkpoint says, and the resume wrote its rows under that header, the cells of
    # the columns it names taken from fields the rows do not have (left blank).
    other_header = (
        found.header is not None and resumed.header is not None and found.header != resumed.header
    )
    exact = (found.end, found.count, found.last_id) == (
        resumed.bytes,
        resumed.exported,
        resumed.last_id,
    )
    if exact and not other_header:
        return found
    # A file cut short holds the first of the checkpoint's records, then at most one torn
    # where it was cut. Every record the checkpoint counts, read back in fewer bytes: no
    # truncation does that (its records end where they ended); a CSV saved by Excel
    # (mobiles as 1.39E+10) was taken for one and resumed, its changed records kept. Nor
    # does one leave a whole record after them that does not follow (rows sorted another
    # way, another file's), or records past the checkpoint's last id (another export's): a
    # file rewritten shorter was cut there, the user's rows after it lost.
    rewritten = 0 < found.count >= resumed.exported
    past = (
        found.last_id is not None
        and resumed.last_id is not None
        and not found.last_id <= resumed.last_id
    )
    foreign = (
        size >= resumed.bytes
        or rewritten
        or found.not_utf8
        or found.stopped
        or past
        or other_header
    )
    if foreign:
        raise InvalidRequestError(
            f"output {str(path)!r} does not match its checkpoint (it holds {found.count} "
            f"records that read back, the checkpoint {resumed.exported}"
            + (", under another header" if other_header else "")
            + (
                f", in {size} bytes, not {resumed.bytes}"
                if rewritten and size < resumed.bytes
                else ""
            )
            + (f", up to id {found.last_id}, past its last {resumed.last_id}" if past else "")
            + (", then a line that is not UTF-8" if found.not_utf8 else "")
            + (
                ", then one that does not follow them"
                if found.stopped and not found.not_utf8
                else ""
            )
            + "): it was changed since (saved by a spreadsheet or an editor?); "
            "delete both to start over"
        )
    logger.warning(
        "export: %s is shorter than its checkpoint says (%d bytes, not %d): "
        "resuming after its last whole record (%d of %d)",
        path,
        size,
        resumed.bytes,
        found.count,
        resumed.exported,
    )
    return found


def _take_up_work(resumed: Checkpoint, dest: Path) -> None:
    """The work file a first checkpoint names, put in the output's place if it is still
    beside it (a run killed between the checkpoint's rename and its own)."""
    if resumed.work is None or not _work_name(dest).fullmatch(resumed.work):
        return
    work = dest.with_name(resumed.work)
    with contextlib.suppress(FileNotFoundError):  # in place already: the usual case
        if stat.S_ISREG(os.lstat(work).st_mode):
            os.replace(work, dest)


def _work_name(path: Path, suffixes: str = "part|tmp") -> re.Pattern[str]:
    """The names ``mkstemp`` gives the work files of ``path``: ``.NAME.xxxxxxxx.part|tmp``."""
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.(?:{suffixes})")


def _sweep(path: Path, suffixes: str = "part|tmp") -> None:
    """Remove the work files a killed export left beside ``path``, its lock held: the hidden
    ``.NAME.xxxxxxxx.part`` of an export without a checkpoint and the ``.tmp`` of a checkpoint
    (or a merge) being written (``mkstemp``'s names). No live export or merge has one while the
    lock is ours; each ``kill -9`` left one more. A file a live run holds (:func:`.hold`: a
    lookup's result of the same name, which takes no export lock) is left: it was removed, and
    the lookup failed at its end. ``suffixes``: the kinds to remove."""
    mine = _work_name(path, suffixes)
    with contextlib.suppress(OSError):  # a directory that cannot be listed: nothing to sweep
        for entry in os.scandir(path.parent):
            if (
                mine.fullmatch(entry.name)
                and entry.is_file(follow_symlinks=False)
                and not held(entry.path)
            ):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _write_all(raw: io.RawIOBase, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered stream, waiting for room as a blocking write does.

    ``RawIOBase.write`` may write part of what it is given (a socket, a pipe a signal
    interrupted) and say how much, or write nothing and return None when the stream is
    non-blocking and full: the rest of the page was dropped, and the export said complete.
    A write that says nothing of a blocking stream (a subclass's that returns nothing) took it
    all, as before. Other streams (``sys.stdout.buffer``, a ``GzipFile``, a ``BytesIO``) take
    the whole of each write, or raise.
    """
    # The page as bytes, as before (a memoryview has no decode, no split); its rest, after a
    # short write, as a view of it: no copy of what remains at each write.
    rest: bytes | memoryview = data
    while rest:
        written = raw.write(rest)
        if type(written) is int and 0 < written < len(rest):
            rest = memoryview(rest)[written:]
            continue
        if written is not None and written != 0:
            return  # all of it
        fd = _non_blocking_file(raw)
        if fd is None:
            if written is None:
                return  # a write that says nothing: taken whole
            raise OSError(errno.EIO, "the stream wrote nothing of what it was given")
        wait_for_room(fd)  # full: until its reader makes room


def wait_for_room(fd: int) -> None:
    """Until ``fd`` can be written to (or has failed: the write then says how): a full
    non-blocking pipe waited for as a blocking write waits (a signal ends the wait too)."""
    if hasattr(select, "poll"):  # any file number (select() takes none past 1023)
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.poll()
    else:
        select.select([], [fd], [])


def _non_blocking_file(raw: io.RawIOBase) -> int | None:
    """The file ``raw`` writes to when it is non-blocking, else None."""
    get_blocking = getattr(os, "get_blocking", None)  # Windows has it from Python 3.12
    try:
        fd = raw.fileno()
        return None if get_blocking is None or get_blocking(fd) else fd
    except (OSError, ValueError):  # no file (io.UnsupportedOperation is both), or closed
        return None


def _close_unflushed(fh: IO[bytes]) -> None:
    """Close ``fh``, dropping what its buffer holds unwritten (an abandoned run's rows)."""
    raw = getattr(fh, "raw", None)
    if isinstance(raw, io.RawIOBase):
        raw.close()  # the buffer then counts as closed, and is never flushed
    else:
        fh.close()


def _new_part(dest: Path) -> tuple[IO[bytes], Path]:
    fd, part = temporary_beside(dest, ".part")
    return os.fdopen(fd, "w+b"), Path(part)


def _open_in_place(dest: Path) -> IO[bytes]:
    """``dest`` for reading and writing, made if missing; never through a link, never a FIFO."""
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | _SAFE_OPEN, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidRequestError(f"output {str(dest)!r} is not a regular file")
    return os.fdopen(fd, "r+b")


class InUseError(InvalidRequestError):
    """A file's lock is held by another live export or merge (:func:`_lock`): a queue's worker
    whose shard another worker still exports tries the job again later, not fails it."""


#: What holds a lock, as its file says it: ``merge: pid 4242 on host``.
_ROLES: Final = {"export": "an export", "merge": "a merge"}
_HOLDER: Final = re.compile(r"(export|merge): (pid .+)")


def _lock(
    path: Path, by: str = "another export", role: str = "export"
) -> tuple[filelock.BaseFileLock, Path]:
    """An exclusive lock on ``path`` (by a hidden file next to it), taken at once or refused.

    The lock file records the holder: its ``role`` (``"export"`` or ``"merge"``), pid and
    host. Refused, the error says which holds it (``in use by a merge (pid 4242 on host)``):
    an export blocked by a merge said "another export", and the user looked for one that was
    not running. ``by``: whom to name when the lock file does not say (an earlier release's).
    """
    lock_path = path.with_name(f".{path.name}.lock")
    holder = f"{role}: pid {os.getpid()} on {socket.gethostname()}"

    def record_holder(fd: int) -> None:
        # A full disk (ENOSPC; EFBIG over a file size limit) makes the lock file, and then
        # fails this write: the error named no file ("error: No space left on device"), and
        # the empty lock file was left beside the output. Named as the output (the lock file
        # is hidden), and removed while still held, as _release removes it.
        try:
            with naming(path):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, holder.encode())
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            raise

    lock = filelock.FileLock(lock_path, timeout=0, thread_local=False, on_acquired=record_holder)
    try:
        lock.acquire()
    except filelock.Timeout:
        held = _holder(lock_path)
        known = _HOLDER.fullmatch(held)
        if known is not None:
            other = known[1]
            by = f"another {other}" if other == role else _ROLES[other]
            held = known[2]
        raise InUseError(
            f"{str(path)!r} is in use by {by} ({held}): wait for it to finish, or stop it"
        ) from None
    return lock, lock_path


def _release(lock: filelock.BaseFileLock, lock_path: Path) -> None:
    """Release a lock :func:`_lock` took, its file removed first.

    A lock file that cannot be removed (its directory made read-only mid-run) is left, with a
    warning: the next run takes the lock on it all the same. Raised, that error took the place
    of the one the run was failing with ("Permission denied: .NAME.lock", not the service's
    error), and the run's other locks stayed held.
    """
    try:
        remove_or_warn(lock_path, "lock file")  # while held: one waiting on it re-checks it
    finally:
        lock.release()


def _holder(lock_path: Path) -> str:
    try:
        fd = os.open(lock_path, os.O_RDONLY | _SAFE_OPEN)
    except OSError:
        return "holder unknown"
    try:
        text = os.read(fd, 200).decode("utf-8", "replace")
    finally:
        os.close(fd)
    return text if text.isprintable() and text else "holder unknown"
