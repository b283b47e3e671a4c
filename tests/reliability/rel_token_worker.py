"""One worker process of the token-sharing scenarios (test_rel_tokens.py).

``python rel_token_worker.py BASE_URL APP_ID STORE CALLS``, with the secret in ``$DMHUB_SECRET``
and STORE ``file:PATH`` or a ``redis://`` URL. It prints ``ready`` and waits for a line on stdin
(so that every worker starts at once); makes its first call, prints ``warm`` and waits for a
line again (so that the test knows every worker holds a token); makes the other calls ten at a
time, then prints one JSON line: the calls that succeeded, the errors of those that failed,
its own token fetches.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from typing import Any

from dmhub_async import DMHubClient, DMHubError, FileTokenStore, RedisTokenStore, TokenStore

AT_ONCE = 10


async def wait_for_go(state: str) -> None:
    print(state, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def main(base_url: str, app_id: str, where: str, calls: int) -> None:
    store: TokenStore
    if where.startswith("file:"):
        store = FileTokenStore(where.removeprefix("file:"))
    else:
        store = RedisTokenStore(where)
    try:
        report = await calls_on(store, base_url, app_id, calls)
    finally:
        if isinstance(store, RedisTokenStore):
            await store.aclose()  # the client leaves the store it was given open
    print(json.dumps(report), flush=True)


async def calls_on(store: TokenStore, base_url: str, app_id: str, calls: int) -> dict[str, Any]:
    ok, failed = 0, []
    secret = os.environ["DMHUB_SECRET"]
    async with DMHubClient(app_id, secret, base_url=base_url, token_store=store) as dm:
        await wait_for_go("ready")
        batches = [1] + [AT_ONCE] * ((calls - 1) // AT_ONCE) + [(calls - 1) % AT_ONCE]
        for number, size in enumerate(batches):
            if number == 1:
                await wait_for_go("warm")
            results = await asyncio.gather(
                *(dm.customers.count() for _ in range(size)), return_exceptions=True
            )
            for result in results:
                if isinstance(result, DMHubError):
                    failed.append(f"{type(result).__name__}: {result}")
                elif isinstance(result, BaseException):
                    failed.append(f"{type(result).__module__}.{type(result).__name__}: {result}")
                else:
                    ok += 1
        fetches = dm.stats.token_fetches
    return {"ok": ok, "failed": failed, "fetches": fetches}


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
    gc.collect()  # a connection left open says so on stderr (run with -W always::ResourceWarning)
