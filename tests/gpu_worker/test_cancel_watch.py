"""Interrupt and skip through the cancel watch: a step reads its job's flag only after Redis
says a flag changed, and still stops within the step in which the flag was set, also when the
watch has lost its connection."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from gpu_worker.cancel_watch import CancelWatch
from gpu_worker.progress import JobMonitor
from gpu_worker.protocol import CANCEL_KEY

from .conftest import demo_request


class CountingRedis(redis.Redis):
    """The worker's Redis client, counting the cancel-flag reads the steps make."""

    flag_reads = 0

    def get(self, name: Any) -> Any:
        self.flag_reads += 1
        return super().get(name)


def watched_monitor(request: Any, client: redis.Redis, watch: CancelWatch) -> JobMonitor:
    """As the worker makes it: the flag read once before the job starts, none found."""
    version = watch.version()
    assert version is not None and client.get(CANCEL_KEY.format(job_id=request["job_id"])) is None
    return JobMonitor(
        job_id=request["job_id"],
        events_group=request["events_group"],
        redis_client=client,
        publisher=None,
        cancel_watch=watch,
        flag_read_at_version=version,
    )


def own_watch(url: str) -> tuple[CancelWatch, str]:
    """A watch whose connection this test can find by name (and kill)."""
    name = "watch-test-" + uuid.uuid4().hex[:8]
    return CancelWatch.for_client(redis.Redis.from_url(url, client_name=name)), name


def test_steps_do_not_read_the_flag_each_time_and_an_interrupt_stops_its_step(
    engine: Any, gw_redis: Any, gw_redis_url: str
) -> None:
    client = CountingRedis(connection_pool=redis.ConnectionPool.from_url(gw_redis_url))
    watch, _ = own_watch(gw_redis_url)
    request = demo_request(steps=10)
    key = CANCEL_KEY.format(job_id=request["job_id"])
    monitor = watched_monitor(request, client, watch)
    reads_before_the_interrupt = []

    def platform_interrupts_at_step_6(info: Any) -> None:
        if info.done == 6:
            reads_before_the_interrupt.append(client.flag_reads - 1)  # less the one above
            gw_redis.set(key, "interrupt", ex=60)  # as the platform's /interrupt does
        monitor(info)

    try:
        result = engine.run(request, platform_interrupts_at_step_6)
    finally:
        watch.close()
    assert result.interrupted and result.steps_done == 6 and result.images == []
    # none in an isolated Redis; a few if others' cancel flags changed on a shared server
    assert reads_before_the_interrupt[0] < 5


def test_an_interrupt_stops_within_its_step_after_the_watch_lost_its_connection(
    engine: Any, gw_redis: Any, gw_redis_url: str
) -> None:
    watch, name = own_watch(gw_redis_url)
    request = demo_request(steps=10)
    key = CANCEL_KEY.format(job_id=request["job_id"])
    monitor = watched_monitor(request, gw_redis, watch)

    def connection_dies_then_platform_interrupts_at_step_3(info: Any) -> None:
        if info.done == 3:
            (mine,) = [c["id"] for c in gw_redis.client_list() if c["name"] == name]
            gw_redis.client_kill_filter(_id=mine)
            gw_redis.set(key, "interrupt", ex=60)
        monitor(info)

    try:
        result = engine.run(request, connection_dies_then_platform_interrupts_at_step_3)
    finally:
        watch.close()
    assert result.interrupted and result.steps_done == 3


def test_a_skip_seen_through_the_watch_drops_only_the_batch_being_sampled(
    engine: Any, gw_redis: Any, gw_redis_url: str
) -> None:
    watch, _ = own_watch(gw_redis_url)
    request = demo_request(n_iter=3, seed=40)
    key = CANCEL_KEY.format(job_id=request["job_id"])
    monitor = watched_monitor(request, gw_redis, watch)

    def skip_in_second_iteration(info: Any) -> None:
        if info.iteration == 1 and info.done == 4:
            gw_redis.set(key, "skip", ex=60)
        monitor(info)

    try:
        result = engine.run(request, skip_in_second_iteration)
    finally:
        watch.close()
    assert [i["seed"] for i in result.images] == [40, 42]
    assert result.skipped_batches == 1 and not result.interrupted
    assert gw_redis.get(key) is None  # the skip was consumed
