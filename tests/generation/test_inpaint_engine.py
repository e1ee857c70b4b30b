"""Inpainting and outpainting end to end with the real GPU worker on the demo models, through
the REST API and the A1111 API: every unmasked pixel comes back as the source's, "only masked"
keeps the source's size and changes only its crop, each fill and the invert run, and both the
dedicated inpaint checkpoint and an ordinary one work."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from PIL import Image, ImageDraw

from generation.models import Job
from gpu_worker.infotext import read_infotext
from tests.generation.a1111_support import (
    WEBUIAPI_TXT2IMG,
    post,
    sdapi_client,
)
from tests.generation.conftest import api_client, image_bytes, wait_for
from tests.generation.real_worker import REAL_WORKER_MARKS
from tests.inpaint_images import mask_of, pattern, png_b64

pytest.importorskip("diffusers")
pytestmark = REAL_WORKER_MARKS

BOX = (16, 16, 40, 40)


def changed(before: Image.Image, after: Image.Image) -> set[tuple[int, int]]:
    a, b = before.load(), after.convert("RGB").load()
    assert a is not None and b is not None
    return {(x, y) for x in range(before.width) for y in range(before.height) if a[x, y] != b[x, y]}


def inside(box: tuple[int, int, int, int]) -> set[tuple[int, int]]:
    return {(x, y) for x in range(box[0], box[2]) for y in range(box[1], box[3])}


def rest_result(user: Any, body: dict[str, Any]) -> tuple[Image.Image, str]:
    client = api_client(user)
    response = client.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    wait_for(lambda: Job.objects.filter(pk=job_id, status__in=("succeeded", "failed")).exists(), 60)
    job = client.get(f"/api/v1/jobs/{job_id}/").json()
    assert job["status"] == "succeeded", job["error"]
    png = image_bytes(user, job["images"][0]["url"])
    infotext = read_infotext(png)
    assert infotext is not None
    return Image.open(io.BytesIO(png)).convert("RGB"), infotext


def rest_body(source: Image.Image, mask: Image.Image | None, **fields: Any) -> dict[str, Any]:
    return {
        "prompt": "a red door",
        "steps": 4,
        "seed": 5,
        "width": 64,
        "height": 64,
        "denoising_strength": 0.8,
        "init_image": png_b64(source),
        "mask": png_b64(mask) if mask is not None else None,
        **fields,
    }


@pytest.mark.parametrize("checkpoint", ["atelier-demo-v1", "atelier-demo-v1-inpainting"])
def test_rest_inpainting_keeps_every_unmasked_pixel_with_both_kinds_of_model(alice, checkpoint):
    source = pattern((64, 64))
    body = rest_body(source, mask_of((64, 64), BOX), checkpoint=checkpoint)
    image, infotext = rest_result(alice, {**body, "inpaint": {"mask_blur": 0}})
    diff = changed(source, image)
    assert diff and diff <= inside(BOX)
    assert f"Model: {checkpoint}" in infotext and "Inpaint area: Whole picture" in infotext


def test_rest_only_masked_repaints_the_crop_of_a_larger_source_and_keeps_its_size(alice):
    source, box = pattern((160, 128)), (100, 70, 120, 90)
    inpaint = {"inpaint_full_res": True, "inpaint_full_res_padding": 4, "mask_blur": 0}
    image, infotext = rest_result(
        alice, {**rest_body(source, mask_of((160, 128), box)), "inpaint": inpaint}
    )
    assert image.size == (160, 128)
    diff = changed(source, image)
    assert diff and diff <= inside(box)
    assert "Inpaint area: Only masked" in infotext and "Masked area padding: 4" in infotext


def test_rest_outpainting_grows_the_canvas_around_the_untouched_source(alice):
    source = pattern((64, 64))
    inpaint = {"outpaint_left": 32, "mask_blur": 0, "inpainting_fill": 0}
    image, _ = rest_result(alice, {**rest_body(source, None), "inpaint": inpaint})
    assert image.size == (96, 64)
    assert image.crop((32, 0, 96, 64)).tobytes() == source.tobytes()


# An img2img body as `webuiapi` sends it for img2img(images=[...], mask_image=...,
# inpainting_fill=1, inpaint_full_res=True): every field present.
def webuiapi_img2img(source: Image.Image, mask_image: Image.Image, **fields: Any) -> dict[str, Any]:
    body = {
        key: value
        for key, value in WEBUIAPI_TXT2IMG.items()
        if not key.startswith(("hr_", "firstphase_")) and key != "enable_hr"
    }
    return {
        **body,
        "init_images": [png_b64(source)],
        "resize_mode": 0,
        "denoising_strength": 0.75,
        "image_cfg_scale": 1.5,
        "mask": png_b64(mask_image),
        "mask_blur": 0,
        "inpainting_fill": 1,
        "inpaint_full_res": True,
        "inpaint_full_res_padding": 0,
        "inpainting_mask_invert": 0,
        "initial_noise_multiplier": 1,
        "include_init_images": False,
        "prompt": "a red door",
        "seed": 9,
        "steps": 4,
        "width": 64,
        "height": 64,
        **fields,
    }


@pytest.fixture
def a1111(alice, thread_connections_closed):  # noqa: F811 - the imported fixture
    return sdapi_client(alice)


async def a1111_image(client: Any, body: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    response = await post(client, "img2img", body)
    assert response.status_code == 200, response.content
    result = response.json()
    assert set(result) == {"images", "parameters", "info"}
    image = Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).convert("RGB")
    return image, result


async def test_a_webuiapi_inpaint_call_returns_a1111s_shape_and_keeps_the_unmasked_pixels(
    a1111,
):
    source, box = pattern((128, 96)), (40, 30, 72, 62)
    image, result = await a1111_image(a1111, webuiapi_img2img(source, mask_of((128, 96), box)))
    assert image.size == (128, 96)  # only masked: the source's size
    diff = changed(source, image)
    assert diff and diff <= inside(box)
    info = json.loads(result["info"])
    infotext = info["infotexts"][0]
    for key in ("Mask blur: 0", "Inpaint area: Only masked", "Masked area padding: 0"):
        assert key in infotext
    assert "Masked content: original" in infotext
    assert result["parameters"]["mask"] is None and result["parameters"]["inpainting_fill"] == 1


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
async def test_each_a1111_masked_content_fill_repaints_only_the_mask(a1111, fill):
    source = pattern((64, 64))
    body = webuiapi_img2img(
        source, mask_of((64, 64), BOX), inpainting_fill=fill, inpaint_full_res=False
    )
    image, result = await a1111_image(a1111, body)
    diff = changed(source, image)
    assert diff and diff <= inside(BOX)
    name = ("fill", "original", "latent noise", "latent nothing")[fill]
    assert f"Masked content: {name}" in json.loads(result["info"])["infotexts"][0]


async def test_an_a1111_inverted_mask_keeps_the_painted_part(a1111):
    source = pattern((64, 64))
    body = webuiapi_img2img(
        source,
        mask_of((64, 64), BOX),
        inpainting_mask_invert=1,
        inpaint_full_res=False,
        mask="data:image/png;base64," + png_b64(mask_of((64, 64), BOX)),
    )
    image, _ = await a1111_image(a1111, body)
    diff = changed(source, image)
    assert diff and not diff & inside(BOX)


async def test_an_a1111_all_black_mask_is_a_422_naming_mask(a1111):
    body = webuiapi_img2img(pattern((64, 64)), Image.new("L", (64, 64), 0))
    response = await post(a1111, "img2img", body)
    assert response.status_code == 422 and response.json()["field"] == "mask"
    assert not await sync_to_async(Job.objects.exists)()


# --- ControlNet units on inpaint jobs ----------------------------------------------------------


def canny_square() -> str:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((20, 20, 36, 36), fill="white")
    return png_b64(image)


def test_rest_inpainting_with_a_unit_repaints_only_the_mask_and_the_unit_shows(alice):
    source = pattern((64, 64))
    body = {**rest_body(source, mask_of((64, 64), BOX)), "inpaint": {"mask_blur": 0}}
    unit = {"image": canny_square(), "module": "canny", "model": "atelier-demo-controlnet"}
    plain, _ = rest_result(alice, body)
    controlled, infotext = rest_result(alice, {**body, "controlnet": [unit]})
    diff = changed(source, controlled)
    assert diff and diff <= inside(BOX)
    assert changed(plain, controlled)  # the same job without the unit paints the mask otherwise
    assert 'ControlNet 0: "Module: canny, Model: atelier-demo-controlnet [' in infotext
    assert "Inpaint area: Whole picture" in infotext


async def test_a_webuiapi_inpaint_call_with_an_inpaint_only_unit_keeps_the_unmasked_pixels(a1111):
    source, box = pattern((128, 96)), (40, 30, 72, 62)
    unit = {
        "input_image": None,  # the extension uses the img2img source
        "module": "inpaint_only",
        "model": "atelier-demo-controlnet",
        "weight": 1.0,
        "resize_mode": "Crop and Resize",
        "processor_res": -1,
        "threshold_a": -1,
        "threshold_b": -1,
        "control_mode": "ControlNet is more important",
        "pixel_perfect": True,
    }
    body = webuiapi_img2img(source, mask_of((128, 96), box))  # only masked, as webuiapi sends
    image, result = await a1111_image(
        a1111, {**body, "alwayson_scripts": {"ControlNet": {"args": [unit]}}}
    )
    assert image.size == (128, 96)
    diff = changed(source, image)
    assert diff and diff <= inside(box)
    infotext = json.loads(result["info"])["infotexts"][0]
    assert "Inpaint area: Only masked" in infotext
    assert 'ControlNet 0: "Module: inpaint_only, Model: atelier-demo-controlnet [' in infotext
