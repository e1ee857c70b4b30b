"""What differs between SD 1.x/2.x and SDXL jobs in a cross-user batch (gpu_worker/batching.py):
the conditioning rows a job brings to the shared UNet call, and how its latents become images.

Each function repeats, for one job, what the family's diffusers pipeline does before and after
its denoising loop (StableDiffusionPipeline, StableDiffusionXLPipeline; diffusers 0.42), so a
job alone in a batch gets the serial path's exact pixels. SDXL's UNet also reads "added
conditioning" per row: the pooled text embedding of the second encoder (`text_embeds`) and the
six `time_ids` (original size, crop top-left, target size). The engine calls the pipeline with
width and height only, so a job's time ids are (height, width, 0, 0, height, width) for both its
negative and positive rows; carried per row, each job keeps its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from gpu_worker.vae_precision import upcast_if_needed

# The keys of SDXL's `added_cond_kwargs`, as its UNet reads them.
TEXT_EMBEDS, TIME_IDS = "text_embeds", "time_ids"


@dataclass
class TextRows:
    """A job's conditioning rows, in the order of its UNet rows: negatives then positives when
    guided (as the pipelines stack them), positives alone otherwise."""

    hidden: torch.Tensor  # encoder_hidden_states
    added: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL's; empty for SD 1.x


def is_sdxl(pipe: Any) -> bool:
    from diffusers import StableDiffusionXLPipeline

    return isinstance(pipe, StableDiffusionXLPipeline)


def batchable(pipe: Any) -> bool:
    """Whether the batch runner reproduces this pipeline's txt2img: a plain StableDiffusion or
    StableDiffusionXL pipeline. SDXL needs both text encoders (a refiner has only the second,
    and its time ids carry an aesthetic score instead of the target size)."""
    from diffusers import StableDiffusionPipeline

    if isinstance(pipe, StableDiffusionPipeline):
        return True
    if not is_sdxl(pipe) or pipe.text_encoder is None or pipe.text_encoder_2 is None:
        return False
    return pipe.unet.config.addition_embed_type == "text_time"


def execution_device(pipe: Any) -> torch.device:
    """Where the pipeline computes (diffusers' `_execution_device`, as its __call__ reads it
    once). Each read walks every module of every component looking for offloading hooks
    (~2 ms on the demo model, more on a full one): a batch reads it once, not per job and
    step."""
    device: torch.device = pipe._execution_device
    return device


def text_rows(
    pipe: Any,
    conditioning: dict[str, torch.Tensor],
    images: int,
    guided: bool,
    size: tuple[int, int],
    device: torch.device,
) -> TextRows:
    """The job's rows from its encoded prompts (`size`: width, height), as the pipeline's
    encode_prompt (given embeddings) and, for SDXL, its added time ids make them, on `device`
    (the pipeline's execution device, `execution_device`)."""
    sdxl = is_sdxl(pipe)
    dtype = _embeds_dtype(pipe, sdxl)
    hidden = _per_image(conditioning["prompt_embeds"], images, dtype, device)
    if guided:
        negative = _per_image(conditioning["negative_prompt_embeds"], images, dtype, device)
        hidden = torch.cat([negative, hidden])
    if not sdxl:
        return TextRows(hidden)
    return TextRows(hidden, _added_rows(pipe, conditioning, images, guided, size, dtype, device))


def _embeds_dtype(pipe: Any, sdxl: bool) -> torch.dtype:
    """The dtype encode_prompt casts given embeddings to."""
    if sdxl:
        encoder = pipe.text_encoder_2
    else:
        encoder = pipe.text_encoder if pipe.text_encoder is not None else pipe.unet
    return encoder.dtype


def _per_image(
    embeds: torch.Tensor, images: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The pipeline's encode_prompt with given embeddings: cast, then repeated per image."""
    embeds = embeds.to(dtype=dtype, device=device)
    batch, length, _ = embeds.shape
    return embeds.repeat(1, images, 1).view(batch * images, length, -1)


def _added_rows(
    pipe: Any,
    conditioning: dict[str, torch.Tensor],
    images: int,
    guided: bool,
    size: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """SDXL's pooled embeddings and time ids per row, as StableDiffusionXLPipeline.__call__."""
    width, height = size
    # the pipeline's own function: its check that the UNet expects six ids is kept too
    time_ids = pipe._get_add_time_ids(
        (height, width),
        (0, 0),
        (height, width),
        dtype=dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    pooled = _pooled_per_image(conditioning["pooled_prompt_embeds"], images)
    if guided:
        negative = _pooled_per_image(conditioning["negative_pooled_prompt_embeds"], images)
        pooled = torch.cat([negative, pooled])
        time_ids = torch.cat([time_ids, time_ids])  # no negative sizes: the same ids
    return {
        TEXT_EMBEDS: pooled.to(device),
        TIME_IDS: time_ids.to(device).repeat(images, 1),
    }


def _pooled_per_image(pooled: torch.Tensor, images: int) -> torch.Tensor:
    batch = pooled.shape[0]
    return pooled.repeat(1, images).view(batch * images, -1)


def decode(
    pipe: Any,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    dtype: torch.dtype,
    device: torch.device,
) -> list[Image.Image]:
    """The job's finished latents as PIL images, as its family's pipeline decodes them."""
    if is_sdxl(pipe):
        return _decode_sdxl(pipe, latents)
    return _decode_sd(pipe, latents, generators, dtype, device)


def _decode_sd(
    pipe: Any,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    dtype: torch.dtype,
    device: torch.device,
) -> list[Image.Image]:
    vae = pipe.vae
    decoded = vae.decode(
        latents / vae.config.scaling_factor, return_dict=False, generator=generators
    )[0]
    decoded, nsfw = pipe.run_safety_checker(decoded, device, dtype)
    denormalize = [True] * decoded.shape[0] if nsfw is None else [not n for n in nsfw]
    images: list[Image.Image] = pipe.image_processor.postprocess(
        decoded, output_type="pil", do_denormalize=denormalize
    )
    return images


def _decode_sdxl(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    # SDXL's VAE overflows in float16: the pipeline decodes in float32 and casts back after
    with upcast_if_needed(vae) as upcast:
        if upcast:
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        latents = _unscaled(vae, latents).to(get_module_execution_device(vae))
        decoded = vae.decode(latents, return_dict=False)[0]
    if getattr(pipe, "watermark", None) is not None:
        decoded = pipe.watermark.apply_watermark(decoded)
    images: list[Image.Image] = pipe.image_processor.postprocess(decoded, output_type="pil")
    return images


def _unscaled(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents in the VAE's own scale: denormalized by its mean and std when it has them."""
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return latents / vae.config.scaling_factor
    mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
    std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
    return latents * std / vae.config.scaling_factor + mean
