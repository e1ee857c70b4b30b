"""Terminal and start transitions with their side effects, in one place.

Each function claims the transition on the model (a conditional update), and only if it won:
settles the credit hold exactly once, and publishes the websocket event after commit. Used by the
worker-event actor, cancel and the sweeper alike.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import redis
from django.core.files.base import ContentFile
from django.db import transaction
from django.urls import reverse

from generation import class_images, event_claims, waiting_set
from generation.credits_hold import capture_hold, release_hold
from generation.events import (
    EtaSource,
    ImagePayload,
    JobCancelledEvent,
    JobEvent,
    JobFailedEvent,
    JobQueuedEvent,
    JobStartedEvent,
    JobSucceededEvent,
    publish_job_event,
    send_to_users,
)
from generation.merge_records import attach_merged_file, drop_unfinished_merge
from generation.models import Job, JobImage
from generation.queue import QueueSnapshot, queue_snapshot, stored_snapshot
from generation.result_images import CheckedImage, checked_images, forget_result_pngs
from generation.scheduling.estimates import running_eta
from generation.scheduling.wakeups import POSITIONS, ring
from gpu_worker.protocol import MergedModel, ResultImage

logger = logging.getLogger(__name__)


def image_payload(image: JobImage) -> ImagePayload:
    return ImagePayload(
        id=str(image.pk),
        url=reverse("generation-image-file", args=[image.pk]),
        thumbnail_url=reverse("generation-image-thumb", args=[image.pk]),
        seed=image.seed,
        infotext=image.infotext,
        width=image.width,
        height=image.height,
    )


def start_job(job: Job, worker_id: str, attempt: int) -> bool:
    with transaction.atomic():
        if not job.mark_running(worker_id, attempt):
            return False
        _publish_started(job)
    transaction.on_commit(publish_queue_positions)
    return True


def start_job_by_id(job_id: str, worker_id: str, attempt: int) -> bool | None:
    """`start_job` in one statement (claim and read, no transaction around it); None when the
    claim did not match: the caller reads the job (`start_job` then says no)."""
    claimed = event_claims.claim_start(job_id, attempt, worker_id)
    if claimed is None:
        return None
    job, others_queued = claimed
    _publish_started(job)
    if others_queued:
        transaction.on_commit(tell_queue_positions)
    return True


def _publish_started(job: Job) -> None:
    # Timed with the speeds the dispatcher's snapshot already picked (a Redis read), not
    # another read of the history while the job's engine runs beside us.
    snapshot = stored_snapshot()
    publish_job_event(
        job,
        JobStartedEvent(
            type="job.started",
            job_id=str(job.pk),
            steps=job.total_steps,
            steps_done=job.steps_done,
            eta=running_eta(job, snapshot.speeds if snapshot else None),
        ),
    )


def _stored_image(job: Job, index: int, checked: CheckedImage) -> JobImage:
    """The image's files written to storage; its row is left to one insert for the job."""
    image = JobImage(
        job=job,
        owner_id=job.owner_id,
        index=index,
        seed=int(checked.result["seed"]),
        infotext=checked.result.get("infotext", ""),
        width=checked.width,
        height=checked.height,
    )
    image.file.save("image.png", ContentFile(checked.png), save=False)
    image.thumbnail.save("thumb.webp", ContentFile(checked.thumbnail), save=False)
    return image


def succeed_job(
    job: Job,
    attempt: int,
    worker_id: str,
    images: list[ResultImage],
    timings: dict[str, Any] | None = None,
    model: MergedModel | None = None,
) -> bool:
    """Record the images (or a merge's model file) of a finished job. A redelivered
    'succeeded' loses the claim and creates nothing; a broken image, or a failure while
    storing, leaves the job unclaimed (rolled back) so the message is retried; images that
    Redis lost raise LostResultImages (retrying cannot help: the caller fails the job)."""
    # Checking the images (and any thumbnail made here) holds no lock: done before the
    # transaction, which then only writes.
    checked = checked_images(str(job.pk), attempt, images)
    with transaction.atomic():
        if not job.mark_succeeded(attempt, worker_id, timings):
            return False
        _record_success(job, checked, model)
    forget_result_pngs(str(job.pk), attempt, images)
    _release_waiting_trainings(job)
    return True


def succeed_job_by_id(
    job_id: str,
    attempt: int,
    worker_id: str,
    images: list[ResultImage],
    timings: dict[str, Any] | None = None,
) -> bool | None:
    """`succeed_job` of an image job with the job read by its claim (one statement, not two);
    None when the claim did not match (an unknown job, another attempt, a redelivery, a
    merge): the caller reads the job and takes the general path."""
    checked = checked_images(job_id, attempt, images)
    with transaction.atomic():
        job = event_claims.claim_success(job_id, attempt, worker_id, timings or {})
        if job is None:
            return None
        _record_success(job, checked, None)
    forget_result_pngs(job_id, attempt, images)  # after the event went out (on commit)
    _release_waiting_trainings(job)
    return True


def _record_success(job: Job, checked: list[CheckedImage], model: MergedModel | None) -> None:
    """What a won success writes in its transaction: images, model file, the charge, the event."""
    saved = JobImage.objects.bulk_create(
        [_stored_image(job, index, image) for index, image in enumerate(checked)]
    )
    if model is not None:
        attach_merged_file(job, model)
    capture_hold(job)
    publish_job_event(
        job,
        JobSucceededEvent(
            type="job.succeeded",
            job_id=str(job.pk),
            images=[image_payload(i) for i in saved],
        ),
    )


def _release_waiting_trainings(job: Job) -> None:
    for training in class_images.waiting_trainings(job):
        problem = class_images.freeze_class_images(job, training)
        if problem:
            _call_off(training, problem)


def _call_off(training: Job, reason: str) -> None:
    """A training that waited for a job which did not give it class images: it never ran, so
    it is cancelled and all of its hold released."""
    if cancel_queued_job(training):
        Job.objects.filter(pk=training.pk).update(error=reason[:1000])


def _call_off_waiting(job: Job, how: str) -> None:
    for training in class_images.waiting_trainings(job):
        _call_off(training, f"its class-image job {how}")


def fail_job(
    job: Job, error: str, attempt: int | None = None, timings: dict[str, Any] | None = None
) -> bool:
    with transaction.atomic():
        if not job.mark_failed(error, attempt, timings):
            return False
        release_hold(job)
        drop_unfinished_merge(job)
        publish_job_event(
            job, JobFailedEvent(type="job.failed", job_id=str(job.pk), error=job.error)
        )
    _call_off_waiting(job, "failed")
    return True


def cancel_queued_job(job: Job) -> bool:
    """Cancel a job no worker holds: nothing ran, the whole hold goes back. Pinned to the
    attempt the caller saw, so a job handed out meanwhile is left to its worker's events."""
    with transaction.atomic():
        if not job.mark_cancelled(attempt=job.attempt, from_statuses=(Job.Status.QUEUED,)):
            return False
        release_hold(job)
        drop_unfinished_merge(job)
        publish_job_event(job, JobCancelledEvent(type="job.cancelled", job_id=str(job.pk)))
        waiting_set.leave_on_commit(job.pk)
    transaction.on_commit(publish_queue_positions)
    _call_off_waiting(job, "was cancelled")
    return True


def cancel_if_requested(job: Job) -> bool:
    """A job taken back from its worker (released, lost, worker dead) after its owner asked to
    cancel it: it ends here instead of going to another worker."""
    return job.cancel_requested_at is not None and cancel_queued_job(job)


def finish_cancelled_job(job: Job, attempt: int | None, steps_done: int | None = None) -> bool:
    with transaction.atomic():
        if not job.mark_cancelled(attempt=attempt, steps_done=steps_done):
            return False
        release_hold(job)  # pro-rata charging of steps_done comes with the credits issue
        drop_unfinished_merge(job)
        publish_job_event(job, JobCancelledEvent(type="job.cancelled", job_id=str(job.pk)))
    _call_off_waiting(job, "was cancelled")
    return True


def queued_event(job: Job, position: int, eta: float, source: EtaSource) -> JobQueuedEvent:
    return JobQueuedEvent(
        type="job.queued", job_id=str(job.pk), position=position, eta=eta, eta_source=source
    )


def publish_queue_positions() -> None:
    """Tell the owners of queued jobs their new place after the queue moved (a job started, was
    cancelled or taken back). Nothing to do when no job is queued. Otherwise the dispatcher
    does it from the snapshot it computes anyway (one Redis push); where none is alive (a test,
    a platform worker not started yet), from a snapshot made here."""
    if Job.objects.filter(status=Job.Status.QUEUED).exists():
        tell_queue_positions()


def tell_queue_positions() -> None:
    """`publish_queue_positions` once a job is known to be queued."""
    try:
        if ring([POSITIONS]):
            return
    except (redis.RedisError, OSError):
        logger.warning("queue positions asked of the dispatcher: Redis unreachable")
    publish_snapshot_positions(queue_snapshot())


def publish_snapshot_positions(snapshot: QueueSnapshot, skip: Collection[str] = ()) -> None:
    """Tell the owner of each job in the snapshot's window (but `skip`) its place: the cost does
    not grow with the queue; a job further back hears its place when it enters the window, and
    on each websocket connect."""
    ids = [job_id for job_id in snapshot.infos if job_id not in skip]
    if not ids:
        return
    owners = {
        str(pk): owner_id
        for pk, owner_id in Job.objects.filter(pk__in=ids).values_list("pk", "owner_id")
    }
    events: list[tuple[int | str, JobEvent]] = []
    for job_id in ids:
        owner_id = owners.get(job_id)
        if owner_id is None:
            continue
        info = snapshot.infos[job_id]
        queued = JobQueuedEvent(
            type="job.queued",
            job_id=job_id,
            position=info.position,
            eta=info.eta,
            eta_source=info.source,
        )
        events.append((owner_id, queued))
    send_to_users(events)
