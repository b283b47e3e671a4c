"""The seeded customers: each one decoded on demand from two 64-bit genes.

Keeping 16 bytes of genes (plus an 8-byte id) per customer instead of a dict is what lets the
simulator hold 1,000,000 customers in tens of megabytes and seed 100,000 in well under a second.
Unique values (mobile, e-mail, identity values) are bijections of the row index, so they can be
looked up backwards without an index.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from ._fields import Row
from ._pools import (
    ATTR1_VALUES,
    CAMPAIGNS,
    COMPANIES,
    EMAIL_DOMAINS,
    GENDERS,
    GIVEN_NAMES,
    MOBILE_PREFIXES,
    NICKNAMES,
    OWNERS,
    PLACES,
    SOURCES,
    STAGES,
    SURNAMES,
)

FIRST_ID = 3_000_000_000  # beyond int32, so a client that truncates ids shows it
CREATED_EPOCH = 1_451_606_400  # 2016-01-01T00:00:00Z: seeded customers are created from here
SECONDS_PER_ROW = 60  # one seeded customer a minute, in id order
STATISTICS_FIRST_ID = 10_000
STATISTICS_NOW = 1_514_764_800  # 2018-01-01T00:00:00Z: "today" for lastOrderDays

WECHAT = "wechat"
MOBILE = "mobile"
SHOP = "myshop-account"

_MOD8 = 10**8
_MOBILE_MUL = 7_654_321  # coprime with 10**8: index -> number is a bijection
_MOBILE_MUL_INV = pow(_MOBILE_MUL, -1, _MOD8)
_MASK48 = (1 << 48) - 1
_OPENID_MUL = 0x5DEECE66D  # odd: a bijection modulo 2**48
_OPENID_MUL_INV = pow(_OPENID_MUL, -1, 1 << 48)
_PREFIX_INDEX = {p: n for n, p in enumerate(MOBILE_PREFIXES)}
_NP = len(MOBILE_PREFIXES)
_SHOP_OFFSET = 10_000


def iso(ts: int) -> str:
    """Format epoch seconds the way the service does: ``2017-06-01T12:12:12Z``."""
    if ts >= 0:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    # Before 1970 (a filter's bound): strftime writes the year 500 as "500-01-01...", which
    # compares as text after "2016-...", and gmtime refuses such times on Windows.
    return (_EPOCH + timedelta(seconds=ts)).isoformat() + "Z"


_EPOCH = datetime(1970, 1, 1)


#: The filterable fields drawn from a few values: (shift, mask, values) of their code in gene a.
CODED_FIELDS: dict[str, tuple[int, int, tuple[object, ...]]] = {
    "gender": (18, 7, GENDERS),
    "stage": (21, 15, STAGES),
    "source": (25, 15, SOURCES),
}


# Each gene field, as (shift, mask); ``a`` and ``b`` are the two genes of a row.
def gender_of(a: int) -> int | None:
    """Gender of a seeded row."""
    return GENDERS[(a >> 18) & 7]  # CODED_FIELDS["gender"]


def stage_of(a: int) -> str | None:
    """Stage of a seeded row."""
    return STAGES[(a >> 21) & 15]  # CODED_FIELDS["stage"]


def source_of(a: int) -> str | None:
    """Source of a seeded row."""
    return SOURCES[(a >> 25) & 15]  # CODED_FIELDS["source"]


def created_of(i: int, b: int) -> int:
    """Creation time (epoch seconds) of seeded row ``i``: increasing with the index."""
    return CREATED_EPOCH + i * SECONDS_PER_ROW + (b & 63) % SECONDS_PER_ROW


def updated_of(i: int, b: int) -> int:
    """Last update time (epoch seconds) of seeded row ``i``."""
    created = created_of(i, b)
    if (b >> 30) & 1:
        return created + ((b >> 6) & 0xFFFFFF)
    return created


def has_mobile(a: int) -> bool:
    """Whether a seeded row has a mobile number (15 in 16 do)."""
    return (a >> 36) & 15 != 0


def has_email(a: int) -> bool:
    """Whether a seeded row has an e-mail address (half do)."""
    return (a >> 35) & 1 == 1


def has_statistics(a: int) -> bool:
    """Whether a seeded row has a customer statistics record (a quarter do)."""
    return (a >> 51) & 3 == 0


def mobile_of(i: int, offset: int) -> str:
    """The unique mobile number of seeded row ``i``."""
    number = ((i // _NP) * _MOBILE_MUL + offset) % _MOD8
    return f"{MOBILE_PREFIXES[i % _NP]}{number:08d}"


def index_of_mobile(mobile: str, offset: int) -> int | None:
    """The seeded row index whose generated mobile this is, if it has that shape."""
    # ASCII digits only: "²" is a digit to isdigit() but not to int() (a raw 500), and int()
    # reads "٤" as 4, so another string would point at a seeded row's number.
    if len(mobile) != 11 or not (mobile.isascii() and mobile.isdigit()):
        return None
    prefix = _PREFIX_INDEX.get(mobile[:3])
    if prefix is None:
        return None
    q = ((int(mobile[3:]) - offset) * _MOBILE_MUL_INV) % _MOD8
    return q * _NP + prefix


def email_of(i: int, a: int) -> str:
    """The unique e-mail address of seeded row ``i``."""
    pinyin = SURNAMES[((a >> 2) & 255) % len(SURNAMES)][1]
    return f"{pinyin}{i}@{EMAIL_DOMAINS[(a >> 56) & 7]}"


def index_of_email(email: str) -> int | None:
    """The seeded row index encoded in a generated e-mail address, if it has that shape."""
    local, _, _ = email.partition("@")
    digits = local.lstrip("abcdefghijklmnopqrstuvwxyz")
    if not digits or not _is_ascii_number(digits) or len(digits) > 12:
        return None
    return int(digits)


def _is_ascii_number(text: str) -> bool:
    """Whether ``text`` is ASCII digits only (``isdigit()`` takes "²", which int() refuses)."""
    return text.isascii() and text.isdigit()


def openid_of(i: int, offset: int) -> str:
    """The unique WeChat openid (28 chars, like the real ones) of seeded row ``i``."""
    x = (i * _OPENID_MUL + offset) & _MASK48
    tail = (x * 0x9E3779B97F4A7C15) & ((1 << 60) - 1)
    return f"o{x:012x}{tail:015x}"


def index_of_openid(value: str, offset: int) -> int | None:
    """The seeded row index encoded in a generated openid, if it has that shape."""
    if len(value) != 28 or value[0] != "o":
        return None
    try:
        x = int(value[1:13], 16)
    except ValueError:
        return None
    return ((x - offset) * _OPENID_MUL_INV) & _MASK48


def shop_account_of(i: int) -> str:
    """The unique shop account of seeded row ``i``."""
    return f"user{i + _SHOP_OFFSET}"


def index_of_shop_account(value: str) -> int | None:
    """The seeded row index encoded in a generated shop account, if it has that shape."""
    digits = value[4:]
    if not value.startswith("user") or not _is_ascii_number(digits) or len(digits) > 12:
        return None
    return int(digits) - _SHOP_OFFSET


def identities_of(i: int, a: int, offset: int) -> list[tuple[str, str, str | None]]:
    """The identities (type, value, name) bound to seeded row ``i``."""
    out: list[tuple[str, str, str | None]] = []
    if (a >> 47) & 1:
        out.append((WECHAT, openid_of(i, offset), NICKNAMES[(a >> 10) % len(NICKNAMES)]))
    if (a >> 50) & 1 and has_mobile(a):
        out.append((MOBILE, mobile_of(i, offset), None))
    if (a >> 48) & 3 == 0:
        out.append((SHOP, shop_account_of(i), _name_of(a)))
    return out


def identity_index(type_: str, value: str, offset: int) -> int | None:
    """The seeded row index a generated identity value points at, before checking it exists."""
    if type_ == WECHAT:
        return index_of_openid(value, offset)
    if type_ == MOBILE:
        return index_of_mobile(value, offset)
    if type_ == SHOP:
        return index_of_shop_account(value)
    return None


def _name_of(a: int) -> str:
    surname = SURNAMES[((a >> 2) & 255) % len(SURNAMES)][0]
    return surname + GIVEN_NAMES[((a >> 10) & 255) % len(GIVEN_NAMES)]


def decode_customer(i: int, customer_id: int, a: int, b: int, offset: int) -> Row:
    """The full wire dict of seeded row ``i``, fields in service order, unknown extras last."""
    name = _name_of(a)
    wechat = (a >> 47) & 1 == 1
    nick = NICKNAMES[(a >> 10) % len(NICKNAMES)] if wechat else None
    province, city = PLACES[((a >> 29) & 63) % len(PLACES)]
    owner_id, owner_name = OWNERS[(a >> 53) & 7]
    created = iso(created_of(i, b))
    company = COMPANIES[(b >> 44) % len(COMPANIES)] if (a >> 62) == 0 else None
    campaign = CAMPAIGNS[(b >> 50) % len(CAMPAIGNS)] if (b >> 58) & 3 == 0 else None
    mobile = mobile_of(i, offset) if has_mobile(a) else None
    email = email_of(i, a) if has_email(a) else None
    row: Row = {
        "id": customer_id,
        "displayName": name,
        "name": name,
        "img": f"https://wx.qlogo.cn/mmopen/sim{i:x}/0" if wechat else None,
        "gender": gender_of(a),
        "mobile": mobile,
        "mobileVerified": mobile is not None and (a >> 40) & 1 == 1,
        "email": email,
        "emailVerified": email is not None and (a >> 41) & 1 == 1,
        "birthday": (
            f"{1960 + (b >> 31) % 45}-{1 + (b >> 37) % 12:02d}-{1 + (b >> 41) % 28:02d}"
            if (b >> 36) & 1
            else None
        ),
        "wechat": None,
        "nickName": nick,
        "country": "中国",
        "province": province,
        "city": city,
        "county": None,
        "homeAddress": None,
        "officeAddress": None,
        "qq": None,
        "weibo": None,
        "stage": stage_of(a),
        "dateJoin": created,
        "source": source_of(a),
        "contentName": None,
        "company": company[0] if company else None,
        "title": company[1] if company else None,
        "industry": company[2] if company else None,
        "employeeNumber": 10 + (b >> 46) % 5000 if company else None,
        "annualRevenue": ((b >> 42) % 10**9) / 100 if (a >> 43) & 3 == 0 else None,
        "website": None,
        "telephone": None,
        "ownerId": owner_id,
        "ownerName": owner_name,
        "isEmployee": False,
        "campaignId": campaign[0] if campaign else None,
        "campaignName": campaign[1] if campaign else None,
        "lastUpdated": iso(updated_of(i, b)),
        "remark": None,
        "isMember": (a >> 42) & 1 == 1,
        "dateCreated": created,
        "attr": {
            "attr1": ATTR1_VALUES[(a >> 59) & 7],
            "attr2": (b >> 20) % 100 if (b >> 61) & 1 else None,
        },
    }
    if (a >> 45) & 3 == 0:
        # A field no published document lists: what a newer service would send.
        row["tagCount"] = (b >> 10) & 15
    elif (a >> 45) & 3 == 3 and (b >> 62) == 0:
        # One in sixteen: docs/contract.md "More live behaviour", some live answers "lacked
        # attr and displayName entirely", so code must not count on either key.
        del row["attr"], row["displayName"]
    return row


def decode_statistics(i: int, customer_id: int, a: int, b: int) -> Row:
    """The customer statistics record of seeded row ``i`` (only for rows that have one)."""
    first = created_of(i, b) + (b >> 12) % 86_400 * 30
    last = first + (b >> 24) % (86_400 * 200)
    orders = 1 + (b >> 33) % 40
    total = round(orders * (20 + (b >> 39) % 500) + ((b >> 50) % 100) / 100, 2)
    return {
        "customerId": customer_id,
        "firstOrderDate": iso(first),
        "id": STATISTICS_FIRST_ID + 2 * i + (a & 1),
        "lastOrderDate": iso(last),
        "lastOrderDays": max(0, (STATISTICS_NOW - last) // 86_400),
        "lastUpdated": iso(max(last, updated_of(i, b))),
        "latest30daysScore": (b >> 5) % 50,
        "orderAMT": round(((b >> 17) % 100) / 100, 2),
        "orderAMTA": round(((b >> 27) % 1000) / 10, 1),
        "orderAPCT": round(total / orders, 2),
        "orderTotal": orders,
        "orderTotalAmount": total,
        "totalScore": (b >> 45) % 1000,
    }
