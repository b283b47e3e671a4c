"""A local DM Hub to test against: the simulator, its fault injection, a fake clock, and pytest
fixtures."""

from ._clock import FakeClock
from ._faults import Counters, Faults
from ._serve import serve_forever
from ._simulator import DMHubSimulator

__all__ = [
    "Counters",
    "DMHubSimulator",
    "FakeClock",
    "Faults",
    "serve_forever",
]
