"""A broken or hostile server (issue 12): nothing leaks, nothing grows without bound.

A hostile aiohttp server on 127.0.0.1 plays the service; a second one on 127.0.0.2 plays a
foreign host and records whatever reaches it. The figures are in docs/reliability.md,
"Hostile server".
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import inspect
import json
import os
import subprocess
import sys
import textwrap
import traceback
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import attrs
import pytest
from aiohttp import web

from dmhub_async import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    DMHubClient,
    InvalidRequestError,
    MemoryTokenStore,
    RateLimitError,
    ResponseDecodeError,
    ResponseTooLargeError,
    __version__,
)
from dmhub_async.export import export_customers

TOKEN = "T0kenCanaryHostile77"
SECRET = "S3cretCanaryHostile99"
APP = "app-hostile"
MB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@attrs.define
class Server:
    """An aiohttp server on one loopback address that records every request it gets."""

    host: str
    handler: Handler | None = None
    seen: list[dict[str, Any]] = attrs.Factory(list)
    url: str = ""
    sent_bytes: int = 0

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            {
                "url": str(request.url),
                "query": dict(request.query),
                "headers": dict(request.headers),
                "agents": request.headers.getall("User-Agent", []),  # every line of it
                "body": await request.read(),
            }
        )
        if self.handler is None:
            return web.json_response({"error_code": 0, "seen": True})
        return await self.handler(request)


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Server, Server]]:
    """(the service on 127.0.0.1, a foreign host on 127.0.0.2)."""
    runners = []
    pair = (Server("127.0.0.1"), Server("127.0.0.2"))
    for server in pair:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.serve)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, server.host, 0)
        await site.start()
        port = runner.addresses[0][1]
        server.url = f"http://{server.host}:{port}"
        runners.append(runner)
    yield pair
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def client(clock: Any) -> AsyncIterator[Callable[..., DMHubClient]]:
    clients: list[DMHubClient] = []

    def make(base_url: str, **kwargs: Any) -> DMHubClient:
        if "app_id" not in kwargs:
            kwargs.setdefault("access_token", TOKEN)
        kwargs.setdefault("token_store", MemoryTokenStore())
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        dm = DMHubClient(base_url=base_url, **kwargs)
        clients.append(dm)
        return dm

    yield make
    for dm in clients:
        await dm.aclose()


def texts_of(err: BaseException) -> str:
    """Everything a user or a log could see of an error: message, repr, attributes, traceback."""
    parts = ["".join(traceback.format_exception(type(err), err, err.__traceback__))]
    for cause in (err, err.__cause__, err.__context__):
        if cause is not None:
            parts += [str(cause), repr(cause), repr(vars(cause)), repr(cause.args)]
    return "\n".join(parts)


def redirect_to(foreign: Server, status: int) -> Handler:
    """Answers ``status`` with a Location on the foreign host, keeping path and query."""

    async def answer(request: web.Request) -> web.StreamResponse:
        location = f"{foreign.url}{request.path_qs}"
        return web.Response(status=status, headers={"Location": location})

    return answer


# -- 1. credentials never follow a redirect to another host -----------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_another_host_gets_no_token(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], status: int
) -> None:
    service, foreign = servers
    service.handler = redirect_to(foreign, status)
    dm = client(service.url)

    with pytest.raises(APIError) as caught:
        await dm.customers.get(1)

    assert foreign.seen == []  # before: the foreign host got access_token=T0ken...
    assert caught.value.status == status
    assert foreign.url in str(caught.value)  # where it pointed, so the user can check
    assert TOKEN not in texts_of(caught.value)
    assert len(service.seen) == 1  # and not retried


@pytest.mark.parametrize(
    ("location", "said"),
    [
        ("//127.0.0.2:8443/v1/customers/1", "a redirect to //127.0.0.2:8443, not followed"),
        ("https://[::1]:8443/v1/customers/1", "a redirect to https://[::1]:8443, not followed"),
        ("https://[2001:db8::1]/", "a redirect to https://[2001:db8::1], not followed"),
    ],
    ids=["protocol-relative", "IPv6 with a port", "IPv6"],
)
async def test_a_redirect_names_the_host_it_points_to_as_a_url_writes_it(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], location: str, said: str
) -> None:
    """A ``Location`` without a scheme (``//host``, the request's own scheme) was said "a
    redirect to ://127.0.0.2:8443", and an IPv6 host without its brackets ("https://::1:8443":
    which part is the port?), so the user could not tell where the service pointed."""
    service, _ = servers

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": location})

    service.handler = answer
    dm = client(service.url)

    with pytest.raises(APIError) as caught:
        await dm.customers.get(1)

    assert said in str(caught.value)
    assert TOKEN not in texts_of(caught.value)


async def test_a_307_does_not_resend_a_create_body_to_another_host(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, foreign = servers
    service.handler = redirect_to(foreign, 307)
    dm = client(service.url)

    with pytest.raises(APIError):
        await dm.customers.create(name="小D", mobile="18612341234")

    assert foreign.seen == []  # before: the POST body and the token, re-sent to it


async def test_the_token_request_follows_no_redirect_with_the_secret(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, foreign = servers
    service.handler = redirect_to(foreign, 302)
    dm = client(service.url, app_id=APP, secret=SECRET)

    with pytest.raises(APIError) as caught:
        await dm.customers.count()

    assert foreign.seen == []  # before: secret=S3cret... delivered to the foreign host
    assert not isinstance(caught.value, AuthenticationError)  # a redirect, not bad credentials
    assert "redirect" in str(caught.value)
    assert SECRET not in texts_of(caught.value)


# -- 2. a cap on an answer's size ---------------------------------------------------------------


def endless_body(server: Server, limit: int = 500 * MB) -> Handler:
    """A chunked body of ``limit`` bytes of JSON whitespace, sent until the client hangs up."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b" " * MB
        try:
            while server.sent_bytes < limit:
                await response.write(chunk)
                server.sent_bytes += len(chunk)
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass  # the client hung up: what this server is waiting for
        return response

    return answer


async def test_an_endless_body_is_cut_off_at_the_cap(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers
    service.handler = endless_body(service)
    dm = client(service.url, max_response_size=2 * MB)

    with pytest.raises(ResponseTooLargeError) as caught:
        await dm.customers.get(1)

    assert "max_response_size" in str(caught.value)
    assert len(service.seen) == 1  # not retried: the same server would send it again
    # The client stopped reading at the cap, not at the server's 500 MB (socket buffers aside).
    assert service.sent_bytes < 64 * MB


async def test_a_declared_length_over_the_cap_is_refused_before_reading(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(500 * MB)})
        await response.prepare(request)
        await response.write(b" " * MB)
        service.sent_bytes += MB
        return response  # a body shorter than declared: the client must not wait for it

    service.handler = huge
    dm = client(service.url, max_response_size=MB)

    with pytest.raises(ResponseTooLargeError):
        await dm.customers.get(1)


@pytest.mark.parametrize("answer", ["too large", "a large error page"])
async def test_an_error_kept_does_not_keep_the_body_alive(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], answer: str
) -> None:
    """Errors kept (``return_exceptions=True``, a list of failures, an error tracker) hold
    their message, not the body: each held it (up to max_response_size, 64 MiB by default)
    through the locals of the frames in its traceback."""
    service, _ = servers
    endless = endless_body(service)
    page = b'{"error_code": 500, "error_description": "down", "pad": "' + b"x" * (4 * MB) + b'"}'

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.path == "/warm":
            return web.json_response({"error_code": 0})
        if answer == "too large":
            return await endless(request)
        return web.Response(status=500, body=page, content_type="application/json")

    service.handler = serve
    dm = client(service.url, max_response_size=6 * MB, max_retries=0)
    await dm.request("GET", "/warm")  # aiohttp's own buffers, before the baseline
    tracemalloc.start()
    try:
        kept = []
        for _ in range(3):
            with pytest.raises(APIError) as caught:
                await dm.request("GET", "/v1/customers/1")
            kept.append(caught.value)
            del caught
        gc.collect()
        with_errors = tracemalloc.get_traced_memory()[0]
        # Still a traceback to read, down to where the SDK raised it.
        assert all("in _send" in "".join(traceback.format_exception(e)) for e in kept)
        kept.clear()
        gc.collect()  # (no await since: the server's buffers are as they were)
        held = with_errors - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    assert held < MB  # before: 24 MB (too large) and 25 MB (the error page) for 3 errors


def test_max_response_size_must_be_a_positive_int() -> None:
    for bad in (0, -1, 1.5, True, "64"):
        with pytest.raises(InvalidRequestError, match="max_response_size"):
            DMHubClient(access_token=TOKEN, max_response_size=bad)  # type: ignore[arg-type]


PEAK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, resource, sys
    from dmhub_async import DMHubClient, ResponseTooLargeError

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    async def main():
        async with DMHubClient(access_token="t0ken-peak", base_url=sys.argv[1]) as dm:
            await dm.request("GET", "/warm")  # aiohttp's own buffers, before the baseline
            baseline = peak_mb()
            try:
                await dm.request("GET", "/v1/customers/1")
                outcome = "read"
            except ResponseTooLargeError:
                outcome = "refused"
            print(json.dumps({"outcome": outcome, "above_baseline_mb": peak_mb() - baseline}))

    asyncio.run(main())
    """
)


async def test_a_500_mb_hostile_body_costs_under_100_mb(servers: tuple[Server, Server]) -> None:
    """With the default cap (64 MiB), in a process of its own so that its peak is its own."""
    service, _ = servers
    endless = endless_body(service)

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/warm":
            return web.json_response({"error_code": 0})
        return await endless(request)

    service.handler = answer
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PEAK_SCRIPT,
        service.url,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    result = json.loads(out)

    assert result["outcome"] == "refused"
    assert result["above_baseline_mb"] < 100  # before: 500 MB read whole, about 1 GB peak


# -- 4. the token in no error, whatever the server echoes ----------------------------------------


async def test_a_row_field_echoing_the_token_does_not_reach_the_decode_error(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers

    async def echo_in_a_row(request: web.Request) -> web.StreamResponse:
        row = {"id": 1, "dateCreated": request.query["access_token"]}  # not a timestamp
        return web.json_response({"rows": [row], "records": 1, "total": 1})

    service.handler = echo_in_a_row
    dm = client(service.url)

    with pytest.raises(ResponseDecodeError) as caught:
        await dm.customers.list().to_list()

    assert TOKEN not in texts_of(caught.value)  # before: "not a timestamp: 'T0ken...'"
    assert "timestamp" in str(caught.value)  # still says what was wrong


async def test_an_error_code_echoing_the_token_does_not_reach_the_api_error(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers

    async def echo_in_the_code(request: web.Request) -> web.StreamResponse:
        body = {"error_code": request.query["access_token"], "error_description": "no"}
        return web.json_response(body, status=400)

    service.handler = echo_in_the_code
    dm = client(service.url)

    with pytest.raises(APIError) as caught:
        await dm.customers.get(1)

    assert TOKEN not in texts_of(caught.value)  # before: in .code and in the message
    assert caught.value.status == 400


@pytest.mark.parametrize("status", [200, 401, 500])
async def test_a_refused_token_answer_quoting_its_own_token_does_not_reach_the_error(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], status: int
) -> None:
    service, _ = servers
    issued = "9f86d081884c7d659a2feaa0c55ad015"

    async def refused(request: web.Request) -> web.StreamResponse:
        body = {
            "error_code": "40004",
            "error_description": f"token {issued} not issued: the params is illegal",
            "access_token": issued,
            "note": f"last token: {issued}",
        }
        headers = {"X-Request-Id": f"req-{issued}", "X-Token": issued}
        return web.json_response(body, status=status, headers=headers)

    service.handler = refused
    dm = client(service.url, app_id=APP, secret=SECRET, max_retries=0)

    with pytest.raises(APIError) as caught:
        await dm.customers.get(1)

    # Before: its access_token field was masked, and the same token quoted in the
    # description (or any other field, or a header) went out whole: in the message,
    # .description, .body, .headers and .request_id.
    assert issued[:8] not in texts_of(caught.value)
    assert issued[:8] not in f"{caught.value.headers} {caught.value.request_id}"
    assert caught.value.status == status
    assert "the params is illegal" in str(caught.value)  # the service's words, but the token


@pytest.mark.parametrize(
    "body",
    [
        {"error_code": 40005, "error_description": "x" * (10 * MB)},
        {"error_code": "E" * (10 * MB), "error_description": "no"},
    ],
    ids=["description", "code"],
)
async def test_an_error_text_of_megabytes_is_cut_short(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], body: dict[str, Any]
) -> None:
    service, _ = servers

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=400)

    service.handler = answer
    dm = client(service.url)

    with pytest.raises(APIError) as caught:
        await dm.customers.get(1)

    # Before: the whole 10 MB in the message, .description or .code (every log line of the
    # error), and 2.7 s of the event loop masking secrets in it, twice.
    assert len(str(caught.value)) < 1200
    assert len(caught.value.description or "") <= 1003
    assert len(str(caught.value.code)) <= 1003


@pytest.mark.parametrize(
    "token",
    ["ab12" * 50_000, "ab12cd34\r\nX-Injected: 1"],
    ids=["200 KB", "a line break"],
)
async def test_a_token_answer_that_holds_no_sendable_token_is_refused(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], token: str
) -> None:
    service, _ = servers

    async def token_answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/security/accesstoken":
            return web.json_response({"error_code": 0, "access_token": token, "expires_in": 7200})
        return web.json_response({"error_code": 0, "id": 1})

    service.handler = token_answer
    dm = client(service.url, app_id=APP, secret=SECRET)

    with pytest.raises(ResponseDecodeError) as caught:
        await dm.customers.get(1)

    # Before: the token went out in the next URL, and every error after masked its every run
    # of 8 characters (a 4 MB token: 4.5 s of the event loop and 545 MB kept, per error).
    assert [seen["url"].split("?")[0] for seen in service.seen] == [
        f"{service.url}/security/accesstoken"
    ]
    assert "access_token" in str(caught.value)
    assert token[:12] not in texts_of(caught.value)


# -- 5b. a compressed answer is read whole, or refused ------------------------------------------


def compressed(body: bytes, encoding: str) -> Handler:
    """Answers ``body`` as sent, declared compressed with ``encoding``."""

    async def answer(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
        return web.Response(body=body, headers=headers)

    return answer


def deflated(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(wbits=wbits)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (gzip.compress(b"1234567"), "gzip"),
        (gzip.compress(b"1234567"), "x-gzip"),
        (deflated(b"1234567", 15), "deflate"),
        (deflated(b"1234567", -15), "deflate"),  # without the zlib header, as some servers send
        (b"1234567", "identity"),
    ],
    ids=["gzip", "x-gzip", "deflate", "raw deflate", "identity"],
)
async def test_a_compressed_answer_is_read_whole(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], body: bytes, encoding: str
) -> None:
    service, _ = servers
    service.handler = compressed(body, encoding)
    dm = client(service.url)

    assert await dm.customers.count() == 1234567
    assert "gzip" in service.seen[0]["headers"]["Accept-Encoding"]


def members(*parts: bytes) -> bytes:
    """``parts`` gzipped one by one and joined: a gzip body of several members (RFC 1952)."""
    return b"".join(gzip.compress(part) for part in parts)


async def test_a_gzip_answer_of_several_members_is_read_whole(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers
    service.handler = compressed(members(b"123", b"45", b"67"), "gzip")
    dm = client(service.url, max_retries=0)

    # Before: a gzip body is a series of members (RFC 1952, 2.2), as a gateway that compresses
    # as it streams may send it, and aiohttp reads them all; the client's own decompressor
    # stopped at the first and refused the answer as "cut short (or followed by more)": every
    # count and page failed, and a create the service had carried out said its outcome unknown.
    assert await dm.customers.count() == 1234567

    service.handler = compressed(members(b'{"id": 7, ', b'"name": "x"}'), "gzip")
    created = await dm.customers.create(name="x")
    assert (created.id, created.name) == (7, "x")
    assert len([seen for seen in service.seen if seen["body"]]) == 1  # the create, sent once


@pytest.mark.parametrize(
    "body",
    [
        members(b"123", b"4567")[:-4],  # the last member cut short
        members(b"123") + b"\x00" * 8,  # not a member after the first
        members(b"123") + b"\x1f\x8b\x08\x00garbage, not deflate data",
        members(*[b""] * 2000, b"1234567"),  # a stream of empty members: no end to its cost
    ],
    ids=["last member cut short", "padding", "garbage member", "2,000 members"],
)
async def test_a_gzip_answer_whose_later_member_is_broken_is_refused(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], body: bytes
) -> None:
    service, _ = servers
    service.handler = compressed(body, "gzip")
    dm = client(service.url, max_retries=0)

    with pytest.raises(ResponseDecodeError) as caught:
        await dm.customers.count()
    assert caught.value.status == 200


async def test_a_gzip_bomb_of_many_members_is_cut_off_at_the_cap(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers
    service.handler = compressed(members(*[b" " * MB] * 8), "gzip")
    dm = client(service.url, max_response_size=MB)

    with pytest.raises(ResponseTooLargeError):
        await dm.customers.get(1)
    assert len(service.seen) == 1


@pytest.mark.parametrize("cut", [10, 11, 12], ids=["the trailer", "a digit", "two digits"])
async def test_a_gzip_answer_cut_short_is_refused_not_read_as_its_start(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], cut: int
) -> None:
    service, _ = servers
    whole = gzip.compress(b"1234567")
    service.handler = compressed(whole[:-cut], "gzip")
    dm = client(service.url, max_retries=0)

    # Before: aiohttp does not check that a gzip stream ends: cut before its last bytes (a
    # gateway or a close-delimited answer cut short) it read as "12345", a count of 12,345
    # taken for the 1,234,567 the service counted.
    with pytest.raises(ResponseDecodeError) as caught:
        await dm.customers.count()

    assert "cut short" in str(caught.value)
    assert caught.value.status == 200


async def test_a_gzip_page_cut_short_ends_the_walk_with_an_error(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers
    page = {"rows": [{"id": 1}, {"id": 2}, {"id": 3}], "records": 3, "total": 1}
    whole = gzip.compress(json.dumps(page).encode())
    service.handler = compressed(whole[:-9], "gzip")  # the trailer's CRC and length cut
    dm = client(service.url, max_retries=0)

    with pytest.raises(ResponseDecodeError, match="cut short"):
        [c async for c in dm.customers.list()]


def corrupted(whole: bytes) -> bytes:
    """``whole`` with a byte of its compressed data flipped (after gzip's 10-byte header)."""
    return whole[:12] + bytes([whole[12] ^ 0xFF]) + whole[13:]


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (corrupted(gzip.compress(b'{"id": 1, "name": "x"}' * 40)), "gzip"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage, not deflate data", "gzip"),
        (b"\x78\x9cgarbage, not deflate data", "deflate"),
        (gzip.compress(b'{"id": 1}')[:-8] + b"\x00" * 8, "gzip"),  # a wrong CRC and length
    ],
    ids=["gzip flipped", "gzip garbage", "deflate garbage", "gzip bad crc"],
)
async def test_a_corrupt_compressed_answer_is_a_decode_error(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], body: bytes, encoding: str
) -> None:
    service, _ = servers
    service.handler = compressed(body, encoding)
    dm = client(service.url, max_retries=0)

    # Before: zlib's own error ("Error -3 while decompressing data") came out of get(), a
    # walk and a create alike, past `except DMHubError`, and a create's unknown outcome unsaid.
    with pytest.raises(ResponseDecodeError) as caught:
        await dm.customers.get(1)
    assert caught.value.status == 200
    assert f"the answer's {encoding!r} stream is corrupt" in str(caught.value)

    with pytest.raises(ResponseDecodeError):
        [c async for c in dm.customers.list()]

    with pytest.raises(ResponseDecodeError) as caught:
        await dm.customers.create(name="x")
    assert caught.value.outcome_unknown
    assert len([seen for seen in service.seen if seen["body"]]) == 1  # the create, sent once


async def test_a_corrupt_compressed_error_answer_keeps_its_status_s_class(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers

    async def throttled(request: web.Request) -> web.StreamResponse:
        body = corrupted(gzip.compress(b'{"error_code": 429, "error_description": "slow"}' * 40))
        headers = {"Content-Encoding": "gzip", "Retry-After": "7"}
        return web.Response(status=429, body=body, headers=headers)

    service.handler = throttled
    dm = client(service.url, max_retries=0)

    with pytest.raises(RateLimitError) as caught:
        await dm.customers.get(1)
    assert caught.value.retry_after == 7


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
async def test_an_encoding_not_asked_for_is_a_decode_error_naming_it(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], encoding: str
) -> None:
    service, _ = servers
    service.handler = compressed(b"\x28\xb5\x2f\xfd not what it says", encoding)
    dm = client(service.url, max_retries=0)

    # Before: APIConnectionError "failed (ClientResponseError)", as if no answer had come.
    with pytest.raises(ResponseDecodeError) as caught:
        await dm.customers.get(1)

    assert repr(encoding) in str(caught.value)


async def test_an_error_answer_in_an_encoding_not_asked_for_keeps_its_status_s_class(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers

    async def throttled(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Encoding": "br", "Retry-After": "7"}
        return web.Response(status=429, body=b"\x8b\x02\x80{}\x03", headers=headers)

    service.handler = throttled
    dm = client(service.url, max_retries=0)

    with pytest.raises(RateLimitError) as caught:
        await dm.customers.get(1)
    assert caught.value.retry_after == 7


async def test_a_gzip_bomb_is_cut_off_at_the_cap(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers
    service.handler = compressed(gzip.compress(b" " * (8 * MB)), "gzip")  # 8 KB on the wire
    dm = client(service.url, max_response_size=MB)

    with pytest.raises(ResponseTooLargeError):
        await dm.customers.get(1)
    assert len(service.seen) == 1


# -- 6. plain http only to this machine, unless asked for -----------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://api.convertlab.com",
        "http://10.0.0.5:8080",
        # A name under .localhost is this machine only where the resolver says so: glibc asks
        # DNS for it ("files dns"), which may answer any address. It was taken as loopback.
        "http://api.localhost",
        "http://dmhub.internal.localhost:8080",
    ],
)
def test_plain_http_to_another_machine_is_refused(url: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        DMHubClient(access_token=TOKEN, base_url=url)  # before: accepted
    message = str(caught.value)
    assert "plain http" in message
    assert "allow_insecure_http=True" in message


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://127.0.0.2", "http://localhost:80", "http://[::1]:9"]
)
def test_plain_http_to_this_machine_is_accepted(url: str) -> None:
    assert DMHubClient(access_token=TOKEN, base_url=url).base_url == url


@pytest.mark.parametrize(
    ("url", "taken"),
    [
        ("HTTPS://api.convertlab.com", "https://api.convertlab.com"),
        ("Http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_a_scheme_in_capitals_is_taken_in_lower_case(url: str, taken: str) -> None:
    # URLs' schemes are of any case (RFC 3986): it was refused, "must start with http://".
    assert DMHubClient(access_token=TOKEN, base_url=url).base_url == taken


def test_plain_http_in_capitals_to_another_machine_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="plain http"):
        DMHubClient(access_token=TOKEN, base_url="HTTP://api.convertlab.com")


def test_plain_http_to_another_machine_is_accepted_when_asked_for() -> None:
    dm = DMHubClient(
        access_token=TOKEN, base_url="http://api.convertlab.com", allow_insecure_http=True
    )
    assert dm.base_url == "http://api.convertlab.com"


@pytest.mark.parametrize("flag", ["false", "no", "0", 1, 1.0, [0]])
def test_allow_insecure_http_that_is_no_bool_is_refused(flag: Any) -> None:
    # A truthy value that is not True (a setting read as text, "false") let plain http to
    # another machine through: the secret and every token went out in clear, unasked for.
    with pytest.raises(InvalidRequestError) as caught:
        DMHubClient(
            access_token=TOKEN, base_url="http://api.convertlab.com", allow_insecure_http=flag
        )
    assert str(caught.value) == (
        f"DMHubClient(): allow_insecure_http must be True or False, not {flag!r}"
    )
    with pytest.raises(InvalidRequestError, match="allow_insecure_http must be True or False"):
        DMHubClient(
            access_token=TOKEN, base_url="https://api.convertlab.com", allow_insecure_http=flag
        )


# -- 7. a cancelled wait gives its rate-limiter slot back -----------------------------------------


async def test_cancelled_waits_do_not_starve_the_rate_limiter(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], clock: Any
) -> None:
    service, _ = servers
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.Event().wait()  # until cancelled, as by asyncio.wait_for's timeout

    dm = client(service.url, rate_limit=10, sleep=sleep)
    await dm.request("GET", "/v1/customers/1")  # takes the first slot at once
    for _ in range(100):
        with pytest.raises(asyncio.TimeoutError):  # not the builtin TimeoutError on 3.10
            await asyncio.wait_for(dm.request("GET", "/v1/customers/1"), timeout=0.001)

    next_call = asyncio.ensure_future(dm.request("GET", "/v1/customers/1"))
    for _ in range(20):
        await asyncio.sleep(0)
    next_call.cancel()
    await asyncio.gather(next_call, return_exceptions=True)

    assert len(waits) == 101
    assert waits[-1] <= 0.1  # one interval at 10/s; before: 10.1 s, a slot per timed-out call
    assert len(service.seen) == 1


# -- 9. a User-Agent, and the proxy settings of the environment ---------------------------------


async def test_every_request_names_the_sdk_in_its_user_agent(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient]
) -> None:
    service, _ = servers

    async def token_or_count(request: web.Request) -> web.StreamResponse:
        if request.path == "/security/accesstoken":
            return web.json_response({"error_code": 0, "access_token": TOKEN, "expires_in": 7200})
        if request.method == "POST":
            return web.json_response({"id": 1, "name": "x"})
        return web.Response(text="3")

    service.handler = token_or_count
    dm = client(service.url, app_id=APP, secret=SECRET)
    await dm.customers.count()
    await dm.customers.create(name="x")

    agents = {seen["headers"].get("User-Agent") for seen in service.seen}
    assert agents == {f"dmhub-async/{__version__} aiohttp/{aiohttp.__version__}"}
    assert len(service.seen) == 3  # the token request, the count and the create


@pytest.mark.parametrize("own_session", [True, False])
async def test_the_user_agent_goes_with_a_passed_in_session_and_with_added_headers(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], own_session: bool
) -> None:
    # The client's own session sends it as a default header; a session the caller passes in
    # has none of ours, so each request carries it; with_options(extra_headers=) go along.
    service, _ = servers

    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error_code": 0})

    service.handler = ok
    async with aiohttp.ClientSession() as http:
        dm = client(service.url, **({} if own_session else {"session": http}))
        await dm.request("GET", "/v1/a")
        await dm.with_options(extra_headers={"X-Trace": "t1"}).request("GET", "/v1/b")
        await dm.request("POST", "/v1/c", json={"name": "x"}, idempotent=False)

    agent = f"dmhub-async/{__version__} aiohttp/{aiohttp.__version__}"
    assert [seen["headers"].get("User-Agent") for seen in service.seen] == [agent] * 3
    assert [seen["headers"].get("X-Trace") for seen in service.seen] == [None, "t1", None]


@pytest.mark.parametrize("name", ["User-Agent", "user-agent"])
@pytest.mark.parametrize("own_session", [True, False])
async def test_a_user_agent_of_the_callers_goes_after_the_sdks(
    servers: tuple[Server, Server], client: Callable[..., DMHubClient], own_session: bool, name: str
) -> None:
    # with_options(extra_headers={"User-Agent": ...}) replaced the SDK's (or, spelt in lower
    # case, went out beside it: two User-Agent lines): the requests no longer said they were
    # the SDK's, and the simulator, which tells the SDK's own retry of a PUT or a DELETE from
    # aiohttp's re-send by it, dropped that retry as a re-send.
    service, _ = servers

    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error_code": 0})

    service.handler = ok
    async with aiohttp.ClientSession() as http:
        dm = client(service.url, **({} if own_session else {"session": http}))
        job = dm.with_options(extra_headers={name: "my-job/1.2"})
        await job.request("GET", "/v1/a")
        await job.with_options(extra_headers={"X-Trace": "t1"}).request("PUT", "/v1/b", json={})
        await job.with_options(extra_headers={name: "my-job/2"}).request("DELETE", "/v1/c")

    sdk = f"dmhub-async/{__version__} aiohttp/{aiohttp.__version__}"
    assert [seen["agents"] for seen in service.seen] == [
        [f"{sdk} my-job/1.2"],
        [f"{sdk} my-job/1.2"],
        [f"{sdk} my-job/2"],
    ]


#: A base URL off this machine, as a proxy is asked for it; .invalid is never resolved by DNS.
FOREIGN = "http://dmhub.invalid:8080"


async def test_the_proxy_of_the_environment_is_used(
    servers: tuple[Server, Server],
    client: Callable[..., DMHubClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, _ = servers
    proxy.handler = None  # answers {"error_code": 0, "seen": true} to whatever comes
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    # A host off this machine (plain http to this one goes past the proxy, below), which
    # only the proxy is asked for: nothing resolves it.
    dm = client(FOREIGN, allow_insecure_http=True)

    assert await dm.request("GET", "/v1/customers/1") == {"error_code": 0, "seen": True}

    [seen] = proxy.seen  # before: sent straight to the target, past the proxy
    assert seen["url"].startswith(f"{FOREIGN}/v1/customers/1?")


async def test_no_proxy_spares_the_hosts_it_names(
    servers: tuple[Server, Server],
    client: Callable[..., DMHubClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, target = servers
    for name in ("no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "dmhub.invalid")
    # dmhub.invalid names the target here, and only here: this machine's plain http goes past
    # every proxy, so a loopback address would pass whatever NO_PROXY said.
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo

    async def to_the_target(host: Any, *args: Any, **kwargs: Any) -> Any:
        return await resolve("127.0.0.2" if host == "dmhub.invalid" else host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", to_the_target)
    port = target.url.rsplit(":", 1)[1]
    dm = client(f"http://dmhub.invalid:{port}", allow_insecure_http=True)

    await dm.request("GET", "/v1/customers/1")

    assert (len(proxy.seen), len(target.seen)) == (0, 1)


async def _token_or_ok(request: web.Request) -> web.StreamResponse:
    if request.path == "/security/accesstoken":
        return web.json_response({"error_code": 0, "access_token": TOKEN, "expires_in": 7200})
    return web.json_response({"error_code": 0})


async def test_plain_http_to_this_machine_goes_past_the_proxy_of_the_environment(
    servers: tuple[Server, Server],
    client: Callable[..., DMHubClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Taken without allow_insecure_http because nobody can overhear it, plain http to this
    # machine went to HTTP_PROXY all the same: the secret, then the token, in clear text.
    proxy, target = servers
    target.handler = _token_or_ok
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    dm = client(target.url, app_id=APP, secret=SECRET)

    assert await dm.request("GET", "/v1/customers/1") == {"error_code": 0}

    assert proxy.seen == []
    assert [seen["url"].split("?")[0] for seen in target.seen] == [
        f"{target.url}/security/accesstoken",
        f"{target.url}/v1/customers/1",
    ]


@pytest.mark.parametrize("how", ["trust_env", "proxy="])
async def test_a_passed_session_s_plain_http_proxy_needs_allow_insecure_http(
    servers: tuple[Server, Server],
    client: Callable[..., DMHubClient],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    # A session of the caller's keeps its own proxy, which this client cannot take away: to
    # this machine by plain http through it, the secret and the token reached the proxy.
    proxy, target = servers
    proxy.handler = _token_or_ok  # as it would forward them, the target's answers
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    named = proxy.url.replace("http://", "http://corp-user:ProxyPassw0rd@")
    if how == "trust_env":
        monkeypatch.setenv("HTTP_PROXY", named)
        settings: dict[str, Any] = {"trust_env": True}
    elif "proxy" in inspect.signature(aiohttp.ClientSession).parameters:
        settings = {"proxy": named}
    else:
        pytest.skip("a session's own proxy= is aiohttp 3.10's")
    async with aiohttp.ClientSession(**settings) as http:
        with pytest.raises(InvalidRequestError) as caught:
            client(target.url, app_id=APP, secret=SECRET, session=http)  # before: accepted
        message = str(caught.value)
        assert "proxy" in message
        assert "allow_insecure_http=True" in message
        assert "ProxyPassw0rd" not in message

        # Asked for, the caller's proxy is used as the caller set it.
        dm = client(target.url, app_id=APP, secret=SECRET, session=http, allow_insecure_http=True)
        assert await dm.request("GET", "/v1/customers/1") == {"error_code": 0}
        assert len(proxy.seen) == 2  # the token request and the call
        assert target.seen == []


@pytest.mark.parametrize("how", ["trust_env", "proxy="])
async def test_a_passed_session_s_https_proxy_is_taken(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # Reached by TLS, the proxy is one the caller chose to trust: nobody on the way reads it.
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    if how == "trust_env":
        monkeypatch.setenv("HTTP_PROXY", "https://proxy.invalid:3128")
        settings: dict[str, Any] = {"trust_env": True}
    elif "proxy" in inspect.signature(aiohttp.ClientSession).parameters:
        settings = {"proxy": "https://proxy.invalid:3128"}
    else:
        pytest.skip("a session's own proxy= is aiohttp 3.10's")
    async with aiohttp.ClientSession(**settings) as http:
        dm = DMHubClient(access_token=TOKEN, base_url="http://127.0.0.1:9", session=http)
        assert dm.base_url == "http://127.0.0.1:9"
        await dm.aclose()


async def test_a_proxy_that_gives_no_connection_in_time_is_named_not_the_base_url(
    client: Callable[..., DMHubClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # HTTPS_PROXY names a proxy that takes the connection and never answers its CONNECT (or
    # never takes it: connect_timeout). The request never reached the service, yet the error
    # said "no connection to https://dmhub.invalid (is base_url right, and the service up?)",
    # and the command line "is DMHUB_BASE_URL right?": the base URL, never asked, was blamed.
    from dmhub_async.cli._errors import explain

    release = asyncio.Event()
    connects: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connects.append(await reader.readline())
        await release.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        dm = client("https://dmhub.invalid", timeout=0.2, max_retries=0)
        with pytest.raises(APIConnectionError) as info:
            await dm.customers.create(name="a")
    finally:
        release.set()
        server.close()
        await server.wait_closed()

    assert connects == [b"CONNECT dmhub.invalid:443 HTTP/1.1\r\n"]
    said = str(info.value)
    assert info.value.outcome_unknown is False
    assert "base_url" not in said, said
    assert "the proxy the environment names" in said, said
    _, line = explain(info.value)
    assert "DMHUB_BASE_URL" not in line, line
    assert "the proxy the environment names" in line, line


@pytest.mark.parametrize(
    "answer",
    [b"", b"SSH-2.0-OpenSSH_8.9\r\n", b"HTTP/1.1 200 Connection established\r\nContent-Le"],
    ids=["closed", "not http", "cut short"],
)
async def test_a_proxy_that_drops_the_tunnel_s_connect_sent_nothing(
    client: Callable[..., DMHubClient], monkeypatch: pytest.MonkeyPatch, answer: bytes
) -> None:
    # HTTPS_PROXY names a proxy that closes the connection on the tunnel's CONNECT (a proxy
    # denying the host, or overloaded), or answers it with no HTTP: the request inside the
    # tunnel never left, yet a create said "the request may have reached the service, so its
    # outcome is unknown and it was not repeated".
    connects: list[bytes] = []

    async def dropping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connects.append(await reader.readline())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(dropping, "127.0.0.1", 0)
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        dm = client("https://dmhub.invalid", max_retries=1)
        with pytest.raises(APIConnectionError) as info:
            await dm.customers.create(name="a")
    finally:
        server.close()
        await server.wait_closed()

    assert connects == [b"CONNECT dmhub.invalid:443 HTTP/1.1\r\n"] * 2  # retried: nothing sent
    assert info.value.outcome_unknown is False
    assert "the proxy the environment names" in str(info.value)


async def test_a_proxy_whose_host_is_not_found_is_named_not_the_base_url(
    client: Callable[..., DMHubClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mistyped proxy host (HTTPS_PROXY): "the host of https://dmhub.invalid was not found (is
    # base_url right?)", of a host only the proxy is asked for.
    from dmhub_async.cli._errors import explain

    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # .invalid: never found
    dm = client("https://dmhub.invalid", max_retries=0)

    with pytest.raises(APIConnectionError) as info:
        await dm.customers.create(name="a")

    said = str(info.value)
    assert info.value.outcome_unknown is False
    assert "base_url" not in said, said
    assert "the proxy the environment names" in said, said
    _, line = explain(info.value)
    assert "DMHUB_BASE_URL" not in line, line


# -- 10. an export's final check writes no customer twice ------------------------------------------


def ignoring_id_list(customers: int) -> Handler:
    """A service of ``customers`` that answers every customer whatever ``idList`` asks for,
    and page 2 of 50 of a walk empty: an export's walk stops short, and its final check
    fetches the rest by id. (Only the walk's: the check fetches 50 a request at that page
    size, and a fetch whose second page came back empty too recovered nothing.)"""

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/customers/count":
            return web.json_response(customers)
        rows, page = int(request.query["rows"]), int(request.query["page"])
        ids = range(1, customers + 1)[(page - 1) * rows : page * rows]
        if (rows, page) == (50, 2) and "idList" not in request.query:
            ids = range(0)
        return web.json_response({"rows": [{"id": i, "name": f"n{i}"} for i in ids]})

    return answer


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
async def test_an_export_s_final_check_writes_no_customer_twice(
    servers: tuple[Server, Server],
    client: Callable[..., DMHubClient],
    tmp_path: Path,
    suffix: str,
) -> None:
    service, _ = servers
    service.handler = ignoring_id_list(250)
    dm = client(service.url, max_retries=0)
    dest = tmp_path / f"customers{suffix}"

    report = await export_customers(dm, dest, page_size=50, progress=False)

    # Before: the customers the check fetched by id were written as they came, those the file
    # already held among them: 550 lines for 250 customers, 300 of them repeats, and the
    # report said complete ("every customer, once").
    lines = dest.read_text(encoding="utf-8").splitlines()
    if suffix == ".csv":
        ids = [int(line.split(",")[0]) for line in lines[1:]]  # after the header
    else:
        ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids) == list(range(1, 251))
    assert report.exported == 250
    assert report.recovered == 200  # 51..250, not the 250 rows each fetch was answered
    assert report.complete


# -- 11. an export's final check says complete only when it can show it ------------------------


def inconsistent(
    customers: int,
    *,
    counted: int | None = None,
    records: int | None = None,
    never_by_id: int | None = None,
    empty: tuple[int, int] | None = None,
) -> Handler:
    """A service of ``customers`` (ids 1..``customers``) whose answers disagree: its count says
    ``counted``, its pages' ``records`` say ``records``, a fetch by ``idList`` never answers
    ``never_by_id``, and the page ``empty`` (rows, page) comes back empty."""

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/customers/count":
            return web.json_response(customers if counted is None else counted)
        rows, page = int(request.query["rows"]), int(request.query["page"])
        if "idList" in request.query:
            asked = {int(i) for i in request.query["idList"].split(",")}
            ids: Any = sorted(i for i in asked if 1 <= i <= customers and i != never_by_id)
            ids = ids[(page - 1) * rows : page * rows]
        else:
            ids = range(1, customers + 1)[(page - 1) * rows : page * rows]
        if (rows, page) == empty:
            ids = range(0)
        body: dict[str, Any] = {"rows": [{"id": i, "name": f"n{i}"} for i in ids]}
        if records is not None:
            body["records"] = records
        return web.json_response(body)

    return answer


def exported_ids(dest: Path) -> list[int]:
    return [json.loads(line)["id"] for line in dest.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    "service",
    [
        # The count says 201, every walk sees 200, twice alike: the check passed on the two
        # walks agreeing and the counts agreeing with each other, never with what was seen.
        pytest.param({"counted": 201}, id="a count above every walk"),
        # The pages' records say 201, the count and every walk 200: the empty page after the
        # last is one the walk cannot vouch for (unverified), and the check passed all the same.
        pytest.param({"records": 201}, id="pages that say one more"),
        # Customer 60 is listed but never served by id: the walk skipped its page, the check
        # fetched it and got nothing, and passed without it.
        pytest.param({"never_by_id": 60, "empty": (50, 2)}, id="a customer never served by id"),
    ],
)
# "auto" runs the check too: the counts disagree with the file, or a page was unverified.
@pytest.mark.parametrize("verify", ["always", "auto"])
async def test_an_export_s_final_check_says_no_complete_file_it_cannot_show(
    servers: tuple[Server, Server],
    client: Callable[..., DMHubClient],
    tmp_path: Path,
    service: dict[str, Any],
    verify: Literal["always", "auto"],
) -> None:
    served, _ = servers
    served.handler = inconsistent(200, **service)
    dm = client(served.url, max_retries=0)
    dest = tmp_path / "customers.jsonl"

    report = await export_customers(dm, dest, page_size=50, progress=False, verify=verify)

    assert report.verified is False
    assert not report.complete
    assert "MISMATCH" in report.summary()
    ids = exported_ids(dest)
    assert len(ids) == len(set(ids)) == report.exported
