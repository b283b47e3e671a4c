"""One plural class per collection of the API, with verb methods."""

from __future__ import annotations

from typing import Any

from .customer_statistics import CustomerStatisticsResource, renamed_resource
from .customers import Customers
from .identities import Identities

__all__ = ["CustomerStatisticsResource", "Customers", "Identities"]


def __getattr__(name: str) -> Any:
    # The resource was called CustomerStatistics, as the model still is: one name, two things.
    if name == "CustomerStatistics":
        return renamed_resource(__name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
