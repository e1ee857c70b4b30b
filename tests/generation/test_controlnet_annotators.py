"""Weight-based ControlNet annotators (soft edges, openpose) as clients meet them: without their
weights on any worker they are not listed and asking for one is a 422; a worker whose models
folder holds them lists them (A1111's module_list, REST, the generator page), accepts them in
jobs, and answers previews with its annotator networks over the real Redis. Small random
networks in the released key layouts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from gpu_worker.preprocessors import BUILT_IN
from tests.generation.a1111_support import sdapi_client, thread_connections_closed  # noqa: F401
from tests.generation.conftest import SMALL
from tests.generation.test_controlnet_preview import b64, decoded, square

WEIGHT_BASED = ("softedge_hed", "softedge_hedsafe", "openpose")


async def detect(client: Any, module: str, images: list[str], res: int = 96) -> Any:
    body: dict[str, Any] = {"controlnet_module": module, "controlnet_input_images": images}
    body["controlnet_processor_res"] = res
    return await client.post("/controlnet/detect", json.dumps(body), "application/json")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("thread_connections_closed")
async def test_without_their_weights_they_are_not_listed_and_asking_is_a_422(alice, preview_worker):
    client = await sync_to_async(sdapi_client)(alice)
    listed = (await client.get("/controlnet/module_list")).json()["module_list"]
    assert not set(WEIGHT_BASED) & set(listed)
    for module in WEIGHT_BASED:
        response = await detect(client, module, [b64(square())])
        assert response.status_code == 422 and response.json()["field"] == "controlnet_module"
        assert module in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("thread_connections_closed")
async def test_a_worker_with_their_weights_lists_them_and_previews_with_them(
    alice, annotator_worker
):
    client = await sync_to_async(sdapi_client)(alice)
    modules = (await client.get("/controlnet/module_list")).json()
    assert modules["module_list"] == [*BUILT_IN, *WEIGHT_BASED]
    sliders = modules["module_detail"]["openpose"]["sliders"]
    assert sliders[0]["name"] == "Preprocessor Resolution"

    response = await detect(client, "softedge_hed", [b64(square()), b64(square(32))])
    assert response.status_code == 200, response.content
    maps = [np.asarray(decoded(text)) for text in response.json()["images"]]
    assert [m.shape for m in maps] == [(96, 96, 3), (96, 96, 3)]  # the processor resolution
    edges = maps[0]
    assert (edges[..., 0] == edges[..., 1]).all() and (edges[..., 1] == edges[..., 2]).all()
    assert len(np.unique(edges)) > 3  # soft grey edges, not a blank or a binary map

    response = await detect(client, "softedge_hedsafe", [b64(square())])
    assert response.status_code == 200, response.content
    assert set(np.unique(np.asarray(decoded(response.json()["images"][0])))) <= {0, 127, 255}

    response = await detect(client, "openpose", [b64(square())])
    assert response.status_code == 200, response.content
    pose = decoded(response.json()["images"][0])
    assert pose.size == (96, 96) and np.asarray(pose)[:4, :4].max() == 0  # drawn on black


@pytest.mark.django_db
def test_the_page_offers_them_and_a_job_takes_them_while_a_worker_has_them(
    client, alice, alice_api, catalogue, annotator_worker
):
    client.force_login(alice)
    page = client.get(reverse("generate")).content.decode()
    for module in WEIGHT_BASED:
        assert f'<option value="{module}"' in page
    unit = {"image": b64(square()), "module": "openpose", "model": "canny-sd15"}
    accepted = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [unit]}, format="json")
    assert accepted.status_code == 201, accepted.content

    # its weights were taken away
    annotator_worker["preprocessors"][:] = list(BUILT_IN)
    annotator_worker["beat_now"]()
    refused = alice_api.post("/api/v1/jobs/", {**SMALL, "controlnet": [unit]}, format="json")
    assert refused.status_code == 422 and refused.json()["field"] == "controlnet[0].module"
    assert '<option value="openpose"' not in client.get(reverse("generate")).content.decode()
