"""Jobs, images and publications for gallery tests: real rows, real PNGs with our infotext."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

from django.core.files.base import ContentFile
from PIL import Image

from gallery.models import Publication, Visibility
from gallery.publishing import publish_image
from generation.models import CatalogEntry, Job, JobImage
from gpu_worker.infotext import build_infotext, png_with_infotext

CHECKPOINT_HASH = "6ce0161689"


def make_checkpoint(
    name: str = "dreamshaper-8", short_hash: str = CHECKPOINT_HASH, **extra: Any
) -> CatalogEntry:
    entry, _created = CatalogEntry.objects.get_or_create(
        kind=CatalogEntry.Kind.CHECKPOINT,
        name=name,
        defaults={
            "filename": f"Stable-diffusion/{name}.safetensors",
            "short_hash": short_hash,
            "sha256": short_hash + "0" * 54,
            **extra,
        },
    )
    return entry


def job_params(checkpoint: CatalogEntry, **overrides: Any) -> dict[str, Any]:
    """Parameters shaped as generation.submission.validate_params leaves them."""
    params: dict[str, Any] = {
        "checkpoint": checkpoint.name,
        "prompt": "a watercolor fox in a misty forest, (soft light:1.2)",
        "negative_prompt": "blurry, lowres",
        "steps": 24,
        "cfg_scale": 6.5,
        "width": 512,
        "height": 768,
        "batch_size": 2,
        "n_iter": 1,
        "seed": 1000,
        "clip_skip": 2,
        "denoising_strength": 0.75,
        "sampler": "DPM++ 2M",
        "scheduler": "Karras",
        "vae": None,
        "loras": [],
        "mode": "txt2img",
        "hires": None,
    }
    params.update(overrides)
    return params


def infotext_for(params: dict[str, Any], checkpoint: CatalogEntry, seed: int) -> str:
    """What the GPU worker writes: A1111 keys in A1111's order."""
    fields: dict[str, Any] = {
        "Steps": params["steps"],
        "Sampler": params["sampler"],
        "Schedule type": params["scheduler"],
        "CFG scale": params["cfg_scale"],
        "Seed": seed,
        "Size": f"{params['width']}x{params['height']}",
        "Model hash": checkpoint.short_hash,
        "Model": checkpoint.name,
        "Clip skip": params["clip_skip"] if params["clip_skip"] > 1 else None,
    }
    hires = params.get("hires")
    if hires:
        fields["Denoising strength"] = hires["denoising_strength"]
        fields["Hires upscale"] = hires["scale"]
        fields["Hires steps"] = hires["second_pass_steps"]
        fields["Hires upscaler"] = hires["upscaler"]
    fields["Version"] = "atelier"
    return build_infotext(params["prompt"], params["negative_prompt"], fields)


def make_image(
    owner: Any,
    *,
    checkpoint: CatalogEntry | None = None,
    index: int = 1,
    color: str = "teal",
    **param_overrides: Any,
) -> JobImage:
    checkpoint = checkpoint or make_checkpoint()
    params = job_params(checkpoint, **param_overrides)
    job = Job.objects.create(
        owner=owner,
        status=Job.Status.SUCCEEDED,
        params=params,
        checkpoint=checkpoint,
        price=Decimal("1"),
        total_steps=params["steps"],
    )
    seed = params["seed"] + index
    infotext = infotext_for(params, checkpoint, seed)
    picture = Image.new("RGB", (64, 96), color)
    image = JobImage(
        job=job,
        owner=owner,
        index=index,
        seed=seed,
        infotext=infotext,
        width=params["width"],
        height=params["height"],
    )
    image.file.save("ignored.png", ContentFile(png_with_infotext(picture, infotext)), save=False)
    thumb = io.BytesIO()
    picture.save(thumb, format="WEBP")
    image.thumbnail.save("ignored.webp", ContentFile(thumb.getvalue()), save=False)
    image.save()
    return image


def make_publication(
    owner: Any,
    visibility: str = Visibility.PUBLIC,
    *,
    title: str = "Fox",
    mature: bool = False,
    hidden: bool = False,
    likes: int = 0,
    **image_kwargs: Any,
) -> Publication:
    image = make_image(owner, **image_kwargs)
    publication = publish_image(owner, image, title=title, visibility=visibility, mature=mature)
    if hidden or likes:
        Publication.objects.filter(pk=publication.pk).update(hidden=hidden, likes_count=likes)
        publication.refresh_from_db()
    return publication
