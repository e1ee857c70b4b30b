"""/progress, /interrupt and /skip: always the caller's own job, never whoever runs now.

The job reported is the caller's current one: their oldest running job, else their oldest queued
one (or the one named by `id_task`, their force_task_id). Queued: progress 0, "In queue: i/N" and
the queue's ETA. Running: A1111's formula over the latest step the GPU worker stored in Redis
(`PROGRESS_KEY`), with its live preview unless skip_current_image.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from django.db.models import Case, IntegerField, Value, When
from django.utils import timezone
from django.utils.translation import gettext as _

from generation.a1111.errors import A1111Error
from generation.a1111.responses import job_timestamp
from generation.broker import get_redis
from generation.models import Job
from generation.queue import queue_info
from generation.submission import SubmissionError, cancel_job
from gpu_worker.protocol import CANCEL_KEY, CANCEL_TTL_SECONDS, PROGRESS_KEY, ProgressEvent

logger = logging.getLogger(__name__)


def _idle_state() -> dict[str, Any]:
    return {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }


IDLE = {"progress": 0, "eta_relative": 0, "current_image": None, "textinfo": None}


def current_job(user: Any, task_id: str | None = None) -> Job | None:
    jobs = Job.objects.owned_by(user).unfinished()
    if task_id:
        return jobs.filter(idempotency_key=task_id).first()
    running_first = Case(
        When(status=Job.Status.RUNNING, then=Value(0)),
        default=Value(1),
        output_field=IntegerField(),
    )
    return jobs.order_by(running_first, "created_at", "pk").first()


def _redis_values(job: Job) -> tuple[ProgressEvent | None, str | None]:
    try:
        live, flag = get_redis().mget(
            [PROGRESS_KEY.format(job_id=job.pk), CANCEL_KEY.format(job_id=job.pk)]
        )
    except (redis.RedisError, OSError):
        logger.warning("progress of job %s unreadable: Redis away", job.pk, exc_info=True)
        return None, None
    event = json.loads(live) if live else None
    return event, flag.decode() if isinstance(flag, bytes) else flag


def _state(job: Job, step: int, steps: int, flag: str | None) -> dict[str, Any]:
    """A1111's state: job_no is the batch (n_iter) being sampled, steps count within it."""
    count = max(1, int(job.params.get("n_iter", 1)))
    per_batch = max(1, steps // count)
    job_no = min(step // per_batch, count - 1)
    return {
        **_idle_state(),
        "skipped": flag == "skip",
        "interrupted": flag == "interrupt" or job.cancel_requested_at is not None,
        "job": f"scripts_{job.mode}",
        "job_count": count,
        "job_timestamp": job_timestamp(job),
        "job_no": job_no,
        "sampling_step": step - job_no * per_batch,
        "sampling_steps": per_batch,
    }


def _queued(job: Job) -> dict[str, Any] | None:
    """None when the job left the queue meanwhile (see its new status)."""
    info = queue_info(job)
    if info is None:
        job.refresh_from_db()
        if job.status != Job.Status.QUEUED:
            return None
    waiting = Job.objects.queued().count()
    if info is not None:
        position, eta = info.position, info.eta
    else:  # beyond the simulated part of a very long queue: its place, no estimate
        position = Job.objects.queued().filter(created_at__lt=job.created_at).count() + 1
        eta = 0.0
    return {
        **IDLE,
        "eta_relative": eta,
        "state": _state(job, 0, int(job.params.get("steps", 0)), None),
        "textinfo": _("In queue: %(position)s/%(total)s")
        % {"position": position, "total": max(waiting, position)},
    }


def _running(job: Job, skip_current_image: bool) -> dict[str, Any]:
    live, flag = _redis_values(job)
    step = int(live["step"]) if live else 0
    steps = int(live["steps"]) if live else max(1, job.total_steps)
    # A1111: 0.01 + job_no/job_count + (1/job_count) * sampling_step/sampling_steps
    progress = min(1.0, 0.01 + step / max(1, steps))
    elapsed = (timezone.now() - job.started_at).total_seconds() if job.started_at else 0.0
    eta = elapsed / progress
    preview = live.get("preview") if live and not skip_current_image else None
    return {
        "progress": round(progress, 4),
        "eta_relative": round(max(0.0, eta - elapsed), 2),
        "state": _state(job, step, steps, flag),
        "current_image": preview.split(",", 1)[-1] if preview else None,  # bare base64
        "textinfo": None,
    }


def progress_for(user: Any, skip_current_image: bool, task_id: str | None = None) -> dict[str, Any]:
    job = current_job(user, task_id)
    if job is not None and job.status == Job.Status.QUEUED:
        answer = _queued(job)
        if answer is not None:
            return answer
    if job is not None and job.status == Job.Status.RUNNING:
        return _running(job, skip_current_image)
    return {**IDLE, "state": _idle_state()}


def running_job(user: Any) -> Job | None:
    return Job.objects.owned_by(user).running().order_by("started_at", "pk").first()


def interrupt(user: Any) -> None:
    """Stop the caller's running job, as Stop on the page does (same credit settlement)."""
    job = running_job(user)
    if job is None:
        return
    try:
        cancel_job(user, job)
    except SubmissionError as exc:
        if exc.status != 409:  # 409: it finished meanwhile, nothing left to stop
            raise A1111Error.from_submission(exc) from None


def skip(user: Any) -> None:
    """Drop the batch being sampled of the caller's running job; the next batch goes on."""
    job = running_job(user)
    if job is None:
        return
    try:
        # nx: a pending interrupt must not be turned into a mere skip
        get_redis().set(CANCEL_KEY.format(job_id=job.pk), "skip", ex=CANCEL_TTL_SECONDS, nx=True)
    except (redis.RedisError, OSError):
        raise A1111Error(503, _("the job queue is unreachable right now; try again")) from None
