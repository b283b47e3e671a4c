"""The sharded export's directory: one part file per shard and ``manifest.json``.

The manifest is the plan and its outcome: each shard's window, file, count and status, and the
whole export's status, ``complete`` only when every shard is. It also records where the export
came from (base URL, app id, filters, format), so a rerun that would mix two environments or two
selections in one directory is refused. It is written by the one process that coordinates the
export (never by the workers), atomically: a crash leaves the old manifest or the new one.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import operator
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from csv import Error as CSVError
from csv import reader as csv_reader
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

import attrs
import cattrs
import orjson

from .._atomic import open_to_read, replace_file, replacing
from .._auth import normalise_base_url
from .._converter.scalars import parse_timestamp
from .._exceptions import InvalidRequestError
from .._retry import http_date
from .._threads import on_thread
from .._validate import _as_int, check_flag, check_number, check_path_type, short
from .._words import counted
from ..export._checkpoint import ExportScope, loads_checkpoint, recorded_scope
from ..export._export import FORMAT_OF_SUFFIX, Verify, check_output_name
from ..export._output import (
    REPLACED_BESIDE,
    _lock,
    _release,
    _sweep,
    check_path,
    denied,
    looping,
    looping_link,
)
from ..resources._filters import EMPTY_STAGE, customer_filter_params
from ._csv_merge import Rewrite, Union, header_names, read_header, same_export, whole_header
from ._plan import ListedIds, Shard, _aware, _seconds

logger = logging.getLogger("dmhub_async")

__all__ = [
    "ID_LIST_NAME",
    "LEFT_ON_THE_QUEUE",
    "MANIFEST_NAME",
    "LateCheck",
    "Manifest",
    "ManifestWriter",
    "ShardOutcome",
    "id_list_file",
    "merge",
    "part_digest",
    "part_name",
]

MANIFEST_NAME = "manifest.json"
#: 1: up to and including the release before the id lists' files (0.1.0 too).
#: 2: a plan of an ``id_list``: the list in :data:`ID_LIST_NAME` (its digest in the filters),
#: each shard naming its slice; written only then, so a plan of windows earlier releases read.
MANIFEST_VERSION = 2
#: The version of a manifest of ``dateCreated`` windows alone.
_WINDOWS_VERSION = 1
#: The file beside the manifest that holds a sharded export's ``id_list``, one id a line
#: (repeats dropped), written once, when planned: the manifest held the whole list once per
#: shard and once more (63 MB for 8 shards of 300,000 ids, rewritten as each shard ended).
ID_LIST_NAME = "id_list.txt"
Status = Literal["pending", "running", "complete", "incomplete", "failed"]


def part_digest(path: Path) -> tuple[int, str]:
    """The size and SHA-256 (hex) of the part at ``path``, read once (blocking work)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
        return fh.tell(), digest.hexdigest()


def id_list_file(path: Path, digest: str) -> bytes | None:
    """The text of the id list's file at ``path`` if it is the list of ``digest`` (b"" if it
    is not), None if there is none; InvalidRequestError if it is no regular file. Blocking.

    Read once, whole, and the text read hashed: the text kept is the text checked, whatever
    is written over the file meanwhile. (It was hashed as it was streamed, then read again and
    hashed again, to that end: twice the reading and hashing, 55 ms for 3,000,000 ids.)"""
    try:
        # Not blocking: a named pipe put there waited for a writer for ever (the shard never
        # ended); opened so, it is refused below with any other file that is not one.
        fh, info = open_to_read(path)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise _not_the_list(path) from None
    with fh:
        if not stat.S_ISREG(info.st_mode):
            # A device (a link to /dev/zero was read until memory ran out), a pipe.
            raise _not_the_list(path)
        size = info.st_size
        if size > _LIST_HEAD:
            # A list's file is digits and line ends alone: another file of gigabytes in its
            # place (a disk image, one written over it) is refused by its first MiB, not
            # read whole into memory first.
            if fh.read(_LIST_HEAD).translate(None, b"0123456789\n"):
                return b""  # not the list
            fh.seek(0)  # os.pread would spare this, but Windows has none
        # As long as it was when opened: one growing (or cut) since is not read past that.
        text = fh.read(size + 1)
        if len(text) != size or "sha256:" + hashlib.sha256(text).hexdigest() != digest:
            return b""  # not the list, or changed while it was read
        return text


#: The bytes of an id list's file checked to be digits and line ends before it is read whole.
_LIST_HEAD = 1 << 20


def _not_the_list(path: Path) -> InvalidRequestError:
    """The error for an id list's file that is no regular file (a pipe, a device, a directory)."""
    return InvalidRequestError(
        f"{path} is not a regular file, so not the id list this export was planned "
        "with: put the export's own back, or export to a new directory"
    )


#: The last shard index a part's five digits name (no plan has more than MAX_SHARDS shards).
_LAST_PART: Final = 99_999


def part_name(index: int, fmt: str) -> str:
    """``part-00003.jsonl``: the file of shard 3 (an index from 0: -1 was ``part--0001``, a
    file no manifest names, and True shard 1's; to 99999: 100000 was out of the parts' order,
    10**300 a name no file system holds). An integer of a class of its own (numpy's
    ``int64``) is taken as the int its ``__index__`` gives, as a customer id is."""
    number = index if type(index) is int else _as_int(index)
    if number is None or not 0 <= number <= _LAST_PART:
        check_number(
            "part_name(): index",
            index if number is None else number,
            0,
            inclusive=True,
            kind=int,
            high=_LAST_PART,
        )
    return f"part-{number:05d}.{fmt}"


def checkpoint_name(index: int, fmt: str) -> str:
    """The shard's checkpoint, beside its part on the storage every worker shares."""
    return f"{part_name(index, fmt)}.ckpt"


@attrs.define
class ShardOutcome:
    """One shard of the manifest: its window and what became of it."""

    shard: Shard
    file: str
    status: Status = "pending"
    exported: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    error: str | None = None
    #: The part's size in bytes when its export ended: a part deleted or cut short since is
    #: found (None in a manifest written before this was recorded).
    size: int | None = None
    #: The part's SHA-256 (hex, what ``sha256sum`` prints) when its export ended: a part
    #: edited, or swapped with another of the same size, is found by ``merge`` (None in a
    #: manifest written before this was recorded).
    sha256: str | None = None
    #: Retries the requests of the run that last exported this shard took (its report's
    #: ``retries``: pages, counts, a resume's search, the final check); None when not
    #: counted: a shard not exported yet, a manifest written before this was recorded, a
    #: shard a worker (or coordinator) of an earlier release exported, which sends none, or
    #: one that failed without saying (its worker died). A failed export's error carries its
    #: retries (``retries_of``): they are counted.
    retries: int | None = None
    #: Whether the run that last exported this shard took its part up from its checkpoint
    #: (its report's ``resumed``), None when not said: a shard not exported yet, or by a
    #: worker (or coordinator) of an earlier release.
    resumed: bool | None = None
    #: Customers the part held when that run took it up (its report's ``exported_before``:
    #: 0 when it started afresh), None when not said.
    exported_before: int | None = None
    #: The service's count of the shard's customers when that run began (or when the export
    #: it resumed did) and as it ended (its report's ``count_before`` and ``count_after``);
    #: None when not counted, or not said (an earlier release's worker).
    count_before: int | None = None
    count_after: int | None = None
    #: Whether that run's final check (an id-only walk of the shard's window or slice) ran
    #: at its end: always with ``verify="always"``, with ``auto`` when its walk saw customers
    #: change or it resumed. None when not said: a shard not exported yet, or by a worker (or
    #: coordinator) of an earlier release.
    checked: bool | None = None

    @property
    def counted(self) -> int | None:
        """The service's last count of the shard's customers (as its export ended), or None."""
        return self.count_after if self.count_after is not None else self.count_before

    def part_changed(self, directory: Path) -> str | None:
        """Why this complete shard's part no longer holds what was exported, or None."""
        part = directory / self.file
        if _regular_file(part) is None:
            return f"{self.file} {not_a_part(part)}"
        size = part.stat().st_size
        if self.size is not None and size != self.size:
            return f"{self.file} holds {counted(size, 'byte')}, {self.size:,} when it was exported"
        return None


@attrs.frozen
class LateCheck:
    """What the late check of a sharded export's last window found (``late_check``)."""

    #: The part checked (the last window's).
    file: str
    #: Customers appended to it: created after its shard ended.
    added: int
    #: Whether the check showed every customer of the window is in the part (False: they
    #: changed during every walk of it; the shard is ``incomplete`` until a rerun checks again).
    verified: bool
    #: The service's count of the window as the check ended.
    count: int | None
    #: Retries its requests took.
    retries: int


@attrs.define
class Manifest:
    """``manifest.json`` of a sharded export directory."""

    format: str
    base_url: str
    app_id: str | None
    filters: dict[str, Any]
    shards: list[ShardOutcome]
    version: int = MANIFEST_VERSION
    #: This plan's own name: the queue's jobs carry it, so a result a job of an earlier
    #: export in the same directory left in Redis is never taken for this one's.
    plan_id: str = ""
    #: Retries the plan's count probes took (:func:`plan_shards`), made once, when the
    #: directory was planned; None when not counted: a manifest of an earlier release (0.1.0,
    #: whose coordinator also drops it rewriting this release's).
    plan_retries: int | None = None
    #: A plan of an ``id_list``: the ids :data:`ID_LIST_NAME` holds (its ``sha256:<hex>`` is
    #: the filters' ``id_list``); None for a plan of windows.
    id_list_length: int | None = None
    #: The number of shards the plan was made for (``plan_shards``' ``n``, ``--shards``): a
    #: plan of windows may hold more (a dense second's window) or fewer (edges fallen
    #: together), so a rerun's count is compared with this. None: a manifest of an earlier
    #: release, or one it rewrote.
    shards_asked: int | None = None
    #: When the shards' final checks run (``verify``, ``--verify``): ``"always"`` once any run
    #: of the export asked for it, kept by every rerun (one without it checked the shards it
    #: started with ``auto``, saying nothing), else the first run's. None: a manifest of an
    #: earlier release (or one it rewrote), which does not say.
    verify: Verify | None = None
    #: When (UTC, to the second: this machine's clock, or the service's when its answers'
    #: Date is earlier, :func:`seen_whole`) the plan's last window was last seen whole: the
    #: plan, then each late check that passed. Every customer of that window created before
    #: then is in its part once its shard is complete; the late check runs while the window's
    #: end is later than this (less a margin for a service that sends no Date). None: a plan
    #: of an ``id_list``, or a manifest of an earlier release (or one it rewrote), whose last
    #: window is then checked once.
    last_window_seen_at: datetime | None = None
    #: Retries the last late check took (its own, replaced by the next one's: added to the
    #: last shard's, every rerun of a complete export grew the export's count for good). None:
    #: no late check has run, or a manifest of an earlier release (or one it rewrote).
    late_check_retries: int | None = None
    #: What this run's late check of the last window found (not written in the file): None
    #: when none ran.
    late_check: LateCheck | None = attrs.field(default=None, eq=False)

    def __repr__(self) -> str:
        # attrs' repr was every shard's window, file, digest and counts: 3,440 characters for
        # 8 shards, 27,000 for 64, in a debugger or a log line of export_sharded's result.
        done = sum(s.status == "complete" for s in self.shards)
        return (
            f"<Manifest {self.status()}: {self.format}, {counted(len(self.shards), 'shard')} "
            f"({done} complete), {self.exported:,} exported of {self.planned:,} planned, "
            f"base_url={self.base_url!r}, app_id={self.app_id!r}>"
        )

    @property
    def complete(self) -> bool:
        """Every shard exported and verified complete."""
        return bool(self.shards) and all(s.status == "complete" for s in self.shards)

    @property
    def exported(self) -> int:
        """Customers written, all parts together."""
        return sum(s.exported for s in self.shards)

    @property
    def retries(self) -> int:
        """Retries the export took, all together: its plan's count probes
        (:attr:`plan_retries`), each shard's export (its last run's) and the last late check
        (:attr:`late_check_retries`). What was not counted, None, adds none."""
        shards = sum(s.retries or 0 for s in self.shards)
        return (self.plan_retries or 0) + shards + (self.late_check_retries or 0)

    @property
    def planned(self) -> int:
        """Customers counted when the shards were planned."""
        return sum(s.shard.planned_count for s in self.shards)

    @property
    def counted(self) -> int | None:
        """Customers the service counted in the shards as their exports ended (each one's
        last count), None unless every shard's export ran to its end and said it.

        The plan's count (:attr:`planned`) is of the moment the directory was planned:
        customers created or deleted since are in no count the plan made."""
        counts = [s.counted for s in self.shards if s.status in ("complete", "incomplete")]
        if len(counts) != len(self.shards) or None in counts:
            return None
        return sum(c for c in counts if c is not None)

    def status(self) -> str:
        """``complete`` or ``incomplete``: the whole export's status."""
        return "complete" if self.complete else "incomplete"

    @classmethod
    def new(
        cls,
        shards: Sequence[Shard],
        *,
        fmt: str,
        base_url: str,
        app_id: str | None,
        filters: dict[str, Any],
        plan_retries: int | None = None,
        shards_asked: int | None = None,
        verify: Verify | None = None,
        served: str | None = None,
    ) -> Manifest:
        """A manifest of shards planned and not yet exported (``plan_retries``: the retries
        planning them took, None when not counted; ``shards_asked``: the ``n`` they were
        planned for). Its last window is seen whole as of now (``last_window_seen_at``): its
        shard is exported after this; or as of ``served``, the ``Date`` of an answer to the
        planning, if that is earlier (:func:`seen_whole`).

        Shards of an ``id_list`` are kept naming their slices alone, ``filters["id_list"]``
        the list's digest: the list itself is written beside the manifest, once
        (:data:`ID_LIST_NAME`, by :func:`~dmhub_async.shards._run.prepare`)."""
        length = None
        if shards and shards[0].id_slice is not None:
            length = shards[-1].id_slice[1] if shards[-1].id_slice else None
            filters = {**filters, "id_list": shards[0].id_list_sha256}
        return cls(
            format=fmt,
            base_url=base_url,
            app_id=app_id,
            filters=filters,
            shards=[ShardOutcome(s.without_ids(), part_name(s.index, fmt)) for s in shards],
            version=MANIFEST_VERSION if length is not None else _WINDOWS_VERSION,
            plan_id=secrets.token_hex(8),
            plan_retries=plan_retries,
            id_list_length=length,
            shards_asked=shards_asked,
            verify=verify,
            last_window_seen_at=None if length is not None else seen_whole(utc_now(), served),
        )

    def take_verify(self, verify: Verify) -> tuple[Verify, bool]:
        """The ``verify`` a run of this export goes on with, asked ``verify``: ``"always"``
        if this run or an earlier one asked for it (the parts complete before were checked
        so, and a rerun without ``--verify`` checked only those it resumed); and whether the
        manifest changed (it records the run's)."""
        kept: Verify = "always" if "always" in (verify, self.verify) else verify
        changed = kept != self.verify
        self.verify = kept
        return kept, changed

    def settings_changed(self, *, fmt: str, base_url: str, app_id: str | None) -> list[str]:
        """The names of the settings (``format``, ``base_url``, ``app_id``) given otherwise
        than this manifest records them, the base URLs compared in one spelling."""
        mine = {
            "format": self.format,
            "base_url": one_spelling(self.base_url),
            "app_id": self.app_id,
        }
        theirs = {"format": fmt, "base_url": one_spelling(base_url), "app_id": app_id}
        return [k for k in mine if mine[k] != theirs[k]]

    def check_same_export(
        self, *, fmt: str, base_url: str, app_id: str | None, filters: dict[str, Any]
    ) -> None:
        """Refuse to carry on this manifest's export with other settings.

        The base URLs are compared in one spelling (the host's case, a default port), as the
        token store and a part's checkpoint compare them: a rerun from a machine that spelled
        the service otherwise was refused, told to delete the directory.
        """
        changed = self.settings_changed(fmt=fmt, base_url=base_url, app_id=app_id)
        recorded, given = _as_compared(self.filters), _as_compared(filters)
        if recorded != given:
            # Each by its keyword: "other filters" alone sent the user through every one.
            changed.append(f"filters ({'; '.join(_filter_changes(recorded, given))})")
        if changed:
            raise InvalidRequestError(
                f"the directory holds a sharded export with other {', '.join(changed)}: "
                "use a new directory (or delete this one) to start another export"
            )

    # -- files ---------------------------------------------------------------------------------

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``manifest.json`` atomically (a temp file of an unpredictable name, renamed)."""
        path = Path(directory) / MANIFEST_NAME
        replace_file(path, self._encoded())
        return path

    def _encoded(self) -> bytes:
        """``manifest.json``'s bytes, as :meth:`write` writes them."""
        raw = _converter.unstructure(self)
        raw.pop("late_check", None)  # this run's alone
        if raw["id_list_length"] is None:
            del raw["id_list_length"]  # a plan of windows: as earlier releases wrote it
        if raw["shards_asked"] is None:
            del raw["shards_asked"]  # not known: written as the manifest was read
        if raw["verify"] is None:
            del raw["verify"]  # not said: written as the manifest was read
        if raw["last_window_seen_at"] is None:
            del raw["last_window_seen_at"]  # not known: written as the manifest was read
        if raw["late_check_retries"] is None:
            del raw["late_check_retries"]  # none ran: written as earlier releases wrote it
        data = orjson.dumps({**raw, "status": self.status()}, option=orjson.OPT_INDENT_2)
        return data + b"\n"

    def _copier(self) -> Callable[[], Manifest]:
        """A function making a copy of this manifest as it is now, to call on a thread.

        What the coordinator's tasks change as shards end (the outcomes' fields) is read here,
        on the loop, in one go (1 ms for 4,096 shards); the copy is built from it elsewhere. Read
        on the thread, an outcome could be written half updated (complete, without its digest).
        """
        values = [_OUTCOME_FIELDS(outcome) for outcome in self.shards]
        return lambda: attrs.evolve(self, shards=[ShardOutcome(*v) for v in values])

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> Manifest | None:
        """The directory's manifest, or None when it has none."""
        path = Path(directory) / MANIFEST_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise InvalidRequestError(f"{path} is not a manifest this SDK wrote: {err}") from None
        _check_not_later(path, data)
        try:
            data.pop("status", None)
            manifest = _converter.structure(data, cls)
            manifest._check_layout()
        except cattrs.BaseValidationError as err:
            # Where, not "While structuring Manifest (1 sub-exception)": which of its lines.
            where = "; ".join(cattrs.transform_error(err)[:3])
            raise InvalidRequestError(f"{path} is not a manifest this SDK wrote: {where}") from None
        except (
            AttributeError,
            TypeError,  # a JSON array: list.pop("status", None)
            ValueError,  # InvalidRequestError too: a Shard that is no window
        ) as err:
            raise InvalidRequestError(f"{path} is not a manifest this SDK wrote: {err}") from None
        return manifest

    def _check_layout(self) -> None:
        """The plan as :meth:`new` lays it out, or ValueError: shards 0 to n-1 in order, each
        in its own part file, windows that follow each other without a gap or an overlap.

        An edited manifest (two shards with one window, a part file named for another shard)
        was exported and merged as complete with customers twice and others never.
        """
        of_ids = self.id_list_length is not None
        if self.version != (
            MANIFEST_VERSION if of_ids else _WINDOWS_VERSION
        ) or self.format not in ("jsonl", "csv"):
            raise ValueError(f"version {self.version!r}, format {self.format!r}")
        if not self.shards:
            raise ValueError("no shards")
        _check_count("plan_retries", self.plan_retries)
        _check_count("late_check_retries", self.late_check_retries)
        _check_count("id_list_length", self.id_list_length)
        _check_count("shards_asked", self.shards_asked)
        if self.verify not in (None, "auto", "always"):
            raise ValueError(f"verify {self.verify!r}")
        for i, outcome in enumerate(self.shards):
            shard = outcome.shard
            # What the manifest is written back with (orjson: 64 bits): a count edited past
            # it was read, and the rerun stopped at its end with a raw TypeError.
            for name in (
                *("exported", "duplicates", "size", "retries", "exported_before"),
                *("count_before", "count_after"),
            ):
                _check_count(f"shard {i}'s {name}", getattr(outcome, name))
            _check_count(f"shard {i}'s planned_count", shard.planned_count)
            if shard.index != i or outcome.file != part_name(i, self.format):
                raise ValueError(f"shard {i} is shard {shard.index} in {outcome.file!r}")
            if of_ids:
                self._check_slice(i, shard)
            elif shard.id_slice is not None:
                raise ValueError(f"shard {i} names ids of a list the manifest has not")
            elif i and self.shards[i - 1].shard.end != shard.start:
                raise ValueError(f"shard {i} does not start where shard {i - 1} ends")
        if of_ids and (self.shards[-1].shard.id_slice or (0, 0))[1] != self.id_list_length:
            raise ValueError(f"the shards do not end at the list's end, {self.id_list_length}")
        first, last = self.shards[0].shard, self.shards[-1].shard
        if of_ids:
            last = first  # every shard has the export's window (checked above)
        # The export's range, as plan_shards cuts it: from its first second, to the second
        # after its last. An edited first or last window (an earlier start, a later end) was
        # exported as the export's own, customers it never selected included.
        start, end = self.filters.get("date_created_from"), self.filters.get("date_created_to")
        if _second(first.start) != _second(start) or _second(last.end) != _second(end, 1):
            raise ValueError("the windows do not span the export's dateCreated range")
        # Every shard walks with the export's other filters: one edited (stage="vip" gone)
        # exported every customer of its window as the export's, and the whole as complete.
        others = {
            name: value
            for name, value in self.filters.items()
            if name not in ("date_created_from", "date_created_to")
            and not (of_ids and name == "id_list")  # its digest: each shard has its slice
        }
        for i, outcome in enumerate(self.shards):
            if dict(outcome.shard.filters) != others:
                raise ValueError(f"shard {i} has other filters than the export's")

    def _check_slice(self, i: int, shard: Shard) -> None:
        """Shard ``i`` of a plan of an ``id_list``, or ValueError: the list's ids from where
        shard ``i - 1``'s end (0 for the first), without them, in the export's one window."""
        before = self.shards[i - 1].shard if i else None
        first = before.id_slice[1] if before is not None and before.id_slice else 0
        if shard.id_slice is None or shard.id_slice[0] != first or not shard.detached:
            raise ValueError(f"shard {i} is not the slice of the id list after shard {i - 1}'s")
        if shard.id_list_sha256 != self.filters.get("id_list"):
            raise ValueError(f"shard {i} is of another id list than the export's")
        if before is not None and (before.start, before.end) != (shard.start, shard.end):
            raise ValueError(f"shard {i} has another dateCreated window than shard {i - 1}")


def utc_now() -> datetime:
    """This machine's clock now, UTC, to the second (down): when a plan or a late check saw
    the last window whole."""
    return datetime.now(timezone.utc).replace(microsecond=0)


def seen_whole(now: datetime, served: str | None) -> datetime:
    """When the last window was seen whole: ``now`` (:func:`utc_now`, read before the walks),
    or the service's time as an answer's ``Date`` (``served``) says it, if that is earlier.

    The service stamps a customer's creation by its own clock: one more than
    ``CLOCK_MARGIN`` behind this machine's had a window taken for seen whole before it ended
    by the service's clock, and a customer created in its last minutes was in no part, every
    rerun saying the export complete without it.
    """
    when = None if not served else http_date(served)  # a datetime's: finite
    if when is None:
        return now
    try:
        by_service = datetime.fromtimestamp(int(when), timezone.utc)
    except (OverflowError, OSError, ValueError):  # a year no datetime holds
        return now
    return min(now, by_service)


def _check_count(name: str, value: int | None) -> None:
    """A count a manifest records (None: not recorded), or ValueError: 0 to 2**63 - 1."""
    if value is not None and not 0 <= value < 1 << 63:
        raise ValueError(f"{name} {value} is no count")


def _second(moment: datetime | str | None, after: int = 0) -> int | None:
    """A window's edge, or a bound a manifest records (an ISO string), as its UTC second (plus
    ``after``); None for no edge."""
    if isinstance(moment, str):
        moment = _aware(moment)  # as a shard's own bounds are read; ValueError: edited
    return None if moment is None else _seconds(moment) + after  # TypeError: edited


def _check_not_later(path: Path, data: Any) -> None:
    """Refuse a manifest of a later release, saying so (before its shape is read).

    A rolling upgrade run backwards (this release on a directory a later one planned): it was
    "not a manifest this SDK wrote", and the user took the directory for another program's.
    """
    version = data.get("version") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > MANIFEST_VERSION:
        raise InvalidRequestError(
            f"{path} was written by a later release of dmhub_async (manifest version "
            f"{version}; this release reads version {MANIFEST_VERSION}): run that release on "
            "this directory (upgrade this machine), or export to a new directory"
        )


def _exact(kind: type, *also: type) -> Callable[[Any, Any], Any]:
    """A structure hook that takes a value of ``kind`` (or ``also``) as it is, and no other.

    cattrs' own calls ``int()``, ``float()``, ``str()``: a count edited to ``"12"``, ``1.5``
    or ``true`` was read as 12, 1 and 1, a ``seconds`` of ``"1.5"`` as 1.5."""

    def structure(value: Any, _: Any) -> Any:
        if type(value) is not kind and type(value) not in also:
            raise ValueError(f"{short(value)} is no {kind.__name__}")
        return kind(value)

    return structure


_converter = cattrs.Converter()
_converter.register_structure_hook(int, _exact(int))
_converter.register_structure_hook(float, _exact(float, int))
_converter.register_structure_hook(str, _exact(str))
_converter.register_structure_hook(bool, _exact(bool))
_converter.register_unstructure_hook(Shard, lambda shard: shard.to_dict())
_converter.register_unstructure_hook(datetime, datetime.isoformat)
_converter.register_structure_hook(datetime, lambda text, _: _aware(_exact(str)(text, str)))
_converter.register_structure_hook(Shard, lambda data, _: Shard.from_dict(data))
#: An outcome's fields in the order ShardOutcome takes them.
_OUTCOME_FIELDS = operator.attrgetter(*(field.name for field in attrs.fields(ShardOutcome)))


class ManifestWriter:
    """A coordinator's ``manifest.json`` writes, from the event loop: on a thread, in turn.

    The coordinator writes the manifest after every shard: encoded, written and synced on the
    loop, 3 ms (8 shards) to 66 ms (4,096 shards) a write held every other coroutine (the
    shards' exports of ``export_sharded``). Each write takes the manifest as it is when its
    turn comes, one after another: two on threads at once could rename an older one last.

    A write asked for while another is under way waits for the next, which takes the manifest
    as it is then: the calls made meanwhile are done by that one write. Each shard that ended
    waited for a write of its own: 1,000 shards of a few ids each wrote the manifest (670 KB)
    1,002 times, 22 s of the export's 39 s, each shard holding its place meanwhile.
    """

    def __init__(self, manifest: Manifest, directory: str | os.PathLike[str]) -> None:
        self._manifest, self._directory = manifest, directory
        self._turn = asyncio.Lock()
        self._asked = 0  # write() calls so far
        self._done = 0  # the calls made before the last write's copy, which it recorded
        self._written: bytes | None = None  # what this writer wrote last

    async def write(self) -> None:
        """Write the manifest as it is now (:meth:`Manifest.write`, on a thread), unless a
        write that took it after this call is done by the time this one's turn comes, or the
        manifest is as this writer wrote it last (a run's end after its late check wrote it:
        the whole manifest written and synced again for nothing)."""
        self._asked += 1
        asked = self._asked
        async with self._turn:
            if self._done >= asked:
                return
            copy, covered = self._manifest._copier(), self._asked
            await on_thread(self._write_if_changed(copy))
            self._done = covered

    def _write_if_changed(self, copy: Callable[[], Manifest]) -> Callable[[], None]:
        def write() -> None:
            data = copy()._encoded()
            if data != self._written:
                replace_file(Path(self._directory) / MANIFEST_NAME, data)
                self._written = data

        return write


def _filter_changes(recorded: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """``stage: 'vip' in the directory's export, 'lead' now`` for each filter that differs
    (an id list as ``id_list: other ids``: a list is not quoted)."""
    said = []
    for name in dict.fromkeys([*recorded, *given]):
        was, now = recorded.get(name), given.get(name)
        if was == now:
            continue
        if name == "id_list" and was is not None and now is not None:
            said.append("id_list: other ids")
            continue
        was_said, now_said = ("none" if v is None else repr(v) for v in (was, now))
        if name == "id_list":
            was_said, now_said = ("none" if v is None else "a list" for v in (was, now))
        said.append(f"{name}: {was_said} in the directory's export, {now_said} now")
    return said


def one_spelling(base_url: object) -> object:
    """``base_url`` in one spelling (the host's case, a default port), as the token store keys
    it and a checkpoint records it; as it is when it is no URL that reads (a job's, say)."""
    try:
        return normalise_base_url(base_url) if isinstance(base_url, str) else base_url
    except (InvalidRequestError, ValueError):
        return base_url


def _as_compared(filters: dict[str, Any]) -> dict[str, Any]:
    """An export's filters as two runs are compared: an ``id_list`` as the set of its ids, a
    ``stage`` and a ``select`` as they are sent.

    Each shard walks its ids by id, each once, so the same ids in another order (a set, a
    query without ORDER BY) or with repeats are the same export; the shards go on with the
    filters the manifest recorded. ``stage=""`` is ``EMPTY_STAGE``, and ``select="name,mobile"``
    (or ``["id", "name", "mobile"]``, or the wire's ``dateJoin`` for ``date_join``) is the
    CLI's ``--select name,mobile``: each was refused as "other filters", where a single-file
    export's checkpoint, which records the query as sent, resumed.
    """
    compared = dict(filters)
    for name in ("stage", "select"):
        if compared.get(name) is not None:
            try:
                sent = customer_filter_params("export_sharded", {name: compared[name]})
            except InvalidRequestError:  # not one this SDK sends: compared as it is
                continue
            compared[name] = sent[name]
    ids = compared.get("id_list")
    if not isinstance(ids, list):
        return compared
    try:
        return {**compared, "id_list": frozenset(ids)}
    except TypeError:  # not hashable: not ids this SDK sends; compared as they are
        return compared


_SAID: Final = {"csv": ("a CSV file", "CSV"), "jsonl": ("a JSON lines file", "JSON lines")}


def check_named_as(dest: Path, fmt: str, label: str | None = None) -> None:
    """Refuse a merge's ``dest`` whose name says the other format than the parts': a JSONL
    export merged into ``all.csv`` was JSON lines under the CSV's name; or JSON, a format
    neither is (``all.json``: a JSON reader failed at its second line; ``export --out
    all.json`` refuses the name). A name that says no format (``all.txt``) is the caller's
    to choose. ``label``: how the message names it (the CLI's ``--out all.csv``)."""
    said = dest.name if label is None else label
    if dest.suffix.lower() == ".json":
        raise InvalidRequestError(
            f"{said} names a JSON document, and the export's parts are {_SAID[fmt][1]},"
            f" which JSON readers fail on: name it {dest.stem}.{fmt}"
        )
    named = FORMAT_OF_SUFFIX.get(dest.suffix.lower())
    if named is not None and named != fmt:
        raise InvalidRequestError(
            f"{said} names {_SAID[named][0]}, and the export's parts are {_SAID[fmt][1]}:"
            f" name it {dest.stem}.{fmt}, or export again in the format you want"
        )


def merged_into_itself(directory: str | os.PathLike[str], dest: str | os.PathLike[str]) -> bool:
    """Whether a merge's ``dest`` is the export's directory or inside it (its manifest, a
    part): :func:`merge` refuses it, the CLI with its usage error."""
    # realpath, not resolve(): a link loop on the way raised RuntimeError out of merge()
    where, into = Path(os.path.realpath(directory)), Path(os.path.realpath(dest))
    return into == where or where in into.parents


def merge(
    directory: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    allow_incomplete: bool = False,
) -> int:
    """Concatenate a sharded export's parts into ``dest``, in shard order; the records written.

    A CSV has one header, the parts' columns with the ``attr.*`` columns of every part
    merged (each part has its own first page's keys: ``_csv_merge``; a part left out adds
    none); a part of other columns is written again under it, a key its ``attr`` JSON cell
    holds moved to the key's column. A record whose quoted field holds line breaks counts
    once. ``dest`` is written to a temp file
    beside it and moved into place at the end, so a failed merge leaves no half file; it gets
    the mode a plain ``open()`` gives (0666 less the umask), as the parts do. With
    ``allow_incomplete``, a part that is not complete goes in as far as its checkpoint covers
    (one whose export ended in MISMATCH, as it was then: what its checkpoint covers checked
    against it, one shorter than it was then left out), in whole lines: a record its worker
    was killed writing is left out; its checkpoint must be of its shard (the shard's window,
    filters and slice of the id list, the manifest's service and app); without one, each of
    its records' ``dateCreated`` must be in its shard's window, its id in its slice, and its
    ``stage``, ``source``, ``gender``, ``mobile`` and ``email`` (those it holds) of the
    export's filters. A complete part is
    still checked (its SHA-256), and goes in as it was exported, without what was appended
    since; one shorter than it was exported is left out, with a warning (cut short since, or
    another export's: no check tells them apart).

    Blocking file work (0.3 s for 100,000 customers, 83 MB; a CSV part written again under
    the merged header, 1.2 s for 100,000): from async code, run it on a
    thread, ``await asyncio.to_thread(merge, directory, dest)``, or the event loop stands still
    until it ends.

    Raises:
        InvalidRequestError: ``allow_incomplete`` not True or False; ``dest`` inside
            ``directory``, not a regular file (a symbolic link,
            a named pipe, a device, a directory), in no writable folder, or named as the other
            format (``all.csv`` for JSON lines parts) or as JSON (``all.json``), no manifest, a
            part missing, the export not complete, or a complete part changed since it was
            exported: its size (these unless ``allow_incomplete``), or its content (the SHA-256
            the manifest records); a CSV part whose columns, ``attr.*`` aside, are not the first
            part's (another export's); a CSV record that is not one of its part's header's
            columns; an unfinished part whose checkpoint is of another export, or without one,
            holding a customer created outside its shard's window (or of another filter), or, of
            an id list, cannot be checked (``id_list.txt`` missing or changed); a part replaced
            or removed between its checks and its copy (a named pipe there is never waited on,
            nor a checkpoint that is one).
        OSError: the manifest, a part or a checkpoint cannot be read (a ``PermissionError``
            naming the file), or ``dest`` cannot be written once begun (a full disk), as
            :func:`~dmhub_async.export.export_customers` raises one.
    """
    # "false" (a setting read as text) was true: a part cut short went in as far as it went.
    check_flag("merge", "allow_incomplete", allow_incomplete)
    check_path_type("merge", "directory", directory)
    check_path_type("merge", "dest", dest)
    return merge_parts(directory, dest, allow_incomplete=allow_incomplete)[0]


def unmergeable(
    directory: str | os.PathLike[str], takes: str, *, takes_when_denied: bool = True
) -> str | None:
    """Why merge cannot read ``directory``, said before it tries, or None (a directory that is
    not there at all is its caller's to say): one this user may not enter (a raw error of its
    manifest.json, or "no such directory"), a link to a directory not there ("is a file" of no
    file, or "no such directory" of a link the user could see), or a file (the export's file, or
    a part, given for its directory: a raw NotADirectoryError of "june.jsonl/manifest.json"; a
    named pipe, a socket or a device said as one).
    ``takes``: what merge takes, in the caller's words (said of a denied one too when
    ``takes_when_denied``). Each path quoted as ``check_path`` quotes a file's (``repr``): a
    newline in a name split the line."""
    within = Path(directory) / MANIFEST_NAME
    named = repr(os.fspath(directory))
    try:
        os.lstat(within)
    except PermissionError:
        said = f" ({takes})" if takes_when_denied else ""
        return f"{named} cannot be read, {denied(within)}{said}"
    except OSError as err:  # none there, or a file: said below
        if err.errno == errno.ENAMETOOLONG:  # the same: "no such directory", or raw
            return f"{named} cannot be read: {err.strerror}: {takes}"
        # A link on the way that leads back to itself: "no such directory", or a raw OSError
        # of its manifest.json out of merge().
        if (link := looping(Path(directory))) is not None:
            return f"{named} cannot be read: {str(link)!r} is {looping_link(link)}: {takes}"
    if os.path.islink(directory) and not os.path.exists(directory):
        target = os.readlink(directory)
        return f"{named} is a symbolic link to {target!r}, which does not exist: {takes}"
    if os.path.lexists(directory) and not os.path.isdir(directory):
        try:  # a named pipe, a socket or a device is said as what it is, not as "a file"
            mode = os.stat(directory).st_mode
        except OSError:
            mode = stat.S_IFREG
        kind = next((name for test, name in _KINDS if test(mode)), "a file")
        return f"{named} is {kind}, not a directory: {takes}"
    return None


def merge_parts(
    directory: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    allow_incomplete: bool = False,
    replace: bool = True,
) -> tuple[int, list[str]]:
    """:func:`merge`, and the parts that went into ``dest`` (their files, in shard order):
    with ``allow_incomplete``, a part missing or cut short is left out, and a report of the
    merge counts only the parts that are in it (the CLI's final checks). ``replace`` false: a
    file another program put at ``dest`` while the parts were copied is kept, and
    ``FileExistsError`` naming it raised (the CLI without ``--force``)."""
    check_output_name(Path(dest))
    if merged_into_itself(directory, dest):
        # Only the CLI refused it: merge() wrote over the manifest (the plan lost, the
        # directory refused from then on as "not a manifest this SDK wrote") or over a part.
        raise InvalidRequestError(
            f"{os.fspath(dest)!r} is inside the export's directory {os.fspath(directory)!r}:"
            " merge into a file elsewhere"
        )
    # Only the CLI checked: the merged file was renamed over a symbolic link, a named pipe or
    # a device (/dev/null, as root), a missing folder was made, and a directory failed once
    # every part was copied, with a raw IsADirectoryError. As an export refuses them.
    check_path(Path(dest), "merge(): dest", beside=REPLACED_BESIDE)
    why = unmergeable(directory, "merge takes the directory export_sharded wrote")
    if why is not None:
        raise InvalidRequestError(why)
    manifest = Manifest.read(directory)
    if manifest is None:
        raise InvalidRequestError(
            f"{os.fspath(directory)!r} has no {MANIFEST_NAME}: not a sharded export"
        )
    check_named_as(Path(dest), manifest.format)
    into = os.path.realpath(dest)
    for outcome in manifest.shards:
        if os.path.realpath(Path(directory) / outcome.file) == into:
            # A part that is a link to ``dest`` (parts kept on another disk): the merged file
            # replaced the part's data, which the next merge refused by its size.
            raise InvalidRequestError(
                f"{os.fspath(dest)!r} is {outcome.file} of the export (the part is a link to it):"
                " merge into a file elsewhere"
            )
    if not manifest.complete and not allow_incomplete:
        raise InvalidRequestError(
            f"the export in {os.fspath(directory)!r} is not complete: finish it first (rerun the"
            " export), or merge what there is with allow_incomplete=True (CLI: --allow-incomplete)"
        )
    # Under the lock an export to ``dest`` takes: a merge killed (kill -9) left its temporary
    # file beside ``dest`` for ever, and it can be removed only while no live merge writes it.
    # Only a merge's ``.tmp``: a ``.part`` may be the data an export's checkpoint names.
    lock, lock_path = _lock(Path(dest), by="another export or merge", role="merge")
    try:
        _sweep(Path(dest), suffixes="tmp")
        merged: list[str] = []
        with replacing(Path(dest), output=True, replace=replace) as out:  # as the parts
            records = _copy_parts(manifest, Path(directory), out, allow_incomplete, merged)
        return records, merged
    finally:
        _release(lock, lock_path)


def _copy_parts(
    manifest: Manifest, directory: Path, out: BinaryIO, allow_incomplete: bool, merged: list[str]
) -> int:
    """Copy the parts into ``out`` in shard order, as :func:`merge` says; the records. Each
    part copied (not left out) is put in ``merged``."""
    records = 0
    first_header: tuple[list[str], str] | None = None  # a CSV's names, and its part's
    union: Union | None = None  # the merged CSV's header
    scopes = _ShardScopes(manifest, directory)
    for index, outcome in enumerate(manifest.shards):
        part = directory / outcome.file
        found = _regular_file(part)
        if found is None:
            what = not_a_part(part)  # a directory there was said to be "missing"
            if allow_incomplete:
                # Said: "merged 15,000 records" alone read as the whole export.
                logger.warning("merge: %s %s: left out", outcome.file, what)
                continue
            raise InvalidRequestError(f"{part} {what}")
        changed = outcome.part_changed(directory)
        if changed is not None and outcome.status == "complete" and not allow_incomplete:
            raise InvalidRequestError(
                f"{changed}: rerun the export, which exports that shard again"
            )
        # An unfinished part may end in a torn record (its worker killed mid-write): only
        # what its checkpoint covers goes in, and never a line cut short, which glued
        # itself to the next part's first record.
        unfinished = outcome.status != "complete"
        size = found.st_size
        limit: int | None = None
        committed = (
            _committed(part.with_name(f"{part.name}.ckpt")) if unfinished else _Committed(None)
        )
        appended = 0
        left_out = _left_out(outcome, size, committed)
        if left_out is not None:
            logger.warning("merge: %s", left_out)
            continue
        if not unfinished and allow_incomplete:
            # What was exported, checked, and nothing after it: a part edited, another
            # export's in its place, or a record appended since went in as it was.
            limit = outcome.size
            if changed is not None and limit is not None:
                appended = size - limit  # said once the part is checked
        elif outcome.status == "incomplete" and outcome.size is not None:
            # Its export ended (in MISMATCH): the part as it was then, the customers its final
            # check appended included, though its checkpoint (kept, for a rerun to check it
            # again) covers only the ordered walk: what it covers is checked against it, as
            # a failed part's is (it went in unchecked: another export's part, merged).
            limit = outcome.size
            appended = size - limit  # said once the part is checked
        elif unfinished:
            limit = committed.covered
        # An unfinished part that no checkpoint speaks for (deleted, or none that says what
        # was written, or of which export: an earlier release's, or one edited to say none):
        # nothing else checks it, and another export's part in its place went in whole. Its
        # records' dateCreated must be in its shard's window (ids in its slice). Every line
        # of an unfinished part must be a record: one edited in place, or a line that is none
        # inserted, went into the merged file, counted as a record.
        bounded = committed.covered is None or committed.scope is None
        window = (
            _Window(outcome.shard, scopes.id_range(outcome) if bounded else None, bounded)
            if unfinished
            else None
        )
        if committed.unreadable:
            raise InvalidRequestError(
                f"{outcome.file}.ckpt is no checkpoint this SDK wrote (the export it records "
                f"cannot be read): delete it and {outcome.file} and rerun the export, which "
                "exports that shard again"
            )
        if committed.scope is not None:
            differs = scopes.differences(outcome, committed.scope)
            if differs:
                # Another export's part beside its own checkpoint (a shard rerun with other
                # filters, or both copied in from another run of the same layout): the part
                # agreed with its checkpoint, and its customers were merged as this export's.
                raise InvalidRequestError(
                    f"{outcome.file} is another export's part: its checkpoint is not of shard "
                    f"{outcome.shard.index} ({'; '.join(differs)}); delete "
                    "it and its checkpoint and rerun the export, which exports that shard again"
                )
        # Its content checked as it is copied: a part edited, or another run's part of the
        # same size put in its place, was merged without a word.
        check = outcome.sha256 is not None and not unfinished
        digest = hashlib.sha256()
        csv = manifest.format == "csv"
        # A CSV record's lines while a quoted field runs on (an odd count of `"` on a line
        # opens or closes one: a quote inside a field is doubled): written once it ends, so
        # a record counts once, and one torn across its lines is left out whole.
        held: list[bytes] = []
        quoted = False
        before = records
        last = b""  # the last record merged of this part
        # The records and the last of them once the checkpoint's bytes are read (None while
        # not, or never: its last record does not end where it says).
        at_mark: tuple[int, bytes] | None = None
        with _opened(part, found, outcome.file) as fh:
            read = 0
            header = b""
            rewrite: Rewrite | None = None  # its records, when its header is not the union
            if csv:
                header = read_header(fh)
                read += len(header)
                digest.update(header)
                names = header_names(header) if whole_header(header) else []
                if not whole_header(header):
                    pass  # empty, or torn: no record follows
                elif names is None or (
                    first_header is not None and not same_export(names, first_header[0])
                ):
                    # Another export's part (another --select): its rows under these columns.
                    # Its attr.* columns aside, which are its own first page's keys.
                    what = (
                        f"has other columns than {first_header[1]}"
                        if first_header is not None and names is not None
                        else "does not start with a CSV header this SDK writes"
                    )
                    raise InvalidRequestError(
                        f"{outcome.file} {what}: it is not this export's part; delete it and "
                        "rerun the export, which exports that shard again"
                    )
                elif first_header is None:
                    # The merged file's columns: this part's and every later one's.
                    union = Union(header, names, _headers(directory, manifest.shards[index + 1 :]))
                    first_header = (names, outcome.file)
                    out.write(union.header)
                if names and union is not None and header != union.header:
                    rewrite = Rewrite(outcome.file, names, union)
            if read == committed.covered:
                at_mark = (0, b"")
            for line in fh:
                read += len(line)
                if not line.endswith(b"\n") or (limit is not None and read > limit):
                    break  # torn, or past what its shard exported
                if check:
                    digest.update(line)
                if csv and (quoted or line.count(b'"') % 2):
                    held.append(line)
                    quoted ^= line.count(b'"') % 2 == 1
                    if quoted:
                        continue
                    line = b"".join(held)
                    held.clear()
                out.write(line if rewrite is None else rewrite(line))
                records += 1
                last = line
                if read == committed.covered:
                    at_mark = (records - before, last)
                outside = None if window is None else window.outside(line, header if csv else None)
                if outside is NOT_A_RECORD:
                    raise InvalidRequestError(
                        f"{outcome.file} is not a part this SDK wrote, or was edited: its record "
                        f"{records - before:,} is no record of its export's ({_kind(csv)}); "
                        "delete it and its checkpoint and rerun the export, which exports that "
                        "shard again"
                    )
                if outside is not None:
                    raise InvalidRequestError(
                        f"{outcome.file} is another export's part: it holds a customer that is "
                        f"not of shard {outcome.shard.index} ({outside}): "
                        "delete it and rerun the export, which exports that shard again"
                    )
        if not committed.holds(at_mark, csv):
            # Another export's part where an unfinished one was: it went in as far as the
            # checkpoint's byte count, unchecked.
            raise InvalidRequestError(
                f"{outcome.file} is not what its checkpoint says was exported (not "
                f"{counted(committed.exported or 0, 'record')} ending with customer "
                f"{committed.last_id}): "
                "another export's part, or edited; delete it and its checkpoint and rerun the "
                "export, which exports that shard again"
            )
        if check and digest.hexdigest() != outcome.sha256:
            same = ", the same size" if changed is None else ""
            raise InvalidRequestError(
                f"{outcome.file} is not what was exported (its content changed since{same}): "
                "delete it and rerun the export, which exports that shard again"
            )
        if appended:
            logger.warning(
                "merge: %s: %s appended since it was exported: left out",
                outcome.file,
                counted(appended, "byte"),
            )
        if unfinished:
            logger.warning(
                "merge: %s: %s merged, %s (not complete)",
                outcome.file,
                counted(records - before, "record"),
                _where_it_stands(outcome, directory),
            )
        merged.append(outcome.file)
    return records


#: A shard's note (its ``error``) when its coordinator stopped while it was on the queue
#: (``_queue._follow``): its workers go on without it.
LEFT_ON_THE_QUEUE: Final = (
    "left on the queue when its coordinator stopped: a worker may still be exporting it; "
    "rerun the same command to follow it to its end"
)


def _left_out(outcome: ShardOutcome, size: int, committed: _Committed) -> str | None:
    """Why ``outcome``'s part (a regular file of ``size`` bytes; ``committed``: what its
    checkpoint says, read if its shard is not complete) is left out of a merge, as its warning
    says it; None when it goes in (checked as it is copied).

    Asked of each part as its turn comes, and of the later parts before the first is copied:
    a CSV's merged header is of the parts that go in (it held the ``attr.*`` columns of a
    part left out, a column of customers the file does not hold)."""
    if outcome.status in ("complete", "incomplete") and size < (outcome.size or 0):
        # A part shorter than its shard exported (complete, or ended in MISMATCH): cut short
        # since, or another export's shorter part in its place, which no check tells apart
        # (the SHA-256 is of the whole part). Its lines went in as "cut short": another
        # export's customers, some of them twice.
        return (
            f"{outcome.file}: left out: it is shorter than its shard exported ({size:,} of "
            f"{outcome.size or 0:,} bytes): cut short since, or another export's part in its "
            "place, which cannot be told apart; rerun the export, which exports that shard again"
        )
    if outcome.status == "complete" or (
        outcome.status == "incomplete" and outcome.size is not None
    ):
        return None
    covered = committed.covered
    if covered is not None and size < covered:
        # Cut short below what its checkpoint covers: no check holds, as for a complete part
        # cut short (another export's shorter part reads the same).
        return (
            f"{outcome.file}: left out: it is shorter than its checkpoint says was written "
            f"({size:,} of {covered:,} bytes): cut short since, or another export's part in "
            "its place; rerun the export, which exports that shard again"
        )
    return None


def _where_it_stands(outcome: ShardOutcome, directory: Path) -> str:
    """``its shard failed``, as a merge says of an unfinished part; one the manifest says is
    running while no coordinator holds the directory (killed: ``kill -9``, the OOM killer,
    which cannot say it stopped), or one a stopped run left, as stopped.

    It said "its shard running" after the run was gone: the user waited for an export that
    nothing ran any longer. One its queue's coordinator left on the queue may still be
    exported by a worker there: said "stopped" too, its part grew after the merge.

    A coordinator at work writes a shard ``running`` only once one ends: a merge during a
    run said of each shard it was exporting, ``pending`` on disk, "stopped ... rerun the
    export" (a rerun the lock then refused). While a coordinator holds the directory, a
    shard not ended is running or waiting its turn."""
    if outcome.status in ("pending", "running") and _coordinated(directory):
        return "its shard running or waiting its turn (its export is under way)"
    if outcome.status == "pending" and outcome.error == LEFT_ON_THE_QUEUE:
        return (
            "its shard was left on the queue when its coordinator stopped (a worker may still "
            "be exporting it: rerun the export to follow it to its end)"
        )
    if outcome.status == "pending" or (
        outcome.status == "running" and _coordinated(directory) is False
    ):
        return "its shard's run stopped before it ended (rerun the export to resume it)"
    return f"its shard {outcome.status}"


def _coordinated(directory: Path) -> bool | None:
    """Whether a coordinator holds ``directory``'s lock (``.manifest.json.lock``, taken by
    ``coordinating``); None where that cannot be told (no ``flock``).

    Asked with a shared lock tried and let go at once: the lock is never taken (nor its file
    written), so a coordinator starting meanwhile is not refused."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fd = os.open(directory / f".{MANIFEST_NAME}.lock", os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # lets go of a lock it took
    return False


def _headers(directory: Path, outcomes: Sequence[ShardOutcome]) -> Iterator[list[str]]:
    """The column names of each of ``outcomes``' parts that starts with a whole CSV header
    and is not left out (:func:`_left_out`), read before the first part's records are copied:
    the merged file's header holds them."""
    for outcome in outcomes:
        part = directory / outcome.file
        try:
            fh, info = open_to_read(part)  # a pipe there is not waited on
        except OSError:
            continue  # missing, or no file: said (or refused) when its turn comes
        with fh:
            if not stat.S_ISREG(info.st_mode):
                continue
            checkpoint = part.with_name(f"{part.name}.ckpt")
            committed = _committed(checkpoint) if outcome.status != "complete" else _Committed(None)
            if _left_out(outcome, info.st_size, committed) is not None:
                continue
            header = read_header(fh)
        names = header_names(header) if whole_header(header) else None
        if names is not None:
            yield names


def _regular_file(path: Path) -> os.stat_result | None:
    """``path``'s status if it is a regular file (a link to one followed), else None."""
    try:
        found = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return found if stat.S_ISREG(found.st_mode) else None


#: What a path is, said, by the type its mode gives (one that is no regular file).
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def not_a_part(path: Path) -> str:
    """``is missing``, or what ``path`` is instead of a regular file (``is a directory, not a
    part file``; ``is a link to a directory, ...``), as a part's refusal or warning says it."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "is missing"
    link = stat.S_ISLNK(mode)
    if link:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return f"is a link to {os.readlink(path)!r}, which is missing"
    kind = next((name for test, name in _KINDS if test(mode)), "no regular file")
    return f"is {'a link to ' if link else ''}{kind}, not a part file"


def _opened(part: Path, checked: os.stat_result, name: str) -> BinaryIO:
    """``part`` opened to be copied, or InvalidRequestError if it is no longer the file
    ``checked`` (its size, and what it is, were checked by its name before): replaced since
    by a named pipe, the merge waited for a writer for ever. Opened without blocking so."""
    replaced = InvalidRequestError(
        f"{name} was replaced or removed while it was merged: merge again once nothing "
        "writes the export's directory"
    )
    try:
        fh, now = open_to_read(part)
    except (FileNotFoundError, IsADirectoryError):  # gone, or a directory in its place
        raise replaced from None
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (
        checked.st_dev,
        checked.st_ino,
    ):
        fh.close()
        raise replaced
    return fh


@attrs.frozen
class _Committed:
    """What an unfinished part's checkpoint says of it: the bytes it covers, and the records
    in them and the last one's id, when it says (None each where it does not)."""

    covered: int | None
    exported: int | None = None
    last_id: Any = None
    #: The export the checkpoint says it is of (its ``scope``), None when it says none.
    scope: ExportScope | None = None
    #: The checkpoint records a scope that cannot be read (an edited one): refused.
    unreadable: bool = False

    def holds(self, at_mark: tuple[int, bytes] | None, csv: bool) -> bool:
        """Whether the records of a part's lines the checkpoint covers, and the last of them
        (``at_mark``; None when no record of the part ends where it says) are what it says
        was written; True when it does not say."""
        if self.covered is None or self.exported is None:
            return True
        if at_mark is None or at_mark[0] != self.exported:
            return False
        records, last = at_mark
        if not records or self.last_id is None:
            return True
        try:
            if csv:  # the id is the first column, never quoted
                return last.split(b",", 1)[0].strip() == str(self.last_id).encode()
            record = orjson.loads(last)
        except orjson.JSONDecodeError:
            return False
        return isinstance(record, dict) and record.get("id") == self.last_id


class _Window:
    """What a shard's records are: created in its ``dateCreated`` window (immutable:
    docs/contract.md, "More live behaviour"), of a list, ids of its slice (sorted: from its
    first to its last), and of the export's filters on a field the record holds (``stage``,
    ``source``, ``gender``, ``mobile``, ``email``: as the service filtered it when it was
    exported). Tells a record of its part from another export's. A record that does not say
    (``select`` without the field, a value that is no time) is taken as the shard's."""

    def __init__(self, shard: Shard, ids: tuple[int, int] | None, bounded: bool = True) -> None:
        """``bounded``: False when only the record's being one is checked (a checkpoint
        says which export the part is of)."""
        self._start, self._end = (shard.start, shard.end) if bounded else (None, None)
        self._ids = ids if bounded else None
        self._shard = shard
        self._wanted = {
            name: _filtered_as(name, value)
            for name, value in shard.filters.items()
            if bounded and name in _RECORD_FILTERS and value is not None
        }
        # A CSV header, its number of columns and the columns checked.
        self._columns: tuple[bytes, int, dict[str, int]] | None = None

    def outside(self, record: bytes, header: bytes | None) -> str | None:
        """What of the shard ``record`` (a JSON line, or a CSV record under ``header``) is
        not, as a refusal says it (its window, or ``stage 'vip', the export's 'lead'``); None
        when it may be the shard's; :data:`NOT_A_RECORD` when it is not a record (not a JSON
        object; a CSV record of another number of cells than its header's columns)."""
        try:
            if header is None:
                fields = orjson.loads(record)
                if not isinstance(fields, dict):
                    return NOT_A_RECORD
            else:
                row = next(csv_reader([record.decode("utf-8")]), [])
                width, columns = self._columns_of(header)
                if len(row) != width:
                    return NOT_A_RECORD
                fields = {name: row[i] for name, i in columns.items()}
                fields["id"] = int(row[0]) if row and row[0].strip().isdigit() else None
        except (orjson.JSONDecodeError, UnicodeDecodeError, CSVError):
            return NOT_A_RECORD
        if not self._wanted and self._ids is None and self._start is None and self._end is None:
            return None  # the whole of an export: any of its records
        found, created = fields.get("id"), fields.get("dateCreated")
        if self._ids is not None and isinstance(found, int):
            low, high = self._ids
            if not low <= found <= high:
                return self._shard.describe()
        for name, wanted in self._wanted.items():
            held = _filtered_as(name, fields.get(name)) if name in fields else wanted
            if held != wanted:
                # Another export's filter: --stage vip in a --stage lead export. A mobile or
                # an email (personal data) is not quoted.
                if name in ("mobile", "email"):
                    return f"its {name} is not the export's"
                return f"{name} {held!r}, the export's {wanted!r}"
        if not isinstance(created, str) or not created:
            return None
        try:
            moment = parse_timestamp(created)
        except (ValueError, OverflowError):
            return None
        if (self._start is not None and moment < self._start) or (
            self._end is not None and moment >= self._end
        ):
            return self._shard.describe()
        return None

    def _columns_of(self, header: bytes) -> tuple[int, dict[str, int]]:
        if self._columns is None or self._columns[0] != header:
            names = next(csv_reader([header.decode("utf-8-sig", "replace")]), [])
            wanted = ("dateCreated", *self._wanted)
            columns = {name.strip(): i for i, name in enumerate(names) if name.strip() in wanted}
            self._columns = (header, len(names), columns)
        return self._columns[1:]


#: :meth:`_Window.outside` of a line that is not a record.
NOT_A_RECORD: Final = "not a record"


def _kind(csv: bool) -> str:
    return "a CSV record of its header's columns" if csv else "a JSON object"


#: The filters a record holds the field of, under the filter's name (its JSON key, its CSV
#: column): an unfinished part's records are checked against them.
_RECORD_FILTERS = ("stage", "source", "gender", "mobile", "email")


def _filtered_as(name: str, value: Any) -> str:
    """A filter's value, or a record's field (JSON, or a CSV cell), as the service matches
    the two (docs/contract.md, "list"): a stage of ``_empty`` is an empty one, a gender of
    0 an unknown one (null in a record, an empty CSV cell), an email in any case (not said
    to be matched exactly: compared so, another export's still differs)."""
    if name == "stage":
        return "" if value in (None, EMPTY_STAGE) else str(value)
    if name == "gender":
        return str(value or 0)
    text = "" if value is None else str(value)
    return text.lower() if name == "email" else text


def _committed(checkpoint: Path) -> _Committed:
    """What a part's checkpoint says of it (:class:`_Committed`), None each where it says
    nothing (no checkpoint, or not one that says)."""
    try:
        # Not blocking, and a regular file alone: a named pipe put there made the merge wait
        # for a writer for ever (a link to /dev/zero, read until memory ran out).
        fh, info = open_to_read(checkpoint)
        with fh:
            if not stat.S_ISREG(info.st_mode):
                return _Committed(None)
            data = loads_checkpoint(fh.read())
        covered, exported = data["bytes"], data.get("exported")
    except (OSError, KeyError, TypeError, AttributeError):
        return _Committed(None)
    if not isinstance(covered, int) or isinstance(covered, bool):
        return _Committed(None)
    if not isinstance(exported, int) or isinstance(exported, bool):
        exported = None
    if "scope" not in data:
        return _Committed(covered, exported, data.get("last_id"))  # none recorded: not compared
    try:
        # Read as a resume reads it, its long id list as its digest: one that is no ids
        # raised a raw ValueError later, and a scope cattrs could not read was taken for
        # none, so another export's part beside its own edited checkpoint was merged.
        scope = recorded_scope(_scope_converter.structure(data["scope"], ExportScope))
    except (TypeError, ValueError, cattrs.BaseValidationError):
        return _Committed(covered, exported, data.get("last_id"), unreadable=True)
    return _Committed(covered, exported, data.get("last_id"), scope)


_scope_converter = cattrs.Converter(forbid_extra_keys=True)


class _ShardScopes:
    """What each shard's export records as its scope (the checkpoint's), to tell a part's
    checkpoint of another export from its own; the directory's id list read once, when a
    shard of it is asked for."""

    def __init__(self, manifest: Manifest, directory: Path) -> None:
        self._manifest, self._directory = manifest, directory
        self._ids: ListedIds | None = None

    def differences(self, outcome: ShardOutcome, found: ExportScope) -> list[str]:
        """What of ``found`` (a checkpoint's scope) is not this shard's export; its ``dest``
        aside: a directory moved (or mounted elsewhere) holds the same export."""
        manifest, shard = self._manifest, outcome.shard
        if shard.detached:
            shard = shard.with_ids(self._listed(outcome))
        try:
            params = customer_filter_params("merge", shard.export_filters())
        except TypeError as err:  # a filter no export takes: an edited manifest
            raise InvalidRequestError(
                f"{self._directory / MANIFEST_NAME} is not a manifest this SDK wrote: {err}"
            ) from None
        expected = ExportScope(
            normalise_base_url(manifest.base_url),
            manifest.app_id,
            found.dest,
            manifest.format,
            "utf-8",  # the only encoding of a part
            params,
        )
        return recorded_scope(found).differences(recorded_scope(expected), now="in the manifest")

    def id_range(self, outcome: ShardOutcome) -> tuple[int, int] | None:
        """The first and last id of a list's shard's slice (sorted); None for a window of
        ``dateCreated``, an empty slice, or a list not there to say (no check then)."""
        ids_slice = outcome.shard.id_slice
        if ids_slice is None or ids_slice[1] <= ids_slice[0]:
            return None
        try:
            listed = self._listed(outcome)
            return listed[ids_slice[0]], listed[ids_slice[1] - 1]
        except (InvalidRequestError, IndexError):
            return None

    def _listed(self, outcome: ShardOutcome) -> ListedIds:
        if self._ids is None:
            path = self._directory / ID_LIST_NAME
            text = id_list_file(path, str(outcome.shard.id_list_sha256))
            if not text:
                why = "missing" if text is None else "not the id list this export was planned with"
                raise InvalidRequestError(
                    f"{outcome.file}: its checkpoint cannot be checked, {path} is {why}: rerun "
                    "the export (given its id list, it writes the file again), then merge"
                )
            self._ids = ListedIds(text)
        return self._ids
