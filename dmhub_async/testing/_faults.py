"""Fault injection settings of the simulator, and the counters of what it served."""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from fnmatch import fnmatchcase

from .._validate import check_flag, check_number

#: Every fault kind the simulator knows, by the name used in scripts and counters.
FAULT_KINDS: frozenset[str] = frozenset(
    {
        "429",  # 429 with Retry-After in seconds
        "429-no-retry-after",  # 429 without Retry-After
        "429-http-date",  # 429 with Retry-After as an HTTP date
        "500",
        "502",
        "503",
        "504",  # 5xx with a JSON error body
        "html",  # 502 with an HTML page from a gateway, not JSON
        "reset",  # the connection is dropped before the request is handled
        "truncated",  # the request is handled; half the body arrives, short of Content-Length
        "reset-after-write",  # the request is handled (data changed), then the connection drops
    }
)
#: Kinds applied before the handler runs: the request has no effect.
BEFORE_HANDLER: frozenset[str] = FAULT_KINDS - {"truncated", "reset-after-write"}
OK = "ok"

DEFAULT_KINDS: tuple[str, ...] = ("429", "500", "503", "reset")


class Faults:
    """What the simulator does wrong, and when; every attribute can be changed while it runs,
    and is checked when it is set (``InvalidRequestError``; ``ValueError`` for unknown kinds, or
    none).

    Faults and latency apply to requests whose path matches ``paths`` (an iterable of
    ``fnmatch`` patterns, optionally prefixed by a method and a space: ``"GET /v1/customers"``,
    ``"/v1/customers/*"``; a string, or a pattern that can match no path, is refused); by
    default every ``/v1`` path, never the token endpoint unless a pattern names it.
    A scripted fault (see `script`) is taken first; otherwise each request draws one of
    ``kinds`` with probability ``rate``, from a random generator seeded by ``seed``: one seed,
    one schedule, in every run (a set of kinds, such as ``ALL_KINDS``, is taken sorted).

    aiohttp's client (3.10 and later) silently re-sends an idempotent request (GET, PUT,
    DELETE) once when the connection drops; with ``drop_resent`` (the default) the simulator
    drops that immediate re-send too, so a ``"reset"`` reaches the caller as a
    ``ServerDisconnectedError``. This SDK's client sends a PUT or a DELETE once, and an older
    aiohttp (its ``User-Agent`` says which) any request: its next one is its own retry, never
    dropped.
    """

    ALL_KINDS: frozenset[str] = FAULT_KINDS
    """Every fault kind: ``"429"``, ``"429-no-retry-after"``, ``"429-http-date"``, ``"500"``,
    ``"502"``, ``"503"``, ``"504"``, ``"html"``, ``"reset"``, ``"truncated"``,
    ``"reset-after-write"``."""

    def __init__(
        self,
        *,
        rate: float = 0.0,
        kinds: Iterable[str] = DEFAULT_KINDS,
        latency: float = 0.0,
        latency_jitter: float = 0.0,
        retry_after: int = 1,
        paths: Iterable[str] | None = None,
        drop_resent: bool = True,
        seed: int | None = 0,
    ) -> None:
        self.rate = rate
        self.kinds = kinds  # any iterable, kept as a tuple
        self.latency = latency
        self.latency_jitter = latency_jitter
        self.retry_after = retry_after
        self.paths = paths
        check_flag("Faults", "drop_resent", drop_resent)  # "no" was true
        self.drop_resent = drop_resent
        self._dropped: tuple[str, str, float] | None = None
        self._script: deque[str] = deque()
        self._rng = random.Random(seed)

    # Checked when set, at any time: a fault rate of 2 or an infinite latency set on a running
    # simulator was taken, then failed (or waited for ever) inside a request.
    @property
    def rate(self) -> float:
        """The share of matching requests that draw a fault, from 0 to 1."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        check_number("rate", value, 0, inclusive=True, what="a share from 0 to 1", high=1)
        self._rate = value

    @property
    def kinds(self) -> tuple[str, ...]:
        """The fault kinds a request draws from (see ``ALL_KINDS``)."""
        return self._kinds

    @kinds.setter
    def kinds(self, value: Iterable[str]) -> None:
        kinds = _kinds_of("kinds", value)
        if not kinds:
            # Taken, a rate drew no fault, ever, and a resilience test passed without one.
            raise ValueError(
                "kinds is empty: no fault could be drawn; set rate=0 (or call clear()) for none"
            )
        _check_kinds(kinds)
        self._kinds = kinds

    @property
    def latency(self) -> float:
        """Seconds every matching request waits before it is answered."""
        return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        check_number("latency", value, 0, inclusive=True, finite=True, what=_SECONDS)
        self._latency = value

    @property
    def latency_jitter(self) -> float:
        """Up to this many seconds more, drawn for each request."""
        return self._latency_jitter

    @latency_jitter.setter
    def latency_jitter(self, value: float) -> None:
        check_number("latency_jitter", value, 0, inclusive=True, finite=True, what=_SECONDS)
        self._latency_jitter = value

    @property
    def retry_after(self) -> int:
        """The ``Retry-After`` seconds of a ``"429"`` fault."""
        return self._retry_after

    @retry_after.setter
    def retry_after(self, value: int) -> None:
        # A header value: a whole number of seconds that can be written out.
        check_number("retry_after", value, 0, inclusive=True, kind=int, high=2**31 - 1)
        self._retry_after = value

    @property
    def paths(self) -> tuple[str, ...] | None:
        """The patterns of the requests faults and latency apply to (None: every ``/v1`` path)."""
        return self._paths

    @paths.setter
    def paths(self, value: Iterable[str] | None) -> None:
        self._paths = None if value is None else _paths_of(value)

    def script(self, kinds: Iterable[str]) -> None:
        """Queue faults taken one per matching request (``"ok"`` serves normally), then rate."""
        queued = list(_kinds_of("script", kinds))  # script("500") said: unknown '0', '5'
        _check_kinds(k for k in queued if k != OK)
        self._script.extend(queued)

    @property
    def scripted(self) -> int:
        """How many scripted entries are still queued."""
        return len(self._script)

    def clear(self) -> None:
        """Turn every fault and all latency off and drop the script."""
        self.rate = 0.0
        self.latency = 0.0
        self.latency_jitter = 0.0
        self.paths = None
        self._script.clear()

    def applies_to(self, method: str, path: str, route: str) -> bool:
        """Whether faults and latency apply to this request."""
        if self.paths is None:
            return path.startswith("/v1/")
        for pattern in self.paths:
            want_method, _, want_path = pattern.rpartition(" ")
            if want_method and want_method.upper() != method:
                continue
            if fnmatchcase(path, want_path) or fnmatchcase(route, want_path):
                return True
        return False

    def next_latency(self) -> float:
        """Seconds to wait before answering this request."""
        if self.latency_jitter > 0:
            return self.latency + self._rng.uniform(0, self.latency_jitter)
        return self.latency

    def next_fault(self) -> str | None:
        """The fault kind for this request, or None to serve it normally."""
        if self._script:
            kind = self._script.popleft()
            return None if kind == OK else kind
        if self.rate > 0 and self.kinds and self._rng.random() < self.rate:
            return self._rng.choice(self.kinds)
        return None

    def dropped(self, method: str, target: str) -> None:
        """Note a dropped connection, so that its immediate re-send is dropped too."""
        if self.drop_resent and method in _RESENT_METHODS:
            self._dropped = (method, target, time.monotonic() + _RESEND_WINDOW)

    def is_resend(self, method: str, target: str) -> bool:
        """Whether this request re-sends the one just dropped (and forget that drop)."""
        dropped = self._dropped
        if dropped is None:
            return False
        if time.monotonic() >= dropped[2]:
            self._dropped = None
            return False
        if dropped[0] == method and dropped[1] == target:
            self._dropped = None
            return True
        return False


_SECONDS = "a number of seconds"
_RESEND_WINDOW = 1.0  # seconds: aiohttp re-sends at once, on a new connection
#: What aiohttp re-sends by itself: idempotent methods only. A POST seen again is the client's
#: own retry, and a fault script must count it as one.
_RESENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def _kinds_of(name: str, value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):  # "500" is not the kinds "5", "0", "0"
        raise ValueError(f"{name} takes an iterable of fault kinds, not the string {value!r}")
    if isinstance(value, AbstractSet):
        # A set's order is its strings' hashes, which PYTHONHASHSEED changes: ALL_KINDS gave
        # each run its own fault schedule for one seed. Sorted, a seed is one schedule.
        return tuple(sorted(value))
    return tuple(value)


def _paths_of(value: Iterable[str]) -> tuple[str, ...]:
    # Unchecked, "/v1/customers" was kept as its characters and "GET/v1/customers" as a
    # pattern no path matches: no fault ever fired, and a resilience test passed without one.
    if isinstance(value, str):
        raise ValueError(f"paths takes an iterable of patterns, not the string {value!r}")
    paths = tuple(value)
    for pattern in paths:
        method, _, path = pattern.rpartition(" ") if isinstance(pattern, str) else ("", "", "")
        # The method is compared as it is written: "GTE", "*" or "GET " (two spaces) matched
        # no request, and no fault fired, as for a path without its slash.
        if not path.startswith(("/", "*", "?", "[")) or (method and method.upper() not in _METHODS):
            raise ValueError(
                f"paths: {pattern!r} matches no request; a pattern is a path such as "
                '"/v1/customers/*", optionally after a method and a space: "GET /v1/customers"'
                f" (a method is one of {', '.join(sorted(_METHODS))})"
            )
    return paths


#: The methods a pattern may name: those a client sends (the simulator serves GET, POST, PUT
#: and DELETE; a test may send others to see them refused).
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def _check_kinds(kinds: Iterable[str]) -> None:
    unknown = sorted(set(kinds) - FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {sorted(FAULT_KINDS)}")


class Counters:
    """What the simulator served: requests by route, statuses, faults, tokens."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        self.requests: Counter[str] = Counter()
        """Requests by route path, e.g. ``"/v1/customers/{id}"`` or ``"/security/accesstoken"``."""
        self.routes: Counter[str] = Counter()
        """Requests by method and route path, e.g. ``"GET /v1/customers"``."""
        self.statuses: Counter[int] = Counter()
        """Responses by HTTP status (a connection dropped, by a fault or the client, is not)."""
        self.faults: Counter[str] = Counter()
        """Faults fired, by kind."""
        self.errors: Counter[int | str] = Counter()
        """Error bodies sent, by ``error_code`` (faults excluded)."""
        self.tokens_issued = 0
        """Access tokens handed out by the token endpoint."""
        self.mutations = 0
        """Customers inserted or deleted by `DMHubSimulator.mutate_every` hooks."""

    @property
    def total(self) -> int:
        """Every request received."""
        return sum(self.requests.values())

    def __repr__(self) -> str:
        return (
            f"Counters(requests={dict(self.requests)}, statuses={dict(self.statuses)}, "
            f"faults={dict(self.faults)}, tokens_issued={self.tokens_issued})"
        )
