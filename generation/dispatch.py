"""Hand queued jobs to GPU workers: first in, first out through one Dramatiq queue.

Its own module so the scheduler issue can replace FIFO with fair, model-aware dispatch without
touching submission. The database stays the truth: `mark_dispatched` takes the next attempt
number with a conditional update, and the sweeper re-sends what Redis lost.
"""

from __future__ import annotations

import base64
import logging

import dramatiq
import redis
from django.db import transaction

from generation.broker import get_broker, get_redis
from generation.events import user_group
from generation.models import Job
from gpu_worker.protocol import (
    GENERATE_ACTOR,
    GENERATE_KWARG,
    GPU_QUEUE,
    GenerationRequest,
    HiresOptions,
)

logger = logging.getLogger(__name__)


def build_request(job: Job) -> GenerationRequest:
    p = job.params
    request = GenerationRequest(
        job_id=str(job.pk),
        attempt=job.attempt,
        events_group=user_group(job.owner_id),
        mode=job.mode,  # type: ignore[typeddict-item]
        checkpoint=job.checkpoint.name,
        vae=p.get("vae"),
        prompt=p["prompt"],
        negative_prompt=p["negative_prompt"],
        sampler=p["sampler"],
        scheduler=p["scheduler"],
        steps=p["steps"],
        cfg_scale=p["cfg_scale"],
        width=p["width"],
        height=p["height"],
        seed=p["seed"],
        batch_size=p["batch_size"],
        n_iter=p["n_iter"],
        clip_skip=p["clip_skip"],
        denoising_strength=p["denoising_strength"],
    )
    if job.mode == Job.Mode.IMG2IMG and job.init_image:
        with job.init_image.open("rb") as fh:
            request["init_image_png_b64"] = base64.b64encode(fh.read()).decode()
        request["resize_mode"] = p.get("resize_mode", 0)
    if p.get("hires"):
        request["hires"] = HiresOptions(**p["hires"])
    return request


MESSAGE_ID_KEY = "atelier:dispatch:{job_id}"  # broker id of the job's latest message
MESSAGE_ID_TTL_SECONDS = 7 * 24 * 3600


def send_request(job: Job) -> bool:
    """Enqueue the job's current attempt; False (job left for the sweeper) if Redis is down."""
    message = dramatiq.Message(
        queue_name=GPU_QUEUE,
        actor_name=GENERATE_ACTOR,
        args=(),
        kwargs={GENERATE_KWARG: build_request(job)},
        options={},
    )
    try:
        sent = get_broker().enqueue(message)
        # Delivery bookkeeping lives in Redis with the message: the sweeper checks that this id
        # is still in the queue (a flushed Redis loses both, which reads as "lost").
        get_redis().set(
            MESSAGE_ID_KEY.format(job_id=job.pk),
            sent.options.get("redis_message_id", ""),
            ex=MESSAGE_ID_TTL_SECONDS,
        )
    except (redis.RedisError, OSError):
        logger.warning(
            "Redis unreachable: job %s stays queued for the sweeper", job.pk, exc_info=True
        )
        job.clear_dispatch()
        return False
    return True


def dispatch_job(job: Job) -> bool:
    """Send `job` to the GPU queue as its next attempt (the sweeper's re-dispatch). False if
    another dispatcher won the attempt, the job is no longer queued, or Redis is down."""
    if not job.mark_dispatched():
        return False
    return send_request(job)


def dispatch_on_commit(job: Job) -> None:
    """Send a new job (attempt already taken with `prepare_first_dispatch`) once the
    transaction that created it commits: never before, or the worker would race the commit."""
    transaction.on_commit(lambda: send_request(job))
