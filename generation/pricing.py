"""Price of a job in credits: proportional to the denoising work it asks for.

One unit is a 512x512, 20-step single image (1.00 credit at a model's cost multiplier 1). The
sizes and steps are the engine's own (gpu_worker.passes), so a job is priced for what it runs.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Any

from gpu_worker.merge_rules import input_bytes, merge_price
from gpu_worker.params import DEFAULTS, HIRES_DEFAULTS, GenerationParams
from gpu_worker.passes import (
    controlnet_factor,
    denoised_size,
    evaluations,
    first_pass_steps,
    hires_pass_steps,
    hires_size,
    progress_steps,
)

UNIT_WORK = 512 * 512 * 20
CENT = Decimal("0.01")

# A job's params, or only some of them (the rest at their defaults).
SomeParams = GenerationParams | dict[str, Any]


def _filled(params: SomeParams) -> GenerationParams:
    """Missing fields at their defaults: the pricing page prices partial examples, and the
    speed model reads rows from before every field was kept."""
    full: dict[str, Any] = {"mode": "txt2img", **DEFAULTS, **params}
    if full.get("hires"):
        full["hires"] = {**HIRES_DEFAULTS, **full["hires"]}
    return full  # type: ignore[return-value]


def final_size(params: GenerationParams) -> tuple[int, int]:
    """Size of the images a job makes: the hires target when hires fix is on."""
    hires = params.get("hires") if params["mode"] == "txt2img" else None
    if hires:
        return hires_size(params["width"], params["height"], hires)
    return params["width"], params["height"]


def work_units(params: SomeParams) -> int:
    """Pixel-steps of the whole job, all images: a step is one UNet evaluation, so a
    second-order sampler (Heun, DPM2, DPM++ SDE) costs 2N-1 steps for N."""
    if params.get("mode") == "merge":  # no pixel-steps: priced by bytes, kept out of speeds
        return 0
    params = _filled(params)
    images = int(params["batch_size"]) * int(params["n_iter"])
    width, height = denoised_size(params)  # inpainting: the canvas or crop actually denoised
    per_image = width * height * evaluations(params, first_pass_steps(params))
    if hires_steps := hires_pass_steps(params):
        width, height = final_size(params)
        per_image += width * height * evaluations(params, hires_steps)
    per_image = int(per_image * controlnet_factor(params))  # units act on both passes
    return per_image * images


def total_steps(params: SomeParams) -> int:
    """Sampling steps the engine reports progress over (first and hires pass, every batch):
    `Job.total_steps`."""
    return progress_steps(_filled(params))


def price_job(params: SomeParams, checkpoint: Any) -> Decimal:
    if params.get("mode") == "merge" and params.get("merge"):  # by the bytes it reads
        return merge_price(input_bytes(params["merge"]))  # type: ignore[arg-type]
    multiplier = Decimal(str(getattr(checkpoint, "cost_multiplier", 1)))
    raw = Decimal(work_units(params)) / Decimal(UNIT_WORK) * multiplier
    return raw.quantize(CENT, rounding=ROUND_CEILING)
