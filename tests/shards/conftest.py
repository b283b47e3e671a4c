"""Fixtures of the sharded-export tests: a real redis-server of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _redis import REDIS_SERVER, SKIP_REASON, RedisServer, no_leaks, redis_server


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Each test fails itself if it leaves a Redis connection open (tests/_redis.py)."""
    with no_leaks():
        yield


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free 127.0.0.1 port, stopped at the end (tests/_redis.py)."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    directory = tmp_path / "redis"
    directory.mkdir()
    with redis_server(directory) as server:
        yield server
