"""A1111 txt2img/img2img request bodies -> the submission service's parameters.

A1111's API defaults apply to every field a client leaves out (steps 50, Euler, CFG 7, 512x512:
not the generator page's defaults, nor a checkpoint's own). Fields clients send at neutral values
(tiling false, script_args [], ...) are accepted; a value
that asks for a feature the engine lacks is refused with 422 naming the field. Unknown fields are
ignored, as A1111's own request models ignore them. `alwayson_scripts` carries ControlNet units
(a1111/controlnet.py); no other script exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from generation.a1111.catalog import find_checkpoint, upscaler_models
from generation.a1111.controlnet import units_from_scripts
from generation.a1111.errors import A1111Error
from gpu_worker.infotext import infotext_to_fields, parse_infotext
from gpu_worker.passes import UPSCALERS

SHARED_DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "styles": [],
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "sampler_name": None,
    "scheduler": None,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 50,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": None,
    "tiling": None,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "eta": None,
    "denoising_strength": 0.75,
    "s_min_uncond": None,
    "s_churn": None,
    "s_tmax": None,
    "s_tmin": None,
    "s_noise": None,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None,
    "refiner_switch_at": None,
    "disable_extra_networks": False,
    "firstpass_image": None,
    "comments": None,
    "force_task_id": None,
    "sampler_index": "Euler",
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
    "infotext": None,
}
TXT2IMG_DEFAULTS: dict[str, Any] = {
    **SHARED_DEFAULTS,
    "enable_hr": False,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_scale": 2.0,
    "hr_upscaler": None,
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_checkpoint_name": None,
    "hr_sampler_name": None,
    "hr_scheduler": None,
    "hr_prompt": "",
    "hr_negative_prompt": "",
}
IMG2IMG_DEFAULTS: dict[str, Any] = {
    **SHARED_DEFAULTS,
    "init_images": None,
    "resize_mode": 0,
    "image_cfg_scale": None,
    "mask": None,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "mask_blur": None,
    "mask_round": True,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None,
    "latent_mask": None,
    "include_init_images": False,
}
DEFAULTS = {"txt2img": TXT2IMG_DEFAULTS, "img2img": IMG2IMG_DEFAULTS}

# Values that ask for nothing: anything else asks for a feature the engine does not have.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "eta": (None, 0, 1),
    "s_min_uncond": (None, 0),
    "s_churn": (None, 0),
    "s_tmin": (None, 0),
    "s_tmax": (None, 0, math.inf),
    "s_noise": (None, 1),
    "script_name": (None, "", "None"),
    "disable_extra_networks": (None, False),
    "refiner_checkpoint": (None, "", "None"),
    "firstpass_image": (None, ""),
    "firstphase_width": (None, 0),
    "firstphase_height": (None, 0),
    "latent_mask": (None, ""),
    "mask_round": (None, True),
}
FEATURES = {
    "script_name": gettext_lazy("scripts are not available"),
    "disable_extra_networks": gettext_lazy("LoRA tags are always applied"),
    "refiner_checkpoint": gettext_lazy("refiner checkpoints are not available"),
    "firstpass_image": gettext_lazy("a hires first-pass image is not available"),
    "firstphase_width": gettext_lazy("use hr_resize_x/hr_resize_y instead"),
    "firstphase_height": gettext_lazy("use hr_resize_x/hr_resize_y instead"),
    "latent_mask": gettext_lazy("a separate latent mask is not available"),
    "mask_round": gettext_lazy("masks are always rounded (soft masks are not available)"),
}
SAME = {"hr_checkpoint_name": "Use same checkpoint", "hr_sampler_name": "Use same sampler"}
SAME_SCHEDULER = ("Use same scheduler",)


@dataclass
class Translated:
    params: dict[str, Any]  # for generation.submission.submit_job
    parameters: dict[str, Any]  # the `parameters` echo of the response
    task_id: str | None
    send_images: bool


def _refuse(field: str, reason: str | Promise) -> A1111Error:
    return A1111Error(422, _("%(field)s: %(reason)s") % {"field": field, "reason": reason}, field)


def _neutral(field: str, value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value in NEUTRAL[field]
    try:
        return float(value) in NEUTRAL[field]
    except (TypeError, ValueError):
        return False


def _check_features(body: dict[str, Any], mode: str) -> None:
    for field in NEUTRAL:
        if field in body and not _neutral(field, body[field]):
            raise _refuse(field, FEATURES.get(field, _("only the default value is supported")))
    if mode == "txt2img" and body.get("enable_hr"):
        for field, same in SAME.items():
            if body.get(field) not in (None, "", same):
                raise _refuse(field, _("hires fix uses the same model and sampler"))
        if body.get("hr_scheduler") not in (None, "", *SAME_SCHEDULER):
            raise _refuse("hr_scheduler", _("hires fix uses the same scheduler"))
        for field, main in (("hr_prompt", "prompt"), ("hr_negative_prompt", "negative_prompt")):
            if body.get(field) not in (None, "", body.get(main)):
                raise _refuse(field, _("hires fix uses the same prompt"))


def _fill_from_infotext(body: dict[str, Any], mode: str) -> tuple[dict[str, Any], str | None]:
    """A1111's `infotext` field: its values fill every field the request did not set. Returns
    the filled body and the model the infotext named, if any."""
    text = body.get("infotext")
    if not text:
        return body, None
    if not isinstance(text, str):
        raise A1111Error(422, _("infotext must be text"), "infotext")
    parsed = parse_infotext(text)
    fields = infotext_to_fields(parsed)
    filled: dict[str, Any] = {}
    for ours, theirs in (
        ("prompt", "prompt"),
        ("negative_prompt", "negative_prompt"),
        ("steps", "steps"),
        ("sampler", "sampler_name"),
        ("scheduler", "scheduler"),
        ("cfg_scale", "cfg_scale"),
        ("seed", "seed"),
        ("width", "width"),
        ("height", "height"),
        ("denoising_strength", "denoising_strength"),
        ("subseed", "subseed"),
        ("subseed_strength", "subseed_strength"),
        ("seed_resize_from_w", "seed_resize_from_w"),
        ("seed_resize_from_h", "seed_resize_from_h"),
        ("tiling", "tiling"),
        ("restore_faces", "restore_faces"),
    ):
        if ours in fields:
            filled[theirs] = fields[ours]
    overrides: dict[str, Any] = {}
    if "checkpoint" in fields:
        overrides["sd_model_checkpoint"] = fields["checkpoint"]
    if "vae" in fields:
        overrides["sd_vae"] = fields["vae"]
    if fields.get("clip_skip", 1) > 1:
        overrides["CLIP_stop_at_last_layers"] = fields["clip_skip"]
    hires = {"Hires upscale", "Hires upscaler", "Hires resize-1"} & set(parsed)
    if mode == "txt2img" and hires and "Denoising strength" in parsed:  # A1111's own rule
        filled["enable_hr"] = True
        for key, name, convert in (
            ("Hires upscale", "hr_scale", float),
            ("Hires steps", "hr_second_pass_steps", int),
            ("Hires upscaler", "hr_upscaler", str),
            ("Hires resize-1", "hr_resize_x", int),
            ("Hires resize-2", "hr_resize_y", int),
        ):
            if key in parsed:
                try:
                    filled[name] = convert(parsed[key])
                except ValueError:
                    continue
    given = body.get("override_settings") or {}
    merged = {**filled, **body}
    merged["override_settings"] = {**overrides, **given} if isinstance(given, dict) else given
    return merged, overrides.get("sd_model_checkpoint")


def _value(body: dict[str, Any], defaults: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    return defaults[name] if value is None else value


def _checkpoint(user: Any, overrides: dict[str, Any], from_infotext: str | None) -> str | None:
    wanted = overrides.get("sd_model_checkpoint")
    if wanted is None:
        return None
    field = "override_settings.sd_model_checkpoint"
    if from_infotext is not None and wanted == from_infotext:
        # From a pasted infotext, possibly made elsewhere: a model we lack keeps the default.
        try:
            return find_checkpoint(user, wanted, field).name
        except A1111Error:
            return None
    return find_checkpoint(user, wanted, field).name


def _vae(overrides: dict[str, Any]) -> str | None:
    value = overrides.get("sd_vae")
    if value in (None, "", "Automatic", "None"):
        return None
    if not isinstance(value, str):
        field = "override_settings.sd_vae"
        raise A1111Error(422, _("%(field)s must be a VAE name") % {"field": field}, field)
    return value


def _hires(user: Any, body: dict[str, Any]) -> dict[str, Any] | None:
    if not body.get("enable_hr"):
        return None
    upscaler = _value(body, TXT2IMG_DEFAULTS, "hr_upscaler") or "Latent"
    models = [entry.name for entry in upscaler_models(user)]
    if upscaler not in UPSCALERS and upscaler not in models:
        valid = ", ".join([*UPSCALERS, *models])
        raise _refuse(
            "hr_upscaler",
            _("unknown upscaler %(name)r; valid: %(valid)s") % {"name": upscaler, "valid": valid},
        )
    return {
        "scale": _value(body, TXT2IMG_DEFAULTS, "hr_scale"),
        "resize_x": _value(body, TXT2IMG_DEFAULTS, "hr_resize_x"),
        "resize_y": _value(body, TXT2IMG_DEFAULTS, "hr_resize_y"),
        "upscaler": "Lanczos" if upscaler == "None" else upscaler,
        "second_pass_steps": _value(body, TXT2IMG_DEFAULTS, "hr_second_pass_steps"),
        "denoising_strength": _value(body, TXT2IMG_DEFAULTS, "denoising_strength"),
    }


def _init_image(body: dict[str, Any]) -> str:
    images = body.get("init_images")
    if not images:
        raise A1111Error(404, _("Init image not found"), "init_images")
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise A1111Error(400, _("init_images must be a list of base64 images"), "init_images")
    if len(set(images)) > 1:
        raise _refuse("init_images", _("one init image per request"))
    return images[0]


def _inpaint(body: dict[str, Any]) -> dict[str, Any] | None:
    """A1111's inpaint fields (its API defaults) into our inpaint object; none without a mask.
    `mask_blur`, when sent, sets both axes, as in A1111."""
    multiplier = body.get("initial_noise_multiplier")
    if not body.get("mask"):
        if multiplier not in (None, 1, 1.0):
            raise _refuse("initial_noise_multiplier", _("only available with a mask"))
        return None
    blur = body.get("mask_blur")
    return {
        "mask_blur_x": _value(body, IMG2IMG_DEFAULTS, "mask_blur_x") if blur is None else blur,
        "mask_blur_y": _value(body, IMG2IMG_DEFAULTS, "mask_blur_y") if blur is None else blur,
        "inpainting_fill": _value(body, IMG2IMG_DEFAULTS, "inpainting_fill"),
        "inpaint_full_res": _value(body, IMG2IMG_DEFAULTS, "inpaint_full_res"),
        "inpaint_full_res_padding": _value(body, IMG2IMG_DEFAULTS, "inpaint_full_res_padding"),
        "inpainting_mask_invert": _value(body, IMG2IMG_DEFAULTS, "inpainting_mask_invert"),
        "initial_noise_multiplier": 1.0 if multiplier is None else multiplier,
    }


def _mask(body: dict[str, Any]) -> str | None:
    mask = body.get("mask")
    if not mask:
        return None
    if not isinstance(mask, str):
        raise A1111Error(422, _("mask must be a base64 image"), "mask")
    return mask


def _task_id(body: dict[str, Any]) -> str | None:
    task_id = body.get("force_task_id")
    if task_id in (None, ""):
        return None
    if not isinstance(task_id, str) or len(task_id) > 200:
        raise A1111Error(
            422, _("force_task_id must be text of at most 200 characters"), "force_task_id"
        )
    return task_id


def translate(user: Any, raw: Any, mode: str) -> Translated:
    """Check an A1111 request body and build the service parameters (may read the catalogue)."""
    if not isinstance(raw, dict):
        raise A1111Error(422, _("the request body must be a JSON object"), "body")
    defaults = DEFAULTS[mode]
    _check_features(raw, mode)
    body, infotext_model = _fill_from_infotext(raw, mode)
    overrides = body.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise A1111Error(422, _("override_settings must be an object"), "override_settings")
    if overrides.get("eta_noise_seed_delta") not in (None, 0, "0"):
        raise _refuse("override_settings.eta_noise_seed_delta", _("ENSD is not available"))
    params: dict[str, Any] = {
        "mode": mode,
        "prompt": _value(body, defaults, "prompt"),
        "negative_prompt": _value(body, defaults, "negative_prompt"),
        "steps": _value(body, defaults, "steps"),
        "cfg_scale": _value(body, defaults, "cfg_scale"),
        "width": _value(body, defaults, "width"),
        "height": _value(body, defaults, "height"),
        "batch_size": _value(body, defaults, "batch_size"),
        "n_iter": _value(body, defaults, "n_iter"),
        "seed": _value(body, defaults, "seed"),
        # A1111: sampler_name wins; sampler_index ("Euler" by default) is the older spelling.
        "sampler": body.get("sampler_name") or _value(body, defaults, "sampler_index"),
        "scheduler": body.get("scheduler") or "Automatic",
        "denoising_strength": _value(body, defaults, "denoising_strength"),
        "clip_skip": overrides.get("CLIP_stop_at_last_layers") or 1,
        "vae": _vae(overrides),
        # variation seeds and tiling: the submission service checks them
        "subseed": _value(body, defaults, "subseed"),
        "subseed_strength": _value(body, defaults, "subseed_strength"),
        "seed_resize_from_w": _value(body, defaults, "seed_resize_from_w"),
        "seed_resize_from_h": _value(body, defaults, "seed_resize_from_h"),
        "tiling": bool(body.get("tiling")),
        "restore_faces": bool(body.get("restore_faces")),  # its model: face_models
        "styles": body.get("styles") or [],  # the caller's saved styles, applied at submission
    }
    only_masked = (  # A1111's API inpaints "only masked" unless told otherwise
        mode == "img2img"
        and bool(body.get("mask"))
        and bool(_value(body, IMG2IMG_DEFAULTS, "inpaint_full_res"))
    )
    params["controlnet"] = units_from_scripts(body.get("alwayson_scripts"), only_masked=only_masked)
    # A1111 settings, per call: restore_faces' restorer and CodeFormer's weight (None: default)
    params["face_restoration_model"] = overrides.get("face_restoration_model") or ""
    params["code_former_weight"] = overrides.get("code_former_weight")
    checkpoint = _checkpoint(user, overrides, infotext_model)
    if checkpoint:
        params["checkpoint"] = checkpoint
    if mode == "img2img":
        params["init_image"] = _init_image(body)
        params["resize_mode"] = _value(body, defaults, "resize_mode")
        params["mask"] = _mask(body)
        params["inpaint"] = _inpaint(body)
    else:
        params["hires"] = _hires(user, body)
    # The echo shows the request as run: what was sent, filled from the infotext and defaults.
    parameters = {k: v if body.get(k) is None else body[k] for k, v in defaults.items()}
    if mode == "img2img" and not body.get("include_init_images"):
        parameters["init_images"] = None
        parameters["mask"] = None
    return Translated(
        params=params,
        parameters=parameters,
        task_id=_task_id(body),
        send_images=bool(_value(body, defaults, "send_images")),
    )
