"""The generator form filled from its own field names in the query string.

The gallery's Remix links and PNG Info's "Send to generator" open `/generate/?<field>=<value>&...`
(see gallery.remix.GENERATOR_FIELDS). Values are only shown in the form, never submitted from
here, so anything that does not parse is left out; the submission service validates the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gpu_worker.params import HIRES_DEFAULTS

TEXT_FIELDS = (
    "prompt",
    "negative_prompt",
    "checkpoint",
    "vae",
    "sampler",
    "scheduler",
    "face_restoration_model",
)
INT_FIELDS = (
    "steps",
    "width",
    "height",
    "seed",
    "clip_skip",
    "batch_size",
    "n_iter",
    "resize_mode",
    "subseed",
    "seed_resize_from_w",
    "seed_resize_from_h",
)
FLOAT_FIELDS = ("cfg_scale", "denoising_strength", "subseed_strength", "code_former_weight")
BOOL_FIELDS = ("tiling", "restore_faces")  # a checkbox: present and not "False" means on
# hires_<key> in the query, hires[<key>] in the parameters.
HIRES_FIELDS = {
    "scale": float,
    "resize_x": int,
    "resize_y": int,
    "upscaler": str,
    "second_pass_steps": int,
    "denoising_strength": float,
}
QUERY_FIELDS = (
    *TEXT_FIELDS,
    *INT_FIELDS,
    *FLOAT_FIELDS,
    *BOOL_FIELDS,
    "hires_enabled",
    *(f"hires_{key}" for key in HIRES_FIELDS),
)


def _to_float(text: str) -> float | None:
    try:
        number = float(text.strip())
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _to_int(text: str) -> int | None:
    try:
        return int(text.strip())
    except (TypeError, ValueError):
        number = _to_float(text)  # "20.0" is 20; "20.5" is not an int
        return int(number) if number is not None and number.is_integer() else None


_CONVERT = {int: _to_int, float: _to_float, str: lambda text: text}


def params_from_query(query: Mapping[str, str]) -> dict[str, Any]:
    """The generator parameters a query string names; empty when it names none.

    A query that names any field stands for a whole set of parameters, so its missing
    `hires_enabled` means the hires fix is off (like the form's unchecked box)."""
    if not any(name in query for name in QUERY_FIELDS):
        return {}
    params: dict[str, Any] = {}
    kinds = {
        **dict.fromkeys(TEXT_FIELDS, str),
        **dict.fromkeys(INT_FIELDS, int),
        **dict.fromkeys(FLOAT_FIELDS, float),
    }
    for name, kind in kinds.items():
        if name not in query:
            continue
        value = _CONVERT[kind](query[name])
        if value is not None:
            params[name] = value
    for name in BOOL_FIELDS:
        params[name] = query.get(name, "") not in ("", "False", "false", "0")
    params["hires"] = None
    if query.get("hires_enabled"):
        hires = {key: value for key, value in HIRES_DEFAULTS.items() if key in HIRES_FIELDS}
        for key, kind in HIRES_FIELDS.items():
            value = _CONVERT[kind](query.get(f"hires_{key}", ""))
            if value is not None and value != "":
                hires[key] = value
        params["hires"] = hires
    return params
