"""Replacing a file atomically: checkpoints, manifests, token files, merged exports; and
opening one to read without waiting on what was put in its place."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

if sys.platform != "win32":
    import fcntl

__all__ = [
    "current_umask",
    "give_open_mode",
    "held",
    "hold",
    "make_private_directory",
    "naming",
    "open_to_read",
    "put_in_place",
    "remove_or_warn",
    "replace_file",
    "replacing",
    "temporary_beside",
]

logger = logging.getLogger("dmhub_async")


def give_open_mode(fd: int) -> None:
    """Give the file ``fd`` the mode a plain ``open()`` gives (0666 less the umask): a user's
    data, made private by ``mkstemp``. Where ``os`` has no ``fchmod`` (Windows before Python
    3.13) there is nothing to give: a mode there is no more than a read-only flag, which the
    file made writable has not."""
    fchmod = getattr(os, "fchmod", None)
    if fchmod is not None:
        fchmod(fd, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process's umask, read without widening it.

    The umask is every thread's: read by setting it (to 0o022, or 0) and back, it was wider for
    that moment, and a private file another thread of the application made then (mode 0600
    under umask 077) was readable, or writable, by every user. Linux says it in
    ``/proc/self/status``; elsewhere it is set to 0o777 for the moment it is read, which a file
    made meanwhile can only gain privacy from.
    """
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o777)
    os.umask(umask)
    return umask


def make_private_directory(directory: Path) -> None:
    """``directory`` made, and each of its parents that is missing, with mode 0700; one that
    exists (or a file of that name, for the caller to refuse in its own words) is left as it is.

    ``Path.mkdir(mode=0o700, parents=True)`` gives the mode to the last one alone: the parents
    it made were 0755 (0777 less the umask), and anyone on the machine could list them (a
    ``~/.cache`` made by the first run, a directory of the user's naming for the token file).
    """
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        if directory.parent == directory:
            raise
        make_private_directory(directory.parent)
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            directory.mkdir(mode=0o700)


@contextmanager
def naming(path: Path, hidden: Path | None = None) -> Iterator[None]:
    """An OSError of the block that names no file (or only ``hidden``, the temporary file
    that is to take ``path``'s name) names ``path``, the file being written.

    A write, ``flush`` or ``fsync`` that fails (a full disk: ENOSPC, or EFBIG under a file
    size limit) raises an error without a file name, and the command line said only "error:
    No space left on device", not which file, on which disk, had no room. Only an error of the
    system (one with an ``errno``): the SDK's ``APITimeoutError`` is a ``TimeoutError`` too,
    and one raised in the block (a lookup writing its rows as they come) named the file read
    "[Errno None] None: 'found.csv'".

    ``hidden``: the rename of a temporary file (or its mode given, which names none) that
    failed named that hidden file (``.customers.ckpt.k2j4m9xq.tmp: Input/output error``),
    which nobody asked for and which was removed as the run failed.
    """
    try:
        yield
    except OSError as err:
        unnamed = err.filename is None or (hidden is not None and err.filename == str(hidden))
        if unnamed and err.errno is not None:
            err.filename, err.filename2 = str(path), None
        raise


@contextmanager
def replacing(
    path: Path,
    *,
    sync: bool = True,
    before_rename: Callable[[], object] | None = None,
    output: bool = False,
    replace: bool = True,
) -> Iterator[BinaryIO]:
    """A file to write that replaces ``path`` when the block ends: a crash leaves old or new.

    It is a temporary file made by ``mkstemp`` beside ``path`` (an unpredictable name, created
    exclusively with mode 0600, never a link followed), ``fsync``-ed unless ``sync`` is false,
    then renamed over ``path`` (a rename replaces a link itself, never its target). If the block
    raises, the temporary file is removed (or, if that fails too, left with a warning: the
    block's error is the one raised) and ``path`` is left as it was. ``before_rename`` is
    called once the data is written (and synced), just before the rename: if it raises, the
    same. An error writing it that names no file names ``path`` (:func:`naming`). ``output``:
    the file is the user's data (a merged export), so it gets the mode a plain ``open()``
    gives, 0666 less the umask, not the 0600 kept for checkpoints and tokens. ``replace``
    false: a file that is at ``path`` when the block ends is kept, and ``FileExistsError``
    naming it raised (:func:`put_in_place`).
    """
    fd, tmp = temporary_beside(path, ".tmp")
    try:
        with naming(path), os.fdopen(fd, "wb") as fh:
            if output:
                give_open_mode(fd)
                # A live run's, not a killed one's: a merge hashing a part for a minute had it
                # removed by a lookup to the same file, a lookup's by a merge's or export's sweep.
                hold(fd)
            yield fh
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        with naming(path, Path(tmp)):
            put_in_place(Path(tmp), path, replace=replace)
    except BaseException:
        remove_or_warn(Path(tmp), "temporary file")
        raise


def put_in_place(work: Path, path: Path, *, replace: bool = True) -> None:
    """The file ``work`` takes the name ``path``, replacing what is there unless ``replace``
    is false: then a file at ``path`` (one another program made while ``work`` was written)
    is kept, ``work`` is left where it is, and ``FileExistsError`` naming ``path`` is raised.

    A command told to write a new file (no ``--force``) checked that none was there as it
    began; renamed at its end, its file replaced one made meanwhile (another run to the same
    ``--out``, which ended first), and both runs ended well. A hard link takes the name only
    if it is free; where none is made, the name is checked just before the rename.

    A file system that makes no link says so in its own words: EPERM (FAT on Linux), ENOTSUP
    (SMB, FAT on macOS), ENOSYS (FUSE), EXDEV (a union file system such as mergerfs), EINVAL
    (FAT or exFAT on Windows). Only those first few were known, and an export to the others
    failed at its end with a bare "Invalid cross-device link", every customer fetched and
    thrown away. Any failure to link but a name taken is so taken: an error that is no file
    system's lack of links (a disk gone read-only) fails the rename too, in its own words.
    """
    if replace:
        os.replace(work, path)
        return
    try:
        os.link(work, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(work, path)
        return
    remove_or_warn(work, "temporary file")  # its data is in place: a file left is no error


def hold(fd: int) -> None:
    """Mark the file open on ``fd`` as a live run's temporary file: a shared lock on it, which
    :func:`held` cannot take while the run lives, and which the system drops as the run ends,
    however it ends (SIGKILL too). Nothing where there is no ``flock`` (Windows)."""
    if sys.platform != "win32":
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)


def held(path: str) -> bool:
    """Whether a live run holds the temporary file ``path`` (:func:`hold`); true when that
    cannot be told (it cannot be opened), false where there is no ``flock`` (Windows)."""
    if sys.platform == "win32":
        return False  # no lock to tell by
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # and with it the lock just taken
    return False


def temporary_beside(path: Path, suffix: str) -> tuple[int, str]:
    """``mkstemp`` beside ``path``: ``.NAME.xxxxxxxx`` + ``suffix``, its descriptor and name.

    One that cannot be made (the directory full, read-only or not writable) raises its error
    naming ``path``, the file the user asked for: it named the hidden temporary file
    (``.found.csv.ab12cd34.part: No space left on device``), which nobody asked for.
    """
    try:
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as err:
        err.filename = str(path)
        raise


def remove_or_warn(path: Path, what: str) -> None:
    """Remove ``path`` (the ``what`` of a run that failed: "temporary file", "work file",
    "lock file"), or say with a warning that it is left.

    Raised, an error removing it (its directory or file system gone read-only, which failed
    the run too) took the place of the one the run was failing with, and named a hidden file
    the user never asked for.
    """
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        logger.warning("could not remove the %s %s: %s", what, path, err.strerror or err)


def replace_file(
    path: Path,
    data: bytes,
    *,
    sync: bool = True,
    before_rename: Callable[[], object] | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`replacing`)."""
    with replacing(path, sync=sync, before_rename=before_rename) as fh:
        fh.write(data)


def open_to_read(path: str | os.PathLike[str]) -> tuple[BinaryIO, os.stat_result]:
    """``path`` opened to read, and what it is (``os.fstat``), without waiting on it: a named
    pipe put where a file was made ``open()`` wait for a writer for ever. Read it only once its
    status says it is a regular file (``stat.S_ISREG``): a device there (a link to
    ``/dev/zero``) reads until memory runs out. ``OSError`` as ``open()`` raises it (a
    directory: ``IsADirectoryError``, naming ``path``)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            # Refused here: os.fdopen refuses it too, but leaves the descriptor open (one more
            # for each read of it, in a worker that runs for days) and names it by its number.
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb"), info  # the file's from here: closed with it, if it fails
