"""Constants and helpers shared by the tests (imported, not fixtures)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest

BASE = "https://api.dmhub.test"
CUSTOMER = {"id": 1, "name": "x"}


def url(path: str, base: str = BASE) -> re.Pattern[str]:
    """A pattern for ``base + path`` with any query string: aioresponses matches on it."""
    return re.compile("^" + re.escape(base + path) + r"(\?.*)?$")


def hypothesis_profile(environ: Mapping[str, str]) -> str:
    """The hypothesis profile for this run: ``ci`` (derandomized, no database) when CI is set.

    Property tests must not fail at random in CI: there every run draws the same examples, and
    anything found at random locally becomes an ``@example``.
    """
    return "ci" if environ.get("CI", "").lower() not in ("", "0", "false") else "default"


def lock_files_cannot_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """The output's directory made read-only mid-run: its lock files can no longer be removed
    (what unlink says in a directory without write permission, where chmod binds: not root)."""
    unlink = Path.unlink

    def refuse_locks(path: Path, missing_ok: bool = False) -> None:
        if path.name.endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse_locks)


def files_made_as_the_umask_changes(monkeypatch: pytest.MonkeyPatch, directory: Path) -> list[int]:
    """The modes of files that another thread of the process creates, with a plain ``open()``,
    at each moment the umask is changed (what a thread writing a file of its own then gets).

    The umask is the process's, every thread's: set to read it and set back, it was wider for
    that moment, and a file an application's other thread made then was readable by others.
    """
    import os

    made: list[int] = []
    umask = os.umask

    def changed(mask: int) -> int:
        before = umask(mask)
        path = directory / f"meanwhile-{len(made)}"
        with open(path, "w"):  # a plain open(), as another thread would
            pass
        made.append(path.stat().st_mode & 0o777)
        path.unlink()
        return before

    monkeypatch.setattr(os, "umask", changed)
    return made
