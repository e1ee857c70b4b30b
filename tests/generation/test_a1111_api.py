"""/sdapi/v1/ without the diffusion engine: authentication, listings, options, request
translation and errors, progress and interrupt, as A1111 clients see them. Where a job must
finish, the GPU worker's answer is sent as the worker sends it (a message on the platform queue),
or the owner stops the job."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from accounts import ledger
from generation.limits import limits_for
from generation.models import Job
from generation.submission import cancel_job, submit_job
from generation.suspension import suspend_user
from gpu_worker.infotext import build_infotext
from gpu_worker.protocol import JobEvent, ResultImage
from tests.conftest import make_user
from tests.generation.a1111_support import (
    WEBUIAPI_TXT2IMG,
    SdapiClient,
    basic_header,
    get,
    png_b64,
    post,
    sdapi_client,
    thread_connections_closed,  # noqa: F401 - a fixture
    token_for,
    wait_for_job,
)
from tests.generation.conftest import SMALL, send_event

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("thread_connections_closed"),
]

# From reference/a1111-api.md: every key of a txt2img response's `info`.
INFO_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds",
    "subseed", "all_subseeds", "subseed_strength", "width", "height", "sampler_name",
    "cfg_scale", "steps", "batch_size", "restore_faces", "sd_model_name", "sd_model_hash",
    "sd_vae_name", "sd_vae_hash", "denoising_strength", "extra_generation_params",
    "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip", "version",
}  # fmt: skip


async def client_of(user: Any, bearer: bool = False) -> SdapiClient:
    return await sync_to_async(sdapi_client)(user, bearer)


async def stop(user: Any, job: Job) -> None:
    await sync_to_async(cancel_job)(user, job)


# --- authentication --------------------------------------------------------------------------


async def test_anonymous_callers_get_401_with_a_basic_challenge(alice, catalogue):
    anonymous = AsyncClient()
    for response in (
        await get(anonymous, "sd-models"),
        await post(anonymous, "txt2img", {"prompt": "x"}),
        await get(anonymous, "progress"),
    ):
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Basic")
        assert set(response.json()) >= {"error", "detail"}
    assert await sync_to_async(Job.objects.count)() == 0


async def test_a_wrong_token_or_someone_elses_username_is_refused(alice, bob, catalogue):
    secret = await sync_to_async(token_for)(alice)
    for header in (
        basic_header("alice", "atl_not-a-token"),
        basic_header("bob", secret),  # alice's token does not work under bob's name
        "Bearer atl_not-a-token",
    ):
        response = await get(SdapiClient(header), "sd-models")
        assert response.status_code == 401, header
        assert "token" in response.json()["detail"].lower()


async def test_basic_and_bearer_tokens_both_work(alice, catalogue):
    for bearer in (False, True):
        response = await get(await client_of(alice, bearer), "sd-models")
        assert response.status_code == 200
        assert [m["model_name"] for m in response.json()] == ["model-a", "model-b"]


async def test_a_suspended_member_is_refused(alice, carol, catalogue):
    client = await client_of(alice)
    assert (await get(client, "options")).status_code == 200
    await sync_to_async(suspend_user)(carol, alice, "spam")
    assert (await get(client, "options")).status_code == 401


# --- listings and options --------------------------------------------------------------------


async def test_sd_models_lists_what_the_caller_may_pick_in_a1111s_shape(alice, catalogue):
    models = (await get(await client_of(alice), "sd-models")).json()
    a = catalogue["a"]
    assert models[0] == {
        "title": f"model-a.safetensors [{a.short_hash}]",
        "model_name": "model-a",
        "hash": a.short_hash,
        "sha256": a.sha256,
        "filename": "checkpoint/model-a.safetensors",
        "config": None,
    }
    assert [m["model_name"] for m in models] == ["model-a", "model-b"]  # not disabled or gone


async def test_the_other_listings_have_a1111s_shapes(alice, catalogue):
    client = await client_of(alice)
    samplers = (await get(client, "samplers")).json()
    assert {"name", "aliases", "options"} == set(samplers[0])
    names = [s["name"] for s in samplers]
    assert "Euler" in names and "DPM++ 2M" in names and "DPM fast" not in names
    schedulers = (await get(client, "schedulers")).json()
    assert set(schedulers[0]) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
    assert {"karras", "Karras"} <= {schedulers[2]["name"], schedulers[2]["label"]}
    assert (await get(client, "loras")).json() == [
        {"name": "style", "alias": "style", "path": "lora/style.safetensors", "metadata": {}}
    ]
    assert (await get(client, "sd-vae")).json() == [
        {"model_name": "clear-vae", "filename": "vae/clear-vae.safetensors"}
    ]
    assert (await get(client, "embeddings")).json() == {"loaded": {}, "skipped": {}}
    upscalers = (await get(client, "upscalers")).json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"]
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    modes = (await get(client, "latent-upscale-modes")).json()
    assert modes[0] == {"name": "Latent"} and len(modes) == 6
    assert (await get(client, "prompt-styles")).json() == []


async def test_options_round_trip_sets_only_the_callers_default_model(alice, bob, catalogue):
    alice_client, bob_client = await client_of(alice), await client_of(bob)
    a, b = catalogue["a"], catalogue["b"]
    options = (await get(alice_client, "options")).json()
    assert options["sd_model_checkpoint"] == a.title
    assert options["sd_checkpoint_hash"] == a.sha256
    response = await post(alice_client, "options", {"sd_model_checkpoint": b.title})
    assert response.status_code == 200 and response.json() is None
    assert (await get(alice_client, "options")).json()["sd_model_checkpoint"] == b.title
    assert (await get(bob_client, "options")).json()["sd_model_checkpoint"] == a.title
    # A1111 also accepts the short hash, the name, and the file name
    for name in (a.short_hash, "model-a", "model-a.safetensors"):
        await post(bob_client, "options", {"sd_model_checkpoint": b.title})
        await post(bob_client, "options", {"sd_model_checkpoint": name})
        assert (await get(bob_client, "options")).json()["sd_model_checkpoint"] == a.title
    job = await sync_to_async(submit_job)(alice, {**SMALL, "checkpoint": None})
    assert job.checkpoint_id == b.pk  # alice's default, and only hers


async def test_posting_an_unknown_model_is_422_with_the_valid_models(alice, catalogue):
    response = await post(await client_of(alice), "options", {"sd_model_checkpoint": "nope"})
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "sd_model_checkpoint"
    assert catalogue["a"].title in body["detail"] and catalogue["b"].title in body["detail"]
    assert "model-off" not in body["detail"]


async def test_memory_is_for_staff_and_members_get_nothing_about_the_machines(
    alice, carol, redis_client
):
    full = (await get(await client_of(carol), "memory")).json()
    assert set(full["ram"]) == {"free", "used", "total"} and full["ram"]["total"] > 0
    assert "cuda" in full
    summary = (await get(await client_of(alice), "memory")).json()
    assert set(summary) == {"ram", "cuda"}
    assert set(summary["ram"]) == {"error"} and set(summary["cuda"]) == {"error"}


async def test_refreshing_checkpoints_is_staff_only_and_rescans_the_models(
    alice, carol, catalogue, redis_client, settings, tmp_path
):
    settings.MODELS_DIR = tmp_path  # an empty models folder and no worker: nothing is left
    for path in ("refresh-checkpoints", "refresh-loras"):
        assert (await post(await client_of(alice), path)).status_code == 403
    assert (await get(await client_of(alice), "sd-models")).json() != []
    response = await post(await client_of(carol), "refresh-checkpoints")
    assert response.status_code == 200 and response.json() is None
    assert (await get(await client_of(alice), "sd-models")).json() == []


async def test_png_info_reads_a1111_parameters(alice):
    text = build_infotext(
        "a castle",
        "fog",
        {"Steps": 20, "Sampler": "DPM++ 2M", "CFG scale": 7.0, "Seed": 5, "Size": "512x768"},
    )
    client = await client_of(alice)
    body = (await post(client, "png-info", {"image": png_b64(infotext=text)})).json()
    assert body["info"] == text
    assert body["items"] == {}
    params = body["parameters"]
    assert params["Prompt"] == "a castle" and params["Negative prompt"] == "fog"
    assert (params["Steps"], params["Size-1"], params["Size-2"]) == ("20", "512", "768")
    assert (await post(client, "png-info", {"image": ""})).json() == {
        "info": "",
        "items": {},
        "parameters": {},
    }
    response = await post(client, "png-info", {"image": "not base64!"})
    assert response.status_code == 422 and response.json()["field"] == "image"


# --- txt2img: translation, defaults, errors --------------------------------------------------


async def test_a_minimal_prompt_gets_a1111s_defaults_and_answers_in_a1111s_shape(
    alice, catalogue, broker, platform_worker
):
    client = await client_of(alice)
    call = asyncio.create_task(post(client, "txt2img", {"prompt": "a lighthouse"}))
    job = await wait_for_job(alice)
    p = job.params
    assert (p["steps"], p["sampler"], p["cfg_scale"], p["width"], p["height"]) == (
        50,
        "Euler",
        7.0,
        512,
        512,
    )
    assert (p["batch_size"], p["n_iter"], p["checkpoint"], p["hires"]) == (1, 1, "model-a", None)
    # The GPU worker's answer, as it sends it
    text = build_infotext(
        "a lighthouse",
        "",
        {
            "Steps": 50,
            "Sampler": "Euler",
            "Schedule type": "Uniform",
            "CFG scale": 7.0,
            "Seed": p["seed"],
            "Size": "512x512",
            "Model hash": job.checkpoint.short_hash,
            "Model": "model-a",
            "Version": "atelier-0.1",
        },
    )
    image: ResultImage = {
        "png_b64": png_b64((512, 512), infotext=text),
        "seed": p["seed"],
        "infotext": text,
        "width": 512,
        "height": 512,
    }
    started = JobEvent(job_id=str(job.pk), attempt=job.attempt, worker_id="gpu-1", kind="started")
    send_event(broker, started)
    send_event(broker, {**started, "kind": "succeeded", "images": [image]})
    response = await asyncio.wait_for(call, 30)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    assert body["images"] == [image["png_b64"]]
    assert body["parameters"]["prompt"] == "a lighthouse"
    assert body["parameters"]["steps"] == 50 and body["parameters"]["sampler_index"] == "Euler"
    assert body["parameters"]["send_images"] is True and body["parameters"]["script_args"] == []
    assert isinstance(body["info"], str)
    info = json.loads(body["info"])
    assert set(info) >= INFO_KEYS
    assert info["prompt"] == "a lighthouse" and info["all_prompts"] == ["a lighthouse"]
    assert info["negative_prompt"] == "" and info["all_negative_prompts"] == [""]
    assert info["seed"] == p["seed"] and info["all_seeds"] == [p["seed"]]
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (512, 512, 50, 7)
    assert info["sampler_name"] == "Euler" and info["batch_size"] == 1
    assert info["restore_faces"] is False and info["subseed_strength"] == 0
    assert info["sd_model_name"] == "model-a"
    assert info["sd_model_hash"] == job.checkpoint.short_hash
    assert info["sd_vae_name"] is None and info["sd_vae_hash"] is None
    assert info["infotexts"] == [text] and info["index_of_first_image"] == 0
    assert info["extra_generation_params"] == {"Schedule type": "Uniform"}
    assert info["styles"] == [] and info["clip_skip"] == 1 and info["version"] == "atelier-0.1"
    assert len(info["job_timestamp"]) == 14 and info["job_timestamp"].isdigit()


async def test_the_neutral_fields_real_clients_send_are_accepted(alice, catalogue, broker):
    body = {**WEBUIAPI_TXT2IMG, "prompt": "a fox", "width": 64, "height": 64, "steps": 4}
    call = asyncio.create_task(post(await client_of(alice), "txt2img", body))
    job = await wait_for_job(alice)
    assert (job.params["steps"], job.params["sampler"], job.params["width"]) == (4, "Euler", 64)
    await stop(alice, job)  # the owner's Stop: the call answers with no images
    response = await asyncio.wait_for(call, 30)
    assert response.status_code == 200
    assert response.json()["images"] == []
    assert json.loads(response.json()["info"])["infotexts"] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("restore_faces", True),
        ("script_name", "x/y/z plot"),
        ("alwayson_scripts", {"ADetailer": {"args": [True]}}),
        ("styles", ["cinematic"]),
        ("eta", 0.4),
        ("s_churn", 0.5),
        ("hr_upscaler", "R-ESRGAN 4x+"),
        ("hr_sampler_name", "DPM++ 2M"),
        ("refiner_checkpoint", "sdxl-refiner"),
    ],
)
async def test_a_feature_we_lack_is_refused_with_422_naming_the_field(
    alice, catalogue, field, value
):
    body = {**WEBUIAPI_TXT2IMG, "prompt": "x", "enable_hr": field.startswith("hr_"), field: value}
    response = await post(await client_of(alice), "txt2img", body)
    assert response.status_code == 422
    assert response.json()["field"] == field and field in response.json()["detail"]
    assert await sync_to_async(Job.objects.count)() == 0


async def test_an_unknown_sampler_or_model_is_422_with_the_valid_names(alice, catalogue):
    client = await client_of(alice)
    response = await post(client, "txt2img", {"prompt": "x", "sampler_name": "Euler z"})
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "sampler_name" and "Euler a" in body["detail"]
    assert set(body) >= {"error", "detail", "body", "errors"}
    response = await post(
        client, "txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "sdxl"}}
    )
    assert response.status_code == 422
    assert response.json()["field"] == "override_settings.sd_model_checkpoint"
    assert catalogue["b"].title in response.json()["detail"]


async def test_limits_are_422_naming_the_limit(alice, catalogue):
    client = await client_of(alice)
    limit = (await sync_to_async(limits_for)(alice)).max_steps
    response = await post(client, "txt2img", {"prompt": "x", "steps": limit + 1})
    assert response.status_code == 422
    assert response.json()["field"] == "steps" and str(limit) in response.json()["detail"]
    response = await post(client, "txt2img", {"prompt": "x", "enable_hr": True, "hr_scale": 9})
    assert response.status_code == 422
    assert response.json()["field"] == "hr_scale" and "hr_scale" in response.json()["detail"]


async def test_without_enough_credits_the_answer_is_402(carol, catalogue):
    dave = await sync_to_async(make_user)("dave")
    balance = (await sync_to_async(ledger.account_for)(dave)).balance
    if balance:
        await sync_to_async(ledger.adjust)(dave, -balance, actor=carol, reason="test")
    response = await post(await client_of(dave), "txt2img", {"prompt": "x"})
    assert response.status_code == 402
    assert response.json()["error"] == "PaymentRequired"


async def test_img2img_without_an_init_image_is_404_and_a_mask_is_422(alice, catalogue):
    client = await client_of(alice)
    response = await post(client, "img2img", {"prompt": "x"})
    assert response.status_code == 404
    assert response.json()["detail"] == "Init image not found"
    response = await post(client, "img2img", {"init_images": [png_b64()], "mask": png_b64()})
    assert response.status_code == 422 and response.json()["field"] == "mask"


def test_an_infotext_fills_only_the_fields_the_request_left_out(alice, catalogue):
    from generation.a1111.translation import translate

    text = build_infotext(
        "from the image",
        "ugly",
        {
            "Steps": 12,
            "Sampler": "DPM++ 2M",
            "Schedule type": "Karras",
            "CFG scale": 5.5,
            "Seed": 42,
            "Size": "64x96",
            "Model": "model-b",
            "Denoising strength": 0.4,
            "Hires upscale": 1.5,
            "Hires upscaler": "Latent",
        },
    )
    params = translate(alice, {"prompt": "mine", "steps": 8, "infotext": text}, "txt2img").params
    assert params["prompt"] == "mine" and params["steps"] == 8  # set by the request
    assert params["negative_prompt"] == "ugly" and params["cfg_scale"] == 5.5
    assert (params["sampler"], params["scheduler"], params["seed"]) == ("DPM++ 2M", "Karras", 42)
    assert (params["width"], params["height"], params["checkpoint"]) == (64, 96, "model-b")
    assert params["hires"]["scale"] == 1.5 and params["hires"]["denoising_strength"] == 0.4
    elsewhere = text.replace("Model: model-b", "Model: someone-elses-model")
    params = translate(alice, {"infotext": elsewhere}, "txt2img").params
    assert "checkpoint" not in params  # a model we lack: the caller's default is used


async def test_a_model_outside_the_callers_tier_is_422_listing_only_the_models_it_allows(
    alice, catalogue
):
    from accounts.models import MembershipTier
    from accounts.tiers import set_tier

    def restrict() -> None:
        tier = MembershipTier.objects.create(
            name="Basic", slug="basic", rank=1, all_models=False, allowed_models=["model-a"]
        )
        set_tier(alice, tier)

    await sync_to_async(restrict)()
    client = await client_of(alice)
    body = {"prompt": "x", "override_settings": {"sd_model_checkpoint": "model-b"}}
    response = await post(client, "txt2img", body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert catalogue["a"].title in detail and catalogue["b"].title not in detail.split("valid")[1]
    assert await sync_to_async(Job.objects.count)() == 0
    models = (await get(client, "sd-models")).json()
    assert [m["model_name"] for m in models] == ["model-a"]
