"""Cheap load for the websocket bench: paced publishers and frame-counting receivers.

Both sides must cost little, or on a small machine they starve the daphne they measure.

- Publisher (a child process: `python bench/ws_load.py publish IDS_JSON RATE SECONDS START`):
  sends `job.progress` to each member's group (generation.events.user_group) on the channel
  layer production uses (gpu_worker.channel_layer, $CHANNEL_LAYER), RATE events a second in
  all, spread evenly over its members. "redis": group_sends awaited together; "pubsub": the
  layer's own messages pipelined (the layer's group_send sends one at a time). Prints
  "SENT CPU_SECONDS" at the end.
- Receivers: one asyncio Protocol per websocket that parses frame headers only, counts
  `job.progress` frames and reads the send time out of each frame with a regex (no JSON
  parse, no websocket library), answering daphne's pings.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

SENT_AT = re.compile(rb'"sent_at": ([0-9.]+)')
PROGRESS = b'"job.progress"'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# group_sends awaited together: enough to hide Redis round trips, within the core layer's
# connection pool (100)
IN_FLIGHT = 50
# A production progress event carries a 128 px JPEG preview (gpu_worker.progress.latent_preview,
# a few KiB as a data: URI); the bench sends one of this many characters.
PREVIEW_CHARS = int(os.environ.get("BENCH_WS_PREVIEW_CHARS", "3000"))


# ---------------------------------------------------------------- publisher (child process)


def progress_event(preview: str) -> dict[str, object]:
    return {
        "type": "job.progress",
        "job_id": "00000000-0000-0000-0000-000000000000",
        "step": 12,
        "steps": 30,
        "eta": 1.5,
        "preview": preview,
        "sent_at": time.time(),  # relayed as is: the receiver's lag
    }


Sender = Callable[[list[str], str], Awaitable[None]]


def group_sender(layer: Any) -> Sender:
    """One group_send per group, awaited together."""

    async def send(groups: list[str], preview: str) -> None:
        await asyncio.gather(*(layer.group_send(g, progress_event(preview)) for g in groups))

    return send


def pipelined_pubsub_sender(layer: Any, redis_url: str) -> Sender:
    """What RedisPubSubChannelLayer.group_send sends (its serializer, its channel names), many
    PUBLISHes to a round trip: daphne gets the same bytes for a fraction of the publisher's CPU
    (the layer itself sends one at a time, under a lock)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)

    async def send(groups: list[str], preview: str) -> None:
        names = layer._get_layer()._get_group_channel_name  # daphne's names
        pipe = client.pipeline(transaction=False)
        for group in groups:
            pipe.publish(names(group), layer.serialize(progress_event(preview)))
        await pipe.execute()

    return send


async def publish(
    ids: list[int], rate: float, seconds: float, start_at: float
) -> tuple[int, float]:
    """Send `rate` events a second over `ids`' groups, round robin, for `seconds`: (how many
    were sent, the CPU seconds that took)."""
    sys.path.insert(0, ROOT)  # run as a script from bench/
    from generation.events import user_group
    from gpu_worker.channel_layer import make_channel_layer

    redis_url, kind = os.environ["REDIS_URL"], os.environ.get("CHANNEL_LAYER", "")
    layer = make_channel_layer(redis_url, kind)
    pubsub = hasattr(layer, "_get_layer")
    send = pipelined_pubsub_sender(layer, redis_url) if pubsub else group_sender(layer)
    preview = "data:image/jpeg;base64," + "A" * PREVIEW_CHARS
    groups = [user_group(pk) for pk in ids]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    began, cpu = time.monotonic(), time.process_time()  # the sending's CPU, not the imports'

    sent = 0
    while (elapsed := time.monotonic() - began) < seconds:
        due = int(elapsed * rate) - sent
        if due <= 0:
            await asyncio.sleep(0.005)
            continue
        batch = min(due, IN_FLIGHT)
        await send([groups[(sent + k) % len(groups)] for k in range(batch)], preview)
        sent += batch
    return sent, time.process_time() - cpu


def publisher_main(argv: list[str]) -> None:
    ids, rate, seconds, start_at = (
        json.loads(argv[0]),
        float(argv[1]),
        float(argv[2]),
        float(argv[3]),
    )
    sent, cpu_seconds = asyncio.run(publish(ids, rate, seconds, start_at))
    print(sent, cpu_seconds, flush=True)


# ---------------------------------------------------------------- receivers (the bench process)


@dataclass
class Tally:
    """What all receivers heard since the last reset."""

    received: int = 0
    lags: list[float] = field(default_factory=list)
    per_socket: list[int] = field(default_factory=list)

    def reset(self, sockets: int) -> None:
        self.received = 0
        self.lags = []
        self.per_socket = [0] * sockets


class FrameCounter(asyncio.Protocol):
    """One websocket: the upgrade request, then server frames counted as they arrive."""

    def __init__(self, index: int, request: bytes, tally: Tally) -> None:
        self.index = index
        self.request = request
        self.tally = tally
        self.buffer = b""
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.opened.done():
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                return
            self.opened.set_result(None)
            self.buffer = rest
        self.read_frames()

    def read_frames(self) -> None:
        buffer, at, now = self.buffer, 0, time.time()
        while len(buffer) - at >= 2:
            opcode, length = buffer[at] & 0x0F, buffer[at + 1] & 0x7F
            start = at + 2
            if length == 126:
                if len(buffer) - at < 4:
                    break
                (length,) = struct.unpack_from(">H", buffer, start)
                start += 2
            elif length == 127:
                if len(buffer) - at < 10:
                    break
                (length,) = struct.unpack_from(">Q", buffer, start)
                start += 8
            end = start + length
            if end > len(buffer):
                break
            self.on_frame(opcode, buffer[start:end], now)
            at = end
        self.buffer = buffer[at:]

    def on_frame(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode == 0x9:  # ping: answer, or daphne drops the socket
            self.send_frame(0xA, payload)
        elif opcode == 0x1 and PROGRESS in payload:
            self.tally.received += 1
            self.tally.per_socket[self.index] += 1
            sent_at = SENT_AT.search(payload)
            if sent_at:
                self.tally.lags.append(now - float(sent_at.group(1)))

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """A client frame (masked, as RFC 6455 requires), payload under 126 bytes."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if self.transport is not None:
            self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def close(self) -> None:
        if self.transport is not None:
            self.send_frame(0x8, struct.pack(">H", 1000))
            self.transport.close()


def upgrade_request(port: int, session_key: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws/jobs/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://127.0.0.1:{port}\r\nCookie: sessionid={session_key}\r\n\r\n"
    ).encode()


async def open_sockets(port: int, session_keys: list[str], tally: Tally) -> list[FrameCounter]:
    """One websocket per session, opened 50 at a time (daphne authenticates each)."""
    loop = asyncio.get_running_loop()
    tally.reset(len(session_keys))
    sockets: list[FrameCounter] = []
    for first in range(0, len(session_keys), 50):
        batch = [
            FrameCounter(first + k, upgrade_request(port, key), tally)
            for k, key in enumerate(session_keys[first : first + 50])
        ]
        for sock in batch:
            await loop.create_connection(lambda s=sock: s, "127.0.0.1", port)  # type: ignore[misc]
        await asyncio.gather(*(sock.opened for sock in batch))
        sockets.extend(batch)
    return sockets


if __name__ == "__main__" and sys.argv[1:2] == ["publish"]:
    publisher_main(sys.argv[2:])
