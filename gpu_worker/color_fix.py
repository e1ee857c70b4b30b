"""sd-webui-controlnet's tile_colorfix and tile_colorfix+sharp: a colour correction inside each
denoising step, for the tile ControlNet.

Their control map is the image itself (gpu_worker.preprocessors); the work is here. After every
UNet call the image the model predicts (x0, in latent space) keeps its details but takes the
control image's colours: its low frequencies, a box blur of 2k+1 latent pixels (k: the unit's
"Variation", threshold_a), are replaced by those of the control image's latent. "+sharp" also
blurs the unconditional half's prediction by "Sharpness" (threshold_b) percent, so classifier-
free guidance pushes towards more detail. The UNet's output is then rewritten to predict that
x0, whatever the scheduler does with it.

The UNet sees x_t in DDPM form with every diffusers scheduler (the k-diffusion ones scale their
sigma-space latents to it), so x0 follows from the timestep's alpha_cumprod, interpolated in
log-sigma for the fractional timesteps of Karras-style schedules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from gpu_worker.vae_precision import upcast_if_needed


def blur(latents: torch.Tensor, k: int) -> torch.Tensor:
    """A (2k+1)-pixel box blur with the edges replicated (the extension's)."""
    padded = torch.nn.functional.pad(latents, (k, k, k, k), mode="replicate")
    return torch.nn.functional.avg_pool2d(padded, 2 * k + 1, stride=1)


def encode_colors(vae: Any, image: Image.Image) -> torch.Tensor:
    """The control image's latent (its distribution's mean, scaled as the UNet's latents)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad(), upcast_if_needed(vae):
        moments = vae.encode(tensor.to(vae.device, vae.dtype)).latent_dist.mean
    return moments.float() * float(vae.config.scaling_factor)


@dataclass
class ColorFix:
    """One unit's correction for one pass (its control image's latent at the pass's size)."""

    latent: torch.Tensor  # (1, 4, h, w), float32
    variation: int  # k of the blur
    sharpness: float | None  # "+sharp": percent of blur for the unconditional prediction
    alphas_cumprod: torch.Tensor  # the scheduler's, float32
    prediction: str  # the scheduler's prediction_type: epsilon, v_prediction or sample
    halves: bool  # classifier-free guidance: the batch is [unconditional, conditional]
    # made once, used at every step: the control image's low frequencies, log-sigma per timestep
    colors: torch.Tensor = field(init=False)
    log_sigmas: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.colors = blur(self.latent, self.variation)
        table = self.alphas_cumprod.float()
        self.log_sigmas = 0.5 * torch.log((1 - table) / table)

    def _alpha(self, timestep: Any, rows: int, device: torch.device) -> torch.Tensor:
        """alpha_cumprod at each row's (possibly fractional) timestep, shaped (rows, 1, 1, 1)."""
        t = torch.as_tensor(timestep, dtype=torch.float32, device=device).flatten()
        t = t.expand(rows) if t.numel() == 1 else t
        log_sigmas = self.log_sigmas.to(device)
        low = t.floor().long().clamp(0, len(log_sigmas) - 1)
        high = (low + 1).clamp(max=len(log_sigmas) - 1)
        w = (t - low.float()).clamp(0, 1)
        sigma = torch.exp((1 - w) * log_sigmas[low] + w * log_sigmas[high])
        return (1 / (1 + sigma**2)).view(-1, 1, 1, 1)

    def apply(self, x_t: torch.Tensor, timestep: Any, output: torch.Tensor) -> torch.Tensor:
        """The UNet's output rewritten to predict the colour-fixed x0."""
        x, out = x_t[:, : output.shape[1]].float(), output.float()
        alpha = self._alpha(timestep, x.shape[0], x.device)
        a, s = alpha.sqrt(), (1 - alpha).sqrt()
        if self.prediction == "v_prediction":
            x0 = a * x - s * out
        elif self.prediction == "sample":
            x0 = out
        else:
            x0 = (x - s * out) / a
        x0 = x0 - blur(x0, self.variation) + self.colors.to(x0.device)
        if self.sharpness is not None and self.halves:
            weight = self.sharpness * 0.01
            uncond = x0[: x0.shape[0] // 2]
            x0[: x0.shape[0] // 2] = weight * blur(uncond, self.variation) + (1 - weight) * uncond
        if self.prediction == "v_prediction":
            fixed = (a * x - x0) / s
        elif self.prediction == "sample":
            fixed = x0
        else:
            fixed = (x - a * x0) / s
        return fixed.to(output.dtype)


@contextmanager
def color_fixed(unet: torch.nn.Module, fixes: list[ColorFix]) -> Iterator[None]:
    """While inside, every call of `unet` has its output corrected by each fix in turn."""
    if not fixes:
        yield
        return

    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        predicted = output[0] if isinstance(output, tuple) else output.sample
        for fix in fixes:
            predicted = fix.apply(sample, timestep, predicted)
        if isinstance(output, tuple):
            return (predicted, *output[1:])
        output.sample = predicted
        return output

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
