"""The one definition of the Channels layer every process uses (torch-free, Django-free).

The web (config/settings.py CHANNEL_LAYERS), the platform worker and the GPU worker's
ChannelPublisher must agree on the layer, or events published by one never reach the other.
$CHANNEL_LAYER picks it:

- "redis" (channels_redis.core.RedisChannelLayer): messages queue in Redis sorted sets; a
  daphne process pops them one by one, four Redis round trips per message.
- "pubsub" (channels_redis.pubsub.RedisPubSubChannelLayer, with gpu_worker.pubsub_layer's
  cheaper read loop): Redis PUBLISH/SUBSCRIBE; one command per group_send and messages pushed
  to daphne. Nothing is queued: a message to a
  socket that is not connected at that moment is lost, which our events allow (the consumer
  sends the database's state on each connect).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

CHANNEL_LAYER_BACKENDS = {
    "redis": "channels_redis.core.RedisChannelLayer",
    "pubsub": "gpu_worker.pubsub_layer.PubSubChannelLayer",
}
# bench_idle_and_waiting: daphne spends half the CPU per relayed event with "pubsub" and keeps
# up at rates where "redis" falls behind (its round trips) and drops (100 messages queued per
# daphne process at most).
DEFAULT_CHANNEL_LAYER = "pubsub"


def channel_layer_hosts(redis_url: str) -> list[dict[str, Any]]:
    # redis-py 8 defaults socket_timeout to 5 s while channels-redis blocks up to 5 s: None.
    # RESP2: redis-py parses RESP3 pushes more slowly (~8 us more per message received).
    return [{"address": redis_url, "socket_timeout": None, "protocol": 2}]


def channel_prefix(redis_url: str) -> str:
    """The layer's names carry the Redis database number: Redis pub/sub channels are shared by
    every database of a server, so two platforms on one server (db 0 and db 1, or a test run
    beside a deployment) would otherwise deliver each other's events to members who share a
    user id."""
    parsed = urlparse(redis_url)
    number = parse_qs(parsed.query).get("db", [parsed.path.strip("/") or "0"])[0]
    return f"asgi{number}" if number.isdigit() else "asgi0"


def channel_layer_settings(redis_url: str, kind: str = "") -> dict[str, Any]:
    """CHANNEL_LAYERS["default"] for `kind` ("" is the default); ValueError names the choices."""
    backend = CHANNEL_LAYER_BACKENDS.get(kind or DEFAULT_CHANNEL_LAYER)
    if backend is None:
        raise ValueError(f"CHANNEL_LAYER must be one of {', '.join(CHANNEL_LAYER_BACKENDS)}")
    config = {"hosts": channel_layer_hosts(redis_url), "prefix": channel_prefix(redis_url)}
    return {"BACKEND": backend, "CONFIG": config}


def make_channel_layer(redis_url: str, kind: str = "") -> Any:
    """The layer itself, for a process without Django settings (the GPU worker, benches)."""
    from importlib import import_module

    config = channel_layer_settings(redis_url, kind)
    module, _, name = config["BACKEND"].rpartition(".")
    return getattr(import_module(module), name)(**config["CONFIG"])


async def close_channel_layer(layer: Any) -> None:
    """Close this process's connections. Not `flush()`: on "redis" that deletes every group
    and queued message in Redis, cutting all websockets of every web process off their events."""
    close_pools = getattr(layer, "close_pools", None)  # "redis"
    await (close_pools() if close_pools is not None else layer.flush())  # "pubsub": local only
