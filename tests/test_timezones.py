"""Time filters in the client's ``timezone``; dates as whole days; a warning for naive values.

The list API takes UTC ``2016-11-11T11:11:11``, both ends inclusive (``docs/contract.md``).
Each test reads the query the client sent to the aioresponses mock.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import warnings
import zoneinfo
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from _helpers import url
from aioresponses import aioresponses
from hypothesis import example, given
from hypothesis import strategies as st

from dmhub_async import (
    DMHubClient,
    Identity,
    InvalidRequestError,
    MemoryTokenStore,
    NaiveDatetimeWarning,
    ResponseDecodeError,
)
from dmhub_async._converter import (
    customer_fields_to_wire,
    lenient_page_reader,
    parse_timestamp,
    read_customer_page,
    structure_customer,
    structure_customers,
)
from dmhub_async._query_time import iso_day
from dmhub_async._validate import check_customer_fields, short
from dmhub_async.export import export_customers
from dmhub_async.resources._filters import customer_filter_params
from dmhub_async.testing import DMHubSimulator

SHANGHAI = ZoneInfo("Asia/Shanghai")


def sent_query(api: aioresponses, path: str = "/v1/customers/count") -> dict[str, str]:
    """The query string of the one request sent to ``path``."""
    calls = [(key, c) for key, c in api.requests.items() if key[1].path == path]
    assert len(calls) == 1
    assert len(calls[0][1]) == 1
    return dict(calls[0][0][1].query)


@pytest.fixture
def count_answers(api: aioresponses, tokens: Any) -> aioresponses:
    api.get(url("/v1/customers/count"), payload=7, repeat=True)
    return api


@pytest.mark.parametrize(
    ("zone", "value", "sent"),
    [
        # DM Hub's users are mostly in UTC+8: 09:00 there is 01:00 UTC.
        ("Asia/Shanghai", datetime(2024, 1, 1, 9, 0), "2024-01-01T01:00:00"),
        (SHANGHAI, "2024-01-01T09:00:00", "2024-01-01T01:00:00"),
        ("UTC", datetime(2024, 1, 1, 9, 0), "2024-01-01T09:00:00"),
        # An offset says which zone: the setting does not apply.
        ("Asia/Shanghai", "2024-01-01T09:00:00Z", "2024-01-01T09:00:00"),
        ("Asia/Shanghai", datetime(2024, 1, 1, 9, tzinfo=timezone.utc), "2024-01-01T09:00:00"),
        ("UTC", "2024-01-01T09:00:00-05:00", "2024-01-01T14:00:00"),
        # strftime wrote the year 5 as "5".
        ("UTC", datetime(5, 1, 1), "0005-01-01T00:00:00"),
    ],
)
async def test_a_naive_value_is_read_in_the_client_timezone(
    count_answers: aioresponses,
    make_client: Callable[..., DMHubClient],
    zone: Any,
    value: Any,
    sent: str,
) -> None:
    dm = make_client(timezone=zone)
    assert await dm.customers.count(date_created_from=value) == 7
    assert sent_query(count_answers)["dateCreatedFrom"] == sent


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("2024-01-01T09:00:00.5Z", "2024-01-01T09:00:00"),
        ("2024-01-01T09:00:00+0800", "2024-01-01T01:00:00"),
        ("2024-01-01T09:00:00+08", "2024-01-01T01:00:00"),
        ("2024-01-01T09:00:00,5", "2024-01-01T01:00:00"),
        ("2024-01-01T09:00:00.1234567", "2024-01-01T01:00:00"),
    ],
)
async def test_a_time_is_read_alike_on_every_python(
    count_answers: aioresponses, make_client: Callable[..., DMHubClient], value: str, sent: str
) -> None:
    # ISO 8601 times Python 3.10's datetime.fromisoformat refuses (3.11 reads them): on 3.10
    # alone a time filter refused them (InvalidRequestError), though date_join took them there.
    dm = make_client(timezone="Asia/Shanghai")
    assert await dm.customers.count(date_created_from=value) == 7
    assert sent_query(count_answers)["dateCreatedFrom"] == sent


@pytest.mark.parametrize("name", ["date_created_from", "last_updated_to"])
@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("2024-01-01T09:00:00.9999996Z", "2024-01-01T09:00:00"),
        ("2024-01-01T09:00:00.999999999Z", "2024-01-01T09:00:00"),
        ("2024-01-01T09:00:00,99999995+08:00", "2024-01-01T01:00:00"),
        ("20240101T090000.9999999Z", "2024-01-01T09:00:00"),
        ("9999-12-31T23:59:59.9999999Z", "9999-12-31T23:59:59"),  # refused: "past 9999"
    ],
)
async def test_a_bound_drops_its_fraction_past_the_microsecond_too_without_rounding(
    count_answers: aioresponses,
    make_client: Callable[..., DMHubClient],
    name: str,
    value: str,
    sent: str,
) -> None:
    """README: "a fraction is dropped, so a _from of 12:00:26.5 takes in the whole second
    26". Past six digits it was rounded to the microsecond first: 09:00:00.9999996 became
    09:00:01, and a _from of it left out the customers of 09:00:00 (a _to took in 09:00:01)."""
    if sys.version_info < (3, 11) and value.startswith("2024010"):
        pytest.skip("Python 3.10 reads no basic-form time")
    dm = make_client(timezone="UTC")
    assert await dm.customers.count(**{name: value}) == 7
    wire = {"date_created_from": "dateCreatedFrom", "last_updated_to": "lastUpdatedTo"}[name]
    assert sent_query(count_answers)[wire] == sent


@st.composite
def iso_timestamps(draw: st.DrawFn) -> tuple[str, datetime]:
    """An ISO 8601 timestamp in the extended form the SDK reads on every Python, and the UTC
    instant it names (to the microsecond): either case of ``T`` and ``Z`` (RFC 3339 allows
    ``t`` and ``z``), a space, fractions of any length, and offsets in each form."""
    day = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)))
    hour, minute, second = draw(st.tuples(*(st.integers(0, top) for top in (23, 59, 59))))
    fraction = draw(st.one_of(st.none(), st.from_regex(r"[0-9]{1,9}", fullmatch=True)))
    text = f"{day.isoformat()}{draw(st.sampled_from('Tt '))}{hour:02}:{minute:02}:{second:02}"
    if fraction is not None:
        text += draw(st.sampled_from(".,")) + fraction
    offset = timedelta(0)
    suffix = draw(st.sampled_from(["", "Z", "z", "+hh:mm", "+hhmm", "+hh", "-hh:mm"]))
    if suffix.startswith(("+", "-")):
        hours, minutes = draw(st.integers(0, 23)), draw(st.integers(0, 59))
        if suffix.endswith("hh"):
            minutes = 0
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if suffix[0] == "-" else 1)
        suffix = suffix.replace("hh", f"{hours:02}", 1).replace("mm", f"{minutes:02}")
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    moment = datetime.combine(day, datetime.min.time()).replace(
        hour=hour, minute=minute, second=second, microsecond=micro, tzinfo=timezone(offset)
    )
    if (fraction or "")[6:7] >= "5":  # past microseconds: rounded to the nearest, half up
        moment += timedelta(microseconds=1)
    return text + suffix, moment.astimezone(timezone.utc)


@example(("2024-01-02t03:04:05z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)))
# Past microseconds, rounded as msgspec's typed page reader reads them (it was cut: the same
# record read 12:12:12.999999 without msgspec and 12:12:13 with it, had that reader read it).
@example(("2000-01-01T00:00:00.0000005", datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc)))
@example(("2024-01-02T23:59:59.9999995Z", datetime(2024, 1, 3, tzinfo=timezone.utc)))
@example(("2024-01-02T03:04:05.12345649Z", datetime(2024, 1, 2, 3, 4, 5, 123456, timezone.utc)))
@example(("2024-01-02t03:04:05.5Z", datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=timezone.utc)))
@example(("2024-01-02t03:04:05+0800", datetime(2024, 1, 1, 19, 4, 5, tzinfo=timezone.utc)))
@given(iso_timestamps())
def test_a_timestamp_is_read_alike_as_a_filter_a_date_join_and_an_answer_on_every_python(
    written: tuple[str, datetime],
) -> None:
    # "2024-01-02t03:04:05z" (RFC 3339 allows a lower-case t and z) was a time filter on every
    # Python, but a date_join refused with InvalidRequestError on 3.11+ alone (and a service
    # answer holding it unreadable there); "...t03:04:05.5Z" and "...t03:04:05+0800" were the
    # reverse: read on 3.11+, refused as filters and date_joins on 3.10.
    text, instant = written
    query = customer_filter_params("count", {"date_created_from": text}, zone=timezone.utc)
    # A bound drops the fraction, digits past the microsecond too, with no rounding: it is
    # the second written (a reader rounds them to the microsecond, and may reach the next).
    fraction = re.search(r"[.,]([0-9]+)", text)
    rounded_up = fraction is not None and fraction.group(1)[6:7] >= "5"
    second = instant - timedelta(microseconds=rounded_up)
    assert query["dateCreatedFrom"] == second.replace(tzinfo=None).isoformat("T", "seconds")
    check_customer_fields("create", {"date_join": text})
    sent = instant.replace(microsecond=0, tzinfo=None).isoformat() + "Z"
    assert customer_fields_to_wire({"date_join": text}) == {"dateJoin": sent}
    assert structure_customer({"id": 1, "dateJoin": text}).date_join == instant


FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@example("2024-01-01")
@given(st.one_of(iso_timestamps().map(lambda written: written[0]), st.dates().map(str)))
def test_a_timestamp_in_full_width_digits_reads_as_in_ascii_ones(text: str) -> None:
    # Chinese input methods type full-width digits: every path reads them as their ASCII
    # digits, as date_join did. A filter read a day so written as its midnight (below).
    wide = text.translate(FULL_WIDTH)
    for name in ("date_created_from", "date_created_to"):
        read = customer_filter_params("count", {name: wide}, zone=SHANGHAI)
        assert read == customer_filter_params("count", {name: text}, zone=SHANGHAI)
    assert customer_fields_to_wire({"date_join": wide}) == customer_fields_to_wire(
        {"date_join": text}
    )
    assert structure_customer({"id": 1, "dateJoin": wide}) == structure_customer(
        {"id": 1, "dateJoin": text}
    )


async def test_a_day_in_full_width_digits_is_the_whole_day(
    count_answers: aioresponses, make_client: Callable[..., DMHubClient]
) -> None:
    # It was read as a time, its midnight: last_updated_to="２０２４-０１-０１" went out as
    # 2023-12-31T16:00:00, and every customer of that day but its first second was left out.
    dm = make_client(timezone="Asia/Shanghai")
    await dm.customers.count(
        last_updated_from="２０２４-０１-０１", last_updated_to="２０２４-０１-０１"
    )
    query = sent_query(count_answers)
    assert (query["lastUpdatedFrom"], query["lastUpdatedTo"]) == (
        "2023-12-31T16:00:00",
        "2024-01-01T15:59:59",
    )


async def test_a_lower_case_date_join_is_written_on_every_python() -> None:
    async with zoned_client("Asia/Shanghai") as (sim, dm):
        made = await dm.customers.create(name="x", date_join="2024-01-02t03:04:05z")
        assert made.id is not None
        assert sim.customer(made.id)["dateJoin"] == "2024-01-02T03:04:05Z"  # type: ignore[index]


@pytest.mark.parametrize(
    ("zone", "value", "sent_from", "sent_to"),
    [
        # 2024-01-01 in Shanghai runs from 2023-12-31T16:00:00Z to 2024-01-01T15:59:59Z.
        ("Asia/Shanghai", date(2024, 1, 1), "2023-12-31T16:00:00", "2024-01-01T15:59:59"),
        ("Asia/Shanghai", "2024-01-01", "2023-12-31T16:00:00", "2024-01-01T15:59:59"),
        ("UTC", date(2024, 2, 29), "2024-02-29T00:00:00", "2024-02-29T23:59:59"),
        # Chile turned its clocks back from midnight to 23:00 on 6 April 2024: that day ran
        # to 03:59:59 UTC. Its end was the first 23:59:59 (02:59:59 UTC), and 7 April starts
        # at 04:00 UTC: the hour between belonged to neither day's filter.
        ("America/Santiago", date(2024, 4, 6), "2024-04-06T03:00:00", "2024-04-07T03:59:59"),
        ("America/Santiago", "2024-04-06", "2024-04-06T03:00:00", "2024-04-07T03:59:59"),
        # And on 8 September from midnight to 01:00: the day starts at its first instant.
        ("America/Santiago", date(2024, 9, 8), "2024-09-08T04:00:00", "2024-09-09T02:59:59"),
    ],
)
async def test_a_date_is_the_whole_day_in_the_client_timezone(
    count_answers: aioresponses,
    make_client: Callable[..., DMHubClient],
    zone: str,
    value: Any,
    sent_from: str,
    sent_to: str,
) -> None:
    dm = make_client(timezone=zone)
    await dm.customers.count(last_updated_from=value, last_updated_to=value)
    query = sent_query(count_answers)
    assert (query["lastUpdatedFrom"], query["lastUpdatedTo"]) == (sent_from, sent_to)


@pytest.mark.parametrize(
    "day",
    [
        *("20240101", "2024-W01-1", "2024W011", "2024-W01", "2024W01"),
        *(" 2024-01-01", "2024-01-01\n", "\t20240101 ", "2024-W01-1\r\n"),  # spaces around
    ],
)
async def test_every_iso_form_of_a_day_is_the_whole_day(
    count_answers: aioresponses, make_client: Callable[..., DMHubClient], day: str
) -> None:
    # Python 3.11 reads these ISO 8601 days (basic, week date) as datetimes at midnight, and
    # only the 10-character form was taken as a day: last_updated_to="20240101" went out as
    # 2023-12-31T16:00:00, and every customer of that day but its first second was left out.
    # Python 3.10 refused them all, saying they were no ISO 8601 string; it reads them now.
    # So was a day with spaces around it, read from a file line ("2024-01-01\n") or pasted:
    # against the simulator, 0 of 300 customers, where "2016-01-01" counted 300.
    dm = make_client(timezone="Asia/Shanghai")
    await dm.customers.count(last_updated_from=day, last_updated_to=day)
    query = sent_query(count_answers)
    assert (query["lastUpdatedFrom"], query["lastUpdatedTo"]) == (
        "2023-12-31T16:00:00",
        "2024-01-01T15:59:59",
    )


@pytest.mark.parametrize(
    "value", ["2024-01-01T09:00:00+05:99", "2024-01-01T09:00:00+0560", "2024-01-01 09:00-00:75"]
)
async def test_an_offset_of_sixty_minutes_or_more_is_refused_before_anything_is_sent(
    api: aioresponses, make_client: Callable[..., DMHubClient], value: str
) -> None:
    # "+05:99" was read as +06:39 and sent as a bound 99 minutes off (a date_join written so
    # too): no clock says 05:99, and fromisoformat refuses it; a typo, not an offset.
    dm = make_client(timezone="UTC")
    with pytest.raises(
        InvalidRequestError, match="date_created_from must be a datetime, a date or an ISO 8601"
    ):
        await dm.customers.count(date_created_from=value)
    with pytest.raises(InvalidRequestError, match="last_updated_to must be a datetime"):
        dm.customers.list(last_updated_to=value)
    with pytest.raises(InvalidRequestError, match="date_join must be a time"):
        await dm.customers.create(name="x", date_join=value)
    assert not api.requests  # a token request neither


@pytest.mark.parametrize(
    "written", ["2024-01-01T09:00:00+05:99", "2024-01-01T09:00:00+0560", "2024-01-01 09:00-00:75"]
)
async def test_an_answer_with_an_offset_of_sixty_minutes_or_more_names_the_record_and_field(
    api: aioresponses, tokens: Any, make_client: Callable[..., DMHubClient], written: str
) -> None:
    # A filter and a date_join refuse "+05:99" (above), and msgspec's reader refuses it too;
    # an answer holding it was then read the lenient way, as +06:39: a customer's dateCreated
    # 99 minutes off, silently, on every path (list, get, statistics, a part's window check).
    rows = [{"id": 1, "dateCreated": "2024-01-01T09:00:00Z"}, {"id": 2, "dateCreated": written}]
    api.get(url("/v1/customers"), payload={"rows": rows, "records": 2, "total": 1}, repeat=True)
    api.get(url("/v1/customers/2"), payload=rows[1])
    dm = make_client(timezone="UTC")
    with pytest.raises(ResponseDecodeError, match=r"record 1 \(id 2\), field 'dateCreated'"):
        await dm.customers.list(page_size=100).to_list()
    with pytest.raises(ResponseDecodeError, match=r"field 'dateCreated'"):
        await dm.customers.get(2)
    page = json.dumps({"rows": rows}).encode()
    for read in (read_customer_page, lenient_page_reader(structure_customers, "rows")):
        with pytest.raises(ValueError, match=r"record 1 \(id 2\), field 'dateCreated'"):
            read(page)
    with pytest.raises(ValueError, match="no such offset"):
        parse_timestamp(written)


DAY_FORMS = {  # each form of a day and the day it names
    "basic": (lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}", lambda d: d),
    "week": (lambda d: "{:04d}-W{:02d}-{}".format(*d.isocalendar()), lambda d: d),
    "week, basic": (lambda d: "{:04d}W{:02d}{}".format(*d.isocalendar()), lambda d: d),
    "week's monday": (
        lambda d: "{:04d}-W{:02d}".format(*d.isocalendar()[:2]),
        lambda d: date.fromisocalendar(*d.isocalendar()[:2], 1),
    ),
    "week's monday, basic": (
        lambda d: "{:04d}W{:02d}".format(*d.isocalendar()[:2]),
        lambda d: date.fromisocalendar(*d.isocalendar()[:2], 1),
    ),
}
NO_DAYS = [
    "2024-0101",
    "202401-01",
    "2024-W011",
    "2024W01-1",
    "2023-W53",
    "2024-W01-8",
    "2024-W00",
    "20241301",
    "20240230",
    "2024-001",
    "2024-01",
    "+2024-01-01",
    "2024W1",
    # Python 3.11+'s date.fromisoformat reads a basic day and ignores two characters after it:
    # "2024010112" (a compact 12:00) was the whole day 2024-01-01, a _to 12 hours past the
    # time meant, and "20240101xx" a day too, both refused on 3.10 alone.
    "2024010112",
    "20240101xx",
]


@example(date(2024, 1, 1), "basic")
@example(date(999, 1, 1), "basic")  # strftime's %Y writes 999, not 0999
@given(st.dates(), st.sampled_from(sorted(DAY_FORMS)))
def test_the_days_python_3_11_reads_are_read_on_3_10_alike(day: date, form: str) -> None:
    # iso_day, what Python 3.10 reads a day with, reads every form 3.11 reads as 3.11 does.
    write, named = DAY_FORMS[form]
    assert iso_day(write(day)) == named(day)
    if sys.version_info >= (3, 11):
        assert date.fromisoformat(write(day)) == named(day)


@pytest.mark.parametrize("text", NO_DAYS)
def test_what_is_no_day_is_refused_on_every_python(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="must be a datetime, a date or an ISO 8601"):
        customer_filter_params("count", {"date_created_to": text}, zone=SHANGHAI)


async def test_naive_values_under_the_default_warn_once_per_client(
    count_answers: aioresponses, make_client: Callable[..., DMHubClient]
) -> None:
    dm = make_client()

    async def two_calls() -> None:
        await dm.customers.count(
            date_created_from=datetime(2024, 1, 1), date_created_to="2024-01-02T00:00:00"
        )
        await dm.customers.count(date_created_from=date(2024, 1, 1))

    with pytest.warns(NaiveDatetimeWarning, match=r"timezone=") as caught:
        await two_calls()
    assert len(caught) == 1  # once, for three naive values in two calls
    assert caught[0].filename == __file__  # it points at the caller's line
    assert count_answers.requests  # and the calls went out, read as UTC
    with pytest.warns(NaiveDatetimeWarning) as again:  # another client warns again
        make_client().customers.list(date_created_from=datetime(2024, 1, 1))
    assert again[0].filename == __file__


@pytest.mark.parametrize("zone", ["UTC", timezone.utc, "Asia/Shanghai"])
async def test_no_warning_once_a_timezone_is_set_or_values_are_aware(
    count_answers: aioresponses, make_client: Callable[..., DMHubClient], zone: Any
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await make_client(timezone=zone).customers.count(date_created_from=datetime(2024, 1, 1))
        aware = datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=8)))
        await make_client().customers.count(
            date_created_from=aware, last_updated_to="2024-01-01T00:00+08:00"
        )


async def test_the_walk_takes_the_zone_too(
    api: aioresponses, tokens: Any, make_client: Callable[..., DMHubClient]
) -> None:
    api.get(url("/v1/customers"), payload={"rows": [], "records": 0, "total": 0})
    dm = make_client(timezone="Asia/Shanghai")
    assert await dm.customers.list(date_created_to=date(2024, 1, 1)).to_list() == []
    assert sent_query(api, "/v1/customers")["dateCreatedTo"] == "2024-01-01T15:59:59"


def test_the_setting_is_a_tzinfo() -> None:
    dm = DMHubClient(access_token="t", timezone="Asia/Shanghai")
    assert dm.timezone == SHANGHAI
    assert DMHubClient(access_token="t").timezone is None  # unset: UTC, with the warning


@pytest.mark.parametrize(
    ("name", "value", "sent"),
    [
        ("Asia/Shanghai", datetime(2024, 1, 1, 9, 0), "2024-01-01T01:00:00"),
        ("Asia/Shanghai", date(2024, 7, 1), "2024-06-30T16:00:00"),
        ("America/New_York", datetime(2024, 7, 1, 9, 0), "2024-07-01T13:00:00"),
        ("America/New_York", "2024-01-01", "2024-01-01T05:00:00"),
    ],
)
async def test_a_pytz_zone_is_read_as_its_named_zone(
    count_answers: aioresponses,
    make_client: Callable[..., DMHubClient],
    name: str,
    value: Any,
    sent: str,
) -> None:
    # A pytz zone set on a naive time (replace(tzinfo=...), which is how a tzinfo is applied)
    # gives that zone's first, local mean time: +08:06 for Shanghai, -04:56 for New York.
    # 09:00 in Shanghai went out as 00:54Z, and a summer day in New York began 56 minutes late.
    pytz = pytest.importorskip("pytz")
    dm = make_client(timezone=pytz.timezone(name))
    assert await dm.customers.count(date_created_from=value) == 7
    assert sent_query(count_answers)["dateCreatedFrom"] == sent
    assert dm.timezone == ZoneInfo(name)


#: A zone no other test names: this one's cache entry is dropped before and after.
_UNSHARED = "Asia/Harbin"  # a name of Shanghai's rules


@pytest.fixture
def no_system_zones() -> Iterator[None]:
    """A machine without the system's zone database: Windows, an Alpine or distroless image."""
    zoneinfo.ZoneInfo.clear_cache(only_keys=[_UNSHARED])
    zoneinfo.reset_tzpath(to=[])
    try:
        yield
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache(only_keys=[_UNSHARED])


async def test_a_zone_name_works_without_the_system_zone_database(
    no_system_zones: None,
    count_answers: aioresponses,
    make_client: Callable[..., DMHubClient],
) -> None:
    # The README's timezone="Asia/Shanghai" raised "no time zone is named 'Asia/Shanghai'" on
    # Windows, which has no zone database for zoneinfo to read: the package now brings one.
    dm = make_client(timezone=_UNSHARED)
    assert await dm.customers.count(date_created_from=datetime(2024, 1, 1, 9)) == 7
    assert sent_query(count_answers)["dateCreatedFrom"] == "2024-01-01T01:00:00"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd", 8, timedelta(hours=8)])
def test_an_unknown_zone_is_refused(zone: Any) -> None:
    with pytest.raises(InvalidRequestError, match="timezone"):
        DMHubClient(access_token="t", timezone=zone)


class _NoOffset(tzinfo):
    """A tzinfo of the caller's whose ``utcoffset`` says nothing: ``None``, as a naive one."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


class _DayAhead(tzinfo):
    """A tzinfo of the caller's with an offset no datetime takes (a day or more)."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return timedelta(hours=24)


@pytest.mark.parametrize(
    "zone", [tzinfo(), _NoOffset(), _DayAhead()], ids=["tzinfo()", "no offset", "a day ahead"]
)
def test_a_tzinfo_that_gives_no_offset_is_refused_when_the_client_is_made(zone: tzinfo) -> None:
    # Taken, then the first naive time filter raised a raw NotImplementedError (tzinfo(), the
    # abstract base) or ValueError (an offset of a day); one whose offset is None had the
    # naive time read in the machine's local zone, which the setting is there to avoid.
    with pytest.raises(InvalidRequestError) as info:
        DMHubClient(access_token="t", timezone=zone)
    assert str(info.value).startswith(f"timezone {short(zone)} gives no UTC offset")


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (
            lambda dm: dm.customers.count(
                date_created_from=datetime(2024, 1, 1, tzinfo=_DayAhead())
            ),
            "count(): date_created_from is out of range: ",
        ),
        (
            lambda dm: dm.customers.create(
                attr={"joined": datetime(2024, 1, 1, tzinfo=_DayAhead())}
            ),
            "create(): attr['joined'] is out of range: ",
        ),
    ],
    ids=["a time filter", "a time in attr"],
)
async def test_an_aware_time_whose_tzinfo_gives_no_offset_is_refused(
    make_client: Callable[..., DMHubClient], call: Callable[[DMHubClient], Any], said: str
) -> None:
    # Its tzinfo's offset of a day, which no datetime takes, was a raw ValueError ("offset must
    # be a timedelta strictly between ...") from the filter's check, or the body's.
    dm = make_client(timezone="UTC")
    with pytest.raises(InvalidRequestError) as info:
        await call(dm)
    assert str(info.value).startswith(said)


@pytest.mark.parametrize(
    ("zone", "said"),
    [
        ("asia/shanghai", "(did you mean 'Asia/Shanghai'?)"),
        ("Shanghai", "(did you mean 'Asia/Shanghai'?)"),
        ("shanghai", "(did you mean 'Asia/Shanghai'?)"),
        ("Beijing", "no time zone is named 'Beijing': give an IANA name such as 'Asia/Shanghai'"),
        ("UTC+8", "or a tzinfo (datetime.timezone(timedelta(hours=8)))"),
    ],
)
def test_an_unknown_zone_name_is_refused_saying_what_to_give(zone: str, said: str) -> None:
    # "timezone: no time zone is named 'asia/shanghai'" left a newcomer guessing at the
    # spelling a zone name takes; "Beijing" and "UTC+8" are no IANA names either.
    with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError):
        zoneinfo.ZoneInfo(zone)
        pytest.skip(f"this machine's zone database takes {zone!r} (a case-blind file system)")
    with pytest.raises(InvalidRequestError) as info:
        DMHubClient(access_token="t", timezone=zone)
    assert said in str(info.value)


@pytest.mark.parametrize(
    ("zone", "hours"), [("GMT+8", 8), ("gmt+8", 8), ("GMT-5", -5), ("gmt-8", -8)]
)
def test_an_offset_written_as_gmt_is_not_offered_the_etc_zone_of_the_opposite_sign(
    zone: str, hours: int
) -> None:
    # "GMT+8" (China's time, as users write it) was answered "(did you mean 'Etc/GMT+8'?)",
    # the zone database's name of UTC-8: POSIX's sign, the opposite of what it reads as. A
    # client made with it read every naive time filter 16 hours off, and an export by
    # --created-from missed or took a day of customers, without a word.
    with pytest.raises(InvalidRequestError) as info:
        DMHubClient(access_token="t", timezone=zone)
    said = str(info.value)
    assert "Etc/GMT" not in said
    assert f"(datetime.timezone(timedelta(hours={hours})))" in said
    offered = re.findall(r"did you mean '([^']+)'", said)
    for name in offered:  # any zone offered is the offset the user wrote
        assert zoneinfo.ZoneInfo(name).utcoffset(datetime(2024, 1, 1)) == timedelta(hours=hours)


@pytest.mark.parametrize(
    ("zone", "filters"),
    [
        ("Asia/Shanghai", {"date_created_from": datetime(1, 1, 1)}),
        ("America/New_York", {"date_created_to": date.max}),
        ("America/New_York", {"last_updated_to": datetime.max}),
        ("UTC", {"date_created_to": "9999-12-31T23:59:59-00:01"}),
        ("America/New_York", {"last_updated_to": "9999-12-31T23:00"}),
    ],
    ids=[
        "the first day at +08:00",
        "date.max at -05:00",
        "datetime.max at -05:00",
        "text at -00:01",
        "naive text at -05:00",
    ],
)
async def test_a_time_filter_utc_cannot_hold_says_to_leave_it_out(
    zone: str,
    filters: Any,
    count_answers: aioresponses,
    make_client: Callable[..., DMHubClient],
) -> None:
    # date.max as "no upper bound" raised "date_created_to is out of range: datetime.date(9999,
    # 12, 31)" west of Greenwich, and datetime(1, 1, 1) as "from the start" east of it: the
    # same call worked in one zone, and nothing said why it failed in the other, nor what to do.
    dm = make_client(timezone=zone)
    (name,) = filters
    with pytest.raises(InvalidRequestError) as info:
        await dm.customers.count(**filters)
    assert not count_answers.requests  # refused before anything is sent, a token request too
    said = str(info.value)
    assert f"{name} is out of range: {short(filters[name])} (" in said  # as it was given
    assert f"UTC has no such time: leave {name} out for no bound" in said


class Crash(Exception):
    """Stops an export after its first page, leaving its checkpoint behind."""


def crash(progress: Any) -> None:
    raise Crash


async def test_an_export_checkpoint_holds_the_zone_of_its_naive_filters(
    tmp_path: Path, clock: Any
) -> None:
    dest, ckpt = tmp_path / "out.jsonl", tmp_path / "out.ckpt"
    since = datetime(2000, 1, 1)  # naive: 2000-01-01T00:00 in Shanghai, 8 hours off UTC's

    async with DMHubSimulator(customers=30, seed=4) as sim:

        def client(zone: str) -> DMHubClient:
            return DMHubClient(
                sim.app_id,
                sim.secret,
                base_url=sim.url,
                timezone=zone,
                token_store=MemoryTokenStore(),
                clock=clock,
                sleep=clock.sleep,
            )

        async with client("Asia/Shanghai") as dm:
            with pytest.raises(Crash):
                await export_customers(
                    dm,
                    dest,
                    checkpoint=ckpt,
                    page_size=10,
                    progress=False,
                    on_progress=crash,
                    date_created_from=since,
                )
        # The same call under another zone asks for other customers: not a resume of that one.
        async with client("UTC") as dm:
            with pytest.raises(InvalidRequestError, match="another export"):
                await export_customers(
                    dm, dest, checkpoint=ckpt, page_size=10, progress=False, date_created_from=since
                )


@pytest.mark.parametrize(
    ("low", "high", "value_from", "value_to"),
    [
        ("date_created_from", "date_created_to", "2024-01-02", "2024-01-01"),
        ("last_updated_from", "last_updated_to", "2024-01-01T09:00:01Z", "2024-01-01T09:00:00Z"),
        # 09:00 in Shanghai is 01:00 UTC: after 00:30 UTC, whatever the text says.
        ("date_created_from", "date_created_to", "2024-01-01T09:00+08:00", "2024-01-01T00:30Z"),
    ],
)
async def test_a_range_that_ends_before_it_starts_is_refused_before_anything_is_sent(
    api: aioresponses,
    tokens: Any,
    make_client: Callable[..., DMHubClient],
    tmp_path: Path,
    low: str,
    high: str,
    value_from: str,
    value_to: str,
) -> None:
    # It used to be sent: the service found nothing, and an export wrote an empty file that
    # called itself complete.
    dm = make_client(timezone="UTC")
    filters: Any = {low: value_from, high: value_to}
    with pytest.raises(InvalidRequestError, match=f"{high} is before {low}"):
        await dm.customers.count(**filters)
    with pytest.raises(InvalidRequestError, match=f"{high} is before {low}"):
        dm.customers.list(**filters)
    with pytest.raises(InvalidRequestError, match=f"{high} is before {low}"):
        await export_customers(dm, tmp_path / "out.jsonl", **filters)
    assert not api.requests
    assert not (tmp_path / "out.jsonl").exists()
    # One second, or one day, is a range: the bounds are both inclusive.
    api.get(url("/v1/customers/count"), payload=1, repeat=True)
    assert await dm.customers.count(**{low: value_to, high: value_to}) == 1


@contextlib.asynccontextmanager
async def zoned_client(zone: Any) -> AsyncIterator[tuple[DMHubSimulator, DMHubClient]]:
    """An empty simulator and a client of it set to ``zone``: what a write's times become."""
    async with (
        DMHubSimulator(customers=0) as sim,
        DMHubClient(
            sim.app_id, sim.secret, base_url=sim.url, timezone=zone, token_store=MemoryTokenStore()
        ) as dm,
    ):
        yield sim, dm


@pytest.mark.parametrize(
    ("zone", "date_join", "stored"),
    [
        # Read in the client's zone, as a time filter is: 09:00 in Shanghai is 01:00 UTC.
        ("Asia/Shanghai", datetime(2024, 1, 1, 9, 0), "2024-01-01T01:00:00Z"),
        ("Asia/Shanghai", "2024-01-01T09:00:00", "2024-01-01T01:00:00Z"),
        ("Asia/Shanghai", "2024-01-01 09:00", "2024-01-01T01:00:00Z"),
        # An offset says which zone: the setting does not apply.
        ("Asia/Shanghai", "2024-01-01T09:00:00Z", "2024-01-01T09:00:00Z"),
        ("Asia/Shanghai", datetime(2024, 1, 1, 9, tzinfo=timezone.utc), "2024-01-01T09:00:00Z"),
        ("UTC", "2024-01-01T09:00:00-05:00", "2024-01-01T14:00:00Z"),
        # No setting: UTC, as before.
        (None, datetime(2024, 1, 1, 9, 0), "2024-01-01T09:00:00Z"),
        (None, "2024-01-01T09:00:00", "2024-01-01T09:00:00Z"),
    ],
)
async def test_a_naive_date_join_is_written_in_the_client_timezone(
    zone: Any, date_join: Any, stored: str
) -> None:
    # A client set to Asia/Shanghai read a naive filter there but wrote a naive date_join as
    # UTC: datetime(2024, 1, 1, 9) became 09:00Z, 17:00 in Shanghai, eight hours late.
    async with zoned_client(zone) as (sim, dm):
        made = await dm.customers.create(name="x", date_join=date_join)
        assert made.id is not None
        assert sim.customer(made.id)["dateJoin"] == stored  # type: ignore[index]
        await dm.customers.update(made.id, date_join=date_join)
        upserted = await dm.customers.create_with_identities(
            [Identity("wechat", "o-tz")], date_join=date_join
        )
        assert upserted.id is not None
        for customer_id in (made.id, upserted.id):
            assert sim.customer(customer_id)["dateJoin"] == stored  # type: ignore[index]


@pytest.mark.parametrize(
    ("zone", "written", "stored"),
    [
        # Read in the client's zone, as date_join is: 09:00 in Shanghai is 01:00 UTC.
        ("Asia/Shanghai", datetime(2024, 1, 1, 9, 0), "2024-01-01T01:00:00Z"),
        # An offset says which zone: the setting does not apply (and the fraction stays).
        (
            "Asia/Shanghai",
            datetime(2024, 1, 1, 9, 0, 0, 250000, tzinfo=timezone(timedelta(hours=8))),
            "2024-01-01T01:00:00.250000Z",
        ),
        # No setting: UTC, as before.
        (None, datetime(2024, 1, 1, 9, 0), "2024-01-01T09:00:00Z"),
    ],
)
async def test_a_naive_datetime_in_attr_is_written_in_the_client_timezone(
    zone: Any, written: datetime, stored: str
) -> None:
    # A client set to Asia/Shanghai wrote a naive date_join in Shanghai time but a naive
    # datetime in a custom field as UTC: 09:00 became 09:00Z, 17:00 in Shanghai.
    attr = {"joined": written, "visits": [{"at": written}]}
    expected = {"joined": stored, "visits": [{"at": stored}]}
    async with zoned_client(zone) as (sim, dm):
        made = await dm.customers.create(name="x", attr=attr)
        assert made.id is not None
        assert sim.customer(made.id)["attr"] == expected  # type: ignore[index]
        await dm.customers.update(made.id, attr={"joined": None})
        await dm.customers.update(made.id, attr=attr)
        upserted = await dm.customers.create_with_identities(
            [Identity("wechat", "o-tz-attr")], attr=attr
        )
        assert upserted.id is not None
        for customer_id in (made.id, upserted.id):
            assert sim.customer(customer_id)["attr"] == expected  # type: ignore[index]
        assert attr == {"joined": written, "visits": [{"at": written}]}  # the caller's, as given


async def test_an_export_or_a_plan_warns_once_naming_itself_at_the_callers_line(
    tmp_path: Path, clock: Any
) -> None:
    # export_customers warned as "list()" and plan_shards/export_sharded as "plan_shards()",
    # each pointing into the SDK (export/_export.py, shards/_plan.py) and not at the line to
    # fix; plan_shards warned twice a call, and again on every call of the same client.
    from dmhub_async.shards import export_sharded, plan_shards

    naive = {"date_created_from": datetime(2000, 1, 1), "last_updated_to": "2100-01-01T00:00"}
    async with DMHubSimulator(customers=20, seed=4) as sim:

        def client() -> DMHubClient:
            return DMHubClient(
                sim.app_id,
                sim.secret,
                base_url=sim.url,
                token_store=MemoryTokenStore(),
                clock=clock,
                sleep=clock.sleep,
            )

        async with client() as dm:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                await export_customers(dm, tmp_path / "a.jsonl", progress=False, **naive)
                await export_customers(dm, tmp_path / "b.jsonl", progress=False, **naive)
        async with client() as dm:
            with warnings.catch_warnings(record=True) as planned:
                warnings.simplefilter("always")
                await plan_shards(dm, 2, **naive)
                await plan_shards(dm, 2, **naive)
        async with client() as dm:
            with warnings.catch_warnings(record=True) as sharded:
                warnings.simplefilter("always")
                await export_sharded(dm, tmp_path / "parts", 2, progress=False, **naive)
    for found, name in ((caught, "export_customers"), (planned, "plan_shards")):
        assert [(w.category, w.filename) for w in found] == [(NaiveDatetimeWarning, __file__)]
        assert str(found[0].message).startswith(f"{name}(): ")
    assert [(w.category, w.filename) for w in sharded] == [(NaiveDatetimeWarning, __file__)]
    assert str(sharded[0].message).startswith("export_sharded(): ")


@pytest.mark.parametrize("method", ["list", "list_rows"])
async def test_a_walk_names_the_method_called_in_its_errors_and_its_warning(
    clock: Any, method: str
) -> None:
    # list_rows() said "list(): id_list is empty" and warned as list(): a user looking for
    # the call to fix found none of that name.
    async with (
        DMHubSimulator(customers=5) as sim,
        DMHubClient(
            sim.app_id, sim.secret, base_url=sim.url, token_store=MemoryTokenStore(), clock=clock
        ) as dm,
    ):
        walk = getattr(dm.customers, method)
        refused: list[str] = []
        for bad in (
            {"id_list": []},
            {"resume_after": "3"},
            {"sort_by": "name", "resume_after": 3},
            {"date_created_from": "2024-02-01", "date_created_to": "2024-01-01"},
        ):
            with pytest.raises(InvalidRequestError) as err:
                walk(**bad)
            refused.append(str(err.value))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await walk(date_created_from=datetime(2000, 1, 1)).to_list()
    assert [message.split(": ")[0] for message in refused] == [f"{method}()"] * 4
    assert [(w.category, w.filename) for w in caught] == [(NaiveDatetimeWarning, __file__)]
    assert str(caught[0].message).startswith(f"{method}(): ")
    assert sim.counters.routes["GET /v1/customers"] == 1  # the refused walks sent nothing
