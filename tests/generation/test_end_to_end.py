"""The whole flow with the real GPU worker engine and the demo models: REST API -> dispatch after
commit -> Dramatiq on Redis -> gpu_worker -> platform queue -> database, images and websocket."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: the CPU thread cliff

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from generation.catalogue_sync import sync_catalogue
from generation.models import Job
from tests.generation.conftest import api_client, wait_for

pytest.importorskip("diffusers")
pytestmark = [pytest.mark.engine, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from gpu_worker.demo_model import make_demo_models

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("models")
    make_demo_models(folder)
    return folder


@pytest.fixture(scope="module")
def gpu_worker_process(
    demo_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The GPU worker as `python -m gpu_worker` runs it, in-process, on its own broker object
    over the same Redis: it shares no code with the platform beyond gpu_worker.protocol. Its
    heartbeat makes the platform's scheduler hand it jobs on its own queue."""
    import redis

    from gpu_worker.engine import Engine
    from gpu_worker.heartbeat import Heartbeat
    from gpu_worker.model_cache import ModelCache
    from gpu_worker.progress import ChannelPublisher
    from gpu_worker.service import (
        WorkerLifecycle,
        WorkerService,
        register_actors,
        running_worker,
    )
    from gpu_worker.wakeup import WakeupRedisBroker

    url = os.environ["REDIS_URL"]
    broker = WakeupRedisBroker(url=url)
    engine = Engine(
        models_dir=demo_models,
        cache=ModelCache(device="cpu", device_budget_bytes=1 << 30, ram_budget_bytes=2 << 30),
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    publisher = ChannelPublisher(url)
    service = WorkerService(
        engine=engine,
        broker=broker,
        redis_client=redis.Redis.from_url(url),
        publisher=publisher,
        worker_id="e2e-" + uuid.uuid4().hex[:6],
        progress_interval=0.0,
    )
    register_actors(broker, service)
    client = redis.Redis.from_url(url)
    heartbeat = Heartbeat(
        client, service.heartbeat_snapshot, on_tick=service.flush_events, interval=0.5
    )
    broker.add_middleware(WorkerLifecycle(service, preload=[], heartbeat=heartbeat))
    with running_worker(broker, service.queue):
        yield service
    publisher.close()
    broker.close()


@pytest.fixture
def demo_catalogue(db, demo_models: Path) -> None:
    sync_catalogue(models_dir=demo_models, include_workers=False)


def image_bytes(user, url: str) -> bytes:
    browser = Client()
    browser.force_login(user)
    response = browser.get(url)
    assert response.status_code == 200
    return response.getvalue()


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
        assert kinds[0] == "job.queued" and "job.started" in kinds and "job.progress" in kinds
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
