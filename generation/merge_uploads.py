"""Receiving a merged model from the worker that made it (gpu_worker/result_upload.py).

`PUT /model-store/merged/<token>`: the token is signed for one job's attempt
(`model_delivery.signed_upload_url`). Chunks are appended to a part file beside the store, only
at the offset the platform holds (409 with that offset otherwise, so a worker resumes); after
the last byte the file is hashed while the store adopts it and its header is checked
(`model_store.store_file`: tensors are never loaded). A file whose sha256 is not the one the
worker announced is refused and dropped. The job's 'succeeded' event then makes it the member's
model (`merge_records`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from generation import model_store
from generation.model_delivery import job_of_upload
from generation.models import CatalogEntry, Job
from generation.own_models import record_file
from gpu_worker.model_files import UnreadableModel

logger = logging.getLogger(__name__)


def _answer(status: int, offset: int, detail: str = "") -> HttpResponse:
    response = JsonResponse({"offset": offset, "detail": detail}, status=status)
    response["Upload-Offset"] = str(offset)
    return response


def _header_int(request: HttpRequest, name: str) -> int | None:
    value = request.headers.get(name, "")
    return int(value) if value.isdigit() else None


@csrf_exempt
@require_http_methods(["PUT"])
def receive_merged(request: HttpRequest, token: str) -> HttpResponse:
    named = job_of_upload(token)
    job = Job.objects.filter(pk=named[0]).first() if named else None
    if named is None or job is None or job.attempt != named[1] or job.is_finished:
        return JsonResponse({"detail": "no such upload"}, status=404)
    offset, length = _header_int(request, "Upload-Offset"), _header_int(request, "Upload-Length")
    sha256 = request.headers.get("Upload-Sha256", "")
    if offset is None or length is None or len(sha256) != model_store.SHA256_LENGTH:
        return JsonResponse(
            {"detail": "Upload-Offset, Upload-Length and Upload-Sha256 are required"}, status=400
        )
    if length > settings.MODEL_UPLOAD_MAX_MB * 2**20:
        return JsonResponse({"detail": "the merged model is over the upload limit"}, status=413)
    part = model_store.incoming_dir() / f"merge-{job.pk}-{job.attempt}.part"
    held = part.stat().st_size if part.exists() else 0
    if held == 0:  # an earlier attempt's worker died mid-upload: its bytes are of no use
        for stale in model_store.incoming_dir().glob(f"merge-{job.pk}-*.part"):
            if stale != part:
                stale.unlink(missing_ok=True)
    if offset != held:
        return _answer(409, held, "resume from the platform's offset")
    body = request.body
    if held + len(body) > length:
        return _answer(409, held, "more bytes than Upload-Length")
    with part.open("ab") as fh:
        fh.write(body)
    held += len(body)
    if held < length:
        return _answer(204, held)
    return _keep(part, sha256, held)


def _keep(part: Path, sha256: str, size: int) -> HttpResponse:
    try:
        stored = model_store.store_file(part, label="merged model")  # removes the part file
    except UnreadableModel as exc:
        return _answer(422, 0, str(exc))
    if stored.sha256 != sha256:
        if not CatalogEntry.objects.filter(stored_file__sha256=stored.sha256).exists():
            model_store.delete_bytes(stored.sha256)
        logger.warning("merged model refused: sha256 %s, announced %s", stored.sha256, sha256)
        return _answer(422, 0, "the file's sha256 is not the one announced")
    record_file(stored)
    return _answer(201, size)
