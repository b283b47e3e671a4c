"""The late check: a sharded export's open-ended last window looked at again at its very end.

Customers created after the plan fall into the last window, whose shard checks them once, as
it ends. Created after that (while other shards still run, or while a killed export was down
with that shard complete), they were in no part of an export said to be complete. Once every
shard is complete, the coordinator's side runs the single-file export's final check
(``export/_reconcile.final_check``) on that window against the ids its part holds, fetches
those missing by id, and appends them to the part: a copy with the rows appended replaces it
(``os.replace``), then the manifest records its size, SHA-256 and customers. A crash between
the two leaves a part longer than the manifest says whose recorded bytes are unchanged: a
rerun takes it up (:func:`grown_by_late_check`) and checks it again from the file itself. It
takes up only the part the check said it was writing: just before the replace, the size and
SHA-256 of the new part go to a hidden file beside it (``.NAME.late``, removed once the
manifest records them); rows appended by hand (or by anything else) match none, and the
shard is exported again, as for any part changed since it was exported.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Final, cast

import attrs
import orjson

from .._atomic import remove_or_warn, replace_file, replacing
from .._client import DMHubClient, check_client
from .._exceptions import InvalidRequestError
from .._pagination import AsyncPaginator
from .._threads import file_work, on_thread
from .._validate import check_concurrency, check_path_type
from .._words import counted
from ..export._export import _columns
from ..export._ids import IdSet
from ..export._output import _lock, _release, _sweep
from ..export._reconcile import Retries, final_check
from ..export._writers import _csv_id, _jsonl_id, _Lines, long_csv_fields, new_writer
from . import _manifest
from ._manifest import MANIFEST_NAME, LateCheck, Manifest, ManifestWriter, ShardOutcome

__all__ = ["LATE_MISMATCH", "grown_by_late_check", "late_check", "late_checked"]

#: The last shard's ``error`` when its late check could not show every customer of its window
#: is in its part (customers changing during every walk): the export is not complete, and a
#: rerun checks it again (without exporting the window again).
LATE_MISMATCH: Final = (
    "late check: MISMATCH: customers of this window changed during every walk of the check, "
    "which could not show every one of them is in the part: rerun the export to check again"
)


#: The rows a late check appends are held in memory up to this many bytes, then in a file of
#: the export's directory: customers created while an export was down for a week may be many.
_SPOOL: Final = 8 << 20


#: How far the service's clock, which stamps a customer's creation, may be behind this
#: machine's: a window that ended this long before it was last seen whole (by this machine's
#: clock) holds no customer created since.
CLOCK_MARGIN: Final = timedelta(minutes=5)


def late_checked(manifest: Manifest) -> ShardOutcome | None:
    """The shard a late check looks at: the last window of a plan of windows, unless it ended
    (:data:`CLOCK_MARGIN` and more) before it was last seen whole (by the plan, or by the
    last late check that passed: ``manifest.last_window_seen_at``); None for a plan of an
    ``id_list``.

    It went by the clock now: a window whose end had passed was skipped, though customers
    created between its last check and its end were in no part (an export of today's
    sign-ups, rerun after midnight, said complete without the evening's).
    """
    if manifest.id_list_length is not None or not manifest.shards:
        return None
    last = manifest.shards[-1]
    end, seen = last.shard.end, manifest.last_window_seen_at
    if last.shard.id_slice is not None or (
        end is not None and seen is not None and end <= seen - CLOCK_MARGIN
    ):
        return None
    return last


def _due(manifest: Manifest) -> ShardOutcome | None:
    """The shard to check now: :func:`late_checked`'s, once every shard is complete (the last
    one, or incomplete only by its late check)."""
    last = late_checked(manifest)
    if last is None:
        return None
    others = manifest.shards[:-1]
    if any(o.status != "complete" for o in others):
        return None
    if last.status == "complete" or (last.status == "incomplete" and last.error == LATE_MISMATCH):
        return last
    return None


async def late_check(
    client: DMHubClient,
    directory: str | os.PathLike[str],
    manifest: Manifest | None = None,
    *,
    concurrency: int = 8,
) -> LateCheck | None:
    """Check a complete sharded export's open-ended last window again, and append what is missing.

    ``export_sharded`` and the CLI run it themselves; after ``run_in_processes`` or
    ``run_on_queue`` (which have no client), call it with the manifest they returned. It runs
    once every shard is complete (else it returns None: rerun the export first), for a plan
    whose last window has no end, or one later than when it was last seen whole
    (:func:`late_checked`): an id-only walk of that window (the single-file export's final
    check) compared with the ids in its part; the customers missing (created after that shard
    ended) are fetched by id and appended to the part, atomically, and the manifest
    (``manifest``, updated in place, or the directory's) records the part's new size, SHA-256
    and customers, and when the window was seen whole.

    Returns:
        What it found (``added``: the customers appended; ``verified``: False when customers
        changed during every walk, the shard then ``incomplete`` until a rerun checks again),
        also set as ``manifest.late_check``; None when there was nothing to check.

    Raises:
        InvalidRequestError: no manifest, or the last part is missing or changed since it was
            exported (delete it and rerun the export, which exports that shard again); a
            client of another base URL or app id than the manifest records, or given an
            access token that reaches none of the customers of the parts looked up (another
            app's: see docs/sharding.md on a token client's rerun), before anything is written.
    """
    # Before anything is read or sent: a bad one was refused by the check's walk after its
    # first count (the part locked and read), and taken silently where nothing was due.
    check_client("late_check", client)
    concurrency = check_concurrency(concurrency, "late_check(): concurrency")
    check_path_type("late_check", "directory", directory)
    if manifest is not None and not isinstance(manifest, Manifest):
        # A manifest sent as JSON (a task queue's) was a raw AttributeError from deep inside.
        raise InvalidRequestError(
            "late_check(): manifest must be a Manifest or None (the directory's is read), "
            f"not {type(manifest).__name__}"
        )
    where = Path(directory)
    if manifest is None:
        manifest = Manifest.read(where)
        if manifest is None:
            raise InvalidRequestError(f"{where} has no {MANIFEST_NAME}: not a sharded export")
    return await _late_check(client, where, manifest, concurrency, check_app=True)


async def run_late_check(
    client: DMHubClient,
    where: Path,
    manifest: Manifest,
    *,
    concurrency: int,
    writer: ManifestWriter | None = None,
) -> LateCheck | None:
    """:func:`late_check` of a run that compared ``client`` with the directory's export as it
    took it up (``_run.prepare``): not again, which costs a token client a request.
    ``writer``: the run's own, which then does not write the manifest again at its end."""
    return await _late_check(client, where, manifest, concurrency, check_app=False, writer=writer)


async def _late_check(
    client: DMHubClient,
    where: Path,
    manifest: Manifest,
    concurrency: int,
    *,
    check_app: bool,
    writer: ManifestWriter | None = None,
) -> LateCheck | None:
    outcome = _due(manifest)
    if outcome is None:
        return None
    from ._run import check_same_app, coordinating

    with coordinating(where):
        if check_app:
            # Another app's client (its app id, or its token at the same host) appended that
            # app's customers to the last part, the export complete: nothing compared it.
            await check_same_app(client, where, manifest, "late_check")
        part = where / outcome.file
        # On threads it is waited for, however long, when the check is cancelled (Ctrl-C, a
        # timeout): the locks were released while the copy was still being written, and an
        # export or check let in swept that copy or read the part as it was replaced.
        lock = await on_thread(
            lambda: _lock(part, by="another export or merge"), lambda held: _release(*held)
        )
        try:
            await file_work(lambda: _sweep_killed_check(part))
            result = await _check(
                client,
                where,
                manifest,
                outcome,
                concurrency,
                writer or ManifestWriter(manifest, where),
            )
        finally:
            _release(*lock)
    manifest.late_check = result
    return result


async def _check(
    client: DMHubClient,
    where: Path,
    manifest: Manifest,
    outcome: ShardOutcome,
    concurrency: int,
    manifest_writer: ManifestWriter,
) -> LateCheck:
    part = where / outcome.file
    fmt = manifest.format
    began = _manifest.utc_now()  # every customer created before it is in the part if it passes
    held = await file_work(lambda: _read_part(part, fmt, outcome))
    before = attrs.astuple(outcome, recurse=False)
    filters = outcome.shard.export_filters()
    writer = new_writer(
        "csv" if fmt == "csv" else "jsonl", held.header, select=_columns(dict(filters))
    )
    appended = tempfile.SpooledTemporaryFile(max_size=_SPOOL, dir=str(where))  # noqa: SIM115
    added = 0

    async def append(rows: Sequence[Any]) -> None:
        nonlocal added
        # Not those the part holds: a service that answers more than the idList asked for
        # (one that ignores it) had the window's every customer appended again.
        rows = [row for row in rows if writer.row_id(row) not in held.ids]
        if not rows:
            return
        data = writer.encode(rows)
        await on_thread(lambda: appended.write(data))
        for row in rows:
            customer_id = writer.row_id(row)
            if customer_id is not None:
                held.ids.add(customer_id)
        added += len(rows)

    def rows(*, page_size: int | None = None, **more: Any) -> AsyncPaginator[Any]:
        chosen = {**filters, **more}
        paging: dict[str, Any] = {
            "page_size": page_size or 100,
            "start_page": 1,
            "max_items": None,
            "concurrency": 1,
            "resume_after": None,
        }
        if fmt == "jsonl":
            return client.customers._list_raw(chosen, **paging)
        return client.customers.list_rows(**paging, **chosen)

    retries = Retries()
    try:
        verified, count = await final_check(
            client, filters, held.ids, append, rows, concurrency, retries
        )
        if appended.tell():
            size, sha256 = await on_thread(lambda: _append(part, held.size, appended))
        else:
            size, sha256 = held.size, held.sha256
    finally:
        appended.close()
    outcome.size, outcome.sha256 = size, sha256
    outcome.exported = held.records + added
    outcome.count_after = count
    # Its retries replace the last check's, not added to the shard's: so added, every rerun of
    # a complete export, which checks the window again, made the export's count grow for good.
    retried, manifest.late_check_retries = manifest.late_check_retries, retries.taken
    seen = manifest.last_window_seen_at
    # Or the service's time at the check's first count, if earlier: its clock stamps the
    # customers' creation (see _manifest.seen_whole).
    began = _manifest.seen_whole(began, retries.served)
    if verified:
        outcome.status, outcome.error = "complete", None
        if outcome.shard.end is not None and (seen is None or began > seen):
            # What lets a rerun after the window's end pass it by (an open window is checked
            # by every rerun: not recorded, nor written for it).
            manifest.last_window_seen_at = began
    else:
        outcome.status, outcome.error = "incomplete", LATE_MISMATCH
    if (
        attrs.astuple(outcome, recurse=False) != before
        or manifest.last_window_seen_at != seen
        or manifest.late_check_retries != retried
    ):
        await manifest_writer.write()  # nothing new: nothing written
    # The manifest says what the part holds now: what the check was writing is no longer news.
    await file_work(lambda: remove_or_warn(_said(part), "late check's note"))
    return LateCheck(
        file=outcome.file, added=added, verified=verified, count=count, retries=retries.taken
    )


class _Held:
    """What a part holds: its ids, CSV header, records, size and SHA-256, and whether it grew
    by a late check the manifest does not record yet."""

    def __init__(self) -> None:
        self.ids = IdSet()
        self.header: tuple[str, ...] | None = None
        self.records = 0
        self.size = 0
        self.sha256 = ""
        self.grown = False


def _read_part(part: Path, fmt: str, outcome: ShardOutcome) -> _Held:
    """The part's ids and the rest (:class:`_Held`), checked against the manifest (blocking)."""
    held = _Held()
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        raise InvalidRequestError(
            f"{part} is missing: rerun the export, which exports that shard again"
        ) from None
    with part.open("rb") as fh:
        if size:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                # Rows appended after it would be glued to it: one line of two customers (a
                # manifest that records no size nor SHA-256 lets nothing else see it).
                raise InvalidRequestError(
                    f"{outcome.file}: its last line is cut short, not as it was exported: "
                    "delete it and rerun the export, which exports that shard again"
                )
            fh.seek(0)
        digest = hashlib.sha256()
        recorded = outcome.size if outcome.size is not None else size
        if size != recorded:
            held.grown = True
            if size < recorded or not _recorded_bytes_hold(fh, part, outcome):
                raise InvalidRequestError(
                    f"{outcome.file} holds {counted(size, 'byte')}, {recorded:,} when it was "
                    "exported: delete it and rerun the export, which exports that shard again"
                )
        fh.seek(0)
        lines = _Lines(cast("IO[bytes]", _Hashing(fh, digest)), size)
        if fmt == "jsonl":
            for line in lines:
                if not lines.whole:
                    break
                _add(held, _jsonl_id(line))
        else:
            _read_csv(held, lines)
        held.size, held.sha256 = size, digest.hexdigest()
    if outcome.sha256 is not None and not held.grown and held.sha256 != outcome.sha256:
        raise InvalidRequestError(
            f"{outcome.file} is not what was exported (its content changed since): delete it "
            "and rerun the export, which exports that shard again"
        )
    return held


def _add(held: _Held, customer_id: Any) -> None:
    held.records += 1
    if customer_id is not None:
        held.ids.add(customer_id)


def _read_csv(held: _Held, lines: _Lines) -> None:
    reader = csv.reader(lines.text(), strict=True)
    with long_csv_fields():
        first = next(reader, None)
        if first is None:
            return
        held.header = tuple(first)
        for cells in reader:
            if cells:
                _add(held, _csv_id(cells))


class _Hashing:
    """A binary file's lines, each added to ``digest`` as it is read."""

    def __init__(self, fh: Any, digest: Any) -> None:
        self._fh, self._digest = fh, digest

    def __iter__(self) -> Any:
        for line in self._fh:
            self._digest.update(line)
            yield line


def _sweep_killed_check(part: Path) -> None:
    """Remove what a killed late check of ``part`` left (its lock held): the copy it was
    writing, and the temporary file of its note (:func:`_said`), which no other sweep's name
    matches: each kill while the note was written left one more, for good."""
    _sweep(part, "tmp")
    _sweep(_said(part), "tmp")


def _said(part: Path) -> Path:
    """The hidden file where a late check says what it is writing over ``part``."""
    return part.with_name(f".{part.name}.late")


def _recorded_bytes_hold(fh: Any, part: Path, outcome: ShardOutcome) -> bool:
    """Whether the part's first ``outcome.size`` bytes are what its shard exported (their
    SHA-256 the manifest's) and the whole part is what a late check said it was writing
    (:func:`_said`): rows a late check appended, not rows appended by hand."""
    if outcome.sha256 is None or outcome.size is None:
        return False
    try:
        said = orjson.loads(_said(part).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False  # no late check was writing it
    size = os.fstat(fh.fileno()).st_size
    if not isinstance(said, dict) or said.get("size") != size:
        return False
    digest = hashlib.sha256()
    if not _read_into(fh, outcome.size, digest) or digest.hexdigest() != outcome.sha256:
        return False
    while chunk := fh.read(1 << 20):
        digest.update(chunk)
    return bool(digest.hexdigest() == said.get("sha256"))


def _read_into(fh: IO[bytes], size: int, digest: Any, out: IO[bytes] | None = None) -> bool:
    """The next ``size`` bytes of ``fh`` added to ``digest`` (and written to ``out``); False
    when the file ends first."""
    while size:
        chunk = fh.read(min(size, 1 << 20))
        if not chunk:
            return False
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
        size -= len(chunk)
    return True


def grown_by_late_check(directory: Path, outcome: ShardOutcome) -> bool:
    """Whether ``outcome``'s part grew by a late check its manifest does not record yet (its
    coordinator stopped between the part's replace and the manifest's write). Blocking."""
    part = directory / outcome.file
    try:
        with part.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            return size > (outcome.size or size) and _recorded_bytes_hold(fh, part, outcome)
    except OSError:
        return False


def _append(part: Path, size: int, appended: IO[bytes]) -> tuple[int, str]:
    """Replace ``part`` by a copy of its first ``size`` bytes and the ``appended`` rows; the
    new size and SHA-256 (blocking)."""
    digest = hashlib.sha256()
    total = size + appended.tell()

    def say() -> None:  # just before the replace: what a rerun may take up
        said = {"size": total, "sha256": digest.hexdigest()}
        replace_file(_said(part), orjson.dumps(said) + b"\n")

    with replacing(part, output=True, before_rename=say) as out, part.open("rb") as fh:
        if not _read_into(fh, size, digest, out):
            raise InvalidRequestError(f"{part} was cut short while it was late checked")
        appended.seek(0)
        while chunk := appended.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return total, digest.hexdigest()
