"""Crash points for the SIGKILL tests (tests/_crash.py): loaded by every Python process whose
PYTHONPATH starts with this directory, the CLI and the workers it spawns alike.

``DMHUB_TEST_CRASH_AT=POINT:N`` kills the process (SIGKILL, nothing cleaned up) at the Nth time
it reaches POINT (``DMHUB_TEST_CRASH_STALL=1``: blocks there for good instead);
``DMHUB_TEST_CRASH_ROLE`` (``main``, ``worker``, ``any``: default ``any``) says which
processes, and ``DMHUB_TEST_CRASH_LOG`` names a file each kill appends its point to first, so
the test knows the kill was at the point and not the process ending on its own.
Nothing of the SDK changes when the variable is unset.

Points:

- ``page``: just after the Nth checkpoint (a page written, synced and recorded).
- ``write``: in the Nth write of rows to the output: half its bytes reach the file, then the kill.
- ``sync``: after the output's fsync of the Nth commit, before its checkpoint is written.
- ``ckpt_write``: in the Nth checkpoint's write: half of it in the temporary file.
- ``ckpt_rename``: the Nth checkpoint written and synced, just before its rename.
- ``in_place``, ``in_placed``: just before, and just after, a new export's work file takes the
  output's name (at its first checkpoint).
- ``verify``: at the Nth page of the final check's id walk (``select=id`` pages).
- ``recover``: just after the Nth batch of customers the final check appended.
- ``finish``: in ``Output.finish``, after the data is synced, before the checkpoint goes.
- ``finished``: after ``Output.finish`` (the checkpoint gone, the report not yet printed).
- ``manifest``: just before the Nth manifest.json rename (the coordinator).
- ``merge``: in the Nth write of ``merge`` into its temporary file.
"""

from __future__ import annotations

import os
import signal
import sys

_SPEC = os.environ.get("DMHUB_TEST_CRASH_AT", "")


def _install() -> None:
    point, _, nth = _SPEC.partition(":")
    target = int(nth or "1")
    role = os.environ.get("DMHUB_TEST_CRASH_ROLE", "any")
    log = os.environ.get("DMHUB_TEST_CRASH_LOG")
    seen = {"n": 0}

    def reached() -> bool:
        # Asked here, not at start-up: a spawned worker knows its parent only once running.
        import multiprocessing

        is_worker = multiprocessing.parent_process() is not None
        if (role == "main" and is_worker) or (role == "worker" and not is_worker):
            return False
        seen["n"] += 1
        return seen["n"] == target

    stall = os.environ.get("DMHUB_TEST_CRASH_STALL") == "1"

    def die() -> None:
        if log:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"{point}:{target} pid {os.getpid()}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        if stall:  # a file system gone away (NFS): the call never returns, nothing is killed
            import threading

            threading.Event().wait()
        os.kill(os.getpid(), signal.SIGKILL)

    from dmhub_async import _atomic
    from dmhub_async.export import _checkpoint, _export, _output, _reconcile
    from dmhub_async.shards import _manifest

    Output = _output.Output
    real_commit, real_write, real_finish = Output.commit, Output.write, Output.finish

    if point == "page":

        def commit(self: _output.Output, checkpoint: _checkpoint.Checkpoint) -> None:
            real_commit(self, checkpoint)
            if reached():
                die()

        Output.commit = commit  # type: ignore[method-assign]
    elif point == "write":

        def write(self: _output.Output, data: bytes) -> None:
            if reached():
                self.fh.write(data[: max(1, len(data) // 2)])
                self.fh.flush()
                die()
            real_write(self, data)

        Output.write = write  # type: ignore[method-assign]
    elif point == "sync":
        real_write_checkpoint = _output.write_checkpoint

        def write_checkpoint(*args: object, **kwargs: object) -> None:
            if reached():
                die()
            real_write_checkpoint(*args, **kwargs)  # type: ignore[arg-type]

        _output.write_checkpoint = write_checkpoint  # type: ignore[assignment]
    elif point in ("ckpt_write", "ckpt_rename"):
        real_replace_file = _checkpoint.replace_file

        def replace_file(path, data, *, sync=True, before_rename=None):  # type: ignore[no-untyped-def]
            if not reached():
                return real_replace_file(path, data, sync=sync, before_rename=before_rename)
            if point == "ckpt_write":
                with _atomic.replacing(path) as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    die()

            def then_die() -> None:
                if before_rename is not None:
                    before_rename()
                die()

            return real_replace_file(path, data, sync=sync, before_rename=then_die)

        _checkpoint.replace_file = replace_file  # type: ignore[assignment]
    elif point in ("in_place", "in_placed"):
        real_in_place = Output._in_place

        def in_place(self: _output.Output, work):  # type: ignore[no-untyped-def]
            if point == "in_place" and reached():
                die()
            done = real_in_place(self, work)
            if point == "in_placed" and reached():
                die()
            return done

        Output._in_place = in_place  # type: ignore[method-assign]
    elif point == "verify":
        real_final_check = _export.final_check
        customers_cls = None

        async def final_check(client, *args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal customers_cls
            customers = client.customers
            real_list_rows = customers.list_rows

            def list_rows(*a, **k):  # type: ignore[no-untyped-def]
                walk = real_list_rows(*a, **k)
                if k.get("select") != "id" or "id_list" in k:
                    return walk
                real_pages = walk.pages

                async def pages():  # type: ignore[no-untyped-def]
                    async for page in real_pages():
                        if reached():
                            die()
                        yield page

                walk.pages = pages
                return walk

            customers.list_rows = list_rows
            try:
                return await real_final_check(client, *args, **kwargs)
            finally:
                del customers.list_rows

        _export.final_check = final_check  # type: ignore[assignment]
        del customers_cls
    elif point == "recover":
        real_recover = _export._Run._recover

        async def recover(self, rows):  # type: ignore[no-untyped-def]
            await real_recover(self, rows)
            if reached():
                die()

        _export._Run._recover = recover  # type: ignore[method-assign]
    elif point in ("finish", "finished"):

        def finish(self: _output.Output, complete: bool = True) -> None:
            if point == "finish" and reached():
                self.fh.flush()
                os.fsync(self.fh.fileno())
                die()
            real_finish(self, complete)
            if point == "finished" and reached():
                die()

        Output.finish = finish  # type: ignore[method-assign]
    elif point == "manifest":
        real_manifest_replace = _manifest.replace_file

        def manifest_replace(path, data, *, sync=True, before_rename=None):  # type: ignore[no-untyped-def]
            def then_die() -> None:
                if reached():
                    die()

            return real_manifest_replace(path, data, sync=sync, before_rename=then_die)

        _manifest.replace_file = manifest_replace  # type: ignore[assignment]
    elif point == "merge":
        real_replacing = _manifest.replacing

        class _Killing:
            def __init__(self, fh):  # type: ignore[no-untyped-def]
                self._fh = fh

            def write(self, data: bytes) -> int:
                if reached():
                    self._fh.write(data[: max(1, len(data) // 2)])
                    self._fh.flush()
                    die()
                return self._fh.write(data)

            def __getattr__(self, name):  # type: ignore[no-untyped-def]
                return getattr(self._fh, name)

        import contextlib

        @contextlib.contextmanager
        def replacing(*args, **kwargs):  # type: ignore[no-untyped-def]
            with real_replacing(*args, **kwargs) as fh:
                yield _Killing(fh)

        _manifest.replacing = replacing  # type: ignore[assignment]
    else:
        raise SystemExit(f"DMHUB_TEST_CRASH_AT: no such point {point!r}")
    del _reconcile


if _SPEC:
    _install()
