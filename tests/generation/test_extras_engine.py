"""Extras (upscale) jobs end to end on the real GPU worker with the demo upscaler, through REST
and the A1111 API: the size doubles, the price held is the price charged, the result lands in
My images, bob cannot touch alice's image, and a cancel releases the hold."""

from __future__ import annotations

import base64
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from PIL import Image

from accounts import ledger
from generation.broker import get_redis
from generation.models import Job, JobImage
from gpu_worker.protocol import PROGRESS_KEY
from tests.gallery.factories import make_image
from tests.generation.a1111_support import (
    post,
    sdapi_client,
)
from tests.generation.conftest import api_client, wait_for
from tests.generation.real_worker import REAL_WORKER_MARKS

pytest.importorskip("diffusers")
pytestmark = REAL_WORKER_MARKS

DEMO = "atelier-demo-upscaler"
SLOW = "slow-upscaler"  # a heavier random RRDB: about half a second a tile on this CPU


@pytest.fixture(scope="module", autouse=True)
def slow_upscaler(request: pytest.FixtureRequest) -> None:
    from safetensors.torch import save_file

    from gpu_worker.upscalers import random_state

    folder: Path = request.getfixturevalue("demo_models")
    state = random_state("esrgan-new", features=16, blocks=2, growth=8)
    save_file(state, str(folder / "ESRGAN" / f"{SLOW}.safetensors"))


def png_b64(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.effect_noise((width, height), 50).convert("RGB").save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def finished(job_id: str, timeout: float = 60.0) -> Job:
    return wait_for(
        lambda: Job.objects.filter(pk=job_id, status__in=Job.TERMINAL).first(), timeout=timeout
    )


def test_alice_doubles_her_image_with_an_esrgan_and_pays_the_price_held(alice):
    client = api_client(alice)
    image = make_image(alice)  # 64x96, with its generation parameters
    before = ledger.account_for(alice).balance
    body = {"image_id": str(image.pk), "upscaler_1": DEMO, "scale": 2}
    quote = client.post("/api/v1/extras/quote/", body, format="json").json()
    job = client.post("/api/v1/extras/", body, format="json").json()
    assert job["price"] == quote["price"]
    done = finished(job["id"])
    assert done.status == "succeeded", done.error
    result = JobImage.objects.get(job=done)
    assert (result.width, result.height) == (128, 192)
    assert result.infotext == f"Postprocess upscale by: 2, Postprocess upscaler: {DEMO}"
    with result.file.open("rb") as fh:
        png = Image.open(io.BytesIO(fh.read()))
    assert png.size == (128, 192) and png.info["parameters"] == image.infotext
    account = ledger.account_for(alice)
    assert account.balance == before - Decimal(job["price"]) and account.held == 0
    assert done.steps_done == done.total_steps
    mine = client.get("/api/v1/images/").json()["results"]
    assert str(result.pk) in [row["id"] for row in mine]
    # "Reuse parameters" on the upscale brings back the generation it came from
    browser = Client()
    browser.force_login(alice)
    page = browser.get(f"/generate/?from_image={result.pk}").content.decode()
    assert image.job.params["prompt"] in page


def test_bob_cannot_upscale_alices_image_on_the_real_worker_either(alice, bob):
    image = make_image(alice)
    response = api_client(bob).post(
        "/api/v1/extras/", {"image_id": str(image.pk), "upscaler_1": DEMO}, format="json"
    )
    assert response.status_code == 404
    assert not Job.objects.filter(owner=bob).exists()


def test_cancelling_a_running_upscale_releases_the_hold_but_the_tiles_done(alice):
    client = api_client(alice)
    before = ledger.account_for(alice).balance
    body = {"image": png_b64(400, 400), "upscaler_1": SLOW, "scale": 2}
    job = client.post("/api/v1/extras/", body, format="json").json()
    assert job["total_steps"] == 9  # 3 x 3 tiles of 192 px over 400 x 400

    def progress() -> Any:
        raw = get_redis().get(PROGRESS_KEY.format(job_id=job["id"]))
        return raw and json.loads(raw)["step"] >= 1

    wait_for(progress, timeout=60)
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel/").status_code == 200
    done = finished(job["id"])
    assert done.status == "cancelled" and 1 <= done.steps_done < 9
    account = ledger.account_for(alice)
    charged = ledger.pro_rata(Decimal(job["price"]), done.steps_done, 9)
    assert account.held == 0 and account.balance == before - charged
    assert charged < Decimal(job["price"])
    assert not JobImage.objects.filter(job=done).exists()


@pytest.mark.usefixtures("thread_connections_closed")
async def test_the_a1111_single_image_endpoint_doubles_an_upload(alice):
    client = await sync_to_async(sdapi_client)(alice)
    body = {"image": png_b64(64, 64), "upscaler_1": DEMO, "upscaling_resize": 2}
    response = await post(client, "extra-single-image", body)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert set(answer) == {"html_info", "image"}
    assert decoded(answer["image"]).size == (128, 128)
    assert answer["html_info"] == f"<p>Postprocess upscale by: 2, Postprocess upscaler: {DEMO}</p>"
    job = await Job.objects.aget(owner=alice, mode="extras")
    assert job.status == "succeeded" and job.checkpoint_id is not None


@pytest.mark.usefixtures("thread_connections_closed")
async def test_the_a1111_batch_endpoint_upscales_each_image(alice):
    client = await sync_to_async(sdapi_client)(alice)
    images = [{"data": png_b64(64, 64), "name": "a"}, {"data": png_b64(48, 32), "name": "b"}]
    body = {"imageList": images, "upscaler_1": "Lanczos", "upscaling_resize": 2}
    response = await post(client, "extra-batch-images", body)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert [decoded(b64).size for b64 in answer["images"]] == [(128, 128), (96, 64)]
    assert "Postprocess upscaler: Lanczos" in answer["html_info"]
    assert await Job.objects.filter(owner=alice, mode="extras", status="succeeded").acount() == 2


@pytest.mark.usefixtures("thread_connections_closed")
async def test_the_a1111_extras_restore_faces_with_the_demo_gfpgan(alice):
    client = await sync_to_async(sdapi_client)(alice)
    body = {"image": png_b64(64, 64), "upscaler_1": DEMO, "gfpgan_visibility": 1}
    response = await post(client, "extra-single-image", body)
    assert response.status_code == 200, response.content
    assert "GFPGAN visibility: 1" in response.json()["html_info"]


@pytest.mark.usefixtures("thread_connections_closed")
async def test_with_the_operators_opt_in_extras_runs_gfpgan_then_codeformer(alice, settings):
    client = await sync_to_async(sdapi_client)(alice)
    body = {"image": png_b64(64, 64), "upscaler_1": DEMO, "gfpgan_visibility": 1}
    body |= {"codeformer_visibility": 1, "codeformer_weight": 0.5}
    refused = await post(client, "extra-single-image", body)
    assert refused.status_code == 422 and refused.json()["field"] == "codeformer_visibility"
    settings.ALLOW_NONCOMMERCIAL_MODELS = "codeformer:S-Lab-1.0"
    response = await post(client, "extra-single-image", body)
    assert response.status_code == 200, response.content
    info = response.json()["html_info"]
    assert "GFPGAN visibility: 1, CodeFormer visibility: 1, CodeFormer weight: 0.5" in info


@pytest.mark.usefixtures("thread_connections_closed")
async def test_with_the_operators_opt_in_a1111_txt2img_restores_faces_with_codeformer(
    alice, settings
):
    client = await sync_to_async(sdapi_client)(alice)
    body = {"prompt": "a portrait", "steps": 2, "width": 64, "height": 64, "restore_faces": True}
    body["override_settings"] = {"face_restoration_model": "CodeFormer", "code_former_weight": 0}
    refused = await post(client, "txt2img", body)
    assert refused.status_code == 422
    assert refused.json()["field"] == "override_settings.face_restoration_model"
    settings.ALLOW_NONCOMMERCIAL_MODELS = "codeformer:S-Lab-1.0"
    response = await post(client, "txt2img", body)
    assert response.status_code == 200, response.content
    info = json.loads(response.json()["info"])
    assert info["face_restoration_model"] == "CodeFormer"
    assert "Face restoration: CodeFormer" in info["infotexts"][0]


def test_txt2img_with_restore_faces_says_so_in_the_image_on_the_real_worker(alice):
    client = api_client(alice)
    body = {"prompt": "a portrait", "steps": 2, "width": 64, "height": 64, "restore_faces": True}
    job = client.post("/api/v1/jobs/", body, format="json").json()
    done = finished(job["id"])
    assert done.status == "succeeded", done.error
    image = JobImage.objects.get(job=done)
    assert "Face restoration: GFPGAN" in image.infotext
