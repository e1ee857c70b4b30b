"""The Channels layer every process shares (gpu_worker.channel_layer), on both choices: a GPU
worker that shuts down must not cut the web's websockets off their events."""

from __future__ import annotations

import asyncio

import pytest

from gpu_worker.channel_layer import (
    CHANNEL_LAYER_BACKENDS,
    channel_layer_settings,
    make_channel_layer,
)
from gpu_worker.progress import ChannelPublisher


@pytest.mark.parametrize("kind", list(CHANNEL_LAYER_BACKENDS))
def test_a_closed_publisher_leaves_the_web_listening(redis_url: str, kind: str) -> None:
    group = f"jobs.user.layer-test-{kind}"

    async def run() -> list[int]:
        web = make_channel_layer(redis_url, kind)  # a websocket consumer's side
        channel = await web.new_channel()
        await web.group_add(group, channel)
        stopping = ChannelPublisher(redis_url, kind=kind)  # a GPU worker shutting down
        stopping.publish(group, {"type": "job.progress", "step": 1})
        await asyncio.to_thread(stopping.close)
        other = ChannelPublisher(redis_url, kind=kind)  # a worker still running
        other.publish(group, {"type": "job.progress", "step": 2})
        await asyncio.to_thread(other.close)
        steps = []
        for _ in range(2):
            event = await asyncio.wait_for(web.receive(channel), 3)
            steps.append(event["step"])
        await web.group_discard(group, channel)
        return steps

    assert asyncio.run(run()) == [1, 2]


def test_an_unknown_layer_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="CHANNEL_LAYER must be one of redis, pubsub"):
        channel_layer_settings("redis://127.0.0.1:6379/0", "kafka")
