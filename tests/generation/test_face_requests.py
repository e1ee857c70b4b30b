"""Face restoration at the front doors, without a GPU worker: which model a job gets (GFPGAN or
CodeFormer, A1111's face_restoration_model and code_former_weight), its price, and the licence
gate that keeps CodeFormer off unless the operator names its licence."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from generation.a1111.translation import translate
from generation.models import CatalogEntry, Job
from generation.submission import SubmissionError, validate_params
from tests.generation.a1111_support import (
    get,
    sdapi_client,
    thread_connections_closed,  # noqa: F401 - a fixture
)
from tests.generation.conftest import GENERATOR_FORM, SMALL
from tests.generation.test_extras_requests import png_b64

pytestmark = pytest.mark.django_db(transaction=True)


def face_model(name: str, family: str) -> CatalogEntry:
    return CatalogEntry.objects.create(
        name=name, kind="face_restorer", family=family, filename=f"GFPGAN/{name}.safetensors"
    )


@pytest.fixture
def gfpgan(catalogue) -> CatalogEntry:
    return face_model("GFPGANv1.4", "gfpgan")


def test_extras_face_restoration_uses_the_gfpgan_model_and_costs_its_share(alice_api, gfpgan):
    body = {"image": png_b64(512, 512), "upscaler_1": "Lanczos", "scale": 2}
    plain = alice_api.post("/api/v1/extras/quote/", body, format="json").json()
    faced = alice_api.post(
        "/api/v1/extras/quote/", {**body, "gfpgan_visibility": 0.8}, format="json"
    ).json()
    assert faced["params"]["extras"]["face_restorer"] == "GFPGANv1.4"
    # 0.25 megapixel of face work at 0.25 credit: 0.0625 more, rounded up with the rest
    assert (Decimal(plain["price"]), Decimal(faced["price"])) == (Decimal("0.27"), Decimal("0.33"))
    assert faced["total_steps"] == plain["total_steps"] + 1


def test_face_restoration_without_a_model_is_422_naming_the_field(alice_api, catalogue):
    body = {"image": png_b64(64, 64), "gfpgan_visibility": 1}
    response = alice_api.post("/api/v1/extras/", body, format="json")
    assert response.status_code == 422 and response.json()["field"] == "gfpgan_visibility"
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "restore_faces": True}, format="json")
    assert response.status_code == 422 and response.json()["field"] == "restore_faces"


def test_a_codeformer_file_is_not_used_for_restore_faces_until_the_operator_enables_it(
    alice_api, catalogue, settings
):
    face_model("codeformer-v0.1.0", "codeformer")
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "restore_faces": True}, format="json")
    assert response.status_code == 422
    named = {**SMALL, "restore_faces": True, "face_restoration_model": "CodeFormer"}
    response = alice_api.post("/api/v1/jobs/", named, format="json")
    assert response.status_code == 422
    assert response.json()["field"] == "face_restoration_model"
    assert "S-Lab-1.0" in response.json()["detail"]
    settings.ALLOW_NONCOMMERCIAL_MODELS = "codeformer:S-Lab-1.0"
    quote = alice_api.post("/api/v1/jobs/quote/", {**SMALL, "restore_faces": True}, format="json")
    params = quote.json()["params"]  # the only restorer installed: it is the default
    assert params["face_restorer"] == "codeformer-v0.1.0" and params["code_former_weight"] == 0.5


def test_codeformer_is_refused_for_its_licence_until_the_operator_names_it(
    alice_api, catalogue, settings
):
    body = {"image": png_b64(64, 64), "codeformer_visibility": 0.5}
    response = alice_api.post("/api/v1/extras/", body, format="json")
    assert response.status_code == 422 and response.json()["field"] == "codeformer_visibility"
    detail = response.json()["detail"]
    assert "S-Lab-1.0" in detail and "ATELIER_ALLOW_NONCOMMERCIAL_MODELS" in detail
    settings.ALLOW_NONCOMMERCIAL_MODELS = "codeformer:S-Lab-1.0"
    response = alice_api.post("/api/v1/extras/", body, format="json")
    assert response.status_code == 422  # enabled, but none installed
    assert "no CodeFormer model is installed (models/Codeformer/)" in response.json()["detail"]
    assert not Job.objects.exists()
    face_model("codeformer-v0.1.0", "codeformer")
    body |= {"codeformer_weight": 0.7, "upscaler_1": "None"}
    job = alice_api.post("/api/v1/extras/", body, format="json").json()
    extras = job["params"]["extras"]
    assert (extras["codeformer"], extras["codeformer_weight"]) == ("codeformer-v0.1.0", 0.7)
    assert job["checkpoint"] == "codeformer-v0.1.0"


def test_restore_faces_is_carried_and_priced_per_image(alice_api, gfpgan):
    plain = alice_api.post("/api/v1/jobs/quote/", {**SMALL, "batch_size": 2}, format="json")
    faced = alice_api.post(
        "/api/v1/jobs/quote/", {**SMALL, "batch_size": 2, "restore_faces": True}, format="json"
    )
    params = faced.json()["params"]
    assert params["restore_faces"] is True and params["face_restorer"] == "GFPGANv1.4"
    difference = Decimal(faced.json()["price"]) - Decimal(plain.json()["price"])
    assert Decimal("0.12") <= difference <= Decimal("0.14")  # 2 x 0.0625, both rounded up


def test_the_a1111_txt2img_restore_faces_is_gfpgan(alice, gfpgan):
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "restore_faces": True}
    body["override_settings"] = {"sd_model_checkpoint": "model-a"}
    params = validate_params(alice, translate(alice, body, "txt2img").params).params
    assert params["restore_faces"] is True and params.get("face_restorer") == "GFPGANv1.4"


def test_the_a1111_face_restoration_model_and_weight_choose_codeformer(alice, gfpgan, settings):
    settings.ALLOW_NONCOMMERCIAL_MODELS = "codeformer:S-Lab-1.0"
    face_model("codeformer-v0.1.0", "codeformer")
    overrides: dict[str, Any] = {"sd_model_checkpoint": "model-a"}
    overrides |= {"face_restoration_model": "CodeFormer", "code_former_weight": 0.3}
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "restore_faces": True}
    body["override_settings"] = overrides
    params = validate_params(alice, translate(alice, body, "txt2img").params).params
    assert params.get("face_restorer") == "codeformer-v0.1.0"
    assert params.get("code_former_weight") == 0.3
    overrides["code_former_weight"] = 2
    with pytest.raises(SubmissionError) as refused:
        validate_params(alice, translate(alice, body, "txt2img").params)
    assert refused.value.field == "code_former_weight"
    overrides |= {"code_former_weight": 0.3, "face_restoration_model": "Other"}
    with pytest.raises(SubmissionError, match="valid: GFPGAN, CodeFormer"):
        validate_params(alice, translate(alice, body, "txt2img").params)


@pytest.mark.usefixtures("thread_connections_closed")
async def test_the_a1111_face_restorers_list_what_is_installed_and_enabled(
    alice, catalogue, settings
):
    client = await sync_to_async(sdapi_client)(alice)
    assert (await get(client, "face-restorers")).json() == []
    assert (await get(client, "options")).json()["face_restoration_model"] is None
    await sync_to_async(face_model)("codeformer-v0.1.0", "codeformer")
    assert (await get(client, "face-restorers")).json() == []
    await sync_to_async(face_model)("GFPGANv1.4", "gfpgan")
    assert (await get(client, "face-restorers")).json() == [{"name": "GFPGAN", "cmd_dir": None}]
    settings.ALLOW_NONCOMMERCIAL_MODELS = "codeformer:S-Lab-1.0"
    names = [entry["name"] for entry in (await get(client, "face-restorers")).json()]
    assert names == ["GFPGAN", "CodeFormer"]
    options = (await get(client, "options")).json()
    assert (options["face_restoration_model"], options["code_former_weight"]) == ("GFPGAN", 0.5)


def test_a_faces_only_extras_job_points_at_its_face_model(alice_api, gfpgan):
    body = {"image": png_b64(64, 64), "upscaler_1": "None", "gfpgan_visibility": 1}
    job = alice_api.post("/api/v1/extras/", body, format="json").json()
    assert job["checkpoint"] == "GFPGANv1.4"
    assert (job["params"]["width"], job["params"]["height"]) == (64, 64)


def test_the_generator_page_offers_codeformer_only_once_the_operator_enabled_it(
    client, alice, gfpgan, settings
):
    face_model("codeformer-v0.1.0", "codeformer")
    client.force_login(alice)
    assert '<option value="CodeFormer"' not in client.get(reverse("generate")).content.decode()
    settings.ALLOW_NONCOMMERCIAL_MODELS = "codeformer:S-Lab-1.0"
    assert '<option value="CodeFormer"' in client.get(reverse("generate")).content.decode()
    posted = {**GENERATOR_FORM, "checkpoint": "model-a", "restore_faces": "on"}
    posted |= {"face_restoration_model": "CodeFormer", "code_former_weight": "0.2"}
    client.post(reverse("generate"), posted)
    params = Job.objects.get(owner=alice).params
    assert params["face_restorer"] == "codeformer-v0.1.0" and params["code_former_weight"] == 0.2
