"""The whole flow with the real GPU worker engine and the demo models: REST API -> dispatch after
commit -> Dramatiq on Redis -> gpu_worker -> platform queue -> database, images and websocket."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from generation.broker import get_redis
from generation.models import Job
from tests.generation.conftest import api_client, image_bytes, wait_for

pytest.importorskip("diffusers")
pytestmark = [pytest.mark.engine, pytest.mark.django_db(transaction=True)]


def test_two_users_with_different_models_each_get_their_own_models_image(
    alice, bob, demo_catalogue, platform_tick, gpu_worker_process
):
    from gpu_worker.infotext import read_infotext

    alice_api, bob_api = api_client(alice), api_client(bob)
    alice_api.post(
        "/api/v1/settings/default-model/", {"checkpoint": "atelier-demo-v1"}, format="json"
    )
    bob_api.post(
        "/api/v1/settings/default-model/", {"checkpoint": "atelier-demo-v2"}, format="json"
    )
    request = {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 42}
    ids = {
        "alice": alice_api.post("/api/v1/jobs/", request, format="json").json()["id"],
        "bob": bob_api.post("/api/v1/jobs/", request, format="json").json()["id"],
    }
    wait_for(
        lambda: Job.objects.filter(pk__in=ids.values(), status="succeeded").count() == 2, timeout=60
    )
    for user, client, model in (
        (alice, alice_api, "atelier-demo-v1"),
        (bob, bob_api, "atelier-demo-v2"),
    ):
        job = client.get(f"/api/v1/jobs/{ids[user.username]}/").json()
        assert job["checkpoint"] == model and len(job["images"]) == 1
        png = image_bytes(user, job["images"][0]["url"])
        assert f"Model: {model}" in (read_infotext(png) or "")
    alice_png = image_bytes(
        alice, alice_api.get(f"/api/v1/jobs/{ids['alice']}/").json()["images"][0]["url"]
    )
    bob_png = image_bytes(
        bob, bob_api.get(f"/api/v1/jobs/{ids['bob']}/").json()["images"][0]["url"]
    )
    assert alice_png != bob_png  # same seed and prompt, different weights
    # The PNGs came as bytes in Redis beside the events (gpu_worker.result_store): cleared
    # once stored, nothing left to expire.
    wait_for(lambda: not get_redis().keys("atelier:result-png:*"))


async def test_alice_watches_her_job_over_the_websocket_and_cancels_a_running_one(
    alice, demo_catalogue, platform_tick, gpu_worker_process
):
    from config.asgi import application
    from tests.generation.test_websocket import session_headers

    headers = await database_sync_to_async(session_headers)(alice)
    ws = WebsocketCommunicator(application, "/ws/jobs/", headers=headers)
    assert (await ws.connect())[0]
    client = api_client(alice)
    try:
        post = database_sync_to_async(
            lambda path, data=None: client.post(path, data, format="json")
        )
        job = (
            await post("/api/v1/jobs/", {"prompt": "a boat", "steps": 3, "width": 64, "height": 64})
        ).json()
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "job.succeeded":
            event = await ws.receive_json_from(timeout=30)
            if event["job_id"] == job["id"]:
                seen.append(event)
        kinds = [e["type"] for e in seen]
        # (Its place, job.queued, may come before the start or not at all: a job handed to an
        # idle worker can start before its place is published; the page never moves a job back.)
        assert "job.started" in kinds and "job.progress" in kinds
        assert kinds.index("job.started") < kinds.index("job.succeeded")
        assert seen[-1]["images"][0]["url"].startswith("/images/")

        response = await post(
            "/api/v1/jobs/",
            {
                "prompt": "slow",
                "steps": 50,
                "width": 64,
                "height": 64,
                "sampler": "Heun",
                "batch_size": 2,
            },
        )
        assert response.status_code == 201, response.content
        long = response.json()
        seen_types: set[str] = set()
        # Running in the database (job.started is sent once recorded) and sampling.
        while not {"job.started", "job.progress"} <= seen_types:
            event = await ws.receive_json_from(timeout=30)
            if event["job_id"] == long["id"]:
                seen_types.add(event["type"])
        response = await post(f"/api/v1/jobs/{long['id']}/cancel/")
        assert response.status_code == 200
        while True:
            event = await ws.receive_json_from(timeout=30)
            if event["job_id"] == long["id"] and event["type"] in (
                "job.cancelled",
                "job.succeeded",
            ):
                break
        assert event["type"] == "job.cancelled"
        final = await database_sync_to_async(Job.objects.get)(pk=long["id"])
        assert final.status == "cancelled" and 0 < final.steps_done < final.total_steps
    finally:
        await ws.disconnect()
