"""The export's file formats: how rows are written (JSONL, CSV), and how they are read back.

Reading back is how a resume checks the file against its checkpoint: :func:`scan` walks the
complete records at the start of a file and stops at the first that is torn, unreadable or out
of id order (docs/reliability.md, "Resuming an export").
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, Literal, Protocol

import attrs

from .. import _json
from .._converter import wire_names
from .._exceptions import ResponseDecodeError
from .._json import loads
from ..models.customer import Customer
from ..resources._rows import RawRow
from ._ids import IdSet

__all__ = [
    "CSV_FIELDS",
    "CsvWriter",
    "Format",
    "JsonlWriter",
    "Scan",
    "Writer",
    "is_utf8",
    "scan",
]

Format = Literal["jsonl", "csv"]
#: CSV columns: every wire field of the model except the nested ones, in model order.
CSV_FIELDS: tuple[str, ...] = tuple(
    wire for name, wire in wire_names(Customer).items() if name not in ("attr", "extra")
)


class Writer(Protocol):
    """Turns rows (as the service sent them) into the bytes of one format."""

    @property
    def header(self) -> tuple[str, ...] | None:
        """The CSV header once written (a resume must write the same columns), else None."""

    def encode(self, rows: Sequence[Any]) -> bytes:
        """The bytes of ``rows``; the first call of a CSV writer without header adds one."""

    def row_id(self, row: Any) -> Any:
        """The ``id`` of one of the rows it encodes (None when it has none)."""


class JsonlWriter:
    """One customer a line: the bytes the service sent (``RawRow``), each and a newline.

    Nothing is decoded or encoded again: wire names, key order, number forms, integers of any
    size and Chinese text stay as they came (a row the service spread over lines excepted,
    ``_json.raw_rows``).
    """

    header: tuple[str, ...] | None = None

    def encode(self, rows: Sequence[RawRow]) -> bytes:
        return b"".join([line for row in rows for line in (row.json, b"\n")])

    def row_id(self, row: RawRow) -> Any:
        return row.id


class CsvWriter:
    """A header of every field, ``attr.*`` flattened to columns, RFC 4180 quoting.

    The ``attr`` keys are taken from the first page (a stream cannot grow its header later);
    keys first seen after it go to the ``attr`` column as JSON, and fields the model does not
    know to ``extra``, so nothing is lost. With ``select``, only the fields selected (in that
    order; ``attr`` as its columns), and no ``extra``. With ``bom``, the file starts with a
    UTF-8 byte order mark, which Excel needs to read UTF-8.
    """

    def __init__(
        self,
        header: tuple[str, ...] | None = None,
        *,
        select: Sequence[str] | None = None,
        bom: bool = False,
    ) -> None:
        self.header = header
        self._bom = bom
        if header is not None:  # resumed: the columns are the header's
            self._fields = [c for c in header if not c.startswith("attr.") and c != "extra"]
            self._extra = "extra" in header
        elif select is not None:
            self._fields = list(select)
            self._extra = False
        else:
            self._fields, self._extra = [*CSV_FIELDS, "attr"], True
        self._attr_keys = [c[5:] for c in header or () if c.startswith("attr.")]

    def row_id(self, row: dict[str, Any]) -> Any:
        return row.get("id")

    def encode(self, rows: Sequence[dict[str, Any]]) -> bytes:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        fields = [f for f in self._fields if f != "attr"]
        with_attr = "attr" in self._fields
        if self.header is None:
            if self._bom:
                buf.write("\ufeff")
            if with_attr:  # an attr that is no object is refused below, with its customer
                self._attr_keys = sorted(
                    {k for row in rows if isinstance(a := row.get("attr"), dict) for k in a}
                )
            attr_columns = (*(f"attr.{k}" for k in self._attr_keys), "attr") if with_attr else ()
            self.header = (*fields, *attr_columns, *(("extra",) if self._extra else ()))
            writer.writerow(self.header)
        known = set(CSV_FIELDS) | {"attr"}
        # dict.copy of what is no object raises TypeError: an attr list() refuses (a string,
        # a number, a list) is found with no check a row. dict() of it raised a raw ValueError
        # or TypeError, made {"a": "b"} of ["ab"], and `or {}` dropped [] and false unsaid.
        copy = dict.copy
        try:  # once a page, not a row: a cell of JSON nested too deep is found below
            for row in rows:
                cells = [_cell(row.get(f)) for f in fields]
                if with_attr:
                    attr = row.get("attr")
                    try:
                        attr = {} if attr is None else copy(attr)
                    except TypeError:
                        raise _not_an_object(row, "attr") from None
                    cells += [_cell(attr.pop(k, None)) for k in self._attr_keys]
                    cells.append(_json_cell(attr) if attr else "")
                if self._extra:
                    extra = {k: v for k, v in row.items() if k not in known}
                    cells.append(_json_cell(extra) if extra else "")
                try:
                    writer.writerow(cells)
                except csv.Error:  # Python 3.10's csv writes no NUL: raw, it named no customer
                    raise _unwritable(
                        [row],
                        _has_nul,
                        "a NUL character (U+0000), which the csv module of "
                        "Python 3.10 cannot write: export as JSONL, or on Python 3.11 "
                        "or later",
                    ) from None
        except RecursionError:
            # orjson reads JSON nested up to 1024 deep; json.dumps gives up near Python's
            # recursion limit: raw, the RecursionError named no customer.
            raise _unwritable(
                rows,
                lambda _, value: _too_deep(value),
                "JSON nested too deep to write as a cell (CSV cells of JSON end near 1,000 levels)",
            ) from None
        try:
            return buf.getvalue().encode("utf-8")
        except UnicodeEncodeError:
            raise _unwritable(
                rows,
                lambda name, value: not _encodes(name) or not _encodes(value),
                "a lone surrogate (half of a character), which UTF-8 cannot hold",
            ) from None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return _json_cell(value)
    return str(value)  # a Decimal (a number a float would round) as every digit


def _unwritable(
    rows: Sequence[dict[str, Any]], bad: Callable[[str, Any], bool], what: str
) -> ResponseDecodeError:
    """The error for a page holding ``what`` the CSV cannot (a lone surrogate, ``"\\ud83d"``:
    half of a character the service cut in two, which UTF-8 cannot hold; a NUL, on Python
    3.10; JSON nested too deep), naming the first customer and field ``bad(name, value)``
    finds. JSON can send it; the JSONL export refuses such a page as the decoder's
    ``ResponseDecodeError``."""
    where = "a customer"
    for row in rows:
        found = [name for name, value in row.items() if bad(name, value)]
        if found:
            where = f"customer {row.get('id')!a}'s field {found[0]!a}"
            break
    return _csv_refused(f"{where} holds {what}")


def _not_an_object(row: dict[str, Any], field: str) -> ResponseDecodeError:
    """The error for a customer whose ``field`` is no JSON object (nor null), which the CSV
    cannot flatten to columns: worded as ``list()``'s refusal of the same customer."""
    got = type(row[field]).__name__
    return _csv_refused(
        f"customer {row.get('id')!a}, field {field!r}: expected an object, got {got}"
    )


def _csv_refused(problem: str) -> ResponseDecodeError:
    """The CSV export's ResponseDecodeError for ``problem`` in a page the service sent."""
    return ResponseDecodeError(
        f"GET /v1/customers -> HTTP 200: {problem}: the CSV cannot be written until the"
        " service's value is fixed",
        status=200,
        method="GET",
        path="/v1/customers",
    )


def _too_deep(value: Any) -> bool:
    """Whether json.dumps gives up on ``value`` (an object or list nested too deep)."""
    try:
        json.dumps(value, default=str)
    except RecursionError:
        return True
    return False


def _has_nul(name: str, value: Any) -> bool:
    """Whether a field's name or its text holds a NUL (a JSON cell writes it escaped)."""
    return "\x00" in name or (isinstance(value, str) and "\x00" in value)


def _encodes(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_cell(value: dict[str, Any] | list[Any]) -> str:
    """An object or a list as a cell of JSON; a ``Decimal`` in it as a JSON number, exactly
    (the standard library cannot write one: those cells are compact, as ``_json`` writes)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:
        return _json.dumps(value).decode("utf-8")


def new_writer(
    fmt: Format,
    header: tuple[str, ...] | None = None,
    *,
    select: Sequence[str] | None = None,
    bom: bool = False,
) -> Writer:
    """The writer of ``fmt``; a resumed CSV export passes the header it wrote."""
    return CsvWriter(header, select=select, bom=bom) if fmt == "csv" else JsonlWriter()


# -- reading back -------------------------------------------------------------------------------


@attrs.define
class Scan:
    """The complete records at the start of a file, in ascending id order."""

    end: int = 0  # the byte just after the last of them (after the CSV header, if any)
    count: int = 0
    last_id: Any = None
    ids: IdSet = attrs.Factory(IdSet)
    header: tuple[str, ...] | None = None
    #: A whole line that is not UTF-8 ended the records: no export wrote it (a torn one can
    #: end inside a character only where the file ends), the file was saved in another.
    not_utf8: bool = False
    #: A whole record ended them (not the end of what was read, nor a torn record there):
    #: one that does not read back, or not above the id before it. A file cut short holds no
    #: such record: it was written so.
    stopped: bool = False


def scan(fh: IO[bytes], fmt: str, limit: int) -> Scan:
    """The records in the first ``limit`` bytes of ``fh`` up to the first bad one.

    A record counts when it is whole (it ends in a newline within ``limit``), reads back as a
    row with an id, and its id is above the one before. Memory: the ids, 8 bytes each.
    """
    fh.seek(0)
    lines = _Lines(fh, limit)
    result = Scan()
    if fmt == "jsonl":
        for line in lines:
            if not lines.whole or not _take(result, _jsonl_id(line), lines.offset):
                result.stopped = lines.whole
                result.not_utf8 = lines.whole and not is_utf8(line)
                break
        return result
    # strict: a quoted field the end cuts off (a remark torn after one of its line breaks) is an
    # error, not a record; without it csv handed the torn record out, and a resume wrote on
    # inside its open quote.
    reader = csv.reader(lines.text(), strict=True)
    with long_csv_fields():
        return _scan_csv(reader, lines, result)


#: Held while a CSV read back has csv's field size limit raised.
_FIELD_SIZE_LIMIT = threading.Lock()


@contextlib.contextmanager
def long_csv_fields() -> Iterator[None]:
    """csv's field size limit raised to :data:`_MAX_FIELD` for the block (read the records in
    it: csv's reader is lazy). Its limit of 131,072 characters a field is process-wide: raised
    for a read only, or a long remark made the export refuse to resume its own file. Reads run
    on threads (open_output, a merge, a late check): one at a time, or one's end put the limit
    back under another's feet."""
    with _FIELD_SIZE_LIMIT:
        limit = csv.field_size_limit()
        csv.field_size_limit(max(limit, _MAX_FIELD))
        try:
            yield
        finally:
            csv.field_size_limit(limit)


def _scan_csv(reader: Iterator[list[str]], lines: _Lines, result: Scan) -> Scan:
    try:
        first = next(reader, None)
        if first is None or not lines.whole:
            return result
        if first:
            first[0] = first[0].removeprefix("\ufeff")  # written with a byte order mark
        result.header, result.end = tuple(first), lines.offset
        for cells in reader:
            if not lines.whole or len(cells) != len(first):
                result.stopped = lines.whole
                break
            if not _take(result, _csv_id(cells), lines.offset):
                result.stopped = True
                break
    except csv.Error:  # a quoted field cut off by the end
        pass
    result.not_utf8 = lines.not_utf8
    return result


#: The longest CSV field a resume reads back (a C long on every platform).
_MAX_FIELD = 2**31 - 1


def _take(result: Scan, customer_id: Any, end: int) -> bool:
    if customer_id is None or (result.last_id is not None and not customer_id > result.last_id):
        return False
    result.ids.add(customer_id)
    result.count, result.last_id, result.end = result.count + 1, customer_id, end
    return True


def _jsonl_id(line: bytes) -> int | None:
    """The record's id; None when it has none, or one that is no integer (``"12"``, ``[12]``:
    not what the export wrote, and compared with the id before it, a raw TypeError)."""
    try:
        row = loads(line)
    except ValueError:
        return None
    customer_id = row.get("id") if isinstance(row, dict) else None
    return customer_id if type(customer_id) is int else None


def _csv_id(cells: list[str]) -> int | None:
    try:
        return int(cells[0])
    except ValueError:
        return None


class _Lines:
    """The lines of the first ``limit`` bytes, with the offset after the last one handed out."""

    def __init__(self, fh: IO[bytes], limit: int) -> None:
        self._fh, self._limit = fh, limit
        self.offset = 0
        self.whole = True  # the last line handed out ended in a newline
        self.not_utf8 = False  # text() stopped at a whole line that is not UTF-8

    def __iter__(self) -> Iterator[bytes]:
        for line in self._fh:
            if self.offset + len(line) > self._limit:
                line = line[: self._limit - self.offset]
            if not line:
                return
            self.offset += len(line)
            self.whole = line.endswith(b"\n")
            yield line
            if not self.whole:
                return

    def text(self) -> Iterator[str]:
        """The same lines decoded (CSV rows end in CRLF: never inside a UTF-8 sequence)."""
        for line in self:
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                self.not_utf8, self.whole = self.whole, False
                return


def is_utf8(line: bytes) -> bool:
    """Whether ``line`` is UTF-8 text (a resume's read back, the CLI's input files)."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
