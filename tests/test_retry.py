"""Retries: what is retried, how many times, how long each wait is, and what is never repeated.

Every client here runs on the fake clock with jitter stubbed (``jitter=lambda c: c``), so the
waits are exact: 0.5, 1, 2, 4, ... capped at ``max_delay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import socket
import time
from datetime import datetime, timezone
from typing import Any

import aiohttp
import pytest
from _helpers import CUSTOMER, url
from _redis import RedisServer
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import CallbackResult, aioresponses
from multidict import CIMultiDict

from dmhub_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    DMHubClient,
    DMHubError,
    Identity,
    NotFoundError,
    RateLimitError,
    RedisRateLimiter,
    ResponseDecodeError,
    RetryPolicy,
    ServerError,
)
from dmhub_async._session import Session
from dmhub_async.testing import FakeClock


def count(api: aioresponses, path: str, method: str | None = None) -> int:
    return sum(
        len(calls)
        for (m, u), calls in api.requests.items()
        if u.path == path and method in (None, m)
    )


def connect_failure() -> aiohttp.ClientConnectorError:
    """What aiohttp raises when the host cannot be reached: nothing was sent."""
    key = ConnectionKey("api.dmhub.test", 443, True, True, None, None, None)
    return aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))


# Each failure: the mock's answer (kwargs for aioresponses) and the error the caller gets.
RETRYABLE: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    "429": ({"status": 429, "payload": {"error_code": 429}}, RateLimitError),
    "500": ({"status": 500, "payload": {"error_code": 1, "error_description": "x"}}, ServerError),
    "502": ({"status": 502, "body": b""}, ServerError),
    "503": ({"status": 503, "body": b""}, ServerError),
    "504": ({"status": 504, "body": b""}, ServerError),
    "502 html": (
        {"status": 502, "body": b"<html><body>Bad Gateway</body></html>"},
        ServerError,
    ),
    "500 empty": ({"status": 500, "body": b""}, ServerError),
    "connection error": ({"exception": aiohttp.ClientConnectionError("reset")}, APIConnectionError),
    "server disconnected": ({"exception": aiohttp.ServerDisconnectedError()}, APIConnectionError),
    "connect failure": ({"exception": connect_failure()}, APIConnectionError),
    "timeout": ({"exception": asyncio.TimeoutError()}, APITimeoutError),
    "truncated 200": ({"status": 200, "body": b'{"id": 1, "na'}, ResponseDecodeError),
    # Any 5xx but FINAL_5XX, not only the 500/502/503/504 the README listed (a CDN's 520-524
    # are outages too), and a 200 that is no JSON (a gateway's page): the README says so.
    "520": ({"status": 520, "body": b""}, ServerError),
    "html 200": ({"status": 200, "body": b"<html>maintenance</html>"}, ResponseDecodeError),
    # 408: the server (or a proxy) gave up waiting for the request and did not carry it out
    # (RFC 9110, 15.5.9): a keep-alive connection it closed as the request went out.
    "408": ({"status": 408, "body": b""}, APIError),
}


@pytest.mark.parametrize("kind", list(RETRYABLE))
async def test_failure_that_keeps_failing_is_tried_max_retries_plus_one_times(
    api, make_client, clock, kind
):
    answer, error = RETRYABLE[kind]
    api.get(url("/v1/customers/1"), repeat=True, **answer)
    dm = make_client(access_token="tok", max_retries=4)

    with pytest.raises(error):
        await dm.request("GET", "/v1/customers/1")

    assert count(api, "/v1/customers/1") == 5
    assert clock.waits == [0.5, 1, 2, 4]


@pytest.mark.parametrize("kind", list(RETRYABLE))
async def test_failure_then_success_returns_the_answer(api, make_client, clock, kind):
    answer, _ = RETRYABLE[kind]
    api.get(url("/v1/customers/1"), **answer)
    api.get(url("/v1/customers/1"), **answer)
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert count(api, "/v1/customers/1") == 3
    assert clock.waits == [0.5, 1]
    assert dm.stats.retries == 2


async def test_waits_double_up_to_max_delay(api, make_client, clock):
    api.get(url("/v1/customers/1"), status=500, repeat=True)
    dm = make_client(access_token="tok", max_retries=7, max_delay=3.0)

    with pytest.raises(ServerError):
        await dm.request("GET", "/v1/customers/1")

    assert count(api, "/v1/customers/1") == 8
    assert clock.waits == [0.5, 1, 2, 3, 3, 3, 3]


async def test_a_call_retried_past_a_thousand_times_waits_max_delay(api, make_client, clock):
    # "Retry until it works": the 1,025th ceiling, 0.5 * 2**1024, was a raw OverflowError.
    api.get(url("/v1/customers/1"), status=500, repeat=True)
    dm = make_client(access_token="tok", max_retries=1100, budget=None, max_delay=3.0)

    with pytest.raises(ServerError):
        await dm.request("GET", "/v1/customers/1")

    assert count(api, "/v1/customers/1") == 1101
    assert clock.waits[-80:] == [3.0] * 80


async def test_each_call_and_each_derived_client_retries_by_its_own_policy(api, make_client, clock):
    # backoff's loop is built at a client's first retry: the calls after it, and a client
    # derived before or after it, still count, wait and give up by their own policy.
    api.get(url("/v1/customers/1"), status=503, repeat=True)
    dm = make_client(access_token="tok", max_retries=2)
    early = dm.with_options(max_retries=1)

    for _ in range(2):
        with pytest.raises(ServerError):
            await dm.request("GET", "/v1/customers/1")
    late = dm.with_options(max_retries=3)
    for derived in (early, late):
        with pytest.raises(ServerError):
            await derived.request("GET", "/v1/customers/1")

    assert count(api, "/v1/customers/1") == 3 + 3 + 2 + 4
    assert clock.waits == [0.5, 1] * 2 + [0.5] + [0.5, 1, 2]
    assert dm.stats.retries == 2 + 2 + 1 + 3  # one stats for the client and its copies


def test_a_backoff_that_no_longer_sleeps_through_asyncio_is_refused():
    from dmhub_async._retry import _sleeping_with

    async def loop(wait: Any) -> None:  # a retry loop that waits some other way
        await wait(1)

    with pytest.raises(RuntimeError, match=r"no longer sleeps through asyncio\.sleep"):
        _sleeping_with(loop, asyncio.sleep)


async def test_max_retries_zero_tries_once(api, make_client, clock):
    api.get(url("/v1/customers/1"), status=500, repeat=True)
    dm = make_client(access_token="tok", max_retries=0)

    with pytest.raises(ServerError):
        await dm.request("GET", "/v1/customers/1")

    assert count(api, "/v1/customers/1") == 1
    assert clock.waits == []


def test_default_jitter_is_full_jitter_below_the_ceiling():
    policy = RetryPolicy()
    err = ServerError("x", status=500)
    waits = [policy.wait(3, err) for _ in range(200)]
    assert all(0 <= w <= 2.0 for w in waits)
    assert len(set(waits)) > 1


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_is_honoured(api, make_client, clock, status):
    api.get(url("/v1/customers/1"), status=status, headers={"Retry-After": "7"})
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    # The service's 7 s, plus a jitter of up to 10% (at most 1 s) so clients don't stampede.
    assert clock.waits == [pytest.approx(7.7)]


async def test_retry_after_http_date_is_honoured_relative_to_the_clock(api, make_client, clock):
    when = datetime.fromtimestamp(clock.now + 20, tz=timezone.utc)
    api.get(
        url("/v1/customers/1"),
        status=429,
        headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)},
    )
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert clock.waits == [pytest.approx(21.0)]  # 20 s, plus the 1 s jitter ceiling


@pytest.mark.parametrize(
    "form",
    [
        "%a, %d %b %Y %H:%M:%S GMT",  # IMF-fixdate
        "%A, %d-%b-%y %H:%M:%S GMT",  # RFC 850
        "%a %b %d %H:%M:%S %Y",  # asctime: GMT with no zone written (RFC 9110, 5.6.7)
        "%a, %d %b %Y %H:%M:%S -0000",  # RFC 5322's UTC with no local zone said
    ],
)
async def test_retry_after_in_every_http_date_form_is_honoured(api, make_client, clock, form):
    # RFC 9110: a recipient MUST accept all three HTTP-date forms, each in GMT. One with no
    # zone (asctime) or "-0000" was read as a naive datetime and dropped: the throttled call
    # retried on backoff's 0.5 s, not the 20 s asked.
    when = time.strftime(form, time.gmtime(clock.now + 20))
    api.get(url("/v1/customers/1"), status=429, headers={"Retry-After": when})
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert clock.waits == [pytest.approx(21.0)]  # 20 s, plus the 1 s jitter ceiling


@pytest.mark.parametrize("skew", [-3600, -600, 600, 3600])
async def test_a_retry_after_date_is_read_by_the_services_clock_not_ours(
    api, make_client, clock, skew
):
    # The service's clock is `skew` seconds off this machine's; it asks for 20 s as a date of
    # its clock, and says its time in Date. Measured from this machine's clock, a machine
    # 10 minutes behind read 620 s (over the cap: RateLimitError at once, retry_after 620; an
    # hour for an hour's skew) and one ahead retried at once, every retry.
    served = clock.now + skew

    def date(at: float) -> str:
        return email.utils.formatdate(at, usegmt=True)

    headers = {"Retry-After": date(served + 20), "Date": date(served)}
    api.get(url("/v1/customers/1"), status=429, headers=headers)
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert clock.waits == [pytest.approx(21.0)]  # 20 s, plus the 1 s jitter ceiling


@pytest.mark.parametrize("date", ["", "yesterday", "Wed, 21 Oct 2015 07:28:00 +0200, x"])
async def test_a_retry_after_date_with_no_readable_date_header_is_read_by_our_clock(
    api, make_client, clock, date
):
    when = email.utils.formatdate(clock.now + 20, usegmt=True)
    headers = {"Retry-After": when, "Date": date}
    api.get(url("/v1/customers/1"), status=429, headers=headers)
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert clock.waits == [pytest.approx(21.0)]


#: An HTTP date whose hour is a number no datetime holds: email.utils raised OverflowError.
_DATE_OF_HUGE_NUMBERS = "Mon, 01 Jan 2026 99999999999999999999:00:00 GMT"


@pytest.mark.parametrize(
    ("retry_after", "date", "waits"),
    [
        ("7", _DATE_OF_HUGE_NUMBERS, [pytest.approx(7.7)]),  # the Date is no date: unread
        (_DATE_OF_HUGE_NUMBERS, None, [0.5]),  # no date: no answer, backoff applies
    ],
)
async def test_an_http_date_of_numbers_no_datetime_holds_is_no_date(
    api, make_client, clock, retry_after, date, waits
):
    # Before: email.utils' OverflowError came out of the call, raw, from a 429 whose Date
    # (read for its Retry-After since it is measured from it) or Retry-After held one.
    headers = {"Retry-After": retry_after}
    if date is not None:
        headers["Date"] = date
    api.get(url("/v1/customers/1"), status=429, headers=headers)
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert clock.waits == waits


async def test_retry_after_in_the_past_retries_at_once(api, make_client, clock):
    when = datetime.fromtimestamp(clock.now - 60, tz=timezone.utc)
    api.get(
        url("/v1/customers/1"),
        status=429,
        headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)},
    )
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert clock.waits == [0.0]


@pytest.mark.parametrize("value", ["-5", "-1e9", "-inf", "inf", "Infinity", "1e400"])
async def test_a_negative_or_endless_retry_after_is_no_answer_and_backoff_applies(
    api, make_client, clock, value
):
    api.get(url("/v1/customers/1"), status=429, headers={"Retry-After": value}, repeat=True)
    dm = make_client(access_token="tok")

    with pytest.raises(RateLimitError) as info:
        await dm.request("GET", "/v1/customers/1")

    # Not delay-seconds (RFC 9110: digits), as garbage is not. Before: a negative one was read
    # as "retry now", the throttling server sent all 5 attempts at once; an endless one as
    # infinite, the call gave up at once with retry_after=inf, "(Retry-After infs)", and with
    # retry_after_cap=inf and budget=None slept for ever.
    assert clock.waits == [0.5, 1, 2, 4]
    assert info.value.retry_after is None
    assert "Retry-After" not in str(info.value)


async def test_an_endless_retry_after_never_waits_for_ever(api, make_client, clock):
    api.get(url("/v1/customers/1"), status=429, headers={"Retry-After": "inf"}, repeat=True)
    dm = make_client(access_token="tok", retry_after_cap=math.inf, budget=None)

    with pytest.raises(RateLimitError):
        await dm.request("GET", "/v1/customers/1")

    assert clock.waits == [0.5, 1, 2, 4]


async def test_retry_after_above_the_cap_is_raised_at_once(api, make_client, clock):
    api.get(url("/v1/customers/1"), status=429, headers={"Retry-After": "120"}, repeat=True)
    dm = make_client(access_token="tok", retry_after_cap=60.0)

    with pytest.raises(RateLimitError) as info:
        await dm.request("GET", "/v1/customers/1")

    assert count(api, "/v1/customers/1") == 1
    assert info.value.retry_after == 120.0
    assert info.value.status == 429
    assert clock.waits == []


async def test_budget_stops_retrying_before_a_wait_would_overrun_it(api, make_client, clock):
    api.get(url("/v1/customers/1"), status=500, repeat=True)
    dm = make_client(access_token="tok", max_retries=10, budget=2.0)

    with pytest.raises(ServerError):
        await dm.request("GET", "/v1/customers/1")

    # 0.5 then 1 s fit in 2 s; waiting 2 s more would not, so it gives up after 3 attempts.
    assert clock.waits == [0.5, 1]
    assert count(api, "/v1/customers/1") == 3


async def test_budget_counts_time_spent_in_attempts(api, make_client, clock):
    def slow(u: Any, **kwargs: Any) -> None:
        clock.advance(10)  # each attempt takes 10 s of the budget

    api.get(url("/v1/customers/1"), status=500, callback=slow, repeat=True)
    dm = make_client(access_token="tok", max_retries=10, budget=25.0)

    with pytest.raises(ServerError):
        await dm.request("GET", "/v1/customers/1")

    assert clock.waits == [0.5, 1]  # 10 + 0.5 + 10 + 1 + 10 = 31.5: no third wait of 2 s
    assert count(api, "/v1/customers/1") == 3


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_non_retryable_status_is_sent_once(api, make_client, clock, status):
    api.get(url("/v1/customers/1"), status=status, payload={"error_code": status}, repeat=True)
    dm = make_client(access_token="tok")

    with pytest.raises(APIError) as info:
        await dm.request("GET", "/v1/customers/1")

    assert info.value.status == status
    assert not isinstance(info.value, (ServerError, RateLimitError))
    assert count(api, "/v1/customers/1") == 1
    assert clock.waits == []


@pytest.mark.parametrize("status", [501, 505, 511])
async def test_a_5xx_that_says_it_never_will_is_sent_once_and_says_nothing_was_written(
    api, make_client, clock, status
):
    # 501 (method not implemented), 505 (HTTP version) and 511 (a captive portal's proxy
    # wants a login) answer the same every time, and carry nothing out: they were retried
    # max_retries times, and a create answered so said its outcome was unknown.
    api.get(url("/v1/customers/1"), status=status, repeat=True)
    api.post(url("/v1/customers"), status=status, repeat=True)
    dm = make_client(access_token="tok")

    with pytest.raises(ServerError) as read:
        await dm.request("GET", "/v1/customers/1")
    with pytest.raises(ServerError) as write:
        await dm.customers.create(name="x")

    assert (read.value.status, write.value.status) == (status, status)
    assert count(api, "/v1/customers/1") == 1
    assert count(api, "/v1/customers", "POST") == 1
    assert write.value.outcome_unknown is False
    assert clock.waits == []


async def test_missing_customer_500_40201_is_not_found_and_not_retried(api, make_client, clock):
    api.get(
        url("/v1/customers/77"),
        status=500,
        payload={"error_code": 40201, "error_description": "permission is not enough"},
        repeat=True,
    )
    dm = make_client(access_token="tok")

    with pytest.raises(NotFoundError):
        await dm.customers.get(77)

    assert count(api, "/v1/customers/77") == 1
    assert clock.waits == []


# --- writes that must not be repeated -------------------------------------------------------

UNKNOWN_OUTCOME: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    "read timeout": ({"exception": asyncio.TimeoutError()}, APITimeoutError),
    "server timeout": ({"exception": aiohttp.ServerTimeoutError("read")}, APITimeoutError),
    "server disconnected": ({"exception": aiohttp.ServerDisconnectedError()}, APIConnectionError),
    "connection reset": (
        {"exception": aiohttp.ClientOSError(104, "Connection reset by peer")},
        APIConnectionError,
    ),
}


@pytest.mark.parametrize("kind", list(UNKNOWN_OUTCOME))
async def test_create_is_not_repeated_when_the_answer_was_lost(api, make_client, clock, kind):
    answer, error = UNKNOWN_OUTCOME[kind]
    api.post(url("/v1/customers"), repeat=True, **answer)
    dm = make_client(access_token="tok")

    with pytest.raises(error) as info:
        await dm.customers.create(name="x")

    assert count(api, "/v1/customers", "POST") == 1
    assert info.value.outcome_unknown is True
    assert "outcome is unknown" in str(info.value)
    assert clock.waits == []


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 500, "payload": {"error_code": 1}},
        {"status": 502, "body": b"<html>Bad Gateway</html>"},
        {"status": 200, "body": b'{"id": 1, "na'},
    ],
    ids=["500", "502 html", "truncated 200"],
)
async def test_create_is_not_repeated_after_an_answer_that_may_hide_a_write(
    api, make_client, clock, answer
):
    api.post(url("/v1/customers"), repeat=True, **answer)
    dm = make_client(access_token="tok")

    with pytest.raises(APIError) as info:
        await dm.request("POST", "/v1/customers", json={"name": "x"}, idempotent=False)

    assert count(api, "/v1/customers", "POST") == 1
    assert info.value.outcome_unknown is True


@pytest.mark.parametrize(
    "answer",
    [
        {"exception": connect_failure()},
        # connect_timeout= ran out before a connection was open: nothing was sent. It was taken
        # as a lost answer: the create not repeated, and said to have an unknown outcome.
        {"exception": aiohttp.ConnectionTimeoutError("Connection timeout to host")},
        {"status": 429, "payload": {"error_code": 429}},
        {"status": 503, "body": b""},
        # The server timed the connection out before the request came (RFC 9110, 15.5.9:
        # not carried out): the create failed as a final 4xx.
        {"status": 408, "body": b""},
    ],
    ids=["connect failure", "connect timeout", "429", "503", "408"],
)
async def test_create_is_retried_where_it_surely_was_not_applied(api, make_client, clock, answer):
    api.post(url("/v1/customers"), **answer)
    api.post(url("/v1/customers"), status=201, payload=CUSTOMER)
    dm = make_client(access_token="tok")

    created = await dm.customers.create(name="x")

    assert created.id == 1
    assert count(api, "/v1/customers", "POST") == 2
    assert clock.waits == [0.5]


async def test_create_with_mobile_is_an_upsert_and_is_retried_after_a_timeout(
    api, make_client, clock
):
    api.post(url("/v1/customers"), exception=asyncio.TimeoutError())
    api.post(url("/v1/customers"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    await dm.customers.create(name="x", mobile="18612341234")

    assert count(api, "/v1/customers", "POST") == 2


async def test_connect_failure_on_a_create_after_retries_says_nothing_was_sent(
    api, make_client, clock
):
    api.post(url("/v1/customers"), exception=connect_failure(), repeat=True)
    dm = make_client(access_token="tok", max_retries=2)

    with pytest.raises(APIConnectionError) as info:
        await dm.customers.create(name="x")

    assert count(api, "/v1/customers", "POST") == 3
    assert info.value.outcome_unknown is False


# --- the token endpoint ---------------------------------------------------------------------


async def test_token_endpoint_failure_is_retried_within_one_budget_of_attempts(
    api, make_client, clock
):
    api.get(url("/security/accesstoken"), status=500, repeat=True)
    dm = make_client(max_retries=4)

    with pytest.raises(ServerError):
        await dm.request("GET", "/v1/customers/1")

    # max_retries + 1 token requests, not (max_retries + 1) squared from nested loops.
    assert count(api, "/security/accesstoken") == 5
    assert count(api, "/v1/customers/1") == 0
    assert clock.waits == [0.5, 1, 2, 4]


@pytest.mark.parametrize("status", [503, 408])
async def test_token_endpoint_recovers(api, make_client, clock, status):
    # 408: every 4xx of the token endpoint was read as bad credentials (AuthenticationError,
    # not retried): a 408, the server timing out the connection, failed every waiting call so.
    api.get(url("/security/accesstoken"), status=status, body=b"")
    api.get(url("/security/accesstoken"), payload={"error_code": 0, "access_token": "tok-1"})
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client()

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert count(api, "/security/accesstoken") == 2
    assert clock.waits == [0.5]


async def test_a_derived_clients_token_fetch_keeps_its_own_retries_and_timeout(
    api, make_client, clock
):
    timeouts: list[float | None] = []

    def failing(u: Any, **kwargs: Any) -> CallbackResult:
        timeouts.append(kwargs["timeout"].total)
        return CallbackResult(status=503)

    api.get(url("/security/accesstoken"), callback=failing, repeat=True)
    dm = make_client(max_retries=4)
    impatient = dm.with_options(timeout=5, max_retries=0)  # the README's example

    with pytest.raises(ServerError):
        await impatient.customers.count()

    # Before: the token was fetched by dm's policy and timeout, 5 requests of up to 30 s each
    # and 7.5 s of waits, for a client told to try once within 5 s.
    assert timeouts == [5]
    assert clock.waits == []


async def test_an_update_answered_408_after_a_lost_attempt_is_retried(api, make_client, clock):
    # The first attempt may have been applied; the second was refused unread (408). An update
    # is safe to repeat: the third goes out, rather than the 408 ending the call.
    path = url("/v1/customers/1")
    api.put(path, exception=aiohttp.ServerDisconnectedError())
    api.put(path, status=408, body=b"")
    api.put(path, payload=CUSTOMER)
    dm = make_client(access_token="tok")

    updated = await dm.customers.update(1, remark="vip")

    assert updated.id == 1
    assert count(api, "/v1/customers/1", "PUT") == 3
    assert clock.waits == [0.5, 1]


async def test_a_call_that_joined_another_clients_failed_token_fetch_makes_its_own(
    api, make_client, clock
):
    api.get(url("/security/accesstoken"), status=503, repeat=False)
    api.get(url("/security/accesstoken"), status=503, repeat=False)
    api.get(url("/security/accesstoken"), payload={"error_code": 0, "access_token": "tok-1"})
    api.get(url("/v1/customers/1"), payload=CUSTOMER, repeat=True)
    dm = make_client(max_retries=4)
    impatient = dm.with_options(max_retries=0)

    hasty, patient = await asyncio.gather(
        impatient.request("GET", "/v1/customers/1"),
        dm.request("GET", "/v1/customers/1"),
        return_exceptions=True,
    )

    # The impatient call tried once and failed; the patient one, which waited on that fetch,
    # then fetched by its own policy (one retry) instead of failing with it.
    assert isinstance(hasty, ServerError)
    assert patient == CUSTOMER
    assert count(api, "/security/accesstoken") == 3
    assert clock.waits == [0.5]


async def test_closing_a_derived_client_mid_fetch_fails_none_of_the_parents_calls(
    api, make_client, clock
):
    api.get(url("/security/accesstoken"), status=503)
    api.get(url("/security/accesstoken"), payload={"error_code": 0, "access_token": "tok-1"})
    api.get(url("/v1/customers/1"), payload=CUSTOMER, repeat=True)
    dm = make_client(max_retries=4)
    derived = dm.with_options(max_retries=3)

    async def close_soon() -> None:
        await clock.sleep(0.1)  # while the derived client's fetch waits out its backoff
        await derived.aclose()

    from_derived, from_dm, _ = await asyncio.gather(
        derived.request("GET", "/v1/customers/1"),
        dm.request("GET", "/v1/customers/1"),
        close_soon(),
        return_exceptions=True,
    )

    assert isinstance(from_derived, DMHubError)
    assert "closed" in str(from_derived)
    assert from_dm == CUSTOMER  # dm is open: its call fetched a token its own way


@pytest.mark.parametrize(
    "options", [{}, {"max_retries": 4}, {"extra_headers": {"X-Trace": "t-1"}}], ids=str
)
async def test_closing_a_derived_client_of_the_same_settings_mid_fetch_fails_no_other_call(
    api, make_client, clock, options
):
    # A client derived with the parent's retries and timeout (extra headers, or nothing else)
    # shares the parent's fetch, and derived twins each other's: the fetch one of them started
    # was cut by its own close, and the parent's (or the twin's) call waiting on it failed with
    # "this DMHubClient is closed", its own client open. Before with_options fetched by its
    # own policy, only the root's close ended a fetch: every client's single flight.
    api.get(url("/security/accesstoken"), status=503)
    api.get(url("/security/accesstoken"), payload={"error_code": 0, "access_token": "tok-1"})
    api.get(url("/v1/customers/1"), payload=CUSTOMER, repeat=True)
    dm = make_client(max_retries=4)
    derived, twin = dm.with_options(**options), dm.with_options(**options)

    async def close_soon() -> None:
        await clock.sleep(0.1)  # while the derived client's fetch waits out its backoff
        await derived.aclose()

    from_derived, from_dm, from_twin, _ = await asyncio.gather(
        derived.request("GET", "/v1/customers/1"),
        dm.request("GET", "/v1/customers/1"),
        twin.request("GET", "/v1/customers/1"),
        close_soon(),
        return_exceptions=True,
    )

    assert isinstance(from_derived, DMHubError)
    assert "closed" in str(from_derived)
    assert (from_dm, from_twin) == (CUSTOMER, CUSTOMER)
    assert count(api, "/security/accesstoken") == 2  # one fetch for all, retried once


async def test_calls_through_clients_made_per_call_share_one_token_fetch(api, make_client, clock):
    api.get(url("/security/accesstoken"), status=503, repeat=True)
    dm = make_client(max_retries=4)

    results = await asyncio.gather(
        *(dm.with_options(max_retries=i % 3).request("GET", "/v1/customers/1") for i in range(50)),
        return_exceptions=True,
    )

    # 50 clients of 3 settings, the token endpoint down: the first fetch (1 try) fails, and
    # one fetch more by another policy (2 tries) is made for all the others, not one each.
    assert all(isinstance(r, ServerError) for r in results)
    assert count(api, "/security/accesstoken") == 1 + 2
    assert clock.waits == [0.5]


async def test_backoff_waits_with_the_clients_sleep_and_nothing_global_changes(
    api, make_client, clock
):
    import backoff._async

    api.get(url("/v1/customers/1"), status=503)
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER

    assert clock.waits == [0.5]  # backoff's wait, through the injected sleep: no real waiting
    assert backoff._async.asyncio is asyncio  # other users of backoff keep asyncio.sleep


@pytest.mark.parametrize(
    ("first", "unknown"),
    [
        ({"exception": aiohttp.ServerDisconnectedError()}, True),
        ({"status": 502, "body": b""}, True),
        ({"status": 200, "body": b'{"id": 1, "na'}, True),  # an answer we could not read
        ({"status": 503, "body": b""}, False),  # a refusal: nothing was done
        ({"exception": connect_failure()}, False),  # never sent
        (None, False),  # no earlier attempt at all
    ],
    ids=["lost answer", "502", "unreadable 2xx", "503", "not sent", "first attempt"],
)
async def test_a_not_found_after_a_delete_that_may_have_been_applied_is_an_unknown_outcome(
    api: aioresponses, make_client: Any, clock: Any, first: dict[str, Any] | None, unknown: bool
) -> None:
    # A DELETE whose 204 was lost is repeated, and the repeat's 40201 said "not found": the
    # caller was told the customer did not exist, when the first attempt had deleted it.
    path = "/v1/customers/7"
    if first is not None:
        api.delete(url(path), **first)
    api.delete(url(path), status=500, payload={"error_code": 40201, "error_description": "x"})
    dm = make_client(access_token="tok")

    with pytest.raises(NotFoundError) as info:
        await dm.customers.delete(7)

    assert count(api, path, "DELETE") == (1 if first is None else 2)
    assert info.value.outcome_unknown is unknown
    assert ("may have been applied" in str(info.value)) is unknown


@pytest.mark.parametrize(
    "later",
    [
        {"status": 503, "body": b""},
        {"status": 429, "body": b""},
        {"exception": aiohttp.ServerDisconnectedError()},
    ],
    ids=["503", "429", "reset"],
)
async def test_a_write_given_up_after_an_attempt_that_may_have_been_applied_says_so(
    api: aioresponses, make_client: Any, clock: Any, later: dict[str, Any]
) -> None:
    # The first DELETE's answer is lost (it may have deleted); every retry is refused or lost
    # too until max_retries. The error raised was a plain 503, 429 or reset: the caller was
    # not told the customer may be gone.
    path = "/v1/customers/7"
    api.delete(url(path), exception=aiohttp.ServerDisconnectedError())
    api.delete(url(path), repeat=True, **later)
    dm = make_client(access_token="tok", max_retries=2)

    with pytest.raises((APIError, APIConnectionError)) as info:
        await dm.customers.delete(7)

    assert count(api, path, "DELETE") == 3
    assert info.value.outcome_unknown is True
    assert "may have been applied" in str(info.value)


@pytest.mark.parametrize(
    ("answer", "retries"),
    [
        ({"status": 500, "payload": {"error_code": 500}}, 0),
        ({"exception": aiohttp.ServerDisconnectedError()}, 0),
        ({"status": 502, "body": b""}, 2),
    ],
    ids=["500, one attempt", "reset, one attempt", "502 every time"],
)
async def test_a_write_that_may_have_been_applied_by_its_last_attempt_does_not_blame_an_earlier(
    api: aioresponses, make_client: Any, clock: Any, answer: dict[str, Any], retries: int
) -> None:
    # Before: "PUT /v1/customers/7 -> HTTP 500 ...; an earlier attempt got no answer and may
    # have been applied", of an update sent once (max_retries=0), whose one attempt got an
    # answer: the operator looked for a retry that never happened.
    path = "/v1/customers/7"
    api.put(url(path), repeat=True, **answer)
    dm = make_client(access_token="tok", max_retries=retries)

    with pytest.raises((APIError, APIConnectionError)) as info:
        await dm.customers.update(7, name="x")

    assert count(api, path, "PUT") == retries + 1
    assert info.value.outcome_unknown is True
    said = str(info.value)
    assert "; the write may have been applied, so the outcome is unknown" in said, said
    assert "earlier attempt" not in said, said


async def test_a_write_whose_retry_cannot_get_a_token_says_its_outcome_is_unknown(
    api: aioresponses, make_client: Any, clock: Any
) -> None:
    answers = iter([CallbackResult(payload={"error_code": 0, "access_token": "tok-1"})])

    def token(u: Any, **kwargs: Any) -> CallbackResult:
        return next(answers, CallbackResult(status=503))

    path = "/v1/customers/7"
    api.get(url("/security/accesstoken"), callback=token, repeat=True)
    api.delete(url(path), exception=aiohttp.ServerDisconnectedError())  # may have deleted
    api.delete(url(path), payload={"error_code": 42001})  # the token expired meanwhile
    api.get(url("/v1/customers/1"), payload={"error_code": 42001})
    dm = make_client(max_retries=2)

    deleted, read = await asyncio.gather(
        dm.customers.delete(7), dm.customers.get(1), return_exceptions=True
    )

    # The refresh failed (the token endpoint down): before, a plain "GET /security/accesstoken
    # -> HTTP 503", as if the delete had never gone out.
    assert count(api, path, "DELETE") == 2
    assert isinstance(deleted, ServerError)
    assert deleted.outcome_unknown is True
    assert "may have been applied" in str(deleted)
    # The read that shared the failed token fetch is told nothing of the delete.
    assert count(api, "/security/accesstoken") == 1 + 3
    assert isinstance(read, ServerError)
    assert read.outcome_unknown is False
    assert "may have been applied" not in str(read)


async def test_a_delete_whose_answer_the_simulator_lost_says_its_outcome_is_unknown(
    dmhub_simulator: Any, dmhub_client: Any
) -> None:
    cid = dmhub_simulator.customer_ids()[0]
    dmhub_simulator.faults.script(["reset-after-write"])  # deleted, then the connection drops
    with pytest.raises(NotFoundError) as info:
        await dmhub_client.customers.delete(cid)
    assert info.value.outcome_unknown
    assert cid not in dmhub_simulator.customer_ids()


async def test_a_delete_lost_after_a_token_refresh_says_its_outcome_is_unknown(
    dmhub_simulator: Any, dmhub_client: Any
) -> None:
    # The send after a refused token's refresh was not noted: its lost answer, then the
    # repeat's 40201, said the customer had never been there.
    sim = dmhub_simulator
    await dmhub_client.customers.count()  # a token in hand
    cid = sim.customer_ids()[0]
    sim.revoke_tokens()
    sim.faults.paths = ("DELETE /v1/customers/{id}",)
    sim.faults.script(["ok", "reset-after-write"])  # refused token; then deleted, answer lost
    with pytest.raises(NotFoundError) as info:
        await dmhub_client.customers.delete(cid)
    assert info.value.outcome_unknown
    assert cid not in sim.customer_ids()
    assert dmhub_client.stats.token_fetches == 2


async def test_repeated_retry_after_headers_wait_the_longest(api, make_client, clock):
    # A proxy or gateway that throttles too may add its own Retry-After to the service's. The
    # field is no list (RFC 9110: sent twice, the message is invalid), so which one counts is
    # ours to choose: only the first was read, and the call went back after 2 s to a gateway
    # that had asked for 30. Each asks not to be called before its time: the longest is kept.
    headers = CIMultiDict([("Retry-After", "2"), ("Retry-After", "30"), ("Retry-After", "x")])
    api.get(url("/v1/customers/1"), status=429, headers=headers)
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert clock.waits == [pytest.approx(31.0)]  # 30 s, plus the 1 s jitter ceiling


@pytest.mark.parametrize(
    "value",
    ["2, 30", "30,2", "2 , x, 30", "Wed, 21 Oct 2015 07:28:00 GMT, 30"],
    ids=["two", "no space", "one unreadable", "a date and seconds"],
)
async def test_retry_after_values_joined_by_commas_wait_the_longest(api, make_client, clock, value):
    # A proxy that folds repeated headers into one line (as HTTP lets it do for a list field)
    # sent `Retry-After: 2, 30`: unreadable, it was ignored, and the retry went out after the
    # backoff's fraction of a second to a gateway that had asked for 30 s.
    api.get(url("/v1/customers/1"), status=429, headers={"Retry-After": value})
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert clock.waits == [pytest.approx(31.0)]  # 30 s (the date is gone by), plus 1 s jitter


async def test_a_repeated_retry_after_above_the_cap_is_raised_at_once(api, make_client, clock):
    headers = CIMultiDict([("Retry-After", "5"), ("Retry-After", "120")])
    api.get(url("/v1/customers/1"), status=503, headers=headers, repeat=True)
    dm = make_client(access_token="tok", retry_after_cap=60.0)

    with pytest.raises(ServerError) as info:
        await dm.request("GET", "/v1/customers/1")

    assert count(api, "/v1/customers/1") == 1
    assert info.value.retry_after == 120.0
    assert clock.waits == []


async def test_a_write_whose_retry_cannot_take_its_rate_turn_says_its_outcome_is_unknown(
    api: aioresponses, make_client: Any, redis: RedisServer
) -> None:
    # The first PUT got a 500 (it may have been applied); the shared rate limit's Redis went
    # away before the retry could take its turn. The error was the limit's plain DMHubError
    # ("no request was sent"), with no outcome_unknown at all: the caller was told nothing of
    # the update that may have gone in.
    path = "/v1/customers/7"

    def failed(u: Any, **kwargs: Any) -> CallbackResult:
        redis.kill()
        return CallbackResult(status=500, payload={"error_code": 500})

    api.put(url(path), callback=failed)
    api.put(url(path), payload=CUSTOMER)
    limiter = RedisRateLimiter(redis.url, 1000, key="retry-gone")
    dm = make_client(access_token="tok", rate_limit=limiter)
    try:
        with pytest.raises(APIConnectionError) as info:
            await dm.customers.update(7, name="x")
    finally:
        await limiter.aclose()

    assert count(api, path, "PUT") == 1
    assert info.value.outcome_unknown is True
    assert str(info.value).startswith("PUT /v1/customers/7: the shared rate limit at ")
    assert "may have been applied" in str(info.value)
    assert isinstance(info.value.__cause__, DMHubError)  # the limit's own error


# --- the first attempt of a call whose token is held (issue 15) ------------------------------
# The session sends it itself, outside the retry loop and _attempt; a failure goes on through
# them as if they had made it. Each test runs with the token given (access_token=) and with one
# fetched by an earlier call, both held when the call is made.

HELD = ["access_token", "fetched"]


async def holding_a_token(api: aioresponses, make_client: Any, held: str, **settings: Any) -> Any:
    """A client that holds its token (given, or fetched by a call made first from the ``tokens``
    endpoint) before the call a test makes."""
    if held == "access_token":
        return make_client(access_token="tok", **settings)
    api.get(url("/v1/customers/99"), payload=CUSTOMER)
    dm = make_client(**settings)
    await dm.request("GET", "/v1/customers/99")
    assert dm._session._tokens.held() == "tok-1"
    return dm


BINDING = [{"customerId": "7", "identityType": "wechat", "identityValue": "o1"}]
LOOKUPS = "/v1/customeridentities"


@pytest.mark.parametrize("held", HELD)
async def test_a_lookup_whose_token_is_held_is_retried_after_a_503(
    api, tokens, make_client, clock, caplog, held
):
    caplog.set_level(logging.INFO, logger="dmhub_async")
    dm = await holding_a_token(api, make_client, held)
    api.get(url(LOOKUPS), status=503, body=b"")
    api.get(url(LOOKUPS), payload=BINDING)

    assert await dm.identities.lookup(Identity("wechat", "o1")) == 7

    assert count(api, LOOKUPS) == 2
    assert clock.waits == [0.5]
    assert dm.stats.retries == 1
    assert dm.last_response.retries == 1
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "retrying GET /v1/customeridentities?identityType=wechat&identityValue=*** after "
        "HTTP 503 ServerError (retry 1 of 4) in 0.50s"
    ]


@pytest.mark.parametrize("held", HELD)
async def test_a_call_whose_token_is_held_with_max_retries_0_raises_at_once(
    api, tokens, make_client, clock, held
):
    dm = await holding_a_token(api, make_client, held, max_retries=0)
    api.get(url(LOOKUPS), status=503, body=b"", repeat=True)

    with pytest.raises(ServerError):
        await dm.identities.lookup(Identity("wechat", "o1"))

    assert count(api, LOOKUPS) == 1
    assert clock.waits == []
    assert dm.stats.retries == 0


@pytest.mark.parametrize("held", HELD)
async def test_a_create_whose_token_is_held_and_whose_answer_is_lost_is_not_sent_again(
    api, tokens, make_client, clock, held
):
    dm = await holding_a_token(api, make_client, held)
    api.post(url("/v1/customers"), exception=aiohttp.ServerDisconnectedError(), repeat=True)

    with pytest.raises(APIConnectionError) as info:
        await dm.customers.create(name="x")

    assert count(api, "/v1/customers", "POST") == 1
    assert info.value.outcome_unknown is True
    assert clock.waits == []
    assert dm.stats.retries == 0


@pytest.mark.parametrize("held", HELD)
async def test_an_update_whose_token_is_held_refused_after_a_500_says_its_outcome_is_unknown(
    api, tokens, make_client, clock, held
):
    # The first attempt's 500 may follow the write: the retry's "no such customer" is marked.
    dm = await holding_a_token(api, make_client, held)
    api.put(url("/v1/customers/7"), status=500, payload={"error_code": 1})
    api.put(url("/v1/customers/7"), status=500, payload={"error_code": 40201})

    with pytest.raises(NotFoundError) as info:
        await dm.customers.update(7, name="x")

    assert count(api, "/v1/customers/7", "PUT") == 2
    assert info.value.outcome_unknown is True
    assert "outcome is unknown" in str(info.value)


@pytest.mark.parametrize("held", HELD)
async def test_the_budget_of_a_call_whose_token_is_held_counts_its_first_attempt(
    api, tokens, make_client, clock, held
):
    def slow(u: Any, **kwargs: Any) -> None:
        clock.advance(10)  # each attempt takes 10 s of the budget

    dm = await holding_a_token(api, make_client, held, max_retries=10, budget=25.0)
    api.get(url("/v1/customers/1"), status=500, callback=slow, repeat=True)

    with pytest.raises(ServerError):
        await dm.request("GET", "/v1/customers/1")

    assert clock.waits == [0.5, 1]  # 10 + 0.5 + 10 + 1 + 10 = 31.5: no third wait of 2 s
    assert count(api, "/v1/customers/1") == 3


async def test_the_first_attempt_of_a_call_whose_token_is_held_is_sent_straight(
    api, make_client, monkeypatch
):
    """What a lookup costs: with the token held, its first attempt is sent from
    Session.request, without the retry loop's attempt (about 7k instructions a lookup, 1.7%);
    only a retry runs it."""
    attempts: list[str] = []
    attempt = Session._attempt

    async def counted(self: Session, call: Any) -> Any:
        attempts.append(call.request.path)
        return await attempt(self, call)

    monkeypatch.setattr(Session, "_attempt", counted)
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    api.get(url("/v1/customers/1"), status=503, body=b"")
    api.get(url("/v1/customers/1"), payload=CUSTOMER)
    dm = make_client(access_token="tok")

    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert attempts == []
    assert await dm.request("GET", "/v1/customers/1") == CUSTOMER
    assert attempts == ["/v1/customers/1"]  # the retry's


async def test_a_create_whose_connection_never_opened_within_timeout_is_retried() -> None:
    # A host that takes no connection (its accept queue full, a firewall dropping the SYN):
    # the attempt's `timeout` ran out while the connection was still being opened, no
    # connect_timeout set (the default). Nothing was sent, yet the create said "the request
    # may have reached the service, so its outcome is unknown" and was not retried.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    queued = []  # fill its queue: the next connection's SYN goes unanswered
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(listener.getsockname())
        queued.append(filler)
    clock = FakeClock()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        async with DMHubClient(
            access_token="tok",
            base_url=base,
            timeout=0.2,
            max_retries=1,
            clock=clock,
            sleep=clock.sleep,
        ) as dm:
            with pytest.raises(APITimeoutError) as info:
                await dm.customers.create(name="x")
    finally:
        for sock in (*queued, listener):
            sock.close()

    assert info.value.outcome_unknown is False
    assert f"POST /v1/customers timed out: no connection to {base}" in str(info.value)
    assert (dm.stats.requests, dm.stats.retries) == (2, 1)  # retried: nothing was sent
