"""The Channels layer every process shares (gpu_worker.channel_layer), on both choices: a GPU
worker that shuts down must not cut the web's websockets off their events."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gpu_worker.channel_layer import (
    CHANNEL_LAYER_BACKENDS,
    channel_layer_settings,
    channel_prefix,
    make_channel_layer,
)
from gpu_worker.progress import ChannelPublisher
from gpu_worker.pubsub_sender import pubsub_sender


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


@pytest.mark.parametrize("kind", list(CHANNEL_LAYER_BACKENDS))
def test_platforms_on_two_databases_of_one_redis_never_hear_each_other(
    redis_url: str, kind: str
) -> None:
    """Pub/sub channels ignore the database number: without it in the layer's names, user 1
    of one platform would receive user 1 of the other's events (previews included)."""
    base, _, number = redis_url.rpartition("/")
    neighbour_url = f"{base}/{(int(number or 0) + 1) % 16}"
    group = "jobs.user.1"

    async def run() -> list[str]:
        ours, theirs = make_channel_layer(redis_url, kind), make_channel_layer(neighbour_url, kind)
        channel = await ours.new_channel()
        await ours.group_add(group, channel)
        await asyncio.sleep(0.1)  # subscribed
        await theirs.group_send(group, {"type": "job.progress", "job_id": "theirs"})
        await ours.group_send(group, {"type": "job.progress", "job_id": "ours"})
        heard = [(await asyncio.wait_for(ours.receive(channel), 3))["job_id"]]
        with contextlib.suppress(TimeoutError):  # theirs must never arrive
            heard.append((await asyncio.wait_for(ours.receive(channel), 0.5))["job_id"])
        await ours.group_discard(group, channel)
        return heard

    assert asyncio.run(run()) == ["ours"]


def test_the_layer_prefix_follows_the_redis_database() -> None:
    assert channel_prefix("redis://127.0.0.1:6379/3") == "asgi3"
    assert channel_prefix("redis://127.0.0.1:6379") == "asgi0"
    assert channel_prefix("unix:///run/redis.sock?db=5") == "asgi5"


def test_an_event_published_from_a_plain_thread_reaches_the_groups_websockets(
    redis_url: str,
) -> None:
    """The platform worker's sender (one PUBLISH from the recording thread) speaks the pubsub
    layer's own format: a web process's member of the group receives the message whole."""
    group = "jobs.user.sender-test"
    event = {"type": "job.succeeded", "job_id": "j1", "images": [{"id": "i1", "seed": 7}]}

    async def run() -> dict:
        web = make_channel_layer(redis_url, "pubsub")
        channel = await web.new_channel()
        await web.group_add(group, channel)
        sender = pubsub_sender(redis_url, "pubsub")
        assert sender is not None
        await asyncio.to_thread(sender.publish, group, event)
        sender.close()
        received = await asyncio.wait_for(web.receive(channel), 3)
        await web.group_discard(group, channel)
        return received

    assert asyncio.run(run()) == event


def test_the_queued_layer_has_no_plain_thread_sender(redis_url: str) -> None:
    assert pubsub_sender(redis_url, "redis") is None
    assert pubsub_sender(redis_url, "") is not None  # pubsub is the default


@pytest.mark.parametrize("kind", list(CHANNEL_LAYER_BACKENDS))
def test_every_message_arrives_as_sent_even_what_json_cannot_hold(
    redis_url: str, kind: str
) -> None:
    group = f"jobs.user.layer-values-{kind}"
    event = {"type": "job.progress", "step": 3, "eta": 0.25, "preview": "data:,é", "done": None}
    raw = {"type": "job.raw", "payload": b"\x00\xff"}  # bytes: msgpack on the pub/sub wire

    async def run() -> list[dict]:
        layer = make_channel_layer(redis_url, kind)
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        await asyncio.sleep(0.1)  # subscribed
        await layer.group_send(group, event)
        await layer.group_send(group, raw)
        heard = [dict(await asyncio.wait_for(layer.receive(channel), 3)) for _ in range(2)]
        await layer.group_discard(group, channel)
        return heard

    assert asyncio.run(run()) == [event, raw]


def test_the_web_hears_a_worker_still_on_the_msgpack_layer_during_an_upgrade(
    redis_url: str,
) -> None:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    group = "jobs.user.layer-upgrade"
    config = channel_layer_settings(redis_url, "pubsub")["CONFIG"]

    async def run() -> dict:
        web = make_channel_layer(redis_url, "pubsub")
        old_worker = RedisPubSubChannelLayer(**config)  # channels_redis's own, msgpack
        channel = await web.new_channel()
        await web.group_add(group, channel)
        await asyncio.sleep(0.1)  # subscribed
        await old_worker.group_send(group, {"type": "job.progress", "step": 7})
        heard = await asyncio.wait_for(web.receive(channel), 3)
        await web.group_discard(group, channel)
        await old_worker.flush()
        return dict(heard)

    assert asyncio.run(run()) == {"type": "job.progress", "step": 7}
