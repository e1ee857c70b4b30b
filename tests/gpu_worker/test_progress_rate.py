"""Progress goes out at a bounded rate: a burst of fast steps sends the first and the last, and
the last step (the one a client waits to see reach 100 %) is always sent and stored."""

from __future__ import annotations

import asyncio
import json

import redis

from gpu_worker.channel_layer import make_channel_layer
from gpu_worker.engine import StepInfo
from gpu_worker.progress import ChannelPublisher, JobMonitor
from gpu_worker.protocol import PROGRESS_KEY


def test_fast_steps_are_coalesced_and_the_last_step_is_always_sent(redis_url):
    client = redis.Redis.from_url(redis_url)
    group = "jobs.user.progress-rate-test"

    async def run() -> list[int]:
        layer = make_channel_layer(redis_url)
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        publisher = ChannelPublisher(redis_url)
        monitor = JobMonitor(
            job_id="rate-test",
            events_group=group,
            redis_client=client,
            publisher=publisher,
            min_interval=30.0,  # far longer than the whole run: only first and last go out
        )
        for done in range(1, 41):
            monitor(StepInfo(done=done, total=40, iteration=0, latents=None, family="sd1"))
        await asyncio.to_thread(publisher.flush)  # every send done
        steps = []
        while True:
            try:
                event = await asyncio.wait_for(layer.receive(channel), 1.0)
            except TimeoutError:
                break
            steps.append(event["step"])
        await layer.group_discard(group, channel)
        await asyncio.to_thread(publisher.close)
        return steps

    steps = asyncio.run(run())
    assert steps == [1, 40]
    raw = client.get(PROGRESS_KEY.format(job_id="rate-test"))
    assert raw is not None
    stored = json.loads(raw)
    assert (stored["step"], stored["steps"]) == (40, 40)


def test_the_last_step_goes_out_without_a_new_preview_and_pollers_keep_the_latest(
    engine, redis_url
):
    from .conftest import demo_request

    client = redis.Redis.from_url(redis_url)
    request = demo_request(steps=6)

    async def run() -> list[dict]:
        layer = make_channel_layer(redis_url)
        channel = await layer.new_channel()
        await layer.group_add(request["events_group"], channel)
        publisher = ChannelPublisher(redis_url)
        monitor = JobMonitor(
            job_id=request["job_id"],
            events_group=request["events_group"],
            redis_client=client,
            publisher=publisher,
            min_interval=30.0,
        )
        result = await asyncio.to_thread(engine.run, request, monitor)
        assert result.images
        await asyncio.to_thread(publisher.flush)
        events = []
        while True:
            try:
                events.append(await asyncio.wait_for(layer.receive(channel), 1.0))
            except TimeoutError:
                break
        await layer.group_discard(request["events_group"], channel)
        await asyncio.to_thread(publisher.close)
        return events

    first, last = asyncio.run(run())
    assert (first["step"], last["step"], last["steps"]) == (1, 6, 6)
    assert first["preview"].startswith("data:image/jpeg;base64,")
    assert last["preview"] is None  # the result image follows: no JPEG made for it
    stored = json.loads(client.get(PROGRESS_KEY.format(job_id=request["job_id"])) or "{}")
    assert (stored["step"], stored["preview"]) == (6, first["preview"])
