"""The simulator's middleware: counters, request hooks, fault injection and the token check."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .._sansio import USER_AGENT
from .._session import sends_once
from ._checks import ApiError, json_response
from ._faults import BEFORE_HANDLER
from ._state import SimulatorState

logger = logging.getLogger("dmhub_async.testing")

_HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

STATE_KEY: web.AppKey[SimulatorState] = web.AppKey("dmhub_simulator_state")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- faults and auth ----------------------------------------------------------------------------


def _drop_connection(request: web.Request) -> web.Response:
    # Closing the transport under aiohttp makes it fail writing the response, which it treats
    # as a client disconnect (logged at DEBUG only); the client sees the connection drop.
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


def _fault_response(kind: str, retry_after: int, now: float) -> web.Response:
    if kind == "html":
        return web.Response(text=_HTML_502, status=502, content_type="text/html")
    status = int(kind[:3])
    response = json_response({"error_code": status, "error_description": _REASONS[status]}, status)
    if kind == "429":
        response.headers["Retry-After"] = str(retry_after)
    elif kind == "429-http-date":
        # On the simulator's clock, the client's too when a test fakes both: on the real one,
        # a client on a FakeClock read a Retry-After of three years and gave up at once.
        response.headers["Retry-After"] = email.utils.formatdate(now + retry_after, usegmt=True)
    # The time of the answer by the same clock, as a service's Date is by its own: a client
    # reads a Retry-After date from it (aiohttp's own Date is the real clock's).
    response.headers["Date"] = email.utils.formatdate(now, usegmt=True)
    return response


async def _send_truncated(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    # As a network cuts an answer: the headers declare the whole body, half of it arrives, the
    # connection closes. A client can tell (fewer bytes than Content-Length) and must never take
    # the half for an answer: "300" cut to "3" is valid JSON.
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    body = response.body
    if not body:
        return response  # nothing to cut
    cut = web.StreamResponse(status=response.status, reason=response.reason)
    cut.content_type = response.content_type
    cut.charset = response.charset
    cut.content_length = len(body)
    await cut.prepare(request)
    await cut.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        transport.close()  # close, not abort: what was written still goes out first
    return cut


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request, run the hooks, inject a fault or check the token, then answer."""
    state = request.app[STATE_KEY]
    counters = state.counters
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    counters.requests[route] += 1
    counters.routes[f"{request.method} {route}"] += 1
    try:
        await state.before_request(request)
        faults = state.faults
        target = request.path_qs
        if faults.is_resend(request.method, target):
            return _drop_connection(request)
        kind = None
        if faults.applies_to(request.method, request.path, route):
            delay = faults.next_latency()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = faults.next_fault()
        if kind is not None and kind in BEFORE_HANDLER:
            counters.faults[kind] += 1
            if kind == "reset":
                if not _sent_once(request):
                    faults.dropped(request.method, target)
                return _drop_connection(request)
            response: web.StreamResponse = _fault_response(kind, faults.retry_after, state.clock())
        else:
            try:
                response = await _answer(state, request, handler)
            except ApiError as err:
                # An error answer is an answer the network can cut or lose as well: raised past
                # the fault below, a scripted truncation or reset was spent on it unapplied.
                counters.errors[err.code] += 1
                response = err.response()
            if kind == "truncated":
                response = await _send_truncated(request, response)
                if response.prepared:  # cut; an empty body (a 204) has nothing to cut
                    counters.faults[kind] += 1
            elif kind == "reset-after-write":
                counters.faults[kind] += 1
                if not _sent_once(request):
                    faults.dropped(request.method, target)
                return _drop_connection(request)
    except ApiError as err:
        counters.errors[err.code] += 1
        response = err.response()
    except Exception as err:
        if isinstance(err, ConnectionResetError) and _client_left(request):
            # The client dropped mid-request or mid-answer (aiohttp's ClientConnectionResetError
            # is one): expected, and nothing reaches it. Logged as a simulator error, it put
            # a traceback in a test's output, and a 500 nobody saw in the counters.
            logger.debug("client left during %s %s", request.method, route)
            return web.Response(status=500)
        # The simulator must answer, whatever went wrong inside it.
        logger.exception("simulator error on %s %s", request.method, route)
        counters.errors[500] += 1
        response = json_response(
            {"error_code": 500, "error_description": f"simulator error: {type(err).__name__}"}, 500
        )
    counters.statuses[response.status] += 1
    if state.clock is not time.time and not response.prepared:
        # The time of the answer by the simulator's clock, as a service's Date is by the clock
        # that stamps its customers' creation (aiohttp's own is the real clock's).
        response.headers["Date"] = email.utils.formatdate(state.clock(), usegmt=True)
    return response


def _client_left(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _answer(
    state: SimulatorState, request: web.Request, handler: Handler
) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        # docs/contract.md "Errors": a bad token answers HTTP 200 with the error in the body.
        code = state.tokens.check(request.query.get("access_token"))
        if code is not None:
            raise ApiError(200, code, state.tokens.describe(code))
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        raise ApiError(exc.status, exc.status, exc.reason) from None


#: What this SDK's requests say they are, whatever its version (see USER_AGENT).
_OUR_AGENT = USER_AGENT.split("/", 1)[0] + "/"


#: The aiohttp a request's User-Agent names (aiohttp's own, and this SDK's, name it).
_AIOHTTP_AGENT = re.compile(r"\baiohttp/(\d+)\.(\d+)\.")
#: The first aiohttp that sends a request again by itself when its connection drops.
_AIOHTTP_RESENDS = (3, 10)


def _sent_once(request: web.Request) -> bool:
    """Whether ``request`` is not sent again by its client's aiohttp when the connection drops,
    so that its next one is the client's own retry, not to be dropped as a re-send: it comes
    from this SDK's client, which stops the re-send of a PUT or a DELETE (see
    ``_session._SentOnce``), or from an aiohttp older than 3.10, which sends nothing again (its
    client's retry was dropped, and one scripted reset cost two failures)."""
    agent = request.headers.get("User-Agent", "")
    aiohttp = _AIOHTTP_AGENT.search(agent)
    if aiohttp is not None and (int(aiohttp[1]), int(aiohttp[2])) < _AIOHTTP_RESENDS:
        return True
    return agent.startswith(_OUR_AGENT) and sends_once(request.method)
