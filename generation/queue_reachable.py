"""A submission is refused (503) when the queue, Redis, does not answer: an accepted job must be
one the platform can hand to a worker.

The question is a PING sent as the submission's transaction starts and its answer read as its
writes end, so the round trip runs while the database works instead of before it: a
submission pays no wait of its own for it. Redis that cannot be asked at all is refused
before the block; Redis that stops answering meanwhile is refused at its end, which inside
`transaction.atomic()` rolls back whatever the block wrote (the job, its hold): either way
nothing is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from django.utils.translation import gettext

from generation.broker import get_redis
from generation.request_errors import SubmissionError

logger = logging.getLogger(__name__)

UNREACHABLE = (redis.RedisError, OSError)


@contextmanager
def queue_answering() -> Iterator[None]:
    """Raise SubmissionError (503) before the block when Redis cannot be asked (a down queue
    costs no writes), or at the end of an error-free block when its answer did not come.
    Either way a plain PING, with the client's retries, decides before refusing (a pooled
    connection gone stale when Redis restarted is no dead queue)."""
    pool = get_redis().connection_pool
    connection = _ping_sent(pool)
    if connection is None and not _answers_now():
        raise _unreachable()
    try:
        yield
    finally:
        answered = connection is None or _answer_read(pool, connection)
    if not answered and not _answers_now():
        raise _unreachable()


def _ping_sent(pool: redis.ConnectionPool) -> redis.Connection | None:
    """A pooled connection with a PING sent on it, its answer not yet read (None: not sent)."""
    try:
        connection = pool.get_connection()
    except UNREACHABLE:
        return None
    try:
        connection.send_command("PING")
    except UNREACHABLE:
        connection.disconnect()
        pool.release(connection)
        return None
    return connection


def _answer_read(pool: redis.ConnectionPool, connection: redis.Connection) -> bool:
    """Whether the PONG came; the connection goes back to the pool with nothing left to read
    (dropped where the answer did not come)."""
    try:
        connection.read_response()
        return True
    except UNREACHABLE:
        connection.disconnect()
        return False
    finally:
        pool.release(connection)


def _answers_now() -> bool:
    try:
        return bool(get_redis().ping())
    except UNREACHABLE:
        return False


def _unreachable() -> SubmissionError:
    logger.warning("submission refused: Redis unreachable")
    return SubmissionError("queue", gettext("the queue is unreachable, try again shortly"), 503)
