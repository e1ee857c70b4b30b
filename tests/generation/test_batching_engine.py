"""Cross-user batching end to end: REST submissions, the real scheduler, a real GPU worker on
the demo models. Two members' compatible jobs share UNet calls (the worker reports the batch
size in each job's timings), each image equals its serial render within the stated tolerance,
a cancel mid-batch stops only its own job and bills each job its own steps, a batch that runs
out of memory runs its jobs again alone and bills each once, and a job of another checkpoint is
not batched."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from accounts import ledger
from generation.models import Job
from gpu_worker.protocol import PROGRESS_KEY
from tests.generation.conftest import api_client, image_bytes, wait_for
from tests.generation.real_worker import REAL_WORKER_MARKS
from tests.gpu_worker.unet_faults import OUT_OF_MEMORY, demo_unet, out_of_memory_once, unet_faults

pytest.importorskip("diffusers")
pytestmark = REAL_WORKER_MARKS

# The largest difference, in 8-bit levels, between a batched image and its serial render:
# bench/bench_batching.py measures 1 (a rounding step of the UNet's batched kernels).
TOLERANCE = 2


def submit(user: Any, **body: Any) -> str:
    response = api_client(user).post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def hold_the_worker(staff: Any) -> str:
    """A long job that runs alone (tiling is kept on the serial path): jobs submitted now
    wait for it, so the scheduler hands the worker the next one and its batch companions."""
    return submit(staff, prompt="blocker", steps=50, width=256, height=256, tiling=True)


def release_the_worker(staff: Any, blocker: str, waiting: list[str]) -> None:
    wait_for(
        lambda: (
            Job.objects.filter(pk__in=waiting, dispatched_at__isnull=False).count() == len(waiting)
        ),
        timeout=30,
    )
    assert api_client(staff).post(f"/api/v1/jobs/{blocker}/cancel/").status_code == 200


def finished(ids: list[str], timeout: float = 120) -> dict[str, Job]:
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, status__in=Job.TERMINAL).count() == len(ids),
        timeout=timeout,
    )
    return {str(j.pk): j for j in Job.objects.filter(pk__in=ids)}


def pixels(png: bytes) -> Any:
    import numpy as np

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def serial_render(job: Job, models: Path, tmp: Path) -> Any:
    """The job's image as the engine renders it alone (a separate engine, same models)."""
    from generation.job_messages import build_request
    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache
    from gpu_worker.result_store import png_of

    cache = ModelCache(device="cpu", device_budget_bytes=1 << 30, ram_budget_bytes=2 << 30)
    engine = Engine(models_dir=models, cache=cache, cache_dir=tmp)
    result = engine.run(build_request(job))
    return pixels(png_of(result.images[0]))


def spent(user: Any, before: Decimal) -> Decimal:
    account = ledger.account_for(user)
    assert account.held == 0
    return before - account.balance


def test_two_members_jobs_share_one_batch_and_each_image_equals_its_serial_render(
    alice, bob, carol, request, tmp_path
):
    blocker = hold_the_worker(carol)
    common = {"sampler": "Euler a", "width": 64, "height": 64}
    mine = submit(alice, prompt="a red fox", seed=11, steps=6, cfg_scale=7, **common)
    theirs = submit(bob, prompt="a lighthouse", seed=22, steps=4, cfg_scale=3.5, **common)
    release_the_worker(carol, blocker, [mine, theirs])
    jobs = finished([mine, theirs])
    assert jobs[mine].status == jobs[theirs].status == "succeeded"
    assert jobs[mine].timings["batch_jobs"] == jobs[theirs].timings["batch_jobs"] == 2
    assert jobs[mine].worker_id == jobs[theirs].worker_id

    batched = {}
    for job_id, user in ((mine, alice), (theirs, bob)):
        url = api_client(user).get(f"/api/v1/jobs/{job_id}/").json()["images"][0]["url"]
        batched[job_id] = pixels(image_bytes(user, url))
    models = request.getfixturevalue("demo_models")
    alone = {job_id: serial_render(jobs[job_id], models, tmp_path) for job_id in jobs}
    for job_id in (mine, theirs):
        assert abs(batched[job_id] - alone[job_id]).max() <= TOLERANCE
    assert abs(batched[mine] - alone[theirs]).max() > TOLERANCE  # each got its own image


def test_cancelling_one_job_mid_batch_lets_the_other_finish_and_bills_each_its_steps(
    alice, bob, carol, redis_url
):
    import redis

    client = redis.Redis.from_url(redis_url)
    balances = {u.pk: ledger.account_for(u).balance for u in (alice, bob)}
    blocker = hold_the_worker(carol)
    common = {"sampler": "Euler", "width": 128, "height": 128, "steps": 50}
    mine = submit(alice, prompt="a red fox", seed=1, **common)
    theirs = submit(bob, prompt="a lighthouse", seed=2, **common)
    release_the_worker(carol, blocker, [mine, theirs])

    def bob_sampling() -> bool:
        # running in the database too: a job still recorded as queued is cancelled there for
        # free (its 'started' event may wait behind others in the platform queue)
        raw = client.get(PROGRESS_KEY.format(job_id=theirs))
        running = Job.objects.filter(pk=theirs, status=Job.Status.RUNNING).exists()
        return raw is not None and json.loads(raw)["step"] >= 2 and running

    wait_for(bob_sampling, timeout=60)
    assert api_client(bob).post(f"/api/v1/jobs/{theirs}/cancel/").status_code == 200
    jobs = finished([mine, theirs])
    assert jobs[theirs].status == "cancelled"
    assert 2 <= jobs[theirs].steps_done < jobs[theirs].total_steps
    assert jobs[mine].status == "succeeded" and jobs[mine].timings["batch_jobs"] == 2
    assert jobs[mine].steps_done == jobs[mine].total_steps == 50
    assert spent(alice, balances[alice.pk]) == jobs[mine].price
    charge = ledger.pro_rata(jobs[theirs].price, jobs[theirs].steps_done, 50)
    assert spent(bob, balances[bob.pk]) == charge < jobs[theirs].price


def test_a_batch_out_of_memory_runs_each_job_again_alone_and_bills_it_once(
    alice, bob, carol, gpu_worker_process, request, tmp_path
):
    balances = {u.pk: ledger.account_for(u).balance for u in (alice, bob)}
    unet = demo_unet(gpu_worker_process.engine)
    # the worker's UNet runs out of memory in its first call with both jobs' rows
    with unet_faults(unet, out_of_memory_once(lambda rows: rows > 2)) as calls:
        blocker = hold_the_worker(carol)
        common = {"checkpoint": "atelier-demo-v1", "sampler": "Euler a", "width": 64, "height": 64}
        mine = submit(alice, prompt="a red fox", seed=11, steps=6, cfg_scale=7, **common)
        theirs = submit(bob, prompt="a lighthouse", seed=22, steps=4, cfg_scale=3.5, **common)
        release_the_worker(carol, blocker, [mine, theirs])
        jobs = finished([mine, theirs])
    assert calls.raised == [OUT_OF_MEMORY]
    models = request.getfixturevalue("demo_models")
    for job_id, user in ((mine, alice), (theirs, bob)):
        job = jobs[job_id]
        assert job.status == "succeeded" and job.steps_done == job.total_steps
        assert spent(user, balances[user.pk]) == job.price  # charged once
        url = api_client(user).get(f"/api/v1/jobs/{job_id}/").json()["images"][0]["url"]
        alone = serial_render(job, models, tmp_path)
        assert (pixels(image_bytes(user, url)) == alone).all()  # its serial render, exactly


def test_a_job_of_another_checkpoint_is_not_batched(alice, bob, carol):
    blocker = hold_the_worker(carol)
    common = {"sampler": "Euler a", "width": 64, "height": 64, "steps": 4}
    mine = submit(alice, prompt="a fox", checkpoint="atelier-demo-v1", **common)
    theirs = submit(bob, prompt="a fox", checkpoint="atelier-demo-v2", **common)
    release_the_worker(carol, blocker, [mine])
    jobs = finished([mine, theirs])
    assert jobs[mine].status == jobs[theirs].status == "succeeded"
    assert jobs[mine].timings["batch_jobs"] == jobs[theirs].timings["batch_jobs"] == 1
