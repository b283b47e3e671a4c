"""Planning a sharded export: disjoint ``dateCreated`` windows of about equal size, or, for an
``id_list``, contiguous slices of the list.

``dateCreated`` is the only immutable field the list API filters on (docs/contract.md, "More live
behaviour"), so it is the key that splits a customer set into parts that stay disjoint however
the data changes while the parts are exported. The planner finds the window edges with ``count``
probes (a bisection per edge, all edges probed together each round), never with a walk.

Windows are closed-open ``[start, end)`` in whole UTC seconds: the service stores and filters
``dateCreated`` to the second, both bounds inclusive, so ``[start, end)`` is sent as
``dateCreatedFrom=start`` and ``dateCreatedTo=end - 1s``. The first window has no start (unless
the caller's filters give one) and the last no end, so the union of the windows is exactly the
filtered set, customers created after the plan included.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, TypeVar, overload

import attrs
from typing_extensions import Unpack

from .._client import DMHubClient, check_client
from .._exceptions import InvalidRequestError
from .._query_time import in_utc, query_time
from .._retry import http_date
from .._sansio import date_of
from .._tasks import together
from .._validate import check_number, short
from .._words import counted
from ..resources._batches import check_export_room, walked
from ..resources._filters import check_filter_names, checked_ids, customer_filter_params
from ..resources.customers import CustomerFilters

__all__ = [
    "MAX_SHARDS",
    "ListedIds",
    "Shard",
    "id_list_text",
    "is_shard_count",
    "manifest_filters",
    "plan_shards",
    "unique_ids",
    "warn_if_naive",
]

#: More parts than this is a plan for a fleet this SDK has not been tried on.
MAX_SHARDS = 4096

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_SECOND = timedelta(seconds=1)
#: The last second a window can end at (exclusive): datetime's last whole second.
_LAST_END = (datetime.max.replace(tzinfo=timezone.utc) - _EPOCH) // _ONE_SECOND
T = TypeVar("T")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_shard_count(n: object) -> bool:
    """Whether ``n`` is a number of shards a plan takes: an int from 1 to :data:`MAX_SHARDS`."""
    return not isinstance(n, bool) and isinstance(n, int) and 1 <= n <= MAX_SHARDS


def _seconds(moment: datetime) -> int:
    return int((moment - _EPOCH).total_seconds())


def _moment(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _shown_filters(filters: Mapping[str, Any]) -> str:
    """A shard's filters in its repr, an ``id_list`` as the number of its ids: a shard of a
    plan of 300,000 ids showed every one of them (a repr of 2.3 MB)."""
    ids = filters.get("id_list")
    if ids is None or isinstance(ids, str):  # a manifest's shard names its list's digest
        return repr(dict(filters))
    return repr({**filters, "id_list": _Ids(len(ids))})


@attrs.frozen
class _Ids:
    """``<300,000 ids>``: an id list in a repr."""

    count: int

    def __repr__(self) -> str:
        return f"<{self.count:,} ids>"


@attrs.frozen
class Shard:
    """One part of a sharded export: a ``dateCreated`` window and the export's other filters.

    A small value that pickles and converts to JSON (:meth:`to_dict`), so a task queue can carry
    it: :func:`~dmhub_async.shards.export_shard` is all a worker needs.

    Attributes:
        index: the part's number, from 0; parts are merged in this order.
        start: the first second of the window (aware UTC), or None for "from the beginning".
        end: the second after the window (aware UTC), or None for "open-ended".
        filters: the caller's other filters, JSON-safe (datetimes as ISO strings).
        planned_count: customers in the window when it was planned.
        note: why the window is as it is, when the planner could not do better.
        id_slice: for a plan of an ``id_list``, ``(first, stop)``: the shard's ids are
            ``ids[first:stop]`` of the list (sorted, repeats dropped), which every
            shard of the plan shares; ``start``/``end`` are then the export's own
            ``dateCreated`` bounds, the same for every shard, and ``planned_count`` the ids of
            the slice (an id of no customer, or of one the other filters leave out, counts too).
            None for a window of ``dateCreated``.
        id_list_sha256: with ``id_slice``, ``sha256:<hex>`` of the whole list as
            :func:`id_list_text` writes it: the list the slice is of.

    A shard of :func:`plan_shards` carries its slice's ids in ``filters["id_list"]``. One of a
    sharded export's manifest (and the one a queue's job carries) does not: it names its slice
    alone, and :func:`~dmhub_async.shards.export_shard` reads the ids from the list the
    export's directory holds (``id_list.txt``, beside the part), checked against the digest.
    """

    index: int
    start: datetime | None
    end: datetime | None
    filters: Mapping[str, Any] = attrs.field(factory=dict, repr=_shown_filters)
    planned_count: int = 0
    note: str | None = None
    id_slice: tuple[int, int] | None = None
    id_list_sha256: str | None = None

    def __attrs_post_init__(self) -> None:
        # A window is an instant range every worker reads alike: a naive bound would be read
        # in each worker's own time zone, and a window that ends before it starts exported
        # nothing and called itself complete.
        check_number("Shard: index", self.index, 0, inclusive=True, kind=int)
        for name in ("start", "end"):
            bound = getattr(self, name)
            if bound is None:
                continue
            if not isinstance(bound, datetime) or bound.utcoffset() is None:
                raise InvalidRequestError(
                    f"Shard: {name} must be an aware datetime or None, not {short(bound)}"
                )
            try:  # in UTC, as describe() and to_dict() write it
                object.__setattr__(self, name, bound.astimezone(timezone.utc))
            except (OverflowError, ValueError):
                raise InvalidRequestError(
                    f"Shard: {name} {short(bound)} has no time in UTC"
                ) from None
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise InvalidRequestError(f"Shard: the window {self.describe()} holds no second")
        if not isinstance(self.filters, Mapping):
            raise InvalidRequestError(
                f"Shard: filters must be a mapping, not {short(self.filters)}"
            )
        check_number("Shard: planned_count", self.planned_count, 0, inclusive=True, kind=int)
        if self.note is not None and not isinstance(self.note, str):
            raise InvalidRequestError(f"Shard: note must be a str or None, not {short(self.note)}")
        self._check_slice()

    def _check_slice(self) -> None:
        if self.id_slice is None:
            if self.id_list_sha256 is not None:
                raise InvalidRequestError("Shard: id_list_sha256 without an id_slice")
            return
        first, stop = _pair(self.id_slice)
        object.__setattr__(self, "id_slice", (first, stop))
        if not 0 <= first < stop:
            raise InvalidRequestError(f"Shard: id_slice {short(self.id_slice)} holds no id")
        if not isinstance(self.id_list_sha256, str) or not _DIGEST.fullmatch(self.id_list_sha256):
            raise InvalidRequestError(
                f"Shard: an id_slice needs the list's id_list_sha256 (sha256:<hex>), not "
                f"{short(self.id_list_sha256)}"
            )
        ids = self.filters.get("id_list")
        if ids is not None and (not isinstance(ids, Sequence) or len(ids) != stop - first):
            raise InvalidRequestError(
                f"Shard: filters' id_list is not the {stop - first} ids of id_slice {first}:{stop}"
            )

    @property
    def detached(self) -> bool:
        """A shard of an ``id_list`` that names its slice without its ids (a manifest's)."""
        return self.id_slice is not None and "id_list" not in self.filters

    def without_ids(self) -> Shard:
        """This shard naming its slice of the list alone (as a manifest or a job has it)."""
        if self.id_slice is None:
            return self
        return attrs.evolve(self, filters={k: v for k, v in self.filters.items() if k != "id_list"})

    def with_ids(self, ids: Sequence[int]) -> Shard:
        """This shard with its slice's ids taken from ``ids``, the whole list it names."""
        if self.id_slice is None:
            return self
        first, stop = self.id_slice
        if stop > len(ids):
            raise InvalidRequestError(
                f"shard {self.index}: its ids {first}:{stop} are past the end of the id list "
                f"({len(ids)} ids)"
            )
        return attrs.evolve(self, filters={**self.filters, "id_list": list(ids[first:stop])})

    def export_filters(self) -> dict[str, Any]:
        """The keyword filters of ``export_customers`` that select exactly this window (and,
        for a shard of an ``id_list``, its slice of the list)."""
        if self.detached:
            raise InvalidRequestError(
                f"shard {self.index} names ids {self.describe_ids()} of an id list without "
                "them: export it with export_shard() to a part in the export's directory, "
                "which holds the list"
            )
        chosen = dict(self.filters)
        if self.start is not None:
            chosen["date_created_from"] = self.start
        if self.end is not None:
            chosen["date_created_to"] = self.end - _ONE_SECOND  # the service's bound is inclusive
        return chosen

    def describe(self) -> str:
        """``[2024-01-01T00:00:00Z, 2024-03-05T11:12:13Z)``-style text for logs and reports."""

        def text(moment: datetime | None, open_side: str) -> str:
            # isoformat, not strftime: its %Y writes the year 1 as "1", not "0001".
            if moment is None:
                return open_side
            return moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"

        window = f"[{text(self.start, '-inf')}, {text(self.end, '+inf')})"
        return window if self.id_slice is None else f"ids {self.describe_ids()}, {window}"

    def describe_ids(self) -> str:
        """``[0, 37500)``: the shard's slice of the id list, or '' for a window alone."""
        return "" if self.id_slice is None else f"[{self.id_slice[0]}, {self.id_slice[1]})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_dict` reads it back."""
        data: dict[str, Any] = {
            "index": self.index,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "filters": dict(self.filters),
            "planned_count": self.planned_count,
            "note": self.note,
        }
        if self.id_slice is not None:  # only then: a window's dict is as earlier releases read
            data["id_slice"] = list(self.id_slice)
            data["id_list_sha256"] = self.id_list_sha256
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Shard:
        """The shard :meth:`to_dict` wrote."""
        if not isinstance(data, Mapping):  # a task's argument of another kind: .get() was raw
            raise InvalidRequestError(f"not a shard: expected to_dict()'s dict, not {short(data)}")
        # The numbers as written, checked as ints: through int(), an edited manifest's "750",
        # 7.5 or true was read as 750, 7 or 1, and the manifest taken for one this SDK wrote.
        planned = data.get("planned_count")
        try:
            return cls(
                index=data["index"],
                start=_aware(data.get("start")),
                end=_aware(data.get("end")),
                filters=dict(data.get("filters") or {}),
                planned_count=0 if planned is None else planned,
                note=data.get("note"),
                id_slice=data.get("id_slice"),
                id_list_sha256=data.get("id_list_sha256"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidRequestError(f"not a shard: {err}") from None


def _pair(value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
    ):
        raise InvalidRequestError(f"Shard: id_slice must be two ints, not {short(value)}")
    return value[0], value[1]


def unique_ids(ids: Sequence[int]) -> tuple[list[int], bytes, str]:
    """The checked ``ids`` as a walk takes them (each once, sorted), the text of the list's
    file (:func:`id_list_text`) and its ``sha256:<hex>``; blocking work.

    Sorted, so that the same ids in another order or with repeats are the same plan and the
    same export (its digest), and the parts, merged in shard order, are in id order, as an
    export of the list in one piece is."""
    unique = walked(ids)
    text = id_list_text(unique)
    return unique, text, "sha256:" + hashlib.sha256(text).hexdigest()


def id_list_text(unique: Sequence[int]) -> bytes:
    """The text of a list's file of ``unique`` ids (as :func:`unique_ids` gives them): one id
    a line, as its digits (an int subclass's str may be its repr, ``CustomerId(7)``, which
    the file's reader refused); blocking work."""
    return "".join(int.__repr__(i) + "\n" for i in unique).encode()


#: Every how many lines of a list's file :class:`ListedIds` keeps where the line starts.
_MARK_EVERY = 1_024


class ListedIds(Sequence[int]):
    """The ids of a list's file (:func:`id_list_text`'s, its digest checked), read a slice at
    a time: a worker keeps the file's text, about 11 bytes an id, where the whole list as ints
    held 36 (3,000,000 ids: 120 MB in every worker process, for its slices alone).

    A slice is read from the last line start kept before it (one every :data:`_MARK_EVERY`
    lines: 8 bytes a thousand ids). Read from the first line, a worker's shards read the list's
    length times the shards in lines (1,000,000 ids in 1,000 shards: 7 s of CPU, the last
    shards' 20 ms each on the event loop)."""

    __slots__ = ("_count", "_marks", "_text")

    def __init__(self, text: bytes) -> None:
        self._text = text
        self._count = text.count(b"\n")  # each id's line ends in one
        # Where lines 0, _MARK_EVERY, 2 * _MARK_EVERY... start: one pass, in C.
        starts = itertools.accumulate(map(len, io.BytesIO(text)), initial=0)
        self._marks = list(itertools.islice(starts, 0, None, _MARK_EVERY))

    def __len__(self) -> int:
        return self._count

    def _lines_from(self, first: int) -> Iterator[bytes]:
        """The lines from line ``first`` (at most the count) on."""
        fh = io.BytesIO(self._text)
        fh.seek(self._marks[first // _MARK_EVERY])
        return itertools.islice(fh, first % _MARK_EVERY, None)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            first, stop, step = index.indices(self._count)
            # Lines made and dropped one at a time up to the slice's end, in C.
            lines = itertools.islice(self._lines_from(first), 0, max(0, stop - first), step)
            return [int(line) for line in lines]
        at = range(self._count)[index]  # IndexError past either end
        return int(next(self._lines_from(at)))


def _aware(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"shard bound without a time zone: {text!r}")
    return moment.astimezone(timezone.utc)


def _utc(method: str, name: str, value: Any, zone: tzinfo | None, *, end: bool = False) -> str:
    """A time filter as an aware UTC ISO string, read in the client's zone when naive (refused
    in the name of ``method``, the function the caller called)."""
    return query_time(method, name, value, zone, end=end)[0] + "+00:00"


_TIMES = ("date_created_from", "date_created_to", "last_updated_from", "last_updated_to")


def warn_if_naive(
    client: DMHubClient,
    method: str,
    filters: Mapping[str, Any],
    now: datetime | None = None,
    *,
    frames: int = 2,
) -> None:
    """The client's :class:`NaiveDatetimeWarning` (once per client) when a time filter (or
    ``plan_shards``'s ``now``) without an offset is read as UTC, for want of a ``timezone``: in
    ``method``'s name, at the line that called it (this function's caller must be ``method``
    itself, or ``frames`` - 1 levels below it). It warned from here, as ``plan_shards`` and at
    a line of this module, for every such filter of every call."""
    if client.timezone is not None:
        return
    if now is not None and now.utcoffset() is None:
        client.customers._warn_naive(method, frames=frames)
        return
    for name in _TIMES:
        value = filters.get(name)
        if value is not None and query_time(method, name, value, None, end=False)[1]:
            client.customers._warn_naive(method, frames=frames)
            return


def _json_safe_filters(
    filters: Mapping[str, Any], zone: tzinfo | None, method: str
) -> dict[str, Any]:
    """The caller's filters as a shard carries them: checked, and JSON-safe."""
    # None is "not given", as for every filter (and as list() takes it).
    reserved = sorted(n for n in ("sort_by", "sort_order") if filters.get(n) is not None)
    if reserved:
        raise InvalidRequestError(
            f"{method}(): {', '.join(reserved)} not allowed: a sharded export walks by id"
        )
    safe: dict[str, Any] = {}
    for name, value in filters.items():
        if value is None or name in ("date_created_from", "date_created_to"):
            continue
        if name in ("last_updated_from", "last_updated_to"):
            # Pinned to UTC now, so a worker in another time zone reads the same instant.
            value = _utc(method, name, value, zone, end=name.endswith("_to"))
        elif name == "id_list" or (name == "select" and not isinstance(value, str)):
            value = list(value)
        elif hasattr(value, "value"):  # an enum such as Gender
            value = value.value
        safe[name] = value
    return safe


def manifest_filters(
    filters: Mapping[str, Any], zone: tzinfo | None, method: str = "plan_shards"
) -> dict[str, Any]:
    """The filters of a whole sharded export as its manifest records them (JSON-safe, UTC);
    a bad one refused in the name of ``method``, the function the caller called."""
    recorded = _json_safe_filters(filters, zone, method)
    for name in ("date_created_from", "date_created_to"):
        if filters.get(name) is not None:
            recorded[name] = _utc(method, name, filters[name], zone, end=name.endswith("_to"))
    return recorded


def _bound(method: str, name: str, value: Any, zone: tzinfo | None) -> int | None:
    """A caller's ``date_created_from``/``_to`` as whole UTC seconds (both inclusive)."""
    if value is None:
        return None
    utc = _utc(method, name, value, zone, end=name.endswith("_to"))
    return _seconds(datetime.fromisoformat(utc))


def _newest(now: datetime | None, zone: tzinfo | None) -> int:
    """The second of ``now`` (the clock's now), or InvalidRequestError before any request.

    A naive ``now`` is read in the client's ``timezone`` (UTC without one), as a time filter
    is: ``astimezone`` read it in the machine's zone, and under ``timezone="UTC"`` on a machine
    at UTC+8 a plan at 01:00 saw every customer of the last eight hours as created after it,
    all in the last shard.
    """
    if now is None:
        now = datetime.now(timezone.utc)
    elif not isinstance(now, datetime):
        raise InvalidRequestError(f"plan_shards(): now must be a datetime, not {short(now)}")
    # InvalidRequestError when it has no UTC form (year 1 at +23:00)
    return _seconds(in_utc("plan_shards", "now", now, zone or timezone.utc, given=now))


def _served_second(client: DMHubClient) -> int | None:
    """The second of the ``Date`` of the calling task's last answer through ``client`` (the
    service's time as it answered: it stamps a customer's creation by its own clock), or None
    when it said none."""
    served = date_of(client.last_response)
    when = None if not served else http_date(served)  # a datetime's: finite
    return None if when is None else int(when // 1)


async def plan_shards(
    client: DMHubClient,
    n: int,
    *,
    now: datetime | None = None,
    **filters: Unpack[CustomerFilters],
) -> list[Shard]:
    """Split the customers that match ``filters`` into about ``n`` disjoint windows (at most
    ``n``, and one more for each second that alone holds more than a share: at most
    ``2 * n - 1``), or, with an ``id_list``, its ids into at most ``n`` contiguous slices.

    Each window holds about ``count / n`` customers when planned. A second that alone holds
    more than a window's share cannot be split (the service filters to the second): it becomes
    a window of its own, said in its ``note``, beside the ``n`` windows of the counts, not in
    one's place (merged with a neighbour, that window would hold more than its share, or the
    plan more than its windows' promises); so ``n = 2`` with a bulk import in the middle of the
    range plans 3 shards. The plan has fewer than ``n`` shards when edges fall together.
    Costs about ``log2(seconds in the range)`` rounds of ``n - 1`` concurrent counts; a count
    that fails stops the others of its round before the error is raised.

    With ``id_list`` (the customers to export, known by id) nothing is sent: shard ``k`` has
    the ``k``-th of ``n`` slices of about equal length of the list's ids sorted (repeats
    dropped; fewer shards than ``n`` when the list holds fewer ids), each id in one
    shard alone, with the other filters (``date_created_from``/``_to`` too) in every shard.

    Args:
        client: an open client.
        n: the number of shards wanted, 1 to 4096.
        now: the planning time (the newest second probed); defaults to the clock now. A
            naive one is read in the client's ``timezone``, as a time filter is. No window
            but the last ends after it (nor after the service's time, as the ``Date`` of its
            first answer says, if that is earlier; nor, when it says none, after five
            minutes before it): customers created after the plan fall into the last window.
        **filters: the filters of ``Customers.list``; ``date_created_from``/``_to`` bound the
            whole plan, ``sort_by``/``sort_order`` are not allowed.

    Raises:
        InvalidRequestError: a bad ``n`` or filter, before any request.
    """
    check_client("plan_shards", client)
    check_filter_names("plan_shards", filters)
    shards, _ = await plan_counted(client, n, now, dict(filters))
    return shards


async def plan_counted(
    client: DMHubClient,
    n: int,
    now: datetime | None,
    filters: dict[str, Any],
    method: str = "plan_shards",
) -> tuple[list[Shard], int]:
    """:func:`plan_shards`, and the retries its count probes took (the manifest records them
    with the shards' own: a report of the shards' alone said fewer than the run took).

    A bad filter is refused in the name of ``method``, the function the caller called
    (``export_sharded``, ``plan_directory``): it named ``count()``, the probe's, or
    ``plan_shards()``, neither of which the caller had called.
    """
    if not is_shard_count(n):
        raise InvalidRequestError(f"plan_shards(): n must be an int from 1 to {MAX_SHARDS}")
    zone = client.timezone
    safe = _json_safe_filters(filters, zone, method)
    lo = _bound(method, "date_created_from", filters.get("date_created_from"), zone)
    hi_inclusive = _bound(method, "date_created_to", filters.get("date_created_to"), zone)
    hi = hi_inclusive + 1 if hi_inclusive is not None else None
    if lo is not None and hi is not None and hi <= lo:
        raise InvalidRequestError(f"{method}(): date_created_to is before date_created_from")
    if hi is not None and hi > _LAST_END:
        # The last window ends the second after the bound, which no datetime holds: a raw
        # OverflowError after every count probe.
        raise InvalidRequestError(
            f"{method}(): date_created_to is the last second of the year 9999, after which"
            " no window can end: leave it out to export without an end"
        )
    newest = _newest(now, zone)
    # Checked: warned only for a plan made; at the line that called plan_shards, our caller.
    warn_if_naive(client, "plan_shards", filters, now, frames=3)
    if safe.get("id_list") is not None:
        return await _plan_ids(client, n, safe, lo, hi, method), 0
    # Checked as the probes' counts will check them, in the caller's name, before any request,
    # and as the shards' walks will send them, each with its window's bounds.
    check_export_room(
        method, customer_filter_params(method, safe, paged=False, zone=zone), windowed=True
    )
    # Checked by the resource before the first request: a bad filter sends nothing.
    probe = _Probe(client, safe, lo)
    total = await probe.count_before(hi)
    # No window but the last ends after the plan's own second (by this machine's clock, or by
    # the service's as its answer says, if earlier): customers created after the plan are
    # stamped with it or later, and fall into the last window, which the late check looks at
    # again. A window that ended the second after it held the customers created later in
    # that second: none was exported once its shard had ended, and no check looked there.
    # Without a Date, this machine's clock less the margin the late check allows the
    # service's for being behind it.
    from ._late import CLOCK_MARGIN

    served = _served_second(client)
    margin = int(CLOCK_MARGIN.total_seconds())
    present = newest - margin if served is None else min(newest, served)
    top = present + 1 if hi is None else min(hi, present + 1)
    bottom = lo if lo is not None else 0
    edges = await _edges(probe, n, total, bottom, top) if n > 1 and total > 0 else []
    bounds: list[int | None] = [lo, *edges, hi]
    shards: list[Shard] = []
    counts = [0, *[probe.known[e] for e in edges], total]
    share = total / n
    for i in range(len(bounds) - 1):
        start, end = bounds[i], bounds[i + 1]
        held = counts[i + 1] - counts[i]
        note = None
        # A second that holds more than a share is a window of its own (so the plan may
        # have more than n): said, as documented. It was said only past 1.5 shares, and a
        # plan for 2 with 300 of 500 customers in one second had 3 windows, none noted.
        if start is not None and end is not None and end - start == 1 and held > share:
            note = (
                f"{counted(held, 'customer')} {'was' if held == 1 else 'were'} created within "
                "one second: this window cannot be split"
            )
        shards.append(
            Shard(
                index=i,
                start=_moment(start) if start is not None else None,
                end=_moment(end) if end is not None else None,
                filters=safe,
                planned_count=held,
                note=note,
            )
        )
    return shards, probe.retries


async def _plan_ids(
    client: DMHubClient,
    n: int,
    safe: dict[str, Any],
    lo: int | None,
    hi: int | None,
    method: str,
) -> list[Shard]:
    """:func:`plan_shards` of an ``id_list``: its ids in ``n`` contiguous slices, nothing sent."""
    others = {name: value for name, value in safe.items() if name != "id_list"}
    # What a shard's export would refuse, refused before the plan: a bad filter or id, or
    # filters that leave a URL no room for an id.
    params = client.customers._params(method, others, paged=False, frames=4)
    ids = await asyncio.to_thread(checked_ids, method, safe["id_list"])
    unique, _, digest = await asyncio.to_thread(unique_ids, ids)
    check_export_room(method, params, longest_id=unique[-1])  # sorted: the last the longest
    count = min(n, len(unique))
    cuts = [k * len(unique) // count for k in range(count + 1)]
    return [
        Shard(
            index=k,
            start=_moment(lo) if lo is not None else None,
            end=_moment(hi) if hi is not None else None,
            filters={**others, "id_list": unique[cuts[k] : cuts[k + 1]]},
            planned_count=cuts[k + 1] - cuts[k],
            id_slice=(cuts[k], cuts[k + 1]),
            id_list_sha256=digest,
        )
        for k in range(count)
    ]


class _Probe:
    """``count`` of the filtered customers created before a second, memoised."""

    def __init__(self, client: DMHubClient, filters: Mapping[str, Any], lo: int | None) -> None:
        self._client = client
        self._filters = dict(filters)
        if lo is not None:
            self._filters["date_created_from"] = _moment(lo)
        self.known: dict[int, int] = {}
        #: Retries the probes' requests took.
        self.retries = 0

    async def count_before(self, second: int | None) -> int:
        if second is not None and second in self.known:
            return self.known[second]
        filters = dict(self._filters)
        if second is not None:
            filters["date_created_to"] = _moment(second - 1)
        found, retries = await self._client.customers._count(filters)
        self.retries += retries
        if second is not None:
            self.known[second] = found
        return found


async def _edges(probe: _Probe, n: int, total: int, bottom: int, top: int) -> list[int]:
    """The n-1 window edges: for each target k*total/n, the first second t with C(t) >= target.

    One bisection per edge, run side by side: each round probes every unresolved edge's middle
    at once, so the plan takes about log2(top - bottom) round trips, not (n-1) times that.
    """
    targets = [-(-k * total // n) for k in range(1, n)]  # ceil(k * total / n)
    # Invariant per edge: C(low) < target <= C(high); C(bottom) is 0 when nothing predates it.
    low = [bottom] * len(targets)
    high = [top] * len(targets)
    while True:
        middles = sorted({(a + b) // 2 for a, b in zip(low, high, strict=True) if b - a > 1})
        if not middles:
            break
        counts = await together(probe.count_before(m) for m in middles)
        seen = dict(zip(middles, counts, strict=True))
        for i, target in enumerate(targets):
            if high[i] - low[i] > 1:
                middle = (low[i] + high[i]) // 2
                if seen[middle] >= target:
                    high[i] = middle
                else:
                    low[i] = middle
    edges = set(high) - {top}
    # A second that holds more than a share of its own gets a window of its own: else the
    # customers before it in the same window would make that window heavier still.
    share = total / n
    # The plan's last second too, when an edge fell on the plan's end: an import in the last
    # second of --created-to was no window of its own, and the whole plan one shard.
    for edge in sorted(edges | ({top} & set(high))):
        if edge - 1 <= bottom:
            # The window before it is that second alone already; probing the second before
            # ``bottom`` asked for a range ending before the export's own start, refused
            # ("date_created_to is before date_created_from") when a bulk import's second
            # was the plan's ``date_created_from``.
            continue
        before, through = await together((probe.count_before(edge - 1), probe.count_before(edge)))
        if through - before > share:
            edges.add(edge - 1)
    return sorted(edges)
