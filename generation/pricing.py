"""Price of a job in credits: proportional to the denoising work it asks for.

One unit is a 512x512, 20-step single image (1.00 credit at a model's cost multiplier 1).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Any

UNIT_WORK = 512 * 512 * 20
CENT = Decimal("0.01")


def sampling_steps(params: dict[str, Any]) -> int:
    """Steps actually denoised for one image (img2img runs steps x strength, as in A1111)."""
    steps = int(params["steps"])
    if params.get("mode") == "img2img":
        return max(1, int(steps * float(params.get("denoising_strength", 0.75))))
    return steps


def hires_size(params: dict[str, Any]) -> tuple[int, int] | None:
    """Target size of the hires second pass, or None when hires fix is off."""
    hires = params.get("hires")
    if not hires:
        return None
    if hires.get("resize_x") or hires.get("resize_y"):
        width = int(hires.get("resize_x") or params["width"])
        height = int(hires.get("resize_y") or params["height"])
        return width, height
    scale = float(hires.get("scale", 2.0))
    # A1111 rounds the target to a multiple of 8.
    return int(params["width"] * scale) // 8 * 8, int(params["height"] * scale) // 8 * 8


def hires_steps(params: dict[str, Any]) -> int:
    hires = params.get("hires") or {}
    second = int(hires.get("second_pass_steps") or 0) or int(params["steps"])
    return max(1, int(second * float(hires.get("denoising_strength", 0.7))))


def work_units(params: dict[str, Any]) -> int:
    """Pixel-steps of the whole job, all images."""
    images = int(params.get("batch_size", 1)) * int(params.get("n_iter", 1))
    per_image = params["width"] * params["height"] * sampling_steps(params)
    target = hires_size(params)
    if target:
        per_image += target[0] * target[1] * hires_steps(params)
    return per_image * images


def total_steps(params: dict[str, Any]) -> int:
    """Sampling steps of the whole job (first and second pass, all images), for progress/ETA."""
    images = int(params.get("batch_size", 1)) * int(params.get("n_iter", 1))
    per_image = sampling_steps(params) + (hires_steps(params) if hires_size(params) else 0)
    return per_image * images


def price_job(params: dict[str, Any], checkpoint: Any) -> Decimal:
    multiplier = Decimal(str(getattr(checkpoint, "cost_multiplier", 1)))
    raw = Decimal(work_units(params)) / Decimal(UNIT_WORK) * multiplier
    return raw.quantize(CENT, rounding=ROUND_CEILING)
