"""Running a float16 VAE in float32 where its config asks for it (`force_upcast`: SDXL's
overflows in float16), as diffusers' own pipelines do: the one place that knows how."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def upcast_if_needed(vae: Any) -> Iterator[bool]:
    """Inside, the VAE runs in float32 if it must (yields whether it was cast); it is cast back
    to float16 after, whatever happens."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield upcast
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
