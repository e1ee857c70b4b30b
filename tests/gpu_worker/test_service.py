"""The worker end to end: real Redis, a real Dramatiq worker, progress on the channel layer."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from typing import Any

from PIL import Image

from gpu_worker.infotext import infotext_to_fields, parse_infotext, read_infotext
from gpu_worker.protocol import CANCEL_KEY, HEARTBEAT_INDEX, HEARTBEAT_KEY, GenerationRequest

from .conftest import demo_request


def pixels(image: dict) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(image["png_b64"]))).tobytes()


async def collect_progress(
    url: str, request: GenerationRequest, world: Any, joined: asyncio.Event
) -> list[dict]:
    """Join the job's group like the websocket consumer does, then read until the job ends."""
    from gpu_worker.channel_layer import make_channel_layer

    layer = make_channel_layer(url)
    channel = await layer.new_channel()
    await layer.group_add(request["events_group"], channel)
    joined.set()
    received: list[dict] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                received.append(await asyncio.wait_for(layer.receive(channel), 0.5))
            except TimeoutError:
                if any(e["kind"] != "started" for e in world.events.events[request["job_id"]]):
                    break
    finally:
        await layer.group_discard(request["events_group"], channel)
        await layer.flush()
    return received


def submit_and_listen(world: Any, url: str, request: GenerationRequest) -> tuple[dict, list[dict]]:
    async def main() -> list[dict]:
        joined = asyncio.Event()
        task = asyncio.create_task(collect_progress(url, request, world, joined))
        await joined.wait()
        world.submit(request)
        return await task

    progress = asyncio.run(main())
    return world.events.wait_terminal(request["job_id"]), progress


def test_a_message_in_gives_an_image_out_with_progress_and_parameters(
    worker_world: Any, gw_redis_url: str
) -> None:
    request = demo_request(steps=4, seed=99)
    event, progress = submit_and_listen(worker_world, gw_redis_url, request)
    kinds = [e["kind"] for e in worker_world.events.events[request["job_id"]]]
    assert kinds == ["started", "succeeded"]
    assert event["worker_id"] == "test-worker" and event["attempt"] == 1
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    assert all(p["type"] == "job.progress" and p["steps"] == 4 for p in progress)
    assert all(p["job_id"] == request["job_id"] for p in progress)
    assert progress[0]["preview"].startswith("data:image/jpeg;base64,")
    image = event["images"][0]
    text = read_infotext(base64.b64decode(image["png_b64"])) or ""
    fields = infotext_to_fields(parse_infotext(text))
    for key in (
        "prompt",
        "negative_prompt",
        "steps",
        "cfg_scale",
        "seed",
        "width",
        "height",
        "checkpoint",
        "clip_skip",
    ):
        assert fields[key] == request[key], key
    assert set(event["timings"]) >= {
        "queued_s",
        "model_load_s",
        "sampling_s",
        "encode_s",
        "total_s",
    }


def test_interleaved_checkpoints_each_give_their_own_models_image(
    worker_world: Any, engine: Any
) -> None:
    requests = [
        demo_request(checkpoint=name, seed=5)
        for name in ("atelier-demo-v1", "atelier-demo-v2", "atelier-demo-v1", "atelier-demo-v2")
    ]
    for request in requests:
        worker_world.submit(request)
    results = [worker_world.events.wait_terminal(r["job_id"]) for r in requests]
    alone = {
        name: pixels(engine.run(demo_request(checkpoint=name, seed=5)).images[0])
        for name in ("atelier-demo-v1", "atelier-demo-v2")
    }
    assert alone["atelier-demo-v1"] != alone["atelier-demo-v2"]
    for request, event in zip(requests, results, strict=True):
        assert event["kind"] == "succeeded"
        assert pixels(event["images"][0]) == alone[request["checkpoint"]]


def wait_past_first_step(worker_world: Any, job_id: str) -> None:
    """Until the worker runs this job and has done a step of it (30 s at most)."""
    deadline = time.monotonic() + 30
    status = worker_world.service.status
    while not (status.current_job == job_id and (status.current_step or 0) >= 1):
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_interrupt_stops_the_running_job(worker_world: Any, gw_redis: Any) -> None:
    request = demo_request(steps=200, width=128, height=128)
    key = CANCEL_KEY.format(job_id=request["job_id"])
    worker_world.submit(request)
    wait_past_first_step(worker_world, request["job_id"])
    gw_redis.set(key, "interrupt", ex=60)
    event = worker_world.events.wait_terminal(request["job_id"])
    assert event["kind"] == "cancelled"
    assert 1 <= event["steps_done"] < 200


def test_a_compatible_job_sent_while_a_batch_runs_joins_it(
    worker_world: Any, gw_redis: Any
) -> None:
    """The batch looks in its queue when a message was sent there (the broker counts the
    wake-ups), so the newcomer shares the running job's UNet calls instead of waiting."""
    running = demo_request(steps=200, width=128, height=128)
    worker_world.submit(running)
    wait_past_first_step(worker_world, running["job_id"])
    joiner = demo_request(steps=3, width=128, height=128, seed=7)
    worker_world.submit(joiner)
    joined = worker_world.events.wait_terminal(joiner["job_id"])
    gw_redis.set(CANCEL_KEY.format(job_id=running["job_id"]), "interrupt", ex=60)
    assert worker_world.events.wait_terminal(running["job_id"])["kind"] == "cancelled"
    assert joined["kind"] == "succeeded"
    assert joined["timings"]["batch_jobs"] == 2  # it shared the running job's UNet calls


def test_interrupt_stops_within_one_step(engine: Any, gw_redis: Any) -> None:
    from gpu_worker.progress import JobMonitor

    request = demo_request(steps=10)
    key = CANCEL_KEY.format(job_id=request["job_id"])
    monitor = JobMonitor(
        job_id=request["job_id"],
        events_group=request["events_group"],
        redis_client=gw_redis,
        publisher=None,
    )

    def platform_interrupts_at_step_3(info: Any) -> None:
        if info.done == 3:
            gw_redis.set(key, "interrupt", ex=60)  # as the platform's /interrupt does
        monitor(info)

    result = engine.run(request, platform_interrupts_at_step_3)
    assert result.interrupted and result.steps_done == 3 and result.images == []


def test_skip_drops_the_current_batch_and_keeps_the_others(engine: Any, gw_redis: Any) -> None:
    from gpu_worker.progress import JobMonitor

    request = demo_request(n_iter=3, seed=40)
    key = CANCEL_KEY.format(job_id=request["job_id"])
    monitor = JobMonitor(
        job_id=request["job_id"],
        events_group=request["events_group"],
        redis_client=gw_redis,
        publisher=None,
    )

    def skip_in_second_iteration(info: Any) -> None:
        if info.iteration == 1 and info.done == 4:
            gw_redis.set(key, "skip", ex=60)
        monitor(info)

    result = engine.run(request, skip_in_second_iteration)
    assert [i["seed"] for i in result.images] == [40, 42]
    assert result.skipped_batches == 1 and not result.interrupted
    assert gw_redis.get(key) is None  # the skip was consumed


def test_a_job_cancelled_before_it_starts_is_not_run(worker_world: Any, gw_redis: Any) -> None:
    request = demo_request()
    gw_redis.set(CANCEL_KEY.format(job_id=request["job_id"]), "interrupt", ex=60)
    worker_world.submit(request)
    event = worker_world.events.wait_terminal(request["job_id"])
    assert event["kind"] == "cancelled" and event["steps_done"] == 0
    assert [e["kind"] for e in worker_world.events.events[request["job_id"]]] == ["cancelled"]


def test_failures_are_reported_and_the_worker_goes_on(worker_world: Any) -> None:
    bad = demo_request(checkpoint="../../etc/passwd")
    good = demo_request()
    worker_world.submit(bad)
    worker_world.submit(good)
    failed = worker_world.events.wait_terminal(bad["job_id"])
    assert failed["kind"] == "failed" and "unknown checkpoint" in failed["error"]
    assert worker_world.events.wait_terminal(good["job_id"])["kind"] == "succeeded"


def test_heartbeat_is_written_with_a_ttl(worker_world: Any, gw_redis: Any) -> None:
    from gpu_worker.heartbeat import Heartbeat

    beat = Heartbeat(gw_redis, worker_world.service.heartbeat_snapshot)
    sent = beat.beat()
    key = HEARTBEAT_KEY.format(worker_id="test-worker")
    stored = json.loads(gw_redis.get(key))
    assert stored["worker_id"] == "test-worker" and stored["device"] == "cpu"
    assert {e["name"] for e in stored["inventory"]} >= {"atelier-demo-v1", "atelier-demo-v2"}
    assert sent["memory_budget_bytes"] > 0
    assert 0 < gw_redis.ttl(key) <= 8  # dead within 15 s: TTL + the platform's grace
    assert stored["queue"] == "gpu.test-worker" and stored["hot_capacity"] >= 1
    assert gw_redis.sismember(HEARTBEAT_INDEX, "test-worker")
    beat.stop()
    assert gw_redis.get(key) is None


def test_the_worker_takes_one_job_at_a_time_from_its_own_queue(worker_world: Any) -> None:
    worker = worker_world.worker
    assert worker.worker_threads == 1
    assert set(worker.consumers) == {"gpu.test-worker", "gpu.test-worker.DQ"}  # its own only
    # the next assigned job waits in Redis, where the platform can still take it back
    assert worker.consumers["gpu.test-worker"].prefetch == 1


def test_operator_can_drain_undrain_and_unload_through_the_heartbeat(
    worker_world: Any, gw_redis: Any
) -> None:
    from gpu_worker.heartbeat import Heartbeat
    from gpu_worker.protocol import WORKER_COMMANDS_KEY

    service = worker_world.service
    beat = Heartbeat(gw_redis, service.heartbeat_snapshot, on_command=service.apply_command)
    commands = WORKER_COMMANDS_KEY.format(worker_id="test-worker")
    first = demo_request(checkpoint="atelier-demo-v2")
    worker_world.submit(first)
    assert worker_world.events.wait_terminal(first["job_id"])["kind"] == "succeeded"
    assert "atelier-demo-v2" in beat.tick()["loaded_models"]
    try:
        gw_redis.rpush(commands, json.dumps({"action": "unload", "model": "atelier-demo-v2"}))
        gw_redis.rpush(commands, json.dumps({"action": "drain"}))
        sent = beat.tick()
        assert "atelier-demo-v2" not in sent["loaded_models"] and sent["draining"]
        assert json.loads(gw_redis.get(HEARTBEAT_KEY.format(worker_id="test-worker")))["draining"]
        waiting = demo_request()
        worker_world.submit(waiting)
        time.sleep(1.0)
        assert worker_world.events.events[waiting["job_id"]] == []  # left in Redis meanwhile
        gw_redis.rpush(commands, json.dumps({"action": "undrain"}))
        assert not beat.tick()["draining"]
        # undrained, it takes what is still in its queue (the platform had not taken it back)
        assert worker_world.events.wait_terminal(waiting["job_id"])["kind"] == "succeeded"
    finally:
        service.undrain()
        gw_redis.delete(commands, HEARTBEAT_KEY.format(worker_id="test-worker"))


def offline_service(engine: Any, url: str, worker_id: str) -> Any:
    """A worker service with no consumer running, on its own broker namespace."""
    import uuid

    import redis

    from gpu_worker.service import WorkerService
    from gpu_worker.wakeup import WakeupRedisBroker

    broker = WakeupRedisBroker(
        url=url, namespace="atelier-test-" + uuid.uuid4().hex[:8], socket_connect_timeout=1
    )
    return WorkerService(
        engine=engine,
        broker=broker,
        redis_client=redis.Redis.from_url(url, socket_connect_timeout=1),
        publisher=None,
        worker_id=worker_id,
    )


def platform_events(service: Any) -> list[dict]:
    client, namespace = service.broker.client, service.broker.namespace
    ids = client.lrange(f"{namespace}:platform", 0, -1)
    return [
        json.loads(client.hget(f"{namespace}:platform.msgs", i))["kwargs"]["event"] for i in ids
    ]


def test_job_events_wait_while_redis_is_down_and_go_out_in_order_after(
    engine: Any, tmp_path: Any
) -> None:
    from operations.redis_server import free_port, start_private_redis

    port = free_port()
    service = offline_service(engine, f"redis://127.0.0.1:{port}/0", "outbox-worker")
    request = demo_request()
    service.report(service._event(request, "started"))  # Redis is not there yet
    service.report(service._event(request, "succeeded", images=[]))
    assert service.pending_events() == 2
    server = start_private_redis(tmp_path, port=port)
    try:
        assert service.flush_events() and service.pending_events() == 0
        events = platform_events(service)
        assert [e["kind"] for e in events] == ["started", "succeeded"]
        assert {e["job_id"] for e in events} == {request["job_id"]}
    finally:
        server.stop()
        service.broker.close()


def test_a_stopping_worker_gives_its_queued_jobs_back_to_the_platform(
    engine: Any, gw_redis_url: str, gw_redis: Any
) -> None:
    import dramatiq

    from gpu_worker.protocol import GENERATE_ACTOR, GENERATE_KWARG

    service = offline_service(engine, gw_redis_url, "leaving-worker")
    waiting = [demo_request(attempt=3), demo_request(attempt=1)]
    for request in waiting:
        service.broker.enqueue(
            dramatiq.Message(
                queue_name=service.queue,
                actor_name=GENERATE_ACTOR,
                args=(),
                kwargs={GENERATE_KWARG: request},
                options={},
            )
        )
    try:
        assert service.release_queued() == 2
        released = platform_events(service)
        assert {(e["job_id"], e["attempt"], e["kind"]) for e in released} == {
            (r["job_id"], r["attempt"], "released") for r in waiting
        }
        assert all(e["worker_id"] == "leaving-worker" for e in released)
        assert gw_redis.hlen(f"{service.broker.namespace}:{service.queue}.msgs") == 0
    finally:
        service.broker.flush_all()
        service.broker.close()


def send(service: Any, request: GenerationRequest) -> None:
    import dramatiq

    from gpu_worker.protocol import GENERATE_ACTOR, GENERATE_KWARG

    service.broker.enqueue(
        dramatiq.Message(
            queue_name=service.queue,
            actor_name=GENERATE_ACTOR,
            args=(),
            kwargs={GENERATE_KWARG: request},
            options={},
        )
    )


def test_shutdown_gives_back_the_waiting_job_but_not_the_one_running(
    engine: Any, gw_redis_url: str, gw_redis: Any, caplog: Any
) -> None:
    from gpu_worker.service import WorkerLifecycle, register_actors, running_worker

    service = offline_service(engine, gw_redis_url, "busy-leaving-worker")
    register_actors(service.broker, service)
    running = demo_request(steps=400, width=128, height=128)
    waiting = demo_request()
    messages = f"{service.broker.namespace}:{service.queue}.msgs"
    try:
        with running_worker(service.broker, service.queue) as worker:
            send(service, running)
            deadline = time.monotonic() + 60
            while not any(e["kind"] == "started" for e in platform_events(service)):
                assert time.monotonic() < deadline, "the long job never started"
                time.sleep(0.05)
            send(service, waiting)
            with caplog.at_level("INFO", logger="gpu_worker.service"):
                WorkerLifecycle(service, preload=[], heartbeat=None).before_worker_shutdown(
                    service.broker, worker
                )
            released = [e for e in platform_events(service) if e["kind"] == "released"]
            still_running = service.status.current_job
            kept = gw_redis.hkeys(messages)
            service.redis.set(CANCEL_KEY.format(job_id=running["job_id"]), "interrupt", ex=60)
        assert "gave 1 queued job(s) back to the platform" in caplog.text
        assert [e["job_id"] for e in released] == [waiting["job_id"]]
        assert still_running == running["job_id"]  # it ran on while the other went back
        assert len(kept) == 1  # its message stays, to be acked when it finishes
    finally:
        service.broker.flush_all()
        service.broker.close()


def test_the_heartbeat_tells_models_on_the_device_from_those_only_in_ram(
    engine: Any, demo_models_dir: Any, atelier_cache_dir: Any, gw_redis_url: str
) -> None:
    from .conftest import make_engine

    engine.preload("atelier-demo-v1")
    size = max(e.size_bytes for e in map(engine.cache.entry, engine.cache.keys_hottest_first()))
    # Room on the device for one checkpoint, in RAM for both: loading v2 moves v1 to RAM.
    small = make_engine(
        demo_models_dir, atelier_cache_dir, device=int(size * 1.5), ram=int(size * 4)
    )
    small.preload("atelier-demo-v1")
    small.preload("atelier-demo-v2")
    service = offline_service(small, gw_redis_url, "tiers-worker")
    try:
        beat = service.heartbeat_snapshot()
        assert beat["loaded_models"] == ["atelier-demo-v2"]
        assert beat["warm_models"] == ["atelier-demo-v1"]
        assert beat["hot_capacity"] == 1 and beat["queue"] == "gpu.tiers-worker"
        assert beat["batch_max_images"] == 8  # batching on: the scheduler may add companions
    finally:
        service.broker.close()


def test_a_platform_that_asks_for_them_gets_the_pngs_as_bytes_in_redis(
    worker_world: Any, gw_redis: Any
) -> None:
    """The same job twice: the PNG that the event carried as base64 (an older platform's
    request) is the one the worker leaves in Redis when the platform asks, byte for byte."""
    from gpu_worker import result_store

    as_text = demo_request(steps=2, seed=5)
    worker_world.submit(as_text)
    old = worker_world.events.wait_terminal(as_text["job_id"])["images"][0]
    as_bytes = demo_request(steps=2, seed=5, result_pngs_in_redis=True)
    worker_world.submit(as_bytes)
    new = worker_world.events.wait_terminal(as_bytes["job_id"])["images"][0]

    assert new["png_in_redis"] is True and "png_b64" not in new and "png" not in new
    key = result_store.png_key(as_bytes["job_id"], 1, 0)
    assert gw_redis.get(key) == base64.b64decode(old["png_b64"])
    assert gw_redis.ttl(key) > 6 * 24 * 3600  # as long as an unread event may wait
    assert (new["infotext"], new["thumbnail_webp_b64"]) == (
        old["infotext"],
        old["thumbnail_webp_b64"],
    )
    gw_redis.delete(key)


def test_with_redis_refusing_the_pngs_the_event_carries_them_as_base64(engine: Any) -> None:
    """Redis down when the job ends: the event, kept in the outbox until Redis answers,
    carries the PNG itself."""
    from gpu_worker.job_outcome import GenerationResult
    from gpu_worker.protocol import ResultImage
    from operations.redis_server import free_port

    service = offline_service(engine, f"redis://127.0.0.1:{free_port()}/0", "no-redis-worker")
    request = demo_request(result_pngs_in_redis=True)
    png = b"\x89PNG\r\n\x1a\n-the-bytes"
    image = ResultImage(png=png, seed=1, infotext="Seed: 1", width=8, height=8)
    try:
        sent = service._settle(request, GenerationResult(images=[image]), None, retries=0)
    finally:
        service.broker.close()
    assert sent["kind"] == "succeeded" and service.pending_events() == 1
    assert sent["images"][0]["png_b64"] == base64.b64encode(png).decode()
    assert "png_in_redis" not in sent["images"][0] and "png" not in sent["images"][0]
