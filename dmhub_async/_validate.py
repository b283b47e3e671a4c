"""Input checks that run before anything is sent: bad input never reaches the service.

Limits are the contract's (CONTRACT.md, "Customer model" and "Identities").
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from ._exceptions import InvalidRequestError
from .models.customer import CustomerFields
from .models.gender import Gender
from .models.identity import Identity

__all__ = [
    "check_customer_fields",
    "check_id",
    "check_identities",
    "check_identity",
    "utc_query_time",
]

MAX_IDENTITY_TYPE = 32
MAX_IDENTITY_VALUE = 128
MAX_IDENTITY_NAME = 256
MAX_ADDRESS = 512
_ADDRESSES = ("home_address", "office_address")


def _runtime_types(hint: Any) -> tuple[type, ...]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _runtime_types(arg))
    if origin is not None:
        return (origin,)
    return () if hint is type(None) else (hint,)


#: The Python types each writable field takes, read off the ``CustomerFields`` TypedDict.
FIELD_TYPES: Mapping[str, tuple[type, ...]] = {
    name: _runtime_types(hint) for name, hint in typing.get_type_hints(CustomerFields).items()
}


def check_customer_fields(method: str, fields: Mapping[str, Any] | CustomerFields) -> None:
    """Refuse unknown keywords (TypeError) and values of the wrong type or size."""
    values = typing.cast(Mapping[str, Any], fields)
    for name in values:
        value: Any = values[name]
        allowed = FIELD_TYPES.get(name)
        if allowed is None:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")
        if value is None:
            continue
        if not _is_instance(value, allowed):
            expected = " or ".join(t.__name__ for t in allowed)
            raise InvalidRequestError(
                f"{method}(): {name} must be {expected} or None, not {type(value).__name__}"
            )
        if name == "gender" and value not in tuple(Gender):
            raise InvalidRequestError(f"{method}(): gender must be 0, 1 or 2, not {value!r}")
        if name in _ADDRESSES and len(value) > MAX_ADDRESS:
            raise InvalidRequestError(
                f"{method}(): {name} is {len(value)} characters; at most {MAX_ADDRESS}"
            )
        if name == "attr" and not all(isinstance(k, str) for k in value):
            raise InvalidRequestError(f"{method}(): attr keys must be strings")


def _is_instance(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in allowed:
        return False  # True is an int to Python, not an employee number to DM Hub
    return isinstance(value, allowed)


def check_id(method: str, customer_id: object) -> int:
    """A customer id as an int, or InvalidRequestError (ids are 64-bit ints on the wire)."""
    if isinstance(customer_id, bool) or not isinstance(customer_id, int):
        raise InvalidRequestError(
            f"{method}(): a customer id must be an int, not {type(customer_id).__name__}"
        )
    if customer_id < 0 or customer_id >= 2**63:
        raise InvalidRequestError(f"{method}(): customer id {customer_id} is out of range")
    return customer_id


def check_identity(method: str, identity: object) -> Identity:
    """``identity`` if it is an :class:`Identity` within the contract's limits."""
    if not isinstance(identity, Identity):
        raise InvalidRequestError(
            f"{method}(): expected an Identity(type, value), not {type(identity).__name__}"
        )
    for what, text, limit in (
        ("type", identity.type, MAX_IDENTITY_TYPE),
        ("value", identity.value, MAX_IDENTITY_VALUE),
    ):
        if not isinstance(text, str) or not text:
            raise InvalidRequestError(f"{method}(): identity {what} must be a non-empty string")
        if len(text) > limit:
            raise InvalidRequestError(
                f"{method}(): identity {what} is {len(text)} characters; at most {limit}"
            )
    if identity.name is not None and (
        not isinstance(identity.name, str) or len(identity.name) > MAX_IDENTITY_NAME
    ):
        raise InvalidRequestError(
            f"{method}(): identity name must be a string of at most {MAX_IDENTITY_NAME} characters"
        )
    return identity


def check_identities(method: str, identities: Iterable[Identity]) -> list[Identity]:
    """A non-empty list of valid identities."""
    if isinstance(identities, (str, bytes, Identity)) or not isinstance(identities, Iterable):
        raise InvalidRequestError(f"{method}(): identities must be a list of Identity")
    checked = [check_identity(method, i) for i in identities]
    if not checked:
        raise InvalidRequestError(f"{method}(): at least one identity is needed")
    return checked


def utc_query_time(method: str, name: str, value: datetime | str) -> str:
    """A filter bound as the list API wants it: UTC ``2016-11-11T11:11:11``, no ``Z``."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequestError(
                f"{method}(): {name} must be a datetime or an ISO 8601 string, not {value!r}"
            ) from None
        return utc_query_time(method, name, parsed)
    raise InvalidRequestError(f"{method}(): {name} must be a datetime or an ISO 8601 string")
