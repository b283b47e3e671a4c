"""Wire field names of customers and statistics records, and which ones a client may write."""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]

#: Wire field names of a customer, in the order the service sends them.
CUSTOMER_FIELDS: tuple[str, ...] = (
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

STATISTICS_FIELDS: tuple[str, ...] = (
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
