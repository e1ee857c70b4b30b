"""Result images written off the sampling thread (gpu_worker.result_encoding): the same PNG
and thumbnail bytes as written on it, in the request's order, each with the gallery's
thumbnail; and the batch runner leaves a finished job's images to the encoder instead of
making the batch's other jobs wait for them."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from .conftest import demo_request


def thumbnail_of(result_image: dict) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(result_image["thumbnail_webp_b64"])))
    image.load()
    return image


def test_each_image_carries_a_webp_thumbnail_no_larger_than_the_gallery_side(
    engine: Any,
) -> None:
    from gpu_worker.thumbnails import THUMBNAIL_SIDE

    result = engine.run(demo_request(width=512, height=256, steps=1))
    [image] = result.images
    thumb = thumbnail_of(image)
    assert thumb.format == "WEBP"
    assert thumb.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)  # its aspect kept
    small = thumbnail_of(engine.run(demo_request(width=64, height=96, steps=1)).images[0])
    assert small.size == (64, 96)  # a smaller image is not enlarged


@pytest.mark.parametrize("threads", [0, 2])
def test_encoded_beside_sampling_the_images_are_the_bytes_written_inline_in_seed_order(
    engine: Any, threads: int
) -> None:
    """n_iter 2 of batch_size 2: the first iteration's PNGs are written while the second
    samples; the result lists them as the serial writing did."""
    from gpu_worker.result_encoding import ResultEncoder

    request = demo_request(batch_size=2, n_iter=2, seed=40)
    before = engine.encoder
    engine.encoder = ResultEncoder(threads)
    try:
        result = engine.run(request)
    finally:
        engine.encoder.shutdown()
        engine.encoder = before
    assert [i["seed"] for i in result.images] == [40, 41, 42, 43]
    assert not result.pending and result.timings["encode_s"] >= 0
    inline = engine.run(request)  # the session engine's own encoder
    assert [i["png_b64"] for i in result.images] == [i["png_b64"] for i in inline.images]
    assert [i["thumbnail_webp_b64"] for i in result.images] == [
        i["thumbnail_webp_b64"] for i in inline.images
    ]


def test_the_batch_runner_hands_a_finished_jobs_images_to_the_encoder_and_steps_on(
    engine: Any,
) -> None:
    """The short job leaves the batch with its images still being written (the long one's
    steps do not wait for its PNGs); once awaited they are its serial render's."""
    from gpu_worker.batching import BatchJob, BatchRunner

    requests = [demo_request(steps=2, seed=5), demo_request(steps=6, seed=6, prompt="a dog")]
    told: list[tuple[str, int, int]] = []  # (job, images still pending, images written)
    outcomes: dict[str, Any] = {}

    def done(job: BatchJob, outcome: Any) -> None:
        told.append((job.request["job_id"], len(outcome.pending), len(outcome.images)))
        outcomes[job.request["job_id"]] = outcome

    jobs = [BatchJob(r, None, done) for r in requests]
    waiting = jobs[1:]

    def take_more(room: int) -> list[BatchJob]:
        joining, waiting[:] = waiting[:], []
        return joining

    BatchRunner(engine).run(jobs[0], take_more)
    short, long = (r["job_id"] for r in requests)
    assert told == [(short, 1, 0), (long, 1, 0)]
    for request in requests:
        outcome = outcomes[request["job_id"]]
        outcome.await_images()
        assert not outcome.pending and len(outcome.images) == 1
        assert outcome.images[0]["thumbnail_webp_b64"]


def test_a_jobs_total_time_covers_the_writing_of_its_images():
    """A batch's job leaves the batch (its total stamped) before its PNGs are written: the wait
    for them is added to its total, as Engine.run's total includes it; a total not stamped yet
    is left for the engine to stamp."""
    import time
    from concurrent.futures import Future

    from gpu_worker.job_outcome import GenerationResult

    class WrittenWhenAwaited(Future):
        """A PNG whose writing takes `seconds` from the moment the job waits for it (a timer
        started before the wait would have run partly before it: a flaky lower bound)."""

        def __init__(self, seconds: float) -> None:
            super().__init__()
            self.seconds = seconds

        def result(self, timeout: float | None = None) -> dict:
            time.sleep(self.seconds)
            self.set_result({"seed": 1})
            return super().result(timeout)

    def written_later(seconds: float) -> Future:
        return WrittenWhenAwaited(seconds)

    stamped = GenerationResult(pending=[written_later(0.05)])
    stamped.timings["total_s"] = 1.0
    stamped.await_images()
    assert stamped.timings["total_s"] >= 1.05
    assert stamped.timings["encode_s"] >= 0.05 and stamped.images == [{"seed": 1}]

    unstamped = GenerationResult(pending=[written_later(0.0)])
    unstamped.await_images()
    assert "total_s" not in unstamped.timings
