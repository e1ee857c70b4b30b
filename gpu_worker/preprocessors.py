"""ControlNet preprocessors: the rules of all of them, and the ones that need no weights: "none"
(the image is already a control map), "canny" (OpenCV's edge detector), "inpaint_only" (for
the inpaint ControlNet: the source itself here; the engine marks the job's masked pixels on it,
gpu_worker/controlnet.py, so it runs only on inpaint jobs), and sd-webui-controlnet's other
model-free ones (tile_resample, invert, threshold, blur_gaussian, lineart_standard,
scribble_xdog, color, shuffle, recolor_luminance, recolor_intensity: gpu_worker/model_free_maps.py),
and tile_colorfix(+sharp), whose map is the image itself and whose work is a colour correction
inside each denoising step (gpu_worker/color_fix.py). Torch-free. Only GPU
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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

INPAINT_ONLY = "inpaint_only"  # sd-webui-controlnet's name, for the inpaint ControlNet
SHUFFLE = "shuffle"  # the one that draws random numbers: from the job's seeds
NEEDS_MASK = (INPAINT_ONLY,)  # only on an inpaint job (img2img with a mask or outpainting)
COLOR_FIX = ("tile_colorfix", "tile_colorfix+sharp")  # the map is the image (see color_fix.py)


@dataclass(frozen=True)
class Slider:
    """One of a module's sliders in sd-webui-controlnet (its name, default and range)."""

    name: str
    value: float
    low: float
    high: float
    step: float | None = None

    def detail(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"name": self.name, "value": self.value}
        shown.update({"min": self.low, "max": self.high})
        return shown if self.step is None else {**shown, "step": self.step}


@dataclass(frozen=True)
class ModuleSliders:
    """What a module's unit sets: whether it shows the resolution slider, and what
    threshold_a / threshold_b mean for it (None: the module ignores the value)."""

    resolution: bool = True
    a: Slider | None = None
    b: Slider | None = None


RESOLUTION = Slider("Preprocessor Resolution", 512, 64, 2048)
_GAMMA = Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001)
_VARIATION = Slider("Variation", 8.0, 3.0, 32.0, 1.0)
# The built-in modules with sd-webui-controlnet's names, sliders, defaults and ranges. The
# model-free maps (gpu_worker/model_free_maps.py) follow its processor.py; the names of
# invert and lineart_standard in its menu add "(from white bg & black line)".
MODULE_SLIDERS: dict[str, ModuleSliders] = {
    "none": ModuleSliders(resolution=False),
    "canny": ModuleSliders(
        a=Slider("Canny Low Threshold", 100, 1, 255), b=Slider("Canny High Threshold", 200, 1, 255)
    ),
    INPAINT_ONLY: ModuleSliders(resolution=False),
    "tile_resample": ModuleSliders(
        resolution=False, a=Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01)
    ),
    "invert": ModuleSliders(resolution=False),
    "threshold": ModuleSliders(a=Slider("Binarization Threshold", 127, 0, 255)),
    "blur_gaussian": ModuleSliders(a=Slider("Sigma", 9.0, 0.01, 64.0)),
    "lineart_standard": ModuleSliders(resolution=False),
    "scribble_xdog": ModuleSliders(a=Slider("XDoG Threshold", 32, 1, 64)),
    "color": ModuleSliders(),
    SHUFFLE: ModuleSliders(resolution=False),
    "recolor_luminance": ModuleSliders(resolution=False, a=_GAMMA),
    "recolor_intensity": ModuleSliders(resolution=False, a=_GAMMA),
    # the map is the image; the engine corrects colours each step (gpu_worker/color_fix.py)
    "tile_colorfix": ModuleSliders(resolution=False, a=_VARIATION),
    "tile_colorfix+sharp": ModuleSliders(
        resolution=False, a=_VARIATION, b=Slider("Sharpness", 1.0, 0.0, 2.0, 0.01)
    ),
}
BUILT_IN = tuple(MODULE_SLIDERS)


def _detail(sliders: ModuleSliders) -> dict[str, Any]:
    """A module's module_detail entry as the extension's API gives it: the sliders in order
    (resolution, threshold_a, threshold_b), null for a hidden resolution before a shown one."""
    shown: list[Any] = [RESOLUTION.detail() if sliders.resolution else None]
    shown += [s.detail() for s in (sliders.a, sliders.b) if s is not None]
    while shown and shown[-1] is None:
        shown.pop()
    return {"model_free": False, "sliders": shown}


# sd-webui-controlnet's module_detail for each module (the web UI and its clients show these).
MODULE_DETAIL: dict[str, dict[str, Any]] = {
    module: _detail(sliders) for module, sliders in MODULE_SLIDERS.items()
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
MODULE_DETAIL.update({module: _detail(ModuleSliders()) for module in ANNOTATOR_WEIGHTS})
THRESHOLD_RANGE = (0.0, 255.0)  # threshold_a/b of a module that has no slider for them
THRESHOLD_FIELDS = ("threshold_a", "threshold_b")
# What a unit that leaves threshold_a/b out stores when its module has no slider for them.
UNUSED_THRESHOLDS = {"threshold_a": 100.0, "threshold_b": 200.0}
PROCESSOR_RES_RANGE = (64, 2048)


def page_sliders(modules: list[str]) -> dict[str, dict[str, Any]]:
    """For the generator page's script: per module, whether the resolution slider shows and
    what threshold_a / threshold_b are (None: unused, hidden)."""
    table = {}
    for module in modules:
        sliders = MODULE_SLIDERS.get(module, ModuleSliders())
        table[module] = {
            "resolution": sliders.resolution,
            "threshold_a": sliders.a.detail() if sliders.a else None,
            "threshold_b": sliders.b.detail() if sliders.b else None,
        }
    return table


def threshold_slider(module: str, field: str) -> Slider | None:
    """The slider that `field` (threshold_a or threshold_b) sets for `module`, if any."""
    sliders = MODULE_SLIDERS.get(module, ModuleSliders())
    return sliders.a if field == "threshold_a" else sliders.b


def threshold_default(module: str, field: str) -> float:
    """The value a unit takes when it leaves `field` out (or sends the extension's -1)."""
    slider = threshold_slider(module, field)
    return float(slider.value) if slider else UNUSED_THRESHOLDS[field]


def threshold_problem(module: str, field: str, value: float) -> str | None:
    """Why `value` is no good for `field` of `module` (None: it is): outside the slider's
    range, or the general 0..255 where the module has no slider for it."""
    slider = threshold_slider(module, field)
    low, high = (slider.low, slider.high) if slider else THRESHOLD_RANGE
    if low <= value <= high:  # also refuses NaN
        return None
    named = f" ({module}'s {slider.name})" if slider else ""
    return f"{field}{named} must be between {low:g} and {high:g}"


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
    module: str,
    image: Image.Image,
    processor_res: int,
    low: float,
    high: float,
    *,
    seed: int | None = None,
) -> Image.Image:
    """The control map of `image` (RGB) for a built-in module (the worker's annotators.py runs
    the weight-based ones and comes here for the rest). `low` and `high` are the unit's
    threshold_a and threshold_b; `seed` draws shuffle's random fields (None: fresh ones)."""
    image = image.convert("RGB")
    if module in ("none", *NEEDS_MASK, *COLOR_FIX):  # the engine does the rest
        return image
    if module not in BUILT_IN:
        raise ValueError(f"unknown preprocessor {module!r}; built in: {', '.join(BUILT_IN)}")
    import cv2  # OpenCV only where maps are made (the worker), not in the web process

    if module == "canny":
        pixels = np.asarray(resize_short_side(image, processor_res))
        edges = cv2.Canny(pixels, int(low), int(high))
        return Image.fromarray(edges).convert("RGB")
    from gpu_worker import model_free_maps as maps

    pixels = np.asarray(image)
    res = processor_res
    made = {
        "tile_resample": lambda: maps.tile_resample(pixels, low),
        "invert": lambda: maps.invert(pixels),
        "threshold": lambda: maps.threshold(pixels, res, low),
        "blur_gaussian": lambda: maps.blur_gaussian(pixels, res, low),
        "lineart_standard": lambda: maps.lineart_standard(pixels, res),
        "scribble_xdog": lambda: maps.scribble_xdog(pixels, res, low),
        "color": lambda: maps.color_grid(pixels, res),
        SHUFFLE: lambda: maps.shuffle(pixels, res, np.random.RandomState(seed)),
        "recolor_luminance": lambda: maps.recolor_luminance(pixels, low),
        "recolor_intensity": lambda: maps.recolor_intensity(pixels, low),
    }[module]()
    return Image.fromarray(made)


def shuffle_seed(seed: int, subseed: int | None, subseed_strength: float = 0.0) -> int:
    """The numpy seed sd-webui-controlnet sets before preprocessing: seed + subseed in 32 bits,
    the seed counted twice where the subseed is left at -1. The platform resolves a -1 subseed
    to a random one before the worker sees it, so the subseed counts here only while variation
    is on (its strength above 0): a re-run with the same seed then makes the same map."""
    varied = subseed is not None and subseed != -1 and subseed_strength > 0
    return (seed + (subseed if varied and subseed is not None else seed)) & 0xFFFFFFFF
