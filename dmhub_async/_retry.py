"""Retry policy: what is retried, how long to wait, when to give up.

The loop itself is ``backoff.on_exception``, built once per client. backoff sleeps with
``asyncio.sleep`` and times with ``datetime.now``, which tests cannot steer, so its own wait is
zero and the real wait happens in our ``on_backoff`` handler through the client's injected
``sleep`` and ``clock``: tests never really wait.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

import attrs
import backoff
from backoff.types import Details

from ._exceptions import (
    APIConnectionError,
    APIError,
    DMHubError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)

__all__ = ["RetryPolicy", "parse_retry_after"]

logger = logging.getLogger("dmhub_async")

T = TypeVar("T")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # pragma: no cover - RFC 9110 dates are GMT
            return None
        seconds = when.timestamp() - now
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer


@attrs.frozen
class RetryPolicy:
    """How a client retries: counts, exponential backoff with full jitter, ``Retry-After``.

    Args:
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts a call).
        initial_delay: the first backoff ceiling in seconds; it doubles each retry.
        max_delay: the largest backoff ceiling.
        retry_after_cap: the longest ``Retry-After`` honoured; a longer one is raised at once as
            :class:`RateLimitError` (its ``retry_after`` says how long the service asked for).
        budget: seconds one call may spend in all (waits included) before it gives up, or None.
        jitter: maps a ceiling to the wait; full jitter (uniform in ``[0, ceiling]``) by default.
    """

    max_retries: int = 4
    initial_delay: float = 0.5
    max_delay: float = 8.0
    retry_after_cap: float = 60.0
    budget: float | None = 300.0
    jitter: Callable[[float], float] = backoff.full_jitter

    def retryable(self, err: BaseException) -> bool:
        """Whether ``err`` is worth another attempt of the same request."""
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None and retry_after > self.retry_after_cap:
            return False  # the caller learns how long from err.retry_after
        if isinstance(err, RateLimitError):
            return True
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
        ceiling = min(self.max_delay, self.initial_delay * 2 ** (retry - 1))
        return self.jitter(ceiling)


@attrs.define
class CallState:
    """One call's progress through its retries."""

    request: Any
    started: float
    retries: int = 0
    refreshed: bool = False
    #: Set when the failure must not be retried by this loop: the token request that failed
    #: had its own retries already, and repeating them here would multiply the attempts.
    final: bool = False
    on_retry: Callable[[], None] | None = None


def _no_wait() -> Generator[float, None, None]:
    while True:
        yield 0.0


def retrying(
    attempt: Callable[[CallState], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
    describe: Callable[[CallState], str],
) -> Callable[[CallState], Awaitable[T]]:
    """Wrap ``attempt`` in the backoff loop that ``policy`` describes."""

    async def on_backoff(details: Details) -> None:
        call: CallState = details["args"][0]
        err: BaseException = details["exception"]  # type: ignore[typeddict-item]
        if call.final:
            raise err
        delay = policy.wait(details["tries"], err)
        if policy.budget is not None and clock() - call.started + delay > policy.budget:
            raise err  # the budget would run out while waiting: give up now
        call.retries += 1
        if call.on_retry is not None:
            call.on_retry()
        logger.info(
            "retrying %s after %s (retry %d of %d) in %.2fs",
            describe(call),
            _why(err),
            call.retries,
            policy.max_retries,
            delay,
        )
        await sleep(delay)

    wrapped: Callable[[CallState], Awaitable[T]] = backoff.on_exception(
        _no_wait,
        DMHubError,
        max_tries=policy.max_retries + 1,
        giveup=lambda err: not policy.retryable(err),
        on_backoff=on_backoff,
        jitter=None,
        logger=None,
    )(attempt)
    return wrapped


def _why(err: BaseException) -> str:
    if isinstance(err, APIError):
        return f"HTTP {err.status} {type(err).__name__}"
    return type(err).__name__
