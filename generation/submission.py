"""Submit and cancel jobs: the one service behind the page, the REST API and the A1111 API.

`submit_job` validates everything against the user's limits and the catalogue (names are only
ever looked up there, never turned into paths), prices the job, writes it together with its credit
hold in one transaction, and dispatches it only after that transaction commits.

Status codes carried by SubmissionError: 400 malformed input (wrong type, missing init image),
422 out of a limit or unknown name (model, sampler, LoRA, VAE), 402 not enough credits,
403 not allowed, 404 no such job, 409 model not available / job already finished,
429 too many unfinished jobs, 503 Redis unreachable for a cancel.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import secrets
from dataclasses import dataclass
from typing import Any, cast

import redis
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from PIL import Image, ImageOps

from accounts.compiled_queries import CompiledQuery
from accounts.tiers import allowed_model_names
from generation.broker import get_redis
from generation.control_images import store_control_images
from generation.credits_hold import InsufficientCredits, hold_credits
from generation.face_models import FaceChoiceError, restore_faces_choice
from generation.fleet import available_preprocessors
from generation.lifecycle import cancel_queued_job
from generation.limits import GenerationLimits, limits_for
from generation.models import CatalogEntry, Job, JobImage, UserGenerationSettings
from generation.pricing import final_size, price_job, total_steps
from generation.queue_reachable import queue_answering
from generation.request_errors import SubmissionError
from generation.scheduling.dispatcher import dispatch_on_commit
from generation.styles import StyleError, apply_styles
from generation.training_requests import (
    TrainingRequestError,
    check_training_slots,
    validate_training,
)
from generation.uploaded_images import uploaded_image
from gpu_worker.masking import mask_is_empty, outpaint_sides, prepare_mask
from gpu_worker.params import (
    CODE_FORMER_WEIGHT,
    CONTROL_MODES,
    CONTROLNET_UNIT_DEFAULTS,
    CONTROLNET_UNIT_FIELDS,
    DEFAULTS,
    DERIVED_FIELDS,
    HIRES_DEFAULTS,
    HIRES_FIELDS,
    INPAINT_DEFAULTS,
    INPAINT_FIELDS,
    INPAINT_FILLS,
    OUTPAINT_SIDES,
    REQUEST_FIELDS,
    ControlNetUnit,
    GenerationMode,
    GenerationParams,
    HiresParams,
    InpaintParams,
)
from gpu_worker.passes import UPSCALERS, denoised_size, steps_problem
from gpu_worker.preprocessors import (
    NEEDS_MASK,
    PROCESSOR_RES_RANGE,
    threshold_default,
    threshold_problem,
)
from gpu_worker.prompt_syntax import PromptSyntaxError, check_prompt
from gpu_worker.protocol import CANCEL_KEY, CANCEL_TTL_SECONDS
from gpu_worker.samplers import UnknownSampler, resolve_sampler

logger = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
MIN_SIDE = 64
MAX_CLIP_SKIP = 12
MAX_SEED_RESIZE = 4096  # seed_resize_from_w/h: the size the noise was first made at
RESIZE_MODES = (0, 3)  # img2img resize_mode bounds (A1111's 0-3; 3 resizes like 0 here)
HIRES_SCALE = (1.0, 4.0)
MAX_MASK_BLUR = 64  # A1111's slider goes to 64
MAX_MASK_PADDING = 256  # A1111's "only masked" padding slider goes to 256
NOISE_MULTIPLIER = (0.0, 2.0)


@dataclass
class ValidatedJob:
    params: GenerationParams
    checkpoint: CatalogEntry
    init_png: bytes | None
    price: Any
    total_steps: int
    control_pngs: dict[str, bytes]  # sha256 -> PNG of the ControlNet units' images
    mask_png: bytes | None = None

    @classmethod
    def priced(
        cls,
        params: GenerationParams,
        checkpoint: CatalogEntry,
        init_png: bytes | None,
        control_pngs: dict[str, bytes] | None = None,
        mask_png: bytes | None = None,
    ) -> ValidatedJob:
        """Valid parameters with their price and step count (what the hold and progress use)."""
        return cls(
            params=params,
            checkpoint=checkpoint,
            init_png=init_png,
            price=price_job(params, checkpoint),
            total_steps=total_steps(params),
            control_pngs=control_pngs or {},
            mask_png=mask_png,
        )


# --- field checks ----------------------------------------------------------------------------


def _int(params: dict[str, Any], name: str, low: int, high: int, prefix: str = "") -> int:
    field = prefix + name
    value = params.get(name)
    if isinstance(value, bool) or value is None:
        raise SubmissionError(field, f"{field} must be an integer")
    try:
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError
    except (TypeError, ValueError):
        raise SubmissionError(field, f"{field} must be an integer") from None
    if not low <= number <= high:
        raise SubmissionError(field, f"{field} must be between {low} and {high}", 422)
    return number


def _float(params: dict[str, Any], name: str, low: float, high: float, prefix: str = "") -> float:
    field = prefix + name
    value = params.get(name)
    if isinstance(value, bool) or value is None:
        raise SubmissionError(field, f"{field} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SubmissionError(field, f"{field} must be a number") from None
    if not low <= number <= high:  # also refuses NaN
        raise SubmissionError(field, f"{field} must be between {low:g} and {high:g}", 422)
    return number


def _text(params: dict[str, Any], name: str, limit: int) -> str:
    value = params.get(name) or ""
    if not isinstance(value, str):
        raise SubmissionError(name, f"{name} must be text")
    if len(value) > limit:
        raise SubmissionError(name, f"{name} is {len(value)} characters; the limit is {limit}", 422)
    return value


def _side(params: dict[str, Any], name: str, limits: GenerationLimits) -> int:
    value = _int(params, name, MIN_SIDE, limits.max_side)
    if value % 8:
        raise SubmissionError(name, f"{name} must be a multiple of 8 (got {value})", 422)
    return value


def _strip_model_name(name: str) -> str:
    candidate = name.strip()
    if candidate.endswith("]") and " [" in candidate:  # A1111 title "name.safetensors [hash]"
        candidate = candidate.rsplit(" [", 1)[0]
    for suffix in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        if candidate.endswith(suffix):
            candidate = candidate[: -len(suffix)]
    return candidate


def _lookup(user: Any, kind: str, name: str, field: str) -> CatalogEntry:
    """Find an entry by catalogue key. An unknown or disabled name reads the same; one the
    user's tier leaves out says so (the pricing page lists the tiers anyway)."""
    key = _strip_model_name(name)
    # The user's own model first: a staff upload may later take a name a member already uses.
    # Chosen here among the few rows of that name, not by an ORDER BY CASE (costly to compile).
    own = getattr(user, "pk", None)
    names = None if getattr(user, "is_staff", False) else allowed_model_names(user)
    entries = NAMED_ENTRIES.objects(
        own is None, names is None, owner=own, kind=kind, name=key, names=names or []
    )
    entry = min(entries, key=lambda e: (e.owner_id != own, e.pk), default=None)
    label = {"checkpoint": "model", "lora": "LoRA", "vae": "VAE", "controlnet": "ControlNet"}.get(
        kind, kind
    )
    if entry is None:
        if CatalogEntry.objects.public().filter(kind=kind, name=key, enabled=True).exists():
            raise SubmissionError(
                field, f"your membership tier does not include the {label} {name!r}", 403
            )
        raise SubmissionError(field, f"unknown {label} {name!r}", 422)
    if not entry.available:
        raise SubmissionError(field, f"{label} {name!r} is not available on any worker now", 409)
    return entry


# The entries of one name a member may pick (`CatalogEntryQuerySet.visible_to`), compiled once
# per shape: anonymous or not, tier limited to some checkpoints or not.
NAMED_ENTRIES = CompiledQuery(
    lambda anonymous, every_model, owner, kind, name, names: (
        CatalogEntry.objects.visible_with(
            None if anonymous else owner, None if every_model else names
        )
        .filter(kind=kind, name=name)
        .order_by()
    ),
    owner="value",
    kind="value",
    name="value",
    names="text_list",
)


def _checkpoint(user: Any, params: dict[str, Any]) -> CatalogEntry:
    name = params.get("checkpoint")
    if name:
        if not isinstance(name, str):
            raise SubmissionError("checkpoint", "checkpoint must be a model name")
        return _lookup(user, CatalogEntry.Kind.CHECKPOINT, name, "checkpoint")
    return default_checkpoint(user) or _no_checkpoint()


def _no_checkpoint() -> CatalogEntry:
    raise SubmissionError("checkpoint", "no model is available: ask an admin to add one", 409)


def default_checkpoint(user: Any) -> CatalogEntry | None:
    """The user's own default model if still usable, else the first usable one (demo last)."""
    usable = CatalogEntry.objects.usable_by(user).checkpoints()
    chosen = (
        UserGenerationSettings.objects.filter(user=user)
        .values_list("default_checkpoint_id", flat=True)
        .first()
    )
    if chosen:
        entry = usable.filter(pk=chosen).first()
        if entry:
            return entry
    return usable.order_by("is_demo", "name").first()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _init_image(raw: Any, limits: GenerationLimits) -> bytes:
    """The img2img source as a clean re-encoded RGB PNG."""
    return _png(uploaded_image(raw, limits, "init_image").convert("RGB"))


def upscaler_models(user: Any) -> list[str]:
    """Names of the model upscalers (ESRGAN-class) the user may use, besides passes.UPSCALERS."""
    rows = CatalogEntry.objects.usable_by(user).filter(kind=CatalogEntry.Kind.UPSCALER)
    return list(rows.order_by("name").values_list("name", flat=True))


def _mask(raw: Any, limits: GenerationLimits, source_png: bytes, inpaint: InpaintParams) -> bytes:
    """The inpaint mask as a black/white PNG at the source's size (A1111: white, or the painted
    alpha of a transparent layer, is repainted; a mask of another size is stretched)."""
    with Image.open(io.BytesIO(source_png)) as source:
        size = source.size
    mask = prepare_mask(uploaded_image(raw, limits, "mask"), size, invert=False)
    effective = ImageOps.invert(mask) if inpaint["inpainting_mask_invert"] else mask
    if mask_is_empty(effective) and not any(outpaint_sides(inpaint)):
        state = "all white and inverted" if inpaint["inpainting_mask_invert"] else "all black"
        raise SubmissionError("mask", f"mask is {state}: there is nothing to repaint", 422)
    return _png(mask)


def _bool(params: dict[str, Any], name: str, prefix: str = "") -> bool:
    value = params.get(name)
    if value in (True, False, 0, 1) and not isinstance(value, float):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "0", "1"):
        return value.lower() in ("true", "on", "1")
    raise SubmissionError(prefix + name, f"{prefix + name} must be true or false")


def _inpaint(raw: Any, limits: GenerationLimits) -> InpaintParams | None:
    """The inpaint options; `mask_blur` (A1111's) sets both blur axes not given on their own."""
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise SubmissionError("inpaint", "inpaint must be an object or null")
    if unknown := sorted(set(raw) - INPAINT_FIELDS - {"mask_blur"}):
        raise SubmissionError(f"inpaint.{unknown[0]}", f"inpaint has no field {unknown[0]!r}")
    given: dict[str, Any] = {**INPAINT_DEFAULTS}
    if raw.get("mask_blur") is not None:
        given["mask_blur_x"] = given["mask_blur_y"] = raw["mask_blur"]
    given |= {k: v for k, v in raw.items() if v is not None and k != "mask_blur"}
    p = "inpaint."
    inpaint = InpaintParams(
        mask_blur_x=_int(given, "mask_blur_x", 0, MAX_MASK_BLUR, prefix=p),
        mask_blur_y=_int(given, "mask_blur_y", 0, MAX_MASK_BLUR, prefix=p),
        inpainting_fill=_int(given, "inpainting_fill", 0, len(INPAINT_FILLS) - 1, prefix=p),
        inpaint_full_res=_bool(given, "inpaint_full_res", prefix=p),
        inpaint_full_res_padding=_int(
            given, "inpaint_full_res_padding", 0, MAX_MASK_PADDING, prefix=p
        ),
        inpainting_mask_invert=_bool(given, "inpainting_mask_invert", prefix=p),
        initial_noise_multiplier=_float(given, "initial_noise_multiplier", *NOISE_MULTIPLIER, p),
        outpaint_left=0,
        outpaint_top=0,
        outpaint_right=0,
        outpaint_bottom=0,
    )
    for side in OUTPAINT_SIDES:
        inpaint[side] = _int(given, side, 0, limits.max_side, prefix=p)  # type: ignore[literal-required]
        if inpaint[side] % 8:  # type: ignore[literal-required]
            raise SubmissionError(p + side, f"{p + side} must be a multiple of 8", 422)
    return inpaint


def _check_inpaint_size(
    params: GenerationParams, source_png: bytes, limits: GenerationLimits
) -> None:
    """The canvas an inpaint job denoises, and the image it makes, stay within the limits."""
    inpaint = params.get("inpaint")
    if not inpaint or not any(outpaint_sides(inpaint)):
        return
    width, height = denoised_size(params)
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise SubmissionError(
            "inpaint",
            f"the outpainted canvas {width}x{height} exceeds the limit of "
            f"{limits.max_side} per side and {limits.max_pixels} pixels",
            422,
        )
    left, top, right, bottom = outpaint_sides(inpaint)
    with Image.open(io.BytesIO(source_png)) as source:
        out_w, out_h = source.width + left + right, source.height + top + bottom
    if inpaint["inpaint_full_res"] and out_w * out_h > limits.max_init_image_pixels:
        raise SubmissionError(
            "inpaint",
            f"the outpainted image {out_w}x{out_h} exceeds the limit of "
            f"{limits.max_init_image_pixels} pixels",
            422,
        )


def _hires(raw: Any, limits: GenerationLimits, user: Any) -> HiresParams | None:
    if not raw:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise SubmissionError("hires", "hires must be an object or null")
    if unknown := sorted(set(raw) - HIRES_FIELDS):
        raise SubmissionError(f"hires.{unknown[0]}", f"hires has no field {unknown[0]!r}")
    given = {**HIRES_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    upscaler = given["upscaler"] or HIRES_DEFAULTS["upscaler"]
    if upscaler not in UPSCALERS and upscaler not in (models := upscaler_models(user)):
        raise SubmissionError(
            "hires.upscaler",
            f"unknown upscaler {upscaler!r}; valid: {', '.join([*UPSCALERS, *models])}",
            422,
        )
    hires = HiresParams(
        scale=_float(given, "scale", *HIRES_SCALE, prefix="hires."),
        resize_x=_int(given, "resize_x", 0, limits.max_side, prefix="hires."),
        resize_y=_int(given, "resize_y", 0, limits.max_side, prefix="hires."),
        upscaler=upscaler,
        second_pass_steps=_int(given, "second_pass_steps", 0, limits.max_steps, prefix="hires."),
        denoising_strength=_float(given, "denoising_strength", 0.0, 1.0, prefix="hires."),
    )
    for name, value in (("resize_x", hires["resize_x"]), ("resize_y", hires["resize_y"])):
        if value % 8:
            raise SubmissionError(f"hires.{name}", f"hires {name} must be a multiple of 8", 422)
    return hires


# --- ControlNet units ------------------------------------------------------------------------

CONTROL_RESIZE_MODES = (0, 2)  # just resize, crop and resize, resize and fill


def _controlnet(
    user: Any, raw: Any, limits: GenerationLimits, mode: str, checkpoint: CatalogEntry
) -> tuple[list[ControlNetUnit], dict[str, bytes]]:
    """The request's ControlNet units, checked and normalised, and their images by sha256."""
    if not raw:
        return [], {}
    if not isinstance(raw, list):
        raise SubmissionError("controlnet", "controlnet must be a list of units")
    if len(raw) > limits.max_controlnet_units:
        raise SubmissionError(
            "controlnet",
            f"{len(raw)} ControlNet units; your tier's limit is {limits.max_controlnet_units}",
            422,
        )
    units, images = [], {}
    for index, given in enumerate(raw):
        unit, png = _controlnet_unit(user, given, f"controlnet[{index}].", limits, mode, checkpoint)
        units.append(unit)
        if png is not None and unit["image_sha256"]:
            images[unit["image_sha256"]] = png
    return units, images


def _controlnet_unit(
    user: Any,
    raw: Any,
    prefix: str,
    limits: GenerationLimits,
    mode: str,
    checkpoint: CatalogEntry,
) -> tuple[ControlNetUnit, bytes | None]:
    if not isinstance(raw, dict):
        raise SubmissionError(prefix.rstrip("."), f"{prefix.rstrip('.')} must be an object")
    if unknown := sorted(set(raw) - CONTROLNET_UNIT_FIELDS):
        raise SubmissionError(
            prefix + unknown[0],
            f"a ControlNet unit has no field {unknown[0]!r}; the fields are "
            f"{', '.join(sorted(CONTROLNET_UNIT_FIELDS))}",
            422,
        )
    given = {**CONTROLNET_UNIT_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    module = given["module"]
    if module not in (available := available_preprocessors(get_redis())):
        raise SubmissionError(
            prefix + "module",
            f"unknown preprocessor {module!r}; available: {', '.join(available)}",
            422,
        )
    model = given.get("model")
    if not model or not isinstance(model, str):
        raise SubmissionError(prefix + "model", f"{prefix}model must name a ControlNet model")
    entry = _lookup(user, CatalogEntry.Kind.CONTROLNET, model, prefix + "model")
    if "unknown" not in (entry.family, checkpoint.family) and entry.family != checkpoint.family:
        raise SubmissionError(
            prefix + "model",
            f"ControlNet {entry.name!r} is for {entry.family} models; "
            f"{checkpoint.name!r} is {checkpoint.family}",
            422,
        )
    control_mode = given["control_mode"]
    if control_mode not in CONTROL_MODES:
        raise SubmissionError(
            prefix + "control_mode",
            f"{prefix}control_mode must be one of {', '.join(CONTROL_MODES)}",
            422,
        )
    pixel_perfect = given["pixel_perfect"]
    if not isinstance(pixel_perfect, bool):
        raise SubmissionError(prefix + "pixel_perfect", f"{prefix}pixel_perfect must be true/false")
    png, sha = None, None
    if given.get("image"):
        png = _png(uploaded_image(given["image"], limits, prefix + "image").convert("RGB"))
        sha = hashlib.sha256(png).hexdigest()
    elif mode != Job.Mode.IMG2IMG:
        raise SubmissionError(
            prefix + "image", f"{prefix}image is needed (only img2img may use its source)"
        )
    unit = ControlNetUnit(
        image_sha256=sha,
        module=module,
        model=entry.name,
        weight=_float(given, "weight", 0.0, 2.0, prefix=prefix),
        guidance_start=_float(given, "guidance_start", 0.0, 1.0, prefix=prefix),
        guidance_end=_float(given, "guidance_end", 0.0, 1.0, prefix=prefix),
        control_mode=control_mode,
        resize_mode=_int(given, "resize_mode", *CONTROL_RESIZE_MODES, prefix=prefix),
        pixel_perfect=pixel_perfect,
        processor_res=_int(given, "processor_res", *PROCESSOR_RES_RANGE, prefix=prefix),
        threshold_a=_threshold(raw, module, "threshold_a", prefix),
        threshold_b=_threshold(raw, module, "threshold_b", prefix),
    )
    if unit["guidance_start"] >= unit["guidance_end"]:
        raise SubmissionError(
            prefix + "guidance_end", f"{prefix}guidance_end must be above guidance_start", 422
        )
    return unit, png


def _threshold(raw: dict[str, Any], module: str, name: str, prefix: str) -> float:
    """A unit's threshold_a/b: within its module's slider (left out or the extension's -1:
    the slider's default)."""
    value = raw.get(name)
    if value is None or (value == -1 and not isinstance(value, bool)):
        return threshold_default(module, name)
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise SubmissionError(prefix + name, f"{prefix}{name} must be a number") from None
    if problem := threshold_problem(module, name, number):
        raise SubmissionError(prefix + name, prefix + problem, 422)
    return number


def _check_final_size(params: GenerationParams, limits: GenerationLimits) -> None:
    """The images a job makes (the hires target included) stay within the tier's limits."""
    if not params["hires"]:
        return
    width, height = final_size(params)
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise SubmissionError(
            "hires",
            f"the hires target {width}x{height} exceeds the limit of "
            f"{limits.max_side} per side and {limits.max_pixels} pixels",
            422,
        )


def _loras(user: Any, params: GenerationParams) -> list[str]:
    """Check both prompts as the engine will parse them; the catalogue names of their LoRAs."""
    names = set()
    prompts = (("prompt", params["prompt"]), ("negative_prompt", params["negative_prompt"]))
    for field, text in prompts:
        try:
            tags = check_prompt(text)
        except PromptSyntaxError as exc:
            raise SubmissionError(field, f"{field}: {exc}", 422) from None
        for tag in tags:
            names.add(_lookup(user, CatalogEntry.Kind.LORA, tag.name, field).name)
    return sorted(names)


def _refuse_unknown_fields(raw: dict[str, Any]) -> None:
    block = {"train"} if raw.get("mode") == Job.Mode.TRAIN else set()  # the kind's own block
    unknown = sorted(set(raw) - REQUEST_FIELDS - DERIVED_FIELDS - block)
    if unknown:
        raise SubmissionError(
            unknown[0],
            f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(REQUEST_FIELDS))} "
            "(A1111 spellings are for /sdapi/v1/)",
        )


def validate_params(user: Any, raw: dict[str, Any]) -> ValidatedJob:
    """Check one request (the fields of gpu_worker.params) and normalise it into the
    GenerationParams the job stores and the worker runs; raises SubmissionError naming the
    field and limit. Derived fields (`loras`) are recomputed, whatever a request says."""
    if not isinstance(raw, dict):
        raise SubmissionError("params", "the request body must be a JSON object")
    _refuse_unknown_fields(raw)
    limits = limits_for(user)
    checkpoint = _checkpoint(user, raw)
    base = {**DEFAULTS, **(checkpoint.default_params or {})}
    given = {**base, **{k: v for k, v in raw.items() if v is not None}}
    given["prompt"], given["negative_prompt"] = _styled(user, given)

    init_raw = given.get("init_image")
    mode = given.get("mode") or ("img2img" if init_raw else "txt2img")
    if mode == Job.Mode.EXTRAS:
        raise SubmissionError("mode", "an extras job (upscale) is submitted at /api/v1/extras/")
    # merges have their own service (generation.merges); training comes here with its block
    if mode not in (Job.Mode.TXT2IMG, Job.Mode.IMG2IMG, Job.Mode.TRAIN):
        raise SubmissionError("mode", "mode must be txt2img, img2img or train")
    try:
        choice = resolve_sampler(str(given["sampler"]), str(given.get("scheduler") or ""))
    except UnknownSampler as exc:
        field = "scheduler" if "schedule" in str(exc) else "sampler"
        raise SubmissionError(field, str(exc), 422) from None

    params = GenerationParams(
        mode=cast(GenerationMode, mode),  # checked above
        checkpoint=checkpoint.name,
        vae=_vae(user, given.get("vae")),
        prompt=_text(given, "prompt", limits.max_prompt_chars),
        negative_prompt=_text(given, "negative_prompt", limits.max_prompt_chars),
        sampler=choice.sampler.name,
        scheduler=choice.schedule.label,
        steps=_int(given, "steps", 1, limits.max_steps),
        cfg_scale=_float(given, "cfg_scale", limits.min_cfg, limits.max_cfg),
        width=_side(given, "width", limits),
        height=_side(given, "height", limits),
        seed=_int(given, "seed", -1, MAX_SEED),
        batch_size=_int(given, "batch_size", 1, limits.max_images),
        n_iter=_int(given, "n_iter", 1, limits.max_images),
        clip_skip=_int(given, "clip_skip", 1, MAX_CLIP_SKIP),
        denoising_strength=_float(given, "denoising_strength", 0.0, 1.0),
        resize_mode=0,
        hires=None,
        loras=[],
        **_toolset(given, mode),  # type: ignore[typeddict-item]
        inpaint=None,
        controlnet=[],
    )
    if params["width"] * params["height"] > limits.max_pixels:
        raise SubmissionError(
            "width",
            f"{params['width']}x{params['height']} is more than the limit of "
            f"{limits.max_pixels} pixels",
            422,
        )
    images = params["batch_size"] * params["n_iter"]
    if images > limits.max_images:
        raise SubmissionError(
            "batch_size", f"batch_size x n_iter is {images}; the limit is {limits.max_images}", 422
        )
    if params["seed"] == -1:
        params["seed"] = secrets.randbelow(MAX_SEED + 1 - images)
    if params["subseed"] == -1:
        params["subseed"] = secrets.randbelow(MAX_SEED + 1 - images)
    params["loras"] = _loras(user, params)
    params.update(_faces(user, given))

    init_png = mask_png = None
    if mode == Job.Mode.IMG2IMG:
        if not init_raw:
            raise SubmissionError("init_image", "img2img needs an init_image")
        init_png = _init_image(init_raw, limits)
        params["resize_mode"] = _int(given, "resize_mode", *RESIZE_MODES)
        inpaint = _inpaint(given.get("inpaint"), limits)
        if given.get("mask") and inpaint is None:
            inpaint = InpaintParams(**INPAINT_DEFAULTS)
        if inpaint is not None:
            if given.get("mask"):
                mask_png = _mask(given["mask"], limits, init_png, inpaint)
            elif not any(outpaint_sides(inpaint)):
                raise SubmissionError("mask", "inpainting needs a mask or sides to outpaint", 422)
            params["inpaint"] = inpaint
            _check_inpaint_size(params, init_png, limits)
    elif mode == Job.Mode.TRAIN:  # LoRA training: its block, the rest describes the samples
        try:
            params["train"] = validate_training(user, raw.get("train"), checkpoint)
        except TrainingRequestError as exc:
            raise SubmissionError(exc.field, exc.message, exc.status) from None
    elif given.get("mask") or given.get("inpaint"):
        field = "mask" if given.get("mask") else "inpaint"
        raise SubmissionError(field, f"{field} needs img2img with an init_image", 422)
    else:
        params["hires"] = _hires(given.get("hires"), limits, user)
        _check_final_size(params, limits)
    if problem := steps_problem(params):
        raise SubmissionError(*problem, 422)
    params["controlnet"], control_pngs = _controlnet(
        user, given.get("controlnet"), limits, mode, checkpoint
    )
    for index, unit in enumerate(params["controlnet"]):
        if unit["module"] in NEEDS_MASK and not params.get("inpaint"):
            raise SubmissionError(
                f"controlnet[{index}].module",
                f"{unit['module']} needs an inpaint job (img2img with a mask)",
                422,
            )

    return ValidatedJob.priced(params, checkpoint, init_png, control_pngs, mask_png)


def _styled(user: Any, given: dict[str, Any]) -> tuple[Any, Any]:
    """Both prompts with the request's saved styles applied (the job keeps the result, as
    A1111's infotext does); a non-text prompt is left for _text to refuse."""
    prompt, negative = given.get("prompt") or "", given.get("negative_prompt") or ""
    if not isinstance(prompt, str) or not isinstance(negative, str):
        return prompt, negative
    try:
        return apply_styles(user, given.get("styles"), prompt, negative)
    except StyleError as exc:
        raise SubmissionError(exc.field, exc.message, exc.status) from None


def _toolset(given: dict[str, Any], mode: str) -> dict[str, Any]:  # the block's keys only
    """Variation seeds and tiling (the GenerationParams block of issue 17)."""
    fields: dict[str, Any] = {
        "subseed": _int(given, "subseed", -1, MAX_SEED),
        "subseed_strength": _float(given, "subseed_strength", 0.0, 1.0),
        # a form's unchecked box sends nothing, a query string an empty value: off
        "tiling": given.get("tiling") not in (None, "") and _bool(given, "tiling"),
    }
    # A1111 spells "off" -1 or 0; it resizes only when both sides are set
    w = _int(given, "seed_resize_from_w", -1, MAX_SEED_RESIZE)
    h = _int(given, "seed_resize_from_h", -1, MAX_SEED_RESIZE)
    resize = (w, h) if w > 0 and h > 0 else (0, 0)
    fields["seed_resize_from_w"], fields["seed_resize_from_h"] = resize
    if mode == Job.Mode.IMG2IMG:
        # diffusers' img2img draws its own noise from the generator: no variation there
        for name in ("subseed_strength", "seed_resize_from_w"):
            if fields[name]:
                raise SubmissionError(name, f"{name} is for txt2img only", 422)
    return fields


def _faces(user: Any, given: dict[str, Any]) -> dict[str, Any]:
    """A1111's restore_faces (an unchecked box sends nothing), its model (generation.face_models)
    and CodeFormer's weight, as the job stores them."""
    wanted = given.get("restore_faces") not in (None, "") and _bool(given, "restore_faces")
    choice = given.get("face_restoration_model") or ""
    try:
        model = restore_faces_choice(user, wanted, choice)
    except FaceChoiceError as exc:
        raise SubmissionError(exc.field, exc.message, exc.status) from None
    fields: dict[str, Any] = {"restore_faces": wanted, "face_restorer": model}
    if wanted:
        fields["face_restoration_model"] = choice
        given.setdefault("code_former_weight", CODE_FORMER_WEIGHT)
        fields["code_former_weight"] = _float(given, "code_former_weight", 0.0, 1.0)
    return fields


def _vae(user: Any, name: Any) -> str | None:
    if name in (None, "", "Automatic", "None", "none"):
        return None
    if not isinstance(name, str):
        raise SubmissionError("vae", "vae must be a VAE name or null")
    return _lookup(user, CatalogEntry.Kind.VAE, name, "vae").name


# --- the services ----------------------------------------------------------------------------


def quote_job(user: Any, params: dict[str, Any]) -> ValidatedJob:
    """Validate and price without submitting (the page's live price)."""
    return validate_params(user, params)


def existing_job(user: Any, key: str | None) -> Job | None:
    """The job a repeated idempotency key first created, if any."""
    if not key:
        return None
    return Job.objects.filter(owner=user, idempotency_key=key).first()


def submit_job(
    user: Any,
    params: dict[str, Any],
    idempotency_key: str | None = None,
    *,
    remember: bool = True,
) -> Job:
    """Validate, price, record the job and its credit hold in one transaction; dispatch after
    commit. A repeated idempotency key returns the job it first created. `remember`: the
    parameters become the generator form's next defaults (the page's submissions; the APIs'
    leave the form as the member left it, as A1111's API leaves its UI)."""
    check_idempotency_key(idempotency_key)
    if (job := existing_job(user, idempotency_key)) is not None:
        return job
    valid = validate_params(user, params)
    return record_job(
        user, valid, idempotency_key, chosen_scheduler=params.get("scheduler"), remember=remember
    )


def check_idempotency_key(key: str | None) -> None:
    if key is not None and (not key or len(key) > 200):
        raise SubmissionError("Idempotency-Key", "Idempotency-Key must be 1 to 200 characters")


def record_job(
    user: Any,
    valid: ValidatedJob,
    idempotency_key: str | None = None,
    *,
    chosen_scheduler: Any = None,
    remember: bool = True,
) -> Job:
    """Write a validated job of any kind with its credit hold in one transaction (within the
    user's unfinished-jobs cap) and schedule it after commit; `remember` keeps its parameters as
    the generator form's next defaults."""
    limits = limits_for(user)
    try:
        with transaction.atomic(), queue_answering():
            # One submission per user at a time, so the unfinished-jobs cap cannot be raced.
            # NO KEY UPDATE: a settlement's deferred FK check on this row (KEY SHARE) must not
            # wait for us while we wait for its credit account (accounts/ledger.py, lock order).
            LOCK_USER.rows(pk=user.pk)
            if (job := existing_job(user, idempotency_key)) is not None:
                return job
            if valid.params["mode"] == Job.Mode.TRAIN:
                try:
                    check_training_slots(user)
                except TrainingRequestError as exc:
                    raise SubmissionError(exc.field, exc.message, exc.status) from None
            unfinished = UNFINISHED.count(owner=user.pk)
            if unfinished >= limits.max_unfinished_jobs:
                raise SubmissionError(
                    "jobs",
                    f"you have {unfinished} unfinished jobs; the limit is "
                    f"{limits.max_unfinished_jobs}: wait for one to finish",
                    429,
                )
            job = Job(
                owner=user,
                mode=valid.params["mode"],
                params=valid.params,
                checkpoint=valid.checkpoint,
                price=valid.price,
                total_steps=valid.total_steps,
                idempotency_key=idempotency_key or "",
            )
            if valid.init_png:
                job.init_image.save("init.png", ContentFile(valid.init_png), save=False)
            store_control_images(valid.control_pngs)
            if valid.mask_png:
                job.mask_image.save("mask.png", ContentFile(valid.mask_png), save=False)
            job.save(force_insert=True)
            try:
                hold_credits(user, job)
            except InsufficientCredits as exc:
                raise SubmissionError("price", str(exc) or "not enough credits", 402) from None
            if remember:
                remember_params(user, valid.params, chosen_scheduler=chosen_scheduler)
            # After commit, outside the write lock: wake the dispatcher, which schedules and
            # then tells the owner its place (off this request).
            dispatch_on_commit(job)
            # A new job has no images yet: its serializer need not ask the database.
            job._prefetched_objects_cache = {"images": no_images()}  # type: ignore[attr-defined]
    except IntegrityError:
        # The same key raced in from another request: answer with the job that won.
        if (job := existing_job(user, idempotency_key)) is not None:
            return job
        raise
    return job


def no_images() -> QuerySet[JobImage]:
    """An empty queryset already evaluated, as a prefetch leaves one: iterating it compiles no
    SQL (an unevaluated `.none()` still builds and compiles its query on every response)."""
    none = JobImage.objects.none()
    none._result_cache = []
    return none


# Fixed shapes, compiled once (accounts/compiled_queries.py says why).
LOCK_USER = CompiledQuery(
    lambda pk: (
        get_user_model()
        .objects.select_for_update(no_key=True)
        .filter(pk=pk)
        .order_by()
        .values_list("pk")
    ),
    pk="value",
)
UNFINISHED = CompiledQuery(
    lambda owner: Job.objects.owned_by(owner).unfinished().order_by().values_list("pk"),
    owner="value",
)


def remember_params(user: Any, params: GenerationParams, chosen_scheduler: Any = None) -> None:
    last_params = dict(params)
    # The form comes back as the user left it: "Automatic" stays Automatic, not what it
    # resolved to for this sampler (which would go stale on switching sampler).
    if isinstance(chosen_scheduler, str) and chosen_scheduler.strip().lower() == "automatic":
        last_params["scheduler"] = "Automatic"
    # One UPDATE for the usual case (the row exists), not a read then a write.
    stored = UserGenerationSettings.objects.filter(user=user).update(
        last_params=last_params, updated_at=timezone.now()
    )
    if not stored:
        settings_row = UserGenerationSettings.for_user(user)
        settings_row.last_params = last_params
        settings_row.save(update_fields=["last_params", "updated_at"])


def set_default_checkpoint(user: Any, name: str) -> CatalogEntry:
    """The user's own model choice (never global)."""
    entry = _lookup(user, CatalogEntry.Kind.CHECKPOINT, name, "checkpoint")
    settings_row = UserGenerationSettings.for_user(user)
    settings_row.default_checkpoint = entry
    settings_row.save(update_fields=["default_checkpoint", "updated_at"])
    return entry


def can_manage(user: Any, job: Job) -> bool:
    return job.owner_id == user.pk or bool(getattr(user, "is_staff", False))


def cancel_job(user: Any, job: Job) -> Job:
    """Cancel a waiting job at once. A job handed to a worker is only asked to stop: the
    worker may have started it already, so its own event ('cancelled' with the steps that ran,
    or 'succeeded') settles the hold. Only the owner or staff; others are told the job does
    not exist."""
    if not can_manage(user, job):
        raise SubmissionError("job", "no such job", 404)
    for _attempt in range(3):  # the job may move (handed out, started, taken back) meanwhile
        if job.status == Job.Status.QUEUED and not job.worker_id:
            if cancel_queued_job(job):
                # An earlier hand-out's worker may still hold a message: the flag skips it.
                _set_cancel_flag(job, required=False)
                _cancel_class_job(user, job)
                return job
        elif job.status in Job.UNFINISHED:
            _set_cancel_flag(job, required=True)
            if job.mark_cancel_requested():
                return job
        else:
            raise SubmissionError("job", f"the job already finished ({job.status})", 409)
        job.refresh_from_db()
    raise SubmissionError("job", "the job is changing hands right now; try cancelling again", 409)


def _cancel_class_job(user: Any, training: Job) -> None:
    """A training cancelled while it waited for its class images: their job, made only for it,
    is cancelled too (refunded as any cancelled job)."""
    if training.after_id is None:
        return
    class_job = Job.objects.filter(pk=training.after_id, status__in=Job.UNFINISHED).first()
    if class_job is None:
        return
    # finished meanwhile: the member keeps (and pays for) its images
    with contextlib.suppress(SubmissionError):
        cancel_job(user, class_job)


def _set_cancel_flag(job: Job, required: bool) -> None:
    try:
        get_redis().set(CANCEL_KEY.format(job_id=job.pk), "interrupt", ex=CANCEL_TTL_SECONDS)
    except (redis.RedisError, OSError):
        logger.warning("could not set the cancel flag of job %s", job.pk, exc_info=True)
        if required:
            raise SubmissionError(
                "job", "the job queue is unreachable right now; try cancelling again", 503
            ) from None
