"""The generator and "My images" pages: server-rendered, enhanced by one script each.

The pages only read (querysets) and call the services that the REST API uses; jobs are submitted
by the page's script through the REST API, so there is exactly one submission path.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ObjectDoesNotExist
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.datastructures import MultiValueDict
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from accounts.ledger import account_for
from accounts.member_request import MemberRequest
from generation import face_models
from generation.broker import get_redis
from generation.controlnet_form import controlnet_context, posted_controlnet
from generation.controlnet_prefill import reused_units, units_from_query, with_kept_images
from generation.error_text import FIELD_LABELS, readable_error
from generation.fleet import available_preprocessors
from generation.images import delete_image
from generation.inpaint_form import inpaint_context, job_inputs, posted_inpaint
from generation.job_history import prompt_history
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
from gpu_worker.params import CODE_FORMER_WEIGHT, DEFAULTS, HIRES_DEFAULTS
from gpu_worker.passes import UPSCALERS
from gpu_worker.preprocessors import page_sliders
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
    "no_price": gettext_lazy("No price: see above"),
    "over_balance": gettext_lazy(
        "This costs %(price)s credits and your balance is %(balance)s: not enough."
    ),
    "job_summary": gettext_lazy("Charged %(charged)s credits · ran %(duration)s"),
    "balance": gettext_lazy("%(balance)s credits"),
    "use_source_size": gettext_lazy("Use source size (%(width)s×%(height)s)"),
    "hires_size": gettext_lazy("%(width)s×%(height)s → %(out_width)s×%(out_height)s"),
    "seed": gettext_lazy("Seed %(seed)s"),
    "job_title": gettext_lazy("%(model)s · %(width)s×%(height)s · %(steps)s steps · %(prompt)s"),
    "image_alt": gettext_lazy("Image, seed %(seed)s"),
    "mode_txt2img": gettext_lazy("Text to image"),
    "mode_img2img": gettext_lazy("Image to image"),
    "network_error": gettext_lazy("The server cannot be reached; retrying may help."),
    "unknown_error": gettext_lazy("Something went wrong."),
    "server_error": gettext_lazy("The server had a problem (%(status)s); please try again."),
    "image_read_error": gettext_lazy("That image could not be read."),
    "preview_running": gettext_lazy("Computing the preview on a GPU worker…"),
    "preview_needs_image": gettext_lazy("Choose a control image (or an image-to-image source)."),
    "preview_done": gettext_lazy("Preview: %(module)s at %(res)s px"),
}


def _initial_values(params: dict[str, Any]) -> dict[str, Any]:
    """The form's starting values: defaults, overlaid by saved or reused parameters."""
    values = {**DEFAULTS, "vae": "", "hires": None, **FACE_DEFAULTS, **params}
    hires = values.get("hires") or {}
    for key, default in HIRES_DEFAULTS.items():
        values[f"hires_{key}"] = hires.get(key, default)
    return values


# restore_faces' restorer ("": the default one) and CodeFormer's weight (A1111's default)
FACE_DEFAULTS = {"face_restoration_model": "", "code_former_weight": CODE_FORMER_WEIGHT}

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
    "face_restoration_model",
    "code_former_weight",
)


# Numbers the form always shows: left empty they are refused, never quietly replaced by a default.
REQUIRED_NUMBERS = ("steps", "cfg_scale", "width", "height", "seed", "batch_size", "n_iter")


def _posted_params(post: Any, files: MultiValueDict, max_units: int) -> dict[str, Any]:
    """The form as the submission service takes it (it validates and converts every value)."""
    params: dict[str, Any] = {name: post[name] for name in FORM_FIELDS if post.get(name, "") != ""}
    params.update({name: "" for name in REQUIRED_NUMBERS if post.get(name) == ""})
    if post.get("hires_enabled"):
        params["hires"] = {
            key: post.get(f"hires_{key}") or None
            for key in HIRES_DEFAULTS
            if f"hires_{key}" in post
        }
    params["tiling"] = bool(post.get("tiling"))  # an unchecked box is absent
    params["restore_faces"] = bool(post.get("restore_faces"))
    if styles := post.getlist("styles"):
        params["styles"] = styles
    if init_image := files.get("init_image"):
        params.update(mode="img2img", init_image=init_image, **posted_inpaint(post, files))
    if units := posted_controlnet(post, files, max_units):
        params["controlnet"] = units
    return params


def _reused_job(request: MemberRequest, image: JobImage) -> Job | None:
    """The job whose parameters "Reuse" brings back: for an upscale, the job of the image it
    upscaled (when the member still has it), not the upscale's own."""
    job = image.job
    seen = set()
    while job.mode == Job.Mode.EXTRAS and job.pk not in seen:
        seen.add(job.pk)
        source_id = (job.params.get("extras") or {}).get("source_image_id")
        source = _owned_images(request).filter(pk=source_id).first() if source_id else None
        if source is None:
            return None
        job = source.job
    return job


def _owned_images(request: MemberRequest) -> Any:
    # Pages show the owner's images only; anyone else's id is a 404 (staff included).
    # "publication" (the gallery's reverse one-to-one) by name: the cards show how each is shared.
    return JobImage.objects.filter(owner=request.user).select_related(
        "job__checkpoint", "publication"
    )


@login_required
@require_http_methods(["GET", "POST"])
def generate(request: MemberRequest) -> HttpResponse:
    """The generator. The script submits through the REST API; a POST here is the same
    submission for browsers without JavaScript."""
    user = request.user
    if request.method == "POST":
        posted = _posted_params(request.POST, request.FILES, limits_for(user).max_controlnet_units)
        try:
            submit_job(user, with_kept_images(user, posted))
        except SubmissionError as exc:
            messages.error(request, readable_error(exc.field, exc.message))
            # Refused: show the form as it was sent (files are not sent back; a reused job's
            # kept control image is only named, so it stays).
            params = {k: v for k, v in posted.items() if k not in ("init_image", "mask")}
            units = [
                {k: v for k, v in u.items() if k != "image"} for u in posted.get("controlnet", [])
            ]
            return _render_generator(request, params, keep_checkpoint=True, units=units)
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
            units=units_from_query(request.GET),
        )
    try:
        source = _owned_images(request).get(pk=uuid.UUID(source_id))
    except (ValueError, JobImage.DoesNotExist):
        raise Http404(_("No such image.")) from None
    job = _reused_job(request, source)
    params = {**(job.params if job else {}), "seed": source.seed}
    init_image_url = mask_url = None
    # Her own job: its units with the control images it kept ("Send to img2img" starts anew).
    units = reused_units(job) if job and not request.GET.get("img2img") else []
    if request.GET.get("img2img"):
        params.update(width=source.width, height=source.height, hires=None, inpaint=None)
        init_image_url = image_payload(source)["url"]
    else:  # a remix of an inpaint job lays out its source and mask again
        init_image_url, mask_url = job_inputs(source.job)
    return _render_generator(
        request,
        params,
        keep_checkpoint=True,
        last_seed=source.seed,
        init_image_url=init_image_url,
        mask_url=mask_url,
        units=units,
    )


def _render_generator(
    request: MemberRequest,
    params: dict[str, Any],
    *,
    keep_checkpoint: bool = False,
    last_seed: int | None = None,
    init_image_url: str | None = None,
    mask_url: str | None = None,
    units: list[dict[str, Any]] | None = None,
) -> HttpResponse:
    """The generator page. `units`: ControlNet units to show filled in (a refused post's, a
    reused job's with its kept images, or a link's settings)."""
    user = request.user
    limits = limits_for(user)
    visible = CatalogEntry.objects.usable_by(user)
    checkpoints = list(visible.checkpoints().order_by("is_demo", "name"))
    initial = _initial_values(params)
    if not keep_checkpoint or initial.get("checkpoint") not in {c.name for c in checkpoints}:
        chosen = default_checkpoint(user)  # the user's own choice, else the first usable
        initial["checkpoint"] = chosen.name if chosen else ""
    recent_images = list(_owned_images(request).order_by("-created_at", "index")[:RECENT_IMAGES])
    recent = [
        {"image": image_payload(image), "params": image.job.params} for image in recent_images
    ]
    unfinished = [
        {"id": str(job_id), "status": status}
        for job_id, status in Job.objects.owned_by(user).unfinished().values_list("id", "status")
    ]
    preprocessors = available_preprocessors(get_redis())
    page_data = {
        "strings": {key: str(text) for key, text in SCRIPT_STRINGS.items()},
        "controlnet_sliders": page_sliders(preprocessors),
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
            "job_summary": reverse("job_summary", args=[PLACEHOLDER_ID]),
            "image_detail": reverse("image_detail", args=[PLACEHOLDER_ID]),
            "image_delete": reverse("image_delete", args=[PLACEHOLDER_ID]),
            "me": reverse("api-me"),
            "controlnet_detect": reverse("api-controlnet-detect"),
            "send_img2img": f"{reverse('generate')}?from_image={PLACEHOLDER_ID}&img2img=1",
        },
        "last_seed": last_seed,
        "checkpoint_families": {c.name: c.family for c in checkpoints},  # ControlNets must match
        "balance": str(account_for(user).balance),
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
            "face_restorers": face_models.available(user),
            "resize_modes": RESIZE_MODES,
            "initial": initial,
            "prompt_styles": sorted(
                set(PromptStyle.objects.visible_to(user).values_list("name", flat=True))
            ),
            "limits": limits,
            "recent": [
                {**item, "publication": _publication(image)}
                for item, image in zip(recent, recent_images, strict=True)
            ],
            "init_image_url": init_image_url,
            "page_data": page_data,
            "placeholder_id": PLACEHOLDER_ID,
            "prompt_history": prompt_history(user),
            **inpaint_context(params, mask_url, open_editor=bool(request.GET.get("inpaint"))),
            **controlnet_context(user, units or [], limits.max_controlnet_units),
            "controlnet_open": bool(units),
            "preprocessors": preprocessors,
        },
    )


def _publication(image: JobImage) -> Any:
    try:
        return image.publication
    except ObjectDoesNotExist:
        return None


@login_required
def my_images(request: MemberRequest) -> HttpResponse:
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
            "images": [(image, image_payload(image), _publication(image)) for image in page],
            "model": model,
            "models_used": models_used,
            "script_strings": {"confirm_delete": _("Delete this image for good?")},
        },
    )


@login_required
def image_detail(request: MemberRequest, pk: Any) -> HttpResponse:
    image = get_object_or_404(_owned_images(request), pk=pk)
    return render(
        request,
        "generation/image_detail.html",
        {
            "image": image,
            "payload": image_payload(image),
            "job": image.job,
            "publication": _publication(image),
            "job_inputs": job_inputs(image.job),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def image_delete(request: MemberRequest, pk: Any) -> HttpResponse:
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
