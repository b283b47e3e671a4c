"""The real redis-server of the tests (``dmhub_async.testing._redis``, which benchmarks use too)."""

from dmhub_async.testing._redis import (
    REDIS_SERVER,
    SKIP_REASON,
    RedisServer,
    free_port,
    redis_server,
)

__all__ = ["REDIS_SERVER", "SKIP_REASON", "RedisServer", "free_port", "redis_server"]
