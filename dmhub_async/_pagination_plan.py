"""The paginator's decisions, with no I/O: what to yield, which page to read next, when to stop.

:class:`AsyncPaginator` (``_pagination.py``) reads pages and hands every read to a
:class:`WalkPlan`, which answers with the pages to yield; the plan also says which page it
needs next (:attr:`WalkPlan.next_page`) and how far ahead reading is worth it
(:meth:`WalkPlan.last_page_to_request`). Plain data in, plain data out: the unit tests drive a
plan with lists.

The service pages by offset (docs/contract.md, "Pagination hazards"): a record inserted behind
the cursor shifts later pages forward (a record comes twice: ``_seen_records`` drops it), a
record deleted behind it shifts them back (a record slips past a page boundary unread: the
drift repair, below, reads it again). A hostile or broken service can also serve pages that
never end; the plan stops such a walk with :class:`ResponseDecodeError` (docs/reliability.md,
"Hostile server").
"""

from __future__ import annotations

import math
from typing import Any, Generic, TypeVar

import attrs

from ._exceptions import ResponseDecodeError
from ._seen_records import SeenRecords
from .models.page import Page

__all__ = [
    "MAX_READS_WITHOUT_PROGRESS",
    "MAX_STEPS_BACK",
    "STEPS_BEFORE_SEARCH",
    "PaginatorStats",
    "RawPage",
    "WalkPlan",
]

T = TypeVar("T")

#: Pages one drift repair may step back before it takes a page unverified. (A resumed walk's
#: search for its place is not bounded so: see :meth:`WalkPlan._locate`.)
MAX_STEPS_BACK = 32
#: Pages a resumed walk steps back one at a time, looking for its place, before it gallops
#: back and bisects (:meth:`WalkPlan._locate`): a resume after a few pages of deletes costs a
#: read a page, as it did.
STEPS_BEFORE_SEARCH = 4
#: Reads in a row that bring no new record and reach no further in key order, after which the
#: walk stops: more than a drift repair's reads (its steps back, and as many forward again),
#: so a repair never trips it. (It was MAX_STEPS_BACK + 8, which a repair could pass.)
MAX_READS_WITHOUT_PROGRESS = 2 * MAX_STEPS_BACK + 8
#: A signature not worked out yet (a page's may be None).
_UNKNOWN: Any = object()


@attrs.define
class RawPage(Generic[T]):
    """A page as one request returned it; ``None`` where the service did not say.

    Not changed once made, but not frozen, as :class:`~dmhub_async._sansio.Request`: a frozen
    attrs class sets each field through ``object.__setattr__``, and every page makes one. Its
    retries are counted as they are made (``RetryTally``), not carried here: a page's request
    took the request path of any call (``Session.request``), which returns the data alone.
    """

    items: list[T]
    has_next: bool | None = None
    total_records: int | None = None
    total_pages: int | None = None
    #: Each item's key, when the page's reader took them already (``list_rows``: the ids it
    #: checks); None: the walk's key function gives them.
    keys: list[Any] | None = None


@attrs.define
class PaginatorStats:
    """What a walk has done: pages fetched, items yielded, repeats dropped, retries made."""

    pages: int = 0
    items: int = 0
    duplicates: int = 0
    retries: int = 0
    refetches: int = 0
    #: Pages a record may have slipped past unread: taken after a drift repair ran out of steps
    #: back, or, sorted by a field other than the id, holding a record met before that no
    #: insert explains (the count stood still, fell, or grew by fewer: it moved in the sort
    #: order during the walk, shifting others); and an empty page (the walk's end) where its
    #: totals or ``hasNext`` say there are records.
    unverified: int = 0


@attrs.define
class _Repair(Generic[T]):
    """A drift repair under way: stepping back from ``target`` until a page reaches back to
    what was yielded, then forward to ``target`` again."""

    #: The page whose read found the gap; the repair ends when it is taken.
    target: int
    #: The epoch of the last page taken (see :meth:`WalkPlan.note_read`).
    taken_epoch: int
    steps_left: int = MAX_STEPS_BACK
    #: The latest read of each page stepped back over, with its epoch.
    stepped_over: dict[int, tuple[RawPage[T], int]] = attrs.Factory(dict)
    #: The signature of each page as taken before the repair began, and the epoch it was read
    #: in (every read the repair steps back over completed later).
    taken_before: dict[int, tuple[Any, int]] = attrs.Factory(dict)
    #: A resumed walk's search for its place under way (:meth:`WalkPlan._locate`): the lowest
    #: page read that does not reach back to ``resume_after``, the highest that does (with its
    #: read and epoch), and the pages read so far.
    locating: bool = False
    beyond: int = 0
    reached: tuple[int, RawPage[T], int] | None = None
    probes: int = 0
    #: The count the read of the last page taken before the repair said (None: not said):
    #: what the page it ends on is checked against (see :meth:`WalkPlan._take_checked`).
    taken_records: int | None = None


def _grew_by(before: int | None, after: int | None, records: int) -> bool:
    """Whether the count went from ``before`` to ``after`` by ``records`` or more: as many
    inserts behind the cursor as records a page met again (None: not said)."""
    return before is not None and after is not None and after - before >= records


class WalkPlan(Generic[T]):
    """The decisions of one walk over a page-numbered listing.

    Feed it every read: :meth:`note_read` as the read completes (reads fetched ahead
    included, in the order they complete), then :meth:`take` for the page it asked for
    (:attr:`next_page`), which returns the pages to yield. :attr:`finished` says when the walk
    is over; :attr:`repairing`, that reads must now be made one at a time and that pages read
    ahead are stale.
    """

    def __init__(
        self,
        seen: SeenRecords[T],
        *,
        page_size: int,
        start_page: int = 1,
        max_items: int | None = None,
        stats: PaginatorStats | None = None,
    ) -> None:
        self.seen = seen
        self.page_size = page_size
        self.start_page = start_page
        # A walk resumed after a key (``resume_after``) checks its start page too, and may
        # step back before it: records deleted behind while it was stopped shift back.
        self._resumed = seen.key is not None and seen.last_key is not None
        self._first_page = 1 if self._resumed else start_page
        self.stats = stats if stats is not None else PaginatorStats()
        #: The page the walk needs next.
        self.next_page = start_page
        self.finished = max_items == 0
        #: Items the walk may still yield (None: no limit).
        self.items_left = max_items
        #: The page ``max_items`` cut short, if any: a later walk resumes on it, not after it.
        self.cut_short: int | None = None
        #: Rows a page the service serves: learned from the first read of the start page,
        #: which may be short because the service caps the page size (docs/contract.md, "list").
        self.served_size: int | None = None
        self._repair: _Repair[T] | None = None
        # Bumped whenever a read reports another ``records`` than the read before it: two
        # pages read in the same epoch saw the same count all along.
        self._epoch = 0
        # The first epoch of the latest run of changes that all went one way (the count only
        # grew, or only shrank, since): a page read again unmoved proves nothing across a turn.
        self._one_way_since = 0
        self._direction = 0  # +1: the count grew at the latest change; -1: it shrank
        self._latest_records: int | None = None
        self._latest_pages: int | None = None
        self._end_page: int | None = None  # a page a read found to be the last
        self._largest_last_page: int | None = None
        self._taken_epoch: int | None = None  # the epoch the page taken last was read in
        self._taken_records: int | None = None  # and the records its read counted
        self._taken_signature: tuple[Any, ...] | None = None
        # The signature of the pages taken lately, by number, and the epoch each was read in:
        # what a repair compares a page read again with (see _repair_step).
        self._signatures: dict[int, tuple[Any, int]] = {}
        self._reads_without_progress = 0

    @property
    def repairing(self) -> bool:
        """A drift repair is under way: read :attr:`next_page` now, nothing ahead."""
        return self._repair is not None

    # -- reads ------------------------------------------------------------------------------

    def note_read(self, number: int, raw: RawPage[T]) -> int:
        """Learn from a read as it completes; its epoch, to pass to :meth:`take`."""
        if self.served_size is None and number == self.start_page:
            short = 0 < len(raw.items) < self.page_size
            self.served_size = len(raw.items) if short else self.page_size
        if raw.total_records is not None:
            latest = self._latest_records
            if latest is not None and raw.total_records != latest:
                direction = 1 if raw.total_records > latest else -1
                if direction != self._direction:
                    if self._direction:  # a turn: the run of one-way changes starts anew
                        self._one_way_since = self._epoch
                    self._direction = direction
                self._epoch += 1
            self._latest_records = raw.total_records
        if raw.total_records is not None or raw.total_pages is not None:
            self._latest_pages = raw.total_pages
        # Keep the nearest page known to end the walk, from those still ahead of it.
        end = self._end_page
        nearer = end is None or end < self.next_page or number < end
        if nearer and self._ends_the_walk(number, raw):
            self._end_page = number
        return self._epoch

    def _last_page_of(self, records: int | None, pages: int | None) -> int | None:
        """The last page the totals imply, at the size the service serves."""
        if pages is not None:
            return pages
        if records is None:
            return None
        return max(1, math.ceil(records / (self.served_size or self.page_size)))

    def _holds_records(self, number: int, raw: RawPage[T]) -> bool:
        """Whether page ``number``'s own totals (or ``hasNext``) say it holds records.

        The page count first, as the service counts its pages (see :meth:`_last_page_of`);
        else records, counted at the size asked, not the size served: a short start page makes
        the served size a guess (the service's cap, or the end), and a walk past its end must
        not be taken for a short one.
        """
        if raw.has_next:
            return True
        if raw.total_pages is not None:
            return number <= raw.total_pages
        return raw.total_records is not None and raw.total_records > (number - 1) * self.page_size

    def _ends_the_walk(self, number: int, raw: RawPage[T]) -> bool:
        """Whether page ``number``, read as ``raw``, is the last."""
        if not raw.items:
            return True
        if raw.has_next is not None:
            return not raw.has_next
        last = self._last_page_of(raw.total_records, raw.total_pages)
        if last is not None:
            return number >= last
        # No totals: a page shorter than the service serves is the last. A short start page
        # is ambiguous (the end, or the service capping the page size): its length is taken
        # as the size served, and the next page tells (empty: the end).
        if number == self.start_page or self.served_size is None:
            return False
        return len(raw.items) < self.served_size

    def last_page_to_request(self, window: int) -> int:
        """The last page worth having requested now, at most ``window`` pages from the next.

        Nothing past a page known to be the last (by the totals, ``hasNext``, or a short
        page), nor more pages than ``max_items`` can use; until the start page is read, only
        the start page: it tells the totals and the size served.
        """
        if self.finished:
            return self.next_page - 1
        if self.served_size is None or self.repairing:
            return self.next_page
        limit = self.next_page + window - 1
        for last in (
            self._last_page_of(self._latest_records, self._latest_pages),
            self._end_page,
        ):
            if last is not None and last >= self.next_page:
                limit = min(limit, last)
        if self.items_left is not None:
            pages_left = max(1, math.ceil(self.items_left / self.served_size))
            limit = min(limit, self.next_page + pages_left - 1)
        return limit

    # -- takes ------------------------------------------------------------------------------

    def take(self, number: int, raw: RawPage[T], epoch: int) -> list[Page[T]]:
        """The pages to yield, in order, now that page ``number`` was read as ``raw``.

        Raises:
            ResponseDecodeError: the service serves pages that make no progress (one page
                again, pages in a cycle, far more pages than its totals allow).
        """
        if number != self.next_page or self.finished:
            raise ValueError(f"the plan needs page {self.next_page}, not {number}")
        reaches_further = self.seen.reaches_further(raw.items)
        if self._repair is None:
            pages = self._take_next(number, raw, epoch)
        else:
            pages = self._repair_step(self._repair, number, raw, epoch)
        if reaches_further or any(page.items for page in pages):
            self._reads_without_progress = 0
        else:
            self._reads_without_progress += 1
            if self._reads_without_progress >= MAX_READS_WITHOUT_PROGRESS and not self.finished:
                raise ResponseDecodeError(
                    f"the last {self._reads_without_progress} pages read (up to page {number})"
                    " brought no new record: the service serves pages that make no progress,"
                    " so the walk stops rather than loop",
                    status=200,
                )
        return pages

    def _take_next(self, number: int, raw: RawPage[T], epoch: int) -> list[Page[T]]:
        """Page ``number`` read for the first time, in order."""
        self.stats.pages += 1
        self._check_within_totals(number, raw)
        signature = self.seen.signature(raw.items)
        # (Unless records changed in between: then a delete can shift a whole page back.)
        if (
            signature is not None
            and signature == self._taken_signature
            and epoch == self._taken_epoch
        ):
            raise ResponseDecodeError(
                f"page {number} repeats page {number - 1}: the service ignored the page"
                " number, so the walk stops rather than loop",
                status=200,
            )
        if signature is not None and self.seen.against_order(signature):
            # Sorted by the id, a page's records run one way: a page the other way (a service
            # ignoring sord) had every record but its first dropped as a repeat, silently.
            raise ResponseDecodeError(
                f"page {number} is not in the order asked (its last record's id comes before"
                " its first's): the service ignored the sort order, so the walk stops rather"
                " than drop its records as repeats",
                status=200,
            )
        self._taken_signature = signature
        changed = self._taken_epoch is not None and epoch != self._taken_epoch
        # A resumed walk's start page: nothing says what moved while the walk was stopped.
        resumed = self._resumed and number == self.start_page
        if (
            (changed or resumed)
            and number > self._first_page
            and not self.seen.reaches_back(raw.items)
        ):
            # Records changed between the reads of the page before and this one, and this
            # page does not reach back to what was yielded: a delete behind the cursor may
            # have shifted records back across the boundary. Step back until a page reaches
            # back, then forward to this page again. A resumed walk's start page searches
            # back for its place (_locate), however far it moved.
            taken = self._taken_epoch if self._taken_epoch is not None else -1
            self._repair = _Repair(
                target=number,
                taken_epoch=taken,
                taken_before=dict(self._signatures),
                locating=resumed,
                beyond=number,
                taken_records=self._taken_records,
            )
            # The place found may lie before the start page: the walk reads that page again
            # in its turn, as any other.
            self._resumed = False
            return self._repair_step(self._repair, number, raw, epoch)
        if not raw.items and self._holds_records(number, raw):
            # An empty page where the totals say there are records, the count unmoved since
            # the page before (else the repair above ran): the count lags the rows (a cache, a
            # replica) or the service lost them. Customers deleted behind the cursor meanwhile
            # shifted the rest back, unread; the walk ends here all the same, as an empty page
            # ends it, but says it may be short.
            self.stats.unverified += 1
        return [self._take_checked(number, raw, epoch, signature, self._taken_records)]

    def _take_checked(
        self, number: int, raw: RawPage[T], epoch: int, signature: Any, since: int | None
    ) -> Page[T]:
        """:meth:`_take_in_order`, the page counted unverified when, sorted by a field that can
        change (not the id), it holds a record met before that no insert explains.

        ``since``: the count when the records before it were read (the page taken before it,
        or the last one taken before a repair), None when not said.
        """
        repeats = self.stats.duplicates
        page = self._take_in_order(number, raw, epoch, signature)
        repeats = self.stats.duplicates - repeats
        if (
            self.seen.dedupe == "set"
            and repeats
            and not _grew_by(since, raw.total_records, repeats)
        ):
            # A record met again while the count stood still (or fell, or grew by fewer than
            # the records met again) was not inserted behind the cursor but moved there from
            # behind it, shifting the records in between back: one may have slipped past a
            # page boundary unread, and no re-read can find it. (Counted only while the count
            # stood still, and never on the page a repair ends on, a move and a delete between
            # two reads lost customers, the page said whole.)
            self.stats.unverified += 1
        return page

    def _check_within_totals(self, number: int, raw: RawPage[T]) -> None:
        """Stop a walk that went far past every total the service reported."""
        last = self._last_page_of(raw.total_records, raw.total_pages)
        if last is not None:
            self._largest_last_page = max(last, self._largest_last_page or 0)
        largest = self._largest_last_page
        # (An empty page ends the walk, whatever its number: a resume may start past the end,
        # and one in the unused page numbers of an id_list's batch was refused here.)
        if raw.items and largest is not None and number > 2 * largest + MAX_READS_WITHOUT_PROGRESS:
            raise ResponseDecodeError(
                f"page {number} is far past the {largest} pages the service's totals allow:"
                " it keeps saying there is more, so the walk stops rather than loop",
                status=200,
            )

    def _repair_step(
        self, repair: _Repair[T], number: int, raw: RawPage[T], epoch: int
    ) -> list[Page[T]]:
        """One read of the repair: step back once more, or take pages forward from here.

        A page is taken when it reaches back to what was yielded, or was read in the same
        epoch as the page taken before it, so no record slips between two reads; or, read
        between the first take of the page before it and a read of that page again that came
        back as first taken, with every change of the count in that time going one way:
        records changed, but not behind that page, so none slipped into the gap. (On an
        account whose count changes between any two reads, new customers coming in, no two
        reads share an epoch: the repair stepped back and forth between two pages until the
        walk stopped.) A page read before that first take (read ahead), or across a turn of
        the count (a delete behind, then an insert behind), is read again: a record may have
        slipped back across the boundary and forward again.
        """
        if repair.locating:
            located = self._locate(repair, number, raw, epoch)
            if located is None:
                return []
            number, raw, epoch = located  # it reaches back: taken below, then forward
        pages: list[Page[T]] = []
        unmoved = False
        while True:
            contiguous = (
                unmoved
                or epoch == repair.taken_epoch
                or number == 1  # nothing lies before the first page
                or self.seen.reaches_back(raw.items)
            )
            if not contiguous and number > self._first_page and repair.steps_left:
                repair.stepped_over[number] = (raw, epoch)
                repair.steps_left -= 1
                self.stats.refetches += 1
                self.next_page = number - 1
                last = self._last_page_of(raw.total_records, raw.total_pages)
                if not raw.items and last is not None:  # past the end: back to the last page
                    self.next_page = max(self._first_page, min(number - 1, last))
                return pages
            if not contiguous:
                self.stats.unverified += 1
            if number == repair.target or not raw.items:  # (an empty page: the walk's end)
                self._repair = None
                # What the next page is compared with (a page served twice): this read's, not
                # the page that began the repair (a resume's place may lie before it).
                self._taken_signature = signature = self.seen.signature(raw.items)
                since = repair.taken_records
                return [*pages, self._take_checked(number, raw, epoch, signature, since)]
            page = self._yield(raw, number, has_next=True)
            if page.items:
                pages.append(page)
            if self.finished:
                return pages
            first_take = repair.taken_before.get(number)
            repair.taken_epoch, number = epoch, number + 1
            stepped_over = repair.stepped_over.pop(number, None)
            unmoved = (
                first_take is not None
                and stepped_over is not None
                and first_take[0] == self.seen.signature(raw.items)
                and first_take[1] < stepped_over[1]  # read after that first take
                and first_take[1] >= self._one_way_since  # no turn of the count since it
            )
            if stepped_over is None or (stepped_over[1] != repair.taken_epoch and not unmoved):
                self.stats.refetches += 1
                self.next_page = number
                return pages
            # Read in the same epoch as the page just taken, or after it was last taken as it
            # is now (see above).
            raw, epoch = stepped_over

    def _locate(
        self, repair: _Repair[T], number: int, raw: RawPage[T], epoch: int
    ) -> tuple[int, RawPage[T], int] | None:
        """One read of a resumed walk's search for its place; the page found, or None (the
        next to read is :attr:`next_page`).

        The place is the last page that reaches back to ``resume_after`` (its first record at
        or before it: no record after it can lie before that page); the repair goes forward
        from there as after any step back. A page at a time for the first
        :data:`STEPS_BEFORE_SEARCH` pages (a resume with nothing moved costs one read more, as
        it did), then galloping back 2, 4, 8... pages and bisecting between the last page that
        does not reach back and the page that does: about 2 log2(pages moved) reads. It was
        32 steps back, and past them the walk went on unverified, skipping every customer in
        between (deletes of more than 32 pages while the walk was stopped, a checkpoint of
        another page size). Each read narrows the pages searched, so the search ends.
        """
        if number <= self._first_page or self.seen.reaches_back(raw.items):
            repair.reached = (number, raw, epoch)
        else:
            repair.stepped_over[number] = (raw, epoch)
            repair.beyond = number
        reached = repair.reached
        if reached is not None and repair.beyond - reached[0] <= 1:
            repair.locating = False
            repair.target = repair.beyond  # then the walk reads on with pages ahead
            return reached
        self.stats.refetches += 1
        repair.probes += 1
        if reached is not None:
            self.next_page = (reached[0] + repair.beyond) // 2
            return None
        back = repair.probes - STEPS_BEFORE_SEARCH
        page = repair.beyond - (2**back if back > 0 else 1)
        last = self._last_page_of(raw.total_records, raw.total_pages)
        if not raw.items and last is not None:  # past the end: no further than the last page
            page = min(page, last)
        self.next_page = max(self._first_page, page)
        return None

    def _take_in_order(
        self, number: int, raw: RawPage[T], epoch: int, signature: Any = _UNKNOWN
    ) -> Page[T]:
        """Page ``number`` taken as the next of the walk: the walk goes on after it, or ends.

        ``signature``: the page's, when the caller has it already (every page of a walk).
        """
        self._taken_epoch = epoch
        self._taken_records = raw.total_records
        signatures = self._signatures
        if signature is _UNKNOWN:
            signature = self.seen.signature(raw.items)
        signatures[number] = (signature, epoch)
        signatures.pop(number - MAX_STEPS_BACK - 1, None)  # no repair steps back further
        last = self._ends_the_walk(number, raw)
        page = self._yield(raw, number, has_next=not last)
        self.finished = self.finished or last
        self.next_page = number + 1
        return page

    def _yield(self, raw: RawPage[T], number: int, *, has_next: bool) -> Page[T]:
        """The page to yield: its records not yielded before, up to ``max_items``."""
        items, repeats = self.seen.fresh(raw.items, raw.keys)
        self.stats.duplicates += repeats
        if self.items_left is not None:
            if len(items) > self.items_left:
                self.cut_short = number
            del items[self.items_left :]
            self.items_left -= len(items)
            if self.items_left == 0:
                self.finished = True
        self.stats.items += len(items)
        return Page(items, number, has_next, raw.total_records, raw.total_pages)
