"""`SimulatorState`: everything the simulator's application serves, as one object."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import attrs
from aiohttp import web

from ._faults import Counters, Faults
from ._store import CustomerStore
from ._tokens import TokenIssuer

RequestHook = Callable[[web.Request], Awaitable[None] | None]


@attrs.define(eq=False)
class SimulatorState:
    """The customers, the tokens, the faults and the counters one simulator serves.

    The aiohttp application reads and changes only this; `DMHubSimulator` owns one and gives
    tests their ways into it.
    """

    store: CustomerStore
    """The customer table."""
    tokens: TokenIssuer
    """The access tokens of the one appid."""
    faults: Faults
    """Fault injection settings; change them at any time."""
    counters: Counters = attrs.field(factory=Counters)
    """What the simulator served."""
    page_cap: int = 100
    """The most rows a list page returns, whatever ``rows`` asks for."""
    hooks: list[RequestHook] = attrs.field(factory=list)
    #: The simulator's clock: the time of its answers (a Retry-After date, say).
    clock: Callable[[], float] = time.time
    """Called with every request before it is handled (sync or async)."""
    revoke_in: int | None = None
    """Revoke the token after this many more ``/v1`` requests (None: never)."""
    expire_in: int | None = None
    """Expire the token after this many more ``/v1`` requests (None: never)."""
    customers_created: int = 0
    """Customers ``POST /v1/customers`` created (not matched): its answer's status turns on it."""

    async def before_request(self, request: web.Request) -> None:
        """Count down the pending token revocation and expiry, then run the request hooks."""
        if request.path.startswith("/v1/"):
            self.revoke_in = self._count_down(self.revoke_in, self.tokens.revoke)
            self.expire_in = self._count_down(self.expire_in, self.tokens.expire)
        for hook in list(self.hooks):
            result = hook(request)
            if inspect.isawaitable(result):
                await result

    @staticmethod
    def _count_down(remaining: int | None, act: Callable[[], None]) -> int | None:
        if remaining is None:
            return None
        if remaining == 0:
            act()
            return None
        return remaining - 1
