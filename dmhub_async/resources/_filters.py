"""The filters of ``customers.list`` and ``customers.count``, as a checked query string.

Times go through ``_query_time`` (the client's zone for naive values); ``idList`` holds every id
here and is split into batches short enough for one URL by ``_batches``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from datetime import date, datetime, tzinfo
from typing import Any, Final, Literal, TypedDict

from .._converter import wire_names
from .._exceptions import InvalidRequestError
from .._query_time import query_time
from .._validate import (
    at_index,
    check_id,
    check_no_controls,
    check_not_mangled,
    check_query,
    is_collection,
    short,
)
from ..models.customer import Customer
from ..models.gender import Gender

__all__ = [
    "EMPTY_STAGE",
    "FILTER_KEYWORDS",
    "FILTER_NAMES",
    "LONG_ID_LIST",
    "CustomerFilters",
    "as_given",
    "checked_ids",
    "customer_filter_params",
    "id_list_param",
    "read_once",
    "wire_field",
]

#: ``stage=EMPTY_STAGE`` (or ``""``) finds customers whose stage is empty (wire: ``_empty``).
EMPTY_STAGE = "_empty"
_WIRE = wire_names(Customer)
_SORT_ORDERS = ("asc", "desc")


class CustomerFilters(TypedDict, total=False):
    """The filters of :meth:`Customers.list` and :meth:`Customers.count`.

    A filter given as None is not given (``sort_order=None`` is the default order), so an
    optional value of the caller's (``stage=args.stage``) passes as it is.
    """

    stage: str | None
    source: str | None
    mobile: str | None
    email: str | None
    gender: Gender | int | None
    id_list: Iterable[int] | None
    date_created_from: datetime | date | str | None
    date_created_to: datetime | date | str | None
    last_updated_from: datetime | date | str | None
    last_updated_to: datetime | date | str | None
    select: Iterable[str] | str | None
    sort_by: str | None
    sort_order: Literal["asc", "desc"] | None


#: The names of the customer filters (CustomerFilters' keywords).
FILTER_NAMES: Final = frozenset(CustomerFilters.__annotations__)
_TIMES = {
    "date_created_from": "dateCreatedFrom",
    "date_created_to": "dateCreatedTo",
    "last_updated_from": "lastUpdatedFrom",
    "last_updated_to": "lastUpdatedTo",
}
#: A filter's keyword by its name in the query (``dateCreatedFrom``: ``date_created_from``);
#: a name it lacks is its keyword's too (``stage``).
FILTER_KEYWORDS: Final = {"idList": "id_list", **{wire: name for name, wire in _TIMES.items()}}


def as_given(param: str, value: str) -> str:
    """A filter's value in the query (``param``'s) as the caller gives it: a ``select``'s
    fields by their names in the model (``date_join``, not ``dateJoin``)."""
    if param != "select":
        return value
    model = {wire: name for name, wire in _WIRE.items()}
    return ",".join(model.get(field, field) for field in value.split(","))


#: Each time range's bounds (both inclusive): the lower may not come after the upper.
_RANGES = (("date_created_from", "date_created_to"), ("last_updated_from", "last_updated_to"))


def wire_field(
    method: str,
    name: object,
    names: Mapping[str, str] = _WIRE,
    what: str = "customer field",
    *,
    param: str,
) -> str:
    """A model's field as the wire names it, given by either name (``names``: the model's
    :func:`wire_names`), or InvalidRequestError naming the parameter ``param`` that held it
    and ``what`` it is not ("unknown customer field 'Name'" said not whether select or sort_by
    held it)."""
    meant = ""
    if isinstance(name, str):
        if name in names:
            return names[name]
        if name in names.values():
            return name
        meant = _closest(name, [*names, *names.values()])
    raise InvalidRequestError(f"{method}(): {param}: unknown {what} {short(name)}{meant}")


def _closest(name: str, known: list[str]) -> str:
    """`` (did you mean 'mobile'?)`` for a name one of ``known`` is close to (in another case,
    or a typo away), else nothing: "unknown customer field 'mobil'" said nothing of which."""
    lowered = {k.lower(): k for k in known}
    found = lowered.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, known, n=1, cutoff=0.8)), None
    )
    return f" (did you mean {found!r}?)" if found else ""


#: Ids past which ``list``, ``list_rows`` and the export join and split an ``id_list`` on a
#: thread as their walk starts, not on the event loop as they are called (about 1 µs an id).
LONG_ID_LIST: Final = 10_000


def id_list_param(method: str, value: Any) -> str:
    """``idList``: the ids of an ``id_list``, checked, comma-separated, repeats kept (each as
    its digits: an int subclass's ``str`` may be its repr, ``CustomerId(7)``)."""
    return ",".join(map(int.__repr__, checked_ids(method, value)))


def read_once(filters: dict[str, Any]) -> None:
    """The caller's ``id_list`` and ``select`` (any iterable) read once, here, into lists in
    ``filters``.

    For a call that reads its filters more than once (the export checks them, counts, walks and
    checks again; a sharded export records them, then plans): a generator was read by the first
    and found empty by the next, "id_list is empty" ("select names no field"). A non-iterable
    is left for the checks to refuse.
    """
    for name in ("id_list", "select"):
        value = filters.get(name)
        if value is not None and not isinstance(value, list) and is_collection(value):
            filters[name] = list(value)


def checked_ids(method: str, value: Any, name: str = "id_list") -> list[Any]:
    """The ids of an ``id_list`` (or ``name``, read once), each checked by :func:`check_id`,
    none missing.

    Plain ints in range at a glance (8 ms for 300,000, where an id at a time took 130 ms on
    the event loop); otherwise one at a time, so that the first bad one is named by its place
    (``id_list[3]: ...``: among 300,000 ids read from a file, "a customer id must be an int"
    named none). The ids are returned as plain ints (an int subclass's, or numpy's ``int64``'s
    through ``__index__``): each is written as its digits where it is sent.
    """
    if not is_collection(value):
        raise InvalidRequestError(f"{method}(): {name} must be a list of ints")
    ids = list(value)
    if not ids:
        raise InvalidRequestError(f"{method}(): {name} is empty")
    if set(map(type, ids)) != {int} or min(ids) < 0 or max(ids) >= 2**63:
        for index, i in enumerate(ids):
            try:
                ids[index] = check_id(method, i)
            except InvalidRequestError as err:
                raise at_index(err, method, index, name) from None
    return ids


def customer_filter_params(
    method: str, filters: dict[str, Any], *, paged: bool = True, zone: tzinfo | None = None
) -> dict[str, str]:
    """The query string of a list or count call, checked before anything is sent.

    Time filters without an offset are read in ``zone`` (UTC when None). ``idList`` holds
    every id: :func:`id_batches` splits it when it is too long for one URL.
    """
    return _filter_params(method, filters, paged=paged, zone=zone)[0]


def check_filter_names(method: str, filters: Mapping[str, Any]) -> None:
    """TypeError, as Python raises it, for a name of ``filters`` that is no filter: a function
    that takes ``**filters`` and hands them on (a sharded export to its plan's counts) named
    the call it made, ``count()``, not the one its caller made."""
    for name in filters:
        if name not in FILTER_NAMES:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")


def _filter_params(
    method: str, filters: dict[str, Any], *, paged: bool, zone: tzinfo | None
) -> tuple[dict[str, str], bool]:
    """The query string, and whether a naive time was read as UTC for want of a zone."""
    params: dict[str, str] = {}
    naive = False
    check_filter_names(method, filters)
    for name, value in filters.items():
        if value is None:
            continue
        if name == "stage":
            if not isinstance(value, str):
                raise InvalidRequestError(f"{method}(): stage must be a string")
            check_no_controls(method, name, value)
            params["stage"] = value or EMPTY_STAGE
        elif name in ("source", "mobile", "email"):
            if not isinstance(value, str) or not value:
                raise InvalidRequestError(f"{method}(): {name} must be a non-empty string")
            check_no_controls(method, name, value)  # "138...\n" from a file matched no one
            if name in ("mobile", "email"):
                # " 139..." pasted with a space matched no one (an export of nothing,
                # complete), as 13800138000.0, a float's text, did: mangled_value says so.
                check_not_mangled(method, name, value)
            params[name] = value
        elif name == "gender":
            # 1.0 equals 1 and was sent: a float is no code, as wherever an int is asked.
            if isinstance(value, bool) or not isinstance(value, int) or value not in tuple(Gender):
                raise InvalidRequestError(
                    f"{method}(): gender must be 0, 1 or 2, not {short(value)}"
                )
            params["gender"] = str(int(value))
        elif name == "id_list":
            params["idList"] = id_list_param(method, value)
        elif name in _TIMES:
            end = name.endswith("_to")
            params[_TIMES[name]], defaulted = query_time(method, name, value, zone, end=end)
            naive = naive or defaulted
        elif name == "select":
            if not isinstance(value, str) and not is_collection(value):
                raise InvalidRequestError(f"{method}(): select must be field names")
            # "name,mobile" (the wire's own form) too: it was refused as one unknown field.
            fields = (
                [f.strip() for f in value.split(",")] if isinstance(value, str) else list(value)
            )
            if not fields:  # went out as select=id: ids alone, where no choice was made
                raise InvalidRequestError(
                    f"{method}(): select names no field (ids alone: select=['id'])"
                )
            wire = [wire_field(method, f, param="select") for f in fields]
            if "id" not in wire:
                wire.insert(0, "id")  # the walk drops repeats by id
            params["select"] = ",".join(dict.fromkeys(wire))
        # Checked even where they are not sent (count): a bad one there was silently taken.
        elif name == "sort_by":
            field = wire_field(method, value, param="sort_by")
            if field == "attr":  # an object: the service answers 400, after the token
                raise InvalidRequestError(f"{method}(): cannot sort by attr (an object)")
            if paged:
                params["sidx"] = field
        elif name == "sort_order":
            if value not in _SORT_ORDERS:
                raise InvalidRequestError(
                    f"{method}(): sort_order must be 'asc' or 'desc', not {short(value)}"
                )
            if paged:
                params["sord"] = value
    for low, high in _RANGES:  # the same fixed-width UTC form: compared as text
        first, last = params.get(_TIMES[low]), params.get(_TIMES[high])
        if first is not None and last is not None and first > last:
            # Sent, it found nothing: an empty export that called itself complete.
            raise InvalidRequestError(f"{method}(): {high} is before {low}")
    # idList is checked when it is split into batches, each short enough for one URL.
    check_query(method, {k: v for k, v in params.items() if k != "idList"})
    return params, naive
