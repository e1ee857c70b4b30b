"""Jobs that join a running batch, taken from this worker's own Dramatiq queue in Redis.

The scheduler hands a busy worker the waiting jobs that share its batch key
(gpu_worker.batch_key); Dramatiq fetches one message at a time (QUEUE_PREFETCH = 1), so at each
step boundary the batch runner looks at the queue itself and claims compatible messages.

A claim removes the message id from the queue list (`LREM`: if Dramatiq or another claim took
it first, the claim gets 0 and leaves it) and leaves the message in the queue's `.msgs` hash
until its job is reported (`ack`), as Dramatiq keeps a fetched message until it acks it. So
the platform's sweeper still finds it while the job runs, and a worker that dies mid-batch gives
the job back like any other in hand (dead worker, or `release_queued` on restart).

Only messages ahead of the first incompatible one are claimed: a job of another kind waiting in
the queue is never held back by joiners behind it (it waits at most for the batch it follows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis

from gpu_worker.batch_key import batch_key
from gpu_worker.protocol import GENERATE_ACTOR, GENERATE_KWARG, GenerationRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    message_id: str
    request: GenerationRequest
    enqueued_at_ms: int | None
    message: dramatiq.Message  # to send again for a retry (WorkerService.generate_batch)

    @property
    def retries(self) -> int:
        """How often Dramatiq retried it already."""
        return int(self.message.options.get("retries", 0))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BatchQueue:
    """Claims and acks of one worker queue's messages (names as Dramatiq's Redis broker)."""

    def __init__(self, client: redis.Redis, *, namespace: str, queue: str) -> None:
        self.client = client
        self.queue_key = f"{namespace}:{queue}"
        self.messages_key = f"{self.queue_key}.msgs"

    def claim(self, key: str, room: int) -> list[Claimed]:
        """Messages of jobs with batch key `key`, in queue order, at most `room` images, up to
        the first message that cannot join."""
        if room <= 0:
            return []
        ids = [_text(i) for i in self.client.lrange(self.queue_key, 0, -1)]
        if not ids:
            return []
        claimed: list[Claimed] = []
        for message_id, raw in zip(ids, self.client.hmget(self.messages_key, ids), strict=True):
            if raw is None:
                continue  # taken meanwhile
            try:
                message = dramatiq.Message.decode(raw if isinstance(raw, bytes) else raw.encode())
                request: GenerationRequest = (message.kwargs or {})[GENERATE_KWARG]
            except (ValueError, KeyError, TypeError):
                break  # not ours to judge: Dramatiq fetches it in turn
            if message.actor_name != GENERATE_ACTOR or batch_key(request) != key:
                break
            images = int(request.get("batch_size") or 1)
            if images > room:
                break
            if not self.client.lrem(self.queue_key, 1, message_id):
                continue  # fetched by Dramatiq or claimed first
            room -= images
            claimed.append(Claimed(message_id, request, message.message_timestamp, message))
        return claimed

    def ack(self, message_id: str) -> None:
        """The claimed message's job was reported: forget the message."""
        self.client.hdel(self.messages_key, message_id)
