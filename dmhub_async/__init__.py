"""dmhub_async: the async Python SDK for the DM Hub (Convertlab) customer API.

::

    from dmhub_async import DMHubClient

    async with DMHubClient(app_id="...", secret="...") as dm:
        async for customer in dm.customers.list(stage="lead", concurrency=4):
            print(customer.id, customer.name)
"""

from ._auth import FileTokenStore, MemoryTokenStore, RedisTokenStore, Token, TokenStore
from ._client import DEFAULT_AUTH_ERROR_CODES, DEFAULT_BASE_URL, ClientStats, DMHubClient
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    DMHubError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ResponseDecodeError,
    ResponseTooLargeError,
    ServerError,
    TokenStoreError,
)
from ._logging import setup_logging as _setup_logging
from ._pagination import AsyncPaginator, PaginatorStats
from ._query_time import NaiveDatetimeWarning
from ._retry import RetryPolicy
from ._sansio import APIResponse
from ._shared_rate import RedisRateLimiter
from ._version import __version__
from .models import (
    Customer,
    CustomerFields,
    CustomerIdentity,
    CustomerStatistics,
    Gender,
    Identity,
    Page,
)
from .resources.customers import EMPTY_STAGE, CustomerFilters

_setup_logging()  # DMHUB_LOG=debug|info

__all__ = [  # noqa: RUF022 - plain sorted(), as tests/test_public_api.py checks
    "APIConnectionError",
    "APIError",
    "APIResponse",
    "APITimeoutError",
    "AsyncPaginator",
    "AuthenticationError",
    "ClientStats",
    "Customer",
    "CustomerFields",
    "CustomerFilters",
    "CustomerIdentity",
    "CustomerStatistics",
    "DEFAULT_AUTH_ERROR_CODES",
    "DEFAULT_BASE_URL",
    "DMHubClient",
    "DMHubError",
    "EMPTY_STAGE",
    "FileTokenStore",
    "Gender",
    "Identity",
    "InvalidRequestError",
    "MemoryTokenStore",
    "NaiveDatetimeWarning",
    "NotFoundError",
    "Page",
    "PaginatorStats",
    "RateLimitError",
    "RedisRateLimiter",
    "RedisTokenStore",
    "ResponseDecodeError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "ServerError",
    "Token",
    "TokenStore",
    "TokenStoreError",
    "__version__",
]
