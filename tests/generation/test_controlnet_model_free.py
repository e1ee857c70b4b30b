"""sd-webui-controlnet's model-free preprocessors at the platform: listed with the extension's
sliders, each slider's default where a unit leaves it out (or sends the extension's -1), a value
outside its slider refused naming the field and the range, in jobs and in previews. The maps
themselves: tests/gpu_worker/test_model_free_preprocessors.py."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from generation.a1111.translation import translate
from generation.models import Job
from generation.submission import validate_params
from gpu_worker.preprocessors import run_preprocessor
from tests.generation.a1111_support import (
    WEBUIAPI_TXT2IMG,
    post,
    sdapi_client,
    thread_connections_closed,  # noqa: F401 - a fixture
)
from tests.generation.conftest import SMALL
from tests.generation.test_controlnet_preview import DETECT, b64, decoded, square
from tests.generation.test_controlnet_requests import UNIT, square_png
from tests.gpu_worker.test_model_free_preprocessors import MODEL_FREE

NEW_MODULES = list(MODEL_FREE)


def _txt2img(units: list) -> dict:
    body = {**WEBUIAPI_TXT2IMG, "prompt": "x", "steps": 4, "width": 64, "height": 64}
    return {**body, "alwayson_scripts": {"controlnet": {"args": units}}}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("thread_connections_closed")
async def test_module_list_offers_them_with_the_extensions_sliders(alice, catalogue):
    client = await sync_to_async(sdapi_client)(alice)
    modules = (await client.get("/controlnet/module_list")).json()
    assert set(NEW_MODULES) <= set(modules["module_list"])
    detail = modules["module_detail"]
    assert detail["tile_resample"]["sliders"][1]["name"] == "Down Sampling Rate"
    assert detail["threshold"]["sliders"][1]["value"] == 127
    assert detail["invert"] == {"model_free": False, "sliders": []}


@pytest.mark.django_db
def test_the_generators_menu_offers_them_with_their_sliders_for_its_script(
    client, alice, catalogue
):
    client.force_login(alice)
    page = client.get(reverse("generate")).content.decode()
    for module in NEW_MODULES:
        assert f'<option value="{module}"' in page
    data = json.loads(page.split('id="generator-data" type="application/json">')[1].split("<")[0])
    tile = data["controlnet_sliders"]["tile_resample"]
    assert tile["resolution"] is False and tile["threshold_b"] is None
    assert (tile["threshold_a"]["name"], tile["threshold_a"]["max"]) == ("Down Sampling Rate", 8.0)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("module", "threshold_a"),
    [("tile_resample", 1.0), ("threshold", 127.0), ("blur_gaussian", 9.0), ("canny", 100.0)],
)
def test_a_unit_without_its_slider_takes_the_modules_default(
    alice, alice_api, catalogue, module, threshold_a
):
    unit = {"image": square_png(), "module": module, "model": "canny-sd15"}
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [unit]}, format="json")
    assert response.status_code == 201, response.content
    (stored,) = Job.objects.get(owner=alice).params["controlnet"]
    assert stored["module"] == module and stored["threshold_a"] == threshold_a


@pytest.mark.django_db
def test_an_a1111_unit_sending_minus_one_gets_the_modules_default(alice, catalogue):
    unit = {**UNIT, "module": "scribble_xdog", "threshold_a": -1, "threshold_b": -1}
    translated = translate(alice, _txt2img([unit]), "txt2img").params
    (stored,) = validate_params(alice, translated).params["controlnet"]
    assert (stored["module"], stored["threshold_a"]) == ("scribble_xdog", 32.0)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("module", "value", "words"),
    [
        ("tile_resample", 9, "between 1 and 8"),
        ("blur_gaussian", 0, "between 0.01 and 64"),
        ("scribble_xdog", 100, "between 1 and 64"),
        ("recolor_luminance", 2.5, "between 0.1 and 2"),
    ],
)
def test_a_slider_value_out_of_range_is_422_naming_the_field_and_range(
    alice_api, catalogue, module, value, words
):
    unit = {**UNIT, "module": module, "threshold_a": value}
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [unit]}, format="json")
    assert response.status_code == 422, response.content
    body = response.json()
    assert body["field"] == "controlnet[0].threshold_a" and words in body["detail"]
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("thread_connections_closed")
async def test_the_a1111_api_refuses_an_out_of_range_slider_naming_it(alice, catalogue):
    client = await sync_to_async(sdapi_client)(alice)
    unit = {**UNIT, "module": "threshold", "threshold_a": 300}
    response = await post(client, "txt2img", _txt2img([unit]))
    assert response.status_code == 422, response.content
    assert "threshold_a" in response.json()["field"]
    assert "between 0 and 255" in response.json()["detail"]


@pytest.mark.django_db
def test_an_invert_preview_is_the_workers_map(alice_api, preview_worker):
    body = {"module": "invert", "image": b64(square())}
    response = alice_api.post(DETECT, body, format="json")
    assert response.status_code == 200, response.content
    made = decoded(response.json()["image"])
    assert made.tobytes() == run_preprocessor("invert", square(), 512, 100, 200).tobytes()
    assert made.getpixel((0, 0)) == (255, 255, 255)  # the black corner is white now


@pytest.mark.django_db
def test_a_preview_with_an_out_of_range_slider_is_422(alice_api, preview_worker):
    body = {"module": "blur_gaussian", "image": b64(square()), "threshold_a": 100}
    response = alice_api.post(DETECT, body, format="json")
    assert response.status_code == 422, response.content
    assert response.json()["field"] == "threshold_a"
    assert "between 0.01 and 64" in response.json()["detail"]
