"""What one user may ask for: `limits_for` reads the user's membership tier."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from accounts.tiers import tier_of


@dataclass(frozen=True)
class GenerationLimits:
    max_side: int = 2048  # width and height, each a multiple of 8
    max_pixels: int = 1536 * 1536  # width x height of the final image (hires target included)
    max_steps: int = 150
    min_cfg: float = 1.0
    max_cfg: float = 30.0
    max_images: int = 8  # batch_size x n_iter
    max_prompt_chars: int = 2000
    max_unfinished_jobs: int = 4
    max_init_image_bytes: int = 10 * 1024 * 1024
    max_init_image_pixels: int = 4096 * 4096  # Pillow decompression-bomb guard for uploads
    max_controlnet_units: int = 2  # ControlNet units per job (0: none)
    priority_weight: int = 1  # the tier's share of GPU time when the queue is busy


DEFAULT_LIMITS = GenerationLimits()


def limits_for(user: Any) -> GenerationLimits:
    """The limits of `user`: those of their membership tier (accounts.MembershipTier)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return DEFAULT_LIMITS
    tier = tier_of(user)
    return replace(
        DEFAULT_LIMITS,
        max_side=tier.max_side,
        max_pixels=tier.max_pixels,
        max_steps=tier.max_steps,
        max_images=tier.max_images,
        max_unfinished_jobs=tier.max_unfinished_jobs,
        max_controlnet_units=tier.max_controlnet_units,
        priority_weight=tier.priority_weight,
    )
