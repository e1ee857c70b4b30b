"""The Upscale page: the no-JavaScript path of the Upscale button (upscale.js submits the same
job through the REST API from a dialog)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from accounts.member_request import MemberRequest
from generation.error_text import readable_error
from generation.extras import submit_extras
from generation.lifecycle import image_payload
from generation.models import JobImage
from generation.submission import SubmissionError

FORM_FIELDS = ("upscaler_1", "scale", "upscaler_2", "upscaler_2_visibility")


@login_required
@require_http_methods(["GET", "POST"])
def image_upscale(request: MemberRequest, pk: Any) -> HttpResponse:
    """GET shows the form for one of the member's images; POST submits the Extras job and goes
    to its page (its image appears there, and in My images, when it is done)."""
    image = get_object_or_404(JobImage.objects.filter(owner=request.user), pk=pk)
    chosen: dict[str, Any] = {"upscaler_1": "", "scale": 2, "upscaler_2": "None"}
    error = ""
    if request.method == "POST":
        chosen = {name: request.POST.get(name) or None for name in FORM_FIELDS}
        try:
            job = submit_extras(request.user, {"image_id": str(image.pk), **chosen})
        except SubmissionError as exc:
            error = readable_error(exc.field, exc.message)
        else:
            return redirect("job_detail", job.pk)
    context = {"image": image, "payload": image_payload(image), "chosen": chosen, "error": error}
    return render(request, "generation/upscale.html", context, status=400 if error else 200)
