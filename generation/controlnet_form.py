"""The generator page's ControlNet section (templates/generation/_controlnet.html): what its
fields start from, their labels, and the units a form posted without JavaScript makes.

The page renders one fieldset per unit the member's tier allows (`cn-<i>-<field>`); without
JavaScript each has an "Enabled" box, with it (static/js/controlnet.js) "Add unit" and "Remove"
show and hide them and the script sends the same units through the REST API.
"""

from __future__ import annotations

from typing import Any

from django.utils.datastructures import MultiValueDict
from django.utils.translation import gettext_lazy

from generation.controlnet_prefill import KEPT, UNAVAILABLE, kept_image_url, match_model
from generation.models import CatalogEntry
from gpu_worker.params import CONTROL_MODES, CONTROLNET_UNIT_DEFAULTS

CONTROL_MODE_LABELS = dict(
    zip(
        CONTROL_MODES,
        (
            gettext_lazy("Balanced"),
            gettext_lazy("My prompt is more important"),
            gettext_lazy("ControlNet is more important"),
        ),
        strict=True,
    )
)
RESIZE_MODE_LABELS = [
    (0, gettext_lazy("Just resize")),
    (1, gettext_lazy("Crop and resize")),
    (2, gettext_lazy("Resize and fill")),
]
# Posted as text; the submission service checks and converts each (and names the field).
VALUE_FIELDS = (
    "module",
    "model",
    "weight",
    "guidance_start",
    "guidance_end",
    "control_mode",
    "resize_mode",
    "processor_res",
    "threshold_a",
    "threshold_b",
)


def field_name(index: int, name: str) -> str:
    return f"cn-{index}-{name}"


def controlnet_context(user: Any, given: list[dict[str, Any]], max_units: int) -> dict[str, Any]:
    """The section's fieldsets (`given` units enabled and filled in) and its choices.

    A given unit's model is matched to the member's usable ControlNets (a reused or linked one
    may name a model she cannot use, or an infotext's "name [hash]"): one she cannot use is
    left unselected and named in the unit's note, never quietly swapped for another."""
    models = list(
        CatalogEntry.objects.usable_by(user)
        .filter(kind=CatalogEntry.Kind.CONTROLNET)
        .order_by("name")
    )
    units = []
    for index in range(max_units):
        unit = dict(given[index]) if index < len(given) else {}
        missing = unit.pop(UNAVAILABLE, None)
        if unit.get("model"):
            matched = match_model(models, unit["model"])
            missing = missing or (None if matched else unit["model"])
            unit["model"] = matched or ""
        values = {**CONTROLNET_UNIT_DEFAULTS, **unit}
        values["enabled"] = index < len(given)
        values["image_url"] = kept_image_url(unit.get(KEPT))  # Reuse of her own job
        units.append({"index": index, "values": values, "missing_model": missing})
    return {
        "controlnet_units": units,
        "controlnet_models": models,
        "controlnet_units_left_out": max(0, len(given) - max_units),
        "control_modes": list(CONTROL_MODE_LABELS.items()),
        "controlnet_resize_modes": RESIZE_MODE_LABELS,
    }


def posted_controlnet(post: Any, files: MultiValueDict, max_units: int) -> list[dict[str, Any]]:
    """The enabled units of a form posted without JavaScript, as the REST API takes them."""
    units = []
    for index in range(max_units):
        if not post.get(field_name(index, "enabled")):
            continue
        unit: dict[str, Any] = {
            name: post[field_name(index, name)]
            for name in VALUE_FIELDS
            if post.get(field_name(index, name), "") != ""
        }
        unit["pixel_perfect"] = bool(post.get(field_name(index, "pixel_perfect")))
        unit["image"] = files.get(field_name(index, "image"))  # None: img2img's source
        if kept := post.get(field_name(index, KEPT)):  # a reused job's image, read back later
            unit[KEPT] = kept
        units.append(unit)
    return units
