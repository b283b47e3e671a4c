"""The customer: DM Hub's built-in customer fields, snake_case, plus custom ``attr`` fields."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, TypedDict

import attrs

from .gender import Gender

__all__ = ["Customer", "CustomerFields"]


@attrs.define(kw_only=True)
class Customer:
    """A DM Hub customer; timestamps are aware UTC, unknown response fields are in ``extra``.

    Every field may be absent from a response (``select=`` narrows them), so every field has a
    default: None, except ``gender`` (``Gender.UNKNOWN``), ``attr`` and ``extra`` (empty dicts).
    ``extra`` keeps response fields this model does not know, under their wire (camelCase)
    names, so nothing the service sends is lost.
    """

    id: int | None = None
    display_name: str | None = None
    name: str | None = None
    img: str | None = None
    gender: Gender = Gender.UNKNOWN
    mobile: str | None = None
    mobile_verified: bool | None = None
    email: str | None = None
    email_verified: bool | None = None
    birthday: str | None = None
    wechat: str | None = None
    nick_name: str | None = None
    country: str | None = None
    province: str | None = None
    city: str | None = None
    county: str | None = None
    home_address: str | None = None
    office_address: str | None = None
    qq: str | None = None
    weibo: str | None = None
    stage: str | None = None
    date_join: datetime | None = None
    source: str | None = None
    content_name: str | None = None
    company: str | None = None
    title: str | None = None
    industry: str | None = None
    employee_number: int | None = None
    annual_revenue: Decimal | None = None
    website: str | None = None
    telephone: str | None = None
    is_employee: bool | None = None
    campaign_id: str | None = None
    campaign_name: str | None = None
    last_updated: datetime | None = None
    remark: str | None = None
    date_created: datetime | None = None
    attr: dict[str, Any] = attrs.field(factory=dict)
    #: Not in the documented model; kept as the service sends it (a number or a string).
    owner_id: int | str | None = None
    owner_name: str | None = None
    is_member: bool | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)


class CustomerFields(TypedDict, total=False):
    """The writable customer fields, as keyword arguments of create and update; None clears.

    ``date_join`` is a ``datetime`` or a timestamp such as ``"2017-06-01T20:12:12+08:00"``;
    either is sent in the wire's UTC form, ``...Z``. One without an offset (a naive
    ``datetime``, ``"2017-06-01T20:12:12"``) is read in the client's ``timezone``, UTC when
    it has none.
    ``annual_revenue`` is a number, or a number's text such as ``"1000.50"``: sent as a JSON
    number with every digit (``12345678901234567.89``, which a float would round), as is a
    ``Decimal`` anywhere in ``attr``.
    NaN and infinities, as floats or ``Decimal``s, anywhere in a body, are refused.
    A ``datetime`` in ``attr`` is sent as a UTC timestamp (``...Z``), one without an offset
    read in the client's ``timezone`` as ``date_join`` is; one with no UTC form (the year 1 at
    +23:00) is refused, as such a ``date_join`` is.
    A ``mobile`` or ``email`` holding a control character, a byte order mark or an invisible
    direction or zero-width mark (copied from a contact card) is refused, as such a filter is:
    the service matches a create on them.
    """

    name: str | None
    img: str | None
    gender: Gender | int | None
    mobile: str | None
    mobile_verified: bool | None
    email: str | None
    email_verified: bool | None
    birthday: str | None
    wechat: str | None
    nick_name: str | None
    country: str | None
    province: str | None
    city: str | None
    county: str | None
    home_address: str | None
    office_address: str | None
    qq: str | None
    weibo: str | None
    stage: str | None
    date_join: datetime | str | None
    source: str | None
    content_name: str | None
    company: str | None
    title: str | None
    industry: str | None
    employee_number: int | None
    annual_revenue: Decimal | int | float | str | None
    website: str | None
    telephone: str | None
    is_employee: bool | None
    campaign_id: str | None
    campaign_name: str | None
    remark: str | None
    attr: dict[str, Any] | None
