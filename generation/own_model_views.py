"""The "My models" page: your uploads, your quota, and an upload form whose script speaks tus
to /api/v1/own-models/uploads/ (static/js/model_upload.js)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from generation.models import CatalogEntry
from generation.own_models import quota_for

CHUNK_BYTES = 8 * 2**20


@require_GET
@login_required
def own_models(request: HttpRequest) -> HttpResponse:
    quota = quota_for(request.user)
    return render(
        request,
        "generation/own_models.html",
        {
            "models": CatalogEntry.objects.members_own(request.user).select_related("recipe"),
            "quota": quota,
            # Each chunk is one request: it must fit under the request-body limit.
            "chunk_bytes": min(CHUNK_BYTES, settings.MAX_REQUEST_BODY_BYTES - 64 * 1024),
        },
    )
