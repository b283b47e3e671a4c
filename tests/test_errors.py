"""The error a caller gets for each answer: class, status, code and description.

Most tests go through a client (``max_retries=0`` where the failure would be retried, so each
sends one request); ``read_response`` and ``error_class`` are plain functions and are also
tested without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import typing
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _helpers import url
from aioresponses import aioresponses

from dmhub_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    DMHubClient,
    DMHubError,
    Identity,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)
from dmhub_async import _exceptions as errors
from dmhub_async._exceptions import coerce_code, error_class
from dmhub_async._sansio import Request, connection_error, read_response


def count(api: aioresponses, path: str) -> int:
    return sum(len(calls) for (_, u), calls in api.requests.items() if u.path == path)


# (status, body or payload) -> (class, status, code)
CASES: dict[str, tuple[dict[str, Any], type[APIError], int | str | None]] = {
    "401": ({"status": 401, "body": b""}, AuthenticationError, None),
    "401 with body": (
        {"status": 401, "payload": {"error_code": 40001, "error_description": "no"}},
        AuthenticationError,
        40001,
    ),
    "40001 on 200": ({"payload": {"error_code": 40001}}, AuthenticationError, 40001),
    "40014 on 200": ({"payload": {"error_code": "40014"}}, AuthenticationError, 40014),
    "42001 on 200": ({"payload": {"error_code": 42001}}, AuthenticationError, 42001),
    "400": ({"status": 400, "payload": {"error_code": 40005}}, APIError, 40005),
    "403": ({"status": 403, "body": b"Forbidden"}, APIError, None),
    "404": ({"status": 404, "body": b""}, NotFoundError, None),
    "429": ({"status": 429, "body": b""}, RateLimitError, None),
    "500": ({"status": 500, "payload": {"error_code": 500}}, ServerError, 500),
    "502": ({"status": 502, "body": b"<html>Bad Gateway</html>"}, ServerError, None),
    "503": ({"status": 503, "body": b""}, ServerError, None),
    "504": ({"status": 504, "body": b""}, ServerError, None),
    "non-JSON 200": ({"body": b"<html>maintenance</html>"}, ResponseDecodeError, None),
    "truncated JSON 200": ({"body": b'{"rows": [{"id": 1'}, ResponseDecodeError, None),
    "other code on 200": (
        {"payload": {"error_code": 40005, "error_description": "bad param"}},
        APIError,
        40005,
    ),
    "string code on 200": (
        {"payload": {"error_code": "E_PARAM", "error_description": "bad param"}},
        APIError,
        "E_PARAM",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_error_class_for_each_answer(api, make_client, case):
    answer, cls, code = CASES[case]
    api.get(url("/v1/customers"), repeat=True, **answer)
    # A static token: an auth error is raised as is, with no refresh in between.
    dm = make_client(access_token="tok", max_retries=0)

    with pytest.raises(APIError) as info:
        await dm.request("GET", "/v1/customers")

    err = info.value
    assert type(err) is cls
    assert err.status == answer.get("status", 200)
    assert err.code == code
    assert type(err.code) is type(code)
    assert err.method == "GET"
    assert err.path == "/v1/customers"
    assert count(api, "/v1/customers") == 1
    assert f"HTTP {err.status}" in str(err)


async def test_error_on_http_200_carries_status_code_and_description(api, make_client):
    api.get(url("/v1/customers"), payload={"error_code": "40005", "error_description": "bad"})
    dm = make_client(access_token="tok")

    with pytest.raises(APIError) as info:
        await dm.request("GET", "/v1/customers")

    assert (info.value.status, info.value.code, info.value.description) == (200, 40005, "bad")
    assert "error_code 40005: bad" in str(info.value)
    assert repr(info.value) == "APIError(status=200, code=40005, description='bad')"


async def test_missing_customer_is_not_found_on_a_single_read(api, make_client, clock):
    api.get(
        url("/v1/customers/77"),
        status=500,
        payload={"error_code": 40201, "error_description": "permission is not enough"},
        repeat=True,
    )
    dm = make_client(access_token="tok")

    with pytest.raises(NotFoundError) as info:
        await dm.customers.get(77)

    assert info.value.status == 500
    assert info.value.code == 40201
    assert count(api, "/v1/customers/77") == 1  # not retried as a server error
    assert clock.waits == []


NOT_FOUND_CALLS = {
    "get": ("GET", "/v1/customers/77", lambda dm: dm.customers.get(77)),
    "update": ("PUT", "/v1/customers/77", lambda dm: dm.customers.update(77, remark="vip")),
    "delete": ("DELETE", "/v1/customers/77", lambda dm: dm.customers.delete(77)),
    "add identity": (
        "POST",
        "/v1/customeridentities",
        lambda dm: dm.identities.add(77, Identity("wechat", "o-1")),
    ),
}


@pytest.mark.parametrize("call", NOT_FOUND_CALLS.values(), ids=NOT_FOUND_CALLS)
async def test_a_missing_customer_says_so_not_only_permission(api, make_client, call):
    # The service's words for a missing customer are "permission is not enough": alone in the
    # message, a log line sent the reader to the app's permissions, not to the id.
    method, path, send = call
    api.add(
        url(path),
        method,
        status=500,
        payload={"error_code": 40201, "error_description": "permission is not enough"},
        repeat=True,
    )
    dm = make_client(access_token="tok")

    with pytest.raises(NotFoundError) as info:
        await send(dm)

    message = str(info.value)
    assert "error_code 40201: permission is not enough" in message  # the service's words, kept
    assert "does not exist or was deleted" in message
    assert info.value.description == "permission is not enough"


async def test_40201_elsewhere_is_not_called_a_missing_customer(api, make_client):
    api.get(url("/v1/customers"), status=500, payload={"error_code": 40201}, repeat=True)
    dm = make_client(access_token="tok", max_retries=0)

    with pytest.raises(ServerError) as info:
        await dm.request("GET", "/v1/customers")

    assert "does not exist" not in str(info.value)


#: Success answers to a single-customer call that hold no customer: read as Customer(id=None).
NO_CUSTOMER = {
    "error code zero alone": {"error_code": "0"},
    "empty object": {},
    "fields without the id": {"name": "x", "mobile": "13800000000"},
    "null id": {"id": None, "name": "x"},
}


@pytest.mark.parametrize("answer", NO_CUSTOMER.values(), ids=NO_CUSTOMER.keys())
async def test_a_success_answer_without_the_customer_is_a_decode_error(api, make_client, answer):
    api.get(url("/v1/customers/5"), payload=answer, repeat=True)
    api.put(url("/v1/customers/5"), payload=answer, repeat=True)
    api.post(url("/v1/customers"), payload=answer, repeat=True)
    api.post(url("/v1/customerandidentities"), payload=answer, repeat=True)
    dm = make_client(access_token="tok", max_retries=0)
    calls = {
        "get": dm.customers.get(5),
        "update": dm.customers.update(5, name="y"),
        "create": dm.customers.create(name="y", mobile="13800000000"),
        "create_with_identities": dm.customers.create_with_identities(
            [Identity("wechat", "o1")], name="y"
        ),
    }
    for name, call in calls.items():
        with pytest.raises(ResponseDecodeError, match="not a customer: it has no 'id'") as info:
            await call
        assert info.value.status == 200, name


async def test_a_success_answer_of_the_wrong_shape_names_its_request_and_request_id(
    api, make_client
):
    # The error of a single-record call carried no method, path, headers, body or request id
    # (a page's did), and a create not safe to repeat, answered {} (so applied, perhaps),
    # said outcome_unknown=False: retried by its caller, it could create the customer twice.
    rid = {"X-Request-Id": "req-42"}
    api.get(url("/v1/customers/5"), payload={}, headers=rid)
    api.put(url("/v1/customers/5"), payload={}, headers=rid)
    api.post(url("/v1/customers"), payload={}, headers=rid, repeat=True)
    api.post(url("/v1/customerandidentities"), payload={}, headers=rid)
    api.post(url("/v1/customeridentities"), payload={"customerId": "x"}, headers=rid)
    api.get(url("/v1/customeridentities"), payload={"a": 1}, headers=rid)
    api.get(url("/v1/customers/count"), payload={"count": -1}, headers=rid)
    dm = make_client(access_token="tok", max_retries=0)
    calls = {  # the call, its request, and whether its outcome is unknown
        "get": (dm.customers.get(5), "GET /v1/customers/5", False),
        "update": (dm.customers.update(5, name="y"), "PUT /v1/customers/5", False),
        "create": (dm.customers.create(name="y"), "POST /v1/customers", True),
        "create by mobile": (
            dm.customers.create(name="y", mobile="13800000000"),
            "POST /v1/customers",
            False,  # matched by its mobile: safe to repeat
        ),
        "create_with_identities": (
            dm.customers.create_with_identities([Identity("wechat", "o1")], name="y"),
            "POST /v1/customerandidentities",
            False,
        ),
        "identities.add": (
            dm.identities.add(5, Identity("wechat", "o1")),
            "POST /v1/customeridentities",
            False,
        ),
        "identities.list": (dm.identities.list([5]), "GET /v1/customeridentities", False),
        "count": (dm.customers.count(), "GET /v1/customers/count", False),
    }
    for name, (call, request, unknown) in calls.items():
        with pytest.raises(ResponseDecodeError) as info:
            await call
        err = info.value
        assert str(err).startswith(f"{request} -> HTTP 200: the answer is not "), name
        assert f"{err.method} {err.path}" == request, name
        assert (err.status, err.request_id, err.outcome_unknown) == (200, "req-42", unknown), name
        assert err.body is not None, name
        assert err.body.startswith(("{", "[")), name


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 500, "payload": {"error_code": 500}},
        {"status": 502, "body": b"<html>Bad Gateway</html>"},
        {"status": 200, "body": b"<html>ok</html>"},
        {"status": 200, "payload": {}},
        {"status": 303, "headers": {"Location": "/v1/customers/7"}},
    ],
    ids=["500", "502", "unreadable 200", "200 without the customer", "303 See Other"],
)
async def test_a_write_that_may_have_been_applied_says_so_in_its_message(api, make_client, answer):
    # The README: such a write raises "with outcome_unknown=True and a message saying so".
    # The attribute was set, but the message (what a log or the CLI shows) said nothing.
    # A 303 says the server carried the request out and points to its result (RFC 9110,
    # 15.4.4): it was a plain refusal, outcome_unknown=False, and a create repeated made two.
    api.post(url("/v1/customers"), **answer)
    dm = make_client(access_token="tok")

    with pytest.raises(APIError) as info:
        await dm.customers.create(name="no mobile or email: not safe to repeat")

    assert info.value.outcome_unknown
    assert "may have been applied, so the outcome is unknown" in str(info.value)
    assert count(api, "/v1/customers") == 1


async def test_binding_an_identity_to_a_missing_customer_is_not_found(api, make_client, clock):
    # Retried as a ServerError before: five requests and seconds of backoff for an answer.
    api.post(
        url("/v1/customeridentities"),
        status=500,
        payload={"error_code": 40201, "error_description": "permission is not enough"},
        repeat=True,
    )
    dm = make_client(access_token="tok")

    with pytest.raises(NotFoundError) as info:
        await dm.identities.add(77, Identity("wechat", "o-1"))

    assert (info.value.status, info.value.code) == (500, 40201)
    assert count(api, "/v1/customeridentities") == 1
    assert clock.waits == []


async def test_40201_elsewhere_is_a_server_error(api, make_client):
    api.get(url("/v1/customers"), status=500, payload={"error_code": 40201})
    dm = make_client(access_token="tok", max_retries=0)

    with pytest.raises(ServerError):
        await dm.request("GET", "/v1/customers")


async def test_retry_after_is_on_the_rate_limit_error(api, make_client):
    api.get(url("/v1/customers"), status=429, headers={"Retry-After": "3"})
    dm = make_client(access_token="tok", max_retries=0)

    with pytest.raises(RateLimitError) as info:
        await dm.request("GET", "/v1/customers")

    assert info.value.retry_after == 3.0
    assert "Retry-After 3s" in str(info.value)


@pytest.mark.parametrize("code", [0, "0"])
async def test_zero_error_code_is_success(api, make_client, code):
    api.get(url("/v1/customers"), payload={"error_code": code, "rows": []})
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers") == {"error_code": code, "rows": []}


async def test_empty_success_is_none(api, make_client):
    api.delete(url("/v1/customers/1"), status=204)
    dm = make_client(access_token="tok")

    assert await dm.request("DELETE", "/v1/customers/1") is None


async def test_bare_integer_body_is_returned(api, make_client):
    api.get(url("/v1/customers/count"), body=b"7")
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/count") == 7


@pytest.mark.parametrize("body", [b"-1", b'{"count": -3}', b"true", b"7.0", b'"7"', b"{}"])
async def test_a_count_answer_that_is_no_count_is_a_decode_error(api, make_client, body):
    # -1 and {"count": -3} were returned as the count (an export's count_before of -1).
    api.get(url("/v1/customers/count"), body=body, repeat=True)
    dm = make_client(access_token="tok", max_retries=0)

    with pytest.raises(ResponseDecodeError, match="the answer is not a count"):
        await dm.customers.count()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"{}", "an object without a count"),
        (b'{"rows": [], "records": 7}', "an object without a count"),
        (b"null", "expected an integer, got null (or an empty answer)"),
        (b"", "expected an integer, got null (or an empty answer)"),
    ],
)
async def test_a_count_answer_that_is_no_count_says_what_it_is(api, make_client, body, said):
    # "the answer is not a count: expected an integer, got NoneType", for an object without
    # its count and for an empty answer alike: Python's name of what the client made of it.
    api.get(url("/v1/customers/count"), body=body, repeat=True)
    dm = make_client(access_token="tok", max_retries=0)

    with pytest.raises(ResponseDecodeError) as info:
        await dm.customers.count()
    assert str(info.value).endswith(f"the answer is not a count: {said}")


async def test_a_count_answer_of_zero_or_an_object_with_the_count_is_the_count(api, make_client):
    api.get(url("/v1/customers/count"), body=b"0")
    api.get(url("/v1/customers/count"), body=b'{"count": 12}')
    dm = make_client(access_token="tok")

    assert (await dm.customers.count(), await dm.customers.count()) == (0, 12)


async def test_refused_create_on_http_200_is_known_not_applied(api, make_client):
    api.post(url("/v1/customers"), payload={"error_code": 40005, "error_description": "bad"})
    dm = make_client(access_token="tok")

    with pytest.raises(APIError) as info:
        await dm.customers.create(name="x")

    # The service said no: nothing was written, so the caller need not check first.
    assert info.value.outcome_unknown is False


def test_error_tree():
    assert issubclass(InvalidRequestError, ValueError)
    assert issubclass(InvalidRequestError, DMHubError)
    assert issubclass(APITimeoutError, TimeoutError)
    assert issubclass(APITimeoutError, APIConnectionError)
    for cls in (AuthenticationError, NotFoundError, RateLimitError, ServerError):
        assert issubclass(cls, APIError)
    assert issubclass(ResponseDecodeError, APIError)
    assert issubclass(APIError, DMHubError)
    assert issubclass(APIConnectionError, DMHubError)
    assert not issubclass(APIError, APIConnectionError)


def test_timeout_error_is_caught_as_builtin_timeout():
    with pytest.raises(TimeoutError):
        raise APITimeoutError("GET /v1/customers timed out")


@pytest.mark.parametrize(
    ("raw", "code"),
    [(40004, 40004), ("40004", 40004), (" 42001 ", 42001), ("E1", "E1"), ("", None), (None, None)],
)
def test_codes_are_ints_when_numeric(raw, code):
    assert coerce_code(raw) == code
    assert type(coerce_code(raw)) is type(code)


def test_error_class_table():
    auth = frozenset({42001})
    assert error_class(200, 42001, auth_codes=auth) is AuthenticationError
    assert error_class(500, 40201, not_found_codes=frozenset({40201})) is NotFoundError
    assert error_class(401, None) is AuthenticationError
    assert error_class(404, None) is NotFoundError
    assert error_class(429, None) is RateLimitError
    assert error_class(599, None) is ServerError
    assert error_class(418, None) is APIError
    assert error_class(200, 40005) is APIError


def test_read_response_without_an_event_loop():
    request = Request("GET", "/v1/customers/1")
    assert read_response(request, 200, {}, b'{"id": 1}') == {"id": 1}
    with pytest.raises(AuthenticationError):
        read_response(request, 200, {}, b'{"error_code": 42001}')
    with pytest.raises(ResponseDecodeError) as info:
        read_response(request, 200, {}, b"\xff\xfe not json")
    assert "not JSON" in str(info.value)


def test_the_services_words_in_a_message_are_one_line_no_terminal_obeys() -> None:
    """An ``error_description`` (or a textual code) with an escape sequence or a line break:
    the message (what a log line or a terminal shows) has them escaped, the attributes keep
    them as sent. They were in the message as sent: OSC 52 set the reader's clipboard, a line
    break wrote a log line of the service's making."""
    request = Request("GET", "/v1/customers/count")
    description = "名字\x1b]52;c;eA==\x07\x1b[2J\r\nINFO forged\u2028\u202e\u3000张 三"
    body = json.dumps({"error_code": "E\x1b[5m1", "error_description": description})
    with pytest.raises(APIError) as info:
        read_response(request, 400, {}, body.encode())
    message = str(info.value)
    assert all(char.isprintable() or char == "\u3000" for char in message), repr(message)
    assert message.endswith(
        "error_code E\\x1b[5m1: 名字\\x1b]52;c;eA==\\x07\\x1b[2J\\r\\nINFO forged"
        "\\u2028\\u202e\u3000张 三"
    )
    assert info.value.description == description
    assert info.value.code == "E\x1b[5m1"


def test_token_endpoint_errors_are_authentication_errors():
    request = Request("GET", "/security/accesstoken", authenticated=False)
    with pytest.raises(AuthenticationError) as info:
        read_response(
            request,
            200,
            {},
            b'{"error_code": "40004", "error_description": "the params is illegal"}',
        )
    assert info.value.code == 40004
    with pytest.raises(ServerError):
        read_response(request, 502, {}, b"<html>")


def test_an_informational_answer_to_the_token_request_is_not_blamed_on_the_credentials():
    # A 1xx taken for the final answer (aiohttp hands a 101 back as the answer) was "status <
    # 300", as a 200 with an error code is: an AuthenticationError saying "the app id and
    # secret were refused: check app_id and secret", sending the reader to the wrong place.
    request = Request("GET", "/security/accesstoken", authenticated=False)
    with pytest.raises(APIError) as info:
        read_response(request, 101, {"Upgrade": "websocket"}, b"")
    assert type(info.value) is APIError
    assert "app id and secret" not in str(info.value)
    assert info.value.status == 101


def test_every_error_masks_the_secrets_of_live_clients_in_every_text() -> None:
    # However an error is built, by the session, a resource, the paginator or the converter's
    # callers: what a service echoed back cannot reach the message or any attribute.
    dm = DMHubClient("app-1", "Secret-Canary-123")
    by_token = DMHubClient(access_token="Token-Canary-456")  # a token or credentials, not both
    echoed = "Secret-Canary-123 Token-Canary-456 /x?access_token=other-token-789"
    errors = [
        DMHubError(echoed),
        InvalidRequestError(echoed),
        APIConnectionError(echoed, path=echoed),
        APIError(
            echoed,
            status=400,
            code=echoed,
            description=echoed,
            path=echoed,
            headers={"Location": echoed},
            body=echoed,
            request_id=echoed,
        ),
        ResponseDecodeError(echoed, status=200, description=echoed),
    ]
    for err in errors:
        seen = f"{err} {err!r} {err.args} {vars(err)}"
        for secret in ("Secret-Canary-123", "Token-Canary-456", "other-token-789"):
            assert secret not in seen, (type(err).__name__, seen)
    del dm, by_token


@pytest.mark.parametrize(
    "error",
    [
        errors.APIError(
            "GET /v1/customers -> HTTP 500",
            status=500,
            code=40201,
            description="gone",
            method="GET",
            path="/v1/customers",
            outcome_unknown=True,
            retry_after=1.5,
            headers={"X-Request-Id": "r-1"},
            body='{"error_code": 40201}',
            request_id="r-1",
        ),
        errors.NotFoundError("no such customer", status=500, code=40201),
        errors.RateLimitError("slow down", status=429, retry_after=2.0),
        errors.TokenStoreError("the store is slow", store="redis", unsafe=True),
        errors.APITimeoutError("no answer in 30 s", method="POST", outcome_unknown=True),
        errors.InvalidRequestError("bad page_size"),
        errors.DMHubError("two", "args"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_error_pickles_with_its_attributes(error: errors.DMHubError) -> None:
    # A task queue sends a failed task's error back pickled (arq, Celery, Ray): the errors
    # with keyword-only attributes (status, store) could not be unpickled.
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert (str(again), again.args, vars(again)) == (str(error), error.args, vars(error))


def test_the_attributes_are_typed() -> None:
    # code, description and path were Any to a type checker (the redaction's return type):
    # err.code.no_such_method() passed mypy --strict.
    hints = typing.get_type_hints(errors.APIError)
    assert hints["code"] == int | str | None
    assert hints["description"] == hints["path"] == hints["body"] == str | None
    assert hints["status"] is int
    assert typing.get_type_hints(errors.APIConnectionError)["path"] == str | None
    assert typing.get_type_hints(errors.TokenStoreError)["store"] is str


def _closed_port() -> int:
    """A port nothing listens on, nor will: this worker's own (``server_port``), not one of the
    ephemeral range, which another worker's server may bind meanwhile."""
    from _redis import server_port

    return server_port()


async def test_a_refused_connection_names_where_it_went_and_what_to_check() -> None:
    # "GET /security/accesstoken failed (ClientConnectorError)" was all a service's log got
    # (str(err)): no host, no port, nothing to check; the command line added its own hint.
    port = _closed_port()
    async with DMHubClient("app", "s3cret", base_url=f"http://127.0.0.1:{port}") as dm:
        with pytest.raises(APIConnectionError) as info:
            await dm.with_options(max_retries=0).customers.count()

    said = str(info.value)
    assert said.startswith("GET /security/accesstoken failed (ClientConnectorError)"), said
    assert f"no connection to http://127.0.0.1:{port} (is base_url right" in said, said


@pytest.mark.parametrize(
    ("kind", "timeout", "said"),
    [
        ("ClientConnectorDNSError", False, "the host of https://h.test was not found (is base_url"),
        ("ConnectionTimeoutError", True, "no connection to https://h.test (is base_url right"),
        ("ClientProxyConnectionError", False, "no connection to the proxy the environment names"),
    ],
)
def test_a_connection_never_made_says_what_to_check(kind: str, timeout: bool, said: str) -> None:
    request = Request("GET", "/v1/customers/count", {}, None)
    error = connection_error(
        request, timeout=timeout, not_sent=True, kind=kind, where="https://h.test"
    )
    assert said in str(error)
    if "proxy" in kind.lower():
        assert "h.test" not in str(error)  # the base URL was never reached, nor blamed


async def _no_wait(seconds: float) -> None:
    return None


async def test_a_proxy_that_refuses_the_tunnel_is_named_and_nothing_was_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy that wants its user and password (HTTP 407 to the CONNECT of an https base URL):
    # the create was said to have maybe reached the service ("its outcome is unknown"), though
    # no byte of it left the proxy, and the command line asked "is DMHUB_BASE_URL right?".
    # And it was retried like a lost connection, three times more by default, each after a
    # wait, with the same user and password every time: now asked once.
    import asyncio

    from dmhub_async.cli._errors import explain

    asked = 0

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal asked
        asked += 1
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://corp-user:ProxyPassw0rd@127.0.0.1:{port}")
    dm = DMHubClient(
        access_token="t0ken", base_url="https://dmhub.invalid", max_retries=3, sleep=_no_wait
    )
    async with server, dm:  # a token held: the create is the request the proxy refuses
        with pytest.raises(APIConnectionError) as info:
            await dm.customers.create(name="x")

    assert asked == 1
    assert dm.stats.retries == 0

    said = str(info.value)
    assert not info.value.outcome_unknown, said
    assert "outcome is unknown" not in said
    assert "the proxy the environment names" in said, said
    assert "refused the connection to the service with HTTP 407" in said, said
    assert "dmhub.invalid" not in said  # never reached, nor blamed
    assert "ProxyPassw0rd" not in said
    _, line = explain(info.value)
    assert "DMHUB_BASE_URL" not in line, line
    assert "the proxy the environment names" in line, line


def _self_signed(directory: Any) -> Any:
    """A TLS context serving a self-signed certificate for 127.0.0.1 (openssl makes it)."""
    import shutil
    import ssl
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.parametrize("server", ["a self-signed certificate", "plain http"])
async def test_a_tls_failure_says_so_and_does_not_blame_the_address(
    tmp_path: Any, server: str
) -> None:
    # Before: "GET /v1/customers/count failed (ClientConnectorCertificateError): no connection
    # to https://... (is base_url right, and the service up?)": the service was up and
    # answering; its certificate was not trusted (a proxy or antivirus that inspects TLS, a
    # Python without its CA certificates), and the command line asked "is DMHUB_BASE_URL
    # right?" after "no answer from" it.
    import asyncio

    from dmhub_async.cli._errors import explain

    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    if server == "plain http":
        listening = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    else:
        listening = await asyncio.start_server(nothing, "127.0.0.1", 0, ssl=_self_signed(tmp_path))
    port = listening.sockets[0].getsockname()[1]
    async with (
        listening,
        DMHubClient(access_token="t0ken", base_url=f"https://127.0.0.1:{port}") as dm,
    ):
        with pytest.raises(APIConnectionError) as info:
            await dm.with_options(max_retries=0).customers.count()

    said = str(info.value)
    assert "the service up?" not in said, said
    if server == "plain http":
        assert f"the TLS handshake with https://127.0.0.1:{port} failed" in said, said
    else:
        assert f"the TLS certificate of https://127.0.0.1:{port} is not trusted" in said, said
        assert "self-signed certificate" in said.replace("self signed", "self-signed"), said
    assert not info.value.outcome_unknown
    _, line = explain(info.value)
    assert "no answer from" not in line, line
    assert "TLS" in line, line


def test_a_connection_lost_after_sending_adds_no_hint_on_the_address() -> None:
    request = Request("GET", "/v1/customers/count", {}, None)
    error = connection_error(
        request,
        timeout=False,
        not_sent=False,
        kind="ServerDisconnectedError",
        where="https://h.test",
    )
    assert str(error) == "GET /v1/customers/count failed (ServerDisconnectedError)"


async def test_the_command_line_says_where_it_found_no_connection_once() -> None:
    from dmhub_async.cli._errors import explain

    port = _closed_port()
    async with DMHubClient("app", "s3cret", base_url=f"http://127.0.0.1:{port}") as dm:
        with pytest.raises(APIConnectionError) as info:
            await dm.with_options(max_retries=0).customers.count()

    _, line = explain(info.value)
    assert "is DMHUB_BASE_URL right?" in line, line  # the command line's words
    assert "base_url" not in line, line  # not the library's, a Python argument's name


async def test_the_command_line_says_a_host_that_was_not_found_was_not_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DMHUB_BASE_URL with its host mistyped: the library said "the host of https://... was
    # not found", the command line turned it into "no answer from https://... (is
    # DMHUB_BASE_URL right?)", as of a service down, after 7 s of retries.
    from dmhub_async.cli._errors import explain

    base_url = "https://api.dmhub-typo.invalid"
    monkeypatch.setenv("DMHUB_BASE_URL", base_url)
    async with DMHubClient("app", "s3cret", base_url=base_url) as dm:
        with pytest.raises(APIConnectionError) as info:
            await dm.with_options(max_retries=0).customers.count()
    assert "was not found" in str(info.value)  # the library's words

    _, line = explain(info.value)
    assert f"the host of {base_url} was not found (is DMHUB_BASE_URL right?)" in line, line
    assert "no answer from" not in line, line


async def test_a_resolver_that_gives_no_answer_is_not_said_to_have_not_found_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A machine offline, or its DNS server down: the lookup fails "Temporary failure in name
    # resolution" (EAI_AGAIN), no word on the host. The library said "the host of https://...
    # was not found (is base_url right?)", the command line "(is DMHUB_BASE_URL right?)", of
    # the service's right (default) URL: the user was sent to check what was not wrong.
    import socket

    from dmhub_async.cli._errors import explain

    looked_up: list[str] = []
    real = socket.getaddrinfo

    def no_answer(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "api.dmhub-offline.test":
            return real(host, *args, **kwargs)
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_answer)
    base_url = "https://api.dmhub-offline.test"
    monkeypatch.setenv("DMHUB_BASE_URL", base_url)
    async with DMHubClient("app", "s3cret", base_url=base_url) as dm:
        with pytest.raises(APIConnectionError) as info:
            await dm.with_options(max_retries=0).customers.count()

    assert looked_up == ["api.dmhub-offline.test"]
    said = str(info.value)
    assert said.endswith(
        f"the DNS server gave no answer for the host of {base_url} (is this machine online, its"
        " DNS server reachable?)"
    ), said
    _, line = explain(info.value)
    assert line == said, line
    assert "was not found" not in line, line
    assert "DMHUB_BASE_URL right" not in line, line


async def test_a_rerun_held_by_a_dns_no_answer_still_says_the_dns_server_gave_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The token store records a token fetch that failed, and a client that takes its lock
    # within the hold (a rerun within 6 s) raises it at once. The record kept no kind: the
    # rerun said "-> no answer: failed 0 s ago ...", and the command line added ": no answer
    # from https://... (is DMHUB_BASE_URL right?)" of the right URL, where the first run said
    # the DNS server gave no answer.
    import socket

    from dmhub_async.cli._errors import explain

    looked_up: list[str] = []
    real = socket.getaddrinfo

    def no_answer(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "api.dmhub-rerun.test":
            return real(host, *args, **kwargs)
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_answer)
    base_url = "https://api.dmhub-rerun.test"
    monkeypatch.setenv("DMHUB_BASE_URL", base_url)
    errors: list[APIConnectionError] = []
    for _ in range(2):
        async with DMHubClient("app", "s3cret", base_url=base_url) as dm:
            with pytest.raises(APIConnectionError) as info:
                await dm.with_options(max_retries=0).customers.count()
        errors.append(info.value)

    assert looked_up == ["api.dmhub-rerun.test"]  # the rerun was held: nothing sent
    said = str(errors[1])
    assert "in another client or process sharing the token store" in said, said
    assert said.endswith(
        "the DNS server gave no answer for its host (is this machine online, its DNS server"
        " reachable?)"
    ), said
    # Not that the endpoint is down: nothing reached it.
    assert "endpoint that is down" not in said, said
    assert "add no load while the token endpoint cannot be reached: the DNS server" in said, said
    _, line = explain(errors[1])
    assert line == said, line
    assert "DMHUB_BASE_URL right" not in line, line


async def test_a_rerun_held_by_a_proxy_that_gave_no_connection_names_the_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a DNS no-answer above: the environment's proxy down, the first run said "no
    # connection to the proxy the environment names"; the rerun held by its record said "a
    # token endpoint that is down", and the command line "no answer from the default base URL
    # (is DMHUB_BASE_URL right?)", of a URL never reached.
    import socket

    from dmhub_async.cli._errors import explain

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the proxy gives no connection
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    errors: list[APIConnectionError] = []
    for _ in range(2):
        async with DMHubClient("app", "s3cret", base_url="https://api.dmhub-proxy.test") as dm:
            with pytest.raises(APIConnectionError) as info:
                await dm.with_options(max_retries=0).customers.count()
        errors.append(info.value)

    first, held = str(errors[0]), str(errors[1])
    assert "no connection to the proxy the environment names" in first, first
    assert "in another client or process sharing the token store" in held, held
    assert held.endswith(
        "while the token endpoint cannot be reached: no connection to the proxy the environment"
        " names (HTTPS_PROXY, HTTP_PROXY or the system's): is it right and up?"
    ), held
    _, line = explain(errors[1])
    assert "no answer from the proxy the environment names" in line, line
    assert "DMHUB_BASE_URL" not in line, line


async def test_a_rerun_held_by_a_proxy_that_closed_its_connection_names_the_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As above, the proxy up but closing each connection it takes: the first run said "no
    # connection through the proxy the environment names"; the rerun held by its record says
    # so too, and the command line names the proxy, not DMHUB_BASE_URL.
    from dmhub_async.cli._errors import explain

    async def closed_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    proxy = await asyncio.start_server(closed_at_once, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    errors: list[APIConnectionError] = []
    try:
        for _ in range(2):
            base_url = "https://api.dmhub-proxy-closed.test"
            async with DMHubClient("app", "s3cret", base_url=base_url) as dm:
                with pytest.raises(APIConnectionError) as info:
                    await dm.with_options(max_retries=0).customers.count()
            errors.append(info.value)
    finally:
        proxy.close()
        await proxy.wait_closed()

    words = (
        "no connection through the proxy the environment names (HTTPS_PROXY, HTTP_PROXY or the"
        " system's): is it right and up, and does it reach the service?"
    )
    first, held = str(errors[0]), str(errors[1])
    assert first.endswith(words), first
    assert "in another client or process sharing the token store" in held, held
    assert held.endswith(f"while the token endpoint cannot be reached: {words}"), held
    _, line = explain(errors[1])
    assert "no answer from the proxy the environment names" in line, line
    assert "DMHUB_BASE_URL" not in line, line


async def test_a_rerun_held_by_a_dns_no_answer_through_a_token_file_says_the_dns_server_gave_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # As above, the record read back from a token file, as a rerun in another process reads
    # it: its hint went through the file's JSON (a store of a later release's hint this one
    # does not know reads none).
    import socket

    from dmhub_async import FileTokenStore
    from dmhub_async._token_stores import FetchFailure

    def no_answer(host: Any, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_answer)
    base_url = "https://api.dmhub-rerun.test"
    errors: list[APIConnectionError] = []
    for _ in range(2):
        store = FileTokenStore(tmp_path / "tokens.json")
        async with DMHubClient("app", "s3cret", base_url=base_url, token_store=store) as dm:
            with pytest.raises(APIConnectionError) as info:
                await dm.with_options(max_retries=0).customers.count()
        errors.append(info.value)

    said = str(errors[1])
    assert "in another client or process sharing the token store" in said, said
    assert said.endswith(
        "the DNS server gave no answer for its host (is this machine online,"
        " its DNS server reachable?)"
    ), said
    recorded = FetchFailure("APIConnectionError", None, None, 1.0, 2.0, "no_dns_answer")
    later = {**recorded.to_json(), "hint": "a_hint_of_a_later_release"}
    assert FetchFailure.from_json(recorded.to_json()) == recorded
    assert FetchFailure.from_json(later) == FetchFailure("APIConnectionError", None, None, 1.0, 2.0)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (11, "Could not contact DNS servers"),  # c-ares's ARES_ECONNREFUSED
        (12, "Timeout while contacting DNS servers"),  # ARES_ETIMEOUT
        (3, "Server failed"),  # ARES_ESERVFAIL: glibc's EAI_AGAIN too
    ],
)
async def test_aiodns_giving_no_answer_is_not_said_to_have_not_found_the_host(
    monkeypatch: pytest.MonkeyPatch, code: int, words: str
) -> None:
    # With aiodns installed (aiohttp[speedups]), aiohttp looks hosts up with it (its
    # AsyncResolver), which says a lookup that got no answer as OSError(None, c-ares's words)
    # from aiodns's DNSError: no EAI_AGAIN. The library said "the host of https://... was not
    # found (is base_url right?)", the command line "(is DMHUB_BASE_URL right?)", of the
    # service's right URL, as before its threaded resolver's case was told apart. aiodns
    # stood in for: its error module, and aiohttp's AsyncResolver's raise.
    import sys
    import types

    import aiohttp.connector

    from dmhub_async.cli._errors import explain

    aiodns_error = types.ModuleType("aiodns.error")

    class DNSError(Exception):
        pass

    aiodns_error.DNSError = DNSError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aiodns.error", aiodns_error)
    looked_up: list[str] = []

    class Resolver(aiohttp.abc.AbstractResolver):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def resolve(self, host: str, *args: Any, **kwargs: Any) -> Any:
            looked_up.append(host)
            try:
                raise DNSError(code, words)
            except DNSError as exc:  # as aiohttp's AsyncResolver says it
                raise OSError(None, exc.args[1]) from exc

        async def close(self) -> None:
            pass

    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", Resolver)
    # A host of its own: a token request that failed is not sent again for a second.
    base_url = f"https://api-{code}.dmhub-offline.test"
    monkeypatch.setenv("DMHUB_BASE_URL", base_url)
    async with DMHubClient("app", "s3cret", base_url=base_url) as dm:
        with pytest.raises(APIConnectionError) as info:
            await dm.with_options(max_retries=0).customers.count()

    assert looked_up == [f"api-{code}.dmhub-offline.test"]
    said = str(info.value)
    assert said.endswith(
        f"the DNS server gave no answer for the host of {base_url} (is this machine online, its"
        " DNS server reachable?)"
    ), said
    _, line = explain(info.value)
    assert line == said, line


async def test_aiodns_not_finding_the_host_is_still_said_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The other side of the test above: a host the DNS server says is not there (c-ares's
    # ARES_ENOTFOUND, "Domain name not found") is still a base URL to check.
    import sys
    import types

    import aiohttp.connector

    aiodns_error = types.ModuleType("aiodns.error")

    class DNSError(Exception):
        pass

    aiodns_error.DNSError = DNSError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aiodns.error", aiodns_error)

    class Resolver(aiohttp.abc.AbstractResolver):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def resolve(self, host: str, *args: Any, **kwargs: Any) -> Any:
            try:
                raise DNSError(4, "Domain name not found")
            except DNSError as exc:
                raise OSError(None, exc.args[1]) from exc

        async def close(self) -> None:
            pass

    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", Resolver)
    base_url = "https://api.dmhub-mistyped.test"
    async with DMHubClient("app", "s3cret", base_url=base_url) as dm:
        with pytest.raises(APIConnectionError) as info:
            await dm.with_options(max_retries=0).customers.count()
    said = str(info.value)  # "was not found" (aiohttp 3.9 has no DNS error: "no connection")
    assert "gave no answer" not in said, said
    assert "(is base_url right" in said, said


async def test_an_untrusted_certificate_is_met_once_not_retried(tmp_path: Any) -> None:
    # Before: a certificate this machine does not trust was retried like a lost connection,
    # each handshake failing the same way.
    import asyncio

    accepted = 0

    class Counted(asyncio.Protocol):
        def __init__(self) -> None:
            nonlocal accepted
            accepted += 1

    loop = asyncio.get_running_loop()
    listening = await loop.create_server(Counted, "127.0.0.1", 0, ssl=_self_signed(tmp_path))
    port = listening.sockets[0].getsockname()[1]
    async with (
        listening,
        DMHubClient(
            access_token="t0ken",
            base_url=f"https://127.0.0.1:{port}",
            max_retries=3,
            sleep=_no_wait,
        ) as dm,
    ):
        with pytest.raises(APIConnectionError, match="is not trusted"):
            await dm.customers.count()
    assert accepted == 1


@pytest.mark.parametrize(
    ("path", "advice"),
    [
        (
            "/v1/customers",
            "ask for fewer customers a page: a smaller --page-size (a checkpoint's export keeps"
            " the size it began with)",
        ),
        ("/v1/customeridentities", None),
    ],
    ids=["a page", "a lookup"],
)
def test_the_command_line_says_what_it_can_do_of_an_answer_too_large(
    path: str, advice: str | None
) -> None:
    # An export of customers with large custom fields (a page of 100 over 64 MiB): the
    # command said "Raise max_response_size if the service really sends that much", a
    # setting no command takes. A page's answer says what the command can do instead.
    from dmhub_async._sansio import too_large
    from dmhub_async.cli._errors import explain

    code, line = explain(too_large(Request("GET", path, {"rows": "100"}, None), 200, 1 << 26))
    assert code == 1
    assert "max_response_size" not in line, line
    assert line.startswith(f"GET {path} -> HTTP 200: the answer is larger than the"), line
    assert "67,108,864 bytes" in line, line
    if advice is None:
        assert line.endswith("not read"), line
    else:
        assert line.endswith(f"not read: {advice}"), line


TOKEN_ECHO = "t0ken-echoed-back"


@contextlib.asynccontextmanager
async def _answering_raw(answer: bytes, requests: list[bytes]) -> AsyncIterator[str]:
    """A loopback server at the URL yielded, answering each request with ``answer`` as bytes
    (``{line}``: the request's line, ``{{}}``: ``{}``), each request's line kept in
    ``requests``."""

    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0]
        requests.append(line)
        writer.write(answer.replace(b"{line}", line).replace(b"{{}}", b"{}"))
        await writer.drain()
        writer.close()

    listening = await asyncio.start_server(answering, "127.0.0.1", 0)
    async with listening:
        yield f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"SSH-2.0-OpenSSH_8.9\r\n\r\n", ("Bad status line",)),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nNoColon {line}\r\n"
            b"Content-Length: 2\r\n\r\n{{}}",
            ("Invalid header token", "Invalid HTTP header"),  # aiohttp's C parser, its Python one
        ),
    ],
    ids=["status line", "header without a colon"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_an_answer_that_is_not_http_is_said_so_naming_the_url_without_the_token(
    make_client, answer: bytes, said: tuple[str, ...], method: str
) -> None:
    # Before: "GET /v1/customers/1 failed (ClientResponseError)", aiohttp's class name alone:
    # nothing said the service (or a proxy) had answered, and not in HTTP.
    from dmhub_async.cli._errors import explain, stopped_answering

    requests: list[bytes] = []
    async with _answering_raw(answer, requests) as base_url:
        dm = make_client(access_token=TOKEN_ECHO, base_url=base_url, max_retries=2)
        with pytest.raises(APIConnectionError) as info:
            await dm.request(
                method, "/v1/customers/1", json={"name": "x"} if method == "POST" else None
            )

    message = str(info.value)
    start = f"{method} /v1/customers/1 failed: the answer from {base_url} was not HTTP ("
    assert message.startswith(start), message
    assert message[len(start) :].startswith(said), message
    assert TOKEN_ECHO not in message
    _, line = explain(info.value)  # the command line's: not "no answer from"
    assert line == message
    assert str(stopped_answering(info.value)) == message  # nor "stopped answering", mid-run
    if method == "GET":  # no answer read: retried, as a connection lost
        assert len(requests) == 3
        assert not info.value.outcome_unknown
    else:  # a create without mobile or email, sent: it may have been applied
        assert len(requests) == 1
        assert info.value.outcome_unknown
        assert message.endswith(
            "its outcome is unknown and it was not repeated: check before trying again"
        )


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        # A gateway's long header (a cookie, a policy): HTTP, past aiohttp's 8190 bytes a line.
        (
            b"HTTP/1.1 200 OK\r\nX-Echo: {line}" + b"a" * 9000 + b"\r\n"
            b"Content-Length: 2\r\n\r\n{{}}",
            "was HTTP beyond the client's limits (Got more than 8190 bytes when reading a line)",
        ),
        (
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
            + b"Content-Length: 2\r\n\r\n{{}}",
            "was HTTP beyond the client's limits (Too many headers received)",
        ),
        # aiohttp's words hold an apostrophe of their own: they were cut there.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{{}}\r\n0\r\n\r\n",
            "was not HTTP (Transfer-Encoding can't be present with Content-Length)",
        ),
    ],
    ids=["a line too long", "too many headers", "words with an apostrophe"],
)
async def test_an_http_answer_past_the_client_limits_is_not_called_not_http(
    make_client, answer: bytes, said: str
) -> None:
    # "GET /v1/customers/1 failed: the answer from URL was not HTTP (Got more than 8190 bytes
    # when reading)": an HTTP answer with a header line over aiohttp's limit was said to be no
    # HTTP at all, which sends a user to check the port, and aiohttp's words were cut short.
    requests: list[bytes] = []
    async with _answering_raw(answer, requests) as base_url:
        dm = make_client(access_token=TOKEN_ECHO, base_url=base_url, max_retries=0)
        with pytest.raises(APIConnectionError) as info:
            await dm.request("GET", "/v1/customers/1")

    message = str(info.value)
    assert message == f"GET /v1/customers/1 failed: the answer from {base_url} {said}", message
    assert TOKEN_ECHO not in message
    assert len(requests) == 1
