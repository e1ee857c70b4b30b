"""The Merge page and each own model's page (its recipe, and Bake for a virtual model).

Server-rendered forms over `generation.merges`: a refused merge comes back with the message
naming the field; an accepted one goes to its job's page (progress, cancel), a virtual model to
its own page.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from generation import model_store
from generation.error_text import readable_error
from generation.merges import bake_virtual, save_virtual, submit_merge
from generation.models import CatalogEntry, ModelRecipe
from generation.submission import SubmissionError
from gpu_worker.merge_rules import METHODS, PRESETS, block_names
from gpu_worker.model_files import UnreadableModel, read_safetensors_header

FORM_FIELDS = (
    "method",
    "primary",
    "secondary",
    "tertiary",
    "multiplier",
    "preset",
    "block_weights",
    "save_as_half",
    "bake_in_vae",
    "discard_weights",
    "name",
)


def _choices(user: Any) -> dict[str, Any]:
    usable = CatalogEntry.objects.usable_by(user)
    virtual = ModelRecipe.objects.filter(entry__stored_file__isnull=True).values("entry_id")
    return {
        "checkpoints": usable.checkpoints().exclude(pk__in=virtual).order_by("name"),
        "vaes": usable.filter(kind=CatalogEntry.Kind.VAE).order_by("name"),
        "methods": METHODS,
        "presets": sorted(PRESETS),
        "blocks": {family: ", ".join(block_names(family)) for family in ("sd1", "sdxl")},
    }


@login_required
@require_http_methods(["GET", "POST"])
def merge_page(request: HttpRequest) -> HttpResponse:
    form: dict[str, Any] = {"method": "Weighted sum", "multiplier": "0.5"}
    error = None
    if request.method == "POST":
        form = {k: request.POST.get(k, "") for k in FORM_FIELDS}
        form["save_as_half"] = request.POST.get("save_as_half") == "on"
        raw = {k: v for k, v in form.items() if v not in ("", None)}
        try:
            if request.POST.get("virtual") == "on":
                entry = save_virtual(request.user, raw)
                return redirect("own-model", pk=entry.pk)
            job = submit_merge(request.user, raw)
            return redirect("job_detail", pk=job.pk)
        except SubmissionError as exc:
            error = readable_error(exc.field, exc.message)
    return render(
        request,
        "generation/merge.html",
        {**_choices(request.user), "form": form, "error": error},
        status=422 if error else 200,
    )


def _file_recipe(entry: CatalogEntry) -> dict[str, Any] | None:
    """A stored file's own `sd_merge_recipe` (merged here or elsewhere, as A1111 writes it)."""
    if entry.stored_file_id is None:
        return None
    try:
        metadata = read_safetensors_header(model_store.path_for(entry.sha256)).get("__metadata__")
        found = json.loads((metadata or {}).get("sd_merge_recipe") or "null")
    except (OSError, ValueError, UnreadableModel):
        return None
    return found if isinstance(found, dict) else None


@login_required
@require_http_methods(["GET"])
def own_model(request: HttpRequest, pk: int) -> HttpResponse:
    entry = get_object_or_404(CatalogEntry.objects.members_own(request.user), pk=pk)
    recipe = ModelRecipe.objects.filter(entry=entry).first()
    return render(
        request,
        "generation/own_model.html",
        {
            "model": entry,
            "recipe": recipe.params if recipe else None,
            "virtual": recipe is not None and entry.stored_file_id is None,
            "baking": recipe is not None and recipe.job_id is not None,
            "file_recipe": _file_recipe(entry),
        },
    )


@login_required
@require_POST
def bake(request: HttpRequest, pk: int) -> HttpResponse:
    entry = get_object_or_404(CatalogEntry.objects.members_own(request.user), pk=pk)
    try:
        job = bake_virtual(request.user, entry)
    except SubmissionError as exc:
        return render(
            request,
            "generation/own_model.html",
            {"model": entry, "error": readable_error(exc.field, exc.message)},
            status=exc.status,
        )
    return redirect("job_detail", pk=job.pk)
