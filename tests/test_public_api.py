"""``dmhub_async.__all__``: sorted (by ``sorted()``), complete, and every name documented."""

from __future__ import annotations

import inspect

import dmhub_async
import dmhub_async._auth
import dmhub_async._exceptions
import dmhub_async.models

#: The public names users import from ``dmhub_async``: each one must keep working.
DESIGNED = {
    "DMHubClient",
    "MemoryTokenStore",
    "FileTokenStore",
    "RedisTokenStore",
    "TokenStore",
    "Customer",
    "Identity",
    "CustomerIdentity",
    "CustomerStatistics",
    "Page",
    "Gender",
    "AsyncPaginator",
    "EMPTY_STAGE",
    "RetryPolicy",
}


def public_objects() -> dict[str, object]:
    return {name: getattr(dmhub_async, name) for name in dmhub_async.__all__}


def test_all_is_sorted():
    assert dmhub_async.__all__ == sorted(dmhub_async.__all__)


def test_all_names_exist_once():
    assert len(set(dmhub_async.__all__)) == len(dmhub_async.__all__)
    missing = [name for name in dmhub_async.__all__ if not hasattr(dmhub_async, name)]
    assert missing == []


def test_designed_names_are_exported():
    assert DESIGNED - set(dmhub_async.__all__) == set()


def test_every_error_class_is_exported():
    errors = {
        name
        for name, obj in vars(dmhub_async._exceptions).items()
        if inspect.isclass(obj) and issubclass(obj, dmhub_async.DMHubError)
    }
    # The ten of the error tree in docs/architecture.md, and the ones added since.
    assert errors == {
        "APIConnectionError",
        "APIError",
        "APITimeoutError",
        "AuthenticationError",
        "DMHubError",
        "InvalidRequestError",
        "NotFoundError",
        "RateLimitError",
        "ResponseDecodeError",
        "ServerError",
        "ResponseTooLargeError",  # issue 12: an answer over the client's size cap
        "TokenStoreError",  # issue 13: a token store that fails or is unsafe
    }
    assert errors - set(dmhub_async.__all__) == set()


def test_every_model_and_token_store_is_exported():
    stores = {
        name
        for name, obj in vars(dmhub_async._auth).items()
        if inspect.isclass(obj) and name.endswith("TokenStore")
    }
    wanted = set(dmhub_async.models.__all__) | stores
    assert wanted - set(dmhub_async.__all__) == set()


def test_every_public_class_or_function_in_the_package_namespace_is_in_all():
    stray = [
        name
        for name, obj in vars(dmhub_async).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and name not in dmhub_async.__all__
    ]
    assert stray == []


def test_every_exported_class_and_function_has_a_docstring():
    undocumented = [
        name
        for name, obj in public_objects().items()
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (obj.__doc__ or "").strip()
    ]
    assert undocumented == []


def test_exported_names_are_the_implementations():
    # Users import from dmhub_async only; the objects are the ones the package raises and uses.
    from dmhub_async._client import DMHubClient
    from dmhub_async._exceptions import APIError

    assert dmhub_async.DMHubClient is DMHubClient
    assert dmhub_async.APIError is APIError
    assert isinstance(dmhub_async.__version__, str)
