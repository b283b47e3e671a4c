"""Wire names: the camelCase JSON key of each snake_case attribute (docs/contract.md).

The rule is the plain camelCase of the attribute name (``nick_name`` -> ``nickName``); a small
table holds the names that do not follow it (``orderAMT``, ``identityType``...).
"""

from __future__ import annotations

import re
from typing import Any, Final

import attrs
from cattrs.gen import override

from ..models import Customer, CustomerIdentity, CustomerStatistics, Identity

#: Wire names that are not the plain camelCase of the attribute name (docs/contract.md).
_IRREGULAR_WIRE_NAMES: Final[dict[type, dict[str, str]]] = {
    CustomerStatistics: {
        "order_amt": "orderAMT",
        "order_amta": "orderAMTA",
        "order_apct": "orderAPCT",
    },
    CustomerIdentity: {
        "type": "identityType",
        "value": "identityValue",
        "name": "identityName",
    },
    Identity: {
        "type": "identityType",
        "value": "identityValue",
        "name": "identityName",
    },
}

_CAMEL_RE: Final = re.compile(r"_([a-z0-9])")


def camel(name: str) -> str:
    """``nick_name`` -> ``nickName``."""
    return _CAMEL_RE.sub(lambda m: m.group(1).upper(), name)


#: The order the service sends a customer's keys in (docs/contract.md "Customer model"; the
#: simulator sends them so too): ``telephone, ownerId, ownerName, isEmployee, ...``, where the
#: model declares ``owner_id`` after ``attr``.
CUSTOMER_WIRE_ORDER: Final[tuple[str, ...]] = (
    "id",
    "displayName",
    "name",
    "img",
    "gender",
    "mobile",
    "mobileVerified",
    "email",
    "emailVerified",
    "birthday",
    "wechat",
    "nickName",
    "country",
    "province",
    "city",
    "county",
    "homeAddress",
    "officeAddress",
    "qq",
    "weibo",
    "stage",
    "dateJoin",
    "source",
    "contentName",
    "company",
    "title",
    "industry",
    "employeeNumber",
    "annualRevenue",
    "website",
    "telephone",
    "ownerId",
    "ownerName",
    "isEmployee",
    "campaignId",
    "campaignName",
    "lastUpdated",
    "remark",
    "isMember",
    "dateCreated",
    "attr",
)

#: The order the service sends a statistics item's keys in (docs/contract.md "customer
#: statistics"): by name, where the model declares ``id`` first.
STATISTICS_WIRE_ORDER: Final[tuple[str, ...]] = (
    "customerId",
    "firstOrderDate",
    "id",
    "lastOrderDate",
    "lastOrderDays",
    "lastUpdated",
    "latest30daysScore",
    "orderAMT",
    "orderAMTA",
    "orderAPCT",
    "orderTotal",
    "orderTotalAmount",
    "totalScore",
)

#: The wire orders the contract shows. msgspec reads a record's keys into a Struct by guessing
#: each is the field after the last one found, and scans its fields from there when it is not:
#: a Struct in the model's order missed four of a customer's keys (and an unknown key after
#: them), 4% of the decode (benchmarks/HISTORY.md, issue 15's thirtieth round).
_WIRE_ORDERS: Final[dict[type, tuple[str, ...]]] = {
    Customer: CUSTOMER_WIRE_ORDER,
    CustomerStatistics: STATISTICS_WIRE_ORDER,
}


def wire_names(cls: type) -> dict[str, str]:
    """Map each attribute of an attrs model (but ``extra``) to its wire name."""
    irregular = _IRREGULAR_WIRE_NAMES.get(cls, {})
    return {
        a.name: irregular.get(a.name, camel(a.name)) for a in attrs.fields(cls) if a.name != "extra"
    }


def wire_order(cls: type) -> list[str]:
    """The attributes of an attrs model (but ``extra``) in the order the service sends their
    keys: the contract's order where it shows one, then any other in the model's order."""
    names = wire_names(cls)
    order = {wire: i for i, wire in enumerate(_WIRE_ORDERS.get(cls, ()))}
    return sorted(names, key=lambda a: order.get(names[a], len(order)))


#: Customer fields a client may write (docs/contract.md "Customer model": the rest are
#: read-only).
WRITABLE_CUSTOMER_FIELDS: Final[frozenset[str]] = frozenset(wire_names(Customer)) - {
    "id",
    "display_name",
    "last_updated",
    "date_created",
    "owner_id",
    "owner_name",
    "is_member",
}


def renames(names: dict[str, str], *, omit: tuple[str, ...] = ()) -> dict[str, Any]:
    """cattrs ``override(rename=...)`` for each name; ``omit`` left out of the output."""
    overrides: dict[str, Any] = {a: override(rename=w) for a, w in names.items()}
    overrides.update({a: override(omit=True) for a in omit})
    return overrides
