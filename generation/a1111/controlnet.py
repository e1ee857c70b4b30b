"""sd-webui-controlnet's API over the built-in ControlNet: the units of `alwayson_scripts`, and
the `/controlnet/*` endpoints its clients call first (webuiapi, the Krita and Photoshop plug-ins).

Only the "controlnet" script exists: any other script name, or a unit field the extension does
not have, is a 422 naming it. Fields the extension has but that ask for nothing here (low VRAM,
saving the detected map, batch folders at their empty defaults) are accepted and ignored.
"""

from __future__ import annotations

import base64
from typing import Any

from django.utils.translation import gettext as _

from generation.a1111.errors import A1111Error
from generation.broker import get_redis
from generation.controlnet_preview import decode_images, preview_maps
from generation.fleet import available_preprocessors
from generation.limits import limits_for
from generation.models import CatalogEntry
from generation.submission import SubmissionError
from gpu_worker.params import CONTROL_MODES, CONTROLNET_UNIT_DEFAULTS
from gpu_worker.preprocessors import MODULE_DETAIL

SCRIPT = "controlnet"
# The extension's version this API answers as (clients compare it to pick request shapes).
VERSION = 2
ARGS = f"alwayson_scripts.{SCRIPT}.args"

# A1111 spellings -> ours. Labels and indices are the extension's.
RESIZE_MODES = {
    "just resize": 0,
    "crop and resize": 1,
    "resize and fill": 2,
    # older labels
    "envelope (outer fit)": 1,
    "scale to fit (inner fit)": 2,
}
CONTROL_MODE_LABELS = {
    "balanced": "balanced",
    "my prompt is more important": "prompt",
    "controlnet is more important": "controlnet",
}
# Unit fields taken as they are (ours and the extension's names agree).
SAME_FIELDS = (
    "module",
    "model",
    "weight",
    "guidance_start",
    "guidance_end",
    "pixel_perfect",
    "processor_res",
    "threshold_a",
    "threshold_b",
)
# Fields the extension has that change nothing here, at any value.
IGNORED_FIELDS = frozenset(
    {"low_vram", "lowvram", "save_detected_map", "is_ui", "hr_option", "guidance"}
)
# Fields accepted only at the value that asks for nothing.
NEUTRAL_FIELDS: dict[str, tuple[Any, ...]] = {
    "input_mode": ("simple", "Simple", 0, None),
    "batch_images": ("", None, []),
    "output_dir": ("", None),
    "loopback": (False, None),
    "use_preview_as_input": (False, None),
    "inpaint_crop_input_image": (False, True, None),
    "mask": ("", None),
    "mask_image": ("", None),
}
UNIT_FIELDS = frozenset(
    {
        *SAME_FIELDS,
        *IGNORED_FIELDS,
        *NEUTRAL_FIELDS,
        "enabled",
        "image",
        "input_image",
        "control_mode",
        "guessmode",
        "resize_mode",
    }
)


def _refuse(field: str, reason: str) -> A1111Error:
    return A1111Error(422, f"{field}: {reason}", field)


def units_from_scripts(scripts: Any, *, only_masked: bool = False) -> list[dict[str, Any]]:
    """`alwayson_scripts` -> the request's `controlnet` units (disabled units left out).
    `only_masked`: the request inpaints "only masked", where every unit's image is cut to the
    mask's region as the extension's default `inpaint_crop_input_image` does."""
    if scripts in (None, {}):
        return []
    if not isinstance(scripts, dict):
        raise _refuse("alwayson_scripts", _("must be an object of script names"))
    for name in scripts:
        if name.lower() != SCRIPT:
            raise _refuse(
                "alwayson_scripts",
                _("unknown script %(name)r; available: %(script)s")
                % {"name": name, "script": SCRIPT},
            )
    script = next(iter(scripts.values()), None) or {}
    args = script.get("args", []) if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise _refuse(ARGS, _("must be a list of ControlNet units"))
    units = []
    for index, raw in enumerate(args):
        unit = _unit(raw, f"{ARGS}[{index}]", only_masked)
        if unit is not None:
            units.append(unit)
    return units


def _unit(raw: Any, prefix: str, only_masked: bool) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        raise _refuse(prefix, _("a ControlNet unit must be an object"))
    if unknown := sorted(set(raw) - UNIT_FIELDS):
        raise _refuse(f"{prefix}.{unknown[0]}", _("sd-webui-controlnet units have no such field"))
    for name, neutral in NEUTRAL_FIELDS.items():
        if name in raw and raw[name] not in neutral:
            raise _refuse(f"{prefix}.{name}", _("only the default value is supported"))
    if raw.get("enabled") is False or raw.get("model") in (None, "", "None", "none"):
        return None  # the extension skips a disabled unit, or one without a model
    if only_masked and raw.get("inpaint_crop_input_image") is False:
        # the extension would hand this unit the whole image; ours is always the masked region
        raise _refuse(
            f"{prefix}.inpaint_crop_input_image",
            _("only true is supported with inpaint_full_res (the unit's image is cropped)"),
        )
    unit: dict[str, Any] = {name: raw[name] for name in SAME_FIELDS if raw.get(name) is not None}
    if unit.get("module") in ("None", None):
        unit["module"] = "none"
    if unit.get("processor_res") == -1:  # the extension's "default"
        unit["processor_res"] = CONTROLNET_UNIT_DEFAULTS["processor_res"]
    for name in ("threshold_a", "threshold_b"):
        if unit.get(name) == -1:  # the module's own default (its slider's), as the extension does
            del unit[name]
    image = raw.get("image") or raw.get("input_image")
    if isinstance(image, dict):  # {"image": ..., "mask": ...}
        if image.get("mask"):
            raise _refuse(f"{prefix}.image.mask", _("unit masks are not supported"))
        image = image.get("image")
    unit["image"] = image or None
    if "resize_mode" in raw:
        unit["resize_mode"] = _choice(raw["resize_mode"], RESIZE_MODES, f"{prefix}.resize_mode")
    if raw.get("guessmode"):  # the old spelling of "ControlNet is more important"
        unit["control_mode"] = "controlnet"
    if "control_mode" in raw:
        modes: dict[Any, str] = {**CONTROL_MODE_LABELS, **dict(enumerate(CONTROL_MODES))}
        unit["control_mode"] = _choice(raw["control_mode"], modes, f"{prefix}.control_mode")
    return unit


def _choice(value: Any, choices: dict[Any, Any], field: str) -> Any:
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, bool) or key not in choices and key not in choices.values():
        valid = ", ".join(str(k) for k in choices)
        raise _refuse(
            field,
            _("unknown value %(value)r; valid: %(valid)s")
            % {
                "value": value,
                "valid": valid,
            },
        )
    return choices.get(key, key)


# --- the /controlnet/ endpoints --------------------------------------------------------------


def _models(user: Any) -> list[CatalogEntry]:
    kind = CatalogEntry.Kind.CONTROLNET
    return list(CatalogEntry.objects.usable_by(user).filter(kind=kind).order_by("name"))


def model_list(user: Any) -> dict[str, Any]:
    return {"model_list": [f"{e.name} [{e.short_hash[:8]}]" for e in _models(user)]}


def module_list() -> dict[str, Any]:
    """The built-in modules and the weight-based ones some worker has the weights of."""
    modules = available_preprocessors(get_redis())
    detail = {m: MODULE_DETAIL.get(m, {"model_free": False, "sliders": []}) for m in modules}
    return {"module_list": modules, "module_detail": detail}


def version() -> dict[str, Any]:
    return {"version": VERSION}


def scripts(user: Any) -> dict[str, list[str]]:
    """/sdapi/v1/scripts: ControlNet when the caller's tier allows a unit, nothing else."""
    usable = [SCRIPT] if limits_for(user).max_controlnet_units > 0 else []
    return {"txt2img": usable, "img2img": usable}


def detect(user: Any, body: Any) -> dict[str, Any]:
    """A preprocessor's maps of the given images, computed by a GPU worker
    (generation.controlnet_preview), in the extension's response shape."""
    if not isinstance(body, dict):
        raise A1111Error(422, _("the request body must be a JSON object"), "body")
    try:
        images = decode_images(user, body.get("controlnet_input_images"), "images")
        maps = preview_maps(
            user,
            body.get("controlnet_module"),
            images,
            _number(body, "controlnet_processor_res", 512),
            _number(body, "controlnet_threshold_a", None),  # None: the module's default
            _number(body, "controlnet_threshold_b", None),
        )
    except SubmissionError as exc:
        # our names -> the extension's: images[0] -> controlnet_input_images[0], ...
        prefix = "controlnet_input_" if exc.field.startswith("images") else "controlnet_"
        field = prefix + exc.field
        raise A1111Error(exc.status, exc.message.replace(exc.field, field, 1), field) from None
    return {"images": [base64.b64encode(png).decode("ascii") for png in maps], "info": "Success"}


def _number(body: dict[str, Any], name: str, default: float | None) -> Any:
    """A value, or the default where the extension's clients send none or -1."""
    value = body.get(name)
    return default if value is None or value == -1 else value
