"""The cache backend: Django's Redis cache, failing open.

The cache holds only rate-limit counters (sign-up, redeem, API), which may be lost. When Redis
cannot be reached, reads find nothing and writes are dropped, so requests pass unthrottled
instead of failing with a 500: pages keep working through a Redis outage, as README promises.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, ClassVar

import redis
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)


def _unreachable(operation: str, exc: Exception) -> None:
    log.warning("cache %s skipped, Redis unreachable (limits not enforced): %s", operation, exc)


class SharedConnectionPool(redis.ConnectionPool):
    """One pool per process and server. Under ASGI Django makes a cache object per request
    context, and Django's Redis client would open a pool, so a new connection, for each: a
    round trip and a handshake on every throttled request."""

    _shared: ClassVar[dict[str, redis.ConnectionPool]] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Any:
        key = f"{url} {sorted(kwargs.items(), key=repr)!r}"
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = redis.ConnectionPool.from_url(url, **kwargs)
            return cls._shared[key]


class SharedClientRedisCacheClient(RedisCacheClient):
    """Django's client makes a new `redis.Redis` (some 170 response callbacks set up) for
    every cache call; a client is thread-safe, so one per connection pool (shared per process,
    above) serves them all."""

    _clients: ClassVar[weakref.WeakKeyDictionary[redis.ConnectionPool, redis.Redis]] = (
        weakref.WeakKeyDictionary()
    )
    _clients_lock = threading.Lock()

    def get_client(self, key: Any = None, *, write: bool = False) -> redis.Redis:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        with self._clients_lock:
            if (client := self._clients.get(pool)) is None:
                client = self._clients[pool] = redis.Redis(connection_pool=pool)
        return client


class FailOpenRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = SharedClientRedisCacheClient

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        try:
            return super().get(key, default, version)
        except UNREACHABLE as exc:
            _unreachable("get", exc)
            return default

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        try:
            super().set(key, value, timeout, version)
        except UNREACHABLE as exc:
            _unreachable("set", exc)

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        try:
            return super().add(key, value, timeout, version)
        except UNREACHABLE as exc:
            _unreachable("add", exc)
            return True  # as if this were the first: a counter starts afresh

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        try:
            return super().incr(key, delta, version)
        except UNREACHABLE as exc:
            _unreachable("incr", exc)
            raise ValueError("no counter while Redis is unreachable") from exc

    def delete(self, key: Any, version: int | None = None) -> bool:
        try:
            return super().delete(key, version)
        except UNREACHABLE as exc:
            _unreachable("delete", exc)
            return False
