"""Exporting shards: one shard (:func:`export_shard`), or a whole plan in this process.

:func:`export_shard` is all a task of any scheduler needs (arq, Celery, Airflow, Ray): the
shard is a small value, its file and checkpoint are its own, and it resumes on its own as
``export_customers`` does. :func:`export_sharded` plans (or takes up the plan already in the
directory), runs the shards still to do, and keeps ``manifest.json`` up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from typing_extensions import Unpack

from .._atomic import replace_file
from .._client import DMHubClient, check_client
from .._exceptions import DMHubError, InvalidRequestError
from .._sansio import date_of
from .._threads import file_work
from .._validate import check_flag, check_path_type, short
from .._words import counted
from ..export import ExportProgress, ExportReport, export_customers
from ..export._export import Verify, _columns, check_run, check_verify, retries_of
from ..export._output import (
    _lock,
    _release,
    _sweep,
    denied,
    looping,
    looping_link,
    nearest_existing,
    not_expanded,
    unexpanded_home,
)
from ..export._owner import (
    OWNER_CHECKED,
    SAMPLES,
    Sample,
    check_owner,
    samples_of,
    selected_fields,
    spread_samples_of,
)
from ..resources._filters import check_filter_names, checked_ids, read_once
from ..resources.customers import CustomerFilters
from ._late import LATE_MISMATCH, grown_by_late_check, late_checked, run_late_check
from ._manifest import (
    ID_LIST_NAME,
    MANIFEST_NAME,
    Manifest,
    ManifestWriter,
    ShardOutcome,
    checkpoint_name,
    id_list_file,
    part_digest,
)
from ._plan import (
    MAX_SHARDS,
    ListedIds,
    Shard,
    id_list_text,
    is_shard_count,
    manifest_filters,
    plan_counted,
    unique_ids,
    warn_if_naive,
)

logger = logging.getLogger("dmhub_async")

__all__ = [
    "ProgressBar",
    "coordinating",
    "export_shard",
    "export_sharded",
    "failure_reason",
    "pending",
    "prepare",
    "record_result",
    "result_of",
    "stopped",
]


async def export_shard(
    client: DMHubClient,
    shard: Shard,
    dest: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    format: str | None = None,
    page_size: int = 100,
    concurrency: int = 8,
    progress: bool = False,
    on_progress: Callable[[ExportProgress], None] | None = None,
    verify: Verify = "auto",
) -> ExportReport:
    """Export one shard's customers to ``dest``; rerun with the same checkpoint to resume.

    Args:
        client: an open client.
        shard: a shard of :func:`plan_shards` (or ``Shard.from_dict`` of one sent to a worker).
        dest: the shard's output file.
        checkpoint: the shard's checkpoint file; keep it on storage every worker that may take
            the shard over can read and write.
        format, page_size, concurrency, progress, on_progress, verify: as for
            ``export_customers`` (``verify="always"``: the shard's final check runs even when
            its walk saw no change).

    A shard of a sharded export's ``id_list`` that names its slice alone (a manifest's, or a
    job's) takes its ids from the list in ``dest``'s directory (``id_list.txt``), refused
    unless it is the list the shard names (its SHA-256).

    Returns:
        The export's report; ``report.complete`` is the shard's verdict.
    """
    check_client("export_shard", client)
    if not isinstance(shard, Shard):
        raise InvalidRequestError(f"export_shard(): expected a Shard, not {type(shard).__name__}")
    # In this function's name: export_customers' refusal named export_customers().
    check_flag("export_shard", "progress", progress)
    check_verify(verify, "export_shard(): ")
    if shard.detached:
        shard = shard.with_ids(await _id_list(Path(dest).parent, shard))
    return await export_customers(
        client,
        dest,
        format=format,  # type: ignore[arg-type]
        page_size=page_size,
        concurrency=concurrency,
        progress=progress,
        checkpoint=checkpoint,
        on_progress=on_progress,
        verify=verify,
        **shard.export_filters(),
    )


#: The id list last read (its digest, its ids): a worker's shards of one export read it once.
_READ_LIST: list[tuple[str, ListedIds]] = []


async def _id_list(directory: Path, shard: Shard) -> ListedIds:
    """The ids of the list ``shard`` names, from ``directory``'s :data:`ID_LIST_NAME`."""
    digest = str(shard.id_list_sha256)
    for known, ids in _READ_LIST:
        if known == digest:  # the digest names the content: the list as read then
            return ids
    path = directory / ID_LIST_NAME

    def read() -> ListedIds:
        text = id_list_file(path, digest)
        if text is None:
            raise InvalidRequestError(
                f"{path} is missing: shard {shard.index} names ids {shard.describe_ids()} of "
                "the id list its export's directory holds"
            )
        if not text:  # changed, cut short, or another export's
            raise InvalidRequestError(
                f"{path} is not the id list this export was planned with (its SHA-256 differs "
                "from the manifest's): put the export's own back, or export to a new directory"
            )
        return ListedIds(text)

    ids = await file_work(read)
    _READ_LIST[:] = [(digest, ids)]
    return ids


def _restore_list_file(where: Path, text: bytes, digest: str) -> None:
    """Write the export's id list's file again if it is not that list (blocking work).

    A rerun given the export's own list (its SHA-256 is the manifest's) failed every shard
    still to do when the file had been deleted, cut short or changed since ("put the export's
    own back"), which it had in hand."""
    path = where / ID_LIST_NAME
    if path.is_dir() and not path.is_symlink():
        # Not written over (someone's, maybe): it stopped the rerun with a raw
        # "IsADirectoryError: ... Is a directory: 8".
        raise InvalidRequestError(
            f"{path} is a directory, where the export's id list is written: move it away, "
            "then rerun the export"
        )
    try:
        held = id_list_file(path, digest)
    except InvalidRequestError:
        held = b""
    if held:
        return
    why = "missing" if held is None else "not the export's list"
    logger.warning("%s was %s: written again from the id list given", path, why)
    replace_file(path, text)


async def result_of(report: ExportReport) -> dict[str, Any]:
    """What a worker sends back of a shard's export: plain data, for any queue or pipe.

    A complete part's size and SHA-256 are read in a thread: hashing a part of gigabytes on
    the loop stalled every other shard's requests.
    """
    size: int | None = None
    sha256: str | None = None
    try:
        if report.complete:
            size, sha256 = await file_work(lambda: part_digest(Path(report.path)))
        else:
            size = os.stat(report.path).st_size
    except OSError:
        size = sha256 = None
    return {
        "complete": report.complete,
        "exported": report.exported,
        "duplicates": report.duplicates,
        "seconds": report.seconds,
        "retries": report.retries,
        "size": size,
        "sha256": sha256,
        "resumed": report.resumed,
        "exported_before": report.exported_before,
        "count_before": report.count_before,
        "count_after": report.count_after,
        # Whether its final check ran (verified is None when it did not).
        "checked": report.verified is not None,
    }


def failure_reason(err: BaseException) -> str:
    """A shard's failure as its manifest entry says it: an OSError as the CLI says one
    (``part-00001.jsonl: No space left on device``), whichever runner ran the shard; the
    SDK's own errors (an ``APITimeoutError`` is a ``TimeoutError`` too) by their message."""
    if isinstance(err, OSError) and not isinstance(err, DMHubError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename is not None else err.strerror
    return str(err) or type(err).__name__  # a bare TimeoutError() said nothing


def record_result(outcome: ShardOutcome, result: dict[str, Any]) -> None:
    """Copy a shard's :func:`result_of` into its manifest entry."""
    outcome.status = "complete" if result["complete"] else "incomplete"
    outcome.exported = result["exported"]
    outcome.duplicates = result["duplicates"]
    outcome.seconds = round(result["seconds"], 3)
    # A worker of an earlier release (0.1.0) sends none: not counted, rather than "0 retries".
    outcome.retries = result.get("retries")
    outcome.size = result.get("size")
    outcome.sha256 = result.get("sha256")
    # Of this run, as a one-process export's report says it; None from an earlier release.
    outcome.resumed = result.get("resumed")
    outcome.exported_before = result.get("exported_before")
    outcome.count_before = result.get("count_before")
    outcome.count_after = result.get("count_after")
    outcome.checked = result.get("checked")
    outcome.error = None


#: The directories this task (and the tasks it started) coordinates: a nested call takes
#: the lock it already holds (the CLI's plan, then its run on a queue or on processes).
_COORDINATED: contextvars.ContextVar[frozenset[Path]] = contextvars.ContextVar(
    "dmhub_async_coordinated", default=frozenset()
)


@contextlib.contextmanager
def coordinating(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``directory``'s coordinator lock (``.manifest.json.lock``), made if missing.

    One coordinator a directory, on any number of machines that share it: a second one
    (``export --shards`` run twice, say) raises InvalidRequestError naming the holder at once.
    Two used to plan, enqueue and write the one manifest over each other, and fail each other's
    shards on their parts' locks.
    """
    where = Path(directory).absolute()
    if where in _COORDINATED.get():
        yield
        return
    if (home := unexpanded_home(directory)) is not None:
        # export_sharded(dm, "~/parts"): a directory named "~" was made here, the run
        # written in it.
        raise InvalidRequestError(
            f"directory {os.fspath(directory)!r}: {not_expanded('directory')}: give {home!r}"
        )
    check_directory(where)
    made = not where.exists()
    where.mkdir(parents=True, exist_ok=True)
    try:
        lock, lock_path = _lock(where / MANIFEST_NAME)
    except BaseException:
        _remove_if_empty(where, made)
        raise
    held = _COORDINATED.set(_COORDINATED.get() | {where})
    try:
        yield
    finally:
        _COORDINATED.reset(held)
        _release(lock, lock_path)
        _remove_if_empty(where, made)


def _remove_if_empty(where: Path, made: bool) -> None:
    """The directory :func:`coordinating` made, if nothing was written in it (no plan)."""
    if made:
        with contextlib.suppress(OSError):
            where.rmdir()


async def prepare(
    client: DMHubClient,
    directory: str | os.PathLike[str],
    shards: int,
    *,
    format: str = "jsonl",
    verify: Verify = "auto",
    caller: str = "export_sharded",
    **filters: Any,
) -> Manifest:
    """The directory's manifest: the one already there (same export), or a new plan written.

    A rerun after a crash or a kill takes up the plan it made the first time, so every shard
    keeps its window, its file and its checkpoint, and the export's ``verify``: the run goes
    on with ``manifest.verify`` (``"always"`` if this run or an earlier one asked for it).
    ``caller`` is the public function called, named by the errors of a bad setting or filter.
    """
    if format not in ("jsonl", "csv"):
        raise InvalidRequestError(f"format must be 'jsonl' or 'csv', not {short(format)}")
    check_shards(shards, caller)
    # A generator: read here, once; the manifest's record read it, the plan found it empty.
    read_once(filters)
    recorded = manifest_filters(filters, client.timezone, caller)
    with coordinating(directory):
        return await _prepare(
            client, Path(directory), shards, format, verify, recorded, filters, caller
        )


async def _prepare(
    client: DMHubClient,
    where: Path,
    shards: int,
    format: str,
    verify: Verify,
    recorded: dict[str, Any],
    filters: dict[str, Any],
    caller: str,
) -> Manifest:
    await file_work(lambda: _sweep_killed_writes(where))
    existing = _manifest_in(where)
    if existing is not None:
        text: bytes | None = None
        length = 0
        if existing.id_list_length is not None and recorded.get("id_list") is not None:
            # The list's file's digest: the caller's list, checked (numpy's int64 as the int
            # it holds: a raw TypeError here, of ids the first run took) and repeats dropped,
            # as planned.
            ids = recorded["id_list"]
            unique, text, digest = await asyncio.to_thread(
                lambda: unique_ids(checked_ids(caller, ids))
            )
            recorded, length = {**recorded, "id_list": digest}, len(unique)
        existing.check_same_export(
            fmt=format, base_url=client.base_url, app_id=client.app_id, filters=recorded
        )
        if client.app_id is None:
            # A client given an access token: the manifest records no app id, and another
            # app's token at the same base URL took the directory up as its own (its late
            # check appending that app's customers to the last part).
            await _check_token_owner(client, where, existing, "export to a new directory")
        if text is not None and length != existing.id_list_length:
            # Its length and last slice edited together: the ids past them were in no shard,
            # and the export was reported complete without them.
            raise InvalidRequestError(
                f"{where / MANIFEST_NAME} is not the plan of this id list: its shards cover "
                f"{existing.id_list_length:,} ids of a list of {length:,} (an edited manifest): "
                "export to a new directory"
            )
        if text is not None:  # the export's own list: its file as it was planned
            listed = text
            await file_work(lambda: _restore_list_file(where, listed, recorded["id_list"]))
        rechecked = _recheck_parts(where, existing)
        _, verify_changed = existing.take_verify(verify)  # the report says it is kept
        if rechecked or verify_changed:
            await ManifestWriter(existing, where).write()
        if _planned_with_another_count(existing, shards):
            # Taken up without a word, another count believed to be the export's.
            asked = existing.shards_asked
            made_for = f", made for {asked:,}," if asked not in (None, len(existing.shards)) else ""
            logger.warning(
                "%s: its plan of %s%s is taken up, not %s %s asked for: a rerun keeps the plan "
                "its directory holds (each shard its window, its part and its checkpoint); to "
                "plan %s, export to a new directory",
                where,
                counted(len(existing.shards), "shard"),
                made_for,
                "one of the" if made_for else "the",
                f"{shards:,}",
                f"{shards:,}",
            )
        return existing
    plan, retries = await plan_counted(client, shards, None, filters, caller)
    if plan and plan[0].id_slice is not None:
        # The list once, beside the manifest, before it: a manifest never names a list not
        # there. The slices in order are the whole list as walked (each once, sorted): its
        # text is written as it is, not deduplicated and sorted again.
        whole = [i for shard in plan for i in shard.filters["id_list"]]
        text = await asyncio.to_thread(id_list_text, whole)
        await file_work(lambda: replace_file(where / ID_LIST_NAME, text))
    manifest = Manifest.new(
        plan,
        fmt=format,
        base_url=client.base_url,
        app_id=client.app_id,
        filters=recorded,
        plan_retries=retries,
        shards_asked=shards,
        verify=verify,
        # An answer to the planning, by the service's clock (see _manifest.seen_whole).
        served=date_of(client.last_response),
    )
    await ManifestWriter(manifest, where).write()
    return manifest


async def check_same_app(client: DMHubClient, where: Path, manifest: Manifest, caller: str) -> None:
    """Refuse ``client`` unless it is of the service and app that made the sharded export in
    ``where`` (``manifest``): its base URL (in one spelling) and app id the manifest's, and a
    client given an access token (no app id) one that reaches the customers of its parts
    (:func:`_check_token_owner`, one request). For a function that takes a directory up
    without the plan's own check (``late_check``): given another app's client, the late
    check appended that app's customers to the last part, the export complete."""
    changed = manifest.settings_changed(
        fmt=manifest.format, base_url=client.base_url, app_id=client.app_id
    )
    if changed:
        raise InvalidRequestError(
            f"{caller}(): the sharded export in {str(where)!r} was made with another "
            f"{' and '.join(changed)} than this client's: nothing was sent or written; give "
            f"{caller} a client of the service and app that made it"
        )
    if client.app_id is None:
        await _check_token_owner(
            client, where, manifest, f"give {caller} a client of the app that made it"
        )


async def _check_token_owner(
    client: DMHubClient, where: Path, manifest: Manifest, instead: str
) -> None:
    """InvalidRequestError (saying ``instead``) unless a customer of the parts in ``where``
    is one ``client``'s access token reaches, as written (``export._owner.check_owner``)."""
    samples = await file_work(lambda: _part_samples(where, manifest))
    await check_owner(
        client,
        samples,
        f"the sharded export in {str(where)!r}",
        instead,
        more=lambda: file_work(lambda: _spread_part_samples(where, manifest)),
    )


#: Customers a part is looked up by (at least), and parts looked at, for the owner's check
#: (``export._owner``): spread over the export's windows, as many as one request holds.
_PER_PART = 2
_PARTS_SAMPLED = 10
#: Customers looked up at most when none of the first are found (one page of ids).
_MOST_SAMPLES = 100


def _spread(count: int) -> list[int]:
    """Indexes of up to :data:`_PARTS_SAMPLED` parts of ``count``, spread evenly, the first
    and the last among them."""
    if count <= _PARTS_SAMPLED:
        return list(range(count))
    last = _PARTS_SAMPLED - 1
    return sorted({round(i * (count - 1) / last) for i in range(_PARTS_SAMPLED)})


def _part_samples(where: Path, manifest: Manifest) -> list[Sample]:
    """The first customers of parts spread over the plan (its oldest and newest windows
    among them), for the owner's check: a false refusal needs every one deleted since."""
    outcomes, selected = manifest.shards, _selected(manifest)
    spread = _spread(len(outcomes))
    # Two a part of many; more a part of few (one part: all ten from it).
    per_part = max(_PER_PART, -(-SAMPLES * _PER_PART // max(1, len(spread))))
    found: list[Sample] = []
    for index in spread:
        part = where / outcomes[index].file
        found += samples_of(part, manifest.format, per_part, selected=selected)
    # Empty windows among them: other parts, until there are enough.
    for index in range(len(outcomes)):
        if len(found) >= SAMPLES * _PER_PART:
            break
        if index not in spread:
            part = where / outcomes[index].file
            found += samples_of(part, manifest.format, _PER_PART, selected=selected)
    return found


def _selected(manifest: Manifest) -> frozenset[str]:
    """The fields the export selected (a JSON line of its parts sent without one holds it
    empty: ``export._owner``), none where it selected every field."""
    columns = _columns(dict(manifest.filters))
    return selected_fields(",".join(columns) if columns else None)


def _spread_part_samples(where: Path, manifest: Manifest) -> list[Sample]:
    """Customers spread over each of the parts :func:`_part_samples` looks at (a read of
    them all): looked up when none of their first customers is found (deleted since: the
    oldest of each window), before the export is refused."""
    outcomes, selected = manifest.shards, _selected(manifest)
    found: list[Sample] = []
    for index in _spread(len(outcomes)):
        outcome = outcomes[index]
        part = where / outcome.file
        found += spread_samples_of(part, manifest.format, outcome.exported, selected=selected)
    return found[:_MOST_SAMPLES]


def check_shards(shards: object, caller: str) -> None:
    """``shards`` as a plan takes it, 1 to :data:`MAX_SHARDS`, or InvalidRequestError.

    Checked whether or not the directory holds a plan: a rerun took up its plan given 0, -1
    or "2" (a count a new directory refuses), its warning saying "to plan 0, export to a new
    directory", where that plan would be refused.
    """
    if not is_shard_count(shards):
        raise InvalidRequestError(
            f"{caller}(): shards must be an int from 1 to {MAX_SHARDS}, not {short(shards)}"
        )


def _sweep_killed_writes(where: Path) -> None:
    """Remove the temporary files of a manifest or id list write that a killed run left.

    The coordinator's lock is held: no live run is writing either, so such a file
    (``.manifest.json.xxxxxxxx.tmp``) is one a run killed mid-write left, each ``kill -9`` one
    more; an export sweeps its own so (export/_output.py).
    """
    for name in (MANIFEST_NAME, ID_LIST_NAME):
        _sweep(where / name, "tmp")


def _planned_with_another_count(manifest: Manifest, shards: object) -> bool:
    """Whether ``manifest``'s plan cannot be one of ``shards`` (a rerun given another count).

    Not its number of shards alone: a plan of an id list has fewer when the list holds fewer
    ids; one of windows, one more for each second alone holding more than a share (noted),
    and fewer when edges fall together, which they do only in such a second or when fewer
    customers than ``shards`` were counted. A rerun of the same command said nothing then.
    """
    if not isinstance(shards, int):
        return False
    if manifest.id_list_length is not None:  # its slices: min(n, ids), whatever n was
        return len(manifest.shards) != min(shards, manifest.id_list_length)
    if manifest.shards_asked is not None:
        # The count it was planned for, recorded: over a dense second, a plan for 2 held 3
        # shards, and a rerun with 3 (which would plan 4 others) said nothing, one with 2
        # that its plan was not of 2. A plan of nobody is one window, whatever the count.
        return shards != manifest.shards_asked and manifest.planned > 0
    # A manifest of an earlier release: its count guessed from its shards.
    if shards == len(manifest.shards):
        return False
    noted = sum(outcome.shard.note is not None for outcome in manifest.shards)
    counted_windows = len(manifest.shards) - noted
    if counted_windows > shards:
        return True
    return counted_windows < shards and not noted and manifest.planned >= shards


def _recheck_parts(where: Path, manifest: Manifest) -> bool:
    """Send a complete shard whose part was deleted or changed since back to be exported.

    The manifest alone said complete: a rerun did nothing and reported the export complete
    without the part's customers. The stale part and any checkpoint go: the shard starts over.
    Whether any did (the manifest is then to be written).
    """
    changed = False
    checked_late = late_checked(manifest)
    for outcome in manifest.shards:
        late = outcome is checked_late
        if late and outcome.status == "incomplete" and outcome.error == LATE_MISMATCH:
            # Exported whole, then its late check could not verify it: checked again at the
            # end of this run (late_check), not exported again.
            outcome.status = "complete"
        why = outcome.part_changed(where) if outcome.status == "complete" else None
        if why is None or (late and grown_by_late_check(where, outcome)):
            # A part a late check grew, its coordinator stopped before the manifest said so:
            # the late check of this run takes it up from the file.
            continue
        logger.warning("shard %d: %s: exporting it again", outcome.shard.index, why)
        for stale in (outcome.file, checkpoint_name(outcome.shard.index, manifest.format)):
            path = where / stale
            # A directory there is not a part the shard wrote: kept (its export then fails
            # saying so); removing it was a raw IsADirectoryError that stopped the rerun.
            if path.is_symlink() or not path.is_dir():
                path.unlink(missing_ok=True)
        outcome.status, outcome.error = "pending", f"exported again: {why}"
        outcome.exported = outcome.duplicates = 0
        outcome.size = outcome.sha256 = outcome.retries = None
        outcome.resumed = outcome.exported_before = None
        outcome.count_before = outcome.count_after = outcome.checked = None
        changed = True
    return changed


def check_directory(where: Path) -> None:
    """Refuse, before anything is made or sent, a sharded export's directory that is not one
    or cannot be made (the command line's ``--out`` too: it was exit 1, as a failed run).
    Each path quoted as ``check_path`` quotes a file's: a newline in a name split the line."""
    within = where / MANIFEST_NAME
    named = repr(str(where))
    try:
        os.lstat(within)
    except PermissionError:  # in (or under) one this user may not enter: raw, naming none
        made = "written to" if os.path.lexists(where) else "made"
        why = denied(within)
        raise InvalidRequestError(f"{named} cannot be {made}, {why}") from None
    except OSError as err:  # none yet, or not a directory: said below
        if err.errno == errno.ELOOP and (link := looping(where)) is not None:
            # A link that leads back to itself, the directory or above it: "is a symbolic
            # link to loop, which does not exist", or "loop is not a directory".
            up = "" if link == where else ", above it,"
            raise InvalidRequestError(
                f"{named} cannot be made: {str(link)!r}{up} is {looping_link(link)}: mend the"
                " link, or give another directory"
            ) from None
        if err.errno == errno.ENAMETOOLONG:
            # A name longer than the file system takes (90 Chinese characters): a raw OSError
            # of where.exists() below, "...: File name too long", exit 1, as a failed run.
            raise InvalidRequestError(
                f"{named} cannot be made: {err.strerror}: give a directory whose every name is"
                " shorter"
            ) from None
    if where.exists() and not where.is_dir():
        raise InvalidRequestError(f"{named} is not a directory: a sharded export writes one")
    if not where.exists() and where.is_symlink():
        # A link to a directory not there (unmounted, moved, or never made): a raw
        # FileExistsError of the link, from mkdir.
        raise InvalidRequestError(
            f"{named} is a symbolic link to {os.readlink(where)!r}, which does not exist (a"
            " sharded export writes a directory: make it, or give another)"
        )
    above = nearest_existing(where)
    if above is not None and not above.is_dir():
        # june.jsonl/parts: a raw NotADirectoryError of the path as it was made (the command
        # line's "parts: Not a directory", exit 1), naming no file.
        raise InvalidRequestError(
            f"{named} cannot be made: {str(above)!r} is not a directory (a sharded export writes"
            " one)"
        )
    # Read-only to this user (mode 555, an archive), or to be made under such a directory: a
    # raw PermissionError of mkdir or of the manifest's lock (the command line's "parts:
    # Permission denied", exit 1), where one it may not enter is named.
    there = os.path.isdir(where)
    if (there or not os.path.lexists(where)) and above is not None:
        into = where if there else above
        if not os.access(into, os.W_OK):
            raise InvalidRequestError(
                f"{named} cannot be {'written to' if there else 'made'}: this user cannot"
                f" write to {str(into)!r} (a sharded export writes its manifest and parts"
                f"{'' if there else ' in a directory it makes'} there): give a directory it"
                " can write to"
            )


def _manifest_in(where: Path) -> Manifest | None:
    check_directory(where)
    return Manifest.read(where) if where.is_dir() else None


#: Told the customers written so far and the customers planned, after every update.
TotalProgress = Callable[[int, "int | None"], None]


class ProgressBar:
    """One bar for a whole sharded export, fed per shard from any number of workers.

    The bar is drawn on a terminal when ``enabled``; ``on_total`` (for progress lines in a log)
    hears the whole export's count after every update, and its total as now known: an ended
    shard's customers (complete, or in MISMATCH), the others' planned counts (:meth:`settled`).
    """

    def __init__(
        self, enabled: bool, manifest: Manifest, on_total: TotalProgress | None = None
    ) -> None:
        self._done: dict[int, int] = {s.shard.index: s.exported for s in manifest.shards}
        # Kept as each shard's count moves: summed again at each update, a queue coordinator's
        # poll (every shard's progress) cost the shards' count squared (10,000 shards: 627 ms).
        self._exported = sum(self._done.values())
        self._settled = {s.shard.index for s in manifest.shards if s.status == "complete"}
        self._total = sum(
            s.exported if s.shard.index in self._settled else s.shard.planned_count
            for s in manifest.shards
        )
        self._on_total = on_total
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=self._total or None,
                initial=self._exported,
                unit=" customers",
                unit_scale=True,
                desc=counted(len(manifest.shards), "shard"),
                file=sys.stderr,
            )

    def update(self, index: int, exported: int) -> None:
        """Shard ``index`` has written ``exported`` customers so far."""
        before = self._done.get(index, 0)
        self._done[index] = exported
        self._exported += exported - before
        if self._bar is not None and exported != before:
            self._bar.update(exported - before)
        if self._on_total is not None:
            self._on_total(self.exported, self._total or None)

    def settled(self, outcome: ShardOutcome) -> None:
        """Shard ``outcome``'s export ended, its outcome recorded: once it ran to its end
        (complete, or incomplete: MISMATCH), its customers take its planned count's place in
        the total. A slice of an id list plans its ids, an upper bound (an id of no one
        counts): the bar of such an export ended at 40%, its time left too long all the way;
        a shard that ended in MISMATCH, its customers changing as it ran, left the whole
        export's progress at 416/400 (104%), or short of 100% for good."""
        index = outcome.shard.index
        if outcome.status in ("complete", "incomplete") and index not in self._settled:
            self._settled.add(index)
            self._total += outcome.exported - outcome.shard.planned_count
            if self._bar is not None:
                self._bar.total = self._total or None
                self._bar.refresh()
        if outcome.status in ("complete", "incomplete"):  # a failed one's count is older
            self.update(index, outcome.exported)

    @property
    def exported(self) -> int:
        """Customers written so far, all shards together."""
        return self._exported

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()


async def export_sharded(
    client: DMHubClient,
    directory: str | os.PathLike[str],
    shards: int,
    *,
    format: str = "jsonl",
    page_size: int = 100,
    concurrency: int = 8,
    parallel: int = 4,
    progress: bool = True,
    on_total: TotalProgress | None = None,
    verify: Verify = "auto",
    **filters: Unpack[CustomerFilters],
) -> Manifest:
    """Plan (or take up) a sharded export in ``directory`` and run it in this process.

    ``parallel`` shards run at once, each walking ``concurrency`` pages at once, all within the
    client's own limits. ``progress`` draws one bar on a terminal; ``on_total(done, planned)``
    hears the whole export's progress. ``verify`` is each shard's, as for ``export_customers``:
    ``"always"`` runs every shard's final check even when its walk saw no change, which finds a
    customer of a closed window that a filtered export's balanced churn hid (docs/sharding.md,
    "Known limit"); the manifest records it, and a rerun of the export keeps ``"always"``
    asked once (``manifest.verify``). For more than one process or machine, see
    ``docs/sharding.md``.

    Returns:
        The manifest as written at the end; ``manifest.complete`` is the export's verdict.
    """
    check_client("export_sharded", client)
    check_filter_names("export_sharded", filters)
    check_path_type("export_sharded", "directory", directory)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise InvalidRequestError("export_sharded(): parallel must be an int >= 1")
    check_flag("export_sharded", "progress", progress)
    check_verify(verify, "export_sharded(): ")
    # Before the plan: a bad one was planned, then failed in every shard (or at the first
    # progress, a raw TypeError).
    page_size, concurrency = check_run(
        client, page_size, concurrency, "on_total", on_total, callback_takes=2
    )
    check_shards(shards, "export_sharded")
    warn_if_naive(client, "export_sharded", filters)
    with coordinating(directory):
        return await _export_sharded(
            client,
            directory,
            shards,
            format,
            page_size,
            concurrency,
            parallel,
            progress,
            on_total,
            verify,
            dict(filters),
        )


async def _export_sharded(
    client: DMHubClient,
    directory: str | os.PathLike[str],
    shards: int,
    format: str,
    page_size: int,
    concurrency: int,
    parallel: int,
    progress: bool,
    on_total: TotalProgress | None,
    verify: Verify,
    filters: dict[str, Any],
) -> Manifest:
    where = Path(directory)
    # A plan taken up by a token client: prepare() checks whose its parts' customers are.
    taken_up = client.app_id is None and await file_work(lambda: (where / MANIFEST_NAME).is_file())
    manifest = await prepare(client, directory, shards, format=format, verify=verify, **filters)
    verify = manifest.verify or verify  # the export's: "always" once any run asked for it
    writer = ManifestWriter(manifest, where)
    bar = ProgressBar(progress, manifest, on_total)
    gate = asyncio.Semaphore(parallel)

    async def run(outcome: ShardOutcome) -> None:
        index = outcome.shard.index
        async with gate:
            outcome.status = "running"
            if taken_up:
                # In this shard's task alone: its resume asked again whose its part is (a
                # look-up a shard), as prepare() asked of the directory's parts.
                OWNER_CHECKED.set(client)
            try:
                report = await export_shard(
                    client,
                    outcome.shard,
                    where / outcome.file,
                    checkpoint=where / checkpoint_name(index, manifest.format),
                    format=manifest.format,
                    page_size=page_size,
                    concurrency=concurrency,
                    on_progress=lambda p: bar.update(index, p.exported),
                    verify=verify,
                )
            except BrokenPipeError:
                raise  # this process's own output gone (on_total): the run's, not a shard's
            except (DMHubError, OSError) as err:
                # OSError: the part or its checkpoint could not be written (a full disk, a
                # read-only directory). It stopped the whole run, the other shards cancelled,
                # where a worker process fails that shard alone, saying why.
                outcome.status, outcome.error = "failed", failure_reason(err)
                outcome.retries = retries_of(err)  # this run's, not an earlier run's
            else:
                record_result(outcome, await result_of(report))
                bar.settled(outcome)
            await writer.write()

    tasks = [asyncio.ensure_future(run(o)) for o in pending(manifest.shards)]
    try:
        await asyncio.gather(*tasks)
        # Every shard complete: the last window looked at again (its customers created since
        # its shard ended), the run's last act; a rerun of a complete export runs it too.
        # Its client was compared with the export's as the run took the directory up (prepare).
        await run_late_check(client, where, manifest, concurrency=concurrency, writer=writer)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        bar.close()
        stopped(manifest.shards)
        await writer.write()
    return manifest


def pending(outcomes: Sequence[ShardOutcome]) -> list[ShardOutcome]:
    """The shards still to export (all but the complete ones)."""
    return [o for o in outcomes if o.status != "complete"]


#: A shard's note (its ``error``) when its run was stopped before it ended, in this process
#: or on worker processes: nothing exports it any longer.
STOPPED = "stopped before it ended (its run was stopped): a rerun resumes it from its checkpoint"


def stopped(outcomes: Sequence[ShardOutcome], why: str = STOPPED) -> None:
    """Mark the shards still ``running`` as the coordinator stops (Ctrl-C, SIGTERM, an error
    of the run): ``pending`` again, ``why`` said in their ``error``.

    The manifest said "running" for them after the run had ended, and a merge of what there
    was said so too ("its shard running"), though nothing exported them any longer.
    """
    for outcome in outcomes:
        if outcome.status == "running":
            outcome.status, outcome.error = "pending", why
