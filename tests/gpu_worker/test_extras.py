"""Extras jobs on the real engine with the demo upscaler (a tiny random-weight 4x ESRGAN): sizes,
blending, crop, progress by tiles, cancel; and the shared plan the platform prices with."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from gpu_worker import extras_plan
from gpu_worker.infotext import png_with_infotext
from gpu_worker.params import EXTRAS_DEFAULTS, ExtrasParams
from tests.gpu_worker.conftest import demo_request
from tests.gpu_worker.test_upscalers import compact_keys, rrdb_keys

DEMO = "atelier-demo-upscaler"


def extras(width: int = 64, height: int = 96, **overrides: Any) -> ExtrasParams:
    params = {
        **EXTRAS_DEFAULTS,
        "source_width": width,
        "source_height": height,
        "source_image_id": None,
        "upscaler_1": DEMO,
        "upscaler_1_scale": 4,
        "upscaler_2_scale": 0,
        **overrides,
    }
    return params  # type: ignore[return-value]


def source_b64(width: int, height: int, infotext: str | None = None) -> str:
    picture = Image.effect_noise((width, height), 60).convert("RGB")
    if infotext:
        return base64.b64encode(png_with_infotext(picture, infotext)).decode()
    out = io.BytesIO()
    picture.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def extras_request(block: ExtrasParams, infotext: str | None = None) -> Any:
    size = extras_plan.output_size(block)
    return demo_request(
        mode="extras",
        checkpoint=block["upscaler_1"],
        width=size[0],
        height=size[1],
        steps=extras_plan.progress_units(block),
        extras=block,
        init_image_png_b64=source_b64(block["source_width"], block["source_height"], infotext),
    )


def decoded(result: Any) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(result.images[0]["png_b64"])))
    image.load()
    return image


def test_the_demo_esrgan_doubles_the_size_and_says_so_in_its_infotext(engine: Any, torch: Any):
    steps: list[tuple[int, int]] = []
    source_text = "a fox\nSteps: 3, Sampler: Euler, Seed: 5, Size: 64x96"
    result = engine.run(
        extras_request(extras(scale=2), source_text), lambda i: steps.append((i.done, i.total))
    )
    image = decoded(result)
    assert image.size == (128, 192)
    text = result.images[0]["infotext"]
    assert text == f"Postprocess upscale by: 2, Postprocess upscaler: {DEMO}"
    assert image.info["postprocessing"] == text
    assert image.info["parameters"] == source_text  # PNG Info still shows how it was made
    total = extras_plan.progress_units(extras(scale=2))
    assert steps[-1] == (total, total) and result.steps_done == total


def test_asked_for_bytes_the_upscaled_png_is_kept_as_bytes_not_base64(engine: Any, torch: Any):
    """For the event to carry it through Redis (gpu_worker.result_store): the same PNG."""
    request = extras_request(extras(scale=2))
    as_text = engine.run(request)
    as_bytes = engine.run({**request, "result_pngs_in_redis": True})
    [image] = as_bytes.images
    assert "png_b64" not in image and image["png"] == base64.b64decode(as_text.images[0]["png_b64"])
    assert image["thumbnail_webp_b64"] == as_text.images[0]["thumbnail_webp_b64"]


def test_a_second_upscaler_is_blended_in_at_its_visibility(engine: Any, torch: Any):
    def upscale(**overrides: Any) -> Image.Image:
        block = extras(scale=2, **overrides)
        request = extras_request(block)
        request["init_image_png_b64"] = fixed
        return decoded(engine.run(request))

    fixed = source_b64(64, 96)
    nearest = upscale(upscaler_1="Nearest")
    model = upscale()
    full = upscale(upscaler_2="Nearest", upscaler_2_visibility=1.0)
    half = upscale(upscaler_2="Nearest", upscaler_2_visibility=0.5)
    assert full.tobytes() == nearest.tobytes()
    assert half.tobytes() == Image.blend(model, nearest, 0.5).tobytes()


def test_to_a_target_size_with_crop_centres_the_upscale_on_the_target(engine: Any, torch: Any):
    block = extras(resize_mode=1, target_width=256, target_height=128, crop=True)
    image = decoded(engine.run(extras_request(block)))
    assert image.size == (256, 128)
    text = engine.run(extras_request(block)).images[0]["infotext"]
    assert "Postprocess upscale to: 256x128" in text and "Postprocess crop to: 256x128" in text


def test_a_cancel_stops_at_the_next_tile_and_keeps_nothing(engine: Any, torch: Any):
    from gpu_worker.engine import JobInterrupted
    from gpu_worker.upscalers import TileSettings

    seen: list[int] = []

    def cancel_after_two(info: Any) -> None:
        seen.append(info.done)
        if len(seen) == 2:
            raise JobInterrupted()

    block = extras(200, 200, scale=2)  # 2 x 2 tiles of 192 px
    assert extras_plan.progress_units(block) == 4
    engine.upscale_tiles = TileSettings(size=64, overlap=8)  # 16 tiles, reported on 4
    try:
        result = engine.run(extras_request(block), cancel_after_two)
    finally:
        engine.upscale_tiles = TileSettings()
    assert result.interrupted and not result.images
    assert seen == [0, 0] and result.steps_done == 0  # 2 of 16 tiles: none of the 4 units


def test_an_unknown_upscaler_fails_the_job_naming_it(engine: Any, torch: Any):
    from gpu_worker.engine import JobFailed

    with pytest.raises(JobFailed, match="4x-missing"):
        engine.run(extras_request(extras(upscaler_1="4x-missing")))


@pytest.mark.parametrize(
    ("shapes", "scale"),
    [
        (rrdb_keys(True, 2, 8, 4, 3), 4),
        (rrdb_keys(False, 2, 8, 4, 3), 4),
        (rrdb_keys(False, 2, 8, 4, 12), 2),
        (compact_keys(2, 8, 4), 4),
        (compact_keys(2, 8, 2), 2),
    ],
)
def test_the_header_scale_is_the_built_models(torch: Any, shapes: dict, scale: int):
    from gpu_worker.upscaler_files import upscaler_scale
    from gpu_worker.upscalers import build_upscaler, model_scale

    header = {key: {"dtype": "F32", "shape": list(shape)} for key, shape in shapes.items()}
    weights = {key: torch.zeros(shape) for key, shape in shapes.items()}
    assert upscaler_scale(header) == model_scale(build_upscaler(weights)) == scale


def test_the_demo_upscaler_is_listed_with_its_native_scale(engine: Any):
    assert engine.catalogue.resolve("upscaler", DEMO).inventory_entry()["scale"] == 4


def test_the_plan_follows_a1111s_sizes_and_passes():
    block = extras(100, 60, scale=1.5)
    assert extras_plan.upscaled_size(block) == (144, 88)  # x1.5, down to multiples of 8
    # a 2x model for x8 runs 3 times at most (A1111's limit), Lanczos does the rest
    assert extras_plan.model_passes(2, (10, 10), (80, 80)) == [(10, 10), (20, 20), (40, 40)]
    assert extras_plan.model_passes(2, (10, 10), (200, 200)) == [(10, 10), (20, 20), (40, 40)]
    assert extras_plan.model_passes(4, (64, 64), (64, 64)) == []
    faces = extras(upscaler_1="None", gfpgan_visibility=1.0)
    assert extras_plan.output_size(faces) == (64, 96)


def test_hires_fix_takes_nearest_like_the_upscaler_list_offers_it(engine: Any, torch: Any):
    hires = {"scale": 2.0, "resize_x": 0, "resize_y": 0, "upscaler": "Nearest"}
    hires |= {"second_pass_steps": 1, "denoising_strength": 0.5}
    image = engine.run(demo_request(hires=hires)).images[0]
    assert "Hires upscaler: Nearest" in image["infotext"] and image["width"] == 128
