"""Inpainting passes with diffusers, for the engine: dedicated 9-channel inpaint checkpoints and
ordinary ones (whose latents are masked at every step, as A1111 does).

The pixel geometry (crop, blur, fill, paste-back) is gpu_worker.masking's; this module runs the
pass: it builds the inpaint pipeline over the loaded weights (`from_pipe`), applies A1111's
latent fills ("latent noise", "latent nothing") and the initial noise multiplier where diffusers
makes the starting latents, and pastes every result back over the original.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from gpu_worker.masking import InpaintPlan, paste_back
from gpu_worker.params import INPAINT_FILLS, InpaintParams

LATENT_NOISE, LATENT_NOTHING = 2, 3  # inpainting_fill values filled in latent space


def is_inpaint_model(pipe: Any) -> bool:
    """A dedicated inpaint checkpoint: its UNet reads the mask and the masked image too."""
    return int(pipe.unet.config.in_channels) == 9


def decode_mask(data: str | None) -> Image.Image | None:
    if not data:
        return None
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def inpaint_pipeline(pipe: Any, family: str, scheduler: Any) -> Any:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    cls = StableDiffusionXLInpaintPipeline if family == "sdxl" else StableDiffusionInpaintPipeline
    inpaint = cls.from_pipe(pipe, scheduler=scheduler)  # shares the weights
    inpaint.set_progress_bar_config(disable=True)
    return inpaint


def sample_inpaint(
    pipe: Any,
    plan: InpaintPlan,
    inpaint: InpaintParams,
    *,
    strength: float,
    steps: int,
    common: dict[str, Any],
) -> list[Image.Image]:
    """Denoise the plan's image under its mask; each image pasted back over the original.
    `pipe` may be the ControlNet inpaint variant (controlnet.py), its units' arguments in
    `common`."""
    width, height = plan.size
    _start_latents_as_a1111(pipe, plan, inpaint)
    out = pipe(
        image=plan.image,
        mask_image=plan.mask,
        width=width,
        height=height,
        strength=strength,
        num_inference_steps=steps,
        **common,
    )
    return [paste_back(plan, image) for image in out.images]


def _start_latents_as_a1111(pipe: Any, plan: InpaintPlan, inpaint: InpaintParams) -> None:
    """Wrap this pipeline object's prepare_latents (a fresh object per pass): masked latents
    replaced by the noise (fill 2) or by zeros (fill 3) before noising, and the starting noise
    scaled by initial_noise_multiplier."""
    fill = int(inpaint["inpainting_fill"])
    multiplier = float(inpaint["initial_noise_multiplier"])
    if fill not in (LATENT_NOISE, LATENT_NOTHING) and multiplier == 1.0:
        return
    original = pipe.prepare_latents

    def prepare_latents(*args: Any, **kwargs: Any) -> tuple:
        wanted_image_latents = kwargs.get("return_image_latents", False)
        outputs = original(*args, **{**kwargs, "return_image_latents": True})
        latents, noise, image_latents = outputs[0], outputs[1], outputs[-1]
        if kwargs.get("is_strength_max", True):
            latents = latents * multiplier
        else:
            start = image_latents
            if fill in (LATENT_NOISE, LATENT_NOTHING):
                mask = _latent_mask(plan.mask, latents.shape[-2:]).to(latents)
                replacement = noise if fill == LATENT_NOISE else torch.zeros_like(noise)
                start = image_latents * (1 - mask) + replacement * mask
            latents = pipe.scheduler.add_noise(start, noise * multiplier, kwargs["timestep"])
        rest = outputs[1:-1] if not wanted_image_latents else outputs[1:]
        return (latents, *rest)

    pipe.prepare_latents = prepare_latents


def _latent_mask(mask: Image.Image, shape: torch.Size) -> torch.Tensor:
    """The mask at latent resolution, rounded (A1111's mask_round)."""
    small = mask.convert("L").resize((int(shape[1]), int(shape[0])), Image.Resampling.BILINEAR)
    values = torch.from_numpy(np.asarray(small, dtype=np.float32)).reshape(1, 1, *shape)
    return (values / 255.0).round()


def inpaint_infotext(inpaint: InpaintParams) -> dict[str, Any]:
    """A1111's inpaint keys of the parameters line."""
    blur_x, blur_y = int(inpaint["mask_blur_x"]), int(inpaint["mask_blur_y"])
    params: dict[str, Any] = {}
    if blur_x == blur_y:
        params["Mask blur"] = blur_x
    else:
        params["Mask blur x"], params["Mask blur y"] = blur_x, blur_y
    if inpaint["inpainting_mask_invert"]:
        params["Mask mode"] = "Inpaint not masked"
    params["Masked content"] = INPAINT_FILLS[int(inpaint["inpainting_fill"])]
    params["Inpaint area"] = "Only masked" if inpaint["inpaint_full_res"] else "Whole picture"
    if inpaint["inpaint_full_res"]:
        params["Masked area padding"] = int(inpaint["inpaint_full_res_padding"])
    if float(inpaint["initial_noise_multiplier"]) != 1.0:
        params["Noise multiplier"] = float(inpaint["initial_noise_multiplier"])
    sides = [inpaint.get(f"outpaint_{s}", 0) for s in ("left", "top", "right", "bottom")]
    if any(sides):
        params["Outpaint"] = "left {}, top {}, right {}, bottom {}".format(*sides)
    return params
