"""A group message sent from a plain thread in one PUBLISH, for the "pubsub" layer.

The platform worker records a job's end in a Dramatiq thread and publishes its event once the
transaction commits. Through an event loop (gpu_worker.progress.ChannelPublisher) that costs a
thread hop, the wait for the GIL while the recording thread goes on with its work, and
asyncio's own: 0.5-2 ms before the event leaves. The "pubsub" layer's group_send is one PUBLISH
of the serialized message on the group's channel, which a plain Redis client sends from the
calling thread (a round trip, ~0.1 ms). The "redis" layer's group_send is a script over
per-channel queues: no shortcut there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from gpu_worker.channel_layer import (
    DEFAULT_CHANNEL_LAYER,
    channel_layer_settings,
    make_channel_layer,
)

SOCKET_TIMEOUT = 2.0  # a stuck Redis holds up a recording thread this long at most


def group_channel(prefix: str, group: str) -> str:
    """The Redis channel of a group, as channels_redis.pubsub names it."""
    return f"{prefix}__group__{group}"


class PubSubGroupSender:
    """`publish(group, message)` as the layer's group_send, sent before it returns."""

    def __init__(self, redis_url: str, kind: str = "") -> None:
        layer = make_channel_layer(redis_url, kind)  # for its serializer: no connection
        self._serialize = layer.serialize
        self._prefix = channel_layer_settings(redis_url, kind)["CONFIG"]["prefix"]
        self._redis = redis.Redis.from_url(
            redis_url, socket_connect_timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT
        )

    def publish(self, group: str, message: dict[str, Any]) -> None:
        self._redis.publish(group_channel(self._prefix, group), self._serialize(message))

    def publish_many(self, messages: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Several (group, message) in one round trip (a queue's new places)."""
        pipe = self._redis.pipeline(transaction=False)
        for group, message in messages:
            pipe.publish(group_channel(self._prefix, group), self._serialize(message))
        pipe.execute()

    def close(self) -> None:
        self._redis.close()


def pubsub_sender(redis_url: str, kind: str = "") -> PubSubGroupSender | None:
    """A sender for the layer `kind` names, or None when it is not "pubsub"."""
    if (kind or DEFAULT_CHANNEL_LAYER) != "pubsub":
        return None
    return PubSubGroupSender(redis_url, kind)
