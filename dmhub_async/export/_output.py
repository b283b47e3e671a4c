"""Where an export's rows go, safely: a locked destination, a work file, and its checkpoint.

Rows go to a work file made by ``mkstemp`` next to the destination (an unpredictable name,
created exclusively, no link followed), which replaces the destination only when the export
is complete; or straight to a binary stream (not resumable). With a checkpoint, the work file
stays after a failure, cut back to what the checkpoint covers, and a rerun checks it against
the checkpoint before going on (docs/reliability.md, "Resuming an export").
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import IO

import filelock

from .._exceptions import InvalidRequestError
from ._checkpoint import Checkpoint, ExportScope, read_checkpoint, write_checkpoint
from ._writers import Scan, scan

__all__ = ["Output", "check_path"]

logger = logging.getLogger("dmhub_async")


def check_path(path: Path, what: str) -> None:
    """Refuse a path that is not a regular file (or nothing yet) in a writable directory."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise InvalidRequestError(f"{str(path)!r} is a directory, not a file")
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise InvalidRequestError(f"{what} {str(path)!r} is {kind}: give a regular file")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise InvalidRequestError(f"cannot write to {str(path.parent)!r}")


class Output:
    """The open output of one export: ``write``, ``commit`` after a page, ``finish`` or ``close``.

    ``resumed`` is the checkpoint read and ``found`` what the work file was checked to hold
    (both None for a new export).
    """

    def __init__(
        self, dest: Path | IO[bytes], checkpoint: Path | None, scope: ExportScope | None
    ) -> None:
        self.resumed: Checkpoint | None = None
        self.found: Scan | None = None
        self._locks: list[tuple[filelock.BaseFileLock, Path]] = []
        self._checkpoint = checkpoint
        self._committed: int | None = None  # bytes the checkpoint on disk covers
        if not isinstance(dest, Path):
            self.fh, self._dest, self._part = dest, None, None
            return
        assert scope is not None
        self._dest = dest
        try:
            for path in (dest, checkpoint):
                if path is not None:
                    self._locks.append(_lock(path))
            if checkpoint is not None:
                self.resumed = read_checkpoint(checkpoint, scope)
            if self.resumed is not None:
                self.fh, self._part = self._reopen(self.resumed, scope)
            else:
                self.fh, self._part = _new_part(dest)
        except BaseException:
            self._unlock()
            raise

    @property
    def resumable(self) -> bool:
        """Whether this output keeps a checkpoint."""
        return self._checkpoint is not None

    @property
    def part_name(self) -> str:
        """The work file's name in the destination's directory (a stream has none)."""
        return self._part.name if self._part is not None else ""

    def _reopen(self, resumed: Checkpoint, scope: ExportScope) -> tuple[IO[bytes], Path]:
        """The work file of ``resumed``, checked against it and cut back to what verifies."""
        assert self._dest is not None
        name = resumed.part
        if "/" in name or os.sep in name or not name.startswith(f".{self._dest.name}."):
            raise InvalidRequestError(f"checkpoint names a work file {name!r} outside the export")
        part = self._dest.with_name(name)
        try:
            fd = os.open(part, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        fh = os.fdopen(fd, "r+b")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InvalidRequestError(f"work file {str(part)!r} is not a regular file")
            self.found = _verified(fh, resumed, scope.format, part)
            fh.truncate(self.found.end)  # a torn record after the checkpoint, or a repair
            fh.seek(0, os.SEEK_END)
        except BaseException:
            fh.close()
            raise
        self._committed = resumed.bytes
        return fh, part

    def write(self, data: bytes) -> None:
        """Append ``data`` (to the OS cache: quick enough to do on the loop)."""
        self.fh.write(data)

    def tell(self) -> int:
        """Bytes written so far."""
        return self.fh.tell()

    def commit(self, checkpoint: Checkpoint) -> None:
        """Record ``checkpoint``, once the data it points past is on disk."""
        assert self._checkpoint is not None
        self.fh.flush()
        os.fsync(self.fh.fileno())
        write_checkpoint(self._checkpoint, checkpoint)
        self._committed = checkpoint.bytes

    def finish(self) -> None:
        """The export is complete: the work file becomes the destination, the checkpoint goes."""
        self.fh.flush()
        if self._part is None or self._dest is None:
            return
        os.fsync(self.fh.fileno())
        os.fchmod(self.fh.fileno(), 0o666 & ~_umask())  # as open() would have made it
        self.fh.close()
        os.replace(self._part, self._dest)
        self._part = None
        if self._checkpoint is not None:
            self._checkpoint.unlink(missing_ok=True)  # done: a rerun starts a new export

    def close(self) -> None:
        """Release the output; after a failure leave a resumable work file, or none."""
        try:
            if self._part is not None:
                self._abandon(self._part)
        finally:
            self._unlock()

    def _abandon(self, part: Path) -> None:
        if self._committed is None:
            self.fh.close()
            part.unlink(missing_ok=True)  # no checkpoint names it: nothing could resume it
        elif not self.fh.closed:
            if self.fh.tell() > self._committed:
                self.fh.truncate(self._committed)  # what the checkpoint covers, no more
            self.fh.close()

    def _unlock(self) -> None:
        for lock, path in reversed(self._locks):
            path.unlink(missing_ok=True)  # while held: a run waiting on this inode re-checks it
            lock.release()
        self._locks.clear()


def _verified(fh: IO[bytes], resumed: Checkpoint, fmt: str, part: Path) -> Scan:
    """What the work file holds, checked against the checkpoint.

    The file may end in a torn record after what the checkpoint covers (a kill mid-write): it
    is cut off. A file shorter than the checkpoint says (truncated, or not flushed before a
    crash) is repaired back to its last whole record, and the walk resumes after that one.
    Anything else (other records where the checkpoint's should be) is refused.
    """
    size = os.fstat(fh.fileno()).st_size
    found = scan(fh, fmt, min(size, resumed.bytes))
    exact = (found.end, found.count, found.last_id) == (
        resumed.bytes,
        resumed.exported,
        resumed.last_id,
    )
    if exact:
        return found
    foreign = size >= resumed.bytes or found.count > resumed.exported
    if found.header is not None and resumed.header is not None:
        foreign = foreign or found.header != resumed.header
    if foreign:
        raise InvalidRequestError(
            f"work file {str(part)!r} does not match its checkpoint (it holds {found.count} "
            f"records that read back, the checkpoint {resumed.exported}): it was changed since; "
            "delete both to start over"
        )
    logger.warning(
        "export: work file %s is shorter than its checkpoint says (%d bytes, not %d): "
        "resuming after its last whole record (%d of %d)",
        part,
        size,
        resumed.bytes,
        found.count,
        resumed.exported,
    )
    return found


def _new_part(dest: Path) -> tuple[IO[bytes], Path]:
    fd, part = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    return os.fdopen(fd, "w+b"), Path(part)


def _lock(path: Path) -> tuple[filelock.BaseFileLock, Path]:
    """An exclusive lock on ``path`` (by a hidden file next to it), taken at once or refused."""
    lock_path = path.with_name(f".{path.name}.lock")
    holder = f"pid {os.getpid()} on {socket.gethostname()}"

    def record_holder(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)

    lock = filelock.FileLock(lock_path, timeout=0, thread_local=False, on_acquired=record_holder)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise InvalidRequestError(
            f"{str(path)!r} is in use by another export ({_holder(lock_path)}): "
            "wait for it to finish, or stop it"
        ) from None
    return lock, lock_path


def _holder(lock_path: Path) -> str:
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return "holder unknown"
    try:
        text = os.read(fd, 200).decode("utf-8", "replace")
    finally:
        os.close(fd)
    return text if text.isprintable() and text else "holder unknown"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
