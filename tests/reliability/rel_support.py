"""Helpers of the reliability scenarios: leftover tasks and connections, a log of calls, two
apps behind one host."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from dmhub_async import DMHubClient
from dmhub_async._retry import RETRY_TALLY
from dmhub_async._sansio import APIResponse, Request
from dmhub_async.testing import DMHubSimulator

#: The coroutine of the task aiohttp's server runs per open connection.
SERVER_CONNECTION = "RequestHandler.start"


def pending_tasks(*, connections: bool = False) -> list[str]:
    """Tasks other than the running one, by coroutine name; with ``connections``, the
    simulator's open connections too (aiohttp's server runs one task per connection)."""
    names = [
        getattr(task.get_coro(), "__qualname__", repr(task))
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task()
    ]
    return sorted(n for n in names if connections or n != SERVER_CONNECTION)


async def settled(*, connections: bool = False, turns: int = 50) -> list[str]:
    """``pending_tasks`` once the loop has had ``turns`` turns to finish closing things."""
    for _ in range(turns):
        if not pending_tasks(connections=connections):
            break
        await asyncio.sleep(0)
    gc.collect()  # an unclosed aiohttp session warns here: an error under filterwarnings
    return pending_tasks(connections=connections)


class CallLog:
    """Each call a client's resources send through its session layer, with its attempts.

    Wraps the session's ``send`` and, for a walk's pages (a call with a ``decode``), its
    ``request``, and records the first attempt and every retry of each call that got an
    answer, keyed by path and ``page``.
    """

    def __init__(self, client: DMHubClient) -> None:
        self.calls: list[list[Any]] = []  # [path, page, attempts]
        session = client._session
        inner_send, inner_request = session.send, session.request

        async def send(request: Request, **options: Any) -> APIResponse:
            entry = [request.path, (request.params or {}).get("page"), 1]
            self.calls.append(entry)
            response = await inner_send(request, **options)
            entry[2] += response.retries
            return response

        async def request(method: str, path: str, **options: Any) -> Any:
            # A page's retries, as the walk counts them: in the tally its read keeps around
            # the call (AsyncPaginator._read).
            tally = RETRY_TALLY.get()
            if options.get("decode") is None or tally is None:
                return await inner_request(method, path, **options)
            entry = [path, (options.get("params") or {}).get("page"), 1]
            self.calls.append(entry)
            before = tally.retries
            data = await inner_request(method, path, **options)
            entry[2] += tally.retries - before
            return data

        session.send = send  # type: ignore[method-assign]
        session.request = request  # type: ignore[method-assign]

    def attempts(self, path: str = "/v1/customers") -> list[int]:
        """Attempts of each call to ``path``, in call order."""
        return [n for p, _, n in self.calls if p == path]

    def pages(self) -> Counter[int]:
        """Calls by list page number."""
        return Counter(int(page) for p, page, _ in self.calls if p == "/v1/customers")


class TwoApps:
    """Two apps' simulators (``a``, ``b``) behind one host (``url``), as the live service is
    one host for every app: a request goes to the app whose token it carries (``token``)."""

    def __init__(self, a: DMHubSimulator, b: DMHubSimulator, url: str) -> None:
        self.a, self.b, self.url = a, b, url
        self._b_tokens: set[str] = set()

    def token(self, sim: DMHubSimulator) -> str:
        """A new token of ``sim``'s app (its previous one stops working)."""
        token = sim.tokens.issue()
        if sim is self.b:
            self._b_tokens.add(token)
        return token

    def app_of(self, token: str) -> DMHubSimulator:
        return self.b if token in self._b_tokens else self.a


@contextlib.asynccontextmanager
async def two_apps(customers: int, *, seed: int = 21) -> AsyncIterator[TwoApps]:
    """:class:`TwoApps` of ``customers`` each (other customers, the same ids), on 127.0.0.1."""
    async with (
        DMHubSimulator(customers, seed=seed, app_id="app-a", secret="secret-a") as a,
        DMHubSimulator(customers, seed=seed + 1, app_id="app-b", secret="secret-b") as b,
        aiohttp.ClientSession() as http,
    ):
        apps: TwoApps

        async def route(request: web.Request) -> web.Response:
            sim = apps.app_of(request.query.get("access_token", ""))
            async with http.get(sim.url + request.path_qs) as answer:
                body = await answer.read()
                return web.Response(
                    status=answer.status, body=body, content_type=answer.content_type
                )

        app = web.Application()
        app.router.add_get("/{path:.*}", route)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            apps = TwoApps(a, b, f"http://127.0.0.1:{port}")
            yield apps
        finally:
            await runner.cleanup()
