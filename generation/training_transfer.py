"""The addresses a training job's worker uses (signed, no session): its dataset's images, the
state it resumes from, and where it posts each finished epoch (generation.training_epochs)."""

from __future__ import annotations

from typing import Any

from django.http import FileResponse, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from generation.training_epochs import (
    EpochRefused,
    image_for,
    parse_post,
    record_epoch,
    stage_chunk,
    state_for,
)


def _refused(exc: EpochRefused) -> JsonResponse:
    return JsonResponse({"detail": exc.message}, status=exc.status)


def _unstored(stored: Any, content_type: str) -> FileResponse:
    """A file for one worker's signed request: never kept by a cache on the way."""
    response = FileResponse(stored.open("rb"), content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def training_image(request: HttpRequest, token: str) -> FileResponse | JsonResponse:
    try:
        image = image_for(token)
    except EpochRefused as exc:
        return _refused(exc)
    return _unstored(image.file, "image/png")


@require_GET
def training_state(request: HttpRequest, token: str) -> FileResponse | JsonResponse:
    try:
        epoch = state_for(token)
    except EpochRefused as exc:
        return _refused(exc)
    return _unstored(epoch.state, "application/octet-stream")


@csrf_exempt  # a worker's post: the signed address is its whole permission
@require_POST
def training_epoch(request: HttpRequest, token: str) -> JsonResponse:
    """`?part=lora|state&epoch=N&offset=K` with the raw bytes: one chunk of a part; without
    `part`, a multipart commit (numbers, the parts' sha256s, the sample image) records it."""
    try:
        if part := request.GET.get("part"):
            query = request.GET
            size = stage_chunk(token, part, query.get("epoch"), query.get("offset"), request.body)
            return JsonResponse({"size": size})
        row = record_epoch(token, parse_post(request.POST, request.FILES))
    except EpochRefused as exc:
        return _refused(exc)
    return JsonResponse({"epoch": row.epoch, "charged": str(row.charged)}, status=201)
