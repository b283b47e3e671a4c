"""Id lists too long for one URL: split into batches, and one walk that chains their walks.

``GET /v1/customers?idList=...`` takes the ids in its query string, and a URL is kept under
``MAX_URL_LENGTH`` (``docs/reliability.md``, "Bad input"). A longer list is not an error: it
is sent in batches, each as long as fits. ``count`` sums the batches' counts; ``list`` walks
them one after another as one :class:`AsyncPaginator` (:class:`BatchWalk`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from itertools import accumulate
from typing import Any, Final, TypeVar

import attrs

from .._exceptions import InvalidRequestError
from .._pagination import WALKS_ONCE, AsyncPaginator, RawPage, walk_closed
from .._validate import MAX_QUERY_LENGTH, check_paging, check_query, query_length
from ..models.page import Page

__all__ = [
    "BatchWalk",
    "check_export_room",
    "check_room",
    "id_batches",
    "sized_batches",
    "walked",
    "walked_ids",
]

T = TypeVar("T")
#: A comma, percent-encoded (an upper bound: yarl writes it as is).
_SEPARATOR = len("%2C")


def id_batches(
    method: str, params: dict[str, str], name: str, *, descending: bool = False
) -> list[dict[str, str]]:
    """``params`` once per batch of the comma-separated ids in ``params[name]``.

    Repeats are dropped (a count summed over batches would count them twice) and the ids
    sorted, so that batches walked in turn keep an id sort's order.
    """
    if name not in params:
        return [params]
    ids = [int(i) for i in params[name].split(",")]
    return sized_batches(method, params, name, ids, descending=descending)[0]


#: Ids a single C-level step (a set update, a sort) of :func:`sized_batches` takes at most:
#: on a thread, such a step holds the GIL, and with it the event loop, throughout.
_STEP = 8_192


def sized_batches(
    method: str, params: dict[str, str], name: str, ids: list[Any], *, descending: bool = False
) -> tuple[list[dict[str, str]], list[int]]:
    """:func:`id_batches` of the checked ``ids`` (not yet joined), and the ids each batch
    holds; for a thread, never holding the GIL for long.

    Joined, split and sorted in one go, 300,000 ids held it 40 to 120 ms a step (the join,
    the sort) on a busy machine, and the event loop waited as long. Here they are
    deduplicated and sorted ``_STEP`` at a time, and merged.
    """
    ordered = walked(ids)
    room = check_room(method, params, name, ordered[-1])
    joined: list[dict[str, str]] = []
    sizes: list[int] = []
    batch: list[str] = []
    used = 0
    for value in reversed(ordered) if descending else ordered:
        text = str(int(value))
        cost = len(text) + _SEPARATOR
        if batch and used + cost > room + _SEPARATOR:  # the first id of a batch has no separator
            # Joined as it fills: a str of every id, kept until the end, was 60 bytes an id
            # (12 MB for 200,000) beside the batches' own 11.
            joined.append({**params, name: ",".join(batch)})
            sizes.append(len(batch))
            batch, used = [], 0
        batch.append(text)
        used += cost
    joined.append({**params, name: ",".join(batch)})
    sizes.append(len(batch))
    return joined, sizes


def walked(ids: Sequence[Any]) -> list[Any]:
    """``ids`` as a walk takes them: each once, sorted (for a thread, never holding the GIL
    for long: sorted ``_STEP`` at a time, the runs merged, repeats dropped as they meet).

    No set of them all: its table alone was 40 bytes an id (8 MB for 200,000), beside them.
    """
    runs = [sorted(set(ids[start : start + _STEP])) for start in range(0, len(ids), _STEP)]
    return [value for value, _ in itertools.groupby(heapq.merge(*runs))]


def walked_ids(ids: list[Any]) -> str:
    """:func:`walked` ``ids``, comma-separated, ``_STEP`` at a time. Two lists of the same
    ids in any order or repeats give the same text: the same export."""
    values = walked(ids)
    return ",".join(
        ",".join(map(int.__repr__, values[start : start + _STEP]))
        for start in range(0, len(values), _STEP)
    )


def check_room(method: str, params: dict[str, str], name: str, longest: int) -> int:
    """The room ``params`` leave in a URL for the ids of ``params[name]``, ``longest`` the
    longest of them: InvalidRequestError if it would not fit even alone."""
    room = MAX_QUERY_LENGTH - query_length({**params, name: ""})
    if room < len(str(longest)):
        raise InvalidRequestError(
            f"{method}(): the filters take too much of the URL to leave room for an id"
        )
    return room


#: What an export's walks add to its filters: the sort by id of each, and the ``select=id`` of
#: its final check (an id-only walk) where the export selects no fields.
_EXPORT_WALK: Final = {"sidx": "id", "sord": "asc", "select": "id"}
#: What a sharded export's windows add: their bounds, of fixed width.
_WINDOW: Final = {"dateCreatedFrom": "2016-11-11T11:11:11", "dateCreatedTo": "2016-11-11T11:11:11"}
#: The longest id there is (ids are from 0 to 2**63 - 1): the room the final check's fetch
#: by id needs, of an export that names no ids.
_LONGEST_ID: Final = 2**63 - 1


def check_export_room(
    method: str, params: Mapping[str, str], *, windowed: bool = False, longest_id: int | None = None
) -> None:
    """Refuse, in ``method``'s name and before anything is sent, filters (``params``, the
    query of a count: no sort) that the walks of an export take past the URL's limit: with
    their sort by id and the final check's ``select=id`` (``windowed``: a sharded export's
    window bounds too), and room for an id of ``longest_id``'s length (if not given, of the
    longest id there is: the final check fetches the customers it finds missing by id).

    Checked as a count sends them, filters a few bytes under the limit passed: the walk was
    refused as ``list_rows()``, a call the caller never made, a sharded export's after its
    plan's counts; the final check's only after every customer was walked, at every rerun.
    Without the room of an id, so was its fetch of a customer it found missing.
    """
    walk = {**_EXPORT_WALK, **(_WINDOW if windowed else {})}
    walk.update((name, value) for name, value in params.items() if name != "idList")
    try:
        check_query(method, walk)
    except InvalidRequestError as err:  # bytes the caller did not give: said where they are
        added = "a shard's window, " if windowed else ""
        raise InvalidRequestError(
            f"{err}, as the export's walks send them (with {added}the sort by id and select=id)"
        ) from None
    if longest_id is not None:
        check_room(method, walk, "idList", longest_id)
        return
    # As that fetch sends them: the export's own select (or none), not its id walk's
    # select=id, which sends no idList. With it, filters whose every request fits (a stage of
    # 6,085 to 6,094 bytes) were refused.
    fetch = walk if "select" in params else {k: v for k, v in walk.items() if k != "select"}
    try:
        check_room(method, fetch, "idList", _LONGEST_ID)
    except InvalidRequestError as err:
        raise InvalidRequestError(
            f"{err} (the final check fetches a customer it finds missing by its id, which"
            f" takes up to {len(str(_LONGEST_ID))} digits)"
        ) from None


#: The walks of a :class:`BatchWalk`'s batches (``walks[i](start_page, max_items)``), and the
#: ids each batch holds.
Batches = tuple[list[Callable[[int, int | None], AsyncPaginator[T]]], list[int]]


class BatchWalk(AsyncPaginator[T]):
    """One walk over several batches' walks in turn: each record once, batch after batch.

    Page numbers go on from batch to batch: batch ``i`` owns the numbers after those of the
    batches before it, one per id it holds (a page has at least one record), so a
    ``checkpoint`` resumes in the right batch, whatever size the service serves.

    ``prepare``: the batches are made when the walk starts, by awaiting it (a long id list
    joined and split on a thread); ``walks`` and ``sizes`` are then empty.
    """

    def __init__(
        self,
        walks: list[Callable[[int, int | None], AsyncPaginator[T]]],
        sizes: list[int],
        *,
        prepare: Callable[[], Awaitable[Batches[T]]] | None = None,
        page_size: int,
        start_page: int = 1,
        max_items: int | None = None,
        concurrency: int = 1,
        **paging: Any,
    ) -> None:
        check_paging(page_size, start_page, max_items)
        super().__init__(
            _no_fetch,
            page_size=page_size,
            start_page=start_page,
            max_items=max_items,
            concurrency=concurrency,
            **paging,
        )
        self._prepare = prepare
        self._batches(walks, sizes)
        self._current: AsyncPaginator[T] | None = None
        self._walked = False

    def _batches(
        self, walks: list[Callable[[int, int | None], AsyncPaginator[T]]], sizes: list[int]
    ) -> None:
        self._walks = walks  # walks[i](start_page, max_items): batch i's walk
        self._offsets = list(accumulate(sizes, initial=0))

    async def pages(self) -> AsyncGenerator[Page[T], None]:
        """Yield the batches' pages in turn, numbered on across batches."""
        if self._walked:
            raise InvalidRequestError(WALKS_ONCE)
        self._walked = True
        if self._prepare is not None:
            self._batches(*await self._prepare())
        remaining = self.max_items
        last = len(self._walks) - 1
        try:
            for index, make in enumerate(self._walks):
                offset, end = self._offsets[index], self._offsets[index + 1]
                if self.start_page > end:
                    continue
                if remaining == 0:
                    return
                if self._closed:  # by aclose(), before the walk or between two batches
                    raise walk_closed()
                walk = make(max(1, self.start_page - offset), remaining)
                self._current = walk
                before = attrs.asdict(self.stats)  # the batches walked so far
                async for page in walk.pages():  # dropped if it fails: see below
                    self._tally(before, walk)
                    if remaining is not None:
                        remaining -= len(page.items)
                    yield Page(
                        page.items, offset + page.number, page.has_next or index < last, None, None
                    )
                    self.checkpoint = offset + page.number + 1
                self._tally(before, walk)
                # The next batch, unless max_items stopped this one: then where it stopped.
                self.checkpoint = offset + walk.checkpoint if remaining == 0 else end + 1
                self._current = None
        except BaseException:
            page = None  # the last page's records: see AsyncPaginator.pages
            raise
        finally:
            await self.aclose()

    def _tally(self, before: dict[str, int], walk: AsyncPaginator[T]) -> None:
        """``stats``: the batches before this one, and this one so far."""
        for name, value in attrs.asdict(walk.stats).items():
            setattr(self.stats, name, before[name] + value)

    async def aclose(self) -> None:
        """End the walk: cancel the pages of the batch under way still in flight (a consumer
        still walking gets :class:`DMHubError`, as from :meth:`AsyncPaginator.aclose`)."""
        self._closed = True  # ended, as its repr says
        if self._current is not None:
            current, self._current = self._current, None
            await current.aclose()


async def _no_fetch(number: int, size: int) -> RawPage[Any]:
    raise AssertionError("a BatchWalk fetches through the walks of its batches")
