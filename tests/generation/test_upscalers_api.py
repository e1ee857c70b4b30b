"""Upscaler models at the front doors: listed by REST and the A1111 API, usable in hires fix by
name, an unknown one refused naming the field."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from generation.a1111.translation import translate
from generation.models import CatalogEntry
from generation.submission import validate_params
from tests.generation.a1111_support import get, sdapi_client
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def upscaler(catalogue) -> CatalogEntry:
    return CatalogEntry.objects.create(
        name="4x-demo", kind="upscaler", filename="ESRGAN/4x-demo.safetensors", sha256="ab" * 32
    )


def test_rest_lists_upscalers_and_hires_takes_one_by_name(alice_api, upscaler):
    assert [u["name"] for u in alice_api.get("/api/v1/upscalers/").json()] == ["4x-demo"]
    hires = {"scale": 2, "upscaler": "4x-demo", "denoising_strength": 0.5}
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "hires": hires}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["params"]["hires"]["upscaler"] == "4x-demo"


def test_an_unknown_or_disabled_upscaler_is_422_naming_the_field(alice_api, upscaler):
    hires = {"scale": 2, "upscaler": "4x-nope", "denoising_strength": 0.5}
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "hires": hires}, format="json")
    assert response.status_code == 422
    assert response.json()["field"] == "hires.upscaler" and "4x-demo" in response.json()["detail"]
    CatalogEntry.objects.filter(pk=upscaler.pk).update(enabled=False)
    hires["upscaler"] = "4x-demo"
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "hires": hires}, format="json")
    assert response.status_code == 422


async def test_the_a1111_api_lists_and_accepts_upscaler_models(alice, upscaler):
    client = await sync_to_async(sdapi_client)(alice)
    listed = (await get(client, "upscalers")).json()
    assert [u["name"] for u in listed] == ["None", "Lanczos", "Nearest", "4x-demo"]
    assert listed[3]["model_path"] == "ESRGAN/4x-demo.safetensors"

    def hires_upscaler() -> str:
        body = {"prompt": "x", "enable_hr": True, "hr_upscaler": "4x-demo", "steps": 4}
        body |= {"width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": "model-a"}}
        hires = validate_params(alice, translate(alice, body, "txt2img").params).params["hires"]
        assert hires is not None
        return hires["upscaler"]

    assert await sync_to_async(hires_upscaler)() == "4x-demo"
