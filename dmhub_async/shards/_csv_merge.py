"""A sharded CSV export's parts under one header: the columns :func:`~._manifest.merge` writes.

Each part's ``attr.*`` columns are the keys of its own first page (``CsvWriter``), so the
parts of one export differ there when customers' custom attributes differ between windows: a
merge that wanted the first part's header everywhere refused the export's own parts ("has
other columns than part-00000.csv"). The merged file has the union: the parts' other columns
(which every part of the export has alike, in the same order: a part of other ones is another
export's), every part's ``attr.*`` columns in the order first seen, then ``attr`` and
``extra``, as the writer lays them out. A part whose header is that union is copied as it is,
bytes; another's records are written again under it, cell by cell (RFC 4180, as the writer
quotes), a key its part kept in the ``attr`` JSON cell (first seen after its first page) moved
to that key's column where the union has one, as the writer would have put it there: in the
merged file, a key with a column is always in its column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import BinaryIO

from .. import _json
from .._exceptions import InvalidRequestError
from ..export._writers import _cell, _json_cell, long_csv_fields

__all__ = ["Rewrite", "Union", "header_names", "read_header", "same_export", "whole_header"]

#: The longest header read (a part whose first line is longer is no part this SDK wrote: its
#: header is its fields' names and ``attr`` keys, a few KiB): bounded memory for one that is not.
_HEADER_LIMIT = 1 << 24
_BOM = "\ufeff".encode()
_ATTR = "attr."
#: Columns the writer puts after the ``attr.*`` ones, in this order.
_LAST = ("attr", "extra")


def read_header(fh: BinaryIO) -> bytes:
    """The header record at the start of ``fh``, as read: its lines while a quoted name runs
    on (an ``attr`` key holding a line break); torn (:func:`whole_header` False) if the file
    ends first, or it is longer than any header this SDK writes."""
    head = fh.readline(_HEADER_LIMIT)
    while head.endswith(b"\n") and head.count(b'"') % 2 and len(head) < _HEADER_LIMIT:
        line = fh.readline(_HEADER_LIMIT - len(head))
        if not line:
            break
        head += line
    return head


def whole_header(header: bytes) -> bool:
    """Whether ``header`` (from :func:`read_header`) is a whole record."""
    return header.endswith(b"\n") and not header.count(b'"') % 2


def header_names(header: bytes) -> list[str] | None:
    """The column names of a whole header (a byte order mark aside); None when it is no CSV
    header this SDK writes (not UTF-8, not one record)."""
    try:
        text = header.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None
    rows = _records(text)
    return rows[0] if rows is not None and len(rows) == 1 else None


def same_export(names: Sequence[str], first: Sequence[str]) -> bool:
    """Whether a part of columns ``names`` may be of the export whose first part has ``first``:
    the same columns but ``attr.*`` (its own first page's keys), in the same order."""
    return _base(names) == _base(first)


class Union:
    """The merged file's header: the first part's, the ``attr.*`` columns of every part of the
    same export after it added (in the order first seen)."""

    def __init__(self, first: bytes, names: Sequence[str], later: Iterable[Sequence[str]]) -> None:
        keys = dict.fromkeys(n for n in names if n.startswith(_ATTR))
        own = list(keys)
        for other in later:
            if same_export(other, names):
                keys.update(dict.fromkeys(n for n in other if n.startswith(_ATTR)))
        if list(keys) == own:
            self.header, self.names = first, list(names)  # as the first part has it, bytes
            return
        base = _base(names)
        self.names = [
            *(n for n in base if n not in _LAST),
            *keys,
            *(n for n in base if n in _LAST),
        ]
        bom = _BOM if first.startswith(_BOM) else b""
        self.header = bom + _encoded(self.names)


class Rewrite:
    """A part's records written again under the union's header (its header differing)."""

    def __init__(self, file: str, names: Sequence[str], union: Union) -> None:
        at = {name: i for i, name in enumerate(names)}
        missing = [n for n in names if n not in union.names]
        if missing:
            # Read after the union was made of its header: the part was replaced since.
            raise InvalidRequestError(
                f"{file} was replaced or removed while it was merged: merge again once "
                "nothing writes the export's directory"
            )
        self._file, self._width = file, len(names)
        self._take = [at.get(name) for name in union.names]
        self._attr = at.get("attr")
        self._attr_out = union.names.index("attr") if "attr" in union.names else None
        # The union's attr.* columns this part has not: its records keep those keys (first
        # seen after its first page) in their attr JSON cell.
        self._moved = [
            (name[len(_ATTR) :], i)
            for i, name in enumerate(union.names)
            if name.startswith(_ATTR) and name not in at
        ]

    def __call__(self, record: bytes) -> bytes:
        """``record`` (a whole one, as the part holds it) under the union's columns."""
        try:
            rows = _records(record.decode("utf-8"))
        except UnicodeDecodeError:
            rows = None
        if rows is None or len(rows) != 1 or len(rows[0]) != self._width:
            # Its cells would go under other columns' names.
            raise InvalidRequestError(
                f"{self._file} holds a record that is not one of its header's "
                f"{self._width:,} columns: it is not a CSV this export wrote; delete it "
                "and rerun the export, which exports that shard again"
            )
        cells = rows[0]
        out = ["" if i is None else cells[i] for i in self._take]
        if self._moved and self._attr is not None and self._attr_out is not None:
            self._move(cells[self._attr], out, self._attr_out)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerow(out)
        return buf.getvalue().encode("utf-8")

    def _move(self, text: str, out: list[str], attr_out: int) -> None:
        """The keys of the ``attr`` JSON cell ``text`` that have a column in the union, to it
        (as the writer writes a column's cell); the cell as it was when none moves."""
        if not text:
            return
        try:
            attr = _json.loads(text)  # the numbers as the export read them: exact
        except ValueError:
            return
        if not isinstance(attr, dict):
            return
        moved = False
        for key, column in self._moved:
            if key in attr:
                out[column], moved = _cell(attr.pop(key)), True
        if moved:
            out[attr_out] = _json_cell(attr) if attr else ""


def _base(names: Sequence[str]) -> list[str]:
    return [n for n in names if not n.startswith(_ATTR)]


def _encoded(names: Sequence[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(names)
    return buf.getvalue().encode("utf-8")


def _records(text: str) -> list[list[str]] | None:
    """The CSV records of ``text``; None when it is no CSV (a quote left open)."""
    with long_csv_fields():  # a long remark is a field as the export wrote it
        try:
            return list(csv.reader(io.StringIO(text, newline=""), strict=True))
        except csv.Error:
            return None
