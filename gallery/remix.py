"""Remix: the generator page opened with every parameter of an image filled in.

The link is `/generate/?<field>=<value>&...` with the generator form's own field names, so the
same link works for a published image (from its job's validated parameters) and for any PNG
uploaded to PNG Info (from its infotext), and needs no state on the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from django.urls import NoReverseMatch, reverse
from django.utils.translation import gettext as _

from gallery.private_models import redact_text, shown_for
from generation.controlnet_prefill import UNAVAILABLE, typed_unit, unit_link_fields
from generation.models import CatalogEntry
from gpu_worker.infotext import (
    format_number,
    infotext_to_fields,
    parse_controlnet_units,
    parse_infotext,
)

# The generator form's fields, in the order the link lists them.
GENERATOR_FIELDS = (
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
    "clip_skip",
    "batch_size",
    "n_iter",
    "denoising_strength",
    "resize_mode",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "tiling",
    "restore_faces",
    "face_restoration_model",
    "code_former_weight",
    "hires_enabled",
    "hires_scale",
    "hires_resize_x",
    "hires_resize_y",
    "hires_upscaler",
    "hires_second_pass_steps",
    "hires_denoising_strength",
)


@dataclass(frozen=True)
class RemixPlan:
    fields: dict[str, str]
    url: str
    # The image's model when the viewer cannot use it: the generator keeps its own choice.
    unavailable_model: str | None = None


def generator_url(fields: Mapping[str, str]) -> str:
    try:
        base = reverse("generate")
    except NoReverseMatch:  # the generator app is not mounted (tests of the gallery alone)
        base = "/generate/"
    return f"{base}?{urlencode(fields)}" if fields else base


def _as_text(value: Any) -> str:
    return format_number(value) if isinstance(value, float) else str(value)


def _usable_checkpoint(viewer: Any, name: str | None, short_hash: str | None) -> str | None:
    """The catalogue name to select, found by name or A1111 short hash, if the viewer may use it."""
    # Anonymous viewers get what the catalogue shows anyone; the generator asks them to log in.
    checkpoints = CatalogEntry.objects.visible_to(viewer).checkpoints()
    if name and checkpoints.filter(name=name).exists():
        return name
    if short_hash:
        entry = checkpoints.filter(short_hash__iexact=short_hash[:10]).first()
        if entry is not None:
            return entry.name
    return None


def _usable_vae(viewer: Any, name: str | None) -> str | None:
    if not name:
        return None
    vaes = CatalogEntry.objects.visible_to(viewer).filter(kind=CatalogEntry.Kind.VAE, name=name)
    return name if vaes.exists() else None


def _plan(
    viewer: Any,
    values: dict[str, Any],
    model: str | None,
    model_hash: str | None,
    vae: str | None,
    units: list[dict[str, Any]],
) -> RemixPlan:
    checkpoint = _usable_checkpoint(viewer, model, model_hash)
    values["checkpoint"] = checkpoint
    values["vae"] = _usable_vae(viewer, vae)
    fields = {
        name: _as_text(values[name])
        for name in GENERATOR_FIELDS
        if values.get(name) is not None and values.get(name) != ""
    }
    # Prompts may be empty on purpose; keep them so the generator clears its own.
    for name in ("prompt", "negative_prompt"):
        fields.setdefault(name, str(values.get(name) or ""))
    fields = {name: fields[name] for name in GENERATOR_FIELDS if name in fields}
    # ControlNet units: settings only (the generator matches each model to the viewer's own).
    fields.update(unit_link_fields(units))
    missing = model if model and checkpoint is None else None
    return RemixPlan(fields=fields, url=generator_url(fields), unavailable_model=missing)


def remix_published_image(viewer: Any, publication: Any) -> RemixPlan:
    """From the job's validated parameters, with this image's own seed (batches add +i)."""
    image = publication.image
    params: dict[str, Any] = dict(image.job.params or {})
    if not params and image.infotext:  # rows from before params were kept
        return remix_from_infotext(viewer, image.infotext)
    values: dict[str, Any] = {
        **{name: params.get(name) for name in GENERATOR_FIELDS},
        "seed": image.seed,
        "batch_size": 1,
        "n_iter": 1,
    }
    if params.get("subseed") is not None and params.get("seed") is not None:
        values["subseed"] = params["subseed"] + image.seed - params["seed"]  # image i: subseed + i
    hires = params.get("hires")
    if hires:
        values.update(
            hires_enabled="on",
            hires_scale=hires.get("scale"),
            hires_resize_x=hires.get("resize_x"),
            hires_resize_y=hires.get("resize_y"),
            hires_upscaler=hires.get("upscaler"),
            hires_second_pass_steps=hires.get("second_pass_steps"),
            hires_denoising_strength=hires.get("denoising_strength"),
        )
    checkpoint = image.job.checkpoint
    units = _published_units(viewer, image.job)
    if getattr(viewer, "pk", None) != image.job.owner_id:
        # Someone else's private LoRAs and embeddings: never named in the link.
        shown = shown_for(image.job, image.infotext)
        for name in ("prompt", "negative_prompt"):
            values[name] = redact_text(str(values.get(name) or ""), shown, drop=True)
    if not checkpoint.is_public and getattr(viewer, "pk", None) != checkpoint.owner_id:
        # Someone else's private model: never named, never looked up.
        plan = _plan(viewer, values, None, None, params.get("vae"), units)
        return replace(plan, unavailable_model=checkpoint.public_label)
    return _plan(
        viewer,
        values,
        params.get("checkpoint") or checkpoint.name,
        checkpoint.short_hash or None,
        params.get("vae"),
        units,
    )


def _published_units(viewer: Any, job: Any) -> list[dict[str, Any]]:
    """The job's ControlNet settings for a link: never its control images (A1111's infotext
    does not carry them either), and never the name of someone else's private ControlNet."""
    units = [
        {key: value for key, value in unit.items() if key != "image_sha256"}
        for unit in job.params.get("controlnet") or ()
    ]
    if getattr(viewer, "pk", None) == job.owner_id:
        return units
    names = {unit["model"] for unit in units}
    public = set(
        CatalogEntry.objects.public()
        .filter(kind=CatalogEntry.Kind.CONTROLNET, name__in=names)
        .values_list("name", flat=True)
    )
    for unit in units:
        if unit["model"] not in public:
            unit[UNAVAILABLE] = str(_("a private model"))
            del unit["model"]
    return units


def fields_from_parsed(parsed: Mapping[str, str]) -> dict[str, Any]:
    """Generator values from a parsed infotext (gpu_worker.infotext), hires fix included."""
    values: dict[str, Any] = dict(infotext_to_fields(parsed))
    values["batch_size"] = 1
    values["n_iter"] = 1
    hires_keys = ("Hires upscale", "Hires upscaler", "Hires steps", "Hires resize-1")
    if any(key in parsed for key in hires_keys):
        values["hires_enabled"] = "on"
        values["hires_scale"] = parsed.get("Hires upscale")
        values["hires_resize_x"] = parsed.get("Hires resize-1")
        values["hires_resize_y"] = parsed.get("Hires resize-2")
        values["hires_upscaler"] = parsed.get("Hires upscaler")
        values["hires_second_pass_steps"] = parsed.get("Hires steps")
        # In a txt2img infotext, "Denoising strength" is the hires pass's.
        values["hires_denoising_strength"] = values.pop("denoising_strength", None)
    return values


def remix_from_infotext(viewer: Any, infotext: str) -> RemixPlan:
    parsed = parse_infotext(infotext)
    values = fields_from_parsed(parsed)
    units = [typed_unit(raw) for raw in parse_controlnet_units(parsed)]
    return _plan(
        viewer, values, values.get("checkpoint"), parsed.get("Model hash"), values.get("vae"), units
    )
