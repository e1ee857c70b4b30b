"""The generator and "My images" pages: server-rendered, enhanced by one script each.

The pages only read (querysets) and call the services that the REST API uses; jobs are submitted
by the page's script through the REST API, so there is exactly one submission path.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.datastructures import MultiValueDict
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from generation.images import delete_image
from generation.lifecycle import image_payload
from generation.limits import limits_for
from generation.models import CatalogEntry, Job, JobImage, PromptStyle, UserGenerationSettings
from generation.prefill import params_from_query
from generation.submission import (
    SubmissionError,
    default_checkpoint,
    submit_job,
    upscaler_models,
)
from gpu_worker.params import DEFAULTS, HIRES_DEFAULTS
from gpu_worker.passes import UPSCALERS
from gpu_worker.samplers import list_samplers, list_schedulers

SIZE_PRESETS = [
    (512, 512),
    (768, 512),
    (512, 768),
    (768, 768),
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (256, 256),
    (128, 128),
]
RESIZE_MODES = [
    (0, gettext_lazy("Just resize")),
    (1, gettext_lazy("Crop and resize")),
    (2, gettext_lazy("Resize and fill")),
]
IMAGES_PER_PAGE = 24
RECENT_IMAGES = 8
# A placeholder the script swaps for a real id in URL templates.
PLACEHOLDER_ID = "00000000-0000-0000-0000-000000000000"

# Every string the generator's script shows, translated here and handed over as JSON.
SCRIPT_STRINGS = {
    "status_queued": gettext_lazy("Queued"),
    "status_running": gettext_lazy("Running"),
    "status_succeeded": gettext_lazy("Done"),
    "status_failed": gettext_lazy("Failed"),
    "status_cancelled": gettext_lazy("Cancelled"),
    "position": gettext_lazy("Position %(position)s in the queue"),
    "eta_seconds": gettext_lazy("about %(s)s s left"),
    "eta_minutes": gettext_lazy("about %(m)s min %(s)s s left"),
    "step": gettext_lazy("Step %(step)s of %(steps)s"),
    "starting": gettext_lazy("Starting…"),
    "stopping": gettext_lazy("Stopping…"),
    "price": gettext_lazy("Price: %(price)s credits"),
    "seed": gettext_lazy("Seed %(seed)s"),
    "job_title": gettext_lazy("%(model)s · %(width)s×%(height)s · %(steps)s steps · %(prompt)s"),
    "image_alt": gettext_lazy("Image, seed %(seed)s"),
    "mode_txt2img": gettext_lazy("Text to image"),
    "mode_img2img": gettext_lazy("Image to image"),
    "network_error": gettext_lazy("The server cannot be reached; retrying may help."),
    "unknown_error": gettext_lazy("Something went wrong."),
    "server_error": gettext_lazy("The server had a problem (%(status)s); please try again."),
    "image_read_error": gettext_lazy("That image could not be read."),
}
FIELD_LABELS = {
    "prompt": gettext_lazy("Prompt"),
    "negative_prompt": gettext_lazy("Negative prompt"),
    "checkpoint": gettext_lazy("Model"),
    "vae": gettext_lazy("VAE"),
    "sampler": gettext_lazy("Sampler"),
    "scheduler": gettext_lazy("Schedule type"),
    "steps": gettext_lazy("Sampling steps"),
    "cfg_scale": gettext_lazy("CFG scale"),
    "width": gettext_lazy("Width"),
    "height": gettext_lazy("Height"),
    "seed": gettext_lazy("Seed"),
    "batch_size": gettext_lazy("Batch size"),
    "n_iter": gettext_lazy("Batch count"),
    "clip_skip": gettext_lazy("Clip skip"),
    "init_image": gettext_lazy("Source image"),
    "denoising_strength": gettext_lazy("Denoising strength"),
    "resize_mode": gettext_lazy("Resize mode"),
    "hires": gettext_lazy("Hires. fix"),
    "jobs": gettext_lazy("Jobs"),
    "price": gettext_lazy("Price"),
}


def _initial_values(params: dict[str, Any]) -> dict[str, Any]:
    """The form's starting values: defaults, overlaid by saved or reused parameters."""
    values = {**DEFAULTS, "vae": "", "hires": None, **params}
    hires = values.get("hires") or {}
    for key, default in HIRES_DEFAULTS.items():
        values[f"hires_{key}"] = hires.get(key, default)
    return values


FORM_FIELDS = (
    "prompt",
    "negative_prompt",
    "checkpoint",
    "vae",
    "sampler",
    "scheduler",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "seed",
    "batch_size",
    "n_iter",
    "clip_skip",
    "denoising_strength",
    "resize_mode",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
)


def _posted_params(post: Any, files: MultiValueDict) -> dict[str, Any]:
    """The form as the submission service takes it (it validates and converts every value)."""
    params: dict[str, Any] = {name: post[name] for name in FORM_FIELDS if post.get(name, "") != ""}
    if post.get("hires_enabled"):
        params["hires"] = {
            key: post.get(f"hires_{key}") or None
            for key in HIRES_DEFAULTS
            if f"hires_{key}" in post
        }
    params["tiling"] = bool(post.get("tiling"))  # an unchecked box is absent
    if styles := post.getlist("styles"):
        params["styles"] = styles
    if init_image := files.get("init_image"):
        params.update(mode="img2img", init_image=init_image)
    return params


def _owned_images(request: HttpRequest) -> Any:
    # Pages show the owner's images only; anyone else's id is a 404 (staff included).
    return JobImage.objects.filter(owner=request.user).select_related("job__checkpoint")


@login_required
@require_http_methods(["GET", "POST"])
def generate(request: HttpRequest) -> HttpResponse:
    """The generator. The script submits through the REST API; a POST here is the same
    submission for browsers without JavaScript."""
    user = request.user
    if request.method == "POST":
        posted = _posted_params(request.POST, request.FILES)
        try:
            submit_job(user, posted)
        except SubmissionError as exc:
            label = FIELD_LABELS.get(exc.field, exc.field)
            messages.error(request, f"{label}: {exc.message}")
            # Refused: show the form as it was sent.
            params = {k: v for k, v in posted.items() if k != "init_image"}
            return _render_generator(request, params, keep_checkpoint=True)
        messages.success(request, _("Your job is queued: its images appear below when done."))
        return redirect("generate")

    source_id = request.GET.get("from_image")
    if not source_id:
        saved = UserGenerationSettings.objects.filter(user=user).first()
        last_params = dict(saved.last_params) if saved else {}
        # A fresh visit starts from a random seed; "Reuse last" brings the last one back.
        # A Remix or "Send to generator" link lays its own fields over that.
        linked = params_from_query(request.GET)
        return _render_generator(
            request,
            {**last_params, "seed": -1, **linked},
            keep_checkpoint="checkpoint" in linked,
            last_seed=last_params.get("seed"),
        )
    try:
        source = _owned_images(request).get(pk=uuid.UUID(source_id))
    except (ValueError, JobImage.DoesNotExist):
        raise Http404(_("No such image.")) from None
    params = {**source.job.params, "seed": source.seed}
    init_image_url = None
    if request.GET.get("img2img"):
        params.update(width=source.width, height=source.height, hires=None)
        init_image_url = image_payload(source)["url"]
    return _render_generator(
        request, params, keep_checkpoint=True, last_seed=source.seed, init_image_url=init_image_url
    )


def _render_generator(
    request: HttpRequest,
    params: dict[str, Any],
    *,
    keep_checkpoint: bool = False,
    last_seed: int | None = None,
    init_image_url: str | None = None,
) -> HttpResponse:
    user = request.user
    visible = CatalogEntry.objects.usable_by(user)
    checkpoints = list(visible.checkpoints().order_by("is_demo", "name"))
    initial = _initial_values(params)
    if not keep_checkpoint or initial.get("checkpoint") not in {c.name for c in checkpoints}:
        chosen = default_checkpoint(user)  # the user's own choice, else the first usable
        initial["checkpoint"] = chosen.name if chosen else ""
    recent = [
        {"image": image_payload(image), "params": image.job.params}
        for image in _owned_images(request).order_by("-created_at", "index")[:RECENT_IMAGES]
    ]
    unfinished = [
        {"id": str(job_id), "status": status}
        for job_id, status in Job.objects.owned_by(user).unfinished().values_list("id", "status")
    ]
    page_data = {
        "strings": {key: str(text) for key, text in SCRIPT_STRINGS.items()},
        "field_labels": {key: str(text) for key, text in FIELD_LABELS.items()},
        "placeholder_id": PLACEHOLDER_ID,
        "urls": {
            "jobs": reverse("api-jobs"),
            "quote": reverse("api-job-quote"),
            "job": reverse("api-job", args=[PLACEHOLDER_ID]),
            "job_cancel": reverse("api-job-cancel", args=[PLACEHOLDER_ID]),
            "default_model": reverse("api-default-model"),
            "ws": "/ws/jobs/",
            "reuse": f"{reverse('generate')}?from_image={PLACEHOLDER_ID}",
            "send_img2img": f"{reverse('generate')}?from_image={PLACEHOLDER_ID}&img2img=1",
        },
        "last_seed": last_seed,
        "recent": recent,
        "unfinished": unfinished,
        "init_image_url": init_image_url,
    }
    return render(
        request,
        "generation/generate.html",
        {
            "checkpoints": checkpoints,
            "loras": visible.filter(kind=CatalogEntry.Kind.LORA),
            "vaes": visible.filter(kind=CatalogEntry.Kind.VAE),
            "samplers": list_samplers(),
            "schedulers": list_schedulers(),
            "size_presets": SIZE_PRESETS,
            "upscalers": [*UPSCALERS, *upscaler_models(user)],
            "resize_modes": RESIZE_MODES,
            "initial": initial,
            "prompt_styles": sorted(
                set(PromptStyle.objects.visible_to(user).values_list("name", flat=True))
            ),
            "limits": limits_for(user),
            "recent": recent,
            "init_image_url": init_image_url,
            "page_data": page_data,
        },
    )


@login_required
def my_images(request: HttpRequest) -> HttpResponse:
    images = _owned_images(request).order_by("-created_at", "index")
    model = request.GET.get("model", "")
    if model:
        images = images.filter(job__checkpoint__name=model)
    page = Paginator(images, IMAGES_PER_PAGE).get_page(request.GET.get("page"))
    models_used = (
        CatalogEntry.objects.filter(jobs__images__owner=request.user)
        .values_list("name", flat=True)
        .distinct()
        .order_by("name")
    )
    return render(
        request,
        "generation/my_images.html",
        {
            "page": page,
            "images": [(image, image_payload(image)) for image in page],
            "model": model,
            "models_used": models_used,
            "script_strings": {"confirm_delete": _("Delete this image for good?")},
        },
    )


@login_required
def image_detail(request: HttpRequest, pk: Any) -> HttpResponse:
    image = get_object_or_404(_owned_images(request), pk=pk)
    return render(
        request,
        "generation/image_detail.html",
        {
            "image": image,
            "payload": image_payload(image),
            "job": image.job,
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def image_delete(request: HttpRequest, pk: Any) -> HttpResponse:
    """GET asks for confirmation; POST deletes (works without JavaScript)."""
    image = get_object_or_404(_owned_images(request), pk=pk)
    if request.method == "POST":
        delete_image(image)
        messages.success(request, _("Image deleted."))
        return redirect("my_images")
    return render(
        request,
        "generation/image_delete.html",
        {
            "image": image,
            "payload": image_payload(image),
        },
    )
