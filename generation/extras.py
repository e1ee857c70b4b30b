"""Extras jobs (issue 17): upscale one of the member's finished images, or an upload.

`validate_extras` checks a request into the job's GenerationParams (mode "extras", the
ExtrasParams block, the output size as width x height, its tiles as steps), prices it per output
megapixel (generation.pricing, gpu_worker.extras_plan) and `submit_extras` records it through
the same path as every job (submission.record_job: credit hold, unfinished-jobs cap, dispatch
after commit). Cancel, progress and settlement are the common ones.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _
from PIL import Image

from generation.face_models import FaceChoiceError, codeformer_for, face_restorer_for
from generation.limits import GenerationLimits, limits_for
from generation.models import CatalogEntry, Job, JobImage
from generation.submission import (
    SubmissionError,
    ValidatedJob,
    _bool,
    _float,
    _int,
    _lookup,
    check_idempotency_key,
    existing_job,
    record_job,
    uploaded_image,
)
from gpu_worker import extras_plan
from gpu_worker.infotext import PNG_CHUNK, png_with_infotext
from gpu_worker.params import EXTRAS_DEFAULTS, ExtrasParams, GenerationParams

MIN_TARGET_SIDE = 8
# What a request may name: the ExtrasParams a member chooses, plus the source.
CHOSEN_FIELDS = frozenset(EXTRAS_DEFAULTS)
SOURCE_FIELDS = frozenset({"image_id", "image"})
REQUEST_FIELDS = CHOSEN_FIELDS | SOURCE_FIELDS


def _source(user: Any, raw: dict[str, Any], limits: GenerationLimits) -> tuple[bytes, Any, int]:
    """The source as a clean RGB PNG that keeps its `parameters` chunk, its id when it is one
    of the member's images, and the seed it was made with (0 for an upload)."""
    image_id, upload = raw.get("image_id"), raw.get("image")
    if bool(image_id) == bool(upload):
        raise SubmissionError("image", _("give either image_id (one of your images) or image"))
    if image_id:
        try:
            pk = uuid.UUID(str(image_id))
        except ValueError:
            raise SubmissionError("image_id", _("no such image"), 404) from None
        # Only the member's own images: anyone else's, private or published, is "no such image".
        source = JobImage.objects.filter(owner=user, pk=pk).first()
        if source is None:
            raise SubmissionError("image_id", _("no such image"), 404)
        try:
            with source.file.open("rb") as fh:
                data = fh.read()
        except (OSError, ValidationError):
            raise SubmissionError("image_id", _("the image file is missing"), 409) from None
        picture = uploaded_image(data, limits, "image_id")
        text = source.infotext or picture.info.get(PNG_CHUNK)
        return _png(picture, text), str(source.pk), int(source.seed)
    picture = uploaded_image(upload, limits, "image")
    return _png(picture, picture.info.get(PNG_CHUNK)), None, 0


def _png(picture: Image.Image, parameters: Any) -> bytes:
    rgb = picture.convert("RGB")
    if isinstance(parameters, str) and parameters:
        return png_with_infotext(rgb, parameters)
    out = io.BytesIO()
    rgb.save(out, "PNG")
    return out.getvalue()


def _upscaler(user: Any, given: dict[str, Any], field: str) -> tuple[str, CatalogEntry | None]:
    name = given[field]
    if not isinstance(name, str) or not name:
        raise SubmissionError(field, _("%(field)s must be an upscaler name") % {"field": field})
    if name in extras_plan.RESAMPLERS:
        return name, None
    entry = _lookup(user, CatalogEntry.Kind.UPSCALER, name, field)
    return entry.name, entry


def builtin_entry(name: str) -> CatalogEntry:
    """The catalogue row a resampler-only job points at (Job.checkpoint is required): disabled,
    so no listing or lookup ever offers it as a model."""
    entry, _created = CatalogEntry.objects.get_or_create(
        kind=CatalogEntry.Kind.UPSCALER,
        name=name,
        owner=None,
        defaults={"enabled": False, "description": "Built-in resampler (no model file)"},
    )
    return entry


def _check_size(extras: ExtrasParams, limits: GenerationLimits) -> None:
    width, height = extras_plan.output_size(extras)
    if max(width, height) <= limits.max_side and width * height <= limits.max_pixels:
        return
    field = "target_width" if extras["resize_mode"] == 1 else "scale"
    raise SubmissionError(
        field,
        _(
            "the upscaled image would be %(w)sx%(h)s; the limit is %(side)s per side and "
            "%(pixels)s pixels"
        )
        % {"w": width, "h": height, "side": limits.max_side, "pixels": limits.max_pixels},
        422,
    )


def validate_extras(user: Any, raw: Any) -> ValidatedJob:
    """Check one extras request into the job it makes; SubmissionError names the field."""
    if not isinstance(raw, dict):
        raise SubmissionError("params", _("the request body must be a JSON object"))
    if unknown := sorted(set(raw) - REQUEST_FIELDS):
        raise SubmissionError(
            unknown[0],
            _("unknown field %(name)r; the fields are %(fields)s")
            % {"name": unknown[0], "fields": ", ".join(sorted(REQUEST_FIELDS))},
        )
    limits = limits_for(user)
    given = {**EXTRAS_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    source_png, source_id, seed = _source(user, raw, limits)
    with _open(source_png) as picture:
        source_size = picture.size
    name_1, entry_1 = _upscaler(user, given, "upscaler_1")
    name_2, entry_2 = _upscaler(user, given, "upscaler_2")
    extras = ExtrasParams(
        source_width=source_size[0],
        source_height=source_size[1],
        source_image_id=source_id,
        resize_mode=_int(given, "resize_mode", 0, 1),
        scale=_float(given, "scale", *extras_plan.SCALE_RANGE),
        target_width=_int(given, "target_width", MIN_TARGET_SIDE, limits.max_side),
        target_height=_int(given, "target_height", MIN_TARGET_SIDE, limits.max_side),
        crop=_bool(given, "crop"),
        upscaler_1=name_1,
        upscaler_2=name_2,
        upscaler_2_visibility=_float(given, "upscaler_2_visibility", 0.0, 1.0),
        upscaler_1_scale=_native(entry_1),
        upscaler_2_scale=_native(entry_2),
        gfpgan_visibility=_float(given, "gfpgan_visibility", 0.0, 1.0),
        face_restorer="",
        codeformer_visibility=_float(given, "codeformer_visibility", 0.0, 1.0),
        codeformer_weight=_float(given, "codeformer_weight", 0.0, 1.0),
    )
    try:
        extras["codeformer"] = codeformer_for(user, extras["codeformer_visibility"])
        if extras["gfpgan_visibility"] > 0:
            extras["face_restorer"] = face_restorer_for(user, "gfpgan_visibility")
    except FaceChoiceError as exc:
        raise SubmissionError(exc.field, exc.message, exc.status) from None
    if not extras_plan.second_upscaler_runs(extras):  # nothing of it runs: not needed either
        extras["upscaler_2"], extras["upscaler_2_scale"], entry_2 = "None", 0, None
    if name_1 == "None" and not extras_plan.faces_run(extras):
        raise SubmissionError(
            "upscaler_1", _("choose an upscaler (or a face restoration): there is nothing to do")
        )
    _check_size(extras, limits)
    main = entry_1 or entry_2 or _face_entry(user, extras) or builtin_entry(name_1)
    width, height = extras_plan.output_size(extras)
    params = GenerationParams(
        mode="extras",
        checkpoint=main.name,
        vae=None,
        prompt="",
        negative_prompt="",
        sampler="",
        scheduler="",
        steps=extras_plan.progress_units(extras),
        cfg_scale=0.0,
        width=width,
        height=height,
        seed=seed,
        batch_size=1,
        n_iter=1,
        clip_skip=1,
        denoising_strength=0.0,
        resize_mode=0,
        hires=None,
        loras=[],
        extras=extras,
    )
    return ValidatedJob.priced(params, main, source_png)


def _face_entry(user: Any, extras: ExtrasParams) -> CatalogEntry | None:
    """A faces-only job's main model: its (first) face restorer."""
    name = extras["face_restorer"] or extras.get("codeformer")
    if not name:
        return None
    rows = CatalogEntry.objects.usable_by(user).filter(kind=CatalogEntry.Kind.FACE_RESTORER)
    return rows.filter(name=name).first()


def _native(entry: CatalogEntry | None) -> int:
    if entry is None:
        return 0
    return int(entry.native_scale or extras_plan.UNKNOWN_NATIVE_SCALE)


def _open(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def submit_extras(user: Any, raw: Any, idempotency_key: str | None = None) -> Job:
    """Validate, hold the price and queue the upscale; a repeated key returns the first job."""
    check_idempotency_key(idempotency_key)
    if (job := existing_job(user, idempotency_key)) is not None:
        return job
    return record_job(user, validate_extras(user, raw), idempotency_key, remember=False)
