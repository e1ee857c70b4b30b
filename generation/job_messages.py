"""Build and send a job's message: the request for one assigned job, on its worker's own queue.

Which worker gets which job is decided by the scheduling pass
(`generation.scheduling.dispatcher.schedule_pending`), which claims the job with
`Job.mark_assigned` and calls `send_request` after commit. The database stays the truth: the
sweeper takes back what Redis lost or what a dead worker held (`Job.return_to_queue`).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import dramatiq
import redis

from generation.broker import get_broker, get_redis
from generation.control_images import read_control_image
from generation.events import user_group
from generation.model_delivery import deliveries_for, signed_upload_url, upload_chunk_bytes
from generation.models import Job
from generation.stored_models import StoredModels
from generation.training_links import training_delivery
from gpu_worker.params import GenerationParams
from gpu_worker.protocol import (
    GENERATE_ACTOR,
    GENERATE_KWARG,
    GenerationRequest,
    worker_queue,
)

logger = logging.getLogger(__name__)


def build_request(job: Job, stored: StoredModels | None = None) -> GenerationRequest:
    """The job's stored GenerationParams in its envelope (and the img2img source image, its
    inpaint mask and the ControlNet units' images). `stored`: the stored models already read
    for its owner and recipes, if any (`model_delivery.deliveries_for`)."""
    params: GenerationParams = job.params
    request = GenerationRequest(
        **params,
        job_id=str(job.pk),
        attempt=job.attempt,
        events_group=user_group(job.owner_id),
    )
    # Result PNGs come back as bytes in Redis, not as base64 in the event (result_store).
    request["result_pngs_in_redis"] = True
    if job.mode == Job.Mode.MERGE:  # the merged file comes back to the model store
        request["upload_url"] = signed_upload_url(job)
        request["upload_chunk_bytes"] = upload_chunk_bytes()
    models = deliveries_for(job, stored)
    if models:
        request["models"] = models
    if job.mode == Job.Mode.TRAIN:  # dataset, epoch address, and the state to resume from
        request["training"] = training_delivery(job)
    # img2img's source, or the image an extras job upscales
    if job.mode in (Job.Mode.IMG2IMG, Job.Mode.EXTRAS) and job.init_image:
        with job.init_image.open("rb") as fh:
            request["init_image_png_b64"] = base64.b64encode(fh.read()).decode()
    if job.mode == Job.Mode.IMG2IMG and job.mask_image:
        with job.mask_image.open("rb") as fh:
            request["mask_png_b64"] = base64.b64encode(fh.read()).decode()
    shas = {u["image_sha256"] for u in params.get("controlnet") or () if u["image_sha256"]}
    if shas:
        request["controlnet_images_png_b64"] = {
            sha: base64.b64encode(read_control_image(sha)).decode() for sha in sorted(shas)
        }
    return request


MESSAGE_ID_KEY = "atelier:dispatch:{job_id}"  # broker id of the job's latest message
MESSAGE_ID_TTL_SECONDS = 7 * 24 * 3600


def send_request(job: Job, stored: StoredModels | None = None) -> bool:
    """Enqueue the job's current attempt on its worker's queue. If Redis is down the job goes
    back to the waiting queue (False), to be assigned again once Redis answers."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=worker_queue(job.worker_id),
        actor_name=GENERATE_ACTOR,
        args=(),
        kwargs={GENERATE_KWARG: build_request(job, stored)},
        options={},
    )
    try:
        sent = get_broker().enqueue(message)
        # Delivery bookkeeping lives in Redis with the message: the sweeper checks that this id
        # is still in the worker's queue (a flushed Redis loses both, which reads as "lost").
        get_redis().set(
            MESSAGE_ID_KEY.format(job_id=job.pk),
            sent.options.get("redis_message_id", ""),
            ex=MESSAGE_ID_TTL_SECONDS,
        )
    except (redis.RedisError, OSError):
        logger.warning("Redis unreachable: job %s goes back to the queue", job.pk, exc_info=True)
        job.return_to_queue()
        return False
    return True
