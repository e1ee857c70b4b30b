"""The checkpoint merger through the whole platform and a real GPU worker on the demo models:
alice's merge becomes her private model (stored by hash, in her quota, listed for her alone, its
page showing the recipe); mismatched or forbidden inputs are refused before any work; names are
unique per owner; a cancelled merge is refunded; a virtual merge and its baked file give
identical images."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: the CPU thread cliff

import io
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts.ledger import account_for
from generation.catalogue_sync import sync_catalogue
from generation.models import CatalogEntry, Job, ModelFile, ModelRecipe
from gpu_worker.merge_rules import merge_price
from gpu_worker.model_files import read_safetensors_header
from tests.generation.a1111_support import token_for
from tests.generation.conftest import api_client, wait_for
from tests.generation.own_model_uploads import upload
from tests.generation.real_worker import running_gpu_worker

pytest.importorskip("diffusers")
pytestmark = [
    pytest.mark.engine,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

V1, V2 = "atelier-demo-v1", "atelier-demo-v2"
SMALL = {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 11}


@pytest.fixture
def world(settings, tmp_path, demo_models, live_server) -> Path:
    """The web sees the demo models folder (the merger reads headers there) and stores
    members' models under tmp; workers reach the live server for files both ways."""
    settings.MODELS_DIR = demo_models
    settings.MODEL_STORE_DIR = tmp_path / "store"
    settings.MODEL_DELIVERY_BASE_URL = live_server.url
    sync_catalogue(models_dir=demo_models, include_workers=False)
    return demo_models


@pytest.fixture
def merge_worker(demo_models: Path, tmp_path: Path) -> Iterator[Any]:
    """A GPU worker with the demo models and a download cache (members' and virtual models)."""
    with running_gpu_worker(demo_models, tmp_path, name="merge", downloads=True) as service:
        yield service


def finished(job_id: Any, timeout: float = 90) -> Job:
    wait_for(lambda: not Job.objects.filter(pk=job_id, status__in=Job.UNFINISHED).exists(), timeout)
    return Job.objects.get(pk=job_id)


def sd_model_names(user: Any) -> list[str]:
    response = Client().get("/sdapi/v1/sd-models", HTTP_AUTHORIZATION=f"Bearer {token_for(user)}")
    assert response.status_code == 200
    return [m["model_name"] for m in response.json()]


def load(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def pixels(job: Job) -> bytes:
    from PIL import Image

    image = job.images.get()
    with image.file.open("rb") as fh, Image.open(io.BytesIO(fh.read())) as decoded:
        return decoded.convert("RGB").tobytes()


def test_alices_merge_becomes_her_private_model(
    alice, bob, world, platform_tick, merge_worker, settings
):
    import torch

    alice_api = api_client(alice)
    balance = account_for(alice).balance
    response = alice_api.post(
        "/api/v1/merges/",
        {"primary": V1, "secondary": V2, "multiplier": 0.3, "name": "alice-mix"},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["mode"] == "merge"
    job = finished(response.json()["id"])
    assert job.status == "succeeded", job.error
    assert job.steps_done == job.total_steps > 100  # progress: tensors done of total

    entry = CatalogEntry.objects.get(owner=alice, name="alice-mix")
    assert entry.enabled and entry.available and entry.stored_file is not None
    stored = settings.MODEL_STORE_DIR / entry.sha256[:2] / f"{entry.sha256}.safetensors"
    merged, a, b = (
        load(stored),
        load(world / f"Stable-diffusion/{V1}.safetensors"),
        load(world / f"Stable-diffusion/{V2}.safetensors"),
    )
    for key, tensor in merged.items():
        if not key.endswith("position_ids"):
            assert torch.equal(tensor, 0.7 * a[key] + 0.3 * b[key]), key
    recipe = json.loads(read_safetensors_header(stored)["__metadata__"]["sd_merge_recipe"])
    v1 = CatalogEntry.objects.get(name=V1, owner=None)
    assert recipe["primary_model_hash"] == v1.sha256 and recipe["interp_method"] == "Weighted sum"

    # charged by the bytes read, counted in her quota, listed for her alone
    v2 = CatalogEntry.objects.get(name=V2, owner=None)
    assert account_for(alice).balance == balance - merge_price(v1.size_bytes + v2.size_bytes)
    quota = alice_api.get("/api/v1/own-models/").json()
    assert quota["quota"]["used_bytes"] == entry.size_bytes == stored.stat().st_size
    assert "alice-mix" in sd_model_names(alice) and "alice-mix" not in sd_model_names(bob)
    page = Client()
    page.force_login(alice)
    assert f"/models/mine/{entry.pk}/" in page.get(f"/jobs/{job.pk}/").content.decode()
    body = page.get(f"/models/mine/{entry.pk}/").content.decode()
    assert "Weighted sum" in body and V1 in body and V2 in body
    page.force_login(bob)
    assert page.get(f"/models/mine/{entry.pk}/").status_code == 404

    # A1111's other options on the worker: fp16, a baked VAE, discarded weights
    response = alice_api.post(
        "/api/v1/merges/",
        {
            "method": "No interpolation",
            "primary": "alice-mix",
            "save_as_half": True,
            "bake_in_vae": "atelier-demo-vae",
            "discard_weights": r"^cond_stage_model\..*\.layers\.1\.",
            "name": "alice-half",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert finished(response.json()["id"]).status == "succeeded"
    half = CatalogEntry.objects.get(owner=alice, name="alice-half")
    header = read_safetensors_header(
        settings.MODEL_STORE_DIR / half.sha256[:2] / f"{half.sha256}.safetensors"
    )
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert not [k for k in header if k.startswith("cond_stage_model.") and ".layers.1." in k]
    assert any(k.startswith("cond_stage_model.") and ".layers.0." in k for k in header)
    assert dtypes == {"F16"}  # every float32 tensor halved
    nested = json.loads(header["__metadata__"]["sd_merge_models"])
    assert entry.sha256 in nested and v1.sha256 in nested  # provenance of the merge it read

    # the schema documents the endpoints
    schema = alice_api.get("/api/schema/", HTTP_ACCEPT="application/json").content.decode()
    assert "/api/v1/merges/" in schema and "/api/v1/own-models/{id}/bake/" in schema


def test_bad_merges_are_refused_before_any_work(
    alice, bob, world, platform_tick, merge_worker, tmp_path
):
    from safetensors.torch import save_file

    alice_api, bob_api = api_client(alice), api_client(bob)
    b = load(world / f"Stable-diffusion/{V2}.safetensors")
    cut = sorted(k for k in b if ".output_blocks.2." in k)
    save_file({k: v for k, v in b.items() if k not in cut}, str(tmp_path / "cut.safetensors"))
    data = (tmp_path / "cut.safetensors").read_bytes()
    assert upload(alice_api, data, "alice-cut", chunk=1 << 20).status_code == 200
    jobs_before = Job.objects.count()

    mismatch = alice_api.post(
        "/api/v1/merges/", {"primary": V1, "secondary": "alice-cut", "name": "x"}, format="json"
    )
    assert mismatch.status_code == 422
    assert mismatch.json()["field"] == "secondary" and cut[0] in mismatch.json()["detail"]

    # bob may not read alice's private model: the same answer as for no model at all
    theirs = bob_api.post(
        "/api/v1/merges/", {"primary": V1, "secondary": "alice-cut", "name": "x"}, format="json"
    )
    nobodys = bob_api.post(
        "/api/v1/merges/", {"primary": V1, "secondary": "nobody-cut", "name": "x"}, format="json"
    )
    assert theirs.status_code == nobodys.status_code == 422
    assert theirs.json()["detail"].replace("alice-cut", "?") == nobodys.json()["detail"].replace(
        "nobody-cut", "?"
    )
    # the method's inputs, the multiplier and the regex are checked by name
    for body, field in (
        ({"primary": V1, "method": "Add difference", "secondary": V2}, "tertiary"),
        ({"primary": V1, "secondary": V2, "multiplier": 1.5}, "multiplier"),
        ({"primary": V1, "secondary": V2, "discard_weights": "(["}, "discard_weights"),
        ({"primary": V1, "secondary": V2, "block_weights": [0.5, 0.5]}, "block_weights"),
        ({"primary": V1, "method": "Average"}, "method"),
    ):
        refused = alice_api.post("/api/v1/merges/", {**body, "name": "y"}, format="json")
        assert refused.status_code == 422 and refused.json()["field"] == field, refused.content
    assert Job.objects.count() == jobs_before  # nothing was queued

    # the output name is unique per owner, reserved from submission
    first = alice_api.post(
        "/api/v1/merges/", {"primary": V1, "secondary": V2, "name": "dup"}, format="json"
    )
    again = alice_api.post(
        "/api/v1/merges/", {"primary": V1, "secondary": V2, "name": "dup"}, format="json"
    )
    assert first.status_code == 201 and again.status_code == 409
    assert again.json()["field"] == "name"
    bobs = bob_api.post(
        "/api/v1/merges/", {"primary": V1, "secondary": V2, "name": "dup"}, format="json"
    )
    assert bobs.status_code == 201  # bob's own "dup"
    for job_id in (first.json()["id"], bobs.json()["id"]):
        assert finished(job_id).status == "succeeded"
    assert CatalogEntry.objects.filter(name="dup", stored_file__isnull=False).count() == 2
    assert (
        ModelFile.objects.filter(
            sha256=CatalogEntry.objects.get(owner=alice, name="dup").sha256
        ).count()
        == 1
    )  # the same bytes are stored once


def test_a_cancelled_merge_is_refunded_and_frees_its_name(
    alice, world, platform_tick, merge_worker
):
    alice_api = api_client(alice)
    balance = account_for(alice).balance
    cancelled: list[str] = []
    original = merge_worker.status.step

    def cancel_midway(done: int, total: int) -> None:  # the member presses Stop mid-merge
        original(done, total)
        if done == 5 and not cancelled:
            job_id = Job.objects.get(mode="merge", owner=alice).pk
            cancelled.append(str(job_id))
            assert alice_api.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200

    merge_worker.status.step = cancel_midway
    response = alice_api.post(
        "/api/v1/merges/",
        {
            "method": "Add difference",
            "primary": V1,
            "secondary": V2,
            "tertiary": V1,
            "name": "gone",
        },
        format="json",
    )
    assert response.status_code == 201
    job = finished(response.json()["id"])
    assert cancelled and job.status == "cancelled"
    assert account_for(alice).balance == balance  # nothing charged
    wait_for(lambda: not CatalogEntry.objects.filter(owner=alice, name="gone").exists())
    assert not list((merge_worker.engine.cache_dir / "merges").glob("*"))  # nothing left behind
    merge_worker.status.step = original
    again = alice_api.post(
        "/api/v1/merges/", {"primary": V1, "secondary": V2, "name": "gone"}, format="json"
    )
    assert again.status_code == 201  # the name is free again


def test_a_virtual_merge_and_its_baked_file_give_identical_images(
    alice, bob, world, platform_tick, merge_worker
):
    alice_api = api_client(alice)
    response = alice_api.post(
        "/api/v1/merges/virtual/",
        {"primary": V1, "secondary": V2, "preset": "GRAD_V", "multiplier": 0.4, "name": "alice-v"},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["virtual"] is True
    assert response.json()["recipe"]["block_weights"][0] == 0.4
    entry = CatalogEntry.objects.get(owner=alice, name="alice-v")
    assert entry.stored_file is None and not ModelFile.objects.exists()  # no file written
    assert "alice-v" in sd_model_names(alice) and "alice-v" not in sd_model_names(bob)

    first = alice_api.post("/api/v1/jobs/", {**SMALL, "checkpoint": "alice-v"}, format="json")
    assert first.status_code == 201, first.content
    virtual_job = finished(first.json()["id"])
    assert virtual_job.status == "succeeded", virtual_job.error
    recipe_hash = ModelRecipe.objects.get(entry=entry).recipe_hash
    assert merge_worker.downloads.has(recipe_hash)  # computed on the worker, keyed by recipe

    page = Client()
    page.force_login(alice)
    assert "Bake" in page.get(f"/models/mine/{entry.pk}/").content.decode()
    baked = alice_api.post(f"/api/v1/own-models/{entry.pk}/bake/")
    assert baked.status_code == 201, baked.content
    assert finished(baked.json()["id"]).status == "succeeded"
    entry.refresh_from_db()
    assert entry.stored_file is not None and entry.name == "alice-v"
    # the baked file holds exactly the bytes the worker computed for the virtual model
    import hashlib

    computed = merge_worker.downloads.path_for(recipe_hash).read_bytes()
    assert hashlib.sha256(computed).hexdigest() == entry.sha256
    assert alice_api.post(f"/api/v1/own-models/{entry.pk}/bake/").status_code == 409

    second = alice_api.post("/api/v1/jobs/", {**SMALL, "checkpoint": "alice-v"}, format="json")
    baked_job = finished(second.json()["id"])
    assert baked_job.status == "succeeded", baked_job.error
    assert merge_worker.downloads.has(entry.sha256)  # this time the file, fetched by hash
    assert pixels(baked_job) == pixels(virtual_job)
    assert Decimal(str(virtual_job.price)) == Decimal(str(baked_job.price))


async def test_a_merges_progress_reaches_its_owner_over_the_websocket(
    alice, world, platform_tick, merge_worker
):
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from config.asgi import application
    from gpu_worker.progress import ChannelPublisher
    from tests.generation.test_websocket import session_headers

    merge_worker.publisher = ChannelPublisher(os.environ["REDIS_URL"])
    # often enough to see the count move, rarely enough for the channel layer's capacity
    merge_worker.progress_interval = 0.005
    ws = WebsocketCommunicator(
        application, "/ws/jobs/", headers=await database_sync_to_async(session_headers)(alice)
    )
    assert (await ws.connect())[0]
    client = api_client(alice)
    try:
        body = {"primary": V1, "secondary": V2, "name": "watched"}
        response = await database_sync_to_async(
            lambda: client.post("/api/v1/merges/", body, format="json")
        )()
        job = response.json()
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] not in ("job.succeeded", "job.failed"):
            event = await ws.receive_json_from(timeout=60)
            if event.get("job_id") == job["id"]:
                seen.append(event)
        assert seen[-1]["type"] == "job.succeeded"
        total = job["total_steps"]
        steps = {(e["step"], e["steps"]) for e in seen if e["type"] == "job.progress"}
        assert len(steps) > 3 and (total, total) in steps  # tensors done out of the total
        assert all(0 < done <= total and of == total for done, of in steps)
    finally:
        await ws.disconnect()
        merge_worker.publisher.close()
        merge_worker.publisher = None
