"""A training job's signed addresses, as its worker message carries them (generation.training_epochs
answers them). Kept apart from the recording side so composing a job message imports no model
store or own-model code."""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.urls import reverse

from generation.models import Job
from gpu_worker.protocol import TrainingDelivery, TrainingImageDelivery

IMAGE_SALT = "atelier.training-image"
STATE_SALT = "atelier.training-state"
EPOCH_SALT = "atelier.training-epoch"
CHUNK_BYTES = 8 * 2**20


def _url(name: str, salt: str, value: str) -> str:
    token = signing.TimestampSigner(salt=salt).sign(value)
    path = reverse(name, kwargs={"token": token})
    return str(settings.MODEL_DELIVERY_BASE_URL).rstrip("/") + path


def training_delivery(job: Job) -> TrainingDelivery:
    """The `training` part of a job's message: dataset, epoch address, state to resume from."""
    last = job.training_epochs.order_by("-epoch").first()
    return TrainingDelivery(
        images=[
            TrainingImageDelivery(
                sha256=image["sha256"],
                url=_url("training-image", IMAGE_SALT, f"{job.pk}:{image['sha256']}"),
            )
            for image in job.params["train"]["images"]
        ],
        class_images=[
            TrainingImageDelivery(
                sha256=image["sha256"],
                url=_url("training-image", IMAGE_SALT, f"{job.pk}:{image['sha256']}"),
            )
            for image in job.params["train"].get("class_images") or []
        ],
        epoch_url=_url("training-epoch", EPOCH_SALT, f"{job.pk}:{job.attempt}"),
        resume_epoch=last.epoch if last else 0,
        resume_state_url=_url("training-state", STATE_SALT, str(last.pk)) if last else None,
        # Each chunk is one request: it must fit under the request-body limit.
        chunk_bytes=max(1 << 16, min(CHUNK_BYTES, settings.MAX_REQUEST_BODY_BYTES - (1 << 16))),
    )
