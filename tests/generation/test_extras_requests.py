"""Extras (upscale) requests at the front doors, without a GPU worker: who may upscale what, the
size limits, the price and its hold, and the A1111 endpoints' checks."""

from __future__ import annotations

import base64
import io
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from PIL import Image

from accounts import ledger
from gallery.models import Visibility
from generation.limits import limits_for
from generation.models import CatalogEntry, Job
from gpu_worker import extras_plan
from tests.gallery.factories import make_image, make_publication
from tests.generation.a1111_support import (
    get,
    post,
    sdapi_client,
    thread_connections_closed,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def upscaler(catalogue) -> CatalogEntry:
    return CatalogEntry.objects.create(
        name="4x-demo",
        kind="upscaler",
        filename="ESRGAN/4x-demo.safetensors",
        sha256="ab" * 32,
        native_scale=4,
    )


def png_b64(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "orange").save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def held(job_id: str) -> Decimal:
    return ledger.account_for(Job.objects.get(pk=job_id).owner).held


def test_alice_upscales_her_image_by_two_and_the_hold_is_the_megapixel_price(
    alice, alice_api, upscaler
):
    image = make_image(alice)  # 64x96
    response = alice_api.post(
        "/api/v1/extras/",
        {"image_id": str(image.pk), "upscaler_1": "4x-demo", "scale": 2},
        format="json",
    )
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["mode"] == "extras" and job["checkpoint"] == "4x-demo"
    assert (job["params"]["width"], job["params"]["height"]) == (128, 192)
    # 128 x 192 pixels at 0.25 credit per megapixel, rounded up to the cent (at least one)
    assert Decimal(job["price"]) == Decimal("0.01")
    assert held(job["id"]) == Decimal("0.01")
    # 64x96 source, one 192-px tile per pass of a 4x model: one tile
    assert job["total_steps"] == 1


def test_the_price_grows_with_output_megapixels_and_a_second_upscaler(alice_api, upscaler):
    body = {"image": png_b64(512, 512), "upscaler_1": "4x-demo", "scale": 2}
    one = alice_api.post("/api/v1/extras/quote/", body, format="json").json()
    # 1024 x 1024 = 1.048576 megapixels x 0.25 = 0.262... -> 0.27
    assert Decimal(one["price"]) == Decimal("0.27")
    both = {**body, "upscaler_2": "Lanczos", "upscaler_2_visibility": 0.5}
    two = alice_api.post("/api/v1/extras/quote/", both, format="json").json()
    assert Decimal(two["price"]) == Decimal("0.53")  # two full upscales
    unused = {**body, "upscaler_2": "Lanczos", "upscaler_2_visibility": 0}
    none = alice_api.post("/api/v1/extras/quote/", unused, format="json").json()
    assert Decimal(none["price"]) == Decimal("0.27")  # blended at 0: never run, never billed
    assert none["params"]["extras"]["upscaler_2"] == "None"


def test_bob_cannot_upscale_alices_private_image(alice, bob_api, upscaler):
    image = make_image(alice)
    response = bob_api.post(
        "/api/v1/extras/", {"image_id": str(image.pk), "upscaler_1": "Lanczos"}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["field"] == "image_id"
    assert not Job.objects.filter(mode="extras").exists()


def test_bob_cannot_upscale_alices_published_image_by_id_either(alice, bob_api):
    publication = make_publication(alice, visibility=Visibility.PUBLIC)
    image_id = str(publication.image_id)
    response = bob_api.post("/api/v1/extras/", {"image_id": image_id}, format="json")
    assert response.status_code == 404


def test_an_output_past_the_pixel_limit_is_422_naming_the_field_and_limit(alice, alice_api):
    limits = limits_for(alice)
    body = {"image": png_b64(512, 512), "upscaler_1": "Lanczos", "scale": 4}
    response = alice_api.post("/api/v1/extras/", body, format="json")
    assert response.status_code == 422
    assert response.json()["field"] == "scale"
    detail = response.json()["detail"]
    assert "2048x2048" in detail and f"{limits.max_pixels} pixels" in detail
    to = {"image": png_b64(64, 64), "resize_mode": 1, "target_width": 2048, "target_height": 2048}
    response = alice_api.post("/api/v1/extras/", to, format="json")
    assert response.status_code == 422 and response.json()["field"] == "target_width"


def test_to_a_target_size_with_crop_makes_exactly_the_target(alice_api):
    body = {
        "image": png_b64(64, 96),
        "resize_mode": 1,
        "target_width": 256,
        "target_height": 128,
        "crop": True,
    }
    job = alice_api.post("/api/v1/extras/", body, format="json").json()
    assert (job["params"]["width"], job["params"]["height"]) == (256, 128)
    body["crop"] = False  # the larger ratio (4x), the whole image kept
    job = alice_api.post("/api/v1/extras/quote/", body, format="json").json()
    assert (job["params"]["width"], job["params"]["height"]) == (256, 384)


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"upscaler_1": "4x-nope"}, "upscaler_1", 422),
        ({"scale": 9}, "scale", 422),
        ({"upscaler_2_visibility": 2}, "upscaler_2_visibility", 422),
        ({"upscaler_1": "None"}, "upscaler_1", 400),
        ({"denoising": 1}, "denoising", 400),
        ({"codeformer_visibility": 0.5}, "codeformer_visibility", 422),
    ],
)
def test_bad_fields_are_refused_naming_them(alice_api, upscaler, body, field, status):
    response = alice_api.post("/api/v1/extras/", {"image": png_b64(64, 64), **body}, format="json")
    assert response.status_code == status, response.content
    assert response.json()["field"] == field


def test_a_job_request_cannot_smuggle_an_extras_mode(alice_api, catalogue):
    response = alice_api.post("/api/v1/jobs/", {"mode": "extras", "prompt": "x"}, format="json")
    assert response.status_code in (400, 422) and response.json()["field"] == "mode"


def test_cancelling_a_queued_upscale_releases_the_whole_hold(alice, alice_api, redis_client):
    # redis_client empties Redis: no heartbeat of an earlier test's worker can take the job
    before = ledger.account_for(alice).balance
    body = {"image": png_b64(512, 512), "upscaler_1": "Lanczos", "scale": 2}
    job = alice_api.post("/api/v1/extras/", body, format="json").json()
    assert ledger.account_for(alice).balance == before - Decimal(job["price"])
    response = alice_api.post(f"/api/v1/jobs/{job['id']}/cancel/")
    assert response.json()["status"] == "cancelled"
    assert ledger.account_for(alice).balance == before
    assert ledger.account_for(alice).held == 0


def test_the_schema_documents_the_extras_endpoint(alice_api):
    schema = alice_api.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/v1/extras/"]["post"]
    assert operation["operationId"] == "extras_create"
    body = schema["components"]["schemas"]["ExtrasRequest"]["properties"]
    assert {"image_id", "upscaler_1", "upscaler_2_visibility", "scale"} <= set(body)


def test_the_tile_count_is_the_shared_rule(alice_api, upscaler):
    body = {"image": png_b64(400, 200), "upscaler_1": "4x-demo", "scale": 2}
    job = alice_api.post("/api/v1/extras/quote/", body, format="json").json()
    extras = job["params"]["extras"]
    # 400 wide: tiles at 0, 184, 208; 200 high: at 0, 8 -> 6 tiles in the one pass
    assert job["total_steps"] == extras_plan.progress_units(extras) == 6


@pytest.mark.usefixtures("thread_connections_closed")
async def test_the_a1111_extras_refuse_what_is_missing_naming_a1111_fields(alice, upscaler):
    client = await sync_to_async(sdapi_client)(alice)
    image = png_b64(64, 64)
    response = await post(
        client,
        "extra-single-image",
        {"image": image, "upscaler_1": "4x-demo", "codeformer_visibility": 1},
    )
    assert response.status_code == 422
    assert response.json()["field"] == "codeformer_visibility"
    response = await post(client, "extra-single-image", {"image": image, "upscaling_resize": 20})
    assert response.status_code == 422 and response.json()["field"] == "upscaling_resize"
    response = await post(client, "extra-batch-images", {"imageList": [{"data": ""}]})
    assert response.status_code == 422 and response.json()["field"] == "imageList[0].data"
    response = await post(
        client, "extra-batch-images", {"imageList": [{"data": image}], "output_dir": "/tmp"}
    )
    assert response.status_code == 422 and response.json()["field"] == "output_dir"
    assert not await Job.objects.filter(mode="extras").aexists()


@pytest.mark.usefixtures("thread_connections_closed")
async def test_the_a1111_upscaler_list_has_the_resamplers_and_each_models_scale(alice, upscaler):
    await CatalogEntry.objects.filter(pk=upscaler.pk).aupdate(native_scale=2)
    client = await sync_to_async(sdapi_client)(alice)
    listed = (await get(client, "upscalers")).json()
    assert [u["name"] for u in listed] == ["None", "Lanczos", "Nearest", "4x-demo"]
    assert listed[-1]["scale"] == 2


def test_every_result_offers_upscale_and_its_page_submits_the_job(alice, client, upscaler):
    image = make_image(alice)
    client.force_login(alice)
    page = f"/images/{image.pk}/upscale/"
    for url in ("/images/", f"/images/{image.pk}/", "/generate/"):
        html = client.get(url).content.decode()
        assert 'id="upscale-dialog"' in html and "js/upscale.js" in html, url
    assert page in client.get("/images/").content.decode()
    assert page in client.get(f"/images/{image.pk}/").content.decode()
    form = client.get(page)
    assert form.status_code == 200 and '<option value="4x-demo"' in form.content.decode()
    response = client.post(page, {"upscaler_1": "4x-demo", "scale": "2", "upscaler_2": "None"})
    job = Job.objects.get(owner=alice, mode="extras")
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.params["extras"]["source_image_id"] == str(image.pk)
    refused = client.post(page, {"upscaler_1": "Lanczos", "scale": "40"})
    assert refused.status_code == 400 and "8" in refused.content.decode()


def test_bob_gets_no_upscale_page_for_alices_image(alice, bob, client):
    image = make_image(alice)
    client.force_login(bob)
    assert client.get(f"/images/{image.pk}/upscale/").status_code == 404
    assert client.post(f"/images/{image.pk}/upscale/", {"upscaler_1": "Lanczos"}).status_code == 404


def test_the_pricing_page_prices_an_upscale_by_its_megapixels(client):
    examples = dict(client.get("/pricing/").context["examples"])
    labels = {str(label): price for label, price in examples.items()}
    assert labels["Upscale a 512×512 image ×2 (Extras)"] == Decimal("0.27")  # 1.05 MP x 0.25
    assert labels["Upscale ×2 and restore faces (Extras)"] == Decimal("0.33")
