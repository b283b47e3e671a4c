"""One plural class per collection of the API, with verb methods."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .customer_statistics import CustomerStatisticsResource, renamed_resource_getattr
from .customers import Customers
from .identities import Identities

__all__ = ["CustomerStatisticsResource", "Customers", "Identities"]


if TYPE_CHECKING:  # a module __getattr__ made any name "exist" (as Any) to a type checker
    CustomerStatistics = CustomerStatisticsResource  # 0.1's name: what __getattr__ gives
else:
    __getattr__ = renamed_resource_getattr(__name__)
