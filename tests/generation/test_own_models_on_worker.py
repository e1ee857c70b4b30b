"""Members' own models on the real GPU worker, whose models folder is empty: alice uploads a
LoRA and a checkpoint (the demo builder's) in chunks, one interrupted and resumed; the worker
fetches both by signed URL and generates; bob can neither see nor use them; his upload of the
same bytes is stored once; deleting frees the quota and the worker evicts the file."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: the CPU thread cliff

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from generation.models import CatalogEntry, Job, ModelFile
from gpu_worker.protocol import stored_model_key
from tests.generation.a1111_support import token_for
from tests.generation.conftest import api_client, wait_for
from tests.generation.own_model_uploads import upload
from tests.generation.real_worker import running_gpu_worker

pytest.importorskip("diffusers")
pytest.importorskip("tusclient")
pytestmark = [pytest.mark.engine, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def empty_worker(tmp_path: Path) -> Iterator[Any]:
    """A GPU worker whose models folder is empty, with its own download cache; its heartbeat
    carries operator commands (evict) to it."""
    (tmp_path / "models").mkdir()
    with running_gpu_worker(tmp_path / "models", tmp_path, name="own", downloads=True) as worker:
        yield worker


def tus_upload_interrupted(live_server: Any, token: str, data: bytes, name: str) -> str:
    """tuspy sends one chunk, the connection 'drops'; a new uploader resumes at the server's
    offset. Returns the upload's address."""
    from tusclient.client import TusClient

    client = TusClient(
        f"{live_server.url}/api/v1/own-models/uploads/",
        headers={"Authorization": f"Bearer {token}"},
    )
    chunk = len(data) // 3 + 1
    first = client.uploader(file_stream=io.BytesIO(data), chunk_size=chunk, metadata={"name": name})
    first.upload_chunk()
    assert 0 < first.offset < len(data)
    resumed = client.uploader(file_stream=io.BytesIO(data), chunk_size=chunk, url=first.url)
    assert resumed.offset == first.offset  # asked the server (HEAD), not started over
    resumed.upload()
    return str(first.url)


def test_alices_uploads_run_on_an_empty_worker_and_stay_hers(
    alice, bob, live_server, settings, tmp_path, demo_models, platform_tick, empty_worker
):
    settings.MODEL_STORE_DIR = tmp_path / "store"
    settings.MODEL_DELIVERY_BASE_URL = live_server.url
    alice_api, bob_api = api_client(alice), api_client(bob)
    # The demo builder's files (tests/generation/real_worker.py) are what alice has on her disk.
    checkpoint_bytes = (demo_models / "Stable-diffusion/atelier-demo-v1.safetensors").read_bytes()
    lora_bytes = (demo_models / "Lora/atelier-demo-lora.safetensors").read_bytes()

    tus_upload_interrupted(live_server, token_for(alice), checkpoint_bytes, "alice-ckpt")
    assert upload(alice_api, lora_bytes, "alice-lora", chunk=4096).status_code == 200
    mine = {e.kind: e for e in CatalogEntry.objects.filter(owner=alice)}
    assert set(mine) == {"checkpoint", "lora"}

    request = {
        "checkpoint": "alice-ckpt",
        "prompt": "a red fox <lora:alice-lora:0.8>",
        "steps": 3,
        "width": 64,
        "height": 64,
        "seed": 7,
    }
    response = alice_api.post("/api/v1/jobs/", request, format="json")
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    wait_for(lambda: not Job.objects.filter(pk=job_id, status__in=Job.UNFINISHED).exists(), 90)
    job = Job.objects.get(pk=job_id)
    assert job.status == "succeeded", job.error
    assert job.worker_id == empty_worker.worker_id
    downloads = empty_worker.downloads
    assert set(downloads.shas()) == {mine["checkpoint"].sha256, mine["lora"].sha256}
    assert not any((empty_worker.engine.models_dir).rglob("*.safetensors"))
    beat = empty_worker.heartbeat_snapshot()
    # by hash, as the scheduler keys jobs on uploads (members' names may repeat)
    assert beat["loaded_models"] == [stored_model_key(mine["checkpoint"].sha256)]
    assert set(beat["disk_models"]) == set(downloads.shas())
    assert beat["download_bytes_per_s"] > 0
    # The operations page's "unload" names it the same way.
    assert empty_worker.unload(stored_model_key(mine["checkpoint"].sha256)) == 1
    assert empty_worker.heartbeat_snapshot()["loaded_models"] == []

    # bob: not listed, and refused exactly like a name that does not exist
    assert "alice-ckpt" not in str(bob_api.get("/api/v1/models/").json())
    assert "alice-lora" not in str(bob_api.get("/api/v1/loras/").json())
    theirs = bob_api.post("/api/v1/jobs/", request, format="json")
    nobodys = bob_api.post("/api/v1/jobs/", {**request, "checkpoint": "nobody-ckpt"}, format="json")
    assert theirs.status_code == nobodys.status_code == 422
    assert theirs.json()["detail"].replace("alice-ckpt", "?") == nobodys.json()["detail"].replace(
        "nobody-ckpt", "?"
    )

    # bob's upload of the same bytes: his own entry, stored once
    assert upload(bob_api, lora_bytes, "bobs-lora", chunk=8192).status_code == 200
    assert ModelFile.objects.count() == 2

    # alice deletes her checkpoint: quota freed, store and worker let it go
    before = alice_api.get("/api/v1/own-models/").json()["quota"]["used_bytes"]
    assert alice_api.delete(f"/api/v1/own-models/{mine['checkpoint'].pk}/").status_code == 204
    after = alice_api.get("/api/v1/own-models/").json()["quota"]["used_bytes"]
    assert before - after == len(checkpoint_bytes)
    sha = mine["checkpoint"].sha256
    wait_for(lambda: not downloads.has(sha), 10)
    assert downloads.has(mine["lora"].sha256)
    assert not (settings.MODEL_STORE_DIR / sha[:2] / f"{sha}.safetensors").exists()
