"""Time filters: datetimes, dates and ISO strings as the list API's UTC bounds, in a known zone.

The list API takes its time bounds as UTC ``2016-11-11T11:11:11``, no offset, to the second,
both ends inclusive (``docs/contract.md``, "list"). A value without an offset (a naive
``datetime``, ``"2024-01-01T09:00"``) is read in the client's ``timezone``; when none was set it
is read as UTC, with a :class:`NaiveDatetimeWarning` once per client, since DM Hub's users are
mostly in UTC+8, where ``datetime(2024, 1, 1)`` read as UTC means 08:00 local time.
"""

from __future__ import annotations

import re
import warnings
import zoneinfo
from datetime import date, datetime, time, timezone, tzinfo
from typing import Any

from ._converter.scalars import ascii_digits, timestamp_as_written
from ._exceptions import InvalidRequestError
from ._validate import MAX_JSON_DEPTH, short

__all__ = [
    "NaiveDatetimeWarning",
    "did_you_mean",
    "query_time",
    "times_in_utc",
    "warn_naive",
    "zone_setting",
]


class NaiveDatetimeWarning(UserWarning):
    """A time filter without an offset was read as UTC because the client has no ``timezone``.

    Pass ``DMHubClient(timezone=...)`` (``"Asia/Shanghai"``, ``"UTC"`` or a ``tzinfo``), or aware
    datetimes, to say which zone you mean.
    """


def zone_setting(value: object) -> tzinfo | None:
    """The ``timezone`` setting as a tzinfo: a tzinfo as is, an IANA name looked up, or None.

    A pytz zone is taken as the ``ZoneInfo`` of its name: a naive time is placed in a zone by
    ``replace(tzinfo=...)``, which on a pytz zone gives its first, local mean time (+08:06 for
    Asia/Shanghai, -04:56 for America/New_York), minutes off every time sent.
    """
    if value is None:
        return None
    if isinstance(value, tzinfo):
        name = getattr(value, "zone", None)
        if callable(getattr(value, "localize", None)) and isinstance(name, str):
            return _named(name)  # pytz: FixedOffset has no name and works as it is
        return _with_offset(value)
    if isinstance(value, str):
        return _named(value)
    raise InvalidRequestError(
        f"timezone must be a tzinfo or an IANA name such as 'Asia/Shanghai', not {short(value)}"
    )


def _with_offset(zone: tzinfo) -> tzinfo:
    """``zone`` if it gives a time an offset a datetime takes, else InvalidRequestError.

    Taken as it was, ``tzinfo()`` (the abstract base) raised a raw NotImplementedError at the
    first naive time filter, an offset of a day a raw ValueError; one whose offset is None left
    the time naive, read in the machine's local zone, which the setting is there to avoid.
    """
    try:
        offset = datetime(2000, 1, 1, tzinfo=zone).utcoffset()
    except Exception:  # the zone's own code: NotImplementedError, ValueError, anything
        offset = None
    if offset is None:
        raise InvalidRequestError(
            f"timezone {short(zone)} gives no UTC offset (its utcoffset() fails, says None, or"
            " is a day or more): give an IANA name such as 'Asia/Shanghai', or a tzinfo that"
            " gives one, such as datetime.timezone(timedelta(hours=8))"
        )
    return zone


def _named(name: str) -> tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        pass
    raise InvalidRequestError(
        f"timezone: no time zone is named {short(name)}{did_you_mean(name)}: give an IANA name"
        f" such as 'Asia/Shanghai' or 'UTC', or a tzinfo{_offset_hint(name)}"
    )


#: A fixed offset written as a name: "UTC+8", "GMT+08:00", "+0800".
_OFFSET = re.compile(r"(?:UTC|GMT)?\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?", re.IGNORECASE)


def did_you_mean(name: str) -> str:
    """`` (did you mean 'Asia/Shanghai'?)`` for a zone name in another case, or its city
    alone (``"shanghai"``); else nothing, and nothing for an offset (``"GMT+8"``). Only ever
    on the error path: listing the zones reads the zone database's directories."""
    wanted = name.strip().replace(" ", "_").casefold()
    if not wanted or _OFFSET.fullmatch(name.strip()):
        # An offset ("GMT+8": the tzinfo is said after) matched 'Etc/GMT+8' by its last
        # part: the zone database's name of UTC-8 (POSIX's sign), 16 hours off.
        return ""
    try:
        zones = sorted(zoneinfo.available_timezones())
    except OSError:  # pragma: no cover - an unreadable zone database: no suggestion
        return ""
    found = [z for z in zones if z.casefold() == wanted] or [
        z for z in zones if z.rpartition("/")[2].casefold() == wanted and "/" in z
    ]
    return f" (did you mean {found[0]!r}?)" if len(found) == 1 else ""


def _offset_hint(name: str) -> str:
    """For an offset written as a zone name (``"UTC+8"``), the tzinfo that says it."""
    match = _OFFSET.fullmatch(name.strip())
    if match is None:
        return ""
    sign, hours, minutes = match.groups()
    delta = f"hours={sign.replace('+', '')}{int(hours)}"
    if minutes and int(minutes):
        delta += f", minutes={sign.replace('+', '')}{int(minutes)}"
    return f" (datetime.timezone(timedelta({delta})))"


def query_time(
    method: str, name: str, value: object, zone: tzinfo | None, *, end: bool
) -> tuple[str, bool]:
    """``value`` as the list API's UTC bound, and whether it was naive under no ``zone``.

    A ``date`` (or ``"2024-01-01"``) is the whole day in ``zone``: its first second as a lower
    bound, its last (``end=True``, the ``_to`` filters) as an upper one, both inclusive.
    """
    # A string is named as it was given in an error: its parsed datetime was, cut short
    # ("datetime.date...conds=86340)))", the text's "-00:01" lost in the cut).
    read = _parse(method, name, value) if isinstance(value, str) and value else value
    if isinstance(read, datetime):
        moment = read
    elif isinstance(read, date):
        # A day's last second is its later 23:59:59 where clocks go back at midnight (fold=1):
        # the earlier one left the repeated hour out of both that day and the next.
        moment = datetime.combine(read, time.max.replace(fold=1) if end else time.min)
    else:
        raise InvalidRequestError(
            f"{method}(): {name} must be a datetime, a date or an ISO 8601 string,"
            f" not {short(value)}"
        )
    try:
        naive = moment.utcoffset() is None
    except ValueError:  # a tzinfo's offset no datetime takes (a day): in_utc says it below
        naive = False
    # A bound UTC cannot hold (date.max west of Greenwich, the year 1 east of it) is one a
    # user meant as none: say so, rather than leave them to guess why another zone took it.
    hint = f" (UTC has no such time: leave {name} out for no bound)"
    utc = in_utc(method, name, moment, zone or timezone.utc, given=value, hint=hint)
    # isoformat, not strftime: strftime writes the year 5 as "5", not "0005".
    return utc.replace(tzinfo=None).isoformat(timespec="seconds"), naive and zone is None


def in_utc(
    method: str, name: str, moment: datetime, zone: tzinfo, *, given: object, hint: str = ""
) -> datetime:
    """``moment`` in UTC, read in ``zone`` when it is naive; InvalidRequestError naming
    ``name`` and the value ``given`` (then ``hint``) when UTC has no such time (the year 1 at
    +08:00)."""
    try:
        # In the try: a tzinfo whose offset no datetime takes (a day) raises ValueError here.
        if moment.utcoffset() is None:
            moment = moment.replace(tzinfo=zone)
        return moment.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise InvalidRequestError(
            f"{method}(): {name} is out of range: {short(given)}{hint}"
        ) from None


def times_in_utc(method: str, where: str, value: Any, zone: tzinfo, depth: int = 0) -> Any:
    """``value``, JSON data such as ``attr``, with each ``datetime`` in it (in dicts, lists and
    tuples) in UTC, one without an offset read in ``zone``; ``value`` itself when none is in it.

    As ``date_join`` is: a naive one went out as UTC under ``timezone="Asia/Shanghai"`` (eight
    hours off); one with no UTC form (year 1 at +23:00) was a raw OverflowError from the
    converter, and is InvalidRequestError naming it (``attr['joined']``). Nesting past the
    body check's limit is left for that check to refuse.
    """
    if isinstance(value, datetime):
        return in_utc(method, where, value, zone, given=value)
    if depth >= MAX_JSON_DEPTH:
        return value
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(item, (datetime, dict, list, tuple)):
                new = times_in_utc(method, f"{where}[{short(key)}]", item, zone, depth + 1)
                changed = changed or new is not item
                item = new
            out[key] = item
        return out if changed else value
    if isinstance(value, (list, tuple)):
        items = [
            times_in_utc(method, f"{where}[{index}]", item, zone, depth + 1)
            if isinstance(item, (datetime, dict, list, tuple))
            else item
            for index, item in enumerate(value)
        ]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


# 3.10's date.fromisoformat reads 2024-01-01 alone: its refusal of "20240101" (ISO 8601's
# basic form, which 3.11 reads) said it was no ISO 8601 string. The days 3.11 reads, on 3.10.
_BASIC_DAY = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_WEEK_DAY = re.compile(r"([0-9]{4})-W([0-9]{2})(?:-([0-9]))?|([0-9]{4})W([0-9]{2})([0-9])?")
_EXTENDED_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def iso_day(text: str) -> date:
    """The days ``date.fromisoformat`` of Python 3.11 and later reads, on any Python, and no
    other text (``ValueError``: no day).

    Used on every Python: 3.11's (to 3.13's) reads a basic day and ignores any two characters
    after it, so a filter of ``"2024010112"`` (a compact 12:00) was the whole day 2024-01-01,
    a ``_to`` 12 hours past the time meant, where 3.10 refused it.
    """
    if basic := _BASIC_DAY.fullmatch(text):
        return date(*map(int, basic.groups()))
    if week := _WEEK_DAY.fullmatch(text):
        year, number, weekday = week.groups()[:3] if week.group(1) else week.groups()[3:]
        return date.fromisocalendar(int(year), int(number), int(weekday or 1))
    if _EXTENDED_DAY.fullmatch(text):
        return date.fromisoformat(text)
    raise ValueError(f"no ISO 8601 day: {text[:40]!r}")


#: The digits of a fraction of a second past the sixth (a microsecond), which a bound drops.
_PAST_MICROSECONDS = re.compile(r"(?<=[.,][0-9]{6})[0-9]+")


def _parse(method: str, name: str, text: str) -> date | datetime:
    # Full-width digits as their ASCII ones, as date_join reads them: "２０２４-０１-０２" was
    # read as a time, its midnight, and as a _to bound left out the whole day but its first second.
    # Spaces around it as well: "2024-01-01\n" from a file line was read as its midnight, not
    # the whole day, by the time reader (which strips them), and a _to bound lost the day.
    digits = ascii_digits(text).strip()
    try:
        # A bare day in any form 3.11's fromisoformat reads as one ("2024-01-01", "20240101",
        # "2024-W01-1"), on every Python: datetime.fromisoformat reads those too, as midnight,
        # which made a _to bound of "20240101" its first second instead of its last.
        return iso_day(digits)
    except ValueError:
        pass
    # A bound is sent to the second, its fraction dropped (README, "Walking lists"): digits
    # past the microsecond are dropped first, not rounded, as the reader would, to the next
    # microsecond: "09:00:00.9999999Z" became 09:00:01, and a _from of it left out the
    # customers of 09:00:00.
    digits = _PAST_MICROSECONDS.sub("", digits, count=1)
    try:
        # As date_join and the service's times are read: on Python 3.10 as well, forms its
        # fromisoformat refuses ("...09:00:00.5Z", "+0800") were an error there alone.
        return timestamp_as_written(digits)
    except (ValueError, OverflowError):  # OverflowError: no UTC form (year 1 at +08:00)
        raise InvalidRequestError(
            f"{method}(): {name} must be a datetime, a date or an ISO 8601 string,"
            f" not {short(text)}"
        ) from None


def warn_naive(method: str, stacklevel: int = 2) -> None:
    """The once-per-client warning for a naive time under no ``timezone`` setting.

    ``stacklevel`` counts the frames from the caller's frame to show up to this one's caller.
    """
    warnings.warn(
        f"{method}(): a time filter without an offset was read as UTC; pass"
        " DMHubClient(timezone=...) (e.g. 'Asia/Shanghai' or 'UTC'), or aware datetimes",
        NaiveDatetimeWarning,
        stacklevel=stacklevel + 1,
    )
