"""Members' models reach workers only by signed URL; a job message names what to fetch."""

from __future__ import annotations

import pytest
from django.core import signing

from generation.job_messages import build_request
from generation.model_delivery import SALT, signed_url
from generation.models import Job, ModelRecipe
from generation.scheduling.inputs import waiting_jobs
from generation.scheduling.policy import FETCH, LOAD, WorkerView, _Worker
from tests.generation.conftest import SMALL
from tests.generation.own_model_uploads import upload
from tests.model_file_builder import sd1_checkpoint, sd1_lora


@pytest.fixture(autouse=True)
def own_store(settings, tmp_path) -> None:
    settings.MODEL_STORE_DIR = tmp_path / "model-store"
    settings.MODEL_DELIVERY_BASE_URL = "http://web.internal:8000"


@pytest.fixture
def alices_models(alice_api) -> dict[str, dict]:
    checkpoint = upload(alice_api, sd1_checkpoint(), "alice-ckpt").json()["model"]
    lora = upload(alice_api, sd1_lora(), "alice-lora").json()["model"]
    return {"checkpoint": checkpoint, "lora": lora}


def path_of(url: str) -> str:
    return url.removeprefix("http://web.internal:8000")


def test_a_signed_url_serves_the_bytes_and_nothing_else_does(alices_models, client):
    sha = alices_models["lora"]["sha256"]
    response = client.get(path_of(signed_url(sha)))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == sd1_lora()
    tampered = signing.TimestampSigner(salt="something else").sign(sha)
    assert client.get(f"/model-store/{tampered}").status_code == 404
    assert client.get(f"/model-store/{sha}").status_code == 404
    unknown = signing.TimestampSigner(salt=SALT).sign("f" * 64)
    assert client.get(f"/model-store/{unknown}").status_code == 404


def test_an_expired_signed_url_is_refused(alices_models, client, settings):
    url = signed_url(alices_models["lora"]["sha256"])
    settings.MODEL_DELIVERY_URL_SECONDS = -1
    assert client.get(path_of(url)).status_code == 404


def test_a_job_on_alices_models_carries_their_hashes_and_urls_and_goes_to_any_worker(
    alice, alice_api, alices_models, django_capture_on_commit_callbacks
):
    response = alice_api.post(
        "/api/v1/jobs/",
        {**SMALL, "checkpoint": "alice-ckpt", "prompt": "ink <lora:alice-lora:0.7>"},
        format="json",
    )
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    models = build_request(job)["models"]
    assert {(m["kind"], m["name"], m["sha256"]) for m in models} == {
        ("checkpoint", "alice-ckpt", alices_models["checkpoint"]["sha256"]),
        ("lora", "alice-lora", alices_models["lora"]["sha256"]),
    }
    assert all(m["url"].startswith("http://web.internal:8000/model-store/") for m in models)
    # A worker whose folder has neither may still be given the job: it fetches them.
    waiting = waiting_jobs().jobs[0]
    empty_worker = _Worker(WorkerView(worker_id="w", free_slots=2, inventory=frozenset()))
    assert empty_worker.has(waiting)


def test_a_platform_model_job_carries_nothing_to_fetch(alice, alice_api, catalogue):
    response = alice_api.post("/api/v1/jobs/", SMALL, format="json")
    assert "models" not in build_request(Job.objects.get(pk=response.json()["id"]))


def test_a_virtual_model_of_an_upload_goes_out_as_its_recipe_beside_the_upload_it_reads(
    alice, alice_api, alices_models, catalogue, redis_client
):
    made = alice_api.post(
        "/api/v1/merges/virtual/",
        {"primary": "alice-ckpt", "secondary": "model-a", "multiplier": 0.3, "name": "alice-mix"},
        format="json",
    )
    assert made.status_code == 201, made.content
    recipe_hash = ModelRecipe.objects.get(entry__name="alice-mix").recipe_hash
    submitted = alice_api.post("/api/v1/jobs/", {**SMALL, "checkpoint": "alice-mix"}, format="json")
    assert submitted.status_code == 201, submitted.content
    models = build_request(Job.objects.get(pk=submitted.json()["id"]))["models"]
    upload_sha = alices_models["checkpoint"]["sha256"]
    assert [(m["name"], m["sha256"], "recipe" in m) for m in models] == [
        ("alice-ckpt", upload_sha, False),  # fetched first: the worker computes from it
        ("alice-mix", recipe_hash, True),
    ]
    # The scheduler keys it as the worker's heartbeat will name it once computed; a worker
    # that computed it already loads it from disk and fetches nothing.
    waiting = waiting_jobs().jobs[0]
    assert waiting.checkpoint == f"sha256:{recipe_hash}"
    empty = _Worker(WorkerView(worker_id="w", free_slots=2, inventory=frozenset()))
    assert empty.has(waiting) and empty.affinity(waiting) == FETCH
    assert empty.download_s(waiting) > 0
    computed = WorkerView(
        worker_id="c", free_slots=2, inventory=frozenset(), disk=frozenset({recipe_hash})
    )
    assert _Worker(computed).affinity(waiting) == LOAD
    assert _Worker(computed).download_s(waiting) == 0


def test_a_merge_of_an_upload_carries_that_upload_and_counts_its_fetch(
    alice, alice_api, alices_models, catalogue, redis_client
):
    response = alice_api.post(
        "/api/v1/merges/",
        {"primary": "model-a", "secondary": "alice-ckpt", "multiplier": 0.5, "name": "m"},
        format="json",
    )
    assert response.status_code == 201, response.content
    models = build_request(Job.objects.get(pk=response.json()["id"]))["models"]
    upload_sha = alices_models["checkpoint"]["sha256"]
    assert [(m["name"], m["sha256"]) for m in models] == [("alice-ckpt", upload_sha)]
    waiting = waiting_jobs().jobs[0]
    assert [d.sha256 for d in waiting.downloads] == [upload_sha]
    holder = WorkerView(worker_id="h", free_slots=2, disk=frozenset({upload_sha}))
    assert _Worker(holder).download_s(waiting) == 0
    assert _Worker(WorkerView(worker_id="w", free_slots=2)).download_s(waiting) > 0
