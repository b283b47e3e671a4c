"""Benchmark: the client's CPU counted in instructions, a figure a rerun reproduces.

Run ``python -m benchmarks.bench_instructions`` (``--quick`` for a smoke run; ``--json PATH``
also writes the figures; ``--contender NAME``, a label or a child's kind such as ``rows``,
counts that one alone beside its question's floor). It needs valgrind (``apt-get install
valgrind``) and says so, and does nothing else, without it.

On a shared machine the timed benchmarks move by 10-40% from one run to the next, and a ratio
of 1.20x against 1.05x cannot be told apart. Here each contender runs in a child process under
callgrind, which counts the instructions the client executes, and does nearly the same work
whatever the neighbours do: in repeated runs the counts came out within 1% of each other (the
canned-answer contenders, with no I/O at all, to the instruction). Instructions are not time (a
memory-bound copy runs more of them a nanosecond than the interpreter does, and pydantic's
Rust core fewer than its time suggests), so these figures complement the timed ones, never
replace them.

Each contender runs ``a`` and then ``b`` times in two child processes (hash seed fixed); the
difference over ``b - a`` is one run's count, without Python's start-up, the imports and the
first call's warm-up. A run of a few hundred calls is not enough: a full collection of the
garbage collector (every few hundred calls, over every object the imports left) falls inside
one window and not the other, and moved a call's count by 5-25k; 400 and 2,000 calls average
them out. The simulator serves from a process of its own, as in bench_overhead.

The children run on Python's own allocator, as every user's process does (pymalloc, for objects
of up to 512 bytes), whatever ``PYTHONMALLOC`` the caller has. Until issue 15's twentieth round
they ran on glibc's malloc alone (``PYTHONMALLOC=malloc``, which callgrind does not need), and
question 4c's SDK count of the same code moved by 3k a lookup from run to run (406k, 406k,
403k): glibc's ``malloc_consolidate``, run when a chunk of 64 KB or more is freed, walks the
small chunks freed since, and how many there are at that moment moved from run to run. Two
runs of the same 2,000-lookup child differed by 4.8M instructions, 3.5M of them there (2.2k
of the 3k a lookup), with the same event-loop turns, callbacks and collections. With the
small objects in pymalloc's pools that walk has little left to do.
Every count is lower than before (4c's floor 367k -> 345k-346k, its SDK 403k-406k ->
383k-384k) and the ratios move a little (the floor's allocations weighed more on glibc's):
no figure counted before that round compares with one counted after it.

- question 1, per page of a 100-a-page walk of ``--customers`` customers (token and client
  set-up included, spread over the pages): the aiohttp + orjson floor, the typed floor
  (aiohttp + the SDK's page reader, as ``list()`` reads a page), ``list()``, ``list().pages()``,
  ``list_rows()`` and ``list_rows().pages()``; and two diagnostics, ``list_rows()`` with the
  check for integers beyond 64 bits off and with the repeat check off: what those two promises
  cost. So ``list()``'s count splits in three: the typing (the typed floor over the floor),
  the client's machinery (``list().pages()`` over the typed floor) and the async step a record
  (``list()`` over ``list().pages()``);
- question 2, per page of 1,000 customers (10% of the rows with unknown fields, as
  bench_converter's first table), decoded in this process, no I/O: msgspec's typed decode (the
  goal's reference), our page reader, the msgspec + attrs what-if, pydantic v2 and orjson;
- question 4, per call, one call at a time: ``session.get`` + ``orjson.loads`` (the floor),
  ``dm.request`` and ``dm.identities.lookup`` of an identity; and both again with aiohttp's
  request replaced by a canned answer, which leaves the SDK's own path alone; and, canned too,
  ``lookup_many`` over 64 workers (bench_walk's lookups), a lookup counted as a call;
- question 4 for identities a customer holds (``--question 4h``), per lookup, one at a time:
  the floor and ``dm.identities.lookup`` as above, each answer a binding (which the SDK checks
  and reads), the mobiles of the simulator's first 200 customers in turn;
- question 4 as bench_walk times it (``--question 4c``), per lookup: 64 aiohttp workers of
  ``session.get`` + ``orjson.loads`` (the floor) against ``lookup_many(concurrency=64)``, real
  requests 64 at a time, each for an identity no customer holds; and a diagnostic, the floor's
  workers calling aiohttp the way the SDK's session does (its User-Agent as the session's
  default header, the keywords it passes, the answer's size checked before it is read): the
  share of the SDK's gap that is the shape of its call, not its own code. With requests in flight
  together the event loop's batching varies a little from run to run; these counts moved by
  less than 1% when run again;
- question 4 for a short-lived client (``--question 4s``), per client: a new
  ``aiohttp.ClientSession``, its token and one call, closed (the floor), against a new
  ``DMHubClient`` doing the same: what a job or a function that makes one client per run pays
  for the client's set-up (its checks, its retry loops, the proxy settings read from the
  environment, the token through the request path).
- question 5, per page of a JSONL export of ``--customers`` customers (``export_customers``,
  concurrency 8, its client, token and counts included, spread over the pages): what issue 15's
  goal for the export ("client CPU per page at least 25% lower") is measured by, side by side
  with another checkout of the SDK (``--against PATH``: the same export with the
  ``dmhub_async`` package at ``PATH``, which is the table's reference). It counts every thread
  of the process, the file threads an export writes on included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from typing import Any

try:
    from ._common import (
        REPO,
        children_stopped_on_sigterm,
        machine_info,
        record,
        simulator_process,
        write_results,
    )
except ImportError:  # run as a file: python benchmarks/bench_instructions.py
    from _common import (  # type: ignore[no-redef]
        REPO,
        children_stopped_on_sigterm,
        machine_info,
        record,
        simulator_process,
        write_results,
    )

PAGE_SIZE = 100
_IDENTITIES = "/v1/customeridentities"
_TOKEN = "/security/accesstoken"

#: Question 1's contenders: label -> what the child runs (see _walk).
WALKS: dict[str, str] = {
    "floor: aiohttp + orjson": "floor",
    "typed floor: aiohttp + the SDK's page reader": "typed-floor",
    "SDK list()": "list",
    "SDK list().pages()": "list-pages",
    'SDK list(structure="lazy"), no field read': "lazy",
    'SDK list(structure="lazy"), every field read': "lazy-read-all",
    "diagnostic: list() (eager), every field read": "eager-read-all",
    "SDK list_rows()": "rows",
    "SDK list_rows().pages()": "rows-pages",
    "diagnostic: list_rows(), big-integer check off": "rows-no-big-int-check",
    "diagnostic: list_rows(), repeat check off": "rows-no-repeat-check",
}
#: Question 4's contenders: label -> what the child runs (see _calls).
CALLS: dict[str, str] = {
    "floor: session.get + orjson.loads": "get",
    "SDK dm.request": "request",
    "SDK identities.lookup": "lookup",
    # aiohttp's request replaced by a canned answer: the SDK's own path alone, no I/O at all
    # (its count moves least: no event loop waiting on a server).
    "SDK dm.request, canned answer, no aiohttp": "request-canned",
    "SDK identities.lookup, canned answer, no aiohttp": "lookup-canned",
    # bench_walk's lookups: lookup_many over 64 workers; each lookup counted as one call
    "SDK lookup_many(concurrency=64), canned answer, no aiohttp": "lookup-many-canned",
}
#: Question 4 for identities the simulator holds (``4h``): each answer a binding, which the SDK
#: types and checks (a job resolving its customers' openids or mobiles mostly finds them).
HELD: dict[str, str] = {
    "floor: session.get + orjson.loads": "get-held",
    "SDK identities.lookup": "lookup-held",
}
#: Question 4 as bench_walk times it (``4c``): lookups 64 at a time, each a request.
LOOKUPS: dict[str, str] = {
    "floor: 64 aiohttp workers, session.get + orjson.loads": "get-64",
    "SDK lookup_many(concurrency=64)": "lookup-many",
    # The floor calling aiohttp as the SDK's session does: its share of the SDK's gap.
    "diagnostic: the floor's workers calling aiohttp the SDK's way": "get-64-sdk-way",
}
LOOKUP_FLOOR = "floor: 64 aiohttp workers, session.get + orjson.loads"
#: Question 4 for a short-lived client (``4s``): a client made, its token, one call, closed.
SHORT_LIVED: dict[str, str] = {
    "floor: a new aiohttp session, its token, one call": "get-new-session",
    "SDK: a new DMHubClient, its token, one call": "request-new-client",
}
SHORT_LIVED_FLOOR = "floor: a new aiohttp session, its token, one call"
#: Question 5's contender: a JSONL export (see _export); ``--against`` adds another checkout's.
EXPORT = "SDK export_customers (JSONL, concurrency 8)"
EXPORTS: dict[str, str] = {EXPORT: "export"}
#: Question 2's contenders: bench_converter's, by its labels (each its own kind, see _decodes).
DECODES: dict[str, str] = {
    label: label
    for label in (
        "msgspec Struct decode",
        "ours, page reader (msgspec + lenient rows)",
        "msgspec Struct + attrs build (what-if)",
        "pydantic v2 validate_json(bytes)",
        "orjson.loads (no typing)",
    )
}
DECODE_FLOOR = "msgspec Struct decode"
#: Question 2's page: customers, and the share of rows with unknown fields (as bench_converter).
DECODE_PAGE = (1000, 0.1)
WALK_FLOOR = "floor: aiohttp + orjson"
#: ``--quick``: the SDK contender each question runs beside its floor.
QUICK = {
    "1": "SDK list_rows()",
    "2": "ours, page reader (msgspec + lenient rows)",
    "4": "SDK dm.request",
    "4c": "SDK lookup_many(concurrency=64)",
    "4s": "SDK: a new DMHubClient, its token, one call",
    "4h": "SDK identities.lookup",
    "5": EXPORT,
}
CALL_FLOOR = "floor: session.get + orjson.loads"

#: callgrind's summary line: ``==123== Collected : 456789``.
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def collected(stderr: str) -> int:
    """The instruction count in callgrind's output; ValueError when it has none."""
    found = _COLLECTED.findall(stderr)
    if not found:
        raise ValueError("callgrind printed no instruction count:\n" + stderr[-2000:])
    return int(found[-1])


def per_run(count_a: int, count_b: int, a: int, b: int) -> float:
    """One run's instructions: the count of ``b`` runs less that of ``a``, over ``b - a``.

    ValueError when the difference is not positive: one of the two children did not do its
    work (a timeout under valgrind's slowness, say), and no figure is better than a wrong one.
    """
    if b <= a:
        raise ValueError(f"b ({b}) must be more than a ({a})")
    if count_b <= count_a:
        raise ValueError(f"{b} runs counted {count_b:,}, not more than {a} runs' {count_a:,}")
    return (count_b - count_a) / (b - a)


# -- the child: one contender, n times, under callgrind ----------------------------------------


def _disable(what: str) -> None:
    """Turn one promise off, for the diagnostics (never in the SDK's own use)."""
    if what == "big-int-check":
        from dmhub_async import _json

        _json._may_lose_digits = lambda body: False  # type: ignore[assignment]
    elif what == "repeat-check":
        from dmhub_async import _seen_records

        def fresh(self: Any, items: list[Any], keys: Any = None) -> tuple[list[Any], int]:
            return items, 0

        _seen_records.SeenRecords.fresh = fresh  # type: ignore[method-assign]


def _walk(kind: str, server: Any) -> Callable[[], Awaitable[int]]:
    try:
        from .bench_overhead import CONTENDERS
    except ImportError:
        from bench_overhead import CONTENDERS  # type: ignore[no-redef]

    if kind.startswith("rows-no-"):
        _disable(kind.removeprefix("rows-no-"))
        kind = "rows"
    # bench_overhead's own contenders, by their names there: what is counted is what is timed.
    name = {"floor": "orjson-floor", "list": "sdk1", "list-pages": "sdk1-pages", "rows": "rows1"}
    if kind.startswith(("lazy", "eager-")):
        return _lazy_walk(server, kind.partition("-")[0], read_all=kind.endswith("read-all"))
    walk = CONTENDERS[name.get(kind, kind)][1]()
    return lambda: walk(server)


def _lazy_walk(server: Any, structure: str, read_all: bool) -> Callable[[], Awaitable[int]]:
    """``list(structure=structure)`` as bench_overhead's ``list()`` walk: its records left
    unread, or (``read_all``) every field of every record read (lazy's honest worst case)."""
    import operator

    import attrs

    from dmhub_async import Customer, DMHubClient, MemoryTokenStore

    every_field = operator.attrgetter(*(a.name for a in attrs.fields(Customer)))

    async def walk() -> int:
        n = 0
        async with DMHubClient(
            server.app_id, server.secret, base_url=server.url, token_store=MemoryTokenStore()
        ) as dm:
            customers = dm.customers.list(page_size=PAGE_SIZE, structure=structure)  # type: ignore[arg-type]
            async for customer in customers:
                if read_all:
                    every_field(customer)
                n += 1
        return n

    return walk


def _calls(kind: str, server: Any, n: int) -> Callable[[], Awaitable[None]]:
    import aiohttp
    import orjson

    from dmhub_async import DMHubClient, Identity, MemoryTokenStore
    from dmhub_async._client import DEFAULT_MAX_RESPONSE_SIZE
    from dmhub_async._sansio import USER_AGENT

    held: list[str] = []  # "-held": the mobiles the simulator's customers hold, found first

    def value(i: int) -> str:
        return held[i % len(held)] if held else str(13900000000 + i)

    async def find_held() -> None:
        # The same work in both runs of a contender (and in the floor's and the SDK's): its
        # instructions cancel out of the difference.
        async with DMHubClient(
            server.app_id, server.secret, base_url=server.url, token_store=MemoryTokenStore()
        ) as dm:
            ids = [row["id"] async for row in dm.customers.list_rows(select=["id"], max_items=200)]
            bindings = await dm.identities.list(ids)
        held.extend(b.value for b in bindings if b.type == "mobile")

    async def get(find: bool = False) -> None:
        if find:
            await find_held()
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + _TOKEN, params=server.token_params()) as resp:
                token = orjson.loads(await resp.read())["access_token"]
            for i in range(n):
                params = {"identityType": "mobile", "identityValue": value(i)}
                params["access_token"] = token
                async with session.get(server.url + _IDENTITIES, params=params) as resp:
                    bindings = orjson.loads(await resp.read())
                if find and not bindings:
                    raise RuntimeError(f"no customer holds mobile {value(i)}")

    async def get_64(sdk_way: bool = False) -> None:
        # bench_walk's floor: 64 workers taking the next identity as soon as one is done.
        # sdk_way: aiohttp called as the SDK's own session calls it (_session.py): its
        # User-Agent as the session's default header, the one keyword it passes beside the
        # query (allow_redirects=False), the checks of the answer's size before reading it;
        # none of the SDK's own code.
        timeout = aiohttp.ClientTimeout(total=30)  # the client's default
        settings: dict[str, Any] = {"timeout": timeout, "headers": {"User-Agent": USER_AGENT}}
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), **(settings if sdk_way else {})
        ) as session:
            async with session.get(server.url + _TOKEN, params=server.token_params()) as resp:
                token = orjson.loads(await resp.read())["access_token"]
            todo = iter(range(n))

            async def worker() -> None:
                for i in todo:
                    params = {"identityType": "mobile", "identityValue": value(i)}
                    params["access_token"] = token
                    if not sdk_way:
                        async with session.get(server.url + _IDENTITIES, params=params) as resp:
                            orjson.loads(await resp.read())
                        continue
                    # The SDK's own session passes only what differs from aiohttp's defaults
                    # (_session.py, since 58ab4e1: the other keywords cost 6k a call).
                    async with session.request(
                        "GET", server.url + _IDENTITIES, params=params, allow_redirects=False
                    ) as resp:
                        length = resp.content_length
                        if (
                            length is None
                            or length > DEFAULT_MAX_RESPONSE_SIZE
                            or "Content-Encoding" in resp.headers
                        ):
                            raise RuntimeError("an answer the SDK reads in chunks")
                        orjson.loads(await resp.read())

            await asyncio.gather(*(worker() for _ in range(64)))

    async def get_new_session() -> None:
        for i in range(n):  # n sessions, one call each
            async with aiohttp.ClientSession() as session:
                async with session.get(server.url + _TOKEN, params=server.token_params()) as resp:
                    token = orjson.loads(await resp.read())["access_token"]
                params = {"identityType": "mobile", "identityValue": value(i)}
                params["access_token"] = token
                async with session.get(server.url + _IDENTITIES, params=params) as resp:
                    orjson.loads(await resp.read())

    async def request_new_client() -> None:
        for i in range(n):  # n clients, one call each
            async with DMHubClient(
                server.app_id, server.secret, base_url=server.url, token_store=MemoryTokenStore()
            ) as dm:
                params = {"identityType": "mobile", "identityValue": value(i)}
                await dm.request("GET", _IDENTITIES, params=params)

    async def sdk(lookup: bool, many: bool = False, find: bool = False) -> None:
        if find:
            await find_held()
        async with DMHubClient(
            server.app_id,
            server.secret,
            base_url=server.url,
            token_store=MemoryTokenStore(),
            max_concurrency=64 if many else 16,
        ) as dm:
            if many:
                wanted = [Identity("mobile", value(i)) for i in range(n)]
                found = await dm.identities.lookup_many(wanted, concurrency=64)
                assert len(found) == n
                return
            for i in range(n):
                if lookup:
                    found = await dm.identities.lookup(Identity("mobile", value(i)))
                    if find and found is None:
                        raise RuntimeError(f"no customer holds mobile {value(i)}")
                else:
                    params = {"identityType": "mobile", "identityValue": value(i)}
                    await dm.request("GET", _IDENTITIES, params=params)

    if kind.endswith("-canned"):
        _can_answers()
        kind = kind.removesuffix("-canned")
    return {
        "get": get,
        "get-64": get_64,
        "get-64-sdk-way": lambda: get_64(sdk_way=True),
        "get-new-session": get_new_session,
        "request-new-client": request_new_client,
        "request": lambda: sdk(False),
        "lookup": lambda: sdk(True),
        "get-held": lambda: get(find=True),
        "lookup-held": lambda: sdk(True, find=True),
        "lookup-many": lambda: sdk(True, many=True),
    }[kind]


def _can_answers() -> None:
    """Replace aiohttp's ``ClientSession.request`` with a canned answer (this process only):
    a token for the token request, one identity binding for any other."""
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy

    token = b'{"access_token": "canned-token-0123456789abcdef", "expires_in": 7200}'
    binding = b'[{"customerId": 3000000001, "identityType": "mobile", "identityValue": "1"}]'

    class Answer:
        status = 200
        _writer = None  # aiohttp's task writing the request's body: done (None) by the answer

        def __init__(self, body: bytes) -> None:
            self.body = body
            self.content_length = len(body)
            self.headers = CIMultiDictProxy(
                CIMultiDict({"Content-Type": "application/json", "Content-Length": str(len(body))})
            )

        async def read(self) -> bytes:
            return self.body

        def release(self) -> None:
            return None

        async def wait_for_close(self) -> None:
            return None

    class Canned:
        """What ``ClientSession.request`` returns: awaited (the SDK's way) or entered."""

        def __init__(self, body: bytes) -> None:
            self.body = body

        def __await__(self) -> Generator[Any, None, Answer]:
            return self.answer().__await__()

        async def answer(self) -> Answer:
            return Answer(self.body)

        async def __aenter__(self) -> Answer:
            return Answer(self.body)

        async def __aexit__(self, *exc: object) -> None:
            return None

    def request(self: object, method: str, url: str, **kwargs: object) -> Canned:
        return Canned(token if url.endswith(_TOKEN) else binding)

    aiohttp.ClientSession.request = request  # type: ignore[assignment,method-assign]


def _decodes(label: str, n: int) -> int:
    """Read ``n`` pages (four distinct ones in turn) with bench_converter's contender ``label``;
    the records read from the last."""
    try:
        from . import bench_converter
    except ImportError:
        import bench_converter  # type: ignore[no-redef]

    size, unknown_share = DECODE_PAGE
    bodies = [bench_converter.make_page(size, seed, unknown_share) for seed in range(1, 5)]
    run = bench_converter.CONTENDERS[label]()
    read = 0
    for i in range(n):
        read = run(bodies[i % len(bodies)])
    return read


async def _export(server: Any, n: int) -> int:
    """``n`` JSONL exports of every customer, each by a new client; the last one's count.

    The ``dmhub_async`` imported is whichever ``PYTHONPATH`` puts first (``count`` puts
    ``--against``'s checkout there): only what every release has had is used.
    """
    import tempfile

    from dmhub_async import DMHubClient, MemoryTokenStore
    from dmhub_async.export import export_customers

    exported = 0
    with tempfile.TemporaryDirectory() as folder:
        for i in range(n):
            async with DMHubClient(
                server.app_id, server.secret, base_url=server.url, token_store=MemoryTokenStore()
            ) as dm:
                report = await export_customers(
                    dm, os.path.join(folder, f"{i}.jsonl"), progress=False, concurrency=8
                )
            if not report.complete:
                raise RuntimeError(f"the export was not complete: {report}")
            exported = report.exported
    return exported


def child(kind: str, n: int) -> None:
    """Run contender ``kind`` ``n`` times (walks) or ``n`` calls, against $BENCH_SIM_*; print
    the records the last walk read (or the calls made), so a smoke test sees the work done."""
    try:
        from .bench_overhead import Server
    except ImportError:
        from bench_overhead import Server  # type: ignore[no-redef]

    server = Server(
        os.environ["BENCH_SIM_URL"], os.environ["BENCH_SIM_APP_ID"], os.environ["BENCH_SIM_SECRET"]
    )

    if kind in DECODES.values():
        print(_decodes(kind, n))
        return

    async def main() -> int:
        if kind.partition("@")[0] == "export":
            code = kind.partition("@")[2]
            import dmhub_async

            if code and not dmhub_async.__file__.startswith(code):  # not the checkout asked for
                raise RuntimeError(f"dmhub_async from {dmhub_async.__file__}, not {code}")
            return await _export(server, n)
        if kind in (*CALLS.values(), *HELD.values(), *LOOKUPS.values(), *SHORT_LIVED.values()):
            await _calls(kind, server, n)()
            return n
        walk = _walk(kind, server)
        read = 0
        for _ in range(n):
            read = await walk()
        return read

    print(asyncio.run(main()))


# -- the parent ---------------------------------------------------------------------------------


def count(kind: str, n: int, sim: Any) -> int:
    """The instructions of a child running ``kind`` ``n`` times, under callgrind.

    ``export@PATH``: the child imports ``dmhub_async`` from the checkout at ``PATH``, and runs
    this file as a script (``-m`` would put this checkout first on its path).
    """
    code = kind.partition("@")[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMHUB_")} | {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [code, str(REPO), os.environ.get("PYTHONPATH")])
        ),
        "PYTHONHASHSEED": "0",  # the same dict and set layouts in every child
        # Python's own allocator, as a user's process runs (see the docstring): on glibc's
        # alone, freeing a large chunk walked a number of small ones that varied run to run.
        "PYTHONMALLOC": "pymalloc",
        "BENCH_SIM_URL": sim.url,
        "BENCH_SIM_APP_ID": sim.app_id,
        "BENCH_SIM_SECRET": sim.secret,
    }
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        *([os.path.abspath(__file__)] if code else ["-m", "benchmarks.bench_instructions"]),
        "--child",
        kind,
        str(n),
    ]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} x{n} failed under valgrind:\n{done.stderr[-3000:]}")
    return collected(done.stderr)


def measure(
    contenders: Mapping[str, str], runs: tuple[int, int], sims: Sequence[Any], unit: float
) -> dict[str, float]:
    """Each contender's instructions per ``unit`` of one run (a page, a call).

    The children run one a simulator at a time, as many at once as there are ``sims``: what
    each counts is its own work, whatever runs beside it. Never two on one simulator: a token
    fetched revokes the one before (docs/contract.md), and the floors do not fetch again.
    """
    a, b = runs
    labels = list(contenders)
    free: queue.Queue[Any] = queue.Queue()
    for sim in sims:
        free.put(sim)

    def job(kind: str, n: int) -> int:
        sim = free.get()
        try:
            return count(kind, n, sim)
        finally:
            free.put(sim)

    pool = ThreadPoolExecutor(len(sims))
    try:
        counts = list(pool.map(lambda jn: job(contenders[jn[0]], jn[1]), product(labels, runs)))
    finally:
        # Stopped (a kill, Ctrl+C): no child more is started, and the caller stops the
        # simulators, which ends those running. (`with pool` would run every queued one first.)
        pool.shutdown(wait=False, cancel_futures=True)
    figures: dict[str, float] = {}
    for i, label in enumerate(labels):
        figures[label] = per_run(counts[2 * i], counts[2 * i + 1], a, b) / unit
    return figures


def table(figures: Mapping[str, float], floor: str, what: str) -> str:
    """Contender, thousands of instructions per ``what``, and the ratio to the floor."""
    width = max(52, *map(len, figures))
    lines = [f"{'contender':<{width}} {'k instr/' + what:>14} {'vs floor':>9}"]
    for label, value in figures.items():
        lines.append(f"{label:<{width}} {value / 1e3:14,.0f} {value / figures[floor]:8.2f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Count every contender's instructions and print a table a question."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    parser.add_argument("--customers", type=int, default=2000, help="customers to walk")
    parser.add_argument(
        "--calls",
        type=int,
        default=2000,
        help="calls of question 4's run b (a: a fifth): enough for the garbage collector's full"
        " collections to average out; question 4s makes a quarter as many clients (a: a twentieth)",
    )
    parser.add_argument(
        "--question",
        action="append",
        choices=("1", "2", "4", "4h", "4c", "4s", "5"),
        help="only these (repeatable)",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="children under valgrind at once, a simulator each"
    )
    parser.add_argument(
        "--against",
        metavar="PATH",
        help="question 5 beside the same export by the dmhub_async of another checkout (its"
        " root: a `git worktree add` of an older commit), the table's reference",
    )
    parser.add_argument(
        "--contender",
        action="append",
        metavar="NAME",
        help="only this contender (its label, or its kind: rows, list, rows-no-big-int-check...)"
        " beside its question's floor, in the questions that have it (repeatable)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("skipped: valgrind is not installed (apt-get install valgrind)")
        return 0
    exports: dict[str, str] = {}
    export_floor = EXPORT
    if args.against:
        against = os.path.abspath(args.against)
        if not os.path.isfile(os.path.join(against, "dmhub_async", "__init__.py")):
            parser.error(f"--against {args.against}: no dmhub_async package there")
        export_floor = f"the same export, dmhub_async at {against}"
        exports[export_floor] = f"export@{against}{os.sep}"
    exports |= EXPORTS
    customers = 300 if args.quick else args.customers
    pages = -(-customers // PAGE_SIZE)
    calls = args.calls
    # question -> (contenders, runs a and b, the unit a figure is of, the floor, heading)
    plans: dict[str, tuple[Mapping[str, str], tuple[int, int], float, str, str]] = {
        "1": (
            WALKS,
            (2, 5),
            pages,
            WALK_FLOOR,
            f"instructions a page ({pages} pages a walk, set-up included)",
        ),
        "2": (
            DECODES,
            (2, 6),
            1,
            DECODE_FLOOR,
            f"instructions a page of {DECODE_PAGE[0]:,} customers (the floor: msgspec)",
        ),
        "4": (CALLS, (calls // 5, calls), 1, CALL_FLOOR, "instructions a call (one at a time)"),
        "4h": (
            HELD,
            (calls // 5, calls),
            1,
            CALL_FLOOR,
            "instructions a lookup of an identity a customer holds (one at a time)",
        ),
        "4c": (
            LOOKUPS,
            (calls // 5, calls),
            1,
            LOOKUP_FLOOR,
            "instructions a lookup, 64 at a time (bench_walk's lookups; no customer holds them)",
        ),
        "4s": (
            SHORT_LIVED,
            (calls // 20, calls // 4),
            1,
            SHORT_LIVED_FLOOR,
            "instructions a short-lived client: made, its token, one call, closed",
        ),
        "5": (
            exports,
            (1, 3),
            pages,
            export_floor,
            f"instructions a page of a JSONL export ({pages} pages, the client and its counts"
            " included)",
        ),
    }
    every = {question: plan[0] for question, plan in plans.items()}  # each one's contenders
    if args.quick:  # a floor and the SDK of each question, small
        for question, (contenders, _, unit, floor, heading) in plans.items():
            picked = {k: contenders[k] for k in (floor, QUICK[question])}
            runs = (20, 60) if question.startswith("4") else (1, 2)
            if question == "5":  # the reference too, when there is one
                picked = exports
            plans[question] = (picked, runs, unit, floor, heading)
    if args.contender:  # each question's floor and the contenders named, in their order
        wanted = set(args.contender)
        known = {n for c in every.values() for item in c.items() for n in item}
        if wanted - known:
            parser.error(
                f"--contender {', '.join(sorted(wanted - known))}: no such contender; the kinds:"
                f" {', '.join(sorted({k for c in every.values() for k in c.values()}))}"
            )
        for question, (_, runs, unit, floor, heading) in list(plans.items()):
            named = {k: v for k, v in every[question].items() if {k, v} & wanted}
            if named:
                plans[question] = (
                    {floor: every[question][floor]} | named,
                    runs,
                    unit,
                    floor,
                    heading,
                )
            else:  # nothing asked of this question
                del plans[question]
    chosen = sorted(set(args.question or plans) & set(plans))
    if not chosen:
        parser.error("--contender: none of the contenders named is in the questions chosen")
    print(machine_info())
    print(f"valgrind --tool=callgrind; {customers} customers, {pages} pages of {PAGE_SIZE}")
    figures: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(simulator_process(customers)) for _ in range(args.jobs)]
        for question in chosen:
            contenders, runs, unit, _, _ = plans[question]
            print(f"question {question}: runs of {runs[0]} and {runs[1]}", flush=True)
            figures[question] = measure(contenders, runs, sims, unit)
    for question in chosen:
        _, _, _, floor, heading = plans[question]
        print(f"\nquestion {question}: {heading}")
        unit_name = {"4": "call", "4h": "lookup", "4c": "lookup", "4s": "client"}.get(
            question, "page"
        )
        print(table(figures[question], floor, unit_name))
        for label, value in figures[question].items():
            record(
                question,
                f"{heading} (callgrind)",
                label,
                [value],
                floors={"floor (instructions)": figures[question][floor]},
                unit="k instr",
                scale=1e-3,
                summary=False,
            )
    if args.json:
        write_results(args.json, "bench_instructions")
    return 0


if __name__ == "__main__":
    with children_stopped_on_sigterm():  # a kill stops the children too
        sys.exit(main())
