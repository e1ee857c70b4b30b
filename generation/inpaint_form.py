"""The generator page's inpaint fields (templates/generation/_mask_editor.html): their labels,
their initial values, and the request they make when posted without JavaScript."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils.datastructures import MultiValueDict
from django.utils.translation import gettext_lazy

from generation.models import Job
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


def inpaint_context(
    params: dict[str, Any], mask_url: str | None = None, open_editor: bool = False
) -> dict[str, Any]:
    """What the mask editor's fields start from (a remix's mask and options included)."""
    return {
        "inpaint": {**INPAINT_DEFAULTS, **(params.get("inpaint") or {})},
        "inpaint_fills": FILL_LABELS,
        "outpaint_sides": list(SIDE_LABELS.items()),
        "mask_url": mask_url,
        "open_inpaint": open_editor or bool(mask_url),
    }


def job_inputs(job: Job) -> tuple[str | None, str | None]:
    """URLs of an inpaint job's source and mask, to lay them out again (remix)."""
    if not job.mask_image:
        return None, None
    return (
        reverse("generation-job-source", args=[job.pk]),
        reverse("generation-job-mask", args=[job.pk]),
    )


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
