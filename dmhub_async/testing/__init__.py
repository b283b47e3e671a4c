"""A local DM Hub to test against: the simulator, its fault injection, and pytest fixtures."""

from ._faults import Counters, Faults
from ._serve import serve_forever
from ._simulator import DMHubSimulator

__all__ = [
    "Counters",
    "DMHubSimulator",
    "Faults",
    "serve_forever",
]
