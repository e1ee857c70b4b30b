"""The generator page's inpaint fields (templates/generation/_mask_editor.html): their labels,
their initial values, and the request they make when posted without JavaScript."""

from __future__ import annotations

from typing import Any

from django.utils.datastructures import MultiValueDict
from django.utils.translation import gettext_lazy

from gpu_worker.params import INPAINT_DEFAULTS, OUTPAINT_SIDES

FILL_LABELS = [
    (0, gettext_lazy("Fill (colours around the mask)")),
    (1, gettext_lazy("Original")),
    (2, gettext_lazy("Latent noise")),
    (3, gettext_lazy("Latent nothing")),
]
SIDE_LABELS = dict(
    zip(
        OUTPAINT_SIDES,
        (
            gettext_lazy("Outpaint left"),
            gettext_lazy("Outpaint top"),
            gettext_lazy("Outpaint right"),
            gettext_lazy("Outpaint bottom"),
        ),
        strict=True,
    )
)
CHECKBOXES = ("inpaint_full_res", "inpainting_mask_invert")


def inpaint_context(params: dict[str, Any]) -> dict[str, Any]:
    """What the mask editor's fields start from."""
    return {
        "inpaint": {**INPAINT_DEFAULTS, **(params.get("inpaint") or {})},
        "inpaint_fills": FILL_LABELS,
        "outpaint_sides": list(SIDE_LABELS.items()),
    }


def posted_inpaint(post: Any, files: MultiValueDict) -> dict[str, Any]:
    """The mask file and inpaint options of a form posted without JavaScript; nothing when
    there is neither a mask nor a side to outpaint."""
    mask = files.get("mask")
    options: dict[str, Any] = {
        key: post.get(f"inpaint_{key}")
        for key in INPAINT_DEFAULTS
        if key not in CHECKBOXES and post.get(f"inpaint_{key}", "") != ""
    }
    options |= {key: bool(post.get(f"inpaint_{key}")) for key in CHECKBOXES}
    grows = any(str(options.get(side, "0")) not in ("", "0") for side in OUTPAINT_SIDES)
    if not mask and not grows:
        return {}
    return {"inpaint": options, **({"mask": mask} if mask else {})}
