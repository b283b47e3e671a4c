"""Replacing a small file atomically: checkpoints, manifests, token files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["replace_file"]


def replace_file(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new, never half.

    The data goes to a temporary file made by ``mkstemp`` beside ``path`` (an unpredictable
    name, created exclusively with mode 0600, never a link followed), is ``fsync``-ed unless
    ``sync`` is false, then renamed over ``path`` (a rename replaces a link itself, never its
    target). On any failure the temporary file is removed.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
