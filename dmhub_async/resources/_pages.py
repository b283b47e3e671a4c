"""Answers as models: the two page shapes, decoding with a clear error, and paginating."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import attrs

from .._exceptions import ResponseDecodeError
from .._pagination import AsyncPaginator, Dedupe, RawPage
from .._sansio import Request
from .._session import Session
from .._validate import check_paging

T = TypeVar("T")


def decode(structure: Callable[[Any], T], data: Any, what: str) -> T:
    """``structure(data)``, or ResponseDecodeError when the body is not the promised shape."""
    try:
        return structure(data)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        problem = str(err)
    # Raised outside the except block: the converter's error quotes the body, which a service
    # may have filled with the URL, so it must not ride along as the context either.
    raise ResponseDecodeError(
        f"the answer is not {what}: {problem}", status=200, description=problem
    )


def rows_of(data: Any, key: str, what: str) -> list[Any]:
    """``data[key]`` as a list (a missing or null key is an empty page)."""
    if not isinstance(data, dict):
        raise ResponseDecodeError(f"the answer is not {what}: expected an object", status=200)
    rows = data.get(key)
    if rows is None:
        return []
    if not isinstance(rows, list):
        raise ResponseDecodeError(f"the answer is not {what}: {key!r} is not a list", status=200)
    return rows


def optional_int(value: Any) -> int | None:
    """A count from a page's totals, or None when absent or not a number."""
    if isinstance(value, bool):
        return None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def dedupe_for(sort_by: str | None, sort_order: str | None) -> Dedupe:
    """How a walk recognises repeats: by order when sorted by the immutable id, else by set."""
    if sort_by == "id":
        return "ascending" if sort_order == "asc" else "descending"
    return "set"


def paginate(
    session: Session,
    path: str,
    params: dict[str, str],
    read_page: Callable[[Any], RawPage[T]],
    *,
    key: Callable[[T], Hashable],
    **paging: Any,
) -> AsyncPaginator[T]:
    """A paginator over ``GET path`` with ``rows``/``page`` added to ``params``."""
    check_paging(
        paging.get("page_size"),
        paging.get("start_page"),
        paging.get("max_items"),
    )

    async def fetch(number: int, size: int) -> RawPage[T]:
        request = Request("GET", path, {**params, "rows": str(size), "page": str(number)})
        response = await session.send(request)
        page = read_page(response.data)
        return attrs.evolve(page, retries=response.retries) if response.retries else page

    return AsyncPaginator(
        fetch, key=key, dedupe=dedupe_for(params.get("sidx"), params.get("sord")), **paging
    )


def rows_page(structure: Callable[[list[Any]], list[T]], what: str) -> Callable[[Any], RawPage[T]]:
    """Reads the customer list shape: ``{"rows": [...], "records": n, "total": pages}``."""

    def read(data: Any) -> RawPage[T]:
        rows = rows_of(data, "rows", what)
        return RawPage(
            decode(structure, rows, what),
            None,
            optional_int(data.get("records")),
            optional_int(data.get("total")),
        )

    return read


def items_page(structure: Callable[[list[Any]], list[T]], what: str) -> Callable[[Any], RawPage[T]]:
    """Reads the statistics shape: ``{"items": [...], "meta": {records, total, hasNext}}``."""

    def read(data: Any) -> RawPage[T]:
        items = rows_of(data, "items", what)
        meta = data.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        has_next = meta.get("hasNext")
        return RawPage(
            decode(structure, items, what),
            has_next if isinstance(has_next, bool) else None,
            optional_int(meta.get("records")),
            optional_int(meta.get("total")),
        )

    return read
