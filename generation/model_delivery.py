"""Members' models on their way to GPU workers: signed URLs in, file out, eviction after delete.

A job that names a member's upload carries, for each such model, its sha256 and a URL signed
with Django's TimestampSigner (salted for this use, valid MODEL_DELIVERY_URL_SECONDS). The
delivery view answers only to a valid, unexpired signature: there is no other way to read the
store. Workers hold no credentials and no database; the signature is the whole permission.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from django.conf import settings
from django.core import signing
from django.http import FileResponse, Http404, HttpRequest
from django.urls import reverse
from django.views.decorators.http import require_GET

from generation import model_store
from generation.broker import get_redis
from generation.fleet import present_heartbeats
from generation.models import Job, ModelFile
from generation.stored_models import StoredModel, StoredModels
from gpu_worker.protocol import WORKER_COMMANDS_KEY, ModelDelivery, WorkerCommand

logger = logging.getLogger(__name__)

SALT = "atelier.model-delivery"
COMMAND_TTL_SECONDS = 3600


def signed_url(sha256: str) -> str:
    token = signing.TimestampSigner(salt=SALT).sign(sha256)
    path = reverse("model-delivery", kwargs={"token": token})
    return str(settings.MODEL_DELIVERY_BASE_URL).rstrip("/") + path


@require_GET
def deliver(request: HttpRequest, token: str) -> FileResponse:
    """The stored bytes for a worker holding a valid signed URL; 404 for anything else."""
    try:
        sha256 = signing.TimestampSigner(salt=SALT).unsign(
            token, max_age=settings.MODEL_DELIVERY_URL_SECONDS
        )
    except signing.BadSignature as exc:  # also SignatureExpired
        raise Http404("no such model") from exc
    if not ModelFile.objects.filter(sha256=sha256).exists():
        raise Http404("no such model")
    try:
        # FileResponse streams the file in blocks and closes it when done.
        stream = model_store.path_for(sha256).open("rb")
    except FileNotFoundError as exc:
        raise Http404("no such model") from exc
    response = FileResponse(stream, content_type="application/octet-stream")
    response["Cache-Control"] = "no-store"
    return response


def _delivery(model: StoredModel) -> ModelDelivery:
    return ModelDelivery(
        kind=model.kind,  # type: ignore[typeddict-item]
        name=model.name,
        sha256=model.sha256,
        size_bytes=model.size_bytes,
        url=signed_url(model.sha256),
    )


def stored_models_of(job: Job, stored: StoredModels | None = None) -> list[StoredModel]:
    """The job's models that live in the store (members' and staff uploads)."""
    params: dict[str, Any] = job.params
    stored = stored or StoredModels([job.owner_id])
    wanted = [StoredModel.of(job.checkpoint)] if job.checkpoint.stored_file_id else []
    names = [("lora", n) for n in params.get("loras") or []]
    names += [("vae", params["vae"])] if params.get("vae") else []
    wanted += [m for kind, n in names if (m := stored.find(job.owner_id, kind, n)) is not None]
    text = f"{params.get('prompt', '')}\n{params.get('negative_prompt', '')}"
    return wanted + stored.embeddings_in(job.owner_id, text)


def deliveries_for(job: Job) -> list[ModelDelivery]:
    """The job's stored models with fresh signed URLs."""
    return [_delivery(model) for model in stored_models_of(job)]


def evict_everywhere(sha256: str) -> None:
    """Ask every present worker to drop a deleted upload from disk and memory."""
    command = WorkerCommand(action="evict", sha256=sha256)
    try:
        client = get_redis()
        for worker_id in present_heartbeats(client):
            key = WORKER_COMMANDS_KEY.format(worker_id=worker_id)
            client.rpush(key, json.dumps(command))
            client.expire(key, COMMAND_TTL_SECONDS)
    except (redis.RedisError, OSError):
        # The file is gone from the store: a worker that kept it can no longer be sent it, and
        # its LRU cache lets it go in time.
        logger.warning("Redis unreachable: eviction of %s not sent", sha256[:10], exc_info=True)
