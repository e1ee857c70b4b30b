"""ControlNet preprocessors: the rules of all of them, and the ones that need no weights: "none"
(the image is already a control map), "canny" (OpenCV's edge detector) and "inpaint_only" (for
the inpaint ControlNet: the source itself here; the engine marks the job's masked pixels on it,
gpu_worker/controlnet.py, so it runs only on inpaint jobs). Torch-free. Only GPU
workers run preprocessors: before a job's ControlNet, and for previews
(gpu_worker/detect_responder.py). The platform imports this module for its rules (names, ranges,
pixel-perfect resolution) and never runs one.

Weight-based annotators (gpu_worker/annotators.py, torch) run where an admin dropped their
weights into the models folder (`ANNOTATOR_WEIGHTS`). What a worker can run it says in its
heartbeat (`worker_preprocessors`); the platform lists and accepts only those, so asking for one
that no worker has is a 422. Of sd-webui-controlnet's annotators, lineart (realistic and
coarse), soft edges (HED and HED-safe) and openpose (body only) are built; depth, MLSD, normal
and the others are not yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

INPAINT_ONLY = "inpaint_only"  # sd-webui-controlnet's name, for the inpaint ControlNet
BUILT_IN = ("none", "canny", INPAINT_ONLY)
NEEDS_MASK = (INPAINT_ONLY,)  # only on an inpaint job (img2img with a mask or outpainting)
# sd-webui-controlnet's module_detail sliders for the built-in modules (the web UI shows these).
MODULE_DETAIL: dict[str, dict] = {
    "none": {"model_free": False, "sliders": []},
    INPAINT_ONLY: {"model_free": False, "sliders": []},
    "canny": {
        "model_free": False,
        "sliders": [
            {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048},
            {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255},
            {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255},
        ],
    },
}
# Weight-based annotators: module -> its weights under the models folder (safetensors only: the
# extension's .pth files converted, since a pickle can run code). The HED modules share one file.
ANNOTATOR_WEIGHTS: dict[str, str] = {
    "lineart_realistic": "Annotators/lineart/sk_model.safetensors",
    "lineart_coarse": "Annotators/lineart/sk_model2.safetensors",
    "softedge_hed": "Annotators/hed/ControlNetHED.safetensors",
    "softedge_hedsafe": "Annotators/hed/ControlNetHED.safetensors",
    "openpose": "Annotators/openpose/body_pose_model.safetensors",
}
MODULE_DETAIL.update(
    {
        module: {
            "model_free": False,
            "sliders": [{"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048}],
        }
        for module in ANNOTATOR_WEIGHTS
    }
)
THRESHOLD_RANGE = (0.0, 255.0)
PROCESSOR_RES_RANGE = (64, 2048)


def worker_preprocessors(models_dir: Path) -> list[str]:
    """The modules a worker with this models folder runs (its heartbeat's `preprocessors`): the
    built-in ones, and each annotator whose weights lie in the folder."""
    present = [m for m, path in ANNOTATOR_WEIGHTS.items() if (models_dir / path).is_file()]
    return [*BUILT_IN, *present]


def resize_short_side(image: Image.Image, processor_res: int) -> Image.Image:
    """The image at the preprocessor's working resolution (its short side)."""
    scale = processor_res / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


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
    """The control map of `image` (RGB) for a built-in module (the worker's annotators.py runs
    the weight-based ones and comes here for the rest)."""
    image = image.convert("RGB")
    if module in ("none", *NEEDS_MASK):  # the mask is the job's: the engine marks it
        return image
    if module != "canny":
        raise ValueError(f"unknown preprocessor {module!r}; built in: {', '.join(BUILT_IN)}")
    import cv2  # OpenCV only where maps are made (the worker), not in the web process

    pixels = np.asarray(resize_short_side(image, processor_res))
    edges = cv2.Canny(pixels, int(low), int(high))
    return Image.fromarray(edges).convert("RGB")
