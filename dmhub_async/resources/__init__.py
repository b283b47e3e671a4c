"""One plural class per collection of the API, with verb methods."""

from __future__ import annotations

import warnings
from typing import Any

from .customer_statistics import CustomerStatisticsResource
from .customers import Customers
from .identities import Identities

__all__ = ["CustomerStatisticsResource", "Customers", "Identities"]


def __getattr__(name: str) -> Any:
    # The resource was called CustomerStatistics, as the model still is: one name, two things.
    if name == "CustomerStatistics":
        warnings.warn(
            "dmhub_async.resources.CustomerStatistics is now CustomerStatisticsResource "
            "(dmhub_async.CustomerStatistics is the model)",
            DeprecationWarning,
            stacklevel=2,
        )
        return CustomerStatisticsResource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
