"""The batch runner on the demo models (SD 1.x and the tiny SDXL): jobs joining and leaving at
step boundaries, each image equal to its serial render (Engine.run) within the stated tolerance,
a job alone bit-identical, each job's own step count, CFG, sampler schedule, progress and
interrupt, and an SDXL job's own pooled embeddings and size ids."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from .conftest import demo_request

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
    return [outcomes[i] for i in range(len(requests))]


def test_a_job_alone_in_the_runner_is_bit_identical_to_the_serial_path(engine: Any) -> None:
    request = demo_request(seed=5, steps=4)
    [alone] = batch(engine, [request], {})
    serial = engine.run(request)
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
    outcomes = batch(engine, requests, {1: 3, 2: 3})
    for request, outcome in zip(requests, outcomes, strict=True):
        serial = engine.run(request)
        assert outcome.steps_done == serial.steps_done == request["steps"]
        assert len(outcome.images) == len(serial.images) == request["batch_size"]
        for mine, alone in zip(outcome.images, serial.images, strict=True):
            assert abs(pixels(mine) - pixels(alone)).max() <= TOLERANCE
            assert mine["infotext"] == alone["infotext"]
        assert outcome.timings["batch_jobs"] == 3
    assert abs(pixels(outcomes[0].images[0]) - pixels(outcomes[2].images[0])).max() > TOLERANCE


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


@pytest.fixture(autouse=True)
def _torch(torch: Any) -> None:
    """Marks these tests `engine` (tests/gpu_worker/conftest.py)."""


# --- SDXL: the added conditioning (pooled embeddings, size ids) carried per row ---------------
def xl_request(**overrides: Any) -> Any:
    return demo_request(checkpoint="atelier-demo-xl", **overrides)


def test_an_sdxl_job_alone_in_the_runner_is_bit_identical_to_the_serial_path(
    xl_engine: Any,
) -> None:
    request = xl_request(seed=5, steps=4)
    [alone] = batch(xl_engine, [request], {})
    serial = xl_engine.run(request)
    assert (pixels(alone.images[0]) == pixels(serial.images[0])).all()
    assert alone.images[0]["infotext"] == serial.images[0]["infotext"]
    assert alone.steps_done == serial.steps_done and alone.timings["batch_jobs"] == 1


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
    outcomes = batch(xl_engine, requests, {1: 2, 2: 2})
    for request, outcome in zip(requests, outcomes, strict=True):
        serial = xl_engine.run(request)
        assert outcome.steps_done == serial.steps_done == request["steps"]
        assert len(outcome.images) == len(serial.images) == request["batch_size"]
        for mine, alone in zip(outcome.images, serial.images, strict=True):
            assert abs(pixels(mine) - pixels(alone)).max() <= TOLERANCE
            assert mine["infotext"] == alone["infotext"]
        assert outcome.timings["batch_jobs"] == 3
    assert abs(pixels(outcomes[0].images[0]) - pixels(outcomes[2].images[0])).max() > TOLERANCE
