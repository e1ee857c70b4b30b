"""The sweeper repairs what Redis lost, fails jobs whose worker vanished, and keeps the model
catalogue in step; queue positions and ETAs come from measured history."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from generation.models import CatalogEntry, Job
from generation.queue import DEFAULT_SPEED, queue_snapshot
from generation.submission import submit_job
from generation.sweeper import sweep, sync_catalogue
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def gpu_queue_length(redis_client) -> int:
    return redis_client.hlen("dramatiq:gpu.msgs")


def test_a_job_lost_by_a_redis_flush_is_dispatched_again(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = submit_job(alice, SMALL)
    job.refresh_from_db()
    assert job.attempt == 1 and job.dispatched_at and gpu_queue_length(redis_client) == 1
    assert sweep(later(60)).redispatched == []  # its message is still there
    redis_client.flushdb()
    report = sweep(later(60))
    job.refresh_from_db()
    assert report.redispatched == [str(job.pk)] and job.attempt == 2
    message = json.loads(redis_client.hvals("dramatiq:gpu.msgs")[0])
    assert message["actor_name"] == "generate_images"
    assert message["kwargs"]["request"]["attempt"] == 2
    assert message["kwargs"]["request"]["events_group"] == f"jobs.user.{alice.pk}"


def test_a_job_submitted_while_redis_was_down_is_dispatched_by_the_sweeper(
    alice, catalogue, broker, redis_client
):
    job = submit_job(alice, SMALL)  # on_commit never ran: as if the enqueue had failed
    assert sweep(later(1)).redispatched == []
    assert sweep(later(30)).redispatched == [str(job.pk)]
    assert gpu_queue_length(redis_client) == 1


def test_a_job_that_never_starts_fails_after_its_attempts(alice, catalogue, broker, redis_client):
    from generation.limits import limits_for

    job = submit_job(alice, SMALL)  # attempt 1, its message lost (never sent here)
    for _ in range(limits_for(alice).max_attempts - 1):
        sweep(later(30))
        redis_client.flushdb()
        Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now() - timedelta(minutes=5))
    report = sweep(later(30))
    job.refresh_from_db()
    assert report.failed == [str(job.pk)] and job.status == "failed"
    assert "attempts" in job.error


def test_a_running_job_whose_worker_vanished_is_failed_past_its_deadline(
    alice, catalogue, broker, redis_client
):
    job = submit_job(alice, SMALL)
    job.mark_dispatched()
    job.mark_running("gpu-gone", job.attempt)
    assert sweep(later(5)).failed == []  # not past its deadline yet
    report = sweep(later(3600))
    job.refresh_from_db()
    assert report.failed == [str(job.pk)] and job.status == "failed"
    assert "stopped responding" in job.error


def test_a_running_job_whose_worker_still_beats_on_it_is_left_alone(
    alice, catalogue, broker, redis_client
):
    job = submit_job(alice, SMALL)
    job.mark_dispatched()
    job.mark_running("gpu-1", job.attempt)
    redis_client.set("atelier:worker:gpu-1", json.dumps({"current_job": str(job.pk)}))
    assert sweep(later(3600)).failed == []


def test_the_catalogue_imports_worker_inventories_and_marks_missing_models(
    catalogue, redis_client, tmp_path
):
    beat = {
        "worker_id": "gpu-1",
        "current_job": None,
        "inventory": [
            {
                "name": "model-a",
                "filename": "Stable-diffusion/model-a.safetensors",
                "kind": "checkpoint",
                "family": "sd1",
                "size_bytes": 10,
                "sha256": "ab" * 32,
                "short_hash": "abababab12",
            },
            {
                "name": "atelier-demo-v1",
                "filename": "Stable-diffusion/atelier-demo-v1.safetensors",
                "kind": "checkpoint",
                "family": "sd1",
                "size_bytes": 5,
                "sha256": "cd" * 32,
                "short_hash": "cdcdcdcdcd",
            },
        ],
    }
    redis_client.set("atelier:worker:gpu-1", json.dumps(beat))
    redis_client.sadd("atelier:workers", "gpu-1", "gpu-dead")
    counts = sync_catalogue(models_dir=tmp_path / "none")
    assert counts["created"] == 1
    demo = CatalogEntry.objects.get(name="atelier-demo-v1")
    assert demo.is_demo and demo.enabled and demo.available and demo.default_params["steps"]
    assert CatalogEntry.objects.get(name="model-a").sha256 == "ab" * 32
    assert not CatalogEntry.objects.get(name="model-b").available
    assert not CatalogEntry.objects.get(name="style").available
    assert redis_client.smembers("atelier:workers") == {b"gpu-1"}


def test_the_catalogue_reads_the_local_models_folder(db, redis_client, tmp_path):
    folder = tmp_path / "Lora"
    folder.mkdir()
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    data = len(header).to_bytes(8, "little") + header + b"\0" * 4
    (folder / "tiny.safetensors").write_bytes(data)
    sync_catalogue(models_dir=tmp_path, include_workers=False)
    entry = CatalogEntry.objects.get(name="tiny")
    assert entry.kind == "lora" and entry.available and len(entry.sha256) == 64


def finished(user, checkpoint: str, seconds: float, width: int = 64) -> Job:
    job = submit_job(user, {**SMALL, "checkpoint": checkpoint, "width": width})
    start = timezone.now() - timedelta(minutes=1)
    Job.objects.filter(pk=job.pk).update(
        status="succeeded",
        started_at=start,
        finished_at=start + timedelta(seconds=seconds),
        timings={"sampling_s": seconds, "total_s": seconds + 1},
    )
    return job


def test_with_no_history_the_eta_says_it_is_a_default(alice, catalogue, redis_client):
    job = submit_job(alice, SMALL)
    info = queue_snapshot(workers=1).get(job.pk)
    assert info.position == 1 and info.source == "default"
    assert info.eta == pytest.approx(DEFAULT_SPEED.duration({**job.params}), abs=0.1)


def test_the_eta_comes_from_measured_seconds_per_step_of_that_model(
    alice, bob, catalogue, redis_client
):
    finished(bob, "model-a", 8.0)
    finished(bob, "model-b", 80.0)
    first = submit_job(alice, SMALL)
    second = submit_job(bob, SMALL)
    snapshot = queue_snapshot(workers=1)
    assert snapshot.get(first.pk).source == "history"
    assert snapshot.get(first.pk).eta == pytest.approx(9.0, abs=0.2)  # 8 s sampling + 1 s
    assert snapshot.get(second.pk).position == 2
    assert snapshot.get(second.pk).eta == pytest.approx(18.0, abs=0.4)


def test_two_workers_halve_the_wait(alice, bob, catalogue, redis_client):
    finished(bob, "model-a", 8.0)
    submit_job(alice, SMALL)
    second = submit_job(bob, SMALL)
    assert queue_snapshot(workers=2).get(second.pk).eta == pytest.approx(9.0, abs=0.2)
