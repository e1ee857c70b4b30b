"""What an Extras job (issue 17) will do, in numbers: its output size, the upscaler passes and
their tiles, the work it is priced by. Torch- and Django-free.

One definition for both sides: the platform validates, limits, prices and shows progress with
these numbers (generation.extras, generation.pricing); the engine (gpu_worker.extras) runs them.
The sizes follow A1111's extras tab (modules/postprocessing + upscaler.py): the destination is the
source x scale rounded down to a multiple of 8; a model upscaler runs again while the image is
short of it (at most 3 times), then Lanczos makes it exact; "to width x height" scales by the
larger ratio and, with crop, centres the result on a canvas of exactly the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Upscalers with no model: A1111's names. "None" as upscaler_1 means no upscale at all.
RESAMPLERS = ("None", "Lanczos", "Nearest")
UNKNOWN_NATIVE_SCALE = 4  # a model whose header did not say (a pickle): A1111's usual 4x
MAX_MODEL_PASSES = 3  # A1111 runs a model at most 3 times to reach the destination
DEFAULT_TILE = 192  # input pixels per tile side (A1111's ESRGAN tile); the worker may differ
DEFAULT_OVERLAP = 8
SCALE_RANGE = (1.0, 8.0)  # A1111's "Resize" slider goes 1..8
# Price: credits per output megapixel, per upscaler that runs (a second upscaler is a second
# full upscale). A chosen rate, not a measurement (no GPU was at hand): a 1024x1024 upscale
# costs about a quarter of a 512x512 20-step image (1 credit). Admins scale it per model with
# the upscaler's cost multiplier.
CREDITS_PER_MEGAPIXEL = 0.25
FACE_RESTORE_MEGAPIXELS = 0.25  # a face pass works at 512x512 whatever the image size


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side begin (the last one flush with the end)."""
    if tile <= 0 or length <= tile:
        return [0]
    step = max(1, tile - overlap)
    return [*range(0, length - tile, step), length - tile]


def tile_count(width: int, height: int, tile: int, overlap: int) -> int:
    overlap = min(overlap, tile // 2)
    return len(tile_starts(width, tile, overlap)) * len(tile_starts(height, tile, overlap))


def scale_factor(extras: Mapping[str, Any]) -> float:
    """The factor both upscalers apply to the source (A1111: "to" mode takes the larger ratio)."""
    if int(extras["resize_mode"]) == 1:
        return max(
            int(extras["target_width"]) / int(extras["source_width"]),
            int(extras["target_height"]) / int(extras["source_height"]),
        )
    return float(extras["scale"])


def upscaled_size(extras: Mapping[str, Any]) -> tuple[int, int]:
    """Each upscaler's destination: the source x factor, rounded down to a multiple of 8 (at
    least 8), or the source itself when upscaler_1 is "None"."""
    width, height = int(extras["source_width"]), int(extras["source_height"])
    if extras["upscaler_1"] == "None":
        return width, height
    factor = scale_factor(extras)
    return max(8, int(width * factor) // 8 * 8), max(8, int(height * factor) // 8 * 8)


def output_size(extras: Mapping[str, Any]) -> tuple[int, int]:
    """The size of the image the job makes (the crop's canvas when cropping to the target)."""
    if extras["upscaler_1"] != "None" and int(extras["resize_mode"]) == 1 and extras["crop"]:
        return int(extras["target_width"]), int(extras["target_height"])
    return upscaled_size(extras)


def model_passes(
    native_scale: int, source: tuple[int, int], destination: tuple[int, int]
) -> list[tuple[int, int]]:
    """The input size of each run of a model of `native_scale` from source to destination."""
    passes: list[tuple[int, int]] = []
    width, height = source
    for _ in range(MAX_MODEL_PASSES):
        if width >= destination[0] and height >= destination[1]:
            break
        passes.append((width, height))
        if native_scale <= 1:
            break
        width, height = width * native_scale, height * native_scale
    return passes


def second_upscaler_runs(extras: Mapping[str, Any]) -> bool:
    return (
        extras["upscaler_1"] != "None"
        and extras["upscaler_2"] != "None"
        and float(extras["upscaler_2_visibility"]) > 0
    )


def upscaler_tiles(
    extras: Mapping[str, Any], which: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP
) -> int:
    """Progress units of upscaler 1 or 2: its model's tiles over every pass, or one for a
    resampler (a single resize)."""
    name = extras[f"upscaler_{which}"]
    if name in RESAMPLERS:
        return 1
    source = (int(extras["source_width"]), int(extras["source_height"]))
    passes = model_passes(int(extras[f"upscaler_{which}_scale"]), source, upscaled_size(extras))
    return max(1, sum(tile_count(w, h, tile, overlap) for w, h in passes))


def faces_run(extras: Mapping[str, Any]) -> int:
    """How many face restorers run (GFPGAN, CodeFormer)."""
    return int(float(extras["gfpgan_visibility"]) > 0) + int(
        float(extras["codeformer_visibility"]) > 0
    )


def progress_units(
    extras: Mapping[str, Any], tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP
) -> int:
    """What the job's progress counts (`Job.total_steps`): upscaler tiles, one per resize, one
    per face restorer. The engine maps its own tile grid onto this count."""
    units = faces_run(extras)
    if extras["upscaler_1"] != "None":
        units += upscaler_tiles(extras, 1, tile, overlap)
        if second_upscaler_runs(extras):
            units += upscaler_tiles(extras, 2, tile, overlap)
    return max(1, units)


def work_megapixels(extras: Mapping[str, Any]) -> float:
    """What the job is priced by: output megapixels per upscaler that runs, plus each face
    restorer's fixed share."""
    width, height = output_size(extras)
    upscalers = 0
    if extras["upscaler_1"] != "None":
        upscalers = 2 if second_upscaler_runs(extras) else 1
    return width * height / 1e6 * upscalers + FACE_RESTORE_MEGAPIXELS * faces_run(extras)


def face_restore_credits() -> float:
    """What one face-restoration pass costs (restore_faces prices it per image)."""
    return FACE_RESTORE_MEGAPIXELS * CREDITS_PER_MEGAPIXEL


def credits(extras: Mapping[str, Any], multiplier: float = 1.0) -> float:
    """Unrounded credits of the job (generation.pricing rounds up to the cent)."""
    return work_megapixels(extras) * CREDITS_PER_MEGAPIXEL * multiplier


def infotext_fields(extras: Mapping[str, Any]) -> dict[str, Any]:
    """A1111's extras infotext keys ("Postprocess upscale by: 2, Postprocess upscaler: ...")."""
    fields: dict[str, Any] = {}
    if extras["upscaler_1"] != "None":
        if int(extras["resize_mode"]) == 1:
            fields["Postprocess upscale to"] = f"{extras['target_width']}x{extras['target_height']}"
        else:
            fields["Postprocess upscale by"] = _number(float(extras["scale"]))
        fields["Postprocess upscaler"] = extras["upscaler_1"]
        if second_upscaler_runs(extras):
            fields["Postprocess upscaler 2"] = extras["upscaler_2"]
            fields["Postprocess upscaler 2 visibility"] = _number(
                float(extras["upscaler_2_visibility"])
            )
        if int(extras["resize_mode"]) == 1 and extras["crop"]:
            fields["Postprocess crop to"] = f"{extras['target_width']}x{extras['target_height']}"
    if float(extras["gfpgan_visibility"]) > 0:
        fields["GFPGAN visibility"] = _number(float(extras["gfpgan_visibility"]))
    if float(extras["codeformer_visibility"]) > 0:
        fields["CodeFormer visibility"] = _number(float(extras["codeformer_visibility"]))
        fields["CodeFormer weight"] = _number(float(extras["codeformer_weight"]))
    return fields


def _number(value: float) -> int | float:
    return int(value) if math.isclose(value, round(value)) else round(value, 3)
