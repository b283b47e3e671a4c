"""``dm.customers``: create, upsert with identities, get, update, delete, count and list."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Literal, TypedDict, TypeVar

from typing_extensions import Unpack

from .._converter import (
    customer_fields_to_wire,
    identity_to_wire,
    structure_customer,
    structure_customers,
    wire_names,
)
from .._exceptions import InvalidRequestError
from .._pagination import AsyncPaginator
from .._validate import check_customer_fields, check_id, check_identities, utc_query_time
from ..models.customer import Customer, CustomerFields
from ..models.gender import Gender
from ..models.identity import Identity
from ._pages import decode, paginate, rows_page
from ._resource import Resource

__all__ = ["EMPTY_STAGE", "CustomerFilters", "Customers", "customer_filter_params"]

#: ``stage=EMPTY_STAGE`` (or ``""``) finds customers whose stage is empty (wire: ``_empty``).
EMPTY_STAGE = "_empty"
#: 40201 "permission is not enough" is what the live service answers for a missing id.
NOT_FOUND_CODES: frozenset[int | str] = frozenset({40201})
_WIRE = wire_names(Customer)
_SORT_ORDERS = ("asc", "desc")
T = TypeVar("T")


class CustomerFilters(TypedDict, total=False):
    """The filters of :meth:`Customers.list` and :meth:`Customers.count`."""

    stage: str
    source: str
    mobile: str
    email: str
    gender: Gender | int
    id_list: Iterable[int]
    date_created_from: datetime | str
    date_created_to: datetime | str
    last_updated_from: datetime | str
    last_updated_to: datetime | str
    select: Iterable[str] | str
    sort_by: str
    sort_order: Literal["asc", "desc"]


_FILTERS = frozenset(CustomerFilters.__annotations__)
_TIMES = {
    "date_created_from": "dateCreatedFrom",
    "date_created_to": "dateCreatedTo",
    "last_updated_from": "lastUpdatedFrom",
    "last_updated_to": "lastUpdatedTo",
}


def _wire_field(method: str, name: str) -> str:
    if name in _WIRE:
        return _WIRE[name]
    if name in _WIRE.values():
        return name
    raise InvalidRequestError(f"{method}(): unknown customer field {name!r}")


def customer_filter_params(
    method: str, filters: dict[str, Any], *, paged: bool = True
) -> dict[str, str]:
    """The query string of a list or count call, checked before anything is sent."""
    params: dict[str, str] = {}
    for name, value in filters.items():
        if name not in _FILTERS:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")
        if value is None:
            continue
        if name == "stage":
            if not isinstance(value, str):
                raise InvalidRequestError(f"{method}(): stage must be a string")
            params["stage"] = value or EMPTY_STAGE
        elif name in ("source", "mobile", "email"):
            if not isinstance(value, str) or not value:
                raise InvalidRequestError(f"{method}(): {name} must be a non-empty string")
            params[name] = value
        elif name == "gender":
            if isinstance(value, bool) or value not in tuple(Gender):
                raise InvalidRequestError(f"{method}(): gender must be 0, 1 or 2, not {value!r}")
            params["gender"] = str(int(value))
        elif name == "id_list":
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise InvalidRequestError(f"{method}(): id_list must be a list of ints")
            ids = [check_id(method, i) for i in value]
            if not ids:
                raise InvalidRequestError(f"{method}(): id_list is empty")
            params["idList"] = ",".join(map(str, ids))
        elif name in _TIMES:
            params[_TIMES[name]] = utc_query_time(method, name, value)
        elif name == "select":
            fields = [value] if isinstance(value, str) else list(value)
            wire = [_wire_field(method, f) for f in fields]
            if "id" not in wire:
                wire.insert(0, "id")  # the walk drops repeats by id
            params["select"] = ",".join(wire)
        elif name == "sort_by" and paged:
            if not isinstance(value, str):
                raise InvalidRequestError(f"{method}(): sort_by must be a field name")
            params["sidx"] = _wire_field(method, value)
        elif name == "sort_order" and paged:
            if value not in _SORT_ORDERS:
                raise InvalidRequestError(
                    f"{method}(): sort_order must be 'asc' or 'desc', not {value!r}"
                )
            params["sord"] = value
    return params


class Customers(Resource):
    """The customers of DM Hub: ``dm.customers``."""

    async def create(
        self, *, create_method: str | None = None, **fields: Unpack[CustomerFields]
    ) -> Customer:
        """Create a customer, or update the one with the same mobile or email.

        Args:
            create_method: where the customer came from, e.g. ``"ImportFromExternalSystem"``.
            **fields: customer fields in snake_case (``name``, ``mobile``, ``attr``, ...).

        Raises:
            TypeError: an unknown keyword.
            InvalidRequestError: a value of the wrong type or size; nothing was sent.
            APIConnectionError: with ``outcome_unknown`` when the answer was lost after sending:
                a create without mobile or email is not repeated, since it could create twice.
        """
        check_customer_fields("create", fields)
        body = customer_fields_to_wire(fields)
        if create_method is not None:
            if not isinstance(create_method, str):
                raise InvalidRequestError("create(): create_method must be a string")
            body["createMethod"] = create_method
        # The service matches on mobile or email, so such a create is safe to repeat.
        idempotent = bool(fields.get("mobile") or fields.get("email"))
        data = await self._session.request(
            "POST", "/v1/customers", json=body, idempotent=idempotent
        )
        return decode(structure_customer, data, "a customer")

    async def create_with_identities(
        self, identities: Iterable[Identity], **fields: Unpack[CustomerFields]
    ) -> Customer:
        """Upsert: update the customer holding any of ``identities`` (or mobile/email), else create.

        Fields cannot be cleared this way (use :meth:`update`). The identities are bound to the
        customer either way.

        Raises:
            InvalidRequestError: no identities, or one over the contract's limits.
        """
        checked = check_identities("create_with_identities", identities)
        check_customer_fields("create_with_identities", fields)
        body = {
            "customer": customer_fields_to_wire(fields),
            "customerIdentities": [identity_to_wire(i) for i in checked],
        }
        data = await self._session.request("POST", "/v1/customerandidentities", json=body)
        return decode(structure_customer, data, "a customer")

    async def get(self, customer_id: int) -> Customer:
        """The customer with this id.

        Raises:
            NotFoundError: no such customer (the live service answers 500 with 40201).
        """
        cid = check_id("get", customer_id)
        data = await self._session.request(
            "GET", f"/v1/customers/{cid}", not_found_codes=NOT_FOUND_CODES
        )
        return decode(structure_customer, data, "a customer")

    async def update(self, customer_id: int, **fields: Unpack[CustomerFields]) -> Customer:
        """Change the given fields; a field given as None is cleared, the others are not sent.

        Returns what the service answers: the reference documents the customer *before* the
        change, recorded live traffic shows it after. Call :meth:`get` to be sure.

        Raises:
            InvalidRequestError: no field given, or a bad value.
            NotFoundError: no such customer.
        """
        cid = check_id("update", customer_id)
        check_customer_fields("update", fields)
        if not fields:
            raise InvalidRequestError("update(): give at least one field to change")
        data = await self._session.request(
            "PUT",
            f"/v1/customers/{cid}",
            json=customer_fields_to_wire(fields),
            not_found_codes=NOT_FOUND_CODES,
        )
        return decode(structure_customer, data, "a customer")

    async def delete(self, customer_id: int) -> None:
        """Delete the customer (the service answers 204)."""
        cid = check_id("delete", customer_id)
        await self._session.request(
            "DELETE", f"/v1/customers/{cid}", not_found_codes=NOT_FOUND_CODES
        )

    async def count(self, **filters: Unpack[CustomerFilters]) -> int:
        """How many customers match the filters (the service answers a bare integer)."""
        params = customer_filter_params("count", dict(filters), paged=False)
        params.pop("select", None)
        data = await self._session.request("GET", "/v1/customers/count", params=params)
        if isinstance(data, dict):  # tolerate {"count": n} should the service change shape
            data = data.get("count", data.get("total"))
        if isinstance(data, bool) or not isinstance(data, int):
            return decode(_not_a_count, data, "a count")
        return data

    def list(
        self,
        *,
        page_size: int = 100,
        start_page: int = 1,
        max_items: int | None = None,
        concurrency: int = 1,
        resume_after: int | None = None,
        **filters: Unpack[CustomerFilters],
    ) -> AsyncPaginator[Customer]:
        """Walk the customers that match the filters, each once, in server order.

        Args:
            page_size: rows a page (the service serves at most 100).
            start_page: the first page; resume a walk with its ``checkpoint``.
            max_items: stop after this many customers.
            concurrency: pages fetched at once (yielded in order all the same).
            resume_after: with an id sort, the last id a previous walk yielded.
            **filters: ``stage``, ``source``, ``mobile``, ``email``, ``gender``, ``id_list``,
                ``date_created_from``/``_to``, ``last_updated_from``/``_to``, ``select``,
                ``sort_by`` (default ``"id"``), ``sort_order`` (``"asc"`` or ``"desc"``).

        Raises:
            InvalidRequestError: a bad filter or paging value (at once, before any request).
        """
        return self._walk(
            structure_customers,
            _customer_id,
            dict(filters),
            page_size=page_size,
            start_page=start_page,
            max_items=max_items,
            concurrency=concurrency,
            resume_after=resume_after,
        )

    def list_rows(
        self,
        *,
        page_size: int = 100,
        start_page: int = 1,
        max_items: int | None = None,
        concurrency: int = 1,
        resume_after: int | None = None,
        **filters: Unpack[CustomerFilters],
    ) -> AsyncPaginator[dict[str, Any]]:
        """:meth:`list`, yielding each customer as the service sent it (wire names, no typing).

        The export uses it: a row goes to disk as it came, with nothing lost or reformatted,
        and without the cost of building a model.
        """
        return self._walk(
            _rows,
            _row_id,
            dict(filters),
            page_size=page_size,
            start_page=start_page,
            max_items=max_items,
            concurrency=concurrency,
            resume_after=resume_after,
        )

    def _walk(
        self,
        structure: Callable[[builtins.list[Any]], builtins.list[T]],
        key: Callable[[T], Any],
        filters: dict[str, Any],
        **paging: Any,
    ) -> AsyncPaginator[T]:
        merged: dict[str, Any] = {"sort_by": "id", "sort_order": "asc", **filters}
        params = customer_filter_params("list", merged)
        read_page = rows_page(structure, "a page of customers")
        return paginate(self._session, "/v1/customers", params, read_page, key=key, **paging)


def _customer_id(customer: Customer) -> int | None:
    return customer.id


def _rows(rows: builtins.list[Any]) -> builtins.list[dict[str, Any]]:
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError("a row is not an object")
    return rows


def _row_id(row: dict[str, Any]) -> Any:
    return row.get("id")


def _not_a_count(data: Any) -> int:
    raise ValueError(f"expected an integer, got {type(data).__name__}")
