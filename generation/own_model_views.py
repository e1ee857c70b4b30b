"""The "My models" page: your uploads, your quota, an upload form whose script speaks tus to
/api/v1/own-models/uploads/ (static/js/model_upload.js), and per model a form to rename,
describe, set trigger words and a preview image, or delete it. Staff choose there whether an
upload becomes their own model or a platform (catalogue) model."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from generation import merge_views
from generation.models import CatalogEntry
from generation.own_models import (
    OwnModelError,
    clear_preview,
    delete_own_model,
    quota_for,
    set_preview,
    update_own_model,
)

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


def _own_entry(request: HttpRequest, pk: int) -> CatalogEntry:
    """One of the user's models (uploads, merges, virtual models); anyone else's is a 404, like
    one that does not exist."""
    return get_object_or_404(CatalogEntry.objects.members_own(request.user), pk=pk)


def own_model(request: HttpRequest, pk: int) -> HttpResponse:
    """One model's address: its page (its recipe, Bake: `merge_views.own_model`) on GET, the
    target of its edit form on My models on POST."""
    if request.method == "POST":
        return own_model_edit(request, pk)
    return merge_views.own_model(request, pk)


@require_POST
@login_required
def own_model_edit(request: HttpRequest, pk: int) -> HttpResponse:
    entry = _own_entry(request, pk)
    fields = ("name", "description", "trigger_words")
    try:
        update_own_model(
            request.user, entry, {k: request.POST[k] for k in fields if k in request.POST}
        )
        if request.FILES.get("preview"):
            set_preview(request.user, entry, request.FILES["preview"])
        elif request.POST.get("clear_preview"):
            clear_preview(request.user, entry)
    except OwnModelError as exc:
        messages.error(request, f"{exc.field}: {exc.message}")
    else:
        messages.success(request, _("Saved."))
    return redirect("own-models")


@require_POST
@login_required
def own_model_delete(request: HttpRequest, pk: int) -> HttpResponse:
    entry = _own_entry(request, pk)
    delete_own_model(request.user, entry)
    messages.success(request, _("Deleted: its storage is free again."))
    return redirect("own-models")
