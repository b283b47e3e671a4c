"""The private converter: camelCase wire JSON <-> snake_case attrs models, one path each way.

From the wire, ``structure_*``: a wire object (or a page's rows) as models, with a
``ValueError`` that names the record and the field when a known field has the wrong shape
(the resources layer reports it as a decode error). To the wire, :func:`to_wire` and the
request bodies built on it: the converter writes them from the typed fields.

The package: :mod:`.scalars` (one value in, one out), :mod:`.names` (wire names),
:mod:`.codegen` (the generated structure hook of the hot path), :mod:`.converter` (the
``cattrs.Converter`` and its hook factories).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import attrs

from .. import _json
from ..models import Customer, CustomerFields, CustomerIdentity, CustomerStatistics, Gender
from ..models.identity import Identity
from .converter import make_converter
from .deferred import DeferredModels, deferred_rows, remember_secrets
from .names import WRITABLE_CUSTOMER_FIELDS, camel, wire_names
from .scalars import decimal_to_json, format_timestamp, parse_timestamp, timestamp_as_written
from .wire_struct import page_reader

__all__ = [
    "WRITABLE_CUSTOMER_FIELDS",
    "binding_body",
    "customer_body",
    "customer_fields_to_wire",
    "decimal_to_json",
    "format_timestamp",
    "identity_to_wire",
    "lenient_page_reader",
    "make_converter",
    "parse_timestamp",
    "read_customer_page",
    "read_customer_page_deferred",
    "read_statistics_page",
    "remember_secrets",
    "structure_customer",
    "structure_customers",
    "structure_identities",
    "structure_identity",
    "structure_statistics",
    "structure_statistics_list",
    "timestamp_as_written",
    "to_wire",
    "wire_names",
]

T = TypeVar("T")

_converter: Final = make_converter()
_CUSTOMER_WIRE: Final = wire_names(Customer)

# The hooks, fetched once: calling them directly skips the converter's per-call dispatch.
_structure_customer: Final[Callable[[Any, Any], Customer]] = _converter.get_structure_hook(Customer)
_structure_statistics: Final[Callable[[Any, Any], CustomerStatistics]] = (
    _converter.get_structure_hook(CustomerStatistics)
)
_structure_identity: Final[Callable[[Any, Any], CustomerIdentity]] = _converter.get_structure_hook(
    CustomerIdentity
)

# What a known field of the wrong shape raises inside the hooks (AttributeError: a row that is
# not an object).
_SHAPE_ERRORS: Final = (TypeError, ValueError, ArithmeticError, AttributeError, KeyError)


# ---------------------------------------------------------------------------------------------
# From the wire
# ---------------------------------------------------------------------------------------------


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _malformed(cls: type, rows: list[Any], err: Exception) -> ValueError:
    """The ``ValueError`` of a malformed answer: which record, which field, and why.

    Found again field by field, on the error path only: the hot path stays one generated call.
    """
    for index, row in enumerate(rows):
        where = f"record {index}"
        if not isinstance(row, Mapping):
            return ValueError(
                f"cannot read a {cls.__name__} from the response: {where} is not an object"
            )
        if isinstance(row.get("id"), int):
            where += f" (id {row['id']})"
        for field, wire in wire_names(cls).items():
            value = row.get(wire)
            kind: Any = attrs.fields_dict(cls)[field].type
            if value is None or kind is Gender:  # null is every field's default; gender lenient
                continue
            try:
                _converter.structure(value, kind)
            except _SHAPE_ERRORS as field_err:
                return ValueError(
                    f"cannot read a {cls.__name__} from the response: {where}, field {wire!r}: "
                    + _short(str(field_err))
                )
    return ValueError(f"cannot read a {cls.__name__} from the response: {_short(str(err))}")


def _structure_all(hook: Callable[[Any, Any], T], cls: type[T], rows: list[Any]) -> list[T]:
    try:
        return [hook(row, cls) for row in rows]
    except _SHAPE_ERRORS as err:
        raise _malformed(cls, rows, err) from err


def _structure_one(hook: Callable[[Any, Any], T], cls: type[T], data: Any) -> T:
    try:
        return hook(data, cls)
    except _SHAPE_ERRORS as err:
        raise _malformed(cls, [data], err) from err


def structure_customer(data: Mapping[str, Any]) -> Customer:
    """A wire customer object as a ``Customer``; raises ValueError when it is malformed."""
    return _structure_one(_structure_customer, Customer, data)


def structure_customers(rows: list[Any]) -> list[Customer]:
    """The ``rows`` of a customer page as ``Customer``s; raises ValueError when malformed."""
    return _structure_all(_structure_customer, Customer, rows)


def structure_identity(data: Mapping[str, Any]) -> CustomerIdentity:
    """A wire identity binding (``customerId`` a string or a number) as a ``CustomerIdentity``."""
    return _structure_one(_structure_identity, CustomerIdentity, data)


def structure_identities(rows: list[Any]) -> list[CustomerIdentity]:
    """A JSON array of identity bindings as ``CustomerIdentity``s; ValueError if no array.

    (An object or a string was iterated: ``{}`` and ``""`` read as no binding, so a lookup
    said "not found".)
    """
    if not isinstance(rows, list):
        raise ValueError(f"expected a JSON array, got {type(rows).__name__}")
    return _structure_all(_structure_identity, CustomerIdentity, rows)


def structure_statistics(data: Mapping[str, Any]) -> CustomerStatistics:
    """One ``items`` entry of the statistics answer as ``CustomerStatistics``."""
    return _structure_one(_structure_statistics, CustomerStatistics, data)


def structure_statistics_list(rows: list[Any]) -> list[CustomerStatistics]:
    """The ``items`` of the statistics answer as ``CustomerStatistics``."""
    return _structure_all(_structure_statistics, CustomerStatistics, rows)


def lenient_page_reader(
    structure: Callable[[list[Any]], list[T]], key: str
) -> Callable[[bytes], tuple[list[T], dict[str, Any]]]:
    """A page reader the lenient way: decode the page, then ``structure`` the list under ``key``.

    The page readers' fallback without msgspec, and ``list_rows``' reader (rows as dicts).
    """

    def read(body: bytes) -> tuple[list[T], dict[str, Any]]:
        page = _json.loads(body)
        if not isinstance(page, dict):
            raise ValueError("the answer is not a JSON object")
        rows = page.pop(key, None)
        if rows is not None and not isinstance(rows, list):
            raise ValueError(f"{key!r} is not a list")
        return structure(rows or []), page

    return read


#: A customer page's keys beside its rows, which a page reader gives back.
_PAGE_KEYS: Final = ("records", "total", "page", "error_code", "error_description")

#: A customer page's bytes (``{"rows": [...], "records": n, "total": pages}``) to its
#: ``Customer``s and its other keys; msgspec's typed decode when installed (see .wire_struct).
#: ValueError when the body is not such a page or a record is malformed.
read_customer_page: Final = page_reader(
    Customer,
    _converter,
    "rows",
    _PAGE_KEYS,
    lenient_page_reader(structure_customers, "rows"),
)
#: read_customer_page's ``list(structure="lazy")`` twin: each record a ``Customer`` built on
#: its first read (see .deferred); ValueError only when the body is not such a page, a record
#: is no object or its id no integer. Its walk gives each page's secrets to remember_secrets.
read_customer_page_deferred: Final = page_reader(
    Customer,
    _converter,
    "rows",
    _PAGE_KEYS,
    lenient_page_reader(deferred_rows, "rows"),
    DeferredModels(_converter),
)
#: A statistics page's bytes (``{"items": [...], "meta": {...}}``), as read_customer_page.
read_statistics_page: Final = page_reader(
    CustomerStatistics,
    _converter,
    "items",
    ("meta", "error_code", "error_description"),
    lenient_page_reader(structure_statistics_list, "items"),
)


# ---------------------------------------------------------------------------------------------
# To the wire
# ---------------------------------------------------------------------------------------------


def to_wire(obj: Any, as_type: Any = None) -> Any:
    """A model (or ``CustomerFields``, as ``as_type``) as JSON-ready wire data, camelCase.

    A ``Customer`` gives every field and ``extra`` merged back: what the service sent.
    """
    return _converter.unstructure(obj, as_type)


def customer_fields_to_wire(fields: CustomerFields | Mapping[str, Any]) -> dict[str, Any]:
    """Snake_case customer keyword fields as a camelCase wire body; None (clear) is kept.

    Values are made JSON-ready: ``datetime`` to ``...Z``, ``Decimal`` per
    :func:`decimal_to_json`, ``Gender`` to its int; in ``attr`` only its datetimes and
    Decimals (``scalars.json_to_wire``), any other value left for the body's check to refuse.
    Names are not validated here (the resources layer refuses unknown keywords).
    """
    wire: dict[str, Any] = to_wire(fields, CustomerFields)
    # In the caller's order (the resources name a refused value by its position), and a name
    # CustomerFields does not know camelCased as it comes.
    names = _CUSTOMER_WIRE
    return {
        (name := names.get(key) or camel(key)): wire[name] if name in wire else to_wire(value)
        for key, value in fields.items()
    }


def identity_to_wire(identity: Identity) -> dict[str, Any]:
    """An ``Identity`` as the wire's ``identityType``/``identityValue``(/``identityName``)."""
    data: dict[str, Any] = to_wire(identity)
    return data


def customer_body(
    fields: CustomerFields | Mapping[str, Any],
    *,
    create_method: str | None = None,
    identities: Iterable[Identity] | None = None,
) -> dict[str, Any]:
    """The body of a customer write: create and update, or with ``identities`` the upsert.

    ``create_method`` is the create's ``createMethod``; the upsert's body is
    ``{"customer": ..., "customerIdentities": [...]}`` (docs/contract.md, "create with identities").
    """
    body = customer_fields_to_wire(fields)
    if create_method is not None:
        body["createMethod"] = create_method
    if identities is None:
        return body
    return {"customer": body, "customerIdentities": [identity_to_wire(i) for i in identities]}


def binding_body(customer_id: int, identity: Identity) -> dict[str, Any]:
    """The body that binds ``identity`` to a customer: ``customerId`` as the string it is sent."""
    return {"customerId": str(customer_id), **identity_to_wire(identity)}
