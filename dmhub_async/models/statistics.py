"""Per-customer order and activity statistics."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

__all__ = ["CustomerStatistics"]


@attrs.define(kw_only=True)
class CustomerStatistics:
    """A customer's order statistics and activity score (``GET /v1/customerStatistics``).

    Amounts and scores are ``Decimal``; unknown response fields are kept in ``extra`` under
    their wire names.
    """

    id: int | None = None
    customer_id: int | None = None
    first_order_date: datetime | None = None
    last_order_date: datetime | None = None
    last_order_days: int | None = None
    last_updated: datetime | None = None
    latest30days_score: Decimal | None = None
    order_amt: Decimal | None = None
    order_amta: Decimal | None = None
    order_apct: Decimal | None = None
    order_total: int | None = None
    order_total_amount: Decimal | None = None
    total_score: Decimal | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)
