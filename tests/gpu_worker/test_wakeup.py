"""A job reaches an idle worker within a Redis round trip, not at its next poll: every send
wakes the queue's consumer through Redis, and a busy worker's next job starts the moment the
running one is acknowledged. The timeouts here are long on purpose: with Dramatiq's own polling
consumer, pickup would wait for them."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest

from gpu_worker.wakeup import WakeupRedisBroker

LONG_TIMEOUT_MS = 3000  # an idle consumer's housekeeping round: far longer than any pickup here


class Starts:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.ends: dict[str, float] = {}
        self.event = threading.Event()

    def run(self, name: str, seconds: float) -> None:
        self.times[name] = time.monotonic()
        self.event.set()
        time.sleep(seconds)
        self.ends[name] = time.monotonic()


@pytest.fixture
def world(redis_url: str) -> Iterator[tuple[Any, Starts]]:
    broker = WakeupRedisBroker(url=redis_url, namespace="wake-test-" + uuid.uuid4().hex[:8])
    starts = Starts()
    actor = dramatiq.Actor(
        starts.run,
        broker=broker,
        actor_name="run",
        queue_name="gpu.test",
        priority=0,
        options={"max_retries": 0},
    )
    worker = dramatiq.Worker(
        broker, queues={"gpu.test"}, worker_threads=1, worker_timeout=LONG_TIMEOUT_MS
    )
    worker.queue_prefetch = 1  # as a GPU worker: one job in hand, the next waits in Redis
    worker.start()
    try:
        yield actor, starts
    finally:
        worker.stop(timeout=10_000)
        broker.flush_all()
        broker.close()


def wait_for(check: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_an_idle_worker_starts_each_job_at_once_not_at_its_next_poll(world):
    actor, starts = world
    pickups = []
    for i in range(3):
        time.sleep(1.0)  # idle: a polling consumer would have backed off towards its timeout
        sent = time.monotonic()
        actor.send(f"job-{i}", 0.0)
        wait_for(lambda i=i: f"job-{i}" in starts.times, 5)
        pickups.append(starts.times[f"job-{i}"] - sent)
    assert max(pickups) < 0.3, pickups


def test_a_busy_workers_next_job_starts_when_the_running_one_finishes(world):
    actor, starts = world
    time.sleep(0.5)
    actor.send("first", 1.5)  # a polling consumer backs off meanwhile
    wait_for(lambda: "first" in starts.times, 5)
    actor.send("second", 0.0)  # its wake-up finds the one-job window full
    wait_for(lambda: "second" in starts.times, 6)
    assert "second" in starts.times
    assert starts.times["second"] - starts.ends["first"] < 0.3


def test_a_busy_consumer_counts_each_message_sent_to_its_queue(world):
    """What a running batch asks before it looks in its queue for joiners (no Redis round
    trip): the count moves when a message was sent, and only then."""
    actor, starts = world
    # Idle first, so "running" is fetched on its own wake-up. Sent while the consumer is
    # between subscribing and its first fetch, the fetch would take it and the wake-up, still
    # on the subscription, would be counted a moment later (one harmless extra look).
    time.sleep(0.5)
    actor.send("running", 1.0)
    wait_for(lambda: "running" in starts.times, 5)
    before = actor.broker.heard("gpu.test")
    time.sleep(0.2)
    assert actor.broker.heard("gpu.test") == before  # nothing sent meanwhile
    actor.send("next", 0.0)  # its wake-up finds the one-job window full
    wait_for(lambda: actor.broker.heard("gpu.test") > before, 5)
    assert actor.broker.heard("gpu.test") > before
