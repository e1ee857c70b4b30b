"""Result PNGs that come as bytes in Redis beside the 'succeeded' event (gpu_worker.result_store):
stored exactly, cleared once stored, and a job whose bytes Redis lost fails at once with its
credits given back, instead of being retried for nothing."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from accounts.models import CreditAccount
from generation.models import JobImage
from generation.submission import submit_job
from generation.worker_events import LOST_IMAGES, handle_job_event
from gpu_worker import result_store
from gpu_worker.protocol import ResultImage
from tests.generation.conftest import SMALL, status_of
from tests.generation.test_job_lifecycle import dispatched, event

pytestmark = pytest.mark.django_db


def png(color: str, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def encoded(data: bytes, seed: int) -> ResultImage:
    """An image as the worker's encoder leaves it when the platform asked for bytes."""
    return ResultImage(png=data, seed=seed, infotext=f"Seed: {seed}", width=64, height=48)


def test_pngs_sent_through_redis_are_stored_exactly_and_then_cleared(
    alice: Any, catalogue: Any, redis_client: Any
) -> None:
    job = dispatched(submit_job(alice, SMALL))
    pngs = [png("red"), png("green")]
    wire = result_store.for_the_wire(
        redis_client, str(job.pk), job.attempt, [encoded(p, 7 + i) for i, p in enumerate(pngs)]
    )
    assert all(image.get("png_in_redis") and "png_b64" not in image for image in wire)
    keys = [result_store.png_key(str(job.pk), job.attempt, i) for i in range(2)]
    assert all(redis_client.ttl(key) > 6 * 24 * 3600 for key in keys)

    assert handle_job_event(event(job, "succeeded", images=wire))

    stored = JobImage.objects.filter(job=job).order_by("index")
    assert [image.file.read() for image in stored] == pngs
    assert [(image.width, image.height, image.seed) for image in stored] == [
        (64, 48, 7),
        (64, 48, 8),
    ]
    assert status_of(job) == "succeeded"
    assert redis_client.exists(*keys) == 0  # nothing left behind once stored


def test_pngs_redis_lost_fail_the_job_and_give_its_credits_back(
    alice: Any, catalogue: Any, redis_client: Any
) -> None:
    job = dispatched(submit_job(alice, SMALL))
    before = CreditAccount.objects.get(pk=alice.pk)
    wire = result_store.for_the_wire(
        redis_client, str(job.pk), job.attempt, [encoded(png("red"), 7)]
    )
    redis_client.flushdb()  # Redis lost its data after the worker sent the event

    assert handle_job_event(event(job, "succeeded", images=wire))

    job.refresh_from_db()
    assert job.status == "failed" and job.error == LOST_IMAGES
    assert not JobImage.objects.filter(job=job).exists()
    after = CreditAccount.objects.get(pk=alice.pk)
    assert after.held == before.held - job.price
    assert after.balance == before.balance + job.price  # the hold came back


def test_a_success_delivered_again_after_its_pngs_were_stored_changes_nothing(
    alice: Any, catalogue: Any, redis_client: Any
) -> None:
    job = dispatched(submit_job(alice, SMALL))
    wire = result_store.for_the_wire(
        redis_client, str(job.pk), job.attempt, [encoded(png("red"), 7)]
    )
    assert handle_job_event(event(job, "succeeded", images=wire))
    charged = CreditAccount.objects.get(pk=alice.pk)

    assert not handle_job_event(event(job, "succeeded", images=wire))  # its bytes are gone now

    assert status_of(job) == "succeeded" and JobImage.objects.filter(job=job).count() == 1
    again = CreditAccount.objects.get(pk=alice.pk)
    assert (again.balance, again.held) == (charged.balance, charged.held)


def test_every_job_message_asks_its_worker_for_the_bytes(alice: Any, catalogue: Any) -> None:
    """Without it a worker falls back to base64 silently: the tests above would not notice."""
    from generation.job_messages import build_request

    assert build_request(dispatched(submit_job(alice, SMALL)))["result_pngs_in_redis"] is True
