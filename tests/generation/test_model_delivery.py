"""Members' models reach workers only by signed URL; a job message names what to fetch."""

from __future__ import annotations

import pytest
from django.core import signing

from generation.job_messages import build_request
from generation.model_delivery import SALT, signed_url
from generation.models import Job
from generation.scheduling.inputs import waiting_jobs
from generation.scheduling.policy import WorkerView, _Worker
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
