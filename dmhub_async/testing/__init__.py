"""A local DM Hub to test against: the simulator, its fault injection, a fake clock, and pytest
fixtures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_namespace as _lazy_namespace

if TYPE_CHECKING:  # what a type checker sees; at run time each name is imported on first use
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

#: Where each public name lives: imported on its first use (see dmhub_async._lazy).
_HOME: dict[str, str] = {
    "Counters": "._faults",
    "DMHubSimulator": "._simulator",
    "FakeClock": "._clock",
    "Faults": "._faults",
    "serve_forever": "._serve",
}

if not TYPE_CHECKING:  # hidden from type checkers: a module __getattr__ makes any name "exist"
    __getattr__, __dir__ = _lazy_namespace(__name__, _HOME, __all__, globals())
