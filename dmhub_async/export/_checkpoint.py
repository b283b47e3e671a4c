"""The export's checkpoint: a typed record of what is exported, how far, and where.

Written (atomically, after the data it points past is on disk) after every page, read when
the same export is run again. A checkpoint resumes only the export it was written by: the same
service, app, destination, format and filters (docs/reliability.md, "Resuming an export").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePath
from typing import Any

import attrs
import cattrs
import orjson

from .._atomic import replace_file
from .._exceptions import InvalidRequestError
from .._validate import MAX_PAGE_NUMBER
from ..resources._batches import walked_ids
from ..resources._filters import FILTER_KEYWORDS, as_given

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "ExportScope",
    "id_list_digest",
    "loads_checkpoint",
    "moved_with_it",
    "read_checkpoint",
    "recorded_scope",
    "write_checkpoint",
]

#: 1: dmhub-async 0.1 (a fingerprint of the file, format and filters, and no service or app).
#: 3: a long ``idList`` recorded as its digest (:func:`recorded_scope`); written only then.
CHECKPOINT_VERSION = 3
#: The version of a checkpoint whose ``idList`` is recorded in full (or absent): the releases
#: before 3 read it, so a rolling upgrade resumes it either way.
_FULL_ID_LIST_VERSION = 2
#: The longest ``idList`` (characters) a checkpoint records as it is; a longer one as its
#: SHA-256 (about 200 ids of 19 digits, 400 of 10).
ID_LIST_KEPT = 4_096
_DIGEST = "sha256:"


@attrs.frozen
class ExportScope:
    """What an export is of. Two exports with the same scope write the same file."""

    base_url: str
    app_id: str | None
    dest: str  # absolute; a checkpoint beside it moved with it still reads (moved_with_it)
    format: str
    encoding: str
    filters: dict[str, str]  # the query string of the walk, as sent

    def differences(self, other: ExportScope, *, now: str = "now") -> list[str]:
        """``"format: 'jsonl' in the checkpoint, 'csv' now"`` for each field that differs
        (``now``: where ``other`` comes from, as said).

        An ``idList`` is compared as the set of its ids: the export walks them by id, each
        once, whatever their order or repeats, so the same ids in another order (a set, a
        query without ORDER BY) are the same export. A different one is said by its counts,
        not quoted: the refusal quoted every id of both (380,000 characters for 14,000).
        """
        said = []
        for field in attrs.fields(ExportScope):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if field.name == "filters":
                said += _filter_differences(mine, theirs, now)
            elif mine != theirs:
                said.append(f"{field.name}: {mine!r} in the checkpoint, {theirs!r} {now}")
        return said


def _filter_differences(mine: dict[str, str], theirs: dict[str, str], now: str) -> list[str]:
    """:meth:`ExportScope.differences` of two exports' filters, each that differs by its
    keyword (``date_created_from: '2024-01-01T00:00:00' in the checkpoint, none now``), an
    ``idList`` as a set.

    The two query strings were quoted whole, by the wire's names (``dateCreatedFrom``,
    ``select: 'id,dateJoin'``), which the caller never gave, the one that differs to be
    found by eye."""
    said = []
    for param in dict.fromkeys([*mine, *theirs]):
        if param == "idList" or mine.get(param) == theirs.get(param):
            continue
        was, is_ = (
            "none" if v is None else repr(as_given(param, v))
            for v in (mine.get(param), theirs.get(param))
        )
        said.append(f"{FILTER_KEYWORDS.get(param, param)}: {was} in the checkpoint, {is_} {now}")
    ids_mine, ids_theirs = _id_set(mine.get("idList")), _id_set(theirs.get("idList"))
    if ids_mine != ids_theirs:
        if ids_mine is None or ids_theirs is None:
            whose = "the checkpoint" if ids_theirs is None else "this export"
            said.append(f"id_list: only {whose} has one")
        elif _DIGEST in mine["idList"] + theirs["idList"]:  # a long list: by its SHA-256
            said.append("id_list: other ids (the checkpoint's list has another SHA-256)")
        else:
            said.append(
                f"id_list: {len(ids_mine):,} ids in the checkpoint, {len(ids_theirs):,} {now}, "
                f"{len(ids_mine ^ ids_theirs):,} of them in one only"
            )
    return said


def _id_set(id_list: str | None) -> frozenset[str] | None:
    """The ids of an ``idList`` as sent (checked ints, comma-separated), or None."""
    return None if id_list is None else frozenset(id_list.split(","))


@attrs.frozen
class Checkpoint:
    """Where an export stands after its last page written."""

    scope: ExportScope
    page_size: int  # a page number means nothing at another size
    next_page: int  # where the walk would go on; a hint, checked against last_id on resume
    last_id: Any  # the last id written: the walk resumes after it
    bytes: int  # the file's length up to that record
    exported: int  # records in those bytes
    duplicates: int
    header: tuple[str, ...] | None  # the CSV header written
    count_before: int | None
    version: int = CHECKPOINT_VERSION
    #: A new export's first checkpoint: the work file (its name, beside the output) holding
    #: the data, which takes the output's name just after this checkpoint takes its own. A
    #: run killed in between finds the data there (``Output``); None once it is in place.
    work: str | None = None


_converter = cattrs.Converter(forbid_extra_keys=True)


def id_list_digest(walked: str) -> str:
    """``sha256:<hex>`` of an ``idList`` as the walk takes it (:func:`walked_ids`: each id
    once, sorted), so that the same ids in another order or with repeats are the same export,
    as :meth:`ExportScope.differences` takes a list it compares whole."""
    return _DIGEST + hashlib.sha256(walked.encode()).hexdigest()


def recorded_scope(scope: ExportScope) -> ExportScope:
    """``scope`` as a checkpoint records it: an ``idList`` longer than :data:`ID_LIST_KEPT`
    as its digest, which a resume checks the caller's list against.

    The whole list was recorded, and the checkpoint rewritten and synced after every page:
    3.3 MB a page for 300,000 ids, 2.1 GB over an export of 300,000 customers at 1,000 a page.
    A resume needs only to know the list is the same: the caller gives it again.
    """
    ids = scope.filters.get("idList")
    if ids is None or len(ids) <= ID_LIST_KEPT or ids.startswith(_DIGEST):
        return scope
    walked = walked_ids([int(i) for i in ids.split(",")])
    return attrs.evolve(scope, filters={**scope.filters, "idList": id_list_digest(walked)})


def _digested(scope: ExportScope) -> bool:
    return scope.filters.get("idList", "").startswith(_DIGEST)


def moved_with_it(path: Path, recorded: str, dest: str) -> bool:
    """Whether the output a checkpoint at ``path`` records (``recorded``: an absolute path, as
    every release writes it, or a name) is ``dest`` (absolute), the two moved together: the
    output of that name, beside the checkpoint (a sharded export's part and its checkpoint).

    A sharded export's directory moved, or mounted at another path on another machine (the
    queue's workers on one shared volume), refused every unfinished shard as "another
    export's" (``dest: '/old/...' in the checkpoint, '/new/...' now``). The path is still
    written absolute: the releases before this one compare it as it is, and resume each
    other's shards (docs/sharding.md, "Mixing releases").

    Moved: nothing is left at the recorded place, or what is there is ``dest`` itself (the
    same volume reached by another path). A checkpoint kept apart from its output
    (``--out /x/out.jsonl --checkpoint /y/out.ckpt``) was otherwise taken, by the name alone,
    for a new export to ``/y/out.jsonl``, while its own output still stood in ``/x``."""
    here = Path(dest)
    if PurePath(recorded).name != here.name or path.resolve().parent != here.parent:
        return False
    try:
        return os.path.samefile(recorded, here)
    except OSError:  # one of them missing (or unreadable): moved only if the recorded one is
        return not os.path.lexists(recorded)


def _written(checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint`` if it holds only values an export writes; ValueError otherwise.

    An edited (or damaged) one was taken as it came: a last id that is no integer stopped the
    resume with a raw TypeError, compared with the ids read back; a page size or next page out
    of range failed with an error about the caller's ``page_size``, or a ``start_page`` no
    caller gave; negative counts were reported as the export's.
    """
    last_id = checkpoint.last_id
    if last_id is not None and type(last_id) is not int:  # the ids read back are ints
        raise ValueError("last_id")
    for name in ("page_size", "next_page"):
        if not 1 <= getattr(checkpoint, name) <= MAX_PAGE_NUMBER:
            raise ValueError(name)
    counts = (checkpoint.bytes, checkpoint.exported, checkpoint.duplicates)
    if min(counts) < 0 or (checkpoint.count_before or 0) < 0:
        raise ValueError("a negative count")
    return checkpoint


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Replace the checkpoint at ``path`` atomically (a kill leaves the old one or the new).

    The temporary file is made by ``mkstemp`` next to it: an unpredictable name, created
    exclusively, never a link followed; ``fsync`` before the rename, so that after a crash
    the checkpoint on disk never points past data that is not.
    """
    raw = _converter.unstructure(checkpoint)
    if raw["work"] is None:
        del raw["work"]  # as earlier releases wrote it, which can then read it
    if not _digested(checkpoint.scope):
        raw["version"] = _FULL_ID_LIST_VERSION  # which earlier releases read too
    try:
        data = orjson.dumps(raw)
    except TypeError:  # a path of bytes that are no UTF-8 (see loads_checkpoint)
        data = json.dumps(raw).encode("ascii")
    replace_file(path, data)


def loads_checkpoint(raw: bytes) -> Any:
    """A checkpoint's JSON, or None when it is not JSON.

    A path of bytes that are no UTF-8 (``r\\xe9sultats``, as ``os.listdir`` and the command
    line give it: ``surrogateescape``'s lone surrogates) is written by ``json`` as escapes
    (``\\udce9``), which orjson neither writes nor reads: such an export raised a raw
    TypeError at its first checkpoint. Read back by ``json`` then, and only then."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        if b"\\udc" not in raw:
            return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def read_checkpoint(path: Path, scope: ExportScope) -> Checkpoint | None:
    """The checkpoint at ``path`` if there is one; refused unless it is of this ``scope``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    data = loads_checkpoint(raw)
    version = data.get("version") if isinstance(data, dict) else None
    if version == 1:
        raise InvalidRequestError(
            f"checkpoint {str(path)!r} was written by dmhub-async 0.1, which did not record the "
            "service and app it exported from, so it cannot be checked: finish that export with "
            "0.1, or delete the checkpoint and the output to start over"
        )
    if isinstance(version, int) and not isinstance(version, bool) and version > CHECKPOINT_VERSION:
        # A rolling upgrade: a later release began this export (or shard). It was "not a
        # checkpoint file", and the user deleted it and started over.
        raise InvalidRequestError(
            f"checkpoint {str(path)!r} was written by a later release of dmhub_async "
            f"(checkpoint version {version}; this release reads version {CHECKPOINT_VERSION}): "
            "finish the export with that release (upgrade this machine), or delete the "
            "checkpoint and the output to start over"
        )
    try:
        if version not in (_FULL_ID_LIST_VERSION, CHECKPOINT_VERSION):
            raise ValueError(version)
        checkpoint = _written(_converter.structure(data, Checkpoint))
        # An earlier release's, the whole list recorded, compared as its digest: it resumes.
        # A list that is no ids (an edited checkpoint) raised a raw ValueError from int().
        recorded = recorded_scope(checkpoint.scope)
    except (ValueError, TypeError, KeyError, cattrs.BaseValidationError):
        # Said what to do, as every other refusal of a checkpoint says: a damaged one (empty,
        # cut short) left the user with no way on but guessing.
        raise InvalidRequestError(
            f"checkpoint {str(path)!r} is not a checkpoint file (empty, damaged, or another "
            "file): give the one the export wrote to resume it, or delete it to start over"
        ) from None
    if recorded.dest != scope.dest and moved_with_it(path, recorded.dest, scope.dest):
        recorded = attrs.evolve(recorded, dest=scope.dest)
    differences = recorded.differences(recorded_scope(scope))
    if differences:
        raise InvalidRequestError(
            f"checkpoint {str(path)!r} belongs to another export ({'; '.join(differences)}): "
            "delete it to start over"
        )
    return checkpoint
