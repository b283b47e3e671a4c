"""One plural class per collection of the API, with verb methods."""

from .customer_statistics import CustomerStatistics
from .customers import Customers
from .identities import Identities

__all__ = ["CustomerStatistics", "Customers", "Identities"]
