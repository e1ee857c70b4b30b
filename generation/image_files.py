"""Image files, streamed from Django's storage to their owner (or staff); everyone else gets 404.

The media folder itself is never served publicly in production: these views are the only way in.
"""

from __future__ import annotations

import mimetypes

from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404, HttpRequest
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from generation.control_images import control_image_path
from generation.models import CatalogEntry, Job, JobImage


def _image(request: HttpRequest, pk: object) -> JobImage:
    return get_object_or_404(JobImage.objects.visible_to(request.user), pk=pk)


def _stream(field: FieldFile, filename: str, content_type: str) -> FileResponse:
    if not field.name:
        raise Http404
    try:
        handle = field.storage.open(field.name, "rb")
    except (FileNotFoundError, OSError):
        raise Http404 from None
    response = FileResponse(handle, content_type=content_type, filename=filename)
    response["Cache-Control"] = "private, max-age=86400"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_GET
@login_required
def image_file(request: HttpRequest, pk: object) -> FileResponse:
    """The full PNG, with its A1111 `parameters` chunk; ?download=1 saves it as a file."""
    image = _image(request, pk)
    response = _stream(image.file, f"atelier-{image.seed}.png", "image/png")
    if request.GET.get("download"):
        response["Content-Disposition"] = f'attachment; filename="atelier-{image.seed}.png"'
    else:
        response["Content-Disposition"] = "inline"
    return response


@require_GET
@login_required
def image_thumbnail(request: HttpRequest, pk: object) -> FileResponse:
    image = _image(request, pk)
    response = _stream(
        image.thumbnail or image.file,
        f"thumb-{image.pk}.webp",
        "image/webp" if image.thumbnail else "image/png",
    )
    response["Content-Disposition"] = "inline"
    return response


@require_GET
@login_required
def catalogue_preview(request: HttpRequest, pk: int) -> FileResponse:
    """A model's or LoRA's preview image, for members whose tier shows them the entry."""
    entry = get_object_or_404(CatalogEntry.objects.visible_to(request.user), pk=pk)
    content_type = mimetypes.guess_type(entry.preview.name or "")[0] or "application/octet-stream"
    response = _stream(entry.preview, f"preview-{entry.pk}", content_type)
    response["Content-Disposition"] = "inline"
    return response


def _own_job(request: HttpRequest, pk: object) -> Job:
    jobs = Job.objects.all() if request.user.is_staff else Job.objects.owned_by(request.user)
    return get_object_or_404(jobs, pk=pk)


@require_GET
@login_required
def job_source(request: HttpRequest, pk: object) -> FileResponse:
    """An img2img job's source image, for its owner (remix, the image page)."""
    response = _stream(_own_job(request, pk).init_image, "source.png", "image/png")
    response["Content-Disposition"] = "inline"
    return response


@require_GET
@login_required
def job_mask(request: HttpRequest, pk: object) -> FileResponse:
    """An inpaint job's mask (white = repainted), for its owner."""
    response = _stream(_own_job(request, pk).mask_image, "mask.png", "image/png")
    response["Content-Disposition"] = "inline"
    return response


@require_GET
@login_required
def job_control_image(request: HttpRequest, pk: object, index: int) -> FileResponse:
    """A ControlNet unit's control image, for the job's owner alone (Reuse brings it back; a
    member's input image is not staff's to browse here either). Files are shared by content, so
    it is found through a job of hers, never by its hash."""
    job = get_object_or_404(Job.objects.owned_by(request.user), pk=pk)
    units = job.params.get("controlnet") or []
    sha = units[index].get("image_sha256") if index < len(units) else None
    if not sha:
        raise Http404
    try:
        handle = default_storage.open(control_image_path(sha), "rb")
    except (FileNotFoundError, OSError):
        raise Http404 from None
    response = FileResponse(handle, content_type="image/png", filename=f"control-{index}.png")
    response["Cache-Control"] = "private, max-age=86400"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = "inline"
    return response
