"""Whether a job's cancel flag may have changed, known at each step without a Redis round trip.

Reading the flag (`CANCEL_KEY`) at every step costs a round trip per step: a few percent of a
fast GPU step, and more on a busy host. Instead one connection per worker process asks Redis
for client-side tracking in broadcast mode on the cancel keys' prefix (RESP3, Redis 6+): Redis
pushes an invalidation on that connection whenever any cancel flag is set or deleted, and
writes it out before the reply to the command that set it. A step only polls the socket; the
monitor reads its flag when something arrived (`version` moved), when the watch is not
tracking (old Redis, connection lost: then every step reads, as without a watch), and at least
every `RECHECK_SECONDS` in case a connection died silently.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from gpu_worker.protocol import CANCEL_KEY

if TYPE_CHECKING:
    import redis
    import redis.connection

log = logging.getLogger(__name__)

CANCEL_PREFIX = CANCEL_KEY.format(job_id="")
RECHECK_SECONDS = 1.0  # a read at least this often, whatever the watch says
RETRY_SECONDS = 5.0  # how long a watch that could not track waits before trying again


class CancelWatch:
    """Counts the pushes Redis sends when any cancel flag changes."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        """`pool`: RESP3 connections to the flags' Redis (see `for_client`); one is taken when
        first asked."""
        self._pool = pool
        self._connection: redis.connection.Connection | None = None
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._version = 0
        self._warned = False  # once per outage: a Redis without tracking would warn forever

    @classmethod
    def for_client(cls, client: redis.Redis) -> CancelWatch:
        """A watch on the server `client` talks to (over a connection of its own)."""
        import redis

        pool = client.connection_pool
        kwargs = {**pool.connection_kwargs, "protocol": 3}
        return cls(redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))

    def version(self) -> int | None:
        """A number that grows whenever a cancel flag may have changed since the last call;
        None while not tracking (read the flag)."""
        with self._lock:
            connection = self._connection or self._start()
            if connection is None:
                return None
            try:
                while connection.can_read(timeout=0):
                    connection.read_response(push_request=True)
                    self._version += 1
            except Exception as exc:
                self._stop(f"cancel watch lost its connection ({exc}): flags read every step")
                return None
            return self._version

    def _start(self) -> redis.connection.Connection | None:
        if time.monotonic() < self._retry_at:
            return None
        try:
            connection = self._pool.get_connection()
            self._connection = connection
            connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", CANCEL_PREFIX)
            connection.read_response()
        except Exception as exc:
            self._stop(f"no cancel watch ({exc}; Redis down, or no RESP3 tracking): flags read")
            return None
        self._version += 1  # anything may have changed while not tracking
        self._warned = False
        return connection

    def _stop(self, why: str) -> None:
        if not self._warned:
            log.warning("%s", why)
            self._warned = True
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if self._connection is not None:
            self._connection.disconnect()
            self._pool.release(self._connection)  # reconnected when taken again
            self._connection = None

    def close(self) -> None:
        with self._lock:
            self._connection = None
            self._pool.disconnect()
