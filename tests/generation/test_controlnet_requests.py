"""ControlNet units as requests carry them: REST and the A1111 API's `alwayson_scripts`, the
checks at submission (tier count, catalogue, preprocessors, fields, image caps), the price, the
worker's message, and sd-webui-controlnet's /controlnet/ endpoints. No engine here."""

from __future__ import annotations

import base64
import io
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse
from PIL import Image, ImageDraw

from accounts.models import MembershipTier
from generation.a1111.errors import A1111Error
from generation.a1111.translation import translate
from generation.job_messages import build_request
from generation.models import Job
from generation.submission import validate_params
from tests.generation.a1111_support import (
    WEBUIAPI_TXT2IMG,
    get,
    post,
    sdapi_client,
    thread_connections_closed,  # noqa: F401 - a fixture
)
from tests.generation.conftest import SMALL


def square_png() -> str:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill="white")
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


UNIT = {"image": square_png(), "module": "canny", "model": "canny-sd15"}
# What webuiapi's ControlNetUnit(...).to_dict() sends (its own defaults).
WEBUIAPI_UNIT = {
    "input_image": square_png(),
    "mask": None,
    "module": "canny",
    "model": "canny-sd15 [63616e6e]",
    "weight": 1.0,
    "resize_mode": "Resize and Fill",
    "lowvram": False,
    "processor_res": 512,
    "threshold_a": 100,
    "threshold_b": 200,
    "guidance": 1.0,
    "guidance_start": 0.0,
    "guidance_end": 1.0,
    "control_mode": 0,
    "pixel_perfect": False,
}


# --- REST ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_unit_is_stored_with_its_image_by_hash_and_sent_to_the_worker(
    alice, alice_api, catalogue
):
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [UNIT]}, format="json")
    assert response.status_code == 201, response.content
    job = Job.objects.get(owner=alice)
    (unit,) = job.params["controlnet"]
    assert unit["model"] == "canny-sd15" and unit["module"] == "canny"
    assert (unit["weight"], unit["guidance_start"], unit["guidance_end"]) == (1.0, 0.0, 1.0)
    assert len(unit["image_sha256"]) == 64 and "image" not in unit
    request = build_request(job)
    png = base64.b64decode(request["controlnet_images_png_b64"][unit["image_sha256"]])
    assert Image.open(io.BytesIO(png)).size == (64, 64)


@pytest.mark.django_db
def test_units_ride_along_with_an_inpaint_mask_to_the_worker(alice_api, catalogue):
    body = {**SMALL, "mode": "img2img", "init_image": square_png(), "mask": square_png()}
    unit = {**UNIT, "image": None, "module": "inpaint_only"}  # the source as its image
    response = alice_api.post("/api/v1/jobs/", {**body, "controlnet": [unit]}, format="json")
    assert response.status_code == 201, response.content
    request = build_request(Job.objects.get())
    assert request["inpaint"] is not None and request["mask_png_b64"]
    (sent,) = request["controlnet"]
    assert sent["module"] == "inpaint_only" and sent["image_sha256"] is None


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_inpaint_only_without_a_mask_is_refused_naming_the_units_module(alice_api, catalogue, mode):
    body = {**SMALL, "mode": mode, "init_image": square_png() if mode == "img2img" else None}
    unit = {**UNIT, "module": "inpaint_only"}
    response = alice_api.post("/api/v1/jobs/", {**body, "controlnet": [UNIT, unit]}, format="json")
    assert response.status_code == 422, response.content
    assert response.json()["field"] == "controlnet[1].module"
    assert "mask" in response.json()["detail"]
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_unit_adds_its_measured_cost_to_the_price(alice, catalogue):
    big = {**SMALL, "width": 512, "height": 512, "steps": 20}  # one credit without a unit
    plain = validate_params(alice, big).price
    one = validate_params(alice, {**big, "controlnet": [UNIT]}).price
    half = validate_params(alice, {**big, "controlnet": [{**UNIT, "guidance_end": 0.5}]}).price
    assert plain < half < one
    assert (plain, half, one) == (Decimal("1.00"), Decimal("1.11"), Decimal("1.22"))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("unit", "field", "words"),
    [
        ({**UNIT, "model": "depth-xl"}, "controlnet[0].model", "unknown ControlNet"),
        ({**UNIT, "module": "openpose"}, "controlnet[0].module", "openpose"),
        ({**UNIT, "starting_step": 2}, "controlnet[0].starting_step", "starting_step"),
        ({**UNIT, "weight": 3}, "controlnet[0].weight", "between 0 and 2"),
        ({**UNIT, "control_mode": "loud"}, "controlnet[0].control_mode", "balanced"),
        ({**UNIT, "guidance_start": 0.8, "guidance_end": 0.2}, "controlnet[0].guidance_end", ""),
        ({**UNIT, "image": "not base64!"}, "controlnet[0].image", "base64"),
        ({**UNIT, "image": None}, "controlnet[0].image", "img2img"),
    ],
)
def test_a_bad_unit_is_refused_naming_its_field(alice_api, catalogue, unit, field, words):
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [unit]}, format="json")
    assert response.status_code in (400, 422), response.content
    body = response.json()
    assert body["field"] == field and words in body["detail"]
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_the_tier_limits_how_many_units_a_job_may_have(alice, alice_api, catalogue):
    MembershipTier.objects.filter(is_default=True).update(max_controlnet_units=1)
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [UNIT, UNIT]}, format="json")
    assert response.status_code == 422
    assert response.json()["field"] == "controlnet" and "limit is 1" in response.json()["detail"]


# --- A1111 -----------------------------------------------------------------------------------


def _txt2img(units: list) -> dict:
    body = {**WEBUIAPI_TXT2IMG, "prompt": "x", "steps": 4, "width": 64, "height": 64}
    return {**body, "alwayson_scripts": {"controlnet": {"args": units}}}


@pytest.mark.django_db
def test_a_webuiapi_unit_becomes_the_jobs_unit_and_a_disabled_one_is_left_out(alice, catalogue):
    disabled = {**UNIT, "enabled": False}
    translated = translate(alice, _txt2img([WEBUIAPI_UNIT, disabled]), "txt2img").params
    (unit,) = translated["controlnet"]
    assert unit["model"] == "canny-sd15 [63616e6e]" and unit["resize_mode"] == 2
    assert unit["control_mode"] == "balanced" and unit["image"] == WEBUIAPI_UNIT["input_image"]
    (stored,) = validate_params(alice, translated).params["controlnet"]
    assert stored["model"] == "canny-sd15" and stored["threshold_a"] == 100


@pytest.mark.django_db
def test_an_a1111_inpaint_call_with_units_keeps_its_mask_and_units(alice, catalogue):
    body = {
        **{
            k: v
            for k, v in WEBUIAPI_TXT2IMG.items()
            if not k.startswith(("hr_", "firstphase_")) and k != "enable_hr"
        },
        "prompt": "x",
        "steps": 4,
        "width": 64,
        "height": 64,
        "init_images": [square_png()],
        "mask": square_png(),
        "inpaint_full_res": True,
        "alwayson_scripts": {"controlnet": {"args": [{**WEBUIAPI_UNIT, "module": "inpaint_only"}]}},
    }
    params = validate_params(alice, translate(alice, body, "img2img").params).params
    inpaint = params["inpaint"]
    assert inpaint is not None and inpaint["inpaint_full_res"] is True
    (unit,) = params["controlnet"]
    assert unit["module"] == "inpaint_only" and unit["model"] == "canny-sd15"

    # The extension's unit option not to crop its image to the "only masked" region: refused
    uncropped = {**WEBUIAPI_UNIT, "inpaint_crop_input_image": False}
    body["alwayson_scripts"] = {"controlnet": {"args": [uncropped]}}
    with pytest.raises(A1111Error) as refused:
        translate(alice, body, "img2img")
    assert refused.value.status == 422
    assert refused.value.field == "alwayson_scripts.controlnet.args[0].inpaint_crop_input_image"
    whole_picture = translate(alice, {**body, "inpaint_full_res": False}, "img2img").params
    assert len(whole_picture["controlnet"]) == 1  # nothing is cropped there: it asks for nothing


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("thread_connections_closed")
@pytest.mark.parametrize(
    ("scripts", "field", "words"),
    [
        ({"ADetailer": {"args": []}}, "alwayson_scripts", "ADetailer"),
        (
            {"controlnet": {"args": [{**UNIT, "ipadapter_input": []}]}},
            "alwayson_scripts.controlnet.args[0].ipadapter_input",
            "no such field",
        ),
        (
            {"controlnet": {"args": [{**UNIT, "model": "nope"}]}},
            "alwayson_scripts.controlnet.args[0].model",
            "nope",
        ),
        (
            {"controlnet": {"args": [{**UNIT, "image": {"image": UNIT["image"], "mask": "x"}}]}},
            "alwayson_scripts.controlnet.args[0].image.mask",
            "mask",
        ),
    ],
)
async def test_an_unknown_script_or_unit_field_is_422_naming_it(
    alice, catalogue, scripts, field, words
):
    client = await sync_to_async(sdapi_client)(alice)
    body = {**_txt2img([]), "alwayson_scripts": scripts}
    response = await post(client, "txt2img", body)
    assert response.status_code == 422, response.content
    assert response.json()["field"] == field and words in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("thread_connections_closed")
async def test_the_controlnet_endpoints_answer_as_the_extension_does(alice, catalogue):
    client = await sync_to_async(sdapi_client)(alice)
    assert (await client.get("/controlnet/version")).json() == {"version": 2}
    models = (await client.get("/controlnet/model_list")).json()["model_list"]
    assert models == ["canny-sd15 [63616e6e]"]
    modules = (await client.get("/controlnet/module_list")).json()
    assert modules["module_list"][:3] == ["none", "canny", "inpaint_only"]
    assert "canny" in modules["module_detail"]
    scripts = (await get(client, "scripts")).json()
    assert scripts == {"txt2img": ["controlnet"], "img2img": ["controlnet"]}
    # /controlnet/detect runs on a worker: tests/generation/test_controlnet_preview.py


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("thread_connections_closed")
async def test_a_tier_without_units_lists_no_scripts(alice, catalogue):
    await sync_to_async(MembershipTier.objects.filter(is_default=True).update)(
        max_controlnet_units=0
    )
    client = await sync_to_async(sdapi_client)(alice)
    assert (await get(client, "scripts")).json() == {"txt2img": [], "img2img": []}


@pytest.mark.django_db
def test_the_job_page_shows_each_unit_as_the_extension_writes_it(
    client, alice, alice_api, catalogue
):
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [UNIT]}, format="json")
    client.force_login(alice)
    page = client.get(reverse("job_detail", args=[response.json()["id"]])).content.decode()
    assert (
        "ControlNet 0" in page
        and "Module: canny, Model: canny-sd15 [63616e6e], Weight: 1.0" in page
    )


@pytest.mark.django_db
def test_the_generator_opens_after_a_controlnet_job_without_carrying_the_units(
    client, alice, alice_api, catalogue
):
    alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [UNIT]}, format="json")
    client.force_login(alice)
    response = client.get(reverse("generate"))
    assert response.status_code == 200
    assert UNIT["image"] not in response.content.decode()  # units keep a hash, never the image


@pytest.mark.django_db
def test_units_that_are_not_a_list_are_refused_naming_the_field(alice_api, catalogue):
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": "canny"}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "controlnet"
