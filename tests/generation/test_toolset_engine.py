"""The A1111 toolset end to end on the real GPU worker and the demo models, through REST and the
A1111 API: prompt editing and alternation, variation seeds, tiling."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from PIL import Image

from generation.models import Job, PromptStyle
from tests.generation.a1111_support import (
    post,
    sdapi_client,
)
from tests.generation.conftest import api_client, image_bytes, wait_for
from tests.generation.real_worker import REAL_WORKER_MARKS

pytest.importorskip("diffusers")
pytestmark = REAL_WORKER_MARKS

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 42, "sampler": "Euler a"}


def pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def run_rest(user: Any, bodies: list[dict]) -> list[tuple[bytes, str]]:
    """Submit each body over REST, wait for all, return each first image's pixels and infotext."""
    from gpu_worker.infotext import read_infotext

    client = api_client(user)
    ids = []
    for body in bodies:  # one at a time: a member's unfinished jobs are limited
        response = client.post("/api/v1/jobs/", {**SMALL, **body}, format="json")
        assert response.status_code == 201, response.content
        ids.append(response.json()["id"])
        wait_for(lambda: Job.objects.filter(pk=ids[-1], status="succeeded").exists(), timeout=60)
    results = []
    for job_id in ids:
        url = client.get(f"/api/v1/jobs/{job_id}/").json()["images"][0]["url"]
        png = image_bytes(user, url)
        results.append((pixels(png), read_infotext(png) or ""))
    return results


def test_prompt_editing_and_variation_seeds_over_rest(alice):
    edited, cat, dog, varied, again, other = run_rest(
        alice,
        [
            {"prompt": "a [cat:dog:1] on a [red|blue] mat"},
            {"prompt": "a cat on a red mat"},
            {"prompt": "a dog on a red mat"},
            {"prompt": "a fox", "subseed": 7, "subseed_strength": 0.5},
            {"prompt": "a fox", "subseed": 7, "subseed_strength": 0.5},
            {"prompt": "a fox", "subseed": 8, "subseed_strength": 0.5},
        ],
    )
    assert edited[0] not in (cat[0], dog[0])
    assert edited[1].startswith("a [cat:dog:1] on a [red|blue] mat\n")
    assert varied[0] == again[0] and varied[0] != other[0]
    assert "Variation seed: 7, Variation seed strength: 0.5" in varied[1]


def decoded(b64: str) -> bytes:
    return pixels(base64.b64decode(b64))


async def test_variation_seeds_tiling_and_prompt_editing_over_the_a1111_api(alice):
    client = await sync_to_async(sdapi_client)(alice)
    common = {**SMALL, "sampler_name": "Euler a", "prompt": "a fox"}
    del common["sampler"]

    async def txt2img(**body: Any) -> dict:
        response = await post(client, "txt2img", {**common, **body})
        assert response.status_code == 200, response.content
        return response.json()

    first = await txt2img(subseed=11, subseed_strength=0.6, batch_size=2)
    again = await txt2img(subseed=11, subseed_strength=0.6, batch_size=2)
    other = await txt2img(subseed=12, subseed_strength=0.6, batch_size=2)
    assert [decoded(i) for i in first["images"]] == [decoded(i) for i in again["images"]]
    assert decoded(first["images"][0]) != decoded(other["images"][0])
    info = json.loads(first["info"])
    assert info["subseed"] == 11 and info["all_subseeds"] == [11, 12]
    assert info["subseed_strength"] == 0.6
    assert "Variation seed: 12, Variation seed strength: 0.6" in info["infotexts"][1]

    tiled = await txt2img(tiling=True)
    assert "Tiling: True" in json.loads(tiled["info"])["infotexts"][0]
    edited = await txt2img(prompt="a [fox:wolf:0.5] BREAK [snow|rain]")
    assert json.loads(edited["info"])["infotexts"][0].startswith("a [fox:wolf:0.5] BREAK")

    await PromptStyle.objects.acreate(owner=alice, name="noir", prompt="{prompt}, film noir")
    styled = await txt2img(styles=["noir"])
    assert json.loads(styled["info"])["infotexts"][0].startswith("a fox, film noir\n")


async def test_an_esrgan_upscaler_in_hires_fix_doubles_the_size_over_the_a1111_api(alice):
    client = await sync_to_async(sdapi_client)(alice)
    body = {"width": 64, "height": 64, "steps": 3, "seed": 5, "prompt": "a fox"}
    body |= {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "atelier-demo-upscaler"}
    body |= {"hr_second_pass_steps": 2, "denoising_strength": 0.5}
    response = await post(client, "txt2img", body)
    assert response.status_code == 200, response.content
    result = response.json()
    assert Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).size == (128, 128)
    info = json.loads(result["info"])
    assert "Hires upscaler: atelier-demo-upscaler" in info["infotexts"][0]
    assert info["extra_generation_params"]["Hires upscaler"] == "atelier-demo-upscaler"
