"""Customers as rows: dicts as the service sent them (``list_rows``), or their very bytes.

The bytes are the JSONL export's (:class:`RawRow`, ``Customers._list_raw``): written as they
came, neither decoded nor encoded again (``_json.raw_rows``), with the id the walk drops
repeats by.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import _json
from .._converter import lenient_page_reader
from .._validate import short

__all__ = ["RawRow", "raw_row_id", "read_raw_rows", "read_rows", "row_id", "row_ids"]


def _rows_as_read(rows: list[Any]) -> list[dict[str, Any]]:
    """The rows as decoded: :func:`row_ids`, which reads every page ``read_rows`` reads, refuses
    a row that is not an object as it takes the ids (a pass over the rows less a page)."""
    return rows


def row_ids(rows: list[dict[str, Any]]) -> list[Any]:
    """The ids of a page's rows (None where a row has none), as ``list()`` refuses them: the
    walk drops repeats by them (``RawPage.keys``), so they are read once a page, in C (a
    ``row_id()`` call a row cost ``list_rows()`` 2.4% more instructions a page).

    ValueError for a row that is not an object: ``dict.get`` refuses it, so that no pass of
    its own checks the rows' kind (``isinstance`` a row: 23k instructions a page of 100).
    """
    try:
        ids = list(map(dict.get, rows, itertools.repeat("id")))
    except TypeError:  # dict.get of what is no dict (orjson makes dicts, never a subclass)
        raise ValueError("a row is not an object") from None
    check_ids(ids)
    return ids


_ID_TYPES = frozenset({int, type(None)})


def check_ids(ids: list[Any]) -> None:
    """Refuse a page whose rows' ids are not JSON integers (or absent), as ``list()`` does.

    The walk drops repeats by comparing ids: text raised a raw TypeError against an integer,
    ``true`` was dropped as a repeat of 1, and ids all written as text compared as text
    (``"10" < "9"``: customer 10 dropped as a repeat, list_rows() and the export short).
    """
    if not set(map(type, ids)) <= _ID_TYPES:  # the usual page passes, in C
        _refuse_ids(ids)


def _refuse_ids(ids: list[Any]) -> None:
    """ValueError naming the first of ``ids`` that is not an integer (nor absent)."""
    for number, customer_id in enumerate(ids):
        if type(customer_id) not in _ID_TYPES:
            raise ValueError(f"record {number}: its id {short(customer_id)} is not an integer")


#: A customer page's bytes to its rows, and its other keys: rows as dicts once :func:`row_ids`
#: has taken their ids (``list_rows`` reads every page with both).
read_rows = lenient_page_reader(_rows_as_read, "rows")


def row_id(row: dict[str, Any]) -> Any:
    """A row's ``id`` (None when it has none).

    A function, not ``operator.methodcaller("get", "id")``: Python 3.11 calls this one faster
    (the walk's repeat check of a page of 100 rows: about 12 us, against 21 us).
    """
    return row.get("id")


class RawRow(NamedTuple):
    """A customer as the bytes the service sent (one line of JSON, no newline), and its id."""

    id: Any
    json: bytes


#: The keys of a customer page the walk reads beside the rows (error_code: read_response's).
_PAGE_KEYS = ("records", "total", "page", "error_code", "error_description")


def read_raw_rows(body: bytes) -> tuple[list[RawRow], dict[str, Any]]:
    """A customer page's bytes to its rows as :class:`RawRow`, and its other keys."""
    rows = _json.raw_rows(body, "rows", _PAGE_KEYS)
    check_ids(rows.ids)
    return list(map(RawRow, rows.ids, rows.rows)), rows.page


#: A raw row's ``id``.
raw_row_id: Callable[[RawRow], Any] = operator.attrgetter("id")
