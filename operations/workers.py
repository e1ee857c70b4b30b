"""GPU workers as their heartbeats in Redis describe them, for the admin's live view.

A worker writes its status every few seconds with a short expiry. One whose last heartbeat is
older than two intervals is flagged stale; one whose key has expired is gone (most likely dead).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Literal

import redis

from gpu_worker.protocol import (
    HEARTBEAT_INDEX,
    HEARTBEAT_INTERVAL_SECONDS,
    HEARTBEAT_KEY,
    WORKER_COMMANDS_KEY,
    WorkerCommand,
    WorkerHeartbeat,
)

STALE_AFTER_SECONDS = 2 * HEARTBEAT_INTERVAL_SECONDS

WorkerState = Literal["live", "stale", "gone"]


@dataclass(frozen=True)
class WorkerStatus:
    worker_id: str
    state: WorkerState
    heartbeat: WorkerHeartbeat | None
    seconds_since_seen: float | None

    @property
    def memory_fraction(self) -> float | None:
        if not self.heartbeat or not self.heartbeat["memory_budget_bytes"]:
            return None
        return self.heartbeat["memory_used_bytes"] / self.heartbeat["memory_budget_bytes"]


def read_workers(client: redis.Redis, now: float | None = None) -> list[WorkerStatus]:
    now = time.time() if now is None else now
    ids = sorted(
        m.decode() if isinstance(m, bytes) else m for m in client.smembers(HEARTBEAT_INDEX)
    )
    if not ids:
        return []
    raw = client.mget([HEARTBEAT_KEY.format(worker_id=worker_id) for worker_id in ids])
    statuses = []
    for worker_id, payload in zip(ids, raw, strict=True):
        if payload is None:
            statuses.append(WorkerStatus(worker_id, "gone", None, None))
            continue
        heartbeat: WorkerHeartbeat = json.loads(payload)
        age = max(0.0, now - heartbeat["sent_at"])
        state: WorkerState = "stale" if age > STALE_AFTER_SECONDS else "live"
        statuses.append(WorkerStatus(worker_id, state, heartbeat, age))
    return statuses


def forget_gone_workers(client: redis.Redis) -> int:
    gone = [status.worker_id for status in read_workers(client) if status.state == "gone"]
    if gone:
        client.srem(HEARTBEAT_INDEX, *gone)
    return len(gone)


def send_worker_command(client: redis.Redis, worker_id: str, command: WorkerCommand) -> None:
    """Queue an operator's request (drain, unload a model) for the worker to pick up."""
    key = WORKER_COMMANDS_KEY.format(worker_id=worker_id)
    client.rpush(key, json.dumps(command))
    client.expire(key, 3600)
