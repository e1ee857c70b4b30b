"""Progress goes out at a bounded rate counted from the job's start: a burst of fast steps sends
only the last, and the last step (the one a client waits to see reach 100 %) is always sent
and stored."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import redis

from gpu_worker.channel_layer import make_channel_layer
from gpu_worker.engine import StepInfo
from gpu_worker.progress import ChannelPublisher, JobMonitor
from gpu_worker.protocol import PROGRESS_KEY


def _steps_sent(
    redis_url: str, job_id: str, min_interval: float, step_at: list[float], clock: list[float]
) -> list[int]:
    """The steps whose event reached the job's group when its steps end at `step_at` (seconds
    after the monitor was made, on the monitor's `clock`)."""
    client = redis.Redis.from_url(redis_url)
    group = f"jobs.user.{job_id}"
    total = len(step_at)

    async def run() -> list[int]:
        layer = make_channel_layer(redis_url)
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        publisher = ChannelPublisher(redis_url)
        started = clock[0]
        monitor = JobMonitor(
            job_id=job_id,
            events_group=group,
            redis_client=client,
            publisher=publisher,
            min_interval=min_interval,
        )
        for done, at in enumerate(step_at, start=1):
            clock[0] = started + at
            monitor(StepInfo(done=done, total=total, iteration=0, latents=None, family="sd1"))
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

    return asyncio.run(run())


def _fake_clock(monkeypatch) -> list[float]:
    """The monitor's monotonic clock, set by the test (one element: now)."""
    from gpu_worker import progress

    clock = [1000.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    return clock


def test_fast_steps_are_coalesced_and_the_last_step_is_always_sent(redis_url, monkeypatch):
    clock = _fake_clock(monkeypatch)
    # 40 steps within a second, the interval far longer: only the last goes out
    steps = _steps_sent(redis_url, "rate-test", 30.0, [i / 40 for i in range(1, 41)], clock)
    assert steps == [40]
    raw = redis.Redis.from_url(redis_url).get(PROGRESS_KEY.format(job_id="rate-test"))
    assert raw is not None
    stored = json.loads(raw)
    assert (stored["step"], stored["steps"]) == (40, 40)


def test_events_go_out_once_per_interval_counted_from_the_start(redis_url, monkeypatch):
    clock = _fake_clock(monkeypatch)
    steps = _steps_sent(redis_url, "interval-test", 0.25, [0.1, 0.3, 0.4, 0.6, 0.65], clock)
    # Step 1 ended within the first interval: not sent. Step 2 after it; step 4 one interval
    # after step 2; step 5 is the last.
    assert steps == [2, 4, 5]


def test_the_last_step_goes_out_without_a_new_preview_and_pollers_keep_the_latest(
    engine, redis_url, monkeypatch
):
    from .conftest import demo_request

    clock = _fake_clock(monkeypatch)
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
        clock[0] += 31.0  # the first step ends after an interval: it goes out, then the last
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


def test_a_closed_publisher_closes_its_loop_and_closing_again_does_nothing(redis_url):
    publisher = ChannelPublisher(redis_url)
    publisher.publish("jobs.user.close-test", {"type": "job.progress", "step": 1})
    publisher.close()
    assert publisher._loop.is_closed()  # in its own thread, not left to the garbage collector
    publisher.close()
