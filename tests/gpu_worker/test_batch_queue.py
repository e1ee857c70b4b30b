"""Which queued messages join a running batch (gpu_worker.batch_queue), on a real Redis with
messages enqueued by a real Dramatiq RedisBroker: compatible ones in queue order, never past a
job of another kind waiting ahead, within the room left; a claimed message stays in the queue's
hash (the sweeper still sees it) until its job is reported."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from gpu_worker.batch_key import batch_key
from gpu_worker.batch_queue import BatchQueue
from gpu_worker.protocol import GENERATE_ACTOR, GENERATE_KWARG
from gpu_worker.wakeup import WakeupRedisBroker

QUEUE = "gpu.batch-test"


def request(job: str, **change: Any) -> dict[str, Any]:
    return {
        "job_id": job, "attempt": 1, "events_group": "g", "mode": "txt2img",
        "checkpoint": "demo", "vae": None, "prompt": f"job {job}", "negative_prompt": "",
        "sampler": "Euler a", "scheduler": "Automatic", "steps": 4, "cfg_scale": 7.0,
        "width": 64, "height": 64, "seed": 1, "batch_size": 1, "n_iter": 1, "hires": None,
        **change,
    }  # fmt: skip


@pytest.fixture
def broker(gw_redis_url: str, gw_redis: Any) -> Iterator[RedisBroker]:
    broker = WakeupRedisBroker(url=gw_redis_url, namespace="atelier-test-" + uuid.uuid4().hex[:8])
    yield broker
    for key in gw_redis.scan_iter(match=f"{broker.namespace}*"):
        gw_redis.delete(key)
    broker.close()


def key_of(r: dict[str, Any]) -> str:
    key = batch_key(r)
    assert key is not None
    return key


def enqueue(broker: RedisBroker, *requests: dict[str, Any]) -> None:
    for r in requests:
        broker.enqueue(
            dramatiq.Message(
                queue_name=QUEUE, actor_name=GENERATE_ACTOR, args=(),
                kwargs={GENERATE_KWARG: r}, options={},
            )
        )  # fmt: skip


def test_compatible_jobs_are_claimed_in_order_up_to_the_first_other_kind(broker, gw_redis):
    key = key_of(request("a"))
    enqueue(
        broker,
        request("b", seed=7, cfg_scale=3.0, steps=9),
        request("c", batch_size=2),
        request("x", width=128),  # another size: it waits for the batch, nothing passes it
        request("d"),
    )
    queue = BatchQueue(gw_redis, namespace=broker.namespace, queue=QUEUE)
    claimed = queue.claim(key, room=7)
    assert [c.request["job_id"] for c in claimed] == ["b", "c"]
    assert gw_redis.llen(f"{broker.namespace}:{QUEUE}") == 2  # x and d still queued
    msgs = f"{broker.namespace}:{QUEUE}.msgs"
    assert all(gw_redis.hexists(msgs, c.message_id) for c in claimed)  # until reported
    queue.ack(claimed[0].message_id)
    assert not gw_redis.hexists(msgs, claimed[0].message_id)
    assert queue.claim(key, room=7) == []  # x still heads the queue


def test_a_claim_keeps_within_the_room_left(broker, gw_redis):
    key = key_of(request("a"))
    enqueue(broker, request("b", batch_size=3), request("c"))
    queue = BatchQueue(gw_redis, namespace=broker.namespace, queue=QUEUE)
    assert queue.claim(key, room=2) == []  # three images do not fit in two
    assert [c.request["job_id"] for c in queue.claim(key, room=4)] == ["b", "c"]
