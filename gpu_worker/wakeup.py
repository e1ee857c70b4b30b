"""Dramatiq's Redis broker with pushed wake-ups instead of an idle poll (Django-free).

Dramatiq's Redis consumer, finding its queue empty, sleeps with a growing back-off up to the
worker timeout and asks again: pickup waits for the next poll (a 50 ms timeout buys ~25 ms of
latency for ~20 wake-ups a second per queue, idle). Here every enqueue also PUBLISHes on the
queue's wake channel, and an idle consumer blocks on its subscription to that channel, so a
message is fetched within a Redis round trip of being sent, and an idle process sleeps. The
worker timeout then only bounds how long a consumer waits before its housekeeping round
(Dramatiq's consumer heartbeat, due delayed messages, shutdown), so it can be a second.

The queue in Redis is unchanged: a message sent while nobody listens (no consumer yet, a lost
subscription) is found by the next fetch, at the latest one timeout later. Every process that
sends (web, platform worker, GPU workers) and every consumer use this broker.

Stopping is prompt too (`PromptStop`, which the broker installs): Dramatiq's stop waits for each
idle worker thread's next poll of its in-memory queue, then for each consumer's next fetch, up
to a worker timeout each; here both notice at once.

The broker also counts the wake-ups its consumers heard per queue (`heard`): a running batch
looks in its queue for joiners only when that count moved (gpu_worker/service.py), instead of
a Redis round trip on the sampling thread every few steps while nothing was sent.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

log = logging.getLogger(__name__)

# How often an idle worker thread looks at its in-memory work queue (Dramatiq: every worker
# timeout). A queue.get wake-up costs nothing; Dramatiq's stop waits for it.
WORKER_THREAD_POLL_SECONDS = 0.05


def wake_channel(namespace: str, queue_name: str) -> str:
    """The pub/sub channel of one queue, in the broker's key namespace (tests run several)."""
    return f"{namespace}:wake:{queue_name}"


class WakeupRedisBroker(RedisBroker):
    """A RedisBroker whose enqueue wakes the queue's consumers through Redis pub/sub."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heard: dict[str, int] = {}  # queue -> wake-ups its consumers here received
        self.add_middleware(PromptStop())

    def heard(self, queue_name: str) -> int:
        """How many wake-ups this process's consumer of `queue_name` received: when the count
        has not moved, nothing was sent to that queue since (a lost wake-up aside)."""
        return self._heard.get(queue_name, 0)

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        sent = super().enqueue(message, delay=delay)
        queue = dq_name(message.queue_name) if delay is not None else message.queue_name
        self.wake(queue)
        return sent

    def wake(self, queue_name: str) -> None:
        """Best effort: a lost wake-up costs one consumer timeout, never the message."""
        try:
            self.client.publish(wake_channel(self.namespace, queue_name), b"1")
        except redis.RedisError:
            log.debug("wake-up for %s not published", queue_name, exc_info=True)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        return _WakeupConsumer(self, queue_name, prefetch, timeout)


class _WakeupConsumer(_RedisConsumer):
    def __init__(self, broker: WakeupRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.channel = wake_channel(broker.namespace, queue_name)
        self.pubsub: Any = None
        self.window_full = False

    def _subscription(self) -> Any:
        if self.pubsub is None:
            # Subscribed before the first fetch: a message sent after that fetch found nothing
            # has its wake-up waiting on this connection, never lost in between.
            pubsub = self.broker.client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.channel)
            self.pubsub = pubsub
        return self.pubsub

    def _wait(self, seconds: float) -> None:
        try:
            pubsub = self._subscription()
            if pubsub.get_message(timeout=seconds) is not None:
                while pubsub.get_message(timeout=0) is not None:  # one fetch serves them all
                    pass
                # One writer per queue (this consumer's thread); readers only compare.
                heard = self.broker._heard
                heard[self.queue_name] = heard.get(self.queue_name, 0) + 1
        except redis.ConnectionError as exc:
            self._drop_subscription()
            raise ConnectionClosed(exc) from None

    def _drop_subscription(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                self.pubsub.close()
            self.pubsub = None

    def ack(self, message: MessageProxy) -> None:
        super().ack(message)
        self._freed()

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)
        self._freed()

    def _freed(self) -> None:
        # Called from the worker thread while the consumer thread may be blocked in `_wait`
        # with a message it could not fetch: wake it through its own channel.
        if self.window_full:
            self.window_full = False
            self.broker.wake(self.queue_name)

    def __next__(self) -> MessageProxy | None:
        try:
            self._subscription()
            if self.message_cache:
                data = self.message_cache.pop(0)
                self.misses = 0
                message = Message.decode(data)
                self.queued_message_ids.add(message.message_id)
                return MessageProxy(message)
            # While the prefetch window is full (a GPU worker holding its one job) a new
            # message's wake-up is used up without a fetch, so the ack that frees the window
            # wakes us again (`_freed`). The flag is raised before the window is counted: an
            # ack either comes before the count (and is counted) or sees the flag.
            self.window_full = True
            room = self.prefetch - self.outstanding_message_count
            if room > 0:
                self.window_full = False
                self.message_cache = [
                    m for m in self.broker.do_fetch(self.queue_name, room) if m is not None
                ]
                if self.message_cache:
                    return self.__next__()
            self._wait(self.timeout / 1000)
            return None
        except redis.ConnectionError as exc:
            self._drop_subscription()
            raise ConnectionClosed(exc) from None

    def close(self) -> None:
        self._drop_subscription()
        super().close()


class PromptStop(dramatiq.Middleware):
    """An idle worker stops in milliseconds, not up to two worker timeouts, and a busy one as
    soon as its running job is done: the drain is as graceful as Dramatiq's own. Its worker
    threads poll their in-memory queue often; once the last one of a stopping worker has
    finished (its message acked), its consumers are stopped, as Dramatiq does next anyway, and
    woken from their wait for a wake-up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping: dict[dramatiq.Worker, int] = {}  # worker -> its threads still running

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        for thread in worker.workers:
            thread.timeout = min(thread.timeout, WORKER_THREAD_POLL_SECONDS)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with self._lock:
            self._stopping[worker] = len(worker.workers)

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        with self._lock:
            worker = next((w for w in self._stopping if thread in w.workers), None)
            if worker is None:
                return
            self._stopping[worker] -= 1
            if self._stopping[worker] > 0:
                return
            del self._stopping[worker]
        for queue_name, consumer in worker.consumers.items():
            consumer.stop()
            if isinstance(broker, WakeupRedisBroker):
                broker.wake(queue_name)
