"""What GPU workers report about jobs (gpu_worker.protocol.JobEvent), recorded in the database.

The actor `record_job_event` on PLATFORM_QUEUE is declared on a broker by
`register_platform_actors`, which the platform worker command (and the test fixture) call: building
the broker (`generation.broker`) registers nothing. Every branch claims its transition with a
conditional update first, so a redelivered or late event (a 'started' after a cancel, a second
'succeeded', an event from an older attempt) changes nothing. Each change that frees a worker slot
wakes the dispatcher for a scheduling pass.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq

from generation import lifecycle
from generation.merge_records import merged_file_problem
from generation.models import Job
from generation.result_images import LostResultImages
from generation.scheduling.dispatcher import wake_dispatcher
from gpu_worker.protocol import JOB_EVENT_ACTOR, PLATFORM_QUEUE, JobEvent

logger = logging.getLogger(__name__)

LOST_IMAGES = "the result images were lost on their way from the worker (Redis lost them)"


def handle_job_event(event: JobEvent) -> bool:
    """Apply one worker event; True if it changed the job."""
    claimed = _claim_by_id(event)
    if claimed is not None:
        return claimed
    job = Job.objects.with_awaited().filter(pk=event["job_id"]).first()
    if job is None:
        logger.info("event %s for unknown job %s ignored", event["kind"], event["job_id"])
        return False
    attempt = int(event["attempt"])
    if attempt != job.attempt:
        logger.info(
            "event %s of attempt %s ignored: job %s is on attempt %s",
            event["kind"],
            attempt,
            job.pk,
            job.attempt,
        )
        return False
    kind = event["kind"]
    worker_id = event.get("worker_id", "")
    timings: dict[str, Any] = dict(event.get("timings") or {})
    if kind == "started":
        return lifecycle.start_job(job, worker_id, attempt)
    if kind == "succeeded" and job.mode == Job.Mode.MERGE:  # a model file, not images
        model = event.get("model")
        if problem := merged_file_problem(job, model):
            return lifecycle.fail_job(job, problem, attempt, timings)
        return lifecycle.succeed_job(job, attempt, worker_id, [], timings, model=model)
    if kind == "succeeded":
        images = event.get("images") or []
        try:
            return lifecycle.succeed_job(job, attempt, worker_id, images, timings)
        except LostResultImages:  # (a redelivery after the images were stored: a no-op)
            return lifecycle.fail_job(job, LOST_IMAGES, attempt, timings)
    if kind == "failed":
        return lifecycle.fail_job(job, event.get("error") or "the worker failed", attempt, timings)
    if kind == "cancelled":
        return lifecycle.finish_cancelled_job(job, attempt, event.get("steps_done"))
    if kind == "released":  # given back unstarted by a draining worker: for another one
        # A training job is also given back running, between epochs: the next worker resumes.
        handed_over = (Job.Status.QUEUED, Job.Status.RUNNING)
        statuses = handed_over if job.mode == Job.Mode.TRAIN else (Job.Status.QUEUED,)
        if not job.return_to_queue(from_statuses=statuses, attempt=attempt):
            return False
        lifecycle.cancel_if_requested(job)
        return True
    logger.warning("unknown job event kind %r ignored", kind)
    return False


def _claim_by_id(event: JobEvent) -> bool | None:
    """Every job's 'started' and 'succeeded' (not a merge's: its file is checked first), claimed
    with the job read in the same statement; None when that did not match: the caller reads
    the job and decides, as for any other event."""
    kind, attempt = event["kind"], int(event["attempt"])
    worker_id = event.get("worker_id", "")
    if kind == "started":
        return lifecycle.start_job_by_id(event["job_id"], worker_id, attempt)
    if kind == "succeeded" and event.get("model") is None:
        images = event.get("images") or []
        timings = dict(event.get("timings") or {})
        try:
            return lifecycle.succeed_job_by_id(event["job_id"], attempt, worker_id, images, timings)
        except LostResultImages:
            return None  # the general path reads the job and fails it
    return None


def record_job_event(event: JobEvent) -> None:
    if handle_job_event(event) and event["kind"] != "started":
        wake_dispatcher()  # a slot came free, or a job came back: hand out the next one


def register_platform_actors(broker: dramatiq.Broker) -> dramatiq.Actor:
    """Declare the platform queue's actor on `broker` (by the process that consumes it)."""
    return dramatiq.Actor(
        record_job_event,
        broker=broker,
        actor_name=JOB_EVENT_ACTOR,
        queue_name=PLATFORM_QUEUE,
        priority=0,
        # A storage hiccup while saving images rolls back and retries; a few times is plenty.
        options={
            "max_retries": 5,
            "min_backoff": 500,
            "max_backoff": 10_000,
            "time_limit": 120_000,
        },
    )
