"""Job transitions and worker events through a real Dramatiq worker on the platform queue:
late, duplicated and stale messages change nothing."""

from __future__ import annotations

import base64
import io
from typing import Any, cast

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from generation.models import Job, JobImage
from generation.result_images import BrokenResultImage
from generation.submission import submit_job
from generation.worker_events import handle_job_event
from gpu_worker.protocol import JobEvent, JobEventKind
from tests.generation.conftest import SMALL, send_event, status_of, wait_for

pytestmark = pytest.mark.django_db  # the tests with a worker thread ask for transactional_db


def png_b64(color: str = "blue", size: tuple[int, int] = (64, 64)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def dispatched(job: Job, worker_id: str = "gpu-1") -> Job:
    """As the scheduler hands it out: assigned to a worker as the next attempt."""
    assert job.mark_assigned(worker_id)
    return job


def event(job: Job, kind: JobEventKind, **extra: Any) -> JobEvent:
    # The extras are whatever the test sends, as on the wire: not checked against JobEvent.
    return cast(
        JobEvent,
        {
            "job_id": str(job.pk),
            "attempt": job.attempt,
            "worker_id": "gpu-1",
            "kind": kind,
            **extra,
        },
    )


def succeeded(job: Job, count: int = 1) -> JobEvent:
    images = [
        {
            "png_b64": png_b64(),
            "seed": 7 + i,
            "infotext": f"a lighthouse\nSeed: {7 + i}",
            "width": 64,
            "height": 64,
        }
        for i in range(count)
    ]
    return event(job, "succeeded", images=images, timings={"sampling_s": 1.5, "total_s": 2.0})


def test_a_job_runs_through_started_and_succeeded(alice, catalogue, broker, platform_worker):
    job = dispatched(submit_job(alice, SMALL))
    send_event(broker, event(job, "started"))
    wait_for(lambda: status_of(job) == "running")
    send_event(broker, succeeded(job, count=2))
    wait_for(lambda: status_of(job) == "succeeded")
    job.refresh_from_db()
    assert job.worker_id == "gpu-1" and job.started_at and job.finished_at
    images = list(job.images.order_by("index"))
    assert [i.seed for i in images] == [7, 8]
    assert all(i.file.name and default_storage.exists(i.file.name) for i in images)
    name = images[0].file.name or ""
    assert name.startswith("images/") and "lighthouse" not in name
    with default_storage.open(images[0].thumbnail.name or "") as fh:
        assert Image.open(fh).format == "WEBP"


def test_a_second_succeeded_does_not_create_a_second_set_of_images(
    alice, catalogue, broker, platform_worker
):
    job = dispatched(submit_job(alice, SMALL))
    send_event(broker, succeeded(job))
    send_event(broker, succeeded(job))
    broker.join("platform", timeout=10_000)
    assert status_of(job) == "succeeded"
    assert JobImage.objects.filter(job=job).count() == 1


def test_succeeded_before_started_still_finishes_the_job(alice, catalogue):
    job = dispatched(submit_job(alice, SMALL))
    assert handle_job_event(succeeded(job))
    assert not handle_job_event(event(job, "started"))
    assert status_of(job) == "succeeded"


def test_a_late_started_after_a_cancel_changes_nothing(alice, catalogue):
    job = submit_job(alice, SMALL)
    from generation.submission import cancel_job

    cancel_job(alice, job)  # no worker held it: cancelled at once
    assert not handle_job_event(event(job, "started"))
    assert not handle_job_event(succeeded(job))
    assert status_of(job) == "cancelled"
    assert not JobImage.objects.exists()


def test_a_handed_out_job_cancelled_is_settled_by_its_workers_events(alice, catalogue):
    job = dispatched(submit_job(alice, SMALL))
    from generation.submission import cancel_job

    cancel_job(alice, job)  # the worker may have started it: it is asked to stop
    assert status_of(job) == "queued"
    assert handle_job_event(event(job, "started"))
    assert handle_job_event(event(job, "cancelled", steps_done=1))
    job.refresh_from_db()
    assert (job.status, job.steps_done) == ("cancelled", 1)


def test_events_of_an_older_attempt_are_ignored(alice, catalogue):
    job = dispatched(submit_job(alice, SMALL))
    stale = event(job, "started")
    assert job.return_to_queue()  # its worker died; the scheduler hands it out again
    dispatched(job)
    assert not handle_job_event(stale)
    assert not handle_job_event({**succeeded(job), "attempt": 1})
    assert status_of(job) == "queued"
    assert handle_job_event(event(job, "started"))


def test_a_failed_job_keeps_the_workers_message(alice, catalogue, broker, platform_worker):
    job = dispatched(submit_job(alice, SMALL))
    send_event(broker, event(job, "started"))
    send_event(broker, event(job, "failed", error="out of memory"))
    wait_for(lambda: status_of(job) == "failed")
    job.refresh_from_db()
    assert job.error == "out of memory"
    assert not handle_job_event(event(job, "succeeded", images=[]))


def test_a_cancelled_event_finishes_a_running_job(alice, catalogue):
    job = dispatched(submit_job(alice, SMALL))
    handle_job_event(event(job, "started"))
    assert handle_job_event(event(job, "cancelled", steps_done=2))
    job.refresh_from_db()
    assert (job.status, job.steps_done) == ("cancelled", 2)
    assert not handle_job_event(event(job, "cancelled", steps_done=3))


def test_an_event_for_an_unknown_job_is_ignored(alice, catalogue):
    assert not handle_job_event(
        {
            "job_id": "00000000-0000-0000-0000-000000000000",
            "attempt": 1,
            "worker_id": "w",
            "kind": "started",
        }
    )


def test_terminal_transitions_are_won_only_once(alice, catalogue):
    job = dispatched(submit_job(alice, SMALL))
    assert job.mark_failed("first", attempt=job.attempt)
    assert not job.mark_failed("second", attempt=job.attempt)
    assert not job.mark_cancelled()
    assert not job.mark_succeeded(job.attempt)
    assert not job.mark_running("w", job.attempt)
    assert not job.mark_assigned("gpu-2")
    assert not job.return_to_queue()
    job.refresh_from_db()
    assert job.error == "first"


@pytest.mark.parametrize(
    ("size", "thumbnail_size"), [((512, 384), (256, 192)), ((64, 64), (64, 64))]
)
def test_each_image_gets_a_webp_thumbnail_at_most_256_pixels_wide(
    alice, catalogue, size, thumbnail_size
):
    job = dispatched(submit_job(alice, SMALL))
    images = [{"png_b64": png_b64("red", size), "seed": 7, "infotext": "a lighthouse"}]
    assert handle_job_event(event(job, "succeeded", images=images))
    image = JobImage.objects.get(job=job)
    assert (image.width, image.height) == size
    with default_storage.open(image.thumbnail.name or "") as fh, Image.open(fh) as thumbnail:
        assert (thumbnail.format, thumbnail.size) == ("WEBP", thumbnail_size)
        pixel = cast(tuple[int, int, int], thumbnail.convert("RGB").getpixel((5, 5)))
    assert pixel[0] > 200 and max(pixel[1:]) < 50  # still red


def test_a_result_image_that_is_no_png_records_nothing_and_a_good_redelivery_records_once(
    alice, catalogue
):
    """A broken image claims nothing (the message is retried), nothing is charged, and the
    worker's next delivery records the job once."""
    from accounts.models import CreditAccount

    job = dispatched(submit_job(alice, SMALL))
    before = CreditAccount.objects.get(pk=alice.pk)
    broken = [{"png_b64": base64.b64encode(b"not a png").decode(), "seed": 7}]
    with pytest.raises(BrokenResultImage):
        handle_job_event(event(job, "succeeded", images=broken))
    after_broken = CreditAccount.objects.get(pk=alice.pk)
    assert status_of(job) == "queued" and not JobImage.objects.exists()
    assert (after_broken.balance, after_broken.held) == (before.balance, before.held)
    assert handle_job_event(succeeded(job, count=2))
    assert not handle_job_event(succeeded(job, count=2))
    charged = CreditAccount.objects.get(pk=alice.pk)
    assert status_of(job) == "succeeded" and JobImage.objects.filter(job=job).count() == 2
    assert charged.held == before.held - job.price and charged.balance == before.balance
    assert all(i.thumbnail.name for i in JobImage.objects.filter(job=job))


def test_a_success_recorded_from_a_stale_copy_keeps_the_start_time_of_its_started_event(
    alice, catalogue
):
    job = dispatched(submit_job(alice, SMALL))
    stale = Job.objects.get(pk=job.pk)  # loaded before the 'started' event was recorded
    assert handle_job_event(event(job, "started"))
    job.refresh_from_db()
    assert stale.mark_succeeded(stale.attempt, "gpu-1", {"total_s": 2.0})
    assert stale.started_at == job.started_at
    assert (stale.status, stale.worker_id, stale.timings) == (
        "succeeded",
        "gpu-1",
        {"total_s": 2.0},
    )
    assert stale.finished_at and job.started_at
    assert stale.run_time == stale.finished_at - job.started_at


def test_of_two_dispatchers_claiming_one_waiting_job_only_one_hands_it_out(alice, catalogue):
    """The claim is a conditional update (written out as SQL): the copy read before the other
    dispatcher's claim loses it, learns who won, and a cancelled job is claimed by nobody."""
    job = submit_job(alice, SMALL)
    stale = Job.objects.get(pk=job.pk)
    assert job.mark_assigned("gpu-1")
    assert not stale.mark_assigned("gpu-2")
    assert (stale.worker_id, stale.attempt) == ("gpu-1", 1)
    job.refresh_from_db()
    assert (job.worker_id, job.attempt, job.dispatched_at is not None) == ("gpu-1", 1, True)
    cancelled = submit_job(alice, SMALL)
    assert cancelled.mark_cancelled()
    assert not Job.objects.get(pk=cancelled.pk).mark_assigned("gpu-1")
    cancelled.refresh_from_db()
    assert (cancelled.status, cancelled.worker_id) == (Job.Status.CANCELLED, "")
