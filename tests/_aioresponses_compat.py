"""aioresponses on every aiohttp the package allows, 3.14 included.

aioresponses 0.7.9 builds its mocked ``ClientResponse`` with the constructor arguments of aiohttp
up to 3.13. aiohttp 3.14 added a required keyword, ``stream_writer`` (the request's writer, read
only for ``output_size`` once the request is sent), so every mocked answer fails with a
``TypeError`` there. `install` points aioresponses at a ``ClientResponse`` that supplies the
missing argument: a writer that sent nothing, as a mock sends nothing. On an aiohttp without the
argument it changes nothing.
"""

from __future__ import annotations

import inspect
from typing import Any

import aioresponses.core
from aiohttp import ClientResponse

#: Whether this aiohttp's ClientResponse wants the request's stream writer.
NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(ClientResponse.__init__).parameters


class _NothingSent:
    """The stream writer of a request that never went out: zero bytes written."""

    output_size = 0


class MockResponse(ClientResponse):
    """A ``ClientResponse`` aioresponses can build on aiohttp 3.14 as on older ones."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        if NEEDS_STREAM_WRITER:
            kwargs.setdefault("stream_writer", _NothingSent())
        super().__init__(method, url, **kwargs)


def install() -> None:
    """Make aioresponses build `MockResponse` wherever it would build a ``ClientResponse``.

    aioresponses takes its default response class from its module's ``ClientResponse`` name at
    call time, for ``api.get(...)`` answers and callback results alike; replacing that name is
    the one place that covers both.
    """
    aioresponses.core.ClientResponse = MockResponse  # type: ignore[misc]
