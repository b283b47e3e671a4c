"""dmhub_async: the async Python SDK for the DM Hub (Convertlab) customer API.

::

    from dmhub_async import DMHubClient

    async with DMHubClient(app_id="...", secret="...") as dm:
        async for customer in dm.customers.list(stage="lead", concurrency=4):
            print(customer.id, customer.name)

PYTEST_DONT_REWRITE: an application may import dmhub_async before it starts pytest (the package
has a pytest plugin, so pytest would rewrite its asserts, and warn that it cannot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_namespace as _lazy_namespace
from ._version import __version__

if TYPE_CHECKING:  # what a type checker sees; at run time each name is imported on first use
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
    from ._pagination import AsyncPaginator, PaginatorStats
    from ._query_time import NaiveDatetimeWarning
    from ._retry import RetryPolicy
    from ._sansio import APIResponse
    from ._shared_rate import RedisRateLimiter
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


def _log_switch() -> None:
    """``DMHUB_LOG=debug|info``, applied when it is set; logging is loaded only then. Before any
    handler of the command line's (whose console script imports this package first), a Ctrl-C
    in logging's import printed Python's traceback, a SIGTERM killed it with no line."""
    import os

    if os.environ.get("DMHUB_LOG", "").strip():
        from ._logging import setup_logging

        setup_logging()


_log_switch()
del _log_switch

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

#: Where each public name lives: imported on its first use (see ._lazy).
_HOME: dict[str, str] = {
    "FileTokenStore": "._auth",
    "MemoryTokenStore": "._auth",
    "RedisTokenStore": "._auth",
    "Token": "._auth",
    "TokenStore": "._auth",
    "DEFAULT_AUTH_ERROR_CODES": "._client",
    "DEFAULT_BASE_URL": "._client",
    "ClientStats": "._client",
    "DMHubClient": "._client",
    "APIConnectionError": "._exceptions",
    "APIError": "._exceptions",
    "APITimeoutError": "._exceptions",
    "AuthenticationError": "._exceptions",
    "DMHubError": "._exceptions",
    "InvalidRequestError": "._exceptions",
    "NotFoundError": "._exceptions",
    "RateLimitError": "._exceptions",
    "ResponseDecodeError": "._exceptions",
    "ResponseTooLargeError": "._exceptions",
    "ServerError": "._exceptions",
    "TokenStoreError": "._exceptions",
    "AsyncPaginator": "._pagination",
    "PaginatorStats": "._pagination",
    "NaiveDatetimeWarning": "._query_time",
    "RetryPolicy": "._retry",
    "APIResponse": "._sansio",
    "RedisRateLimiter": "._shared_rate",
    "Customer": ".models",
    "CustomerFields": ".models",
    "CustomerIdentity": ".models",
    "CustomerStatistics": ".models",
    "Gender": ".models",
    "Identity": ".models",
    "Page": ".models",
    "EMPTY_STAGE": ".resources.customers",
    "CustomerFilters": ".resources.customers",
}

if not TYPE_CHECKING:  # hidden from type checkers: a module __getattr__ makes any name "exist"
    __getattr__, __dir__ = _lazy_namespace(__name__, _HOME, __all__, globals())
