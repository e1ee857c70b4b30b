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
import json
import logging
import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile, File
from django.db import transaction

from accounts import ledger
from generation import model_store
from generation.model_store import incoming_dir
from generation.models import CatalogEntry, Job, TrainingEpoch, TrainingImage
from generation.own_models import OwnModelError, add_own_model
from generation.pricing import epoch_price
from generation.training_history import trained_kind
from generation.training_links import EPOCH_SALT, IMAGE_SALT, STATE_SALT
from gpu_worker.model_files import UnreadableModel, inspect_file

logger = logging.getLogger(__name__)

PARTS = ("lora", "state")  # staged in chunks; the sample and the numbers come with the commit
MAX_STAGED_BYTES = 8 * 2**30  # per part: far above any LoRA's state, far below a full disk


class EpochRefused(Exception):
    """A post the platform does not take; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def unsign(token: str, salt: str, max_age: int) -> str:
    """The signed value, or EpochRefused(404) for a bad or expired token."""
    try:
        return signing.TimestampSigner(salt=salt).unsign(token, max_age=max_age)
    except signing.BadSignature:  # also SignatureExpired
        raise EpochRefused("no such address", 404) from None


def image_for(token: str) -> TrainingImage:
    job_id, sha256 = unsign(token, IMAGE_SALT, settings.TRAINING_URL_SECONDS).split(":", 1)
    job = Job.objects.filter(pk=job_id, status__in=Job.UNFINISHED).first()
    if job is None:
        raise EpochRefused("no such image", 404)
    train = job.params["train"]
    datasets = [train["dataset_id"], train.get("class_dataset_id")]  # instance, class images
    image = TrainingImage.objects.filter(
        dataset__owner_id=job.owner_id,
        dataset_id__in=[pk for pk in datasets if pk is not None],
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
    prior_losses: list[float]  # on class images (prior preservation), one per step
    sha256: dict[str, str]  # of each staged part
    sample: bytes


def parse_post(fields: Any, files: Any) -> EpochPost:
    try:
        losses = [float(v) for v in json.loads(fields.get("losses") or "[]")]
        prior = [float(v) for v in json.loads(fields.get("prior_losses") or "[]")]
        post = EpochPost(
            prior_losses=prior,
            epoch=int(fields["epoch"]),
            steps=int(fields["steps"]),
            losses=losses,
            sha256={part: str(fields[f"{part}_sha256"]) for part in PARTS},
            sample=files["sample"].read() if "sample" in files else b"",
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise EpochRefused(f"malformed epoch post: {exc}", 400) from None
    return post


def _attempt_of(token: str) -> tuple[str, str]:
    job_id, attempt = unsign(token, EPOCH_SALT, settings.TRAINING_URL_SECONDS).rsplit(":", 1)
    return job_id, attempt


def _staged(job_id: str, attempt: str, epoch: int, part: str) -> Path:
    folder = incoming_dir() / "training"
    folder.mkdir(exist_ok=True)
    return folder / f"{job_id}-{attempt}-{epoch}-{part}.part"


def stage_chunk(token: str, part: str, epoch: Any, offset: Any, data: bytes) -> int:
    """Write one chunk of an epoch's LoRA or state at `offset` (a resent chunk overwrites its
    place); the part's size so far. Only the attempt running the job may stage."""
    job_id, attempt = _attempt_of(token)
    try:
        epoch, offset = int(epoch), int(offset)
    except (TypeError, ValueError):
        raise EpochRefused("epoch and offset must be integers", 400) from None
    if part not in PARTS or epoch < 1 or offset < 0:
        raise EpochRefused(f"part must be one of {', '.join(PARTS)}", 400)
    job = Job.objects.filter(pk=job_id, mode=Job.Mode.TRAIN).first()
    if job is None:
        raise EpochRefused("no such job", 404)
    if str(job.attempt) != attempt or job.status not in Job.UNFINISHED:
        raise EpochRefused(f"this attempt no longer runs the job ({job.status})")
    path = _staged(job_id, attempt, epoch, part)
    size = path.stat().st_size if path.exists() else 0
    if offset > size:
        raise EpochRefused(f"a chunk at {offset} but {size} bytes staged", 400)
    if offset + len(data) > MAX_STAGED_BYTES:
        raise EpochRefused(f"{part} is larger than {MAX_STAGED_BYTES} bytes", 413)
    with open(path, "r+b" if path.exists() else "wb") as fh:
        fh.truncate(offset)
        fh.seek(offset)
        fh.write(data)
    return offset + len(data)


def _drop(paths: Any) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _checked_part(job_id: str, attempt: str, epoch: int, part: str, sha256: str) -> Path:
    path = _staged(job_id, attempt, epoch, part)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except FileNotFoundError:
        raise EpochRefused(f"the epoch's {part} was not sent", 400) from None
    if digest.hexdigest() != sha256:
        raise EpochRefused(f"the epoch's {part} does not match its sha256", 400)
    return path


def _mean(losses: list[float]) -> float | None:
    finite = [v for v in losses if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def record_epoch(token: str, post: EpochPost) -> TrainingEpoch:
    """Record one finished epoch (its staged parts checked against their hashes) and charge its
    share, once; EpochRefused for a stale attempt, an epoch out of order or a LoRA file that is
    not one."""
    job_id, attempt = _attempt_of(token)
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
        parts = {
            part: _checked_part(job_id, attempt, post.epoch, part, post.sha256[part])
            for part in PARTS
        }
        lora_size = parts["lora"].stat().st_size
        with open(parts["lora"], "rb") as fh:
            try:
                inspect_file(fh, lora_size, "the epoch's LoRA")
            except UnreadableModel as exc:
                raise EpochRefused(str(exc), 400) from None
        row = TrainingEpoch(
            job=job,
            epoch=post.epoch,
            steps=post.steps,
            loss=_mean(post.losses),
            losses=post.losses,
            prior_loss=_mean(post.prior_losses),
            prior_losses=post.prior_losses,
            lora_sha256=post.sha256["lora"],
            lora_size_bytes=lora_size,
            worker_id=job.worker_id,
        )
        with open(parts["lora"], "rb") as lora, open(parts["state"], "rb") as state:
            row.lora.save("lora.safetensors", File(lora), save=False)  # streamed, not read
            row.state.save("state.pt", File(state), save=False)
        if post.sample:
            row.sample.save("sample.png", ContentFile(post.sample), save=False)
        share = epoch_price(job.params, job.checkpoint)
        part = ledger.capture_part(
            job.pk,
            share,
            key=f"train:{job.pk}:epoch:{post.epoch}",
            reason=f"Training epoch {post.epoch} of {epochs}",
        )
        row.charged = -part.held_delta if part is not None else Decimal("0")
        row.save()
        Job.objects.filter(pk=job.pk).update(steps_done=post.steps)
        transaction.on_commit(lambda: _drop(parts.values()))
    if post.epoch == epochs:
        with row.lora.open("rb") as fh:
            add_trained_lora(job, row, fh.read())
    return row


def add_trained_lora(job: Job, epoch: TrainingEpoch, data: bytes) -> CatalogEntry | None:
    """The final LoRA (or embedding) as the member's own model; a full quota or a taken name is
    logged on the job (the epochs' files stay downloadable)."""
    name = job.params["train"]["output_name"]
    kind = trained_kind(job.params["train"])
    existing = CatalogEntry.objects.filter(owner_id=job.owner_id, kind=kind, name=name).first()
    if existing is not None and existing.sha256 == epoch.lora_sha256:
        return existing
    try:
        stored = model_store.store_stream([data], label=name)
        entry = add_own_model(job.owner, stored, name)
    except (OwnModelError, UnreadableModel) as exc:
        message = getattr(exc, "message", str(exc))
        note = f"the {kind} was not added to your models: {message}"
        Job.objects.filter(pk=job.pk).update(error=note)
        return None
    trigger = job.params["train"]["trigger_word"]
    if trigger and kind == CatalogEntry.Kind.LORA:  # an embedding's trigger is its name
        CatalogEntry.objects.filter(pk=entry.pk).update(trigger_words=trigger)
    return entry


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
