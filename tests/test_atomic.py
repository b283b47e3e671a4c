"""``_atomic.replacing``: a failure is reported as what failed, whatever its cleanup meets."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from _helpers import temporary_files_cannot_be_made

from dmhub_async._atomic import open_to_read, replace_file


def test_a_failed_rename_is_the_error_raised_though_its_temp_file_cannot_be_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The rename failed (the file system gone read-only), and so did the removal of the
    # temporary file after it: the removal's error was raised in the rename's place, naming a
    # hidden `.NAME.xxxxxxxx.tmp` the user never asked for, the real failure only its context.
    target = tmp_path / "customers.ckpt"
    target.write_bytes(b"old")

    def rename_fails(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error", str(src), None, str(dst))

    def unlink_fails(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(os, "replace", rename_fails)
    monkeypatch.setattr(Path, "unlink", unlink_fails)

    with pytest.raises(OSError, match="Input/output error") as raised:
        replace_file(target, b"new")

    assert raised.value.errno == errno.EIO
    assert target.read_bytes() == b"old"
    assert "could not remove the temporary file" in caplog.text
    assert "Read-only file system" in caplog.text
    assert caplog.records[-1].levelno == logging.WARNING


def test_a_full_disk_names_the_file_being_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A merge (or a manifest, a token file) on a full disk: "No space left on device", no file.
    target = tmp_path / "all.jsonl"

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)

    with pytest.raises(OSError, match="No space left on device") as raised:
        replace_file(target, b"{}\n")

    assert raised.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_file_that_cannot_be_made_names_the_file_being_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint, manifest or merged file in a full directory: mkstemp's error named the
    # hidden `.NAME.xxxxxxxx.tmp` it tried to make, not the file the user asked for.
    target = tmp_path / "june.jsonl"
    temporary_files_cannot_be_made(monkeypatch, tmp_path / ".june.jsonl.x.tmp")

    with pytest.raises(OSError, match="No space left on device") as raised:
        replace_file(target, b"new")

    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(target)
    assert str(target) in str(raised.value)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_a_directory_opened_to_read_is_refused_without_leaving_its_descriptor_open(
    tmp_path: Path,
) -> None:
    # A directory where a part, checkpoint or id list was: open() refused it once the
    # descriptor was open, and the descriptor stayed open, one more for each read of it in a
    # worker that runs for days.
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_descriptors()
    for _ in range(3):
        with pytest.raises(IsADirectoryError):
            open_to_read(tmp_path)

    assert open_descriptors() == before
