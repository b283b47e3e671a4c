"""The simulator's request checks: parameters and bodies parsed and validated, errors answered."""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from aiohttp import web

from .. import _json
from .._converter import scalars
from ._fields import BOOL_FIELDS, CUSTOMER_FIELDS, WRITABLE_FIELDS, Row
from ._filters import Filters

# Error codes of the simulator's own choosing where docs/contract.md names none.
BAD_BODY = 40002  # body is not JSON, or not the JSON object expected
MISSING_FIELD = 40003  # a required field or parameter is missing or empty
BAD_CREDENTIALS = "40004"  # token endpoint: wrong appid/secret; a string, as live
BAD_VALUE = 40005  # a field or parameter has the wrong type, range or length
IDENTITY_TAKEN = 40006  # the identity is bound to another customer
CUSTOMER_MISSING = 40201  # live: a missing customer is "permission is not enough", on HTTP 500

_MAX_LENGTHS = {"homeAddress": 512, "officeAddress": 512}
_IDENTITY_LENGTHS = {"identityType": 32, "identityValue": 128, "identityName": 256}
SORTABLE = frozenset(CUSTOMER_FIELDS) - {"attr"}
# docs/contract.md "Customer model": dateJoin is UTC, 2017-06-01T12:12:12Z; a fraction of a second
# is let through (the SDK writes whole seconds; clients before it wrote a datetime's microseconds).
_UTC_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z")


class ApiError(Exception):
    """An error answer: HTTP status plus the service's ``error_code`` body."""

    def __init__(self, status: int, code: int | str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description

    def response(self) -> web.Response:
        """The JSON error response."""
        return json_response(
            {"error_code": self.code, "error_description": self.description}, self.status
        )


def json_response(data: Any, status: int = 200) -> web.Response:
    """A compact UTF-8 JSON response (Chinese text sent as is, like the service)."""
    body = _json.dumps(data)  # compact UTF-8; integers beyond 64 bits exactly
    return web.Response(body=body, status=status, content_type="application/json")


def bad(code: int, description: str) -> NoReturn:
    raise ApiError(400, code, description)


# -- request parsing ----------------------------------------------------------------------------


async def json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        # Every number exactly (a float rounded 12345678901234567.89); NaN and Infinity, which
        # json.dumps writes, are not JSON: taken, they were stored and served as null.
        data = _json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        bad(BAD_BODY, "request body is not valid JSON")
    if not isinstance(data, dict):
        bad(BAD_BODY, "request body must be a JSON object")
    return data


def int_param(query: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    raw = query.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        bad(BAD_VALUE, f"parameter {name} must be an integer")


def _time_param(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name, "")
    if raw == "":
        return None
    # docs/contract.md "list": UTC "2016-11-11T11:11:11", no Z; a Z or a bare date is let through.
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(raw, fmt))
        except ValueError:
            continue
    bad(BAD_VALUE, f"parameter {name} must look like 2016-11-11T11:11:11")


def paging(
    query: Mapping[str, str], default_rows: int, cap: int, sortable: frozenset[str]
) -> tuple[int, int, str, bool]:
    rows = int_param(query, "rows", default_rows)
    page = int_param(query, "page", 1)
    assert rows is not None
    assert page is not None
    if rows < 1 or page < 1:
        bad(BAD_VALUE, "rows and page must be positive")
    rows = min(rows, cap)  # docs/contract.md "list": the server caps the page size
    sidx = query.get("sidx") or "id"
    if sidx not in sortable:
        bad(BAD_VALUE, f"cannot sort by {sidx}")
    sord = (query.get("sord") or "asc").lower()
    if sord not in ("asc", "desc"):
        bad(BAD_VALUE, "sord must be asc or desc")
    return rows, page, sidx, sord == "desc"


def parse_filters(query: Mapping[str, str]) -> Filters:
    """The customer filters of a list or count query string."""
    gender = int_param(query, "gender")
    if gender is not None and gender not in (0, 1, 2):
        bad(BAD_VALUE, "gender must be 0, 1 or 2")
    id_list = None
    if query.get("idList"):
        try:
            id_list = frozenset(int(x) for x in query["idList"].split(",") if x.strip())
        except ValueError:
            bad(BAD_VALUE, "idList must be comma-separated integers")
    return Filters(
        stage=query.get("stage") or None,
        source=query.get("source") or None,
        mobile=query.get("mobile") or None,
        email=query.get("email") or None,
        gender=gender,
        id_list=id_list,
        created_from=_time_param(query, "dateCreatedFrom"),
        created_to=_time_param(query, "dateCreatedTo"),
        updated_from=_time_param(query, "lastUpdatedFrom"),
        updated_to=_time_param(query, "lastUpdatedTo"),
    )


def check_customer(fields: Any) -> dict[str, Any]:
    """Validate writable customer fields (unknown ones pass, ignored); returns them normalised."""
    if not isinstance(fields, dict):
        bad(BAD_BODY, "customer must be a JSON object")
    out = dict(fields)
    for name, value in fields.items():
        if value is None or name not in WRITABLE_FIELDS:
            continue
        if name in BOOL_FIELDS:
            if not isinstance(value, bool):
                bad(BAD_VALUE, f"{name} must be true or false")
        elif name in ("gender", "employeeNumber"):
            if isinstance(value, bool) or not isinstance(value, int):
                bad(BAD_VALUE, f"{name} must be an integer")
            if name == "gender" and value not in (0, 1, 2):
                bad(BAD_VALUE, "gender must be 0, 1 or 2")
        elif name == "annualRevenue":
            out[name] = _decimal(value)
        elif name == "attr":
            if not isinstance(value, dict):
                bad(BAD_VALUE, "attr must be a JSON object")
        elif not isinstance(value, str):
            bad(BAD_VALUE, f"{name} must be a string")
        elif name == "dateJoin":
            if not _is_utc_time(value):
                # Kept as sent, "yesterday" came back in every answer and no client read it.
                bad(BAD_VALUE, "dateJoin must be a UTC time such as 2017-06-01T12:12:12Z")
            # A fraction is taken, and dropped: live answers times to the second.
            out[name] = value[:19] + "Z"
        elif len(value) > _MAX_LENGTHS.get(name, 1 << 30):
            bad(BAD_VALUE, f"{name} is longer than {_MAX_LENGTHS[name]} characters")
    return out


def _is_utc_time(value: str) -> bool:
    if not _UTC_TIME.fullmatch(value):
        return False
    try:
        datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")  # a real day and second
    except ValueError:
        return False
    return True


def _decimal(value: Any) -> float | int | Decimal:
    """An amount as the number it is, every digit kept (served as a JSON number of them)."""
    if isinstance(value, bool):
        bad(BAD_VALUE, "annualRevenue must be a number")
    if isinstance(value, (int, float)):
        return value
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        bad(BAD_VALUE, "annualRevenue must be a number")
    if scalars.beyond_json(number):  # NaN, infinite, or an int() that would take minutes
        bad(BAD_VALUE, "annualRevenue must be a number")
    if number == number.to_integral_value():
        return int(number)
    return _json.exact_number(str(number))  # a float when it is that decimal


def check_identity(item: Any, *, where: str) -> tuple[str, str, str | None]:
    """Validate one identity object; returns (type, value, name)."""
    if not isinstance(item, dict):
        bad(BAD_BODY, f"{where} must be a JSON object")
    for name in ("identityType", "identityValue"):
        value = item.get(name)
        if value is None or value == "":
            bad(MISSING_FIELD, f"{where}.{name} is required")
    for name, limit in _IDENTITY_LENGTHS.items():
        value = item.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            bad(BAD_VALUE, f"{where}.{name} must be a string")
        if len(value) > limit:
            bad(BAD_VALUE, f"{where}.{name} is longer than {limit} characters")
    return item["identityType"], item["identityValue"], item.get("identityName")


def customer_id_of(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        bad(BAD_VALUE, "customer id must be an integer")


def missing_customer() -> NoReturn:
    # docs/contract.md "get": live, a missing id answers HTTP 500 with 40201.
    raise ApiError(500, CUSTOMER_MISSING, "permission is not enough")


def identity_wire(customer_id: int, type_: str, value: str, name: str | None) -> Row:
    # docs/contract.md "Identities": customerId is a JSON string here, unlike customer ids.
    return {
        "customerId": str(customer_id),
        "identityType": type_,
        "identityValue": value,
        "identityName": name,
    }
