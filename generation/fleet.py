"""GPU workers as their heartbeats in Redis describe them: read in one place, one meaning for all.

A worker writes its heartbeat (`gpu_worker.protocol.WorkerHeartbeat`) every
HEARTBEAT_INTERVAL_SECONDS under a key that expires after HEARTBEAT_TTL_SECONDS; HEARTBEAT_INDEX
lists the ids ever seen. Seen from the platform, a worker is:

- live: its key is present and its last beat is recent;
- stale: its key is present but its last beat is older than STALE_AFTER_SECONDS (late, perhaps
  dying). It is still *present*: the scheduler may hand it work and the queue counts it, because
  its key expires soon enough if it really is gone;
- gone: its key has expired (or never was);
- dead: gone for WORKER_MISSING_GRACE_SECONDS of time during which Redis was reachable, as
  `WorkerLiveness` times it for the sweeper. Only a dead worker's jobs are taken back.

The scheduling pass, the sweeper, the queue's ETAs, the operations page, the A1111 memory
endpoint and the stuck-jobs admin all read the workers through this module.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import redis

from gpu_worker.preprocessors import BUILT_IN
from gpu_worker.protocol import (
    HEARTBEAT_INDEX,
    HEARTBEAT_INTERVAL_SECONDS,
    HEARTBEAT_KEY,
    WORKER_MISSING_GRACE_SECONDS,
    ModelInventoryEntry,
    WorkerHeartbeat,
)

logger = logging.getLogger(__name__)

STALE_AFTER_SECONDS = 2 * HEARTBEAT_INTERVAL_SECONDS

WorkerState = Literal["live", "stale", "gone"]


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class WorkerStatus:
    worker_id: str
    state: WorkerState
    heartbeat: WorkerHeartbeat | None
    seconds_since_seen: float | None

    @property
    def present(self) -> bool:
        """Live or stale: its heartbeat key has not expired."""
        return self.heartbeat is not None

    @property
    def memory_fraction(self) -> float | None:
        if not self.heartbeat or not self.heartbeat["memory_budget_bytes"]:
            return None
        return self.heartbeat["memory_used_bytes"] / self.heartbeat["memory_budget_bytes"]


def indexed_ids(client: redis.Redis) -> list[str]:
    """Every worker id in the index (gone ones too, until pruned)."""
    return sorted(_decode(i) for i in client.smembers(HEARTBEAT_INDEX))


# Every indexed worker's id and heartbeat (nil where its key expired), in one round trip: the
# index's members and their keys, which a client could only read one after the other.
_INDEXED_BEATS = """
local ids = redis.call('smembers', KEYS[1])
local out = {}
for i, id in ipairs(ids) do
  out[2 * i - 1] = id
  out[2 * i] = redis.call('get', ARGV[1] .. id)
end
return out
"""
_BEAT_PREFIX = HEARTBEAT_KEY.format(worker_id="")


def read_heartbeats(
    client: redis.Redis, worker_ids: Iterable[str] | None = None
) -> dict[str, WorkerHeartbeat | None]:
    """One read of the heartbeats of `worker_ids` (default: every indexed worker); None where
    the key has expired or cannot be read."""
    if worker_ids is None:
        values = _indexed_values(_ask_indexed(client))
        ids = sorted(values)
    else:
        ids = sorted(set(worker_ids))
        if not ids:
            return {}
        keys = [HEARTBEAT_KEY.format(worker_id=i) for i in ids]
        values = dict(zip(ids, client.mget(keys), strict=True))
    return {worker_id: _beat(worker_id, values[worker_id]) for worker_id in ids}


def _beat(worker_id: str, raw: bytes | None) -> WorkerHeartbeat | None:
    try:
        beat: WorkerHeartbeat | None = json.loads(raw) if raw else None
    except ValueError:
        logger.warning("unreadable heartbeat of %s ignored", worker_id)
        return None
    return beat


def _ask_indexed(target: redis.Redis | redis.client.Pipeline) -> Any:
    """The index's ids and heartbeats, asked of a client (the answer) or queued on a pipeline."""
    return target.eval(_INDEXED_BEATS, 1, HEARTBEAT_INDEX, _BEAT_PREFIX)


def _indexed_values(pairs: list[Any]) -> dict[str, Any]:
    return dict(zip(map(_decode, pairs[::2]), pairs[1::2], strict=True))


def ask_present_heartbeats(pipe: redis.client.Pipeline) -> None:
    """Queue `present_heartbeats`' read on `pipe`, to go with other commands in one round trip;
    `present_in` reads its answer."""
    _ask_indexed(pipe)


def present_in(answer: list[Any]) -> dict[str, WorkerHeartbeat]:
    """The present workers' heartbeats from the answer to `ask_present_heartbeats`."""
    values = _indexed_values(answer)
    return {i: beat for i in sorted(values) if (beat := _beat(i, values[i])) is not None}


def status_of(
    worker_id: str, heartbeat: WorkerHeartbeat | None, now: float | None = None
) -> WorkerStatus:
    if heartbeat is None:
        return WorkerStatus(worker_id, "gone", None, None)
    now = time.time() if now is None else now
    age = max(0.0, now - float(heartbeat.get("sent_at") or 0.0))
    return WorkerStatus(worker_id, "stale" if age > STALE_AFTER_SECONDS else "live", heartbeat, age)


def read_workers(client: redis.Redis, now: float | None = None) -> list[WorkerStatus]:
    """Every indexed worker with its state, by id."""
    return [status_of(i, beat, now) for i, beat in read_heartbeats(client).items()]


def present_heartbeats(client: redis.Redis) -> dict[str, WorkerHeartbeat]:
    """The heartbeats of the present (live or stale) workers, by id."""
    return present_in(_ask_indexed(client))


def present_count(client: redis.Redis) -> int:
    """How many workers are present now (at least 1, so ETAs stay finite); 1 when Redis is
    unreachable."""
    try:
        return max(1, len(present_heartbeats(client)))
    except (redis.RedisError, OSError):
        return 1


def is_present(client: redis.Redis, worker_id: str) -> bool:
    return bool(worker_id) and bool(client.exists(HEARTBEAT_KEY.format(worker_id=worker_id)))


def inventories(client: redis.Redis) -> list[ModelInventoryEntry]:
    """What the present workers hold (their heartbeat inventories); prunes gone ones."""
    entries: list[ModelInventoryEntry] = []
    gone = []
    for worker_id, beat in read_heartbeats(client).items():
        if beat is None:
            gone.append(worker_id)
            continue
        entries.extend(beat.get("inventory") or [])
    if gone:
        client.srem(HEARTBEAT_INDEX, *gone)
    return entries


def worker_preprocessors(beat: WorkerHeartbeat) -> list[str]:
    """The ControlNet preprocessors a worker runs (a worker older than the field: the built-in
    ones, which every worker has)."""
    return list(beat.get("preprocessors") or BUILT_IN)


def available_preprocessors(client: redis.Redis) -> list[str]:
    """The preprocessors members may ask for: the built-in ones always (every worker runs them;
    a job waits for a worker like any other), then the weight-based ones some present worker
    lists, i.e. whose annotator weights lie in its models folder. Redis unreachable: the
    built-in ones."""
    found = list(BUILT_IN)
    try:
        beats = present_heartbeats(client)
    except (redis.RedisError, OSError):
        return found
    for beat in beats.values():
        found += [m for m in worker_preprocessors(beat) if m not in found]
    return found


class WorkerLiveness:
    """When each worker's heartbeat was last seen, on the platform's own clock (no trust in the
    workers' clocks), counting only time during which Redis answered. A worker is dead once its
    key has been missing for `grace` seconds of such time: a worker never seen before starts
    its count at its first sighting; a Redis flush (every key gone at once) is outlasted,
    because live workers beat again well within the grace; and after an outage (a read that
    failed, see `redis_unreachable`) every count starts again, because nobody could beat into
    a Redis that was down. One per sweeping process, kept across sweeps (a fresh one declares
    nobody dead)."""

    def __init__(self, grace: float = WORKER_MISSING_GRACE_SECONDS) -> None:
        self.grace = grace
        self.last_seen: dict[str, float] = {}
        self._outage = False

    def redis_unreachable(self) -> None:
        """A read failed: the time until the next good read is not the workers' fault."""
        self._outage = True

    def dead(self, beats: dict[str, WorkerHeartbeat | None], now: float) -> set[str]:
        """The dead among `beats` (one read of the workers that hold jobs)."""
        if self._outage:
            self._outage = False
            self.last_seen = dict.fromkeys(self.last_seen, now)  # the grace starts again
        dead = set()
        for worker_id, beat in beats.items():
            if beat is not None:
                self.last_seen[worker_id] = now
            elif now - self.last_seen.setdefault(worker_id, now) >= self.grace:
                dead.add(worker_id)
        for worker_id in set(self.last_seen) - set(beats):
            del self.last_seen[worker_id]  # holds no job any more: forget it
        return dead
