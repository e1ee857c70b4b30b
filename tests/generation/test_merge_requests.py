"""The merger's front doors without a GPU worker: the Merge page, checks by field, the credit hold
and its refund on cancel, virtual models and their page, the upload URL a worker sends the merged
file to (signed per attempt, resumable by offset, kept only with the announced hash)."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from accounts.ledger import account_for
from generation.model_delivery import signed_upload_url
from generation.models import CatalogEntry, Job, ModelFile, ModelRecipe
from tests.generation.conftest import api_client
from tests.model_file_builder import sd1_checkpoint

pytestmark = pytest.mark.django_db

MIX = {"primary": "model-a", "secondary": "model-b", "multiplier": 0.25, "name": "mix"}


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_merge_page_queues_a_merge_that_holds_its_price(alice, catalogue, redis_client):
    page = browser(alice)
    form = page.get("/models/merge/").content.decode()
    assert "model-a" in form and "model-b" in form and "model-off" not in form
    balance = account_for(alice).balance
    response = page.post("/models/merge/", {**MIX, "method": "Weighted sum"})
    assert response.status_code == 302
    job = Job.objects.get(owner=alice)
    assert response["Location"] == f"/jobs/{job.pk}/"
    job_page = page.get(response["Location"]).content.decode()
    assert 'id="job-merge"' in job_page and "model-b" in job_page and "Prompt" not in job_page
    assert job.mode == "merge" and job.checkpoint == catalogue["a"]
    assert job.params["merge"]["secondary"]["sha256"] == catalogue["b"].sha256
    assert account_for(alice).balance == balance - job.price and job.price == Decimal("0.01")
    # the name is reserved, the model is not usable until its file exists
    reserved = CatalogEntry.objects.get(owner=alice, name="mix")
    assert not reserved.enabled
    assert "mix" not in str(api_client(alice).get("/api/v1/models/").json())
    assert "mix" not in str(api_client(alice).get("/api/v1/own-models/").json())


def test_a_refused_merge_comes_back_naming_the_field(alice, catalogue, redis_client):
    response = browser(alice).post("/models/merge/", {**MIX, "name": "../x"})
    assert response.status_code == 422
    assert "name" in response.content.decode().lower() and not Job.objects.exists()
    response = browser(alice).post("/models/merge/", {**MIX, "method": "Add difference"})
    assert response.status_code == 422 and "C" in response.content.decode()


def test_cancelling_a_queued_merge_refunds_it_and_frees_the_name(alice, catalogue, redis_client):
    api = api_client(alice)
    balance = account_for(alice).balance
    job_id = api.post("/api/v1/merges/", MIX, format="json").json()["id"]
    assert account_for(alice).balance < balance
    assert api.post(f"/api/v1/jobs/{job_id}/cancel/").json()["status"] == "cancelled"
    assert account_for(alice).balance == balance
    assert not CatalogEntry.objects.filter(owner=alice, name="mix").exists()
    assert api.post("/api/v1/merges/", MIX, format="json").status_code == 201


def test_a_virtual_model_is_saved_at_once_and_only_its_owner_sees_its_recipe(
    alice, bob, catalogue, redis_client
):
    response = browser(alice).post("/models/merge/", {**MIX, "virtual": "on"})
    entry = CatalogEntry.objects.get(owner=alice, name="mix")
    assert response["Location"] == f"/models/mine/{entry.pk}/"
    assert entry.enabled and entry.stored_file is None and not Job.objects.exists()
    assert entry.sha256 == ModelRecipe.objects.get(entry=entry).recipe_hash
    page = browser(alice).get(f"/models/mine/{entry.pk}/").content.decode()
    assert "Weighted sum" in page and "model-b" in page and "Bake" in page
    assert browser(bob).get(f"/models/mine/{entry.pk}/").status_code == 404
    assert api_client(bob).post(f"/api/v1/own-models/{entry.pk}/bake/").status_code == 404
    assert "mix" in str(api_client(alice).get("/api/v1/models/").json())
    # a virtual model is an input only once baked
    refused = api_client(alice).post(
        "/api/v1/merges/", {**MIX, "primary": "mix", "name": "mix2"}, format="json"
    )
    assert refused.status_code == 422 and "bake it first" in refused.json()["detail"]


def test_a_model_outside_the_members_tier_is_no_input(alice, catalogue, redis_client):
    from accounts.models import MembershipTier
    from accounts.tiers import set_tier

    tier = MembershipTier.objects.create(
        name="Basic", slug="basic", rank=1, all_models=False, allowed_models=["model-a"]
    )
    set_tier(alice, tier)
    refused = api_client(alice).post("/api/v1/merges/", MIX, format="json")
    assert refused.status_code == 403 and refused.json()["field"] == "secondary"
    assert "tier" in refused.json()["detail"] and not Job.objects.exists()


def test_only_single_safetensors_files_are_merged(alice, catalogue, redis_client):
    CatalogEntry.objects.create(
        name="xl-folder",
        kind="checkpoint",
        family="sd1",
        filename="Stable-diffusion/xl-folder",
        sha256="ab" * 32,
    )
    refused = api_client(alice).post(
        "/api/v1/merges/", {**MIX, "secondary": "xl-folder"}, format="json"
    )
    assert refused.status_code == 422 and ".safetensors" in refused.json()["detail"]


def test_an_unnamed_merge_takes_a1111s_name(alice, catalogue, redis_client):
    api = api_client(alice)
    unnamed = {k: v for k, v in MIX.items() if k != "name"}
    assert api.post("/api/v1/merges/", unnamed, format="json").status_code == 201
    difference = {**unnamed, "method": "Add difference", "tertiary": "model-a"}
    assert api.post("/api/v1/merges/", difference, format="json").status_code == 201
    names = set(CatalogEntry.objects.filter(owner=alice).values_list("name", flat=True))
    assert names == {"0.75(model-a) + 0.25(model-b)", "model-a + 0.25(model-b - model-a)"}


def test_generation_requests_cannot_pose_as_merges(alice, catalogue, redis_client):
    response = api_client(alice).post(
        "/api/v1/jobs/", {"mode": "merge", "checkpoint": "model-a"}, format="json"
    )
    assert response.status_code == 400 and response.json()["field"] == "mode"


def test_the_upload_url_keeps_only_its_jobs_file_with_the_announced_hash(
    alice, catalogue, redis_client, settings, tmp_path
):
    settings.MODEL_STORE_DIR = tmp_path / "store"
    job_id = api_client(alice).post("/api/v1/merges/", MIX, format="json").json()["id"]
    job = Job.objects.get(pk=job_id)
    data = sd1_checkpoint()
    sha = hashlib.sha256(data).hexdigest()
    url = signed_upload_url(job).split("://", 1)[1].split("/", 1)[1]
    worker = Client()

    def put(body: bytes, offset: int, announced: str = sha) -> Any:
        return worker.put(
            "/" + url,
            body,
            content_type="application/offset+octet-stream",
            HTTP_UPLOAD_OFFSET=str(offset),
            HTTP_UPLOAD_LENGTH=str(len(data)),
            HTTP_UPLOAD_SHA256=announced,
        )

    assert worker.put("/model-store/merged/forged", b"x").status_code == 404
    first = put(data[:100], 0)
    assert first.status_code == 204 and first["Upload-Offset"] == "100"
    lost = put(data[50:150], 50)  # a retried chunk: resume from the platform's offset
    assert lost.status_code == 409 and lost["Upload-Offset"] == "100"
    wrong = put(data[100:], 100, announced="0" * 64)
    assert wrong.status_code == 422 and not ModelFile.objects.exists()
    assert put(data[:100], 0).status_code == 204
    kept = put(data[100:], 100)
    assert kept.status_code == 201 and ModelFile.objects.filter(sha256=sha).exists()
    assert put(data[:100], 0).status_code == 204  # the worker died mid-upload ...
    job.attempt += 1  # ... the job went to another worker: the old URL is dead
    job.save(update_fields=["attempt"])
    assert put(data[:100], 0).status_code == 404
    url = signed_upload_url(job).split("://", 1)[1].split("/", 1)[1]
    assert put(data[:10], 0).status_code == 204
    parts = list((settings.MODEL_STORE_DIR / "incoming").glob(f"merge-{job.pk}-*.part"))
    assert [p.name for p in parts] == [f"merge-{job.pk}-{job.attempt}.part"]  # the stale one went
