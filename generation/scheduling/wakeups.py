"""The dispatcher's doorbell: a Redis list the platform worker's dispatcher thread blocks on.

Anyone may ring it (one round trip): a new job's id (a pass, then its owner hears its place),
"" (a plain pass), or POSITIONS (no pass: every queued job's owner hears their place from the
dispatcher's next snapshot). The answer says whether a dispatcher is alive to hear it; where none
is, the caller does the work itself (`dispatcher.wake_dispatcher`,
`lifecycle.publish_queue_positions`).
"""

from __future__ import annotations

from collections.abc import Mapping

from generation import waiting_set
from generation.broker import get_redis

WAKE_KEY = "atelier:scheduler:wake"  # new job ids (or "" for a plain pass) for the dispatcher
ALIVE_KEY = "atelier:scheduler:alive"  # set while a dispatcher thread serves WAKE_KEY
ALIVE_TTL_S = 5
WAKE_BACKLOG = 1000  # values kept for a dispatcher that is busy or restarting
POSITIONS = "*positions"  # not a job id: tell every queued job's owner, no pass needed


def ring(values: list[str], waiting: Mapping[str, int] | None = None) -> bool:
    """Push `values` for the dispatcher; True if one is alive to take them. `waiting`: new
    waiting jobs for `generation.waiting_set` (member -> score), added in the same round trip.
    Raises redis.RedisError (or OSError) when Redis is unreachable."""
    pipe = get_redis().pipeline(transaction=False)
    waiting_set.add(pipe, waiting or {})
    pipe.lpush(WAKE_KEY, *values)
    pipe.ltrim(WAKE_KEY, 0, WAKE_BACKLOG - 1)
    pipe.exists(ALIVE_KEY)
    return bool(pipe.execute()[-1])
