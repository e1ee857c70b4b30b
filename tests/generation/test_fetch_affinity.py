"""Uploaded models on the fleet: the scheduler prefers a worker that holds the file, and the ETA
a member sees counts the download to the worker that must fetch it."""

from __future__ import annotations

import pytest

from generation.models import CatalogEntry, Job
from generation.queue import queue_snapshot
from generation.scheduling.estimates import DEFAULT_SPEED
from generation.submission import submit_job
from gpu_worker.protocol import stored_model_key
from tests.generation.conftest import SMALL, beat
from tests.generation.own_model_uploads import upload
from tests.generation.test_dispatcher import queued_on
from tests.model_file_builder import sd1_checkpoint

GiB = 2**30
MiB = 2**20


@pytest.fixture(autouse=True)
def own_store(settings, tmp_path) -> None:
    settings.MODEL_STORE_DIR = tmp_path / "model-store"
    settings.MODEL_DELIVERY_BASE_URL = "http://web.internal:8000"


@pytest.fixture
def alices_checkpoint(alice_api) -> CatalogEntry:
    """Her upload, recorded as the 2 GiB checkpoint it stands for (the ETA reads the size)."""
    model = upload(alice_api, sd1_checkpoint(), "alice-ckpt").json()["model"]
    CatalogEntry.objects.filter(pk=model["id"]).update(size_bytes=2 * GiB)
    return CatalogEntry.objects.get(pk=model["id"])


def test_the_eta_counts_the_download_until_a_worker_holds_the_file(
    alice, alices_checkpoint, redis_client
):
    job = submit_job(alice, {**SMALL, "checkpoint": "alice-ckpt"})
    run_s = DEFAULT_SPEED.duration({**job.params})
    beat(redis_client, "gpu-1", download_bytes_per_s=50 * MiB)
    info = queue_snapshot().infos[str(job.pk)]
    assert info.fetch_s == pytest.approx(2 * GiB / (50 * MiB), abs=0.1)  # 41 s
    assert info.eta == pytest.approx(run_s + info.fetch_s, abs=0.2)
    # A faster second worker: the ETA counts its download, the quicker one.
    beat(redis_client, "gpu-2", download_bytes_per_s=200 * MiB)
    assert queue_snapshot().infos[str(job.pk)].fetch_s == pytest.approx(10.2, abs=0.1)
    # Once a worker has the file on its disk, no download is counted.
    beat(redis_client, "gpu-1", disk_models=[alices_checkpoint.sha256])
    info = queue_snapshot().infos[str(job.pk)]
    assert info.fetch_s == 0.0 and info.eta == pytest.approx(run_s, abs=0.2)


def test_a_job_on_an_upload_goes_to_the_worker_that_has_it_on_disk_then_hot_over_warm(
    alice, alices_checkpoint, broker, redis_client, django_capture_on_commit_callbacks
):
    sha = alices_checkpoint.sha256
    beat(redis_client, "gpu-a")  # must download it
    beat(redis_client, "gpu-b", disk_models=[sha])
    with django_capture_on_commit_callbacks(execute=True):
        job = submit_job(alice, {**SMALL, "checkpoint": "alice-ckpt"})
    job.refresh_from_db()
    assert job.worker_id == "gpu-b"
    [request] = queued_on(redis_client, "gpu-b")
    assert [m["sha256"] for m in request["models"]] == [sha]  # checked again on arrival
    Job.objects.filter(pk=job.pk).update(status=Job.Status.CANCELLED, worker_id="")
    # Heartbeats name a fetched checkpoint by its hash (members' names may repeat).
    beat(redis_client, "gpu-a", warm_models=[stored_model_key(sha)], disk_models=[sha])
    beat(redis_client, "gpu-b", disk_models=[sha])
    beat(redis_client, "gpu-c", hot=[stored_model_key(sha)], disk_models=[sha])
    with django_capture_on_commit_callbacks(execute=True):
        job = submit_job(alice, {**SMALL, "checkpoint": "alice-ckpt"})
    job.refresh_from_db()
    assert job.worker_id == "gpu-c"


def test_a_job_handed_to_a_worker_counts_that_workers_download(
    alice, alices_checkpoint, redis_client
):
    job = submit_job(alice, {**SMALL, "checkpoint": "alice-ckpt"})
    beat(redis_client, "gpu-a", download_bytes_per_s=100 * MiB)
    beat(redis_client, "gpu-b", disk_models=[alices_checkpoint.sha256])
    assert job.mark_assigned("gpu-a")
    info = queue_snapshot().infos[str(job.pk)]
    assert info.position == 1 and info.fetch_s == pytest.approx(20.5, abs=0.1)
