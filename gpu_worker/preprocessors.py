"""ControlNet preprocessors that need no weights: "none" (the image is already a control map)
and "canny" (OpenCV's edge detector). Torch-free: the worker runs them before a job's ControlNet,
and the platform's /controlnet/detect preview runs the same code.

The weight-based annotators of sd-webui-controlnet (depth, openpose, lineart, ...) are not built
in: a module without its code and weights here is simply not listed, and asking for it is a 422.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

BUILT_IN = ("none", "canny")
# sd-webui-controlnet's module_detail sliders for the built-in modules (the web UI shows these).
MODULE_DETAIL: dict[str, dict] = {
    "none": {"model_free": False, "sliders": []},
    "canny": {
        "model_free": False,
        "sliders": [
            {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048},
            {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255},
            {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255},
        ],
    },
}
THRESHOLD_RANGE = (0.0, 255.0)
PROCESSOR_RES_RANGE = (64, 2048)


def pixel_perfect_resolution(
    image_size: tuple[int, int], target: tuple[int, int], resize_mode: int
) -> int:
    """The processor resolution that maps the image one-to-one onto the job's size: the short
    side after the resize the unit will do (crop fills the target, fill fits inside it)."""
    (raw_w, raw_h), (target_w, target_h) = image_size, target
    scale_w, scale_h = target_w / raw_w, target_h / raw_h
    scale = min(scale_w, scale_h) if resize_mode == 2 else max(scale_w, scale_h)
    return max(1, round(min(raw_w, raw_h) * scale))


def run_preprocessor(
    module: str, image: Image.Image, processor_res: int, low: float, high: float
) -> Image.Image:
    """The control map of `image` (RGB) for a built-in module."""
    image = image.convert("RGB")
    if module == "none":
        return image
    if module != "canny":
        raise ValueError(f"unknown preprocessor {module!r}; built in: {', '.join(BUILT_IN)}")
    scale = processor_res / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    pixels = np.asarray(image.resize(size, Image.Resampling.LANCZOS))
    edges = cv2.Canny(pixels, int(low), int(high))
    return Image.fromarray(edges).convert("RGB")
