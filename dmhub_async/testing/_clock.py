"""`FakeClock`: time that moves only when a test or a sleeping client moves it."""

from __future__ import annotations

import asyncio

from .._validate import check_number

#: Turns in a row a sleeper must be the earliest before it wakes: the other tasks are idle.
_SETTLE_TURNS = 10


class FakeClock:
    """Wall-clock seconds that move only by hand or by `sleep`, which records each wait.

    Pass ``clock=fake, sleep=fake.sleep`` to a ``DMHubClient``: its retries, ``Retry-After``
    waits and rate limiting then take no real time, and ``fake.waits`` lists what it waited.
    `sleep` keeps virtual time: the earliest sleeper wakes first, once the other tasks have had
    their turns, and the clock then jumps to its wake time, so concurrent sleepers see the times
    they would see for real.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        # Checked: a start of "x" or NaN was taken, and the client's first reading of the
        # clock failed (or compared false with every deadline).
        check_number("FakeClock(): start", start, -1e18, inclusive=True, finite=True)
        self.now = start
        """The current time, in epoch seconds."""
        self.waits: list[float] = []
        """Every wait asked of `sleep`, in order, in seconds."""
        self._wakes: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (a number >= 0: a wall clock a test moves back
        is what the client guards against, not what this clock is for)."""
        check_number("advance(): seconds", seconds, 0, inclusive=True, finite=True)
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of virtual time (no real time), as ``asyncio.sleep`` would."""
        self.waits.append(seconds)
        wake = self.now + max(0.0, seconds)
        self._wakes.append(wake)
        try:
            settled = 0
            while settled < _SETTLE_TURNS:
                await asyncio.sleep(0)
                settled = settled + 1 if min(self._wakes) >= wake else 0
            self.now = max(self.now, wake)
        finally:
            self._wakes.remove(wake)

    def __repr__(self) -> str:
        return f"<FakeClock now={self.now} waits={len(self.waits)}>"
