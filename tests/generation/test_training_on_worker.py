"""LoRA training on the real GPU worker (in-process, CPU, the demo model), through the platform:
alice uploads four 32x32 images, trains two epochs; the worker fetches them by signed URL and
posts each epoch; the LoRA becomes hers and changes what the generator makes. Cancelling after
epoch 1 charges one epoch and gives the rest back."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: the CPU thread cliff

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts import ledger
from accounts.ledger import account_for
from accounts.models import CreditEntry
from generation.catalogue_sync import sync_catalogue
from generation.models import CatalogEntry, Job, TrainingEpoch
from generation.pricing import epoch_price
from tests.generation.conftest import api_client, wait_for
from tests.generation.real_worker import running_gpu_worker
from tests.generation.test_training_datasets import four_images_zip, upload

pytest.importorskip("diffusers")
pytestmark = [
    pytest.mark.engine,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]


class EpochGate:
    """Holds the worker at the first step of a chosen epoch until the test lets it go (so a
    cancel lands exactly there); the worker's heartbeat status sees every step first."""

    def __init__(self) -> None:
        self.at_step: int | None = None
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, done: int, total: int) -> None:
        if self.at_step is not None and done == self.at_step:
            self.reached.set()
            self.release.wait(30)


@pytest.fixture
def training_worker(demo_models: Path, tmp_path: Path) -> Iterator[Any]:
    with running_gpu_worker(
        demo_models, tmp_path, name="train", downloads=True, progress_interval=0.0
    ) as service:
        gate = EpochGate()
        step = service.status.step

        def gated_step(done: int, total: int) -> None:
            step(done, total)
            gate(done, total)

        service.status.step = gated_step
        service.gate = gate
        yield service
        gate.release.set()


@pytest.fixture
def world(alice, live_server, settings, tmp_path, demo_models, platform_tick) -> dict[str, Any]:
    settings.MODEL_STORE_DIR = tmp_path / "store"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODEL_DELIVERY_BASE_URL = live_server.url
    # Small request bodies: an epoch's state (~300 KB here) goes in several chunks.
    settings.MAX_REQUEST_BODY_BYTES = 200_000
    sync_catalogue(models_dir=demo_models, include_workers=False)
    client = api_client(alice)
    dataset = upload(client, {"squares.zip": four_images_zip()}, trigger_word="sqz").json()
    return {"client": client, "dataset": dataset["id"]}


def training(dataset_id: int, **block: Any) -> dict[str, Any]:
    return {
        "checkpoint": "atelier-demo-v1",
        "prompt": "sqz, a square",
        "steps": 3,
        "width": 64,
        "height": 64,
        "seed": 11,
        "train": {
            "dataset_id": dataset_id,
            "output_name": "squares-lora",
            "epochs": 2,
            "repeats": 2,
            "batch_size": 2,
            "resolution": 32,
            "rank": 4,
            "alpha": 4,
            "learning_rate": 5e-3,
            **block,
        },
    }


def finished(job_id: str, timeout: float = 120) -> Job:
    wait_for(lambda: not Job.objects.filter(pk=job_id, status__in=Job.UNFINISHED).exists(), timeout)
    return Job.objects.get(pk=job_id)


def generate(client: Any, prompt: str) -> bytes:
    request = {
        "checkpoint": "atelier-demo-v1",
        "prompt": prompt,
        "steps": 3,
        "width": 64,
        "height": 64,
        "seed": 3,
        "sampler": "Euler",
    }
    response = client.post("/api/v1/jobs/", request, format="json")
    assert response.status_code == 201, response.content
    job = finished(response.json()["id"])
    assert job.status == "succeeded", job.error
    browser = Client()
    browser.force_login(job.owner)
    return browser.get(f"/images/{job.images.get().pk}/file").getvalue()


def test_two_epochs_make_alices_private_lora_that_changes_the_image(
    alice, bob, world, training_worker, tmp_path
):
    client = world["client"]
    before = account_for(alice).balance
    response = client.post("/api/v1/training/jobs/", training(world["dataset"]), format="json")
    assert response.status_code == 201, response.content
    job = finished(response.json()["id"])
    assert job.status == "succeeded", job.error
    assert job.worker_id == training_worker.worker_id

    detail = client.get(f"/api/v1/training/jobs/{job.pk}/").json()
    assert [e["epoch"] for e in detail["epochs"]] == [1, 2]
    assert all(len(e["losses"]) == 4 and e["loss"] > 0 for e in detail["epochs"])
    assert detail["lora"] == "squares-lora"
    share = epoch_price(job.params, job.checkpoint)
    assert Decimal(str(detail["spent"])) == job.price == 2 * share
    assert account_for(alice).balance == before - job.price
    assert account_for(alice).held == 0

    # each epoch's LoRA downloads, in kohya's format with its training metadata
    from safetensors import safe_open

    lora = client.get(detail["epochs"][0]["lora_url"])
    assert lora.status_code == 200
    path = tmp_path / "epoch-1.safetensors"
    path.write_bytes(b"".join(lora.streaming_content))
    with safe_open(str(path), "pt") as fh:
        keys, metadata = list(fh.keys()), fh.metadata()
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in keys)
    assert metadata["ss_network_dim"] == "4" and metadata["ss_epoch"] == "1"
    assert metadata["ss_output_name"] == "squares-lora" and "sshs_model_hash" in metadata
    assert client.get(detail["epochs"][1]["sample_url"]).status_code == 200
    # the state passed the request limit: it came in chunks, whole
    assert TrainingEpoch.objects.get(job=job, epoch=1).state.size > 200_000

    # the page: loss curve, samples, each epoch's download, the spend
    browser = Client()
    browser.force_login(alice)
    page = browser.get(f"/training/jobs/{job.pk}/").content.decode()
    assert 'id="loss-curve"' in page and "<polyline" in page
    assert page.count(">Download<") == 2 and str(job.price) in page
    other = Client()
    other.force_login(bob)
    assert other.get(f"/training/jobs/{job.pk}/").status_code == 404

    # hers, private, and usable at once in the generator
    entry = CatalogEntry.objects.get(owner=alice, kind="lora", name="squares-lora")
    assert entry.trigger_words == "sqz"
    assert "squares-lora" in str(client.get("/api/v1/loras/").json())
    assert "squares-lora" not in str(api_client(bob).get("/api/v1/loras/").json())
    assert api_client(bob).get(f"/api/v1/training/jobs/{job.pk}/").status_code == 404
    plain = generate(client, "sqz, a square")
    with_lora = generate(client, "sqz, a square <lora:squares-lora:1>")
    assert plain != with_lora
    assert not ledger.find_violations()


def test_cancelling_after_epoch_one_charges_one_epoch_and_gives_the_rest_back(
    alice, world, training_worker
):
    client = world["client"]
    before = account_for(alice).balance
    training_worker.gate.at_step = 5  # the first step of epoch 2 (4 steps an epoch)
    response = client.post("/api/v1/training/jobs/", training(world["dataset"]), format="json")
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    assert training_worker.gate.reached.wait(90)
    assert TrainingEpoch.objects.filter(job_id=job_id).count() == 1
    assert client.post(f"/api/v1/jobs/{job_id}/cancel/").status_code in (200, 202)
    training_worker.gate.release.set()

    job = finished(job_id)
    assert job.status == "cancelled"
    share = epoch_price(job.params, job.checkpoint)
    assert job.price == 2 * share
    assert account_for(alice).balance == before - share
    assert account_for(alice).held == 0
    kinds = list(CreditEntry.objects.filter(job_id=job_id).values_list("kind", flat=True))
    assert sorted(kinds) == ["hold", "part_capture", "release"]
    detail = client.get(f"/api/v1/training/jobs/{job_id}/").json()
    assert [e["epoch"] for e in detail["epochs"]] == [1]
    assert Decimal(str(detail["spent"])) == share
    assert detail["lora"] is None  # no finished LoRA; epoch 1's stays downloadable
    assert client.get(detail["epochs"][0]["lora_url"]).status_code == 200
    assert not CatalogEntry.objects.filter(owner=alice, kind="lora").exists()
    assert not ledger.find_violations()


def test_a_drained_worker_finishes_its_epoch_and_the_job_resumes_from_it(
    alice, world, training_worker
):
    client = world["client"]
    training_worker.gate.at_step = 2  # inside epoch 1
    response = client.post("/api/v1/training/jobs/", training(world["dataset"]), format="json")
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    assert training_worker.gate.reached.wait(90)
    training_worker.drain()
    training_worker.gate.release.set()

    # epoch 1 is finished and recorded, then the job goes back to the queue, not failed
    wait_for(
        lambda: (
            Job.objects.get(pk=job_id).status == "queued"
            and Job.objects.get(pk=job_id).attempt == 2
        ),
        60,
    )
    assert list(TrainingEpoch.objects.filter(job_id=job_id).values_list("epoch", flat=True)) == [1]
    training_worker.undrain()

    job = finished(job_id)
    assert job.status == "succeeded", job.error
    epochs = list(TrainingEpoch.objects.filter(job_id=job_id).order_by("epoch"))
    assert [(e.epoch, e.steps) for e in epochs] == [(1, 4), (2, 8)]  # epoch 2 went on from 1
    assert job.workers_lost == 0
    share = epoch_price(job.params, job.checkpoint)
    assert sum(e.charged for e in epochs) == job.price == 2 * share
    assert CreditEntry.objects.filter(job_id=job_id, kind__in=["capture", "release"]).count() == 1
    assert not ledger.find_violations()


def test_a_training_yields_the_gpu_at_an_epoch_boundary_to_a_waiting_job(
    alice, bob, world, training_worker
):
    client = world["client"]
    training_worker.gate.at_step = 2  # inside epoch 1
    response = client.post("/api/v1/training/jobs/", training(world["dataset"]), format="json")
    assert response.status_code == 201, response.content
    training_id = response.json()["id"]
    assert training_worker.gate.reached.wait(90)
    request = {
        "checkpoint": "atelier-demo-v1",
        "prompt": "a boat",
        "steps": 3,
        "width": 64,
        "height": 64,
        "seed": 1,
    }
    bobs = api_client(bob).post("/api/v1/jobs/", request, format="json")
    assert bobs.status_code == 201, bobs.content
    bobs_id = bobs.json()["id"]
    # bob's job waits in the busy worker's queue (its second slot)
    wait_for(lambda: Job.objects.get(pk=bobs_id).worker_id == training_worker.worker_id, 30)
    training_worker.gate.release.set()

    bobs_job = finished(bobs_id)
    training_job = finished(training_id)
    assert bobs_job.status == training_job.status == "succeeded", training_job.error
    epochs = list(TrainingEpoch.objects.filter(job_id=training_id).order_by("epoch"))
    assert [(e.epoch, e.steps) for e in epochs] == [(1, 4), (2, 8)]
    # bob waited one epoch at most: his job ran between the training's two epochs
    assert bobs_job.started_at is not None and bobs_job.finished_at is not None
    assert epochs[0].created_at <= bobs_job.started_at
    assert bobs_job.finished_at <= epochs[1].created_at
    assert training_job.attempt >= 3 and training_job.workers_lost == 0
    share = epoch_price(training_job.params, training_job.checkpoint)
    assert sum(e.charged for e in epochs) == training_job.price == 2 * share
    assert not ledger.find_violations()


def test_a_long_training_hands_itself_on_before_the_actors_time_limit(
    alice, world, training_worker, monkeypatch
):
    from gpu_worker import service

    monkeypatch.setattr(service, "HAND_OVER_AT_LIMIT_SHARE", 0.0)  # every epoch is "long"
    response = world["client"].post(
        "/api/v1/training/jobs/", training(world["dataset"]), format="json"
    )
    job = finished(response.json()["id"])
    assert job.status == "succeeded", job.error
    epochs = TrainingEpoch.objects.filter(job=job).order_by("epoch")
    assert [(e.epoch, e.steps) for e in epochs] == [(1, 4), (2, 8)]
    assert job.attempt >= 3 and job.workers_lost == 0
