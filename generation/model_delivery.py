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
from generation.stored_models import StoredModel, StoredModels, virtual_recipe
from gpu_worker.params import MergeParams
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


def recipes_of(job: Job) -> list[MergeParams]:
    """The merge recipes whose stored inputs the job's worker reads: a merge job's, and its
    checkpoint's if that is a virtual model."""
    if job.mode == Job.Mode.MERGE:
        return [job.params["merge"]]
    recipe = virtual_recipe(job.checkpoint)
    return [recipe.params] if recipe is not None else []


def stored_models_of(job: Job, stored: StoredModels | None = None) -> list[StoredModel]:
    """The job's models that live in the store (members' and staff uploads): for a merge, its
    inputs that are uploads; for a virtual checkpoint, its recipe's inputs that are uploads
    (the worker computes the model from them)."""
    params: dict[str, Any] = job.params
    stored = stored or StoredModels([job.owner_id], recipes_of(job))
    if job.mode == Job.Mode.MERGE:
        return stored.inputs_of(params["merge"])
    recipe = virtual_recipe(job.checkpoint)
    wanted = [StoredModel.of(job.checkpoint)] if job.checkpoint.stored_file_id else []
    if recipe is not None:
        wanted += stored.inputs_of(recipe.params, part_of=recipe.recipe_hash)
    names = [("lora", n) for n in params.get("loras") or []]
    names += [("vae", params["vae"])] if params.get("vae") else []
    wanted += [m for kind, n in names if (m := stored.find(job.owner_id, kind, n)) is not None]
    text = f"{params.get('prompt', '')}\n{params.get('negative_prompt', '')}"
    return wanted + stored.embeddings_in(job.owner_id, text)


def deliveries_for(job: Job, stored: StoredModels | None = None) -> list[ModelDelivery]:
    """The job's stored models with fresh signed URLs; a virtual checkpoint as its recipe under
    the recipe hash (the worker computes it after fetching the inputs delivered beside it).
    `stored`: models already read for the job's owner and recipes (a scheduling pass's)."""
    found = [_delivery(model) for model in stored_models_of(job, stored)]
    recipe = virtual_recipe(job.checkpoint) if job.mode != Job.Mode.MERGE else None
    if recipe is None:
        return found
    virtual = ModelDelivery(
        kind="checkpoint",
        name=job.checkpoint.name,
        sha256=recipe.recipe_hash,
        size_bytes=job.checkpoint.size_bytes,
        url="",
        recipe=recipe.params,
    )
    return [*found, virtual]


UPLOAD_SALT = "atelier.merge-upload"
UPLOAD_URL_SECONDS = 24 * 3600  # the worker's time limit is 2 h; a queue wait comes before


def signed_upload_url(job: Job) -> str:
    """Where a merge job's worker sends the file: this job's attempt only."""
    token = signing.TimestampSigner(salt=UPLOAD_SALT).sign(f"{job.pk}:{job.attempt}")
    path = reverse("merge-upload", kwargs={"token": token})
    return str(settings.MODEL_DELIVERY_BASE_URL).rstrip("/") + path


def job_of_upload(token: str) -> tuple[str, int] | None:
    """(job id, attempt) a valid upload token names, else None."""
    try:
        value = signing.TimestampSigner(salt=UPLOAD_SALT).unsign(token, max_age=UPLOAD_URL_SECONDS)
    except signing.BadSignature:
        return None
    job_id, _, attempt = value.partition(":")
    return (job_id, int(attempt)) if attempt.isdigit() else None


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


UPLOAD_CHUNK_BYTES = 8 << 20


def upload_chunk_bytes() -> int:
    """Each chunk is one request: it must fit under the request-body limit."""
    return max(64 << 10, min(UPLOAD_CHUNK_BYTES, settings.MAX_REQUEST_BODY_BYTES - (64 << 10)))
