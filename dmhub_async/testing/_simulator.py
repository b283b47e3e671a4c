"""`DMHubSimulator`: a local DM Hub on loopback, quirks of the live service included."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from aiohttp import web, web_app
from typing_extensions import Self

from .._exceptions import InvalidRequestError
from .._validate import check_flag, check_number, short, shown_even_half_made
from ._app import build_app
from ._faults import Counters, Faults
from ._fields import Row
from ._state import RequestHook, SimulatorState
from ._store import MAX_CUSTOMER_ID, CustomerStore
from ._tokens import TokenIssuer

#: The most customers a simulator seeds: about 60 bytes and half a microsecond each.
MAX_CUSTOMERS = 100_000_000


class DMHubSimulator:
    """A DM Hub customer API served by aiohttp on 127.0.0.1, behaving as docs/contract.md says.

    Use it as ``async with DMHubSimulator(customers=1000) as sim:`` and point a client at
    ``sim.url`` with ``sim.app_id`` and ``sim.secret``. ``sim.faults`` makes it misbehave,
    ``sim.counters`` tells what it served. ``sim.app`` is the bare ``web.Application``, for
    aiohttp's own test-server utilities. ``token_ttl`` is how long a token lives, and what the
    token answer's ``expires_in`` says (a whole number of seconds, as live; a fraction as is).
    """

    def __init__(
        self,
        customers: int = 0,
        *,
        seed: int = 0,
        app_id: str = "sim-app-id",
        secret: str = "sim-secret",
        host: str = "127.0.0.1",
        port: int = 0,
        page_cap: int = 100,
        token_ttl: float = 7200.0,
        clock: Callable[[], float] = time.time,
        faults: Faults | None = None,
    ) -> None:
        # Checked here: a bad one served nonsense (no rows a page, a token dead on arrival) or
        # failed later with a raw error (OverflowError binding port 70000).
        # At most 100 million: some 60 bytes each (6 GB), and a minute to seed.
        check_number("customers", customers, 0, inclusive=True, kind=int, high=MAX_CUSTOMERS)
        check_number("page_cap", page_cap, 1, inclusive=True, kind=int)
        check_number(
            "token_ttl", token_ttl, 0, inclusive=False, finite=True, what="a number of seconds"
        )
        check_number("port", port, 0, inclusive=True, kind=int, high=65535)
        # Taken, each failed later: a credential of None or "" refused every token request
        # (40004, which the client under test blamed on its own credentials), a clock or faults
        # of another kind answered every request 500 ("simulator error"), which the client
        # retried as the service's; a host of no str was a raw TypeError at start.
        for name, value in (("app_id", app_id), ("secret", secret), ("host", host)):
            if not isinstance(value, str) or not value:
                raise InvalidRequestError(f"{name} must be a non-empty str, not {short(value)}")
        if not callable(clock):
            raise InvalidRequestError(f"clock must be a function, not {short(clock)}")
        _check_faults(faults, none=True)
        store = CustomerStore(seed, clock)
        store.seed(customers)
        self.state = SimulatorState(
            store=store,
            tokens=TokenIssuer(app_id, secret, token_ttl, clock),
            faults=faults if faults is not None else Faults(seed=seed),
            page_cap=page_cap,
            clock=clock,
        )
        """Everything the simulator serves, as one object."""
        self.host = host
        self.port = port
        self.app = build_app(self.state)
        self._served_on: asyncio.AbstractEventLoop | None = None
        """The aiohttp application."""
        self._runner: web.AppRunner | None = None

    # -- state ----------------------------------------------------------------------------------

    @property
    def store(self) -> CustomerStore:
        """The customer table (internal API; prefer the helper methods)."""
        return self.state.store

    @property
    def tokens(self) -> TokenIssuer:
        """The access-token issuer of the one appid."""
        return self.state.tokens

    @property
    def faults(self) -> Faults:
        """Fault injection settings; change them at any time."""
        return self.state.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        _check_faults(faults, none=False)
        self.state.faults = faults

    @property
    def counters(self) -> Counters:
        """What the simulator served."""
        return self.state.counters

    @property
    def page_cap(self) -> int:
        """The most rows a list page returns, whatever ``rows`` asks for."""
        return self.state.page_cap

    @page_cap.setter
    def page_cap(self, rows: int) -> None:
        check_number("page_cap", rows, 1, inclusive=True, kind=int)
        self.state.page_cap = rows

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def app_id(self) -> str:
        """The appid the token endpoint accepts."""
        return self.tokens.app_id

    @property
    def secret(self) -> str:
        """The secret the token endpoint accepts."""
        return self.tokens.secret

    @property
    def url(self) -> str:
        """Base URL of the running simulator, e.g. ``http://127.0.0.1:54321`` (``[::1]`` too)."""
        if self._runner is None:
            raise RuntimeError("the simulator is not running: use `async with` or start()")
        # An IPv6 address in brackets: "http://::1:40123" is no URL, and a client refused it.
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Start serving on ``host``:``port`` (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        if self._runner is not None:
            if self._served_on is loop:
                return
            if self._served_on is not None and not self._served_on.is_closed():
                # Returned as if serving here: its port took connections no loop answered,
                # and every call made here waited out its timeout, as if the service were down.
                raise RuntimeError(
                    "the simulator is serving on another event loop, still open: stop it there"
                    " (await sim.aclose()) before starting it on this one, or make one for"
                    " this loop"
                )
            # Its loop ended with it serving (an asyncio.run() that returned without aclose()):
            # its port is freed, and the same address served from here.
            self._stop_listening()
        if self._served_on is not None and self._served_on is not loop:
            # aiohttp ties an application to the loop that first ran it: a second asyncio.run()
            # failed inside aiohttp. A new one serves the same state (customers, tokens, hooks).
            self.app = build_app(self.state)
        self._served_on = loop
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def aclose(self) -> None:
        """Stop serving and close every connection (as ``DMHubClient.aclose()``)."""
        if self._runner is not None and self._served_on is not None and self._served_on.is_closed():
            # Its loop ended with it serving: aiohttp's clean-up closes the connections through
            # that loop, a raw "RuntimeError: Event loop is closed".
            self._stop_listening()
            return
        served_on = self._served_on
        if (
            self._runner is not None
            and served_on is not None
            and served_on is not asyncio.get_running_loop()
            and served_on.is_running()
        ):
            # Its loop runs on another thread (a fixture's): aiohttp's clean-up from this one
            # was a raw "attached to a different loop" RuntimeError, the port closed and the
            # connections left half shut, a client's next call waiting out its timeout.
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._cleanup(), served_on))
            return
        await self._cleanup()

    async def _cleanup(self) -> None:
        """Stop serving, on the loop that serves."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            _forget_handlers()

    def _stop_listening(self) -> None:
        """Stop serving on a loop that has ended: close the listening sockets (its connections
        went with that loop), with no call into it."""
        runner, self._runner = self._runner, None
        for site in runner.sites if runner is not None else ():
            server = getattr(site, "_server", None)  # aiohttp's asyncio.Server: no public name
            if server is not None:
                server.close()  # on a closed loop, closes the sockets and nothing else
        _forget_handlers()

    async def close(self) -> None:
        """Stop serving: the same as `aclose`, kept for code written against 0.1.0."""
        await self.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @shown_even_half_made
    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self._runner else "not running"
        return f"<DMHubSimulator {where} customers={len(self.store)}>"

    # -- data -----------------------------------------------------------------------------------

    def customers_count(self) -> int:
        """How many customers exist now."""
        return len(self.store)

    def customer_ids(self) -> list[int]:
        """Every customer id, ascending."""
        return self.store.ids()

    def customer(self, customer_id: int) -> Row | None:
        """A copy of a customer's wire dict, or None if it does not exist."""
        row = self.store.get(_sim_id("customer", customer_id))
        if row is None:
            return None
        # A copy: attr as well (some seeded customers have none, as some live answers do).
        return {**row, "attr": dict(row["attr"] or {})} if "attr" in row else dict(row)

    def identities(self, customer_id: int) -> list[tuple[str, str, str | None]]:
        """The (type, value, name) identities bound to a customer."""
        return self.store.identities(_sim_id("identities", customer_id))

    def add_customers(self, n: int) -> None:
        """Seed ``n`` more customers, with ids above all existing ones."""
        room = MAX_CUSTOMERS - len(self.store)
        check_number("add_customers(): n", n, 0, inclusive=True, kind=int, high=max(room, 0))
        self.store.seed(n)

    def insert_customer(self, fields: Mapping[str, Any], *, customer_id: int | None = None) -> Row:
        """Create a customer from writable wire fields, optionally with a chosen id; returns
        a copy.

        Read-only fields (``id``, ``dateCreated``, ``lastUpdated``, ``displayName``,
        ``ownerId``...) and unknown ones are ignored, as the service ignores them on a create:
        its id is ``customer_id``'s (else the next one), its times the simulator's ``clock``'s.
        """
        # Checked: a list, or an attr of a set, was a raw AttributeError from the store.
        if not isinstance(fields, Mapping):
            raise InvalidRequestError(
                f"insert_customer(): fields must be a mapping of wire names, not {short(fields)}"
            )
        attr = fields.get("attr")
        if attr is not None and not isinstance(attr, Mapping):
            raise InvalidRequestError(
                f"insert_customer(): attr must be a mapping or None, not {short(attr)}"
            )
        if customer_id is not None:
            # Refused as the other helpers refuse a bad id (InvalidRequestError naming the
            # method): the store's bare ValueError escaped `except InvalidRequestError`.
            if (
                isinstance(customer_id, bool)
                or not isinstance(customer_id, int)
                or not 1 <= customer_id <= MAX_CUSTOMER_ID
            ):
                raise InvalidRequestError(
                    "insert_customer(): a customer id is an int from 1 to 2**63 - 1, "
                    f"not {short(customer_id)}"
                )
            if customer_id in self.store:
                raise InvalidRequestError(f"insert_customer(): customer {customer_id} exists")
        row = self.store.create(fields, customer_id=customer_id)
        return {**row, "attr": dict(row["attr"])}

    def delete_customer(self, customer_id: int) -> bool:
        """Delete a customer; False if it did not exist."""
        return self.store.delete(_sim_id("delete_customer", customer_id))

    # -- tokens ---------------------------------------------------------------------------------

    @property
    def access_token(self) -> str | None:
        """The currently valid access token, if any."""
        return self.tokens.current

    def revoke_tokens(self, after_requests: int = 0) -> None:
        """Revoke the active token now, or after that many more ``/v1`` requests."""
        check_number("revoke_tokens(): after_requests", after_requests, 0, inclusive=True, kind=int)
        if after_requests <= 0:
            self.tokens.revoke()
            self.state.revoke_in = None
        else:
            self.state.revoke_in = after_requests

    def expire_tokens(self, after_requests: int = 0) -> None:
        """Expire the active token now, or after that many more ``/v1`` requests."""
        check_number("expire_tokens(): after_requests", after_requests, 0, inclusive=True, kind=int)
        if after_requests <= 0:
            self.tokens.expire()
            self.state.expire_in = None
        else:
            self.state.expire_in = after_requests

    # -- hooks ----------------------------------------------------------------------------------

    def on_request(self, hook: RequestHook) -> RequestHook:
        """Call ``hook(request)`` (sync or async) before every request is handled."""
        # Checked here, as mutate_every checks its counts: one that is no function was taken,
        # then every request answered 500 "simulator error", which the client under test
        # retried as the service's.
        if not callable(hook):
            raise InvalidRequestError(f"on_request(): hook must be a function, not {short(hook)}")
        self.state.hooks.append(hook)
        return hook

    def clear_hooks(self) -> None:
        """Remove every request hook, including `mutate_every` ones."""
        self.state.hooks.clear()

    def mutate_every(
        self,
        n_requests: int,
        *,
        inserts: int = 0,
        deletes: int = 0,
        paths: Iterable[str] = ("GET /v1/customers",),
        front: bool = True,
    ) -> RequestHook:
        """Insert and delete customers before every ``n_requests``-th matching request.

        With ``front`` (the default) deletes take the lowest ids and inserts get ids below
        the lowest one, so an ascending walk by id sees every later page shift; otherwise
        deletes are random and inserts get new, higher ids (as the live service gives).
        ``n_requests`` is an int >= 1, ``inserts`` and ``deletes`` ints >= 0 and ``front``
        a bool: anything else raises InvalidRequestError here, not in the request it is due.
        """
        # Checked here: a count of another kind (inserts="2", deletes=None or 1.5) raised
        # inside the request it was due before, answered 500 "simulator error", which the
        # client under test retried away, and a negative one did nothing; either way no
        # customer changed, and a test of a walk under churn passed with none.
        check_number("mutate_every(): n_requests", n_requests, 1, inclusive=True, kind=int)
        for name, count in (("inserts", inserts), ("deletes", deletes)):
            check_number(
                f"mutate_every(): {name}", count, 0, inclusive=True, kind=int, high=MAX_CUSTOMERS
            )
        check_flag("mutate_every", "front", front)
        matcher = Faults(paths=paths)
        seen = 0

        def hook(request: web.Request) -> None:
            nonlocal seen
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else request.path
            if not matcher.applies_to(request.method, request.path, route):
                return
            seen += 1
            if seen % n_requests == 0:
                self._mutate(inserts, deletes, front=front)

        return self.on_request(hook)

    def _mutate(self, inserts: int, deletes: int, *, front: bool) -> None:
        for customer_id in self.store.random_ids(deletes, front=front):
            if self.store.delete(customer_id):
                self.counters.mutations += 1
        if front:
            ids = self.store.ids()
            lowest = ids[0] if ids else 1_000_000
            for n in range(min(inserts, lowest - 1)):
                self.store.create({"name": f"插队客户{n}", "stage": "lead"}, lowest - 1 - n)
                self.counters.mutations += 1
        else:
            self.store.seed(inserts)
            self.counters.mutations += inserts


def _sim_id(method: str, customer_id: object) -> int:
    """``customer_id`` if it is an int (not a bool): one of another type was a raw TypeError
    from the store's index ("'<' not supported between instances of 'int' and 'str'")."""
    if isinstance(customer_id, bool) or not isinstance(customer_id, int):
        raise InvalidRequestError(
            f"{method}(): a customer id must be an int, not {short(customer_id)}"
        )
    return customer_id


def _check_faults(faults: object, *, none: bool) -> None:
    """``faults`` a :class:`Faults` (or None, where ``none``), else InvalidRequestError."""
    if not isinstance(faults, Faults) and not (none and faults is None):
        raise InvalidRequestError(f"faults must be a Faults, not {short(faults)}")


def _forget_handlers() -> None:
    """Empty aiohttp's process-wide cache of handlers with their middlewares (up to 1,024,
    keyed by the handler and its application): it kept every closed simulator that had served
    a request alive, its customers with it (some 7.5 MB for 5,000 read ones). The running
    applications' handlers are cached again at their next request."""
    for name in ("_cached_build_middleware", "_build_middlewares"):  # aiohttp 3.10+, 3.9
        cache_clear = getattr(getattr(web_app, name, None), "cache_clear", None)
        if callable(cache_clear):
            cache_clear()
