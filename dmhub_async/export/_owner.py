"""Whose customers an output holds: checked before a client given an access token resumes.

A checkpoint (or a sharded directory's manifest) records the app id it was written for, and a
resume with another is refused. A client given an ``access_token`` has none to record: a run
with another app's token at the same base URL took the file up as its own, that app's
customers joining it and the final check calling it complete (one tenant's customers in
another's export). A token is no app's name either: one export resumed with a renewed token
(a token client cannot renew its own) holds another token, and must go on.

So the output is asked whose it is: a few customers it already holds are fetched by id, in
one request, and one of them must come back with the ``dateCreated`` written (a field that
never changes): customers deleted since are no refusal while one is left. An export whose
``select`` left ``dateCreated`` out is compared by the fields it selected instead (but those
the service moves by itself), or its custom fields (``attr``) by a customer that has none of
those written (``select=["attr"]`` was compared by ids alone): customers deleted or changed
since are no refusal while one is left as written; a customer that left every one of them
empty tells nothing (another app's customer of its id, as empty, matched it), unless none
looked up has one written (a JSON line sent without a field the export selected, as some
live answers lack ``attr`` or ``displayName``, has it empty). One of ids alone
(``select=["id"]``, or such fields empty in every customer looked up) is compared by its
ids: another app's customers of the same ids pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any, Final

import attrs

from .._atomic import open_to_read
from .._client import DMHubClient
from .._exceptions import InvalidRequestError
from .._json import loads
from .._pagination import AsyncPaginator
from ._reconcile import Retries, fetch_in_halves
from ._writers import CSV_FIELDS, _cell, _Lines, long_csv_fields

__all__ = [
    "OWNER_CHECKED",
    "SAMPLES",
    "Sample",
    "check_owner",
    "first_records",
    "records",
    "samples_of",
    "selected_fields",
    "spread_records",
    "spread_samples_of",
]

#: The client whose token a sharded run found to reach its directory's customers
#: (``shards._run``), set in each of its shards' tasks: their resumes ask no more (one
#: look-up a shard, the same question the directory's answered).
OWNER_CHECKED: contextvars.ContextVar[DMHubClient | None] = contextvars.ContextVar(
    "dmhub_owner_checked", default=None
)

#: Customers of a file looked up (one request holds them all).
SAMPLES: Final = 5
_CREATED: Final = "dateCreated"


@attrs.frozen
class Sample:
    """A customer an output holds: its id, and the fields it is compared by, each as a cell:
    its ``dateCreated``, or without one (a ``select`` that left it out) the other fields
    written (but those the service changes by itself), or with none of those written its
    custom fields (``attr.KEY``), or none (ids alone)."""

    id: int
    fields: tuple[tuple[str, str], ...]


#: The fields a sample without ``dateCreated`` is compared by: the model's (a ``select``
#: names no other), but those the service moves by itself (``lastUpdated`` on any change,
#: ``dateJoin`` on a matched create: docs/contract.md) and ``id``.
_COMPARED: Final = frozenset(CSV_FIELDS) - {"id", "lastUpdated", "dateJoin"}


#: A custom field as a sample names it: as the CSV's column of it (``attr.level``).
_ATTR: Final = "attr."


def _sample(customer_id: int, fields: dict[str, Any], fmt: str) -> Sample:
    """The :class:`Sample` of a customer written with ``fields`` (wire names: values; a
    CSV's ``attr.*`` columns by their names, a JSON line's ``attr`` as its object)."""
    created = fields.get(_CREATED)
    if created is not None and created != "":
        return Sample(customer_id, ((_CREATED, _cell(created)),))
    own = tuple(sorted((name, _cell(value)) for name, value in fields.items() if name in _COMPARED))
    if not any(cell for _, cell in own):
        # No field of the model written (``select=["attr"]``: custom fields alone): its
        # custom fields, or ids alone decided, and another app's token took the file up.
        custom = _custom_fields(fields, fmt)
        if any(cell for _, cell in custom):
            return Sample(customer_id, custom)
        if not own and any(name == "attr" or name.startswith(_ATTR) for name in fields):
            # Custom fields selected, this customer having none: a compared field left empty,
            # which tells nothing. Read as ids alone (``select=["id"]``), its ids decided and
            # the customers further in the file were never looked up: a file whose first
            # customers had no custom field was taken up by another app's token.
            return Sample(customer_id, (("attr", ""),))
    return Sample(customer_id, own)


def _custom_fields(fields: dict[str, Any], fmt: str) -> tuple[tuple[str, str], ...]:
    """The custom fields of a customer written with ``fields``, each as ``attr.KEY`` and its
    cell: a CSV's columns of them and the keys of its ``attr`` cell (those first seen after
    the first page: all of them, where its customers had none), a JSON line's ``attr``."""
    if fmt == "csv":
        cells = [(k, _cell(v)) for k, v in fields.items() if k.startswith(_ATTR)]
        later = fields.get("attr")
        if later:
            try:
                attr = loads(later)  # as the writer wrote it: numbers exactly, as a row's
            except (ValueError, RecursionError):
                attr = None
            if isinstance(attr, dict):
                cells += ((f"{_ATTR}{key}", _cell(value)) for key, value in attr.items())
        return tuple(sorted(cells))
    attr = fields.get("attr")
    if not isinstance(attr, dict):
        return ()
    return tuple(sorted((f"{_ATTR}{key}", _cell(value)) for key, value in attr.items()))


def _value(row: dict[str, Any], name: str) -> Any:
    """The value of the field a sample names ``name`` in a customer the service sent."""
    if not name.startswith(_ATTR):
        return row.get(name)
    attr = row.get("attr")
    return attr.get(name[len(_ATTR) :]) if isinstance(attr, dict) else None


def selected_fields(select: str | None) -> frozenset[str]:
    """The fields an export of the wire ``select`` (``"id,attr"``) selected; none for every
    field (None), whose customers are compared by their ``dateCreated``."""
    return frozenset((select or "").split(",")) - {"", "id"}


def first_records(
    fh: IO[bytes],
    fmt: str,
    limit: int,
    count: int = SAMPLES,
    *,
    selected: frozenset[str] = frozenset(),
) -> list[Sample]:
    """The first ``count`` whole records in the first ``limit`` bytes of ``fh`` (from its
    start; its position is left where the read ended)."""
    return records(fh, fmt, limit, lambda index: index < count, count, selected=selected)


def spread_records(
    fh: IO[bytes], fmt: str, limit: int, total: int, *, selected: frozenset[str] = frozenset()
) -> list[Sample]:
    """:data:`SAMPLES` times two records spread over the ``total`` the first ``limit`` bytes
    of ``fh`` hold (one read of them all)."""
    wanted = SAMPLES * 2
    step = max(1, total // wanted)
    return records(
        fh, fmt, limit, lambda index: index % step == step - 1, wanted, selected=selected
    )


def records(
    fh: IO[bytes],
    fmt: str,
    limit: int,
    pick: Callable[[int], bool],
    count: int,
    *,
    selected: frozenset[str] = frozenset(),
) -> list[Sample]:
    """The whole records in the first ``limit`` bytes of ``fh`` whose index (from 0) ``pick``
    takes, ``count`` at most. ``selected``: the fields the export selected
    (:func:`selected_fields`)."""
    fh.seek(0)
    lines = _Lines(fh, limit)
    found: list[Sample] = []
    index = -1
    if fmt == "jsonl":
        for line in lines:
            if len(found) == count or not lines.whole:
                break
            index += 1
            if not pick(index):
                continue
            try:
                row = loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and type(row.get("id")) is int:
                if missing := selected - row.keys():
                    # A selected field sent not at all (docs/contract.md: some live answers
                    # lack attr and displayName), written as it came: a field left empty, not
                    # the sample of ``select=["id"]``, whose ids alone decided (another app's
                    # token took the file up when its first customers came so).
                    row = {**row, **dict.fromkeys(missing)}
                found.append(_sample(row["id"], row, fmt))
        return found
    with long_csv_fields():
        reader = csv.reader(lines.text(), strict=True)
        try:
            header = next(reader, None)
            if not header:
                return found
            header[0] = header[0].removeprefix("\ufeff")  # written with a byte order mark
            for cells in reader:
                if len(found) == count or not lines.whole:
                    break
                index += 1
                if not pick(index) or len(cells) != len(header) or not cells[0].isdigit():
                    continue
                fields = dict(zip(header, cells, strict=True))
                found.append(_sample(int(cells[0]), fields, fmt))
        except csv.Error:  # a quoted field cut off by the end
            pass
    return found


def samples_of(
    path: Path, fmt: str, count: int = SAMPLES, *, selected: frozenset[str] = frozenset()
) -> list[Sample]:
    """:func:`first_records` of the file at ``path`` (none when there is no such file)."""
    return _read(path, lambda fh: first_records(fh, fmt, _WHOLE, count, selected=selected))


def spread_samples_of(
    path: Path, fmt: str, total: int, *, selected: frozenset[str] = frozenset()
) -> list[Sample]:
    """:func:`spread_records` of the file at ``path``, which holds about ``total`` records
    (none when there is no such file)."""
    return _read(path, lambda fh: spread_records(fh, fmt, _WHOLE, total, selected=selected))


#: A limit beyond any file: all of it.
_WHOLE: Final = 1 << 62


def _read(path: Path, read: Callable[[IO[bytes]], list[Sample]]) -> list[Sample]:
    """``read`` of the regular file at ``path``; nothing of anything else: a named pipe put
    in a part's place waited for a writer for ever (the rerun hung), and a device (a link to
    ``/dev/zero``) reads for ever. The rerun goes on to refuse or redo such a part."""
    try:
        fh, info = open_to_read(path)
    except OSError:  # none there, a directory, unreadable: nothing to look up of it
        return []
    with fh:
        return read(fh) if stat.S_ISREG(info.st_mode) else []


async def check_owner(
    client: DMHubClient,
    samples: Sequence[Sample],
    what: str,
    instead: str,
    retries: Retries | None = None,
    more: Callable[[], Awaitable[Sequence[Sample]]] | None = None,
) -> None:
    """InvalidRequestError unless one of ``samples`` is a customer the service ``client``
    reaches holds, with the same ``dateCreated`` (nothing to check without samples).

    ``more``: other samples to look up (spread over the output: a read of it all) before a
    refusal, when none of ``samples`` is found: the first customers of a file are its oldest,
    which a purge of old customers may have deleted since. ``what``: the output, as the
    refusal names it (``output '/x/customers.jsonl'``); ``instead``: what to do (``export to
    a new file``). The retries of its requests go to ``retries``.
    """
    if not samples or OWNER_CHECKED.get() is client:
        return
    ids_alone = all(not sample.fields for sample in samples)  # ``select=["id"]``
    # A customer whose compared fields are all empty tells nothing: another app's of the same
    # id, as empty, matched it (a select of fields most customers leave empty).
    first = list(samples) if ids_alone else _telling(samples)
    if first and await _found(client, first, retries):
        return
    looked_up = {sample.id for sample in samples}
    others: list[Sample] = []
    if more is not None:
        others = [sample for sample in await more() if sample.id not in looked_up]
        told = others if ids_alone else _telling(others)
        if told and await _found(client, told, retries):
            return
        looked_up.update(sample.id for sample in others)
    by_ids = ids_alone
    if not ids_alone and not first and not _telling(others):
        # Every customer looked up left those fields empty: their ids alone to go by, as
        # with ``select=["id"]``.
        bare = [Sample(sample.id, ()) for sample in (*samples, *others)]
        if await _found(client, bare, retries):
            return
        by_ids = True
    ids = sorted(looked_up)
    shown = ", ".join(str(i) for i in ids[: SAMPLES * 2])
    if len(ids) > SAMPLES * 2:
        shown += ", ..."
    # What was compared: ids alone (``select=["id"]``, or fields every one left empty) were
    # said to be compared by a dateCreated the file does not hold, or by its empty fields.
    dated = all(name == _CREATED for sample in samples for name, _ in sample.fields)
    if by_ids:
        compared, changed = "found by the same id", ""
    elif dated:
        compared, changed = "with the same dateCreated", ""
    else:
        compared, changed = "with the same fields", " or changed"
    raise InvalidRequestError(
        f"{what} holds customers of another app: none of the {len(ids)} looked up (ids "
        f"{shown}) is a customer {compared} where this client's access token reaches (or "
        f"every one was deleted{changed} since), and the export, run with an access_token, "
        f"recorded no app id to tell: {instead}"
    )


def _telling(samples: Sequence[Sample]) -> list[Sample]:
    """The ``samples`` with a compared field written (not empty): one that matches tells
    this app's customer from another's."""
    return [sample for sample in samples if any(cell for _, cell in sample.fields)]


async def _found(client: DMHubClient, samples: Sequence[Sample], retries: Retries | None) -> bool:
    """Whether one of ``samples`` is a customer ``client``'s service holds, with the same
    fields (:class:`Sample`): one request, or, for an answer larger than the client reads,
    one a half (:func:`fetch_in_halves`, as the final check fetches), stopping at the first
    that holds one."""
    ids = sorted({sample.id for sample in samples})

    def walk(batch: list[Any], _: int) -> AsyncPaginator[Any]:
        # Large custom fields of up to 100 customers (a sharded rerun whose parts' first
        # customers were deleted since) failed the rerun, where the export's pages passed:
        # fetched in halves, each asking for as many customers as it has ids (max_items), and
        # for the fields of its own samples (a half of customers told by their names asked
        # for the custom fields of the other half's too, and failed as too large).
        asked = set(batch)
        names = {name for sample in samples if sample.id in asked for name, _ in sample.fields}
        # Custom fields (``attr.KEY``) come in ``attr``, one object.
        select = sorted({"attr" if name.startswith(_ATTR) else name for name in names})
        return client.customers.list_rows(
            page_size=100, id_list=batch, select=["id", *select], max_items=len(batch)
        )

    fetched = fetch_in_halves(walk, ids, len(ids), Retries() if retries is None else retries)
    async with contextlib.aclosing(fetched) as batches:
        async for batch, rows in batches:
            asked = set(batch)
            held = {row.get("id"): row for row in rows}
            if any(
                sample.id in asked
                and sample.id in held
                and all(
                    _cell(_value(held[sample.id], name)) == cell for name, cell in sample.fields
                )
                for sample in samples
            ):
                return True
    return False
