"""The model-free preprocessors in jobs on the real GPU worker (demo checkpoint and ControlNet,
64x64, 3-4 steps): a webuiapi txt2img with a shuffle unit made twice gives the same image
(shuffle draws from the job's seeds) with the extension's names in the infotext, a REST img2img
job's invert unit on its source changes the image, a REST inpaint job with a tile_resample
unit repaints only the mask, and an A1111 tile upscale with tile_colorfix+sharp runs with the
extension's defaults."""

from __future__ import annotations

import base64
import io

import pytest
from asgiref.sync import sync_to_async
from PIL import Image

from gpu_worker.infotext import parse_infotext, read_infotext
from tests.generation.a1111_support import WEBUIAPI_TXT2IMG, post, sdapi_client
from tests.generation.real_worker import REAL_WORKER_MARKS
from tests.generation.test_inpaint_engine import (
    BOX,
    changed,
    inside,
    mask_of,
    pattern,
    png_b64,
    rest_body,
    rest_result,
)

pytest.importorskip("diffusers")
pytestmark = REAL_WORKER_MARKS


def webuiapi_unit(module: str) -> dict:
    """webuiapi's ControlNetUnit(input_image=..., module=module, model=...).to_dict(), sliders
    left at the extension's "default" (-1)."""
    return {
        "input_image": png_b64(pattern((64, 64))),
        "mask": None,
        "module": module,
        "model": "atelier-demo-controlnet",
        "weight": 1.0,
        "resize_mode": "Crop and Resize",
        "lowvram": False,
        "processor_res": 64,
        "threshold_a": -1,
        "threshold_b": -1,
        "guidance": 1.0,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "control_mode": 0,
        "pixel_perfect": False,
    }


async def test_a_shuffle_unit_run_again_with_the_same_seed_makes_the_same_image(alice):
    client = await sync_to_async(sdapi_client)(alice)
    body = {**WEBUIAPI_TXT2IMG, "prompt": "a house", "seed": 5, "steps": 3, "width": 64}
    body |= {"height": 64, "sampler_name": "Euler"}
    body["alwayson_scripts"] = {"ControlNet": {"args": [webuiapi_unit("shuffle")]}}
    images = []
    for _ in range(2):
        response = await post(client, "txt2img", body)
        assert response.status_code == 200, response.content
        images.append(base64.b64decode(response.json()["images"][0]))
    pixels = [Image.open(io.BytesIO(png)).tobytes() for png in images]
    assert pixels[0] == pixels[1]
    unit_text = parse_infotext(read_infotext(images[0]) or "")["ControlNet 0"]
    assert unit_text.startswith("Module: shuffle, Model: atelier-demo-controlnet [")


def test_an_inpaint_job_with_a_tile_resample_unit_repaints_only_the_mask(alice):
    source = pattern((64, 64))
    body = {**rest_body(source, mask_of((64, 64), BOX)), "inpaint": {"mask_blur": 0}}
    unit = {"module": "tile_resample", "threshold_a": 4, "model": "atelier-demo-controlnet"}
    image, infotext = rest_result(alice, {**body, "controlnet": [{**unit, "image": None}]})
    diff = changed(source, image)
    assert diff and diff <= inside(BOX)
    assert 'ControlNet 0: "Module: tile_resample, Model: atelier-demo-controlnet [' in infotext
    assert "Threshold A: 4.0" in infotext


def test_an_img2img_job_with_an_invert_unit_on_its_source_names_it_in_the_infotext(alice):
    body = rest_body(pattern((64, 64)), None)
    unit = {"module": "invert", "model": "atelier-demo-controlnet", "image": None}
    plain, _ = rest_result(alice, body)
    controlled, infotext = rest_result(alice, {**body, "controlnet": [unit]})
    assert changed(plain, controlled)  # the unit shows in the pixels
    assert 'ControlNet 0: "Module: invert, Model: atelier-demo-controlnet [' in infotext


async def test_an_a1111_tile_upscale_with_tile_colorfix_sharp_runs_with_the_extensions_defaults(
    alice,
):
    """The tile upscale A1111's users run: img2img of an image with the tile ControlNet on it
    (no unit image: the source), tile_colorfix+sharp, its sliders left at -1."""
    client = await sync_to_async(sdapi_client)(alice)
    body = {
        "init_images": [png_b64(pattern((64, 64)))],
        "prompt": "a house",
        "seed": 5,
        "steps": 4,
        "width": 64,
        "height": 64,
        "denoising_strength": 0.5,
        "sampler_name": "Euler",
        "alwayson_scripts": {
            "controlnet": {"args": [{**webuiapi_unit("tile_colorfix+sharp"), "input_image": None}]}
        },
    }
    response = await post(client, "img2img", body)
    assert response.status_code == 200, response.content
    image = base64.b64decode(response.json()["images"][0])
    unit_text = parse_infotext(read_infotext(image) or "")["ControlNet 0"]
    assert unit_text.startswith("Module: tile_colorfix+sharp, Model: atelier-demo-controlnet [")
    assert "Threshold A: 8.0, Threshold B: 1.0" in unit_text  # Variation 8, Sharpness 1
