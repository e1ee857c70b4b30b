"""/sdapi/v1/ end to end with the real GPU worker and the two demo checkpoints (their weights
differ, so the model an image was made with shows in its pixels and its infotext): the request
bodies real clients send, per-user models, progress, interrupt, and a client that hangs up."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from PIL import Image

from accounts import ledger
from generation.broker import get_redis
from generation.models import CatalogEntry, Job, JobImage
from gpu_worker.infotext import read_infotext
from gpu_worker.protocol import CANCEL_KEY
from tests.generation.a1111_support import (
    WEBUIAPI_TXT2IMG,
    asgi_request,
    basic_header,
    get,
    png_b64,
    post,
    sdapi_client,
    token_for,
    wait_for_job,
)
from tests.generation.real_worker import REAL_WORKER_MARKS

pytest.importorskip("diffusers")
pytestmark = REAL_WORKER_MARKS

SMALL = {"width": 64, "height": 64, "steps": 3}
# Long enough to be watched and stopped: Heun calls the model twice a step.
SLOW = {"width": 64, "height": 64, "steps": 50, "sampler_name": "Heun", "batch_size": 2}


def title(name: str) -> str:
    return CatalogEntry.objects.get(kind="checkpoint", name=name).title


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


async def status_of(job: Job) -> str:
    return await Job.objects.values_list("status", flat=True).aget(pk=job.pk)


async def wait_until(condition: Any, timeout: float = 60.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := await condition()):
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
    return result


def test_the_latent_upscale_modes_listed_are_the_engines():
    from gpu_worker.engine import LATENT_UPSCALE_MODES as ENGINE_MODES
    from gpu_worker.passes import LATENT_UPSCALERS

    assert set(LATENT_UPSCALERS) == set(ENGINE_MODES)


async def test_a_full_txt2img_with_hires_fix_returns_upscaled_images_and_charges_once(alice):
    before = (await sync_to_async(ledger.account_for)(alice)).balance
    body = {
        **WEBUIAPI_TXT2IMG,
        **SMALL,
        "prompt": "a (red:1.2) fox",
        "negative_prompt": "blurry",
        "seed": 7,
        "batch_size": 2,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "enable_hr": True,
        "hr_scale": 2,
        "hr_upscaler": "Latent",
        "hr_second_pass_steps": 2,
        "denoising_strength": 0.6,
    }
    client = await sync_to_async(sdapi_client)(alice)
    response = await post(client, "txt2img", body)
    assert response.status_code == 200, response.content
    result = response.json()
    images = [decoded(b64) for b64 in result["images"]]
    assert [image.size for image in images] == [(128, 128), (128, 128)]
    texts = [read_infotext(base64.b64decode(b64)) or "" for b64 in result["images"]]
    info = json.loads(result["info"])
    assert info["infotexts"] == texts
    assert all("Hires upscale: 2" in t and "Model: atelier-demo-v1" in t for t in texts)
    assert info["all_seeds"] == [7, 8] and info["seed"] == 7
    assert info["all_prompts"] == ["a (red:1.2) fox"] * 2
    assert info["sampler_name"] == "DPM++ 2M" and info["denoising_strength"] == 0.6
    assert (info["width"], info["height"], info["steps"]) == (64, 64, 3)
    assert info["sd_model_name"] == "atelier-demo-v1"
    extra = info["extra_generation_params"]
    assert extra["Schedule type"] == "Karras" and extra["Hires upscaler"] == "Latent"
    assert result["parameters"]["enable_hr"] is True and result["parameters"]["hr_scale"] == 2
    job = await Job.objects.aget(owner=alice)
    assert job.status == "succeeded"
    assert await JobImage.objects.filter(job=job, owner=alice).acount() == 2  # in the history
    after = await sync_to_async(ledger.account_for)(alice)
    assert after.balance == before - job.price and after.held == 0


async def test_img2img_with_a_base64_init_image(alice):
    body = {
        "init_images": [png_b64((96, 64), "orange")],
        "prompt": "a boat",
        "seed": 3,
        "steps": 4,
        "denoising_strength": 0.5,
        "width": 64,
        "height": 64,
        "resize_mode": 1,
        "sampler_name": "Euler a",
        "mask": None,
        "mask_blur": 4,
        "inpainting_fill": 0,
        "inpaint_full_res": True,
        "inpaint_full_res_padding": 32,
        "inpainting_mask_invert": 0,
        "include_init_images": False,
        "restore_faces": False,
        "tiling": False,
        "script_args": [],
        "alwayson_scripts": {},
    }
    client = await sync_to_async(sdapi_client)(alice)
    response = await post(client, "img2img", body)
    assert response.status_code == 200, response.content
    result = response.json()
    assert decoded(result["images"][0]).size == (64, 64)
    info = json.loads(result["info"])
    assert "Denoising strength: 0.5" in info["infotexts"][0]
    assert info["denoising_strength"] == 0.5 and info["sampler_name"] == "Euler a"
    assert result["parameters"]["init_images"] is None  # include_init_images false
    assert (await Job.objects.aget(owner=alice)).mode == "img2img"


async def test_override_settings_picks_the_model_for_that_call_only(alice):
    client = await sync_to_async(sdapi_client)(alice)
    v1, v2 = (
        await sync_to_async(title)("atelier-demo-v1"),
        await sync_to_async(title)("atelier-demo-v2"),
    )
    await post(client, "options", {"sd_model_checkpoint": v1})
    body = {**SMALL, "prompt": "a fox", "override_settings": {"sd_model_checkpoint": v2}}
    response = await post(client, "txt2img", body)
    assert response.status_code == 200, response.content
    info = json.loads(response.json()["info"])
    assert info["sd_model_name"] == "atelier-demo-v2"
    assert "Model: atelier-demo-v2" in info["infotexts"][0]
    assert (await get(client, "options")).json()["sd_model_checkpoint"] == v1


async def test_alice_switching_models_never_changes_bobs_image_nor_touches_his_job(alice, bob):
    """The multi-user fix: in A1111 one user's model switch changes another's image."""
    v1, v2 = (
        await sync_to_async(title)("atelier-demo-v1"),
        await sync_to_async(title)("atelier-demo-v2"),
    )
    alice_client = await sync_to_async(sdapi_client)(alice)
    bob_client = await sync_to_async(sdapi_client)(bob)
    await post(bob_client, "options", {"sd_model_checkpoint": v2})
    bob_call = asyncio.create_task(
        post(bob_client, "txt2img", {**SLOW, "prompt": "a red fox", "seed": 42})
    )
    bob_job = await wait_for_job(bob, status="running")

    assert (await post(alice_client, "options", {"sd_model_checkpoint": v1})).status_code == 200
    alice_progress = (await get(alice_client, "progress")).json()
    assert alice_progress["progress"] == 0 and alice_progress["state"]["job_count"] == 0
    assert (await post(alice_client, "interrupt")).json() == {}
    assert (await post(alice_client, "skip")).status_code == 200
    assert await status_of(bob_job) == "running"  # all of that happened while bob's job ran
    assert await sync_to_async(get_redis().get)(CANCEL_KEY.format(job_id=bob_job.pk)) is None

    response = await asyncio.wait_for(bob_call, 120)
    assert response.status_code == 200, response.content
    info = json.loads(response.json()["info"])
    assert info["sd_model_name"] == "atelier-demo-v2" and len(info["infotexts"]) == 2
    for b64 in response.json()["images"]:
        assert "Model: atelier-demo-v2" in (read_infotext(base64.b64decode(b64)) or "")
    bob_job = await Job.objects.aget(pk=bob_job.pk)
    assert bob_job.status == "succeeded" and bob_job.cancel_requested_at is None
    assert (await get(alice_client, "options")).json()["sd_model_checkpoint"] == v1
    assert (await get(bob_client, "options")).json()["sd_model_checkpoint"] == v2


async def test_progress_while_running_shows_steps_and_a_preview_and_interrupt_stops_it(alice):
    client = await sync_to_async(sdapi_client)(alice)
    call = asyncio.create_task(post(client, "txt2img", {**SLOW, "prompt": "a slow boat"}))
    job = await wait_for_job(alice, status="running")

    async def sampling() -> Any:
        body = (await get(client, "progress")).json()
        return body if body["state"]["sampling_step"] > 0 and body["current_image"] else None

    body = await wait_until(sampling)
    assert 0.01 < body["progress"] < 1 and body["eta_relative"] >= 0
    assert body["state"]["job"] == "scripts_txt2img" and body["state"]["sampling_steps"] > 0
    assert decoded(body["current_image"]).format == "JPEG"  # the worker's live preview
    assert (await get(client, "progress?skip_current_image=true")).json()["current_image"] is None

    assert (await post(client, "interrupt")).json() == {}
    response = await asyncio.wait_for(call, 120)
    assert response.status_code == 200 and response.json()["images"] == []
    job = await Job.objects.aget(pk=job.pk)
    assert job.status == "cancelled" and 0 < job.steps_done < job.total_steps
    assert (await get(client, "progress")).json()["progress"] == 0


async def test_a_client_that_hangs_up_still_gets_its_job_done_charged_and_in_its_history(alice):
    before = (await sync_to_async(ledger.account_for)(alice)).balance
    auth = basic_header("alice", await sync_to_async(token_for)(alice))
    body = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 20}
    connection = await asgi_request("POST", "/sdapi/v1/txt2img", auth, body)
    job = await wait_for_job(alice)
    await connection.send_input({"type": "http.disconnect"})  # the client is gone
    assert await status_of(job) in Job.UNFINISHED

    async def finished() -> bool:
        return await status_of(job) in Job.TERMINAL

    await wait_until(finished, timeout=120)  # generous: the machine may be busy
    job = await Job.objects.aget(pk=job.pk)
    assert job.status == "succeeded"
    assert await JobImage.objects.filter(job=job, owner=alice).acount() == 1
    after = await sync_to_async(ledger.account_for)(alice)
    assert after.balance == before - job.price and after.held == 0
    await connection.wait(30)
