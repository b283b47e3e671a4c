"""The simulator's customer table: seeded rows, edited rows, indexes, identities and statistics."""

from __future__ import annotations

import calendar
import random
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from heapq import merge
from itertools import accumulate, compress
from typing import Any

from ._fields import CUSTOMER_FIELDS, Row, apply_fields
from ._filter_index import SeededIndex, genes_match
from ._filters import Filters, row_matches, sort_key
from ._seeded_rows import (
    FIRST_ID,
    decode_customer,
    decode_statistics,
    email_of,
    has_email,
    has_mobile,
    has_statistics,
    identities_of,
    identity_index,
    index_of_email,
    index_of_mobile,
    iso,
    mobile_of,
)

#: The largest id the service's (and the store's) 64-bit ids hold.
MAX_CUSTOMER_ID = 2**63 - 1

Identity = tuple[str, str, "str | None"]


#: Most seeded rows kept decoded (about 4 KB each).
_DECODED_CACHE = 50_000
#: Most filters whose matching ids are kept (8 bytes an id).
_FOUND_CACHE = 8


#: Words drawn at once when seeding (32 MB): randbytes draws at most 2**31 bits at a time, and
#: seeding 33 million customers in one draw was a raw OverflowError.
_CHUNK_WORDS = 1 << 22


def _random_words(rng: random.Random, n: int) -> array[int]:
    """``n`` random 64-bit words, the same as one ``randbytes(8 * n)``, drawn in chunks."""
    words = array("Q")
    for done in range(0, n, _CHUNK_WORDS):
        words.frombytes(rng.randbytes(8 * min(_CHUNK_WORDS, n - done)))
    return words


#: 9999-12-31T23:59:59Z: the last second the contract's timestamps can write.
_LAST_SECOND = 253_402_300_799


def _moved_join(joined: str, now: int) -> str:
    """``dateJoin`` after a write that does not set it: the write's time, or a second after
    ``joined`` when that is later (a clock standing still still moves it), to the second."""
    try:
        before = calendar.timegm(time.strptime(joined[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:  # not the contract's form (the simulator refuses those): the write's time
        return iso(now)
    return iso(min(max(now, before + 1), _LAST_SECOND))


class CustomerStore:
    """All customers of one simulator, in id order, with the lookups the API needs."""

    def __init__(self, seed: int, now: Callable[[], float]) -> None:
        self._rng = random.Random(seed)
        self._offset = self._rng.getrandbits(48)
        self._now = now
        # Seeded rows: genes and ids by row index (ids ascending), and whether the row lives.
        self._ga = array("Q")
        self._gb = array("Q")
        self._gid = array("q")
        self._alive = bytearray()
        # Rows created through the API, and seeded rows once edited: full wire dicts.
        self._rows: dict[int, Row] = {}
        # Seeded rows decoded once, so repeated walks cost the simulator little CPU (on a
        # 2-core machine its CPU is the client's); edited rows live in _rows, which wins.
        self._decoded: dict[int, Row] = {}
        self._by_mobile: dict[str, int] = {}
        self._by_email: dict[str, int] = {}
        # Identities bound through the API: (type, value) -> (customer id, name).
        self._bound: dict[tuple[str, str], tuple[int, str | None]] = {}
        self._bound_of: dict[int, list[tuple[str, str]]] = {}
        self._live = array("q")  # every live id, ascending: list pages are slices of it
        self._stat_ids = array("q")  # live seeded ids that have a statistics record, ascending
        self._last_id = FIRST_ID - 1
        self._seeded_index = SeededIndex(self._ga, self._gb)
        # Ids passing recent filters, kept while nothing changes: the pages of one walk share it.
        self._version = 0
        self._found: dict[tuple[Filters, int], array[int]] = {}

    # -- seeding --------------------------------------------------------------------------------

    def seed(self, n: int) -> None:
        """Append ``n`` generated customers, with ids above every existing one."""
        if n <= 0:
            return
        if self._last_id > MAX_CUSTOMER_ID - 3 * n:  # each id is 1 to 3 past the last
            raise ValueError(f"the simulator has no ids left for {n} more customers")
        self._version += 1
        start = len(self._gid)
        ga = _random_words(self._rng, n)
        gb = _random_words(self._rng, n)
        ids = array("q", accumulate((1 + (a & 3) for a in ga), initial=self._last_id))[1:]
        self._last_id = ids[-1]
        self._ga.extend(ga)
        self._gb.extend(gb)
        self._gid.extend(ids)
        self._alive.extend(b"\x01" * n)
        self._live.extend(ids)
        self._stat_ids.extend(compress(ids, (has_statistics(a) for a in ga)))
        if self._by_mobile or self._by_email:
            self._drop_clashes(start)

    def _drop_clashes(self, start: int) -> None:
        # A mobile or e-mail a client already used must stay unique: clear it on the new row.
        for k in range(start, len(self._gid)):
            a = self._ga[k]
            clash: dict[str, None] = {}
            if has_mobile(a) and mobile_of(k, self._offset) in self._by_mobile:
                clash["mobile"] = None
            if has_email(a) and email_of(k, a) in self._by_email:
                clash["email"] = None
            if clash:
                row = self._materialize(self._gid[k])
                row.update(clash)

    # -- reads ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    def ids(self) -> list[int]:
        """Every live customer id, ascending."""
        return self._live.tolist()

    def _index(self, customer_id: int) -> int | None:
        k = bisect_left(self._gid, customer_id)
        if k < len(self._gid) and self._gid[k] == customer_id:
            return k
        return None

    def get(self, customer_id: int) -> Row | None:
        """The wire dict of a live customer (do not mutate it), or None."""
        row = self._rows.get(customer_id)
        if row is not None:
            return row
        k = self._index(customer_id)
        if k is None or not self._alive[k]:
            return None
        row = self._decoded.get(customer_id)
        if row is None:
            row = decode_customer(k, customer_id, self._ga[k], self._gb[k], self._offset)
            if len(self._decoded) < _DECODED_CACHE:
                self._decoded[customer_id] = row
        return row

    def _seeded(self, k: int) -> int | None:
        # The id of seeded row k if it lives and was never edited (edited rows sit in _rows).
        if k < 0 or k >= len(self._gid) or not self._alive[k]:
            return None
        customer_id = self._gid[k]
        return None if customer_id in self._rows else customer_id

    def find_by_mobile(self, mobile: str) -> int | None:
        """The id of the customer with this mobile number."""
        found = self._by_mobile.get(mobile)
        return found if found is not None else self._seeded_with_mobile(mobile)

    def _seeded_with_mobile(self, mobile: str) -> int | None:
        # The seeded row, never edited, that has this mobile number.
        k = index_of_mobile(mobile, self._offset)
        if k is None or (customer_id := self._seeded(k)) is None:
            return None
        found = has_mobile(self._ga[k]) and mobile_of(k, self._offset) == mobile
        return customer_id if found else None

    def find_by_email(self, email: str) -> int | None:
        """The id of the customer with this e-mail address."""
        found = self._by_email.get(email)
        return found if found is not None else self._seeded_with_email(email)

    def _seeded_with_email(self, email: str) -> int | None:
        # The seeded row, never edited, that has this e-mail address.
        k = index_of_email(email)
        if k is None or (customer_id := self._seeded(k)) is None:
            return None
        a = self._ga[k]
        return customer_id if has_email(a) and email_of(k, a) == email else None

    def _holders(self, field: str, value: str, seeded: int | None) -> list[int]:
        """Every customer whose ``field`` is ``value``, ascending: an update may give a customer
        another's mobile or e-mail, and the index above keeps one id for each."""
        found = {i for i, row in self._rows.items() if row[field] == value}
        if seeded is not None:
            found.add(seeded)
        return sorted(found)

    def find_identity(self, type_: str, value: str) -> tuple[int, str | None] | None:
        """The (customer id, identity name) an identity is bound to."""
        bound = self._bound.get((type_, value))
        if bound is not None:
            return bound
        k = identity_index(type_, value, self._offset)
        if k is None or k < 0 or k >= len(self._gid) or not self._alive[k]:
            return None
        for t, v, name in identities_of(k, self._ga[k], self._offset):
            if t == type_ and v == value:
                return self._gid[k], name
        return None

    def identities(self, customer_id: int) -> list[Identity]:
        """The identities bound to a customer: seeded ones first, then those added by the API."""
        out: list[Identity] = []
        k = self._index(customer_id)
        if k is not None and self._alive[k]:
            out.extend(identities_of(k, self._ga[k], self._offset))
        for key in self._bound_of.get(customer_id, ()):
            out.append((key[0], key[1], self._bound[key][1]))
        return out

    # -- writes ---------------------------------------------------------------------------------

    def _timestamp(self) -> str:
        return iso(int(self._now()))

    def _materialize(self, customer_id: int) -> Row:
        # Move a seeded row into _rows so it can be edited; its unique values join the indexes.
        row = self._rows.get(customer_id)
        if row is None:
            seeded = self.get(customer_id)
            if seeded is None:
                raise KeyError(customer_id)
            row = dict(seeded)  # the decoded cache keeps the pristine row
            self._rows[customer_id] = row
            self._index_row(row)
        return row

    def _index_row(self, row: Row) -> None:
        if row.get("mobile"):
            self._by_mobile[row["mobile"]] = row["id"]
        if row.get("email"):
            self._by_email[row["email"]] = row["id"]

    def _unindex_row(self, row: Row) -> None:
        if row.get("mobile") and self._by_mobile.get(row["mobile"]) == row["id"]:
            del self._by_mobile[row["mobile"]]
        if row.get("email") and self._by_email.get(row["email"]) == row["id"]:
            del self._by_email[row["email"]]

    def _next_id(self) -> int:
        # Increasing, not contiguous, like the service's.
        after = self._last_id + 1 + self._rng.randrange(3)
        if after > MAX_CUSTOMER_ID:
            raise ValueError(f"the simulator has no id left after {self._last_id}")
        self._last_id = after
        return after

    def create(self, fields: Mapping[str, Any], customer_id: int | None = None) -> Row:
        """Create a customer from writable wire fields; returns its wire dict."""
        self._version += 1
        if customer_id is None:
            customer_id = self._next_id()
        elif (
            isinstance(customer_id, bool)
            or not isinstance(customer_id, int)
            or not 1 <= customer_id <= MAX_CUSTOMER_ID
        ):
            # Checked before anything is kept: 2**63 was stored, then failed the live index
            # half-way, and every later create answered 500.
            raise ValueError(f"a customer id is an int from 1 to 2**63 - 1, not {customer_id!r}")
        elif customer_id in self:
            raise ValueError(f"customer {customer_id} exists")
        now = self._timestamp()
        row: Row = dict.fromkeys(CUSTOMER_FIELDS)
        row.update(
            id=customer_id,
            mobileVerified=False,
            emailVerified=False,
            isEmployee=False,
            isMember=False,
            dateJoin=now,
            lastUpdated=now,
            dateCreated=now,
            attr={},
        )
        apply_fields(row, fields, clear=False)
        self._rows[customer_id] = row
        self._index_row(row)
        if customer_id > self._last_id:
            self._last_id = customer_id
        k = bisect_left(self._live, customer_id)
        self._live.insert(k, customer_id)
        return row

    def update(self, customer_id: int, fields: Mapping[str, Any], *, clear: bool) -> Row:
        """Apply writable fields to a customer; ``clear`` lets null clear a field (PUT)."""
        self._version += 1
        row = self._materialize(customer_id)
        before = (row["mobile"], row["email"])
        self._unindex_row(row)
        apply_fields(row, fields, clear=clear)
        now = int(self._now())
        row["lastUpdated"] = iso(now)
        sets_join = fields.get("dateJoin") is not None or (clear and "dateJoin" in fields)
        if row["dateJoin"] is not None and not sets_join:
            # docs/contract.md "More live behaviour": live, dateJoin moved after a matched
            # create and after a PUT. Kept, code reading it as the creation time (dateCreated
            # is) passed its tests here. To the write's time, and at least a second on.
            row["dateJoin"] = _moved_join(row["dateJoin"], now)
        self._index_row(row)
        self._reindex_left(before)
        return row

    def _reindex_left(self, before: tuple[str | None, str | None]) -> None:
        # A mobile or e-mail this row gave up may still be another edited row's (an update can
        # give one customer another's): index that one, so that a create still matches it.
        indexes = (self._by_mobile, self._by_email)
        for field, index, value in zip(("mobile", "email"), indexes, before, strict=True):
            if value and value not in index:
                other = next((i for i, r in self._rows.items() if r[field] == value), None)
                if other is not None:
                    index[value] = other

    def delete(self, customer_id: int) -> bool:
        """Delete a customer, its identities and statistics; False if it did not exist."""
        row = self._rows.pop(customer_id, None)
        k = self._index(customer_id)
        seeded_alive = k is not None and self._alive[k]
        if row is None and not seeded_alive:
            return False
        self._version += 1
        if row is not None:
            self._unindex_row(row)
            # Another customer may hold its mobile or e-mail (an update gave it): a create
            # with it made a duplicate of that one once this one was gone.
            self._reindex_left((row["mobile"], row["email"]))
        if k is not None and seeded_alive:
            self._alive[k] = 0
            if has_statistics(self._ga[k]):
                j = bisect_left(self._stat_ids, customer_id)
                del self._stat_ids[j]
        del self._live[bisect_left(self._live, customer_id)]
        for key in self._bound_of.pop(customer_id, ()):
            del self._bound[key]
        return True

    def __contains__(self, customer_id: object) -> bool:
        if not isinstance(customer_id, int):
            return False
        k = bisect_left(self._live, customer_id)
        return k < len(self._live) and self._live[k] == customer_id

    def bind(self, customer_id: int, type_: str, value: str, name: str | None) -> int:
        """Bind an identity to a customer unless already bound; returns its owner's id."""
        found = self.find_identity(type_, value)
        if found is not None:
            return found[0]
        self._bound[(type_, value)] = (customer_id, name)
        self._bound_of.setdefault(customer_id, []).append((type_, value))
        return customer_id

    def random_ids(self, n: int, *, front: bool) -> list[int]:
        """Up to ``n`` distinct live ids: the lowest ones, or a seeded random sample."""
        n = min(n, len(self._live))
        if front:
            return self._live[:n].tolist()
        return [self._live[k] for k in sorted(self._rng.sample(range(len(self._live)), n))]

    # -- queries --------------------------------------------------------------------------------

    def _matches(self, customer_id: int, f: Filters) -> bool:
        row = self._rows.get(customer_id)
        if row is not None:
            return row_matches(row, f)
        k = self._index(customer_id)
        return k is not None and self._seeded_matches(k, f)

    def _seeded_matches(self, k: int, f: Filters) -> bool:
        # Seeded row k, never edited, against the filters: from its genes, nothing decoded.
        return genes_match(k, self._ga[k], self._gb[k], self._offset, f)

    def matching_ids(self, f: Filters) -> array[int]:
        """Ids of the customers that pass the filters, ascending (do not mutate the array)."""
        if f.is_empty():
            return self._live
        key = (f, self._version)
        found = self._found.get(key)
        if found is None:
            found = self._find(f)
            if len(self._found) >= _FOUND_CACHE:
                del self._found[next(iter(self._found))]  # the oldest
            self._found[key] = found
        return found

    def _find(self, f: Filters) -> array[int]:
        candidates: Iterable[int]
        if f.id_list is not None:
            candidates = sorted(i for i in f.id_list if i in self)
        elif f.mobile is not None:
            candidates = self._holders("mobile", f.mobile, self._seeded_with_mobile(f.mobile))
        elif f.email is not None:
            candidates = self._holders("email", f.email, self._seeded_with_email(f.email))
        else:
            # Seeded rows never edited, through the index; edited and created ones by a scan.
            gid, alive, rows = self._gid, self._alive, self._rows
            candidates, exact = self._seeded_index.candidates(f)
            seeded = [
                gid[k]
                for k in candidates
                if alive[k] and gid[k] not in rows and (exact or self._seeded_matches(k, f))
            ]
            others = sorted(i for i, row in rows.items() if row_matches(row, f))
            return array("q", merge(seeded, others) if others else seeded)
        return array("q", (i for i in candidates if self._matches(i, f)))

    def count(self, f: Filters) -> int:
        """How many customers pass the filters."""
        return len(self.matching_ids(f))

    def page(
        self, f: Filters, sidx: str, desc: bool, offset: int, limit: int
    ) -> tuple[int, list[Row]]:
        """(records, rows) of one page; the unfiltered walk by id costs O(limit)."""
        ids: Any
        if sidx == "id":
            ids = self.matching_ids(f)
            records = len(ids)
            if desc:
                high = max(0, records - offset)
                chosen = ids[max(0, high - limit) : high].tolist()[::-1]
            else:
                chosen = ids[offset : offset + limit].tolist()
            rows = [self.get(i) for i in chosen]
            return records, [r for r in rows if r is not None]
        everyone = [r for r in map(self.get, self.matching_ids(f)) if r is not None]
        everyone.sort(key=sort_key(sidx), reverse=desc)
        return len(everyone), everyone[offset : offset + limit]

    def statistics_page(
        self, customer_id: int | None, sidx: str, desc: bool, offset: int, limit: int
    ) -> tuple[int, list[Row]]:
        """(records, items) of one page of customer statistics."""
        ids: Any = self._stat_ids
        if customer_id is not None:
            k = bisect_left(self._stat_ids, customer_id)
            found = k < len(ids) and ids[k] == customer_id
            ids = array("q", [customer_id] if found else [])
        records = len(ids)
        if sidx in ("id", "customerId"):
            # Record ids grow with customer ids, so both orders are the order of _stat_ids.
            if desc:
                high = max(0, records - offset)
                chosen = ids[max(0, high - limit) : high].tolist()[::-1]
            else:
                chosen = ids[offset : offset + limit].tolist()
            return records, [self._statistics(i) for i in chosen]
        items = [self._statistics(i) for i in ids]
        items.sort(key=sort_key(sidx), reverse=desc)
        return records, items[offset : offset + limit]

    def _statistics(self, customer_id: int) -> Row:
        k = self._index(customer_id)
        assert k is not None
        return decode_statistics(k, customer_id, self._ga[k], self._gb[k])
