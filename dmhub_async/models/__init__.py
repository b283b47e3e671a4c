"""The attrs models of the DM Hub customer API: snake_case, nothing about the wire."""

from .customer import Customer, CustomerFields
from .gender import Gender
from .identity import CustomerIdentity, Identity
from .page import Page
from .statistics import CustomerStatistics

__all__ = [
    "Customer",
    "CustomerFields",
    "CustomerIdentity",
    "CustomerStatistics",
    "Gender",
    "Identity",
    "Page",
]
