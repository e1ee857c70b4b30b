"""The denoising passes of one request: their sizes, the steps each runs, the hires upscalers.

Torch-free and shared: the engine runs these numbers, the platform prices, limits and shows
progress with the same ones (generation.pricing, generation.submission).
"""

from __future__ import annotations

import math
from typing import Any

from gpu_worker.params import OUTPAINT_SIDES, HiresParams
from gpu_worker.samplers import is_second_order

# Hires upscalers: latent modes resize the first pass's latents (engine.LATENT_UPSCALE_MODES says
# how); the image upscalers resize its decoded pixels with Lanczos ("None" is A1111's name for
# it) or Nearest.
LATENT_UPSCALERS = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
IMAGE_UPSCALERS = ("None", "Lanczos", "Nearest")
UPSCALERS = LATENT_UPSCALERS + IMAGE_UPSCALERS


def hires_size(width: int, height: int, hires: HiresParams) -> tuple[int, int]:
    """Target size of the hires pass, as A1111 computes it: both resize sides as given, one side
    with the other following the first pass's aspect ratio, else width and height x scale;
    rounded down to a multiple of 8 (the latent grid)."""
    rx, ry = int(hires.get("resize_x") or 0), int(hires.get("resize_y") or 0)
    if rx and ry:
        w, h = rx, ry
    elif rx:
        w, h = rx, rx * height // width
    elif ry:
        w, h = ry * width // height, ry
    else:
        scale = float(hires["scale"])
        w, h = int(width * scale), int(height * scale)
    return max(8, w // 8 * 8), max(8, h // 8 * 8)


def denoised_size(params: Any) -> tuple[int, int]:
    """Size of the image the first (or only) pass denoises: width x height, grown by the
    outpainted sides in "whole picture" inpainting. "Only masked" denoises its crop at width x
    height whatever the source's size, which is what makes it the cheap way to touch up a
    large image."""
    width, height = int(params["width"]), int(params["height"])
    inpaint = params.get("inpaint") if params["mode"] == "img2img" else None
    if not inpaint or inpaint.get("inpaint_full_res"):
        return width, height
    left, top, right, bottom = (int(inpaint.get(side) or 0) for side in OUTPAINT_SIDES)
    return width + left + right, height + top + bottom


def denoised_steps(inference_steps: int, strength: float) -> int:
    """Steps an img2img pass of `inference_steps` at `strength` denoises (diffusers'
    get_timesteps: the schedule's last steps x strength)."""
    return min(int(inference_steps * strength), inference_steps)


def hires_inference_steps(steps: int, hires: HiresParams) -> int:
    """The schedule length the hires pass asks for, so that it denoises exactly its
    second_pass_steps (A1111's hires fix: the steps are the ones run, whatever the strength)."""
    wanted = int(hires["second_pass_steps"] or steps)
    strength = float(hires["denoising_strength"])
    inference = max(wanted, math.ceil(wanted / strength))
    while denoised_steps(inference, strength) < wanted:  # float rounding: a step more at most
        inference += 1
    return inference


def first_pass_steps(params: Any) -> int:
    """Steps of the first (or only) pass: img2img runs steps x strength, as in A1111."""
    if params["mode"] == "img2img":
        return denoised_steps(int(params["steps"]), float(params["denoising_strength"]))
    return int(params["steps"])


def hires_pass_steps(params: Any) -> int:
    """Steps of the hires pass; 0 without one."""
    hires = params.get("hires") if params["mode"] == "txt2img" else None
    if not hires:
        return 0
    inference = hires_inference_steps(int(params["steps"]), hires)
    return denoised_steps(inference, float(hires["denoising_strength"]))


def evaluations(params: Any, steps: int) -> int:
    """UNet evaluations of a pass that denoises `steps`: one per step, but a second-order
    sampler (Heun, DPM2, DPM2 a, DPM++ SDE) evaluates twice on every step but the last, 2N-1.
    The engine's step callback fires once per evaluation, so this is also what its progress
    counts; pricing charges by it too (the work really done)."""
    if steps > 0 and is_second_order(params.get("sampler")):
        return 2 * steps - 1
    return steps


def steps_per_iteration(params: Any) -> int:
    """UNet evaluations of one batch (all its images at once): first pass plus hires pass."""
    return evaluations(params, first_pass_steps(params)) + evaluations(
        params, hires_pass_steps(params)
    )


def progress_steps(params: Any) -> int:
    """The steps the engine reports progress over for the whole job (every batch): its
    callbacks, i.e. UNet evaluations (2N-1 per pass for a second-order sampler)."""
    return steps_per_iteration(params) * int(params["n_iter"])


def steps_problem(params: Any) -> tuple[str, str] | None:
    """(field, message) when a pass would denoise nothing (diffusers refuses to run it)."""
    if params["mode"] == "img2img":
        if not 0 < float(params["denoising_strength"]) <= 1:
            return "denoising_strength", "denoising_strength must be above 0 and at most 1"
        if first_pass_steps(params) < 1:
            return (
                "denoising_strength",
                "steps x denoising_strength is below one step: raise either",
            )
        return None
    hires = params.get("hires")
    if hires and not 0 < float(hires["denoising_strength"]) <= 1:
        return (
            "hires.denoising_strength",
            "hires denoising_strength must be above 0 and at most 1",
        )
    return None


# A ControlNet unit runs a ControlNet (a copy of the UNet's encoder and middle block) beside the
# UNet at each step it acts on. Measured with SD1.5's configs (random weights, CPU, a 384x384
# image, both CFG halves): one ControlNet forward took 0.217 of one UNet forward (8.8 s vs
# 40.4 s; 361M vs 860M parameters, the decoder at full resolution being the UNet's larger part).
CONTROLNET_UNIT_COST = 0.22


def controlnet_factor(params: Any) -> float:
    """How much more a pass costs with the request's ControlNet units (they act on the hires
    pass too): each adds its measured cost over the share of the steps it acts on."""
    extra = 0.0
    for unit in params.get("controlnet") or ():
        share = max(0.0, float(unit["guidance_end"]) - float(unit["guidance_start"]))
        extra += CONTROLNET_UNIT_COST * share
    return 1.0 + extra
