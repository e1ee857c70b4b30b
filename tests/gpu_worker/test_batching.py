"""The batch runner on the demo models (SD 1.x and the tiny SDXL): jobs joining and leaving at
step boundaries, each image equal to its serial render (Engine.run) within the stated tolerance,
a job alone bit-identical, each job's own step count, CFG, sampler schedule, progress and
interrupt, and an SDXL job's own pooled embeddings and size ids. A batch whose shared UNet call
runs out of memory (a real hook on the model) hands its unreported jobs back, and on a real
worker each runs again alone, is reported once, and is retried as the serial path retries."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from .conftest import demo_request
from .unet_faults import OUT_OF_MEMORY, demo_unet, out_of_memory_once, unet_faults

# bench/bench_batching.py measures at most 1 level of 255 between a batched image and its
# serial render (the UNet's kernels sum in another order for another batch size).
TOLERANCE = 2


def pixels(image: dict) -> Any:
    import numpy as np

    png = base64.b64decode(image["png_b64"])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def batch(engine: Any, requests: list[Any], join_at: dict[int, int], observers=None) -> list:
    """Run requests[0] with requests[i] joining before tick join_at[i]; the outcomes, in order."""
    from gpu_worker.batching import BatchJob, BatchRunner

    outcomes: dict[int, Any] = {}
    observers = observers or {}

    def job(i: int) -> BatchJob:
        return BatchJob(
            requests[i], observers.get(i), lambda _job, out: outcomes.__setitem__(i, out)
        )

    ticks = 0

    def take_more(room: int) -> list[BatchJob]:
        nonlocal ticks
        ticks += 1
        return [job(i) for i, at in join_at.items() if at == ticks]

    BatchRunner(engine).run(job(0), take_more)
    return [finished(outcomes[i]) for i in range(len(requests))]


def finished(outcome: Any) -> Any:
    """A batch job's outcome with its images written: the runner hands them to the encoder's
    threads and goes on (whoever reports the job waits for them)."""
    from gpu_worker.engine import GenerationResult

    if isinstance(outcome, GenerationResult):
        outcome.await_images()
    return outcome


def each_matches_its_serial_render(engine: Any, requests: list[Any], outcomes: list[Any]) -> None:
    """Every job of a 3-job batch: its own steps and images, each within TOLERANCE of its
    serial render with the same infotext; and the jobs' images differ from one another."""
    for request, outcome in zip(requests, outcomes, strict=True):
        serial = engine.run(request)
        assert outcome.steps_done == serial.steps_done == request["steps"]
        assert len(outcome.images) == len(serial.images) == request["batch_size"]
        for mine, alone in zip(outcome.images, serial.images, strict=True):
            assert abs(pixels(mine) - pixels(alone)).max() <= TOLERANCE
            assert mine["infotext"] == alone["infotext"]
        assert outcome.timings["batch_jobs"] == 3
    assert abs(pixels(outcomes[0].images[0]) - pixels(outcomes[2].images[0])).max() > TOLERANCE


@pytest.mark.parametrize(
    ("engine_fixture", "checkpoint"),
    [("engine", "atelier-demo-v1"), ("xl_engine", "atelier-demo-xl")],
    ids=["sd1", "sdxl"],
)
def test_a_job_alone_in_the_runner_is_bit_identical_to_the_serial_path(
    request: pytest.FixtureRequest, engine_fixture: str, checkpoint: str
) -> None:
    engine = request.getfixturevalue(engine_fixture)
    job_request = demo_request(checkpoint=checkpoint, seed=5, steps=4)
    [alone] = batch(engine, [job_request], {})
    serial = engine.run(job_request)
    assert (pixels(alone.images[0]) == pixels(serial.images[0])).all()
    assert alone.images[0]["infotext"] == serial.images[0]["infotext"]
    assert alone.steps_done == serial.steps_done and alone.timings["batch_jobs"] == 1


def test_jobs_joining_and_leaving_mid_run_each_match_their_serial_render(engine: Any) -> None:
    requests = [
        demo_request(prompt="a red fox", seed=1, steps=8, cfg_scale=7.0),
        # joins at the 3rd step, unguided (positive rows only), another schedule, 2 images
        demo_request(
            prompt="a boat", seed=2, steps=4, cfg_scale=1.0, batch_size=2, scheduler="Karras"
        ),  # fmt: skip
        demo_request(prompt="a (tree:1.3)", negative_prompt="fog", seed=3, steps=3),
    ]
    each_matches_its_serial_render(engine, requests, batch(engine, requests, {1: 3, 2: 3}))


def test_a_second_order_sampler_counts_its_model_calls_per_job(engine: Any) -> None:
    requests = [demo_request(sampler="Heun", steps=s, seed=s) for s in (3, 5)]
    outcomes = batch(engine, requests, {1: 1})
    for request, outcome in zip(requests, outcomes, strict=True):
        serial = engine.run(request)
        assert outcome.steps_done == serial.steps_done == 2 * request["steps"] - 1
        assert abs(pixels(outcome.images[0]) - pixels(serial.images[0])).max() <= TOLERANCE


def test_an_interrupted_job_leaves_and_the_other_goes_on(engine: Any) -> None:
    from gpu_worker.engine import JobInterrupted

    seen: list[tuple[int, int]] = []

    def stop_at_two(info: Any) -> None:
        seen.append((info.done, info.total))
        if info.done == 2:
            raise JobInterrupted()

    requests = [demo_request(seed=1, steps=5), demo_request(seed=2, steps=5)]
    stopped, finished = batch(engine, requests, {1: 1}, {0: stop_at_two})
    assert stopped.interrupted and stopped.images == [] and stopped.steps_done == 2
    assert seen == [(1, 5), (2, 5)]
    serial = engine.run(requests[1])
    assert finished.steps_done == 5 and not finished.interrupted
    assert abs(pixels(finished.images[0]) - pixels(serial.images[0])).max() <= TOLERANCE


def test_a_stop_mid_batch_tells_every_job_then_goes_on_up(engine: Any) -> None:
    from gpu_worker.batching import BatchJob, BatchRunner

    class Stop(BaseException):  # what Dramatiq's time limit is: no Exception
        pass

    def stop(info: Any) -> None:
        if info.done == 2:
            raise Stop()

    told: dict[str, Any] = {}
    jobs = [
        BatchJob(demo_request(job_id=name), observer, lambda j, out: told.__setitem__(
            j.request["job_id"], out))
        for name, observer in (("first", stop), ("joined", None))
    ]  # fmt: skip
    with pytest.raises(Stop):
        BatchRunner(engine).run(jobs[0], lambda room: [jobs.pop()] if len(jobs) > 1 else [])
    assert sorted(told) == ["first", "joined"]
    assert all(isinstance(out, Stop) for out in told.values())


def test_a_job_that_cannot_start_fails_alone(engine: Any) -> None:
    from gpu_worker.engine import JobFailed

    requests = [demo_request(seed=1), demo_request(prompt="<lora:no-such-lora:1>")]
    ok, failed = batch(engine, requests, {1: 1})
    assert ok.images and isinstance(failed, JobFailed) and "no-such-lora" in str(failed)


def test_a_joining_job_out_of_memory_fails_alone_and_the_batch_keeps_its_models(
    engine: Any,
) -> None:
    """Out of memory while one joining job is set up (its prompt encoded) fails that job only;
    the models the batch is using stay loaded (the cache is not cleared under it)."""
    from gpu_worker.batching import BatchJob, BatchRunner
    from gpu_worker.engine import JobFailed

    pipe = engine.pipeline(engine.resolve("checkpoint", "atelier-demo-v1"), None)
    loaded = engine.cache.keys_hottest_first()
    state = {"offered": False, "armed": False}
    outcomes: dict[int, Any] = {}
    requests = [demo_request(seed=1, steps=4), demo_request(prompt="a second prompt", seed=2)]

    def job(i: int) -> BatchJob:
        return BatchJob(requests[i], None, lambda _job, out: outcomes.__setitem__(i, out))

    def take_more(room: int) -> list[BatchJob]:
        if state["offered"]:
            return []
        state["offered"] = state["armed"] = True  # the next prompt encoded is the joiner's
        return [job(1)]

    def encoder_out_of_memory(_module: Any, _args: Any) -> None:
        if state["armed"]:
            state["armed"] = False
            raise RuntimeError(OUT_OF_MEMORY)

    handle = pipe.text_encoder.register_forward_pre_hook(encoder_out_of_memory)
    try:
        BatchRunner(engine).run(job(0), take_more)
    finally:
        handle.remove()
    assert finished(outcomes[0]).images
    assert isinstance(outcomes[1], JobFailed) and "out of GPU memory" in str(outcomes[1])
    assert engine.cache.keys_hottest_first() == loaded


# --- a crash of the batch itself: out of memory in the shared UNet call -----------------------
def test_a_crash_of_the_shared_unet_call_hands_back_its_unreported_jobs_in_join_order(
    engine: Any,
) -> None:
    from gpu_worker.batching import BatchJob, BatchRunner
    from gpu_worker.engine import JobInterrupted

    def stop_at_one(info: Any) -> None:
        if info.done == 1:
            raise JobInterrupted()

    told: dict[str, Any] = {}
    jobs = [
        BatchJob(demo_request(job_id=f"job-{i}", seed=i, steps=5), observer, lambda j, out: (
            told.__setitem__(j.request["job_id"], out)))
        for i, observer in enumerate((None, stop_at_one, None))
    ]  # fmt: skip
    waiting = jobs[1:]

    def take_more(room: int) -> list[BatchJob]:
        joining, waiting[:] = waiting[:], []
        return joining

    # 3 jobs of 2 rows share the 1st call; the 2nd, once job-1 left, runs out of memory
    with unet_faults(demo_unet(engine), out_of_memory_once(lambda rows: rows == 4)) as calls:
        stranded = BatchRunner(engine).run(jobs[0], take_more)
    assert calls.rows == [6, 4] and calls.raised == [OUT_OF_MEMORY]
    assert [job.request["job_id"] for job in stranded] == ["job-0", "job-2"]
    assert list(told) == ["job-1"] and told["job-1"].interrupted  # the crash told no one


def test_a_batch_out_of_memory_runs_its_jobs_again_alone_on_the_worker(
    worker_world: Any, gw_redis: Any, engine: Any
) -> None:
    """Three jobs batched on a real worker (real Redis and Dramatiq); one is cancelled, then
    the shared UNet call runs out of memory: the cancelled job stays cancelled, the two others
    run again alone (the serial path) and are each reported succeeded once, with their serial
    images; every claimed message is acked."""
    from gpu_worker.protocol import CANCEL_KEY, PLATFORM_QUEUE, worker_queue

    world = worker_world
    blocker = demo_request(tiling=True, steps=400)  # serial path: holds the worker meanwhile
    first, cancelled, last = (
        demo_request(prompt=prompt, seed=seed, steps=6)
        for prompt, seed in (("a red fox", 1), ("a boat", 2), ("a (tree:1.3)", 3))
    )

    def when(rows: int) -> bool:
        if rows == 6:  # the three jobs in one call: cancel one, as the platform would
            gw_redis.set(CANCEL_KEY.format(job_id=cancelled["job_id"]), "interrupt", ex=60)
        return rows == 4 and 6 in calls.rows  # the two left: the batch crashes

    with unet_faults(demo_unet(world.service.engine), out_of_memory_once(when)) as calls:
        for request in (blocker, first, cancelled, last):
            world.submit(request)
        gw_redis.set(CANCEL_KEY.format(job_id=blocker["job_id"]), "interrupt", ex=60)
        ends = {r["job_id"]: world.events.wait_terminal(r["job_id"]) for r in (first, last)}
        world.broker.join(PLATFORM_QUEUE, timeout=10_000)  # every event sent is recorded
    assert calls.raised == [OUT_OF_MEMORY]

    events = world.events.events
    assert [e["kind"] for e in events[cancelled["job_id"]]] == ["started", "cancelled"]
    for request in (first, last):
        assert [e["kind"] for e in events[request["job_id"]]] == ["started", "succeeded"]
        event, serial = ends[request["job_id"]], engine.run(request)
        assert event["steps_done"] == 6 and "batch_jobs" not in event["timings"]  # alone
        assert (pixels(event["images"][0]) == pixels(serial.images[0])).all()
    queue = f"{world.broker.namespace}:{worker_queue(world.service.worker_id)}"
    assert gw_redis.hlen(f"{queue}.msgs") == 0 and not world.service.claimed


def test_a_job_that_fails_again_alone_is_retried_as_on_the_serial_path(
    worker_world: Any, gw_redis: Any, engine: Any
) -> None:
    """After the batch ran out of memory, each job's first step alone meets an unexpected
    error: the actor's own job and the claimed one are both retried through Dramatiq (as the
    serial path retries), then each succeeds, reported once."""
    from gpu_worker.protocol import CANCEL_KEY, PLATFORM_QUEUE, worker_queue

    world = worker_world
    blocker = demo_request(tiling=True, steps=400)  # serial path: holds the worker meanwhile
    first, joined = (
        demo_request(prompt=p, seed=s, steps=4) for p, s in (("a fox", 1), ("a boat", 2))
    )

    def fault(calls: Any) -> str | None:
        if not calls.raised:
            return OUT_OF_MEMORY if calls.rows[-1] == 4 else None  # the batch of the two
        return "an unexpected error" if len(calls.raised) < 3 else None  # each alone, once

    with unet_faults(demo_unet(world.service.engine), fault) as calls:
        for request in (blocker, first, joined):
            world.submit(request)
        gw_redis.set(CANCEL_KEY.format(job_id=blocker["job_id"]), "interrupt", ex=60)
        ends = {r["job_id"]: world.events.wait_terminal(r["job_id"]) for r in (first, joined)}
        world.broker.join(PLATFORM_QUEUE, timeout=10_000)
    assert calls.raised == [OUT_OF_MEMORY] + ["an unexpected error"] * 2

    for request in (first, joined):
        kinds = [e["kind"] for e in world.events.events[request["job_id"]]]
        assert kinds == ["started", "started", "succeeded"]  # its retry started it again
        serial = engine.run(request)
        image = ends[request["job_id"]]["images"][0]
        assert abs(pixels(image) - pixels(serial.images[0])).max() <= TOLERANCE
    queue = f"{world.broker.namespace}:{worker_queue(world.service.worker_id)}"
    assert gw_redis.hlen(f"{queue}.msgs") == gw_redis.hlen(f"{queue}.DQ.msgs") == 0


@pytest.fixture(autouse=True)
def _torch(torch: Any) -> None:
    """Marks these tests `engine` (tests/gpu_worker/conftest.py)."""


# --- SDXL: the added conditioning (pooled embeddings, size ids) carried per row ---------------
def xl_request(**overrides: Any) -> Any:
    return demo_request(checkpoint="atelier-demo-xl", **overrides)


def test_sdxl_jobs_batched_each_match_their_serial_render(xl_engine: Any) -> None:
    requests = [
        xl_request(prompt="a red fox", seed=1, steps=6, cfg_scale=7.0),
        # joins at the 2nd step: unguided (positive rows only), 2 images, another schedule
        xl_request(
            prompt="a boat", seed=2, steps=4, cfg_scale=1.0, batch_size=2, scheduler="Karras"
        ),  # fmt: skip
        # a prompt of two 77-token chunks: its rows go in a UNet call of their own
        xl_request(
            prompt="a (tree:1.3), " + "leaves, " * 60,
            negative_prompt="fog",
            seed=3,
            steps=3,
            cfg_scale=4.5,
        ),  # fmt: skip
    ]
    each_matches_its_serial_render(xl_engine, requests, batch(xl_engine, requests, {1: 2, 2: 2}))
