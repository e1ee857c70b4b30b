"""Face restoration (A1111's GFPGAN / CodeFormer), for Extras and `restore_faces`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from gpu_worker.job_outcome import JobFailed


def restore_for_extras(
    engine: Any, extras: Any, image: Image.Image, tick: Callable[[], None]
) -> Image.Image:
    """The Extras face-restoration step: nothing unless a visibility is above 0."""
    if float(extras["gfpgan_visibility"]) > 0 or float(extras["codeformer_visibility"]) > 0:
        raise JobFailed("face restoration is not available on this worker")
    return image
