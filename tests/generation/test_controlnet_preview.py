"""ControlNet previews run by a GPU worker: the REST `controlnet/detect/` and A1111's
`/controlnet/detect`, answered by the worker's DetectResponder over the real Redis; free; which
preprocessors are listed and accepted follows what the workers say they run."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from PIL import Image, ImageDraw

from accounts.ledger import account_for
from accounts.models import MembershipTier
from generation.controlnet_preview import preview_maps
from generation.submission import SubmissionError
from gpu_worker.detect_responder import DetectResponder
from gpu_worker.preprocessors import BUILT_IN, pixel_perfect_resolution, run_preprocessor
from gpu_worker.protocol import DETECT_QUEUE_KEY
from tests.generation.a1111_support import sdapi_client, thread_connections_closed  # noqa: F401
from tests.generation.conftest import SMALL

DETECT = "/api/v1/controlnet/detect/"


def square(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, size * 3 // 4, size * 3 // 4), "white")
    return image


def b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


@pytest.mark.django_db
def test_a_canny_preview_is_the_workers_edge_map_and_costs_nothing(
    alice, alice_api, preview_worker
):
    balance = account_for(alice).balance
    body = {"module": "canny", "image": b64(square()), "processor_res": 64}
    response = alice_api.post(DETECT, body, format="json")
    assert response.status_code == 200, response.content
    made = decoded(response.json()["image"])
    expected = run_preprocessor("canny", square(), 64, 100, 200)
    assert made.tobytes() == expected.tobytes()
    assert made.convert("L").getextrema() == (0, 255)  # edges on black
    assert account_for(alice).balance == balance  # free: nothing held, nothing charged


@pytest.mark.django_db
def test_pixel_perfect_takes_the_resolution_from_the_jobs_size(alice_api, preview_worker):
    body = {"module": "canny", "image": b64(square(100)), "pixel_perfect": True}
    body |= {"width": 256, "height": 128, "resize_mode": 2}
    response = alice_api.post(DETECT, body, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["processor_res"] == pixel_perfect_resolution((100, 100), (256, 128), 2)
    assert decoded(response.json()["image"]).size == (128, 128)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "field", "status"),
    [
        ({"module": "depth_midas"}, "module", 422),  # no worker has its weights
        ({"processor_res": 4096}, "processor_res", 422),
        ({"threshold_a": "low"}, "threshold_a", 422),
        ({"image": "not base64!"}, "image", 422),
        ({"image": None}, "image", 400),
    ],
)
def test_a_bad_preview_request_is_refused_naming_the_field(
    alice_api, preview_worker, change, field, status
):
    body = {"module": "canny", "image": b64(square()), **change}
    response = alice_api.post(DETECT, body, format="json")
    assert response.status_code == status, response.content
    assert response.json()["field"] == field


@pytest.mark.django_db
def test_without_a_worker_a_preview_is_503_not_a_hang(alice_api, redis_client):
    started = time.monotonic()
    response = alice_api.post(DETECT, {"module": "canny", "image": b64(square())}, format="json")
    assert response.status_code == 503 and "worker" in response.json()["detail"]
    assert time.monotonic() - started < 2


@pytest.mark.django_db
def test_a_tier_without_units_gets_no_previews(alice_api, preview_worker):
    MembershipTier.objects.filter(is_default=True).update(max_controlnet_units=0)
    response = alice_api.post(DETECT, {"module": "canny", "image": b64(square())}, format="json")
    assert response.status_code == 403


@pytest.mark.django_db
def test_a_preview_nobody_answers_in_time_is_504_and_a_late_worker_drops_it(
    alice, redis_client, preview_worker
):
    preview_worker["responder"].stop()  # present by its heartbeat, but not answering
    with pytest.raises(SubmissionError) as refused:
        preview_maps(alice, "canny", [square()], 64, 100, 200, client=redis_client, timeout=0.5)
    assert refused.value.status == 504
    key = DETECT_QUEUE_KEY.format(worker_id=preview_worker["worker_id"])
    assert redis_client.llen(key) == 1
    late = DetectResponder(
        redis_client, preview_worker["worker_id"], lambda: ["canny"], run_preprocessor
    )
    assert late.serve_one(0.1)  # taken off the list ...
    assert redis_client.llen(key) == 0
    assert not redis_client.keys("atelier:detect:reply:*")  # ... and not run: nobody waits


@pytest.mark.django_db
def test_a_weight_based_preprocessor_is_listed_and_accepted_only_while_a_worker_has_it(
    alice_api, catalogue, preview_worker
):
    unit = {"image": b64(square()), "module": "lineart_realistic", "model": "canny-sd15"}
    listed = alice_api.get("/api/v1/controlnet/preprocessors/").json()["preprocessors"]
    assert listed == list(BUILT_IN)
    refused = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [unit]}, format="json")
    assert refused.status_code == 422 and refused.json()["field"] == "controlnet[0].module"

    preview_worker["preprocessors"].append("lineart_realistic")  # an admin dropped its weights in
    preview_worker["beat_now"]()
    listed = alice_api.get("/api/v1/controlnet/preprocessors/").json()["preprocessors"]
    assert listed == [*BUILT_IN, "lineart_realistic"]
    accepted = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [unit]}, format="json")
    assert accepted.status_code == 201, accepted.content


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("thread_connections_closed")
async def test_a1111_detect_keeps_the_extensions_shape_and_names(alice, preview_worker):
    client = await sync_to_async(sdapi_client)(alice)
    detect: dict[str, Any] = {"controlnet_module": "canny", "controlnet_processor_res": 64}
    detect |= {"controlnet_input_images": [b64(square()), b64(square(32))]}
    response = await client.post("/controlnet/detect", json.dumps(detect), "application/json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["info"] == "Success" and len(body["images"]) == 2
    assert decoded(body["images"][0]).convert("L").getextrema() == (0, 255)
    modules = (await client.get("/controlnet/module_list")).json()
    assert modules["module_list"] == list(BUILT_IN)
    assert "canny" in modules["module_detail"]

    unknown = {**detect, "controlnet_module": "depth_midas"}
    response = await client.post("/controlnet/detect", json.dumps(unknown), "application/json")
    assert response.status_code == 422 and response.json()["field"] == "controlnet_module"
    assert "depth_midas" in response.json()["detail"]
    bad = {**detect, "controlnet_input_images": ["nope"]}
    response = await client.post("/controlnet/detect", json.dumps(bad), "application/json")
    assert response.status_code == 422
    assert response.json()["field"] == "controlnet_input_images[0]"


@pytest.mark.django_db
def test_the_openapi_schema_describes_the_preview(alice_api):
    schema = alice_api.get("/api/schema/?format=json").json()
    detect = schema["paths"]["/api/v1/controlnet/detect/"]["post"]
    assert {"200", "422", "503", "504"} <= set(detect["responses"])
    assert "/api/v1/controlnet/preprocessors/" in schema["paths"]
