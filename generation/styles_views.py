"""The "My styles" page: save, change and delete your styles, import and export A1111's
styles.csv. Plain forms (no JavaScript); the work is generation.styles'."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from generation.models import PromptStyle
from generation.styles import (
    MAX_CSV_BYTES,
    StyleError,
    create_style,
    editable_by,
    export_csv,
    import_csv,
    update_style,
)

FIELDS = ("name", "prompt", "negative_prompt")


@login_required
@require_http_methods(["GET", "POST"])
def my_styles(request: HttpRequest) -> HttpResponse:
    """GET lists; POST saves a new style, or changes one when `style_id` names it."""
    if request.method == "POST":
        data = {name: request.POST.get(name, "") for name in FIELDS}
        try:
            if style_id := request.POST.get("style_id"):
                style = get_object_or_404(editable_by(request.user), pk=style_id)
                update_style(style, data)
                messages.success(request, _("Style saved."))
            else:
                create_style(request.user, data)
                messages.success(request, _("Style added."))
        except StyleError as exc:
            messages.error(request, exc.message)
        return redirect("my_styles")
    return render(
        request,
        "generation/styles.html",
        {
            "own": PromptStyle.objects.own(request.user),
            "shared": PromptStyle.objects.filter(owner__isnull=True),
        },
    )


@login_required
@require_POST
def style_delete(request: HttpRequest, pk: int) -> HttpResponse:
    get_object_or_404(PromptStyle.objects.own(request.user), pk=pk).delete()
    messages.success(request, _("Style deleted."))
    return redirect("my_styles")


@login_required
@require_POST
def styles_import(request: HttpRequest) -> HttpResponse:
    upload = request.FILES.get("file")
    try:
        if upload is None or (upload.size or 0) > MAX_CSV_BYTES:
            raise StyleError("file", _("choose a styles.csv of at most 1 MiB"))
        try:
            text = upload.read().decode("utf-8")
        except UnicodeDecodeError:
            raise StyleError("file", _("styles.csv must be UTF-8 text")) from None
        count = import_csv(request.user, text)
        messages.success(request, _("%(count)d styles imported.") % {"count": count})
    except StyleError as exc:
        messages.error(request, exc.message)
    return redirect("my_styles")


@login_required
def styles_export(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(export_csv(request.user), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="styles.csv"'
    return response
