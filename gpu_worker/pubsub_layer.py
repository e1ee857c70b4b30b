"""channels_redis's pub/sub layer with a cheaper read loop and messages published as JSON text.

RedisPubSubChannelLayer reads each message with `PubSub.get_message(timeout=0.1)`: an
`asyncio.timeout` per message, redis-py's message dict and its observability hooks. With
1,000 websockets at 10 progress events a second that loop was ~15 % of daphne's CPU
(bench_idle_and_waiting, py-spy). This one blocks in `parse_response` (the same reconnect
and resubscribe logic) and hands a published message straight to the channels it is for;
subscribe confirmations still go through redis-py's own bookkeeping.

Messages travel as their JSON text (not msgpack) and arrive as a RelayedMessage, a dict that
keeps that text: the websocket consumer sends it as is instead of encoding the same JSON again
for every socket (json.dumps of an event with its 3,000-character preview is ~7 us; parsing it
back is ~4). A message JSON cannot hold (bytes) still goes as msgpack, which a reader tells
apart by its first byte (a msgpack map never starts with "{"); so is a message from a process
still on channels_redis's msgpack-only layer. The reverse does not hold: upgrade the web
processes before the workers, or the old web drops the new workers' events until it restarts.

Written against channels-redis 4.3.0 (pinned); the classes are its own, only the loop differs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from channels_redis.serializers import BaseMessageSerializer, MsgPackSerializer
from channels_redis.utils import _wrap_close

logger = logging.getLogger(__name__)

PUBLISHED = b"message"  # RESP2 (gpu_worker.channel_layer asks for it), bytes replies


class RelayedMessage(dict[str, Any]):
    """A channel-layer message with `text`, the JSON it was published as (json.dumps of it)."""

    __slots__ = ("text",)
    text: str


class JsonTextSerializer(BaseMessageSerializer):
    """json.dumps on the wire; msgpack for what JSON cannot hold. Encryption and random
    prefixes (channels_redis's options) wrap these bytes as with its own serializers."""

    def as_bytes(self, message: Any) -> bytes:
        try:
            return json.dumps(message).encode()
        except (TypeError, ValueError):
            return MsgPackSerializer.as_bytes(message)

    def from_bytes(self, data: bytes) -> Any:
        if data[:1] != b"{":
            return MsgPackSerializer.from_bytes(data)
        text = data.decode()
        message = RelayedMessage(json.loads(text))
        message.text = text
        return message


class _Shard(RedisSingleShardConnection):
    async def _do_receiving(self) -> None:
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    # Blocks until a reply: nothing to time out, flush() cancels the task.
                    reply = await self._pubsub.parse_response(block=True)
                    if type(reply) is list and reply[0] == PUBLISHED:
                        self._deliver(reply[1], reply[2])
                    elif reply is not None:  # (un)subscribe confirmations, pongs
                        await self._pubsub.handle_message(reply, ignore_subscribe_messages=True)
                else:
                    await asyncio.sleep(0.1)
            except (TimeoutError, asyncio.CancelledError, GeneratorExit):
                raise
            except BaseException:
                logger.exception("Unexpected exception in receive task")
                await asyncio.sleep(1)

    def _deliver(self, name: bytes, data: bytes) -> None:
        """RedisSingleShardConnection._receive_message without redis-py's message dict."""
        layer = self.channel_layer
        channel = name.decode()
        queue = layer.channels.get(channel)
        if queue is not None:
            queue.put_nowait(data)
            return
        for member in layer.groups.get(channel, ()):
            queue = layer.channels.get(member)
            if queue is not None:
                queue.put_nowait(data)


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards: list[_Shard] = [_Shard(shard.host, self) for shard in self._shards]


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """CHANNEL_LAYER "pubsub" (gpu_worker.channel_layer): cheaper reads, JSON on the wire."""

    def __init__(self, *args: Any, symmetric_encryption_keys: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, symmetric_encryption_keys=symmetric_encryption_keys, **kwargs)
        self._serializer = JsonTextSerializer(symmetric_encryption_keys=symmetric_encryption_keys)

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
        return layer
