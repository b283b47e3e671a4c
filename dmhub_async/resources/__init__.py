"""One plural class per collection of the API, with verb methods."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .customer_statistics import CustomerStatisticsResource, renamed_resource
from .customers import Customers
from .identities import Identities

__all__ = ["CustomerStatisticsResource", "Customers", "Identities"]


if TYPE_CHECKING:  # a module __getattr__ made any name "exist" (as Any) to a type checker
    CustomerStatistics = CustomerStatisticsResource  # 0.1's name: what __getattr__ gives
else:

    def __getattr__(name: str) -> Any:
        # The resource was called CustomerStatistics, as the model still is: one name, two
        # things.
        if name == "CustomerStatistics":
            return renamed_resource(__name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
