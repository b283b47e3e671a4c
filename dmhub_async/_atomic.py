"""Replacing a file atomically: checkpoints, manifests, token files, merged exports."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["replace_file", "replacing"]


@contextmanager
def replacing(
    path: Path,
    *,
    sync: bool = True,
    before_rename: Callable[[], object] | None = None,
    output: bool = False,
) -> Iterator[BinaryIO]:
    """A file to write that replaces ``path`` when the block ends: a crash leaves old or new.

    It is a temporary file made by ``mkstemp`` beside ``path`` (an unpredictable name, created
    exclusively with mode 0600, never a link followed), ``fsync``-ed unless ``sync`` is false,
    then renamed over ``path`` (a rename replaces a link itself, never its target). If the block
    raises, the temporary file is removed and ``path`` is left as it was. ``before_rename`` is
    called once the data is written (and synced), just before the rename: if it raises, the
    same. ``output``: the file is the user's data (a merged export), so it gets the mode a plain
    ``open()`` gives, 0666 less the umask, not the 0600 kept for checkpoints and tokens.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if output:
                umask = os.umask(0o022)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)
            yield fh
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
