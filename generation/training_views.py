"""The LoRA training pages: datasets (upload, captions), starting a training, and each training
job's page (loss curve, samples, each epoch's LoRA, spend so far, cancel). Plain forms; the work
is generation.training_datasets' and generation.submission's."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from generation.error_text import readable_error
from generation.limits import limits_for
from generation.models import CatalogEntry, Job, TrainingDataset
from generation.submission import SubmissionError, cancel_job
from generation.training_chain import submit_training
from generation.training_datasets import DatasetError, add_images, create_dataset, set_caption
from generation.training_history import epoch_views, loss_curve, spent, trained_lora
from generation.training_requests import TRAINABLE_FAMILIES
from gpu_worker.params import LR_SCHEDULERS, TRAIN_DEFAULTS

TRAIN_FORM_FIELDS = (
    "output_name",
    "trigger_word",
    "rank",
    "alpha",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "epochs",
    "repeats",
    "batch_size",
    "resolution",
    "method",
    "num_vectors",
    "init_text",
    "class_dataset_id",
    "class_count",
    "class_prompt",
    "prior_loss_weight",
)
SAMPLE_FIELDS = ("prompt", "negative_prompt", "steps", "width", "height", "seed")


def _uploads(request: HttpRequest) -> list[tuple[str, Any]]:
    return [(f.name or "file", f) for f in request.FILES.getlist("files")]


@login_required
@require_GET
def training_home(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "generation/training.html",
        {
            "datasets": TrainingDataset.objects.owned_by(request.user),
            "jobs": Job.objects.owned_by(request.user)
            .filter(mode=Job.Mode.TRAIN)
            .select_related("checkpoint")[:50],
        },
    )


@login_required
@require_POST
def dataset_upload(request: HttpRequest) -> HttpResponse:
    try:
        dataset = create_dataset(
            request.user,
            request.POST.get("name"),
            request.POST.get("trigger_word", ""),
            _uploads(request),
        )
    except DatasetError as exc:
        messages.error(request, exc.message)
        return redirect("training")
    return redirect("training_dataset", pk=dataset.pk)


@login_required
@require_http_methods(["GET", "POST"])
def dataset_page(request: HttpRequest, pk: int) -> HttpResponse:
    """GET shows the images and their captions; POST saves every caption of the form, or adds
    the files it carries."""
    dataset = get_object_or_404(TrainingDataset.objects.owned_by(request.user), pk=pk)
    if request.method == "POST":
        try:
            if request.FILES:
                add_images(request.user, dataset, _uploads(request))
                messages.success(request, _("Images added."))
            else:
                for image in dataset.images.all():
                    key = f"caption-{image.pk}"
                    if key in request.POST and request.POST[key].strip() != image.caption:
                        set_caption(request.user, image, request.POST[key])
                messages.success(request, _("Captions saved."))
        except DatasetError as exc:
            messages.error(request, exc.message)
        return redirect("training_dataset", pk=dataset.pk)
    checkpoints = (
        CatalogEntry.objects.usable_by(request.user)
        .checkpoints()
        .filter(family__in=TRAINABLE_FAMILIES)
    )
    return render(
        request,
        "generation/training_dataset.html",
        {
            "dataset": dataset,
            "images": dataset.images.all(),
            "checkpoints": checkpoints,
            "defaults": TRAIN_DEFAULTS,
            "schedulers": LR_SCHEDULERS,
            "class_datasets": TrainingDataset.objects.owned_by(request.user).exclude(pk=dataset.pk),
            "max_images": limits_for(request.user).max_images,
        },
    )


@login_required
@require_POST
def training_start(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(TrainingDataset.objects.owned_by(request.user), pk=pk)
    post = request.POST
    train: dict[str, Any] = {k: post[k] for k in TRAIN_FORM_FIELDS if post.get(k, "") != ""}
    train["dataset_id"] = dataset.pk
    train["train_text_encoder"] = post.get("train_text_encoder") == "on"
    params: dict[str, Any] = {k: post[k] for k in SAMPLE_FIELDS if post.get(k, "") != ""}
    params.update(mode="train", checkpoint=post.get("checkpoint", ""), train=train)
    try:
        job = submit_training(request.user, params)
    except SubmissionError as exc:
        messages.error(request, readable_error(exc.field, exc.message))
        return redirect("training_dataset", pk=dataset.pk)
    return redirect("training_job", pk=job.pk)


@login_required
@require_GET
def training_job(request: HttpRequest, pk: Any) -> HttpResponse:
    job = get_object_or_404(
        Job.objects.owned_by(request.user).filter(mode=Job.Mode.TRAIN).select_related("checkpoint"),
        pk=pk,
    )
    epochs = epoch_views(job)
    return render(
        request,
        "generation/training_job.html",
        {
            "job": job,
            "train": job.params["train"],
            "epochs": epochs,
            "curve": loss_curve(epochs),
            "spent": spent(job),
            "lora": trained_lora(job),
        },
    )


@login_required
@require_POST
def training_cancel(request: HttpRequest, pk: Any) -> HttpResponse:
    job = get_object_or_404(Job.objects.owned_by(request.user).filter(mode=Job.Mode.TRAIN), pk=pk)
    try:
        cancel_job(request.user, job)
        messages.success(
            request, _("Cancelling: finished epochs stay charged, the rest is refunded.")
        )
    except SubmissionError as exc:
        messages.error(request, exc.message)
    return redirect("training_job", pk=job.pk)
