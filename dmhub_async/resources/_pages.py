"""Answers as models: the two page shapes, decoding with a clear error, and paginating."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

from .. import _json
from .._exceptions import APIError, ResponseDecodeError
from .._pagination import READING_AHEAD, AsyncPaginator, Dedupe, RawPage
from .._sansio import APIResponse, Request, decode_error
from .._session import Session
from .._validate import check_paging, short

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")


def decode(structure: Callable[[Any], T], data: Any, what: str) -> T:
    """``structure(data)``, or ResponseDecodeError when the body is not the promised shape.

    Its callers pass the answer straight in, never holding it in a variable of their own: see
    below. (The lookups' way; a call whose answer the caller's task keeps takes
    :func:`decode_answer`, whose error names the request.)
    """
    try:
        return structure(data)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        problem = str(err)
    # Raised outside the except block: the converter's error quotes the body, which a service
    # may have filled with the URL, so it must not ride along as the context either.
    error = ResponseDecodeError(
        f"the answer is not {what}: {problem}", status=200, description=problem
    )
    # Nor stay among this frame's variables, which an error tracker records with the
    # traceback (the error masks the token in its own words): a gateway's echo of the
    # request, answered with HTTP 200, held the token in the body and in the words quoting it.
    del data, problem
    raise error


def decode_answer(
    structure: Callable[[Any], T],
    data: Any,
    what: str,
    call: tuple[Session, str, str, bool],
    response: APIResponse | None = None,
) -> T:
    """:func:`decode` of the answer to a call: ``call`` is its session, method, path and
    idempotence, ``response`` the answer (else the session's latest in this task, which
    ``Session.request`` keeps).

    Its ResponseDecodeError is built as :func:`read_response` builds one for a body its decode
    refused: it names the request and carries the answer's headers, request id and start, and
    ``outcome_unknown`` for a write not safe to repeat (answered, it may have been applied).
    A create answered ``{}`` said nothing of its outcome, and ``request_id`` was None
    whatever the service sent.
    """
    try:
        return structure(data)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        problem = f"the answer is not {what}: {err}"
    session, method, path, idempotent = call
    answer = response or session.last_response
    if answer is None:  # not remembered: no answer to quote
        error: APIError = ResponseDecodeError(problem, status=200, description=problem)
    else:
        error = decode_error(
            Request(method, path, idempotent=idempotent),
            answer.status,
            answer.headers,
            answer.data,
            problem,
            session.secrets,
        )
    # Not among this frame's variables either (see decode).
    del data, problem, answer, response
    raise error


def page_count(keys: Mapping[str, Any], name: str, what: str) -> int | None:
    """A page's ``records`` or ``total``: None when absent or null, else a count (an integer
    >= 0, or one written as ASCII digits).

    Anything else raises ValueError: read as "not said" (or ``1.5`` cut to 1), it ended a walk
    early, the rest of the records unread, as if it were complete.
    """
    value = keys.get(name)
    if value is None:
        return None
    if type(value) is int and value >= 0:  # type(): not True, not a float
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"the answer is not {what}: {name!r} is {short(value)}, not a count")


def _check_listed(body: bytes, key: str, what: str) -> None:
    """Refuse a page that brought no records without saying so with an empty ``key`` list.

    The readers take a missing or null list as no records; a page is ``{key: [...]}``
    (docs/contract.md), and an answer without it (``{}``, ``{"records": "x"}``) read as an
    empty page ended the walk as complete. Only a page without records is read again here: the
    last one of a walk.
    """
    page = _json.loads(body)
    if not isinstance(page, dict) or not isinstance(page.get(key), list):
        raise ValueError(f"the answer is not {what}: it has no {key!r} list")


def dedupe_for(sort_by: str | None, sort_order: str | None) -> Dedupe:
    """How a walk recognises repeats: by order when sorted by the immutable id, else by set.

    A ``sidx`` or ``sord`` not sent is the service's default, ``id`` and ``asc``
    (docs/contract.md, "list"): a missing ``sord`` was taken as descending.
    """
    if sort_by is None or sort_by == "id":
        return "descending" if sort_order == "desc" else "ascending"
    return "set"


#: A page's bytes to its records and its other keys: the converter's page readers
#: (``read_customer_page``...) and :func:`json_rows_page`. ValueError when it cannot.
PageReader = Callable[[bytes], tuple[list[T], dict[str, Any]]]


def paginate(
    session: Session,
    path: str,
    params: dict[str, str],
    decode: Callable[[bytes], tuple[RawPage[T], Mapping[str, Any]]],
    *,
    key: Callable[[T], Hashable],
    **paging: Any,
) -> AsyncPaginator[T]:
    """A paginator over ``GET path`` with ``rows``/``page`` added to ``params``.

    ``decode`` (:func:`rows_page`, :func:`items_page`) reads each page's bytes as the session
    receives them: no JSON tree is built only to be read again (docs/architecture.md).
    """
    check_paging(
        paging.get("page_size"),
        paging.get("start_page"),
        paging.get("max_items"),
    )

    async def fetch(number: int, size: int) -> RawPage[T]:
        query = {**params, "rows": str(size), "page": str(number)}
        # A walk's reader ahead is a task of its own: its answers no caller can read.
        page: RawPage[T] = await session.request(
            "GET", path, params=query, decode=decode, remembered=not READING_AHEAD.get()
        )
        return page

    return AsyncPaginator(
        fetch, key=key, dedupe=dedupe_for(params.get("sidx"), params.get("sord")), **paging
    )


def _read(read: Callable[[A], R], body: A, what: str) -> R:
    """``read(body)``, its error saying what the answer is not."""
    try:
        return read(body)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
        problem = str(err)
    # Raised outside the except block: the converter's error quotes the body, which a service
    # may have filled with the URL, so it must not ride along as the context either.
    raise ValueError(f"the answer is not {what}: {problem}")


def rows_page(
    read: PageReader[T], what: str, keys_of: Callable[[list[T]], list[Any]] | None = None
) -> Callable[[bytes], tuple[RawPage[T], dict[str, Any]]]:
    """Reads the customer list shape: ``{"rows": [...], "records": n, "total": pages}``.

    ``keys_of``: the rows' keys, checked (ValueError), for the walk to drop repeats by
    (``RawPage.keys``); None: the walk takes them with its key function.
    """

    def decode(body: bytes) -> tuple[RawPage[T], dict[str, Any]]:
        rows, keys = _read(read, body, what)
        if not rows:
            _check_listed(body, "rows", what)
        records, total = page_count(keys, "records", what), page_count(keys, "total", what)
        if keys_of is None:
            return RawPage(rows, None, records, total), keys
        return RawPage(rows, None, records, total, keys=_read(keys_of, rows, what)), keys

    return decode


def items_page(
    read: PageReader[T], what: str
) -> Callable[[bytes], tuple[RawPage[T], dict[str, Any]]]:
    """Reads the statistics shape: ``{"items": [...], "meta": {records, total, hasNext}}``."""

    def decode(body: bytes) -> tuple[RawPage[T], dict[str, Any]]:
        items, keys = _read(read, body, what)
        if not items:
            _check_listed(body, "items", what)
        meta = keys.get("meta")
        if meta is None:
            meta = {}
        elif not isinstance(meta, dict):
            raise ValueError(f"the answer is not {what}: 'meta' is {short(meta)}, not an object")
        has_next = meta.get("hasNext")
        if has_next is not None and not isinstance(has_next, bool):
            raise ValueError(f"the answer is not {what}: 'hasNext' is {short(has_next)}")
        page = RawPage(
            items,
            has_next,
            page_count(meta, "records", what),
            page_count(meta, "total", what),
        )
        return page, keys

    return decode
