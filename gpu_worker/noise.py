"""Starting noise with A1111's variation seeds: `subseed`, `subseed_strength` and
`seed_resize_from_w/h` (modules/rng.py: ImageRNG.first).

Each image's noise is drawn on the CPU from its own seed, exactly as diffusers draws it from a
seeded CPU generator, so without a variation the image is the same as without this module. With
one, the noise is the spherical interpolation of the seed's and the subseed's noise; with a seed
resize, both are drawn at the old size and pasted, centred, into noise of the new size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

LATENT_SCALE = 8  # pixels per latent cell


@dataclass(frozen=True)
class Variation:
    subseed: int  # image i uses subseed + i
    strength: float  # 0: the seed's noise alone
    resize_from: tuple[int, int] | None  # (width, height) in pixels, or None

    @property
    def active(self) -> bool:
        return self.strength > 0 or self.resize_from is not None


def _randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp: over dim 1 of a (channels, height, width) noise, per channel and column,
    falling back to a straight blend where the two are (almost) parallel."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * (1 - t) + high * t
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (
        torch.sin(t * omega) / so
    ).unsqueeze(1) * high


def _paste_centred(noise: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The old-size noise over the middle of the new-size noise, cropped where it is larger."""
    _, th, tw = target.shape
    _, nh, nw = noise.shape
    dy, dx = (th - nh) // 2, (tw - nw) // 2
    h, w = min(nh, th), min(nw, tw)
    ty, tx = max(dy, 0), max(dx, 0)
    sy, sx = max(-dy, 0), max(-dx, 0)
    out = target.clone()
    out[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
    return out


def initial_noise(
    seeds: list[int], variation: Variation, shape: tuple[int, int, int]
) -> torch.Tensor:
    """[len(seeds), *shape] starting noise (shape: latent channels, height, width)."""
    channels = shape[0]
    noise_shape = shape
    if variation.resize_from is not None:
        w, h = variation.resize_from
        noise_shape = (channels, h // LATENT_SCALE, w // LATENT_SCALE)
    images = []
    for index, seed in enumerate(seeds):
        noise = _randn(seed, noise_shape)
        if variation.strength > 0:
            noise = slerp(variation.strength, noise, _randn(variation.subseed + index, noise_shape))
        if noise_shape != shape:
            noise = _paste_centred(noise, _randn(seed, shape))
        images.append(noise)
    return torch.stack(images)


def consume(generators: list[torch.Generator], shape: tuple[int, int, int]) -> None:
    """Advance each image's generator past its starting noise, as drawing it would have, so an
    ancestral sampler's per-step noise stays the seed's own with a variation too."""
    for generator in generators:
        torch.randn((1, *shape), generator=generator)


def variation_of(request: Mapping[str, Any]) -> Variation:
    """The request's variation (GenerationParams keys; absent in an older message: none)."""
    w = int(request.get("seed_resize_from_w") or 0)
    h = int(request.get("seed_resize_from_h") or 0)
    return Variation(
        subseed=int(request.get("subseed") or 0),
        strength=float(request.get("subseed_strength") or 0.0),
        resize_from=(w, h) if w > 0 and h > 0 else None,
    )
