"""A training job's link with its worker: signed URLs out, finished epochs in.

The worker holds no credentials: it reads the dataset's images and the state to resume from,
and posts each finished epoch, through URLs signed with Django's TimestampSigner (salted per
use). An epoch URL is signed for one job *and attempt*: once the job is cancelled, finished or
handed to another worker, the old worker's posts are refused (409) and it stops.

Recording an epoch is the metering point: in one transaction the epoch's row is written (unique
per job and epoch) and its share of the hold charged (a ledger part keyed by job and epoch), so
a repeated post records and charges nothing twice. The last epoch's LoRA becomes the member's
private LoRA (model store, quota), usable at once as `<lora:name:1>`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.db import transaction
from django.urls import reverse

from accounts import ledger
from generation import model_store
from generation.models import CatalogEntry, Job, TrainingEpoch, TrainingImage
from generation.own_models import OwnModelError, add_own_model
from generation.pricing import epoch_price
from gpu_worker.model_files import UnreadableModel, inspect_file
from gpu_worker.protocol import TrainingDelivery, TrainingImageDelivery

logger = logging.getLogger(__name__)

IMAGE_SALT = "atelier.training-image"
STATE_SALT = "atelier.training-state"
EPOCH_SALT = "atelier.training-epoch"


class EpochRefused(Exception):
    """A post the platform does not take; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def _url(name: str, salt: str, value: str) -> str:
    token = signing.TimestampSigner(salt=salt).sign(value)
    path = reverse(name, kwargs={"token": token})
    return str(settings.MODEL_DELIVERY_BASE_URL).rstrip("/") + path


def unsign(token: str, salt: str, max_age: int) -> str:
    """The signed value, or EpochRefused(404) for a bad or expired token."""
    try:
        return signing.TimestampSigner(salt=salt).unsign(token, max_age=max_age)
    except signing.BadSignature:  # also SignatureExpired
        raise EpochRefused("no such address", 404) from None


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
        epoch_url=_url("training-epoch", EPOCH_SALT, f"{job.pk}:{job.attempt}"),
        resume_epoch=last.epoch if last else 0,
        resume_state_url=_url("training-state", STATE_SALT, str(last.pk)) if last else None,
    )


def image_for(token: str) -> TrainingImage:
    job_id, sha256 = unsign(token, IMAGE_SALT, settings.TRAINING_URL_SECONDS).split(":", 1)
    job = Job.objects.filter(pk=job_id, status__in=Job.UNFINISHED).first()
    if job is None:
        raise EpochRefused("no such image", 404)
    image = TrainingImage.objects.filter(
        dataset__owner_id=job.owner_id,
        dataset_id=job.params["train"]["dataset_id"],
        sha256=sha256,
    ).first()
    if image is None:
        raise EpochRefused("no such image", 404)
    return image


def state_for(token: str) -> TrainingEpoch:
    pk = unsign(token, STATE_SALT, settings.TRAINING_URL_SECONDS)
    epoch = TrainingEpoch.objects.filter(pk=pk).first()
    if epoch is None or not epoch.state:
        raise EpochRefused("no such state", 404)
    return epoch


@dataclass(frozen=True)
class EpochPost:
    epoch: int
    steps: int
    losses: list[float]
    lora: bytes
    state: bytes
    sample: bytes


def parse_post(fields: Any, files: Any) -> EpochPost:
    try:
        losses = [float(v) for v in json.loads(fields.get("losses") or "[]")]
        post = EpochPost(
            epoch=int(fields["epoch"]),
            steps=int(fields["steps"]),
            losses=losses,
            lora=files["lora"].read(),
            state=files["state"].read(),
            sample=files["sample"].read() if "sample" in files else b"",
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise EpochRefused(f"malformed epoch post: {exc}", 400) from None
    return post


def _mean(losses: list[float]) -> float | None:
    finite = [v for v in losses if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def record_epoch(token: str, post: EpochPost) -> TrainingEpoch:
    """Record one finished epoch and charge its share, once; EpochRefused for a stale attempt,
    an epoch out of order or a file that is not a LoRA."""
    job_id, attempt = unsign(token, EPOCH_SALT, settings.TRAINING_URL_SECONDS).rsplit(":", 1)
    try:
        inspect_file(io.BytesIO(post.lora), len(post.lora), "the epoch's LoRA")
    except UnreadableModel as exc:
        raise EpochRefused(str(exc), 400) from None
    with transaction.atomic():
        job = Job.objects.select_for_update(no_key=True).filter(pk=job_id).first()
        if job is None or job.mode != Job.Mode.TRAIN:
            raise EpochRefused("no such job", 404)
        done = job.training_epochs.filter(epoch=post.epoch).first()
        if done is not None:  # a repeated post (its answer was lost): nothing twice
            return done
        if str(job.attempt) != attempt or job.status not in Job.UNFINISHED:
            raise EpochRefused(f"this attempt no longer runs the job ({job.status})")
        last = job.training_epochs.count()
        epochs = int(job.params["train"]["epochs"])
        if post.epoch != last + 1 or post.epoch > epochs:
            raise EpochRefused(f"epoch {post.epoch} does not follow epoch {last} of {epochs}")
        share = epoch_price(job.params, job.checkpoint)
        row = TrainingEpoch(
            job=job,
            epoch=post.epoch,
            steps=post.steps,
            loss=_mean(post.losses),
            losses=post.losses,
            lora_sha256=_sha256(post.lora),
            lora_size_bytes=len(post.lora),
            worker_id=job.worker_id,
        )
        row.lora.save("lora.safetensors", ContentFile(post.lora), save=False)
        row.state.save("state.pt", ContentFile(post.state), save=False)
        if post.sample:
            row.sample.save("sample.png", ContentFile(post.sample), save=False)
        part = ledger.capture_part(
            job.pk,
            share,
            key=f"train:{job.pk}:epoch:{post.epoch}",
            reason=f"Training epoch {post.epoch} of {epochs}",
        )
        row.charged = -part.held_delta if part is not None else Decimal("0")
        row.save()
        Job.objects.filter(pk=job.pk).update(steps_done=post.steps)
    if post.epoch == epochs:
        add_trained_lora(job, row, post.lora)
    return row


def add_trained_lora(job: Job, epoch: TrainingEpoch, data: bytes) -> CatalogEntry | None:
    """The final LoRA as the member's own model; a full quota or a taken name is logged on the
    job (the epochs' files stay downloadable)."""
    name = job.params["train"]["output_name"]
    existing = CatalogEntry.objects.filter(owner_id=job.owner_id, kind="lora", name=name).first()
    if existing is not None and existing.sha256 == epoch.lora_sha256:
        return existing
    try:
        stored = model_store.store_stream([data], label=name)
        entry = add_own_model(job.owner, stored, name)
    except (OwnModelError, UnreadableModel) as exc:
        message = getattr(exc, "message", str(exc))
        note = f"the LoRA was not added to your models: {message}"
        Job.objects.filter(pk=job.pk).update(error=note)
        return None
    trigger = job.params["train"]["trigger_word"]
    if trigger:
        CatalogEntry.objects.filter(pk=entry.pk).update(trigger_words=trigger)
    return entry


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
