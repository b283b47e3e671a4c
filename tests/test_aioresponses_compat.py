"""The aioresponses compatibility layer: mocked answers build and read on this aiohttp."""

from __future__ import annotations

import aiohttp
import pytest
from _aioresponses_compat import NEEDS_STREAM_WRITER, MockResponse
from _helpers import BASE, url
from aioresponses import CallbackResult, aioresponses
from yarl import URL


def test_the_layer_knows_whether_this_aiohttp_needs_the_stream_writer() -> None:
    major, minor = (int(part) for part in aiohttp.__version__.split(".")[:2])
    assert ((major, minor) >= (3, 14)) == NEEDS_STREAM_WRITER


async def test_a_mocked_answer_reads_back_whole(api: aioresponses) -> None:
    api.get(url("/v1/x"), status=201, payload={"ok": 1}, headers={"X-Request-Id": "r1"})
    async with aiohttp.ClientSession() as session, session.get(BASE + "/v1/x") as response:
        assert isinstance(response, MockResponse)
        assert response.status == 201
        assert response.headers["X-Request-Id"] == "r1"
        assert await response.json() == {"ok": 1}


async def test_a_callback_answer_reads_back_whole(api: aioresponses) -> None:
    api.post(url("/v1/y"), callback=lambda u, **kw: CallbackResult(status=503, body=b"busy"))
    async with aiohttp.ClientSession() as session, session.post(BASE + "/v1/y") as response:
        assert response.status == 503
        assert await response.read() == b"busy"


def test_without_the_layer_aioresponses_fails_on_aiohttp_3_14() -> None:
    # What the layer is for: aioresponses' own default class cannot be built there.
    if not NEEDS_STREAM_WRITER:
        pytest.skip("this aiohttp builds aioresponses' answers by itself")
    with pytest.raises(TypeError, match="stream_writer"):
        aiohttp.ClientResponse(  # the arguments aioresponses 0.7.9 passes
            "GET",
            URL(BASE),
            writer=None,
            continue100=None,
            timer=None,  # type: ignore[arg-type]
            request_info=None,  # type: ignore[arg-type]
            traces=[],
            loop=None,  # type: ignore[arg-type]
            session=None,  # type: ignore[arg-type]
        )
