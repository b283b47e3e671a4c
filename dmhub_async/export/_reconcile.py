"""The export's two checks against the service, both on id-only pages (``select=id``).

* :func:`start_page`: where a resumed walk must start so that nothing after its last id is
  skipped. The service pages by offset (docs/contract.md, "Pagination hazards"): customers
  deleted while the export was down shift the rest back, so the page number in the checkpoint
  may now start past records never written. Found from the last id written, not the page number.
* :func:`final_check`: every customer the service holds is in the file. An id-only walk is
  compared with the ids written; those missing are fetched by ``id_list`` and appended. It
  passes when two walks in a row saw the same customers, as many as the service counted
  before and after each.

Both add the retries their requests took to a :class:`Retries` (the report's ``retries``).

docs/reliability.md, "Resuming an export", has the scenarios and their figures.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs

from .._client import DMHubClient
from .._exceptions import ALONE_BY_ID, RAISE_MAX_RESPONSE_SIZE, ResponseTooLargeError
from .._pagination import AsyncPaginator
from .._sansio import date_of
from .._validate import short
from ._ids import IdSet

__all__ = ["Retries", "fetch_in_halves", "final_check", "start_page"]

T = TypeVar("T")

#: Walks of the final check before it gives up (the service changing during every one); it
#: passes on two walks in a row that agree.
CHECK_ROUNDS = 3
_MASK = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # an odd constant: a second sum of the ids, spread differently
#: Steps of the search for the start page (2**40 pages is beyond any service).
_MAX_PROBES = 80
#: Ids fetched a request by default: one page of the service's largest size (an export fetches
#: as many as its pages hold).
_FETCH_BATCH = 100


@attrs.define
class Retries:
    """The retries an export's requests took: its walk's, its counts' and its checks'."""

    taken: int = 0
    #: The ``Date`` of the answer to the first count (None: none said, or no count yet): the
    #: service's time before any walk of a check (a late check's, ``shards._late``).
    served: str | None = None
    counted: bool = False

    async def count(self, client: DMHubClient, filters: dict[str, Any]) -> int:
        """How many customers match ``filters``, its retries added."""
        total, retries = await client.customers._count(filters)
        self.taken += retries
        if not self.counted:
            self.counted = True
            self.served = date_of(client.last_response)
        return total

    async def to_list(self, walk: AsyncPaginator[T]) -> list[T]:
        """Every item of ``walk``, its retries added, when it fails too: a batch of the final
        or late check retried, then too large to read and fetched again in halves, had its
        retries dropped with its error (the check said none)."""
        try:
            return await walk.to_list()
        finally:
            self.taken += walk.stats.retries


async def start_page(
    client: DMHubClient,
    filters: dict[str, Any],
    page_size: int,
    hint: int,
    last_id: Any,
    retries: Retries,
) -> int:
    """The first page holding a customer after ``last_id`` (or the end), searched from ``hint``.

    A page is *behind* when it is full and its last id is at most ``last_id``: every record on
    it was written. Pages are in id order, so those behind come first; the answer is the first
    page not behind, found by galloping from ``hint`` and then bisecting: two id-only pages
    when nothing changed, about 2 log2(shift) when it did.
    """
    if last_id is None:
        return 1
    probed: dict[int, bool] = {}

    async def behind(number: int) -> bool:
        if number < 1:
            return True
        if number not in probed:
            ids = await _ids_on_page(client, filters, page_size, number, retries)
            probed[number] = len(ids) == page_size and ids[-1] <= last_id
        return probed[number]

    step, hint = 1, max(1, hint)
    if await behind(hint):
        low, high = hint, hint + 1
        while await behind(high) and len(probed) < _MAX_PROBES:
            low, high, step = high, hint + 2 * step, 2 * step
    else:
        low, high = hint - 1, hint
        while not await behind(low) and len(probed) < _MAX_PROBES:
            low, high, step = hint - 2 * step, low, 2 * step
    while high - low > 1 and len(probed) < _MAX_PROBES:
        middle = (low + high) // 2
        low, high = (middle, high) if await behind(middle) else (low, middle)
    return max(1, high)


async def _ids_on_page(
    client: DMHubClient, filters: dict[str, Any], page_size: int, number: int, retries: Retries
) -> list[Any]:
    walk = client.customers.list_rows(
        page_size=page_size, start_page=number, max_items=page_size, **{**filters, "select": "id"}
    )
    return [row.get("id") for row in await retries.to_list(walk)]


async def final_check(
    client: DMHubClient,
    filters: dict[str, Any],
    written: IdSet,
    append: Callable[[Sequence[Any]], Awaitable[None]],
    rows: Callable[..., AsyncPaginator[Any]],
    concurrency: int,
    retries: Retries,
    fetch_size: int = _FETCH_BATCH,
) -> tuple[bool, int | None]:
    """Whether every customer matching ``filters`` is in ``written``, and the last count.

    Customers missing from the file are fetched by id through ``rows`` (the export's walk,
    given filters to add), ``fetch_size`` a request (the export's page size: a page of 100
    whole customers may be more than the client reads, where the export's own pages were
    not), and handed to ``append`` (which writes them and adds them to ``written``). A round
    passes when the count before the id walk, the count after it and the ids it saw agree,
    every id it saw is now written, and the walk had no unverified page; otherwise customers
    changed during it and it runs again, :data:`CHECK_ROUNDS` times at most.
    """
    count = None
    previous: tuple[int, int, int] | None = None
    for _ in range(CHECK_ROUNDS):
        before = await retries.count(client, filters)
        walk = client.customers.list_rows(
            page_size=100, concurrency=concurrency, **{**filters, "select": "id"}
        )
        seen, missing, unfetched = 0, [], 0
        total, mixed = 0, 0  # the ids seen, summed two ways: the walk's fingerprint
        async with contextlib.aclosing(walk.pages()) as pages:
            async for page in pages:
                seen += len(page.items)
                ids = [row.get("id") for row in page.items]
                for customer_id in ids:
                    value = hash(customer_id)
                    total = (total + value) & _MASK
                    mixed = (mixed + (((value * _MIX) & _MASK) ^ (value >> 29))) & _MASK
                missing += [i for i in ids if i is not None and i not in written]
                if len(missing) >= fetch_size:
                    unfetched += await _fetch(rows, missing, written, append, retries, fetch_size)
                    missing = []
        retries.taken += walk.stats.retries
        unfetched += await _fetch(rows, missing, written, append, retries, fetch_size)
        count = await retries.count(client, filters)
        fingerprint = (seen, total, mixed)
        # Two walks in a row must see the same customers: under churn balanced between two
        # counts (as many sign-ups as deletes) one walk can skip some and still see as many as
        # counted, and the check said complete without them.
        if (
            before == count == seen
            and not unfetched
            and walk.stats.unverified == 0
            and fingerprint == previous
        ):
            return True, count
        previous = fingerprint
    return False, count


async def _fetch(
    rows: Callable[..., AsyncPaginator[Any]],
    ids: list[Any],
    written: IdSet,
    append: Callable[[Sequence[Any]], Awaitable[None]],
    retries: Retries,
    size: int,
) -> int:
    """Fetch ``ids``, ``size`` a request, and append them; how many did not come (gone, or
    changed since).

    A batch whose answer is larger than the client reads is fetched again in two halves
    (:func:`fetch_in_halves`): a sharded export's late check, which knows no page size,
    fetched 100 customers whose attr is large a request, over ``max_response_size``, and
    failed with ResponseTooLargeError after its walk, where the shards' smaller pages had
    passed. One customer too large for it is raised, naming it.
    """

    def walk(batch: list[Any], asked: int) -> AsyncPaginator[Any]:
        return rows(page_size=asked, id_list=batch)

    async with contextlib.aclosing(fetch_in_halves(walk, ids, size, retries)) as batches:
        async for _, found in batches:
            if found:
                await append(found)
    return sum(1 for i in ids if i not in written)


async def fetch_in_halves(
    walk: Callable[[list[Any], int], AsyncPaginator[T]],
    ids: Sequence[Any],
    size: int,
    retries: Retries,
) -> AsyncGenerator[tuple[list[Any], list[T]], None]:
    """Each batch of ``ids`` (``size`` a request, in their order) with the rows its request
    answered: ``walk(batch, asked)``, ``asked`` the rows to ask for (``size``; a half's as
    many as its ids, so a service that ignores idList, answering whole pages, is cut short
    too). Its retries go to ``retries``.

    A batch whose answer is larger than the client reads is fetched again in two halves, the
    first first (each of them halved so in turn); one id too large for the client is raised,
    naming its customer. A caller that stops at a batch (the owner's look-up, at the first
    that holds one) sends no more requests.
    """
    pending = collections.deque(
        (list(ids[start : start + size]), size) for start in range(0, len(ids), size)
    )
    while pending:
        batch, asked = pending.popleft()
        try:
            found = await retries.to_list(walk(batch, asked))
        except ResponseTooLargeError as err:
            if len(batch) == 1:
                # The customer named: "the answer is larger" alone said nothing of which
                # customer, nor that no smaller page would hold it.
                named = f" (customer {short(batch[0])}{ALONE_BY_ID}){RAISE_MAX_RESPONSE_SIZE}"
                err.args = (str(err).replace(RAISE_MAX_RESPONSE_SIZE, named, 1), *err.args[1:])
                if err.description is not None:  # its repr's
                    err.description = err.description.replace(RAISE_MAX_RESPONSE_SIZE, named, 1)
                raise
            half = len(batch) // 2
            first, rest = batch[:half], batch[half:]
            pending.extendleft(((rest, len(rest)), (first, len(first))))  # the first half first
            continue
        yield batch, found
