"""The platform's Dramatiq broker on REDIS_URL, built on first use (never at import).

Web processes use it to enqueue generation requests for GPU workers; the platform worker
(`manage.py run_platform_worker`) consumes PLATFORM_QUEUE from it, after declaring the event actor
on it (`generation.worker_events.register_platform_actors`): this module knows nothing of the
domain and registers no actor.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from django.conf import settings
from django.db import close_old_connections, connections
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware
from dramatiq.worker import WorkerThread

from gpu_worker.wakeup import WakeupRedisBroker

_lock = threading.Lock()
_broker: WakeupRedisBroker | None = None
_redis: redis.Redis | None = None
_blocking_redis: redis.Redis | None = None
BLOCKING_SOCKET_TIMEOUT = 60  # longer than any blocking read the platform makes (BLPOP)


class DjangoConnections(Middleware):
    """Close stale database connections around each message, as Django does per request."""

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        close_old_connections()

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        close_old_connections()

    after_skip_message = after_process_message

    def before_worker_thread_shutdown(self, broker: Broker, thread: WorkerThread) -> None:
        connections.close_all()


def redis_url() -> str:
    return settings.REDIS_URL


def get_redis() -> redis.Redis:
    """A plain client for the cancel flags, heartbeats and sweeper bookkeeping."""
    global _redis
    with _lock:
        if _redis is None:
            _redis = redis.Redis.from_url(
                redis_url(), socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
            )
        return _redis


def get_blocking_redis() -> redis.Redis:
    """A client for blocking reads (waiting for a preview's reply): get_redis's 5 s socket
    timeout would cut a longer BLPOP short."""
    global _blocking_redis
    with _lock:
        if _blocking_redis is None:
            _blocking_redis = redis.Redis.from_url(
                redis_url(), socket_connect_timeout=2, socket_timeout=BLOCKING_SOCKET_TIMEOUT
            )
        return _blocking_redis


def get_broker() -> WakeupRedisBroker:
    global _broker
    with _lock:
        if _broker is None:
            broker = WakeupRedisBroker(
                url=redis_url(),
                socket_connect_timeout=2,
                socket_timeout=10,
                health_check_interval=30,
            )
            broker.add_middleware(DjangoConnections())
            _broker = broker
        return _broker


def reset_for_tests() -> None:
    """Forget the cached clients (tests that change REDIS_URL)."""
    global _broker, _redis, _blocking_redis
    with _lock:
        if _broker is not None:
            _broker.close()
        _broker = None
        _redis = None
        _blocking_redis = None
