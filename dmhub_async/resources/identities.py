"""``dm.identities``: bind identities to customers and find customers by identity."""

from __future__ import annotations

import asyncio
import builtins
import copy
import functools
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from typing import Any, Literal, overload

from .._converter import identity_to_wire, structure_identities, structure_identity
from .._converter.scalars import INT_TEXT
from .._exceptions import (
    AuthenticationError,
    DMHubError,
    InvalidRequestError,
    ResponseDecodeError,
)
from .._sansio import TOKEN_PATH
from .._validate import (
    at_index,
    check_concurrency,
    check_flag,
    check_id,
    check_identity,
    is_collection,
)
from ..models.identity import CustomerIdentity, Identity
from ._batches import sized_batches
from ._filters import LONG_ID_LIST, checked_ids
from ._pages import decode, decode_answer
from ._resource import Resource
from .customers import NOT_FOUND_CODES

__all__ = ["Identities"]

#: Results remembered by lookup_iter to answer repeats without a request (bounded memory).
_REPEAT_CACHE = 65_536
#: lookup_iter (and lookup_many, checking its input) let the event loop run once every this
#: many inputs, whatever they awaited.
_PAUSE_EVERY = 1_024

#: What a binding's ``identityName`` may be for a lookup to read the row in place (absent: None).
_NAME_TYPES = (type(None), str)


class Identities(Resource):
    """Customer identities: ``dm.identities``."""

    async def add(self, customer_id: int, identity: Identity) -> CustomerIdentity:
        """Bind ``identity`` to the customer (binding it again is harmless, so it is retried).

        Raises:
            InvalidRequestError: a bad id or an identity over the contract's limits.
            NotFoundError: no such customer (the service's 40201, as on a get).
        """
        cid = check_id("add", customer_id)
        check_identity("add", identity)
        # The reference sends customerId as a string; identity answers carry it so too.
        body = {"customerId": str(cid), **identity_to_wire(identity)}
        # A missing customer is the 500 + 40201 of a get: an answer, not a failure to retry
        # (it was retried as a ServerError, five requests and seconds of backoff).
        # The answer goes straight to decode, never into a variable here (see decode).
        return decode_answer(
            structure_identity,
            await self._session.request(
                "POST", "/v1/customeridentities", json=body, not_found_codes=NOT_FOUND_CODES
            ),
            "an identity",
            (self._session, "POST", "/v1/customeridentities", True),
        )

    async def list(self, customer_ids: Iterable[int]) -> builtins.list[CustomerIdentity]:
        """Every identity bound to these customers (only theirs: a binding of another customer
        the answer holds is left out, as :meth:`find` leaves out another identity's)."""
        ids = checked_ids("list", customer_ids, "customer_ids")
        found: builtins.list[CustomerIdentity] = []
        split = functools.partial(sized_batches, "list", {}, "customerIds", ids)
        # A long list joined and split on a thread, a few thousand ids a step: 300,000 ids held
        # the event loop 780 ms before the first request. A short one (the usual call, one
        # URL) here, as list() does below LONG_ID_LIST: a thread's hand-over is most of it.
        batches, _ = await asyncio.to_thread(split) if len(ids) > LONG_ID_LIST else split()
        for batch in batches:  # one unless the list is long
            found += decode_answer(
                structure_identities,
                await self._session.request("GET", "/v1/customeridentities", params=batch),
                "a list of identities",
                (self._session, "GET", "/v1/customeridentities", True),
            )
        asked = set(ids)
        return [binding for binding in found if binding.customer_id in asked]

    async def find(self, identity: Identity) -> builtins.list[CustomerIdentity]:
        """The bindings of ``identity`` (empty when no customer holds it).

        Only those of this type and value: a binding of another the answer holds is left out,
        as :meth:`lookup` skips it (it was returned, and read as this identity's customer).
        """
        wanted = check_identity("find", identity)
        return [
            binding
            for binding in await self._find(wanted)
            if binding.type == wanted.type and binding.value == wanted.value
        ]

    async def lookup(self, identity: Identity) -> int | None:
        """The id of the customer holding ``identity``, or None."""
        return await self._lookup(check_identity("lookup", identity), in_own_task=False)

    # Unchecked: lookup_iter checks each identity once, as it takes it in.
    async def _find(self, identity: Identity) -> builtins.list[CustomerIdentity]:
        return decode(
            structure_identities,
            await self._session.request("GET", _PATH, params=_query_of(identity)),
            "a list of identities",
        )

    async def _lookup(self, identity: Identity, *, in_own_task: bool) -> int | None:
        # _find() written out: a coroutine less a lookup; no binding needs no structuring.
        # in_own_task: run in a task of lookup_many's or lookup_iter's own, whose
        # last_response no caller can read (the caller's is left as it was): not kept.
        # The answer goes straight on, never into a variable here (see decode).
        return _customer_of(
            identity,
            await self._session.request(
                "GET", _PATH, params=_query_of(identity), remembered=not in_own_task
            ),
        )

    @overload
    async def lookup_many(
        self,
        identities: Iterable[Identity],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
    ) -> dict[Identity, int | None]: ...

    @overload
    async def lookup_many(
        self,
        identities: Iterable[Identity],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[True],
    ) -> dict[Identity, int | Exception | None]: ...

    @overload
    async def lookup_many(
        self,
        identities: Iterable[Identity],
        *,
        concurrency: int = ...,
        return_exceptions: bool,
    ) -> dict[Identity, int | Exception | None]: ...

    async def lookup_many(
        self,
        identities: Iterable[Identity],
        *,
        concurrency: int = 32,
        return_exceptions: bool = False,
    ) -> dict[Identity, Any]:
        """Resolve many identities at once: ``{identity: customer_id or None}``.

        Repeats in the input are looked up once. With ``return_exceptions=True`` a failed
        lookup maps to its exception instead of failing the whole batch.

        Raises:
            InvalidRequestError: a bad identity anywhere in the input (before any request).
            AuthenticationError: the app id and secret refused (by the token request), even
                with ``return_exceptions``: the app's error, no lookup's, as a closed client's
                :class:`DMHubError` is.
            DMHubError: a lookup failed (without ``return_exceptions``): its message starts
                with the input's place and type (``lookup_many(): identities[8] (a wechat
                identity): ...``), never its value; the service's words after it may
                quote the value back, as any error's may (README, on personal data).
        """
        if not is_collection(identities):
            raise InvalidRequestError("lookup_many(): identities must be a list of Identity")
        concurrency = _check_concurrency(concurrency)
        check_flag("lookup_many", "return_exceptions", return_exceptions)  # "no" was true
        # The client's own state is no lookup's result: with return_exceptions=True a closed
        # client (or one of another event loop) answered {identity: "closed"} for each, and {};
        # refused credentials each identity's AuthenticationError (see _the_clients).
        session = self._session
        session.check_open()
        # Every key now, in input order; each worker fills in its answers as they come. The
        # loop runs every 1,024 inputs, as for lookup_iter: in one go, a million held it for
        # 0.2 s (repeats) to 1 s. A copy is checked, which nothing can change meanwhile.
        results: dict[Identity, Any] = {}
        items = list(identities)  # kept: a failed lookup is named by its place in them
        for taken, identity in enumerate(items, 1):
            try:
                results.setdefault(check_identity("lookup_many", identity))
            except InvalidRequestError as err:
                raise at_index(err, "lookup_many", taken - 1) from None
            if not taken % _PAUSE_EVERY:
                await asyncio.sleep(0)
        if not results:
            return results
        todo = iter(list(results))

        # A fixed pool of workers rather than a task per lookup (lookup_iter's way, which must
        # yield in order): 167k -> 120k instructions a lookup, counted with a canned answer
        # (benchmarks/HISTORY.md, issue 15's fifth round).
        request = self._session.request

        async def worker() -> None:
            for identity in todo:  # shared: each identity goes to exactly one worker
                try:
                    # _lookup(identity, in_own_task=True), written out: a coroutine less a
                    # lookup (about 1k instructions of 405k: bench_instructions --question 4c).
                    query = _query_of(identity)
                    results[identity] = _customer_of(
                        identity, await request("GET", _PATH, params=query, remembered=False)
                    )
                except Exception as err:
                    if _the_clients(session, err):  # closed meanwhile, or refused: see above
                        raise
                    if not return_exceptions:
                        # Which of the inputs it was: "GET /v1/customeridentities -> HTTP
                        # 400" named none of 5,000 (the URL's value is masked).
                        named = _named(err, "lookup_many", items.index(identity), identity)
                        if named is err:
                            raise
                        raise named.with_traceback(err.__traceback__) from err.__cause__
                    results[identity] = err

        workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(results)))]
        try:
            await asyncio.gather(*workers)
        finally:
            # A failure (or the caller's cancellation) stops the others, and is awaited here:
            # no lookup outlives the call.
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return results

    @overload
    def lookup_iter(
        self,
        identities: Iterable[Identity] | AsyncIterable[Identity],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
    ) -> AsyncGenerator[tuple[Identity, int | None], None]: ...

    @overload
    def lookup_iter(
        self,
        identities: Iterable[Identity] | AsyncIterable[Identity],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[True],
    ) -> AsyncGenerator[tuple[Identity, int | Exception | None], None]: ...

    @overload
    def lookup_iter(
        self,
        identities: Iterable[Identity] | AsyncIterable[Identity],
        *,
        concurrency: int = ...,
        return_exceptions: bool,
    ) -> AsyncGenerator[tuple[Identity, int | Exception | None], None]: ...

    def lookup_iter(
        self,
        identities: Iterable[Identity] | AsyncIterable[Identity],
        *,
        concurrency: int = 32,
        return_exceptions: bool = False,
    ) -> AsyncGenerator[tuple[Identity, int | Exception | None], None]:
        """Yield ``(identity, customer_id or None)`` in input order, ``concurrency`` at a time.

        For inputs too large for memory: any iterable or async iterable; at most
        ``concurrency`` lookups are in flight at once, and at most ``4 x concurrency``
        inputs taken and not yet handed back (answers waiting behind one being retried).
        Recent repeats are answered from memory; the event loop runs at least once every
        1,024 inputs, repeats included.

        With ``return_exceptions=True`` a failed lookup's exception is yielded in its place;
        a closed client or refused credentials (the token request's
        :class:`AuthenticationError`) are raised, as by :meth:`lookup_many`.

        An async generator: ``break`` leaves the lookups in flight to Python's clean-up of the
        abandoned generator; ``await it.aclose()`` (or ``contextlib.aclosing``) cancels them at
        once (typed so: an ``AsyncIterator`` has no ``aclose`` for ``mypy --strict``).
        """
        return self._lookup_iter(identities, concurrency, return_exceptions)

    async def _lookup_iter(
        self,
        identities: Iterable[Identity] | AsyncIterable[Identity],
        concurrency: int,
        return_exceptions: bool,
    ) -> AsyncGenerator[tuple[Identity, int | Exception | None], None]:
        """lookup_iter's generator: it checks its arguments at its first step, before a request."""
        concurrency = _check_concurrency(concurrency)
        check_flag("lookup_iter", "return_exceptions", return_exceptions)
        if not isinstance(identities, AsyncIterable) and not is_collection(identities):
            raise InvalidRequestError("lookup_iter(): identities must be an iterable of Identity")
        session = self._session
        session.check_open()  # the client's state is no lookup's result: see lookup_many
        loop = asyncio.get_running_loop()
        cache: OrderedDict[Identity, int | None] = OrderedDict()
        window: deque[tuple[Identity, asyncio.Future[int | None]]] = deque()
        # Lookups in flight (or done, not yet yielded), and how many window entries wait on each.
        pending: dict[Identity, tuple[asyncio.Future[int | None], int]] = {}
        # Lookups in flight, and what a wait for one of them to end waits on. Only these count
        # against `concurrency`: an answer waiting behind the head of the window (a lookup
        # retried, its backoff or Retry-After long) counted too, and held every other lookup
        # until the head's ended (a CLI lookup of 20,000 rows, 3% of answers failing: 169 s;
        # 103 s so, 13 s with no failure).
        running = 0
        ended: list[asyncio.Future[None]] = []

        def end(_: object) -> None:
            nonlocal running
            running -= 1
            if ended and not ended[0].done():
                ended[0].set_result(None)

        def start(identity: Identity) -> None:
            nonlocal running
            entry = pending.get(identity)
            if entry is not None:
                future, waiting = entry
                pending[identity] = (future, waiting + 1)
            elif identity in cache:  # a recent repeat: answered without a request, in order
                future = loop.create_future()
                future.set_result(cache[identity])
            else:
                future = loop.create_task(self._lookup(identity, in_own_task=True))
                running += 1
                future.add_done_callback(end)
                pending[identity] = (future, 1)
            window.append((identity, future))

        async def drain_one() -> tuple[Identity, Any]:
            identity, future = window[0]
            try:
                result: Any = await future
            except Exception as err:
                if not return_exceptions or _the_clients(session, err):
                    raise
                result = err
            else:
                cache[identity] = result
                cache.move_to_end(identity)
                if len(cache) > _REPEAT_CACHE:
                    cache.popitem(last=False)
            # Out of the window only once answered, so that a cancelled consumer cancels it.
            window.popleft()
            entry = pending.get(identity)
            if entry is not None and entry[0] is future:
                if entry[1] == 1:
                    del pending[identity]
                else:
                    pending[identity] = (future, entry[1] - 1)
            return identity, result

        source = _aiter(identities)
        # An async input may keep us waiting (a queue fed now and then): its next item is
        # awaited beside the head of the window, whose answer then goes out first. Waiting on
        # the input alone held a finished lookup back until the next item came.
        racing = isinstance(identities, AsyncIterable)
        next_item: asyncio.Future[Identity] | None = None
        taken = 0
        try:
            while True:
                if racing and window:
                    if window[0][1].done():
                        # Answered (with the one before it, or a repeat of one): out before
                        # the input is waited on. Only a burst's first answer came out on
                        # time, the rest waiting for the next item, perhaps minutes later.
                        yield await drain_one()
                        continue
                    if next_item is None:
                        next_item = loop.create_task(_next(source))
                    await asyncio.wait(
                        (next_item, window[0][1]), return_when=asyncio.FIRST_COMPLETED
                    )
                    if not next_item.done():
                        yield await drain_one()
                        continue
                try:
                    if next_item is not None:
                        identity = await next_item  # cancelled here: the finally cancels it
                        next_item = None
                    else:
                        identity = await source.__anext__()  # no task: no frame of _next
                    check_identity("lookup_iter", identity)
                except StopAsyncIteration:
                    break
                except Exception as err:
                    # The input failed, or gave no identity: the items before it are answered
                    # first (they were dropped, answers and all).
                    next_item = None
                    while window:
                        yield await drain_one()
                    if isinstance(err, InvalidRequestError):
                        raise at_index(err, "lookup_iter", taken) from None
                    raise
                taken += 1
                if not taken % _PAUSE_EVERY:
                    # Repeats answered from memory, and lookups already done, go out without
                    # a pause: a long run of them held the event loop (1,000,000 repeats: 7 s).
                    await asyncio.sleep(0)
                if identity in cache and not window:
                    cache.move_to_end(identity)
                    yield identity, cache[identity]
                    continue
                start(identity)
                # An answer in is handed back once `concurrency` inputs wait (so input is read
                # about that far ahead); and until a lookup may start again, one in flight must
                # end (the head of the window may be a repeat that frees no lookup: one drain let
                # 4 x concurrency run at once after repeats), the window, answers waiting
                # included, holding at most 4 x concurrency inputs.
                while window and (
                    (window[0][1].done() and len(window) >= concurrency)
                    or running >= concurrency
                    or len(window) >= 4 * concurrency
                ):
                    if window[0][1].done() or len(window) >= 4 * concurrency:
                        yield await drain_one()
                        continue
                    # The head not done is a lookup in flight: its end is one of those awaited.
                    ended.append(loop.create_future())
                    try:
                        await ended[0]
                    finally:
                        ended.clear()
            while window:
                yield await drain_one()
        finally:
            # Everything cancelled before the one wait: a second cancel (a task group's after a
            # timeout's, anyio's at every turn) landing in a wait for the input's next item
            # came out of it, and the lookups, never cancelled, ran on and sent after the call
            # had ended. The gather waits for them all, cancelled again or not; the input's
            # next item ends before the input is closed (a generator running cannot be).
            held: list[asyncio.Future[Any]] = [future for _, future in window]
            if next_item is not None:
                held.append(next_item)
            for future in held:
                future.cancel()
            if held:
                await asyncio.gather(*held, return_exceptions=True)
            await source.aclose()


_PATH = "/v1/customeridentities"


def _query_of(identity: Identity) -> dict[str, str]:
    """The query that asks for the bindings of ``identity``."""
    return {"identityType": identity.type, "identityValue": identity.value}


def _customer_of(identity: Identity, data: Any) -> int | None:
    """The id of the customer holding ``identity`` in a lookup's answer ``data``, or None."""
    if type(data) is list:
        # The usual answer read in place, without a CustomerIdentity a row: every row is
        # checked as the converter would (a row it would refuse or read otherwise goes the
        # converter's way below, for its result or its error), the first match wins.
        found: str | int | None = None
        for row in data:
            if not (
                type(row) is dict
                and type(kind := row.get("identityType")) is str
                and type(value := row.get("identityValue")) is str
                and type(row.get("identityName")) in _NAME_TYPES
            ):
                break
            customer_id = row.get("customerId")
            if type(customer_id) is str:  # as the service sends it: ASCII digits
                if INT_TEXT.match(customer_id) is None:
                    break
            elif type(customer_id) is not int:
                break
            if found is None and kind == identity.type and value == identity.value:
                found = customer_id
        else:
            return int(found) if found is not None else None
    try:
        for binding in decode(structure_identities, data, "a list of identities"):
            if binding.type == identity.type and binding.value == identity.value:
                return binding.customer_id
    except ResponseDecodeError as err:
        # Dropped, with what the loop above read of it: see decode.
        del data
        row = kind = value = customer_id = found = None
        # This lookup's answer, as a failed request's error says: lookup_many names its input
        # (see _named), which "the answer is not a list of identities" alone left unknown.
        err.method, err.path = "GET", _PATH
        raise
    return None


def _the_clients(session: Any, err: Exception) -> bool:
    """Whether ``err`` is the client's failure, not a lookup's: the client closed, or its
    credentials refused (the token request's :class:`AuthenticationError`). Raised even with
    ``return_exceptions=True``: every lookup after it would meet it again, and a refused
    secret was each of 20,000 identities' "result", a token request with that secret sent for
    each wave of lookups (625). (A token a lookup's own request had refused twice, which two
    processes taking the token in turn may cause, stays that lookup's.)
    """
    return bool(session.closed) or (isinstance(err, AuthenticationError) and err.path == TOKEN_PATH)


def _named(err: Exception, method: str, index: int, identity: Identity) -> Exception:
    """``err``, a failed lookup's, its message starting with the input it was: its first
    place and its type (its value may be personal data, and the URL's is masked).

    A copy: one error may reach every lookup waiting on the same thing (a refused token),
    and each named it again. ``err`` itself when it is not about this lookup's request (the
    token's, the client's), which no input caused: named, a bad secret blamed an identity.
    """
    path = getattr(err, "path", None)
    if not (isinstance(err, DMHubError) and isinstance(path, str) and path.startswith(_PATH)):
        return err
    if not (err.args and isinstance(err.args[0], str)):
        return err
    named = copy.copy(err)  # DMHubError.__reduce__: its class, args and attributes
    named.args = (f"{method}(): identities[{index}] (a {identity.type} identity): {err.args[0]}",)
    named.args += err.args[1:]
    return named


def _check_concurrency(concurrency: object) -> int:
    # At most the walks' cap: lookup_iter's window holds 4 x concurrency tasks, so any number
    # was any memory (a million: 152 MB for 10,000 inputs), where the walks and the CLI cap it.
    return check_concurrency(concurrency)


async def _next(items: AsyncGenerator[Identity, None]) -> Identity:
    """The next item (StopAsyncIteration at the end): a coroutine, for a task to run."""
    return await items.__anext__()


async def _aiter(
    items: Iterable[Identity] | AsyncIterable[Identity],
) -> AsyncGenerator[Identity, None]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
