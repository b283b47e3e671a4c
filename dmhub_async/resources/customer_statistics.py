"""``dm.customer_statistics``: order and activity figures per customer."""

from __future__ import annotations

from typing import Any, Literal

from .._converter import structure_statistics_list
from .._exceptions import InvalidRequestError
from .._pagination import AsyncPaginator, Dedupe, RawPage
from .._validate import check_id
from ..models.statistics import CustomerStatistics as CustomerStatisticsModel
from ._base import Resource, decode, optional_int, rows_of

__all__ = ["CustomerStatistics"]


class CustomerStatistics(Resource):
    """Customer statistics: ``dm.customer_statistics``."""

    def list(
        self,
        customer_id: int | None = None,
        *,
        page_size: int = 50,
        start_page: int = 1,
        max_items: int | None = None,
        concurrency: int = 1,
        sort_by: str = "id",
        sort_order: Literal["asc", "desc"] = "asc",
    ) -> AsyncPaginator[CustomerStatisticsModel]:
        """Walk the statistics records, of one customer or of all, in order (``meta.hasNext``)."""
        params: dict[str, str] = {"sidx": sort_by, "sord": sort_order}
        if customer_id is not None:
            params["customerId"] = str(check_id("list", customer_id))
        if sort_order not in ("asc", "desc"):
            raise InvalidRequestError(
                f"list(): sort_order must be 'asc' or 'desc', not {sort_order!r}"
            )
        if not isinstance(sort_by, str) or not sort_by:
            raise InvalidRequestError("list(): sort_by must be a field name")
        dedupe: Dedupe = "set"
        if sort_by == "id":
            dedupe = "ascending" if sort_order == "asc" else "descending"
        client = self._client

        async def fetch(number: int, size: int, on_retry: Any) -> RawPage[CustomerStatisticsModel]:
            data = await client.request(
                "GET",
                "/v1/customerStatistics",
                params={**params, "rows": str(size), "page": str(number)},
                on_retry=on_retry,
            )
            items = rows_of(data, "items", "a page of customer statistics")
            meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
            has_next = meta.get("hasNext")
            return RawPage(
                decode(structure_statistics_list, items, "a page of customer statistics"),
                has_next if isinstance(has_next, bool) else None,
                optional_int(meta.get("records")),
                optional_int(meta.get("total")),
            )

        return AsyncPaginator(
            fetch,
            page_size=page_size,
            start_page=start_page,
            max_items=max_items,
            concurrency=concurrency,
            key=_record_id,
            dedupe=dedupe,
        )


def _record_id(record: CustomerStatisticsModel) -> Any:
    return record.id
