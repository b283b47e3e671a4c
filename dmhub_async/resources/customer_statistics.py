"""``dm.customer_statistics``: order and activity figures per customer."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from .._converter import read_statistics_page, wire_names
from .._exceptions import InvalidRequestError
from .._pagination import AsyncPaginator
from .._validate import check_id, check_query, short
from ..models.statistics import CustomerStatistics as CustomerStatisticsModel
from ._filters import wire_field
from ._pages import items_page, paginate
from ._resource import Resource

__all__ = ["CustomerStatisticsResource"]


class CustomerStatisticsResource(Resource):
    """Customer statistics: ``dm.customer_statistics``."""

    def list(
        self,
        customer_id: int | None = None,
        *,
        page_size: int = 50,
        start_page: int = 1,
        max_items: int | None = None,
        concurrency: int = 1,
        sort_by: str | None = "id",
        sort_order: Literal["asc", "desc"] | None = "asc",
    ) -> AsyncPaginator[CustomerStatisticsModel]:
        """Walk the statistics records, of one customer or of all, in order (``meta.hasNext``).

        ``sort_by`` is a field of :class:`CustomerStatistics` by its name (``"total_score"``) or
        the wire's (``"totalScore"``); anything else is refused before a request. None, for
        either, is the default, as in ``customers.list``.
        """
        # None is "not given", as customers.list takes it: refused here, it broke a caller
        # passing its own optional sort on to both.
        sort_by = "id" if sort_by is None else sort_by
        sort_order = "asc" if sort_order is None else sort_order
        if sort_order not in ("asc", "desc"):
            raise InvalidRequestError(
                f"list(): sort_order must be 'asc' or 'desc', not {short(sort_order)}"
            )
        params: dict[str, str] = {
            "sidx": wire_field(
                "list", sort_by, _WIRE, "customer statistics field", param="sort_by"
            ),
            "sord": sort_order,
        }
        if customer_id is not None:
            params["customerId"] = str(check_id("list", customer_id))
        check_query("list", params)
        read_page = items_page(read_statistics_page, "a page of customer statistics")
        return paginate(
            self._session,
            "/v1/customerStatistics",
            params,
            read_page,
            page_size=page_size,
            start_page=start_page,
            max_items=max_items,
            concurrency=concurrency,
            key=_record_id,
        )


#: The wire name of each statistics field: sort_by takes either (``total_score`` was sent as
#: given, and the service refused it).
_WIRE = wire_names(CustomerStatisticsModel)


#: A record's id, in C: the walk reads it from every record.
_record_id: Callable[[CustomerStatisticsModel], Any] = operator.attrgetter("id")


def renamed_resource(module: str) -> type[CustomerStatisticsResource]:
    """0.1's name of the resource, ``CustomerStatistics`` (the model's name now), looked up in
    ``module``: the resource, with a DeprecationWarning pointing at the user's import."""
    warnings.warn(
        f"{module}.CustomerStatistics is now CustomerStatisticsResource "
        "(dmhub_async.CustomerStatistics is the model)",
        DeprecationWarning,
        stacklevel=3,  # this function, the module's __getattr__, the import
    )
    return CustomerStatisticsResource


def renamed_resource_getattr(module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that gives 0.1's ``CustomerStatistics`` (see
    :func:`renamed_resource`) and no other name: 0.1 defined the resource under the model's
    name, here and in the package, and an import of it must not quietly give the model."""

    def __getattr__(name: str) -> Any:
        if name == "CustomerStatistics":
            return renamed_resource(module)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


if TYPE_CHECKING:  # a module __getattr__ made any name "exist" (as Any) to a type checker
    CustomerStatistics = CustomerStatisticsResource  # 0.1's name: what __getattr__ gives
else:
    __getattr__ = renamed_resource_getattr(__name__)
