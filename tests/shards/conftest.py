"""Fixtures of the sharded-export tests: each fails itself if it leaks a Redis connection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _redis import no_leaks


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Each test fails itself if it leaves a Redis connection open (tests/_redis.py)."""
    with no_leaks():
        yield
