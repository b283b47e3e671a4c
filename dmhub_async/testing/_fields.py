"""Wire field names of customers and statistics records; which ones a client may write, and how."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._converter.names import CUSTOMER_WIRE_ORDER, STATISTICS_WIRE_ORDER

Row = dict[str, Any]

#: Wire field names of a customer, in the order the service sends them (docs/contract.md).
CUSTOMER_FIELDS: tuple[str, ...] = CUSTOMER_WIRE_ORDER

#: Wire field names of a statistics item, in the order the service sends them.
STATISTICS_FIELDS: tuple[str, ...] = STATISTICS_WIRE_ORDER

#: Fields a client may write; the rest (id, displayName, timestamps, owner) are the service's.
WRITABLE_FIELDS: frozenset[str] = frozenset(CUSTOMER_FIELDS) - {
    "id",
    "displayName",
    "lastUpdated",
    "dateCreated",
    "ownerId",
    "ownerName",
    "isMember",
}
BOOL_FIELDS: frozenset[str] = frozenset({"mobileVerified", "emailVerified", "isEmployee"})
#: Request fields the service knows that are not a customer's (docs/contract.md "create").
REQUEST_FIELDS: frozenset[str] = frozenset({"createMethod"})


def answer_of(row: Row, fields: Mapping[str, Any]) -> Row:
    """``row`` as a write answers it: ``fields`` the service does not know come back as null."""
    # docs/contract.md "More live behaviour": they are ignored (not kept), and answered as null.
    unknown = [
        name
        for name in fields
        if name not in row and name not in CUSTOMER_FIELDS and name not in REQUEST_FIELDS
    ]
    return {**row, **dict.fromkeys(unknown)} if unknown else row


def apply_fields(row: Row, fields: Mapping[str, Any], *, clear: bool) -> None:
    """Write the writable ``fields`` into ``row``; ``clear`` lets a null clear a field (PUT)."""
    # docs/contract.md "update": a verified mobile/email stays verified while it is unchanged.
    for address, flag in (("mobile", "mobileVerified"), ("email", "emailVerified")):
        after = fields.get(address, row[address])
        if after is None and not clear:
            # A null that cannot clear (create, upsert) keeps the address: it was taken for
            # another, and {"mobile": null, "mobileVerified": false} unverified a number kept.
            after = row[address]
        if row[flag] and flag in fields and not fields[flag] and after == row[address]:
            fields = {k: v for k, v in fields.items() if k != flag}
    for name, value in fields.items():
        if name not in WRITABLE_FIELDS:
            continue  # read-only and unknown fields (createMethod...) are ignored
        if name == "attr":
            if value is None:
                if clear:
                    row["attr"] = {}
                continue
            attr = dict(row.get("attr") or {})
            for key, v in value.items():
                if v is not None or clear:
                    attr[key] = v
            row["attr"] = attr
        elif value is None:
            if clear:
                row[name] = False if name in BOOL_FIELDS else None
        else:
            row[name] = value
    row["displayName"] = row.get("name") or row.get("nickName")
