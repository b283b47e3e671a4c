"""Retry policy: what is retried, how long to wait, when to give up: the whole of it, here.

:class:`RetryPolicy` says it; :func:`retrying` hands it to ``backoff.on_exception`` the way
backoff's docs show: ``giveup=`` for what is not worth another try, ``max_tries=`` for the count,
and a wait generator (:meth:`RetryPolicy.waits`) that honours ``Retry-After`` and stops (so
backoff gives up) when the next wait would overrun the call's time budget. backoff does the
waiting, with the client's injected ``sleep`` (see :func:`_sleeping_with`), and times the budget
with the client's injected ``clock``: tests never really wait.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import functools
import itertools
import math
import re
import types
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterable
from datetime import timezone
from typing import Any, TypeVar, cast

import attrs
import backoff
from backoff.types import Details

from ._exceptions import (
    APIConnectionError,
    APIError,
    DMHubError,
    InvalidRequestError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)
from ._validate import check_number, short

__all__ = [
    "FINAL_5XX",
    "REQUEST_TIMEOUT",
    "RETRY_TALLY",
    "RetryPolicy",
    "RetryTally",
    "longest_retry_after",
    "parse_retry_after",
    "retrying",
]


class RetryTally:
    """The retries the API calls of a block have made so far, counted as each is sent.

    A call's answer says how many retries it took; a call cancelled while it waited to retry
    (a page requested ahead, dropped when its walk ended or repaired) answers nothing, and its
    retries went uncounted by the walk (and an export's report) though the client counted
    them. Set in :data:`RETRY_TALLY`, it counts them as they happen (a token fetch's excepted).
    """

    __slots__ = ("retries",)

    def __init__(self) -> None:
        self.retries = 0


#: The tally of the calls made in this context, if one is kept (:class:`RetryTally`).
RETRY_TALLY: contextvars.ContextVar[RetryTally | None] = contextvars.ContextVar(
    "dmhub_async_retry_tally", default=None
)

T = TypeVar("T")

#: 5xx answers that say the request was not carried out and will not be: 501 (the method is
#: not implemented), 505 (the HTTP version) and 511 (a captive portal's proxy wants a login).
#: Not retried, and a write answered so was not applied (see ``_sansio.build_error``).
FINAL_5XX = frozenset({501, 505, 511})

#: 408 Request Timeout: the server (or a proxy) gave up waiting for the request and did not
#: carry it out (RFC 9110, 15.5.9), as when its keep-alive timeout closes a connection as a
#: request arrives. Retried for any method, a create too: nothing was written. (aiohttp
#: drops a connection that sent it while idle; one that crossed the request is its answer.)
REQUEST_TIMEOUT = 408

#: When the first attempt of a call that is now retried began (its failure -> clock time):
#: that attempt ran before backoff's loop started the wait generator, which times the budget.
_first_attempt_started: weakref.WeakKeyDictionary[BaseException, float] = (
    weakref.WeakKeyDictionary()
)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (measured
    from ``now``, epoch seconds)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # delay-seconds are digits (RFC 9110): a negative one is no answer, as garbage is,
        # and backoff applies. Read as "now", every retry went at once to a throttling server.
        # Nor is an endless one ("inf", "1e400"): it gave up at once, or with an unbounded cap
        # and budget, slept for ever.
        if not 0 <= seconds < math.inf:  # NaN: no answer either (-0: 0)
            return None
        return max(0.0, seconds)
    when = http_date(value)
    if when is None:
        return None
    return max(0.0, when - now)  # a date gone by: now


def http_date(value: str) -> float | None:
    """The epoch seconds of an HTTP date (any of RFC 9110's three forms), or None."""
    value = value.strip()
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        # OverflowError: a field of more digits than a C long ("99999999999999999999:00:00"),
        # raw out of a 429's call (its Date), of a plan and of a late check.
        return None
    if when.tzinfo is None:
        # GMT, as every HTTP date is (RFC 9110, 5.6.7): asctime's form writes no zone, and
        # "-0000" is RFC 5322's UTC. Read as naive they were dropped, and backoff's 0.5 s
        # sent the retry to the server that had asked for minutes. A zone not known (a
        # value joined with another, "... GMT, 30") is still no date.
        if not (_ASCTIME.fullmatch(value) or value.endswith(" -0000")):
            return None
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


#: An HTTP date in asctime's form (RFC 9110, 5.6.7: ``Sun Nov  6 08:49:37 1994``), in GMT.
_ASCTIME = re.compile(r"[A-Za-z]{3} [A-Za-z]{3} [ 0-9]?[0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}")


def longest_retry_after(values: Iterable[str], now: float, date: str | None = None) -> float | None:
    """The longest wait the ``Retry-After`` headers of one answer ask for (None: none readable).

    A ``Retry-After`` date is the server's clock's: it is measured from the answer's ``Date``
    (``date``, the same clock's) when that is readable, and from ``now`` (this machine's)
    only without one. Measured from ``now``, a machine whose clock was 10 minutes behind the
    service's read "10 minutes" for the 1 s asked for (above the cap: raised at once, its
    ``retry_after`` an hour for an hour's skew), and one ahead retried at once, every retry.

    The field is no list (RFC 9110 sections 10.2.3 and 5.3): sent more than once, the message
    is invalid, yet a proxy or gateway that throttles too may add its own to the service's. Each
    asks not to be called again before its time, so the longest is kept; the first alone sent
    the retry to a gateway that had asked for 30 s after the service's 2 s.
    """
    served = None if not date else http_date(date)
    if served is not None:
        now = served
    waits = [
        wait
        for value in values
        for element in _elements(value)
        if (wait := parse_retry_after(element, now)) is not None
    ]
    return max(waits, default=None)


#: A date's day before its comma: ``Wed`` of ``Wed, 21 Oct 2015 07:28:00 GMT`` (RFC 850's
#: ``Wednesday`` too).
_DAY_NAME = re.compile(r"[A-Za-z]{3,9}")


def _elements(value: str) -> list[str]:
    """The ``Retry-After`` values one header line holds: itself, or the values a proxy joined
    with commas (``2, 30``), as it may join a list field's repeated lines.

    A date holds a comma of its own (``Wed, 21 Oct ...``): its day name is joined back on.
    """
    if "," not in value or parse_retry_after(value, 0.0) is not None:
        return [value]
    elements: list[str] = []
    for part in value.split(","):
        if elements and _DAY_NAME.fullmatch(elements[-1].strip()):
            elements[-1] += "," + part
        else:
            elements.append(part)
    return elements


@attrs.frozen
class RetryPolicy:
    """How a client retries: counts, exponential backoff with full jitter, ``Retry-After``.

    Args:
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts a call).
        initial_delay: the first backoff ceiling in seconds; it doubles each retry.
        max_delay: the largest backoff ceiling.
        retry_after_cap: the longest ``Retry-After`` honoured; a longer one is raised at once,
            as :class:`RateLimitError` on a 429 or :class:`ServerError` on a 503 (its
            ``retry_after`` says how long the service asked for). Those two statuses' alone
            are read: another 5xx is retried with backoff, whatever its ``Retry-After``.
        budget: seconds one call may spend in all (waits included) before it gives up, or None.
        jitter: maps a ceiling to the wait; full jitter (uniform in ``[0, ceiling]``) by default.

    Raises:
        InvalidRequestError: a bad setting (delays must be finite numbers >= 0; the cap and the
            budget may be ``inf``), when the policy is made.
    """

    max_retries: int = 4
    initial_delay: float = 0.5
    max_delay: float = 8.0
    retry_after_cap: float = 60.0
    budget: float | None = 300.0
    jitter: Callable[[float], float] = backoff.full_jitter

    def __attrs_post_init__(self) -> None:
        # Checked here, not when a call first retries: a bad policy failed, or waited for ever,
        # only when the service was already failing.
        check_number("max_retries", self.max_retries, 0, inclusive=True, kind=int)
        seconds = "a number of seconds"
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            check_number(name, value, 0, inclusive=True, finite=True, what=seconds)
        # Unbounded is a choice here: honour any Retry-After, spend any time.
        check_number("retry_after_cap", self.retry_after_cap, 0, inclusive=True, what=seconds)
        if self.budget is not None:
            check_number("budget", self.budget, 0, inclusive=False, what=seconds)
        if not callable(self.jitter):
            raise InvalidRequestError(f"jitter must be a function, not {short(self.jitter)}")

    def retryable(self, err: BaseException) -> bool:
        """Whether ``err`` is worth another attempt of the same request."""
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None and retry_after > self.retry_after_cap:
            return False  # the caller learns how long from err.retry_after
        if isinstance(err, RateLimitError):
            return True
        if isinstance(err, APIError) and err.status == REQUEST_TIMEOUT:
            # Not carried out, whatever the method (see REQUEST_TIMEOUT); unknown only when an
            # earlier attempt of a write that must not be repeated may have been applied.
            return not err.outcome_unknown
        if isinstance(err, ServerError) and err.status in FINAL_5XX:
            return False
        if isinstance(err, APIConnectionError) and err._final:
            return False  # the same failure again: an untrusted certificate, a proxy's 407
        if isinstance(err, (APIConnectionError, ServerError, ResponseDecodeError)):
            # The session layer marks outcome_unknown where a repeat could write twice.
            return not err.outcome_unknown
        return False

    def wait(self, retry: int, err: BaseException) -> float:
        """Seconds to wait before retry number ``retry`` (1-based) after ``err``."""
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None:
            # Honour the service, plus a little jitter so that clients don't stampede together.
            return float(retry_after) + self.jitter(min(1.0, 0.1 * float(retry_after)))
        return self.jitter(self.ceiling(retry))

    def ceiling(self, retry: int) -> float:
        """The longest backoff before retry number ``retry`` (1-based), jitter aside."""
        # 2.0 ** 1000 and no further: past 1,024 retries 2 ** (retry - 1) is no float (a raw
        # OverflowError, for a policy that retries until it works); any delay is capped anyway.
        return min(self.max_delay, self.initial_delay * 2.0 ** min(retry - 1, 1000))

    def waits(self, clock: Callable[[], float]) -> Generator[float, BaseException, None]:
        """backoff's wait generator for one call: each failure in, the wait before the next try out.

        backoff starts it as the call starts and sends it every failure; when the next wait
        would overrun :attr:`budget` it ends, and backoff gives up with that failure.
        (backoff's own ``max_time`` reads the real clock and shortens the last wait instead.)
        """
        started = clock()
        err = yield 0.0  # backoff primes the generator; this value is not used
        # The call's first attempt ran before backoff's loop (see retrying): count it too.
        started = _first_attempt_started.pop(err, started)
        for retry in itertools.count(1):
            delay = self.wait(retry, err)
            # Not kept over the wait: the failure's traceback holds backoff's frame, which holds
            # this generator, a cycle that kept the client's session for the collector.
            del err
            if self.budget is not None and clock() - started + delay > self.budget:
                return
            err = yield delay  # noqa: F841 (read at the loop's top; ruff misses it past the del)


def _handed_over(
    err: DMHubError, started: float, policy: RetryPolicy, gives_up: Callable[[BaseException], bool]
) -> list[BaseException] | None:
    """The failure of a call's first attempt, begun at ``started``, as backoff's loop's first
    try (see :func:`retrying`); None when it is not worth a retry."""
    if policy.max_retries < 1 or gives_up(err):
        return None
    _first_attempt_started[err] = started
    return [err]


def retrying(
    attempt: Callable[..., Awaitable[T]],
    policy: RetryPolicy,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    on_backoff: Callable[[Details], None],
    giveup: Callable[[BaseException], bool] = lambda err: False,
) -> tuple[Callable[..., Awaitable[T]], Callable[..., Awaitable[T]]]:
    """``attempt`` retried as ``policy`` says; ``giveup`` names more failures not to retry.

    Two ways in: ``retried(*args)`` makes ``attempt(*args)`` the first attempt, retried;
    ``going_on(rest, started, *args)`` takes a call whose first attempt began (by the clock) at
    ``started`` and ends with ``rest`` (an awaitable), and retries it with ``attempt(*args)``,
    as if ``retried`` had made that attempt: the session sends the first attempt of a call
    whose token is held itself, and only a failure comes here.

    ``on_backoff`` hears of each retry before its wait (backoff's ``details``: ``args``,
    ``tries``, ``wait``, ``exception``).
    """
    # backoff's stubs say a wait generator is sent nothing; it is sent each failure.
    waits = cast(
        "Callable[..., Generator[float, None, None]]", functools.partial(policy.waits, clock)
    )

    def gives_up(err: BaseException) -> bool:
        return not policy.retryable(err) or giveup(err)

    async def replaying(*args: Any, _first: list[BaseException]) -> T:
        if _first:  # backoff's first try: the failure the call's first attempt met
            raise _first.pop()
        return await attempt(*args)

    def backoff_loop() -> Callable[..., Awaitable[T]]:
        return _sleeping_with(
            backoff.on_exception(
                waits,
                DMHubError,
                max_tries=policy.max_retries + 1,
                giveup=gives_up,
                on_backoff=on_backoff,
                jitter=None,  # policy.wait jitters already, differently for Retry-After
                logger=None,  # the session logs each retry itself, with the token redacted
            )(replaying),
            sleep,
        )

    # Built at the first retry this function makes, not up front: decorating costs about 60 us,
    # and most clients (and every with_options() copy) never retry.
    loop: Callable[..., Awaitable[T]] | None = None

    # Most calls succeed at once: the first attempt runs bare, and only a failure worth a
    # retry enters backoff's loop, which meets that failure again as its own first try (so it
    # counts, waits, logs and gives up exactly as if it had made the attempt). backoff's loop
    # costs about 2 us a call even when nothing fails (its wait generator, a datetime, a
    # details dict); this way 0.5 us.
    # going_on is the one closure more the session's own first attempt needs. Whatever is
    # made here sat in a cycle with its session (which holds these closures, they its bound
    # _attempt), left for the collector, until the session became an argument (_session.py's
    # _build_retries): an attrs instance and three closures more a call of retrying() cost a
    # short-lived client 38k instructions, 1.4% (bench_instructions --question 4s), most of it
    # in the collector and the allocator.
    async def going_on(rest: Awaitable[T], started: float, *args: Any) -> T:
        nonlocal loop
        try:
            return await rest
        except DMHubError as err:
            if (first := _handed_over(err, started, policy, gives_up)) is None:
                raise
        if loop is None:
            loop = backoff_loop()
        return await loop(*args, _first=first)

    async def retried(*args: Any) -> T:
        # going_on(attempt(*args), clock(), *args), written out: a coroutine less a call.
        nonlocal loop
        started = clock()
        try:
            return await attempt(*args)
        except DMHubError as err:
            if (first := _handed_over(err, started, policy, gives_up)) is None:
                raise
        if loop is None:
            loop = backoff_loop()
        return await loop(*args, _first=first)

    return retried, going_on


class _AsyncioSleepingWith:
    """The asyncio module as backoff's loop sees it, with another ``sleep``."""

    def __init__(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        self.sleep = sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def _sleeping_with(
    loop: Callable[..., Awaitable[T]], sleep: Callable[[float], Awaitable[None]]
) -> Callable[..., Awaitable[T]]:
    """backoff's retry ``loop``, waiting with ``sleep`` instead of ``asyncio.sleep``.

    backoff 2.2 takes no sleep argument: its async loop ends each round with
    ``await asyncio.sleep(seconds)``, looking ``asyncio`` up in its own module's namespace
    (backoff/_async.py). So that the client's ``sleep=`` (a fake clock in tests) does the waiting
    backoff decided on, the loop function is rebuilt over a copy of that namespace in which
    ``asyncio.sleep`` is the client's. Nothing global changes; the same code runs.
    """
    if not isinstance(loop, types.FunctionType) or "asyncio" not in loop.__code__.co_names:
        raise RuntimeError("backoff's async loop no longer sleeps through asyncio.sleep")
    namespace = {**loop.__globals__, "asyncio": _AsyncioSleepingWith(sleep)}
    rebuilt: Callable[..., Awaitable[T]] = types.FunctionType(
        loop.__code__, namespace, loop.__name__, loop.__defaults__, loop.__closure__
    )
    return rebuilt


async def _probe() -> None:  # pragma: no cover - never called: only decorated
    """A coroutine function to decorate, for the check below."""


# A backoff whose loop no longer sleeps through asyncio.sleep fails here, at import, rather than
# at some client's first retry (retrying() builds its loop only then).
_sleeping_with(backoff.on_exception(backoff.constant, DMHubError)(_probe), asyncio.sleep)
