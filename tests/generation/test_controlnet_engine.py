"""A webuiapi client's ControlNet request end to end, on the real GPU worker with the demo
checkpoint and the demo ControlNet: the A1111 response shape, the unit in the infotext, the unit
in the pixels, and weight 0 exactly no unit. Three tiny jobs (64x64, 3 steps)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from asgiref.sync import sync_to_async
from PIL import Image, ImageDraw

from gpu_worker.infotext import parse_infotext, read_infotext
from tests.generation.a1111_support import (
    WEBUIAPI_TXT2IMG,
    post,
    sdapi_client,
)
from tests.generation.real_worker import REAL_WORKER_MARKS

pytest.importorskip("diffusers")
pytestmark = REAL_WORKER_MARKS


def square_png() -> str:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill="white")
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def webuiapi_unit(weight: float) -> dict:
    """webuiapi's ControlNetUnit(input_image=..., module="canny", model=...).to_dict()."""
    return {
        "input_image": square_png(),
        "mask": None,
        "module": "canny",
        "model": "atelier-demo-controlnet",
        "weight": weight,
        "resize_mode": "Resize and Fill",
        "lowvram": False,
        "processor_res": 64,
        "threshold_a": 100,
        "threshold_b": 200,
        "guidance": 1.0,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "control_mode": 0,
        "pixel_perfect": False,
    }


async def test_a_webuiapi_controlnet_unit_shows_in_the_image_and_its_infotext(alice):
    client = await sync_to_async(sdapi_client)(alice)
    body = {**WEBUIAPI_TXT2IMG, "prompt": "a house", "seed": 5, "steps": 3}
    body |= {"width": 64, "height": 64, "sampler_name": "Euler"}

    async def txt2img(units: list[dict]) -> dict:
        scripts = {"ControlNet": {"args": units}} if units else {}
        response = await post(client, "txt2img", {**body, "alwayson_scripts": scripts})
        assert response.status_code == 200, response.content
        return response.json()

    plain, controlled, weightless = [
        await txt2img(units) for units in ([], [webuiapi_unit(1.0)], [webuiapi_unit(0.0)])
    ]
    assert set(controlled) == {"images", "parameters", "info"}
    png = base64.b64decode(controlled["images"][0])
    unit_text = parse_infotext(read_infotext(png) or "")["ControlNet 0"]
    assert unit_text.startswith("Module: canny, Model: atelier-demo-controlnet [")
    assert "Resize Mode: Resize and Fill" in unit_text
    assert json.loads(controlled["info"])["infotexts"][0] == read_infotext(png)
    assert controlled["images"][0] != plain["images"][0]
    pixels = [
        Image.open(io.BytesIO(base64.b64decode(r["images"][0]))).tobytes()
        for r in (plain, weightless)
    ]
    assert pixels[0] == pixels[1]


def test_the_gpu_worker_answers_a_preview_through_the_rest_api(alice):
    """The whole preview path: REST -> the worker's Redis list -> the responder its lifecycle
    started -> the engine's preprocessors -> the reply."""
    from generation.broker import get_redis
    from generation.fleet import present_heartbeats
    from gpu_worker.preprocessors import run_preprocessor
    from tests.generation.conftest import api_client, wait_for

    wait_for(lambda: present_heartbeats(get_redis()))  # the module's GPU worker is up
    body = {"module": "canny", "image": square_png(), "processor_res": 64}
    response = api_client(alice).post("/api/v1/controlnet/detect/", body, format="json")
    assert response.status_code == 200, response.content
    made = Image.open(io.BytesIO(base64.b64decode(response.json()["image"])))
    source = Image.open(io.BytesIO(base64.b64decode(square_png())))
    assert made.tobytes() == run_preprocessor("canny", source, 64, 100, 200).tobytes()
