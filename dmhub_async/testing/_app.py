"""The simulator's aiohttp application: routes, request checks, and the fault middleware."""

from __future__ import annotations

import asyncio
import calendar
import email.utils
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web

from .. import _json
from ._data import CUSTOMER_FIELDS, STATISTICS_FIELDS, Row
from ._faults import BEFORE_HANDLER
from ._store import BOOL_FIELDS, WRITABLE_FIELDS, Filters

if TYPE_CHECKING:
    from ._simulator import DMHubSimulator

logger = logging.getLogger("dmhub_async.testing")

TOKEN_PATH = "/security/accesstoken"

# Error codes of the simulator's own choosing where CONTRACT.md names none.
BAD_BODY = 40002  # body is not JSON, or not the JSON object expected
MISSING_FIELD = 40003  # a required field or parameter is missing or empty
BAD_CREDENTIALS = "40004"  # token endpoint: wrong appid/secret; a string, as live
BAD_VALUE = 40005  # a field or parameter has the wrong type, range or length
IDENTITY_TAKEN = 40006  # the identity is bound to another customer
CUSTOMER_MISSING = 40201  # live: a missing customer is "permission is not enough", on HTTP 500

_MAX_LENGTHS = {"homeAddress": 512, "officeAddress": 512}
_IDENTITY_LENGTHS = {"identityType": 32, "identityValue": 128, "identityName": 256}
_SORTABLE = frozenset(CUSTOMER_FIELDS) - {"attr"}
_HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

SIMULATOR_KEY: web.AppKey[DMHubSimulator] = web.AppKey("dmhub_simulator")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def _bad(code: int, description: str) -> NoReturn:
    raise ApiError(400, code, description)


# -- request parsing ----------------------------------------------------------------------------


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        _bad(BAD_BODY, "request body is not valid JSON")
    if not isinstance(data, dict):
        _bad(BAD_BODY, "request body must be a JSON object")
    return data


def _int_param(query: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    raw = query.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        _bad(BAD_VALUE, f"parameter {name} must be an integer")


def _time_param(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name, "")
    if raw == "":
        return None
    # CONTRACT.md "list": UTC "2016-11-11T11:11:11", no Z; a Z or a bare date is let through.
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(raw, fmt))
        except ValueError:
            continue
    _bad(BAD_VALUE, f"parameter {name} must look like 2016-11-11T11:11:11")


def _paging(
    query: Mapping[str, str], default_rows: int, cap: int, sortable: frozenset[str]
) -> tuple[int, int, str, bool]:
    rows = _int_param(query, "rows", default_rows)
    page = _int_param(query, "page", 1)
    assert rows is not None
    assert page is not None
    if rows < 1 or page < 1:
        _bad(BAD_VALUE, "rows and page must be positive")
    rows = min(rows, cap)  # CONTRACT.md "list": the server caps the page size
    sidx = query.get("sidx") or "id"
    if sidx not in sortable:
        _bad(BAD_VALUE, f"cannot sort by {sidx}")
    sord = (query.get("sord") or "asc").lower()
    if sord not in ("asc", "desc"):
        _bad(BAD_VALUE, "sord must be asc or desc")
    return rows, page, sidx, sord == "desc"


def parse_filters(query: Mapping[str, str]) -> Filters:
    """The customer filters of a list or count query string."""
    gender = _int_param(query, "gender")
    if gender is not None and gender not in (0, 1, 2):
        _bad(BAD_VALUE, "gender must be 0, 1 or 2")
    id_list = None
    if query.get("idList"):
        try:
            id_list = frozenset(int(x) for x in query["idList"].split(",") if x.strip())
        except ValueError:
            _bad(BAD_VALUE, "idList must be comma-separated integers")
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
        _bad(BAD_BODY, "customer must be a JSON object")
    out = dict(fields)
    for name, value in fields.items():
        if value is None or name not in WRITABLE_FIELDS:
            continue
        if name in BOOL_FIELDS:
            if not isinstance(value, bool):
                _bad(BAD_VALUE, f"{name} must be true or false")
        elif name in ("gender", "employeeNumber"):
            if isinstance(value, bool) or not isinstance(value, int):
                _bad(BAD_VALUE, f"{name} must be an integer")
            if name == "gender" and value not in (0, 1, 2):
                _bad(BAD_VALUE, "gender must be 0, 1 or 2")
        elif name == "annualRevenue":
            out[name] = _decimal(value)
        elif name == "attr":
            if not isinstance(value, dict):
                _bad(BAD_VALUE, "attr must be a JSON object")
        elif not isinstance(value, str):
            _bad(BAD_VALUE, f"{name} must be a string")
        elif len(value) > _MAX_LENGTHS.get(name, 1 << 30):
            _bad(BAD_VALUE, f"{name} is longer than {_MAX_LENGTHS[name]} characters")
    return out


def _decimal(value: Any) -> float | int:
    if isinstance(value, bool):
        _bad(BAD_VALUE, "annualRevenue must be a number")
    if isinstance(value, (int, float)):
        return value
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        _bad(BAD_VALUE, "annualRevenue must be a number")
    if not number.is_finite():
        _bad(BAD_VALUE, "annualRevenue must be a number")
    return int(number) if number == number.to_integral_value() else float(number)


def check_identity(item: Any, *, where: str) -> tuple[str, str, str | None]:
    """Validate one identity object; returns (type, value, name)."""
    if not isinstance(item, dict):
        _bad(BAD_BODY, f"{where} must be a JSON object")
    for name in ("identityType", "identityValue"):
        value = item.get(name)
        if value is None or value == "":
            _bad(MISSING_FIELD, f"{where}.{name} is required")
    for name, limit in _IDENTITY_LENGTHS.items():
        value = item.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            _bad(BAD_VALUE, f"{where}.{name} must be a string")
        if len(value) > limit:
            _bad(BAD_VALUE, f"{where}.{name} is longer than {limit} characters")
    return item["identityType"], item["identityValue"], item.get("identityName")


def _customer_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        _bad(BAD_VALUE, "customer id must be an integer")


def _missing_customer() -> NoReturn:
    # CONTRACT.md "get": live, a missing id answers HTTP 500 with 40201.
    raise ApiError(500, CUSTOMER_MISSING, "permission is not enough")


def _identity_wire(customer_id: int, type_: str, value: str, name: str | None) -> Row:
    # CONTRACT.md "Identities": customerId is a JSON string here, unlike customer ids.
    return {
        "customerId": str(customer_id),
        "identityType": type_,
        "identityValue": value,
        "identityName": name,
    }


# -- handlers -----------------------------------------------------------------------------------


class _Routes:
    def __init__(self, sim: DMHubSimulator) -> None:
        self.sim = sim
        self.store = sim.store

    async def token(self, request: web.Request) -> web.Response:
        q = request.query
        tokens = self.sim.tokens
        if (
            q.get("grant_type") != "client_credentials"
            or q.get("appid") != tokens.app_id
            or q.get("secret") != tokens.secret
        ):
            # CONTRACT.md "Transport": failure on HTTP 200, error_code a string.
            raise ApiError(200, BAD_CREDENTIALS, "the params is illegal")
        token = tokens.issue()
        self.sim.counters.tokens_issued += 1
        return json_response(
            {"error_code": 0, "access_token": token, "expires_in": int(tokens.ttl)}
        )

    async def upsert(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        customer = check_customer(body.get("customer") or {})
        items = body.get("customerIdentities")
        if not isinstance(items, list) or not items:
            _bad(MISSING_FIELD, "customerIdentities is required and must not be empty")
        identities = [
            check_identity(item, where=f"customerIdentities[{n}]") for n, item in enumerate(items)
        ]
        # CONTRACT.md "create with identities": a bound identity first, then mobile, then email.
        found: int | None = None
        for type_, value, _ in identities:
            bound = self.store.find_identity(type_, value)
            if bound is not None:
                found = bound[0]
                break
        if found is None:
            found = self._match(customer)
        if found is None:
            row = self.store.create(customer)
        else:
            row = self.store.update(found, customer, clear=False)  # nulls cannot clear here
        for type_, value, name in identities:
            self.store.bind(row["id"], type_, value, name)
        return json_response(row)

    def _match(self, customer: Mapping[str, Any]) -> int | None:
        found = None
        if isinstance(customer.get("mobile"), str) and customer["mobile"]:
            found = self.store.find_by_mobile(customer["mobile"])
        if found is None and isinstance(customer.get("email"), str) and customer["email"]:
            found = self.store.find_by_email(customer["email"])
        return found

    async def create(self, request: web.Request) -> web.Response:
        customer = check_customer(await _json_object(request))
        found = self._match(customer)
        if found is not None:
            # CONTRACT.md "create": matched by mobile or email, updated; live answers 200.
            return json_response(self.store.update(found, customer, clear=False))
        return json_response(self.store.create(customer), 201)

    async def get(self, request: web.Request) -> web.Response:
        row = self.store.get(_customer_id(request))
        if row is None:
            _missing_customer()
        return json_response(row)

    async def update(self, request: web.Request) -> web.Response:
        customer_id = _customer_id(request)
        fields = check_customer(await _json_object(request))
        if customer_id not in self.store:
            _missing_customer()
        # CONTRACT.md "update": null clears; the answer is the customer after the change (live).
        return json_response(self.store.update(customer_id, fields, clear=True))

    async def delete(self, request: web.Request) -> web.Response:
        if not self.store.delete(_customer_id(request)):
            _missing_customer()
        return web.Response(status=204)

    async def list(self, request: web.Request) -> web.Response:
        q = request.query
        filters = parse_filters(q)
        rows, page, sidx, desc = _paging(q, 20, self.sim.page_cap, _SORTABLE)
        records, found = self.store.page(filters, sidx, desc, (page - 1) * rows, rows)
        if q.get("select"):
            wanted = ["id", *(f for f in q["select"].split(",") if f and f != "id")]
            found = [{f: row[f] for f in wanted if f in row} for row in found]
        return json_response(
            {"rows": found, "records": records, "total": math.ceil(records / rows)}
        )

    async def count(self, request: web.Request) -> web.Response:
        n = self.store.count(parse_filters(request.query))
        # CONTRACT.md "count": a bare integer body, not an object.
        return web.Response(body=str(n).encode(), content_type="application/json")

    async def add_identity(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        raw_id = body.get("customerId")
        if raw_id is None or raw_id == "":
            _bad(MISSING_FIELD, "customerId is required")
        try:
            customer_id = int(raw_id)
        except (TypeError, ValueError):
            _bad(BAD_VALUE, "customerId must be an integer")
        type_, value, name = check_identity(body, where="body")
        if customer_id not in self.store:
            _missing_customer()
        owner = self.store.bind(customer_id, type_, value, name)
        if owner != customer_id:
            _bad(IDENTITY_TAKEN, "the identity is bound to another customer")
        found = self.store.find_identity(type_, value)
        assert found is not None
        return json_response(_identity_wire(customer_id, type_, value, found[1]))

    async def identities(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("customerIds"):
            try:
                ids = [int(x) for x in q["customerIds"].split(",") if x.strip()]
            except ValueError:
                _bad(BAD_VALUE, "customerIds must be comma-separated integers")
            out = [
                _identity_wire(i, t, v, n)
                for i in dict.fromkeys(ids)
                for t, v, n in self.store.identities(i)
            ]
            return json_response(out)
        type_, value = q.get("identityType"), q.get("identityValue")
        if not type_ or not value:
            _bad(MISSING_FIELD, "give customerIds, or identityType with identityValue")
        found = self.store.find_identity(type_, value)
        if found is None:
            return json_response([])
        return json_response([_identity_wire(found[0], type_, value, found[1])])

    async def statistics(self, request: web.Request) -> web.Response:
        q = request.query
        rows, page, sidx, desc = _paging(q, 5, self.sim.page_cap, frozenset(STATISTICS_FIELDS))
        customer_id = _int_param(q, "customerId")
        records, items = self.store.statistics_page(
            customer_id, sidx, desc, (page - 1) * rows, rows
        )
        meta = {
            "records": records,
            "total": math.ceil(records / rows),
            "hasNext": page * rows < records,
        }
        return json_response({"items": items, "meta": meta})


# -- faults and auth ----------------------------------------------------------------------------


def _drop_connection(request: web.Request) -> web.Response:
    # Closing the transport under aiohttp makes it fail writing the response, which it treats
    # as a client disconnect (logged at DEBUG only); the client sees the connection drop.
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


def _fault_response(kind: str, retry_after: int) -> web.Response:
    if kind == "html":
        return web.Response(text=_HTML_502, status=502, content_type="text/html")
    status = int(kind[:3])
    response = json_response({"error_code": status, "error_description": _REASONS[status]}, status)
    if kind == "429":
        response.headers["Retry-After"] = str(retry_after)
    elif kind == "429-http-date":
        response.headers["Retry-After"] = email.utils.formatdate(
            time.time() + retry_after, usegmt=True
        )
    return response


def _truncate(response: web.StreamResponse) -> web.StreamResponse:
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    body = response.body
    # Content-Length matches the cut body: a clean HTTP answer whose JSON is invalid.
    return web.Response(
        body=body[: len(body) // 2],
        status=response.status,
        content_type=response.content_type,
    )


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    sim = request.app[SIMULATOR_KEY]
    counters = sim.counters
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    counters.requests[route] += 1
    counters.routes[f"{request.method} {route}"] += 1
    try:
        await sim._before_request(request, route)
        faults = sim.faults
        target = request.path_qs
        if faults.is_resend(request.method, target):
            return _drop_connection(request)
        kind = None
        if faults.applies_to(request.method, request.path, route):
            delay = faults.next_latency()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = faults.next_fault()
        if kind is not None and kind in BEFORE_HANDLER:
            counters.faults[kind] += 1
            if kind == "reset":
                faults.dropped(request.method, target)
                return _drop_connection(request)
            response: web.StreamResponse = _fault_response(kind, faults.retry_after)
        else:
            response = await _answer(sim, request, handler)
            if kind == "truncated":
                counters.faults[kind] += 1
                response = _truncate(response)
            elif kind == "reset-after-write":
                counters.faults[kind] += 1
                faults.dropped(request.method, target)
                return _drop_connection(request)
    except ApiError as err:
        counters.errors[err.code] += 1
        response = err.response()
    except Exception as err:
        # The simulator must answer, whatever went wrong inside it.
        logger.exception("simulator error on %s %s", request.method, route)
        counters.errors[500] += 1
        response = json_response(
            {"error_code": 500, "error_description": f"simulator error: {type(err).__name__}"}, 500
        )
    counters.statuses[response.status] += 1
    return response


async def _answer(
    sim: DMHubSimulator, request: web.Request, handler: Handler
) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        # CONTRACT.md "Errors": a bad token answers HTTP 200 with the error in the body.
        code = sim.tokens.check(request.query.get("access_token"))
        if code is not None:
            raise ApiError(200, code, sim.tokens.describe(code))
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        raise ApiError(exc.status, exc.status, exc.reason) from None


def build_app(sim: DMHubSimulator) -> web.Application:
    """The aiohttp application serving ``sim``'s data."""
    app = web.Application(middlewares=[_middleware])
    app[SIMULATOR_KEY] = sim
    r = _Routes(sim)
    app.router.add_get(TOKEN_PATH, r.token)
    app.router.add_post("/v1/customerandidentities", r.upsert)
    app.router.add_get("/v1/customers/count", r.count)
    app.router.add_get("/v1/customers", r.list)
    app.router.add_post("/v1/customers", r.create)
    app.router.add_get("/v1/customers/{id}", r.get)
    app.router.add_put("/v1/customers/{id}", r.update)
    app.router.add_delete("/v1/customers/{id}", r.delete)
    app.router.add_post("/v1/customeridentities", r.add_identity)
    app.router.add_get("/v1/customeridentities", r.identities)
    app.router.add_get("/v1/customerStatistics", r.statistics)
    return app
