"""The sweeper takes back what Redis lost and what dead or draining workers held, and keeps the
model catalogue in step; queue positions and ETAs come from measured history."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from generation.models import CatalogEntry, Job
from generation.queue import DEFAULT_SPEED, queue_snapshot
from generation.scheduling.dispatcher import schedule_pending
from generation.submission import submit_job
from generation.sweeper import (
    MAX_HAND_OUTS,
    UNREPORTED_GRACE_SECONDS,
    WorkerLiveness,
    sweep,
    sync_catalogue,
)
from gpu_worker.protocol import JobEvent
from tests.generation.conftest import SMALL, beat, status_of

pytestmark = pytest.mark.django_db


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def queue_length(redis_client, worker_id: str) -> int:
    return redis_client.hlen(f"dramatiq:gpu.{worker_id}.msgs")


def running_on(job: Job, worker_id: str) -> Job:
    assert job.mark_assigned(worker_id) and job.mark_running(worker_id, job.attempt)
    return job


def test_a_job_lost_by_a_redis_flush_goes_back_to_the_queue_in_one_sweep(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    beat(redis_client, "gpu-1")
    with django_capture_on_commit_callbacks(execute=True):
        job = submit_job(alice, SMALL)
    job.refresh_from_db()
    assert (job.worker_id, job.attempt) == ("gpu-1", 1) and queue_length(redis_client, "gpu-1")
    liveness = WorkerLiveness()
    assert sweep(later(60), liveness).requeued == []  # its message is still there
    redis_client.flushdb()
    beat(redis_client, "gpu-1")  # the live worker beats again after the flush
    report = sweep(later(60), liveness)
    job.refresh_from_db()
    assert report.requeued == [str(job.pk)] and report.dead_workers == []
    assert (job.status, job.worker_id, job.created_at) == ("queued", "", job.created_at)
    with django_capture_on_commit_callbacks(execute=True):
        schedule_pending()
    job.refresh_from_db()
    assert job.worker_id == "gpu-1" and job.attempt == 3
    message = json.loads(redis_client.hvals("dramatiq:gpu.gpu-1.msgs")[0])
    assert message["actor_name"] == "generate_images"
    assert message["kwargs"]["request"]["attempt"] == 3
    assert message["kwargs"]["request"]["events_group"] == f"jobs.user.{alice.pk}"


def test_a_job_submitted_with_no_worker_alive_waits_then_goes_to_the_first_one(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = submit_job(alice, SMALL)
    job.refresh_from_db()
    assert (job.status, job.worker_id, job.attempt) == ("queued", "", 0)
    beat(redis_client, "gpu-1")
    with django_capture_on_commit_callbacks(execute=True):
        assert [a.job_id for a in schedule_pending().assigned] == [str(job.pk)]
    assert queue_length(redis_client, "gpu-1") == 1


def test_a_dead_workers_running_job_goes_back_keeping_its_place(
    alice, catalogue, broker, redis_client
):
    job = running_on(submit_job(alice, SMALL), "gpu-gone")
    created = job.created_at
    liveness = WorkerLiveness()
    first = timezone.now()
    assert sweep(first, liveness).dead_workers == []  # missing from now on
    assert sweep(first + timedelta(seconds=liveness.grace - 0.5), liveness).requeued == []
    report = sweep(first + timedelta(seconds=liveness.grace), liveness)
    job.refresh_from_db()
    assert report.dead_workers == ["gpu-gone"] and report.requeued == [str(job.pk)]
    assert (job.status, job.worker_id, job.workers_lost) == ("queued", "", 1)
    assert job.created_at == created and job.started_at is None


def test_a_dead_worker_is_declared_within_15_seconds_of_its_last_beat(
    alice, catalogue, broker, redis_client
):
    from gpu_worker.protocol import HEARTBEAT_TTL_SECONDS

    job = running_on(submit_job(alice, SMALL), "gpu-1")
    liveness = WorkerLiveness()
    last_beat = timezone.now()
    beat(redis_client, "gpu-1", current_job=str(job.pk))
    # The key lives TTL seconds after the last beat; the platform ticks every second.
    for second in range(HEARTBEAT_TTL_SECONDS + 1):
        assert sweep(last_beat + timedelta(seconds=second), liveness).dead_workers == []
    redis_client.delete("atelier:worker:gpu-1")  # expired
    dead_at = next(
        second
        for second in range(HEARTBEAT_TTL_SECONDS + 1, 30)
        if sweep(last_beat + timedelta(seconds=second), liveness).dead_workers
    )
    assert dead_at <= 15


def test_a_redis_flush_does_not_kill_live_workers(alice, catalogue, broker, redis_client):
    job = running_on(submit_job(alice, SMALL), "gpu-1")
    beat(redis_client, "gpu-1", current_job=str(job.pk))
    liveness = WorkerLiveness()
    start = timezone.now()
    sweep(start, liveness)
    redis_client.flushdb()  # every heartbeat gone at once
    assert sweep(start + timedelta(seconds=1), liveness).dead_workers == []
    beat(redis_client, "gpu-1", current_job=str(job.pk))  # within one beat interval
    for second in range(2, 20):
        assert sweep(start + timedelta(seconds=second), liveness).dead_workers == []
    assert status_of(job) == "running"


def test_a_draining_workers_assigned_job_goes_back_at_once_and_its_running_one_stays(
    alice, bob, catalogue, broker, redis_client
):
    running = running_on(submit_job(alice, SMALL), "gpu-1")
    waiting = submit_job(bob, SMALL)
    assert waiting.mark_assigned("gpu-1")
    beat(redis_client, "gpu-1", current_job=str(running.pk), draining=True)
    report = sweep(later(0), WorkerLiveness())
    assert report.requeued == [str(waiting.pk)]
    waiting.refresh_from_db()
    assert (waiting.status, waiting.worker_id) == ("queued", "")
    assert status_of(running) == "running"


def test_a_running_job_its_live_worker_moved_on_from_goes_back(
    alice, catalogue, broker, redis_client
):
    job = running_on(submit_job(alice, SMALL), "gpu-1")
    beat(redis_client, "gpu-1", current_job=None)  # its 'succeeded' was lost with Redis
    liveness = WorkerLiveness()
    start = timezone.now()
    assert sweep(start, liveness).requeued == []
    report = sweep(start + timedelta(seconds=UNREPORTED_GRACE_SECONDS), liveness)
    assert report.requeued == [str(job.pk)] and status_of(job) == "queued"


def test_a_job_whose_result_never_gets_recorded_fails_refunded_instead_of_looping(
    alice, catalogue, broker, redis_client
):
    from accounts.ledger import account_for

    balance = account_for(alice).balance
    job = submit_job(alice, SMALL)
    liveness = WorkerLiveness()
    clock, failed = timezone.now(), []
    for _ in range(MAX_HAND_OUTS):  # each time a worker runs it and its result is lost
        job.refresh_from_db()
        running_on(job, "gpu-1")
        beat(redis_client, "gpu-1", current_job=None)
        for _sweep in range(2):
            failed += sweep(clock, liveness).failed
            clock += timedelta(seconds=UNREPORTED_GRACE_SECONDS)
    job.refresh_from_db()
    assert failed == [str(job.pk)] and job.hand_outs == MAX_HAND_OUTS
    assert job.status == "failed" and "handed to GPU workers 10 times" in job.error
    assert account_for(alice).balance == balance


def test_a_running_job_whose_worker_still_beats_on_it_is_left_alone(
    alice, catalogue, broker, redis_client
):
    job = running_on(submit_job(alice, SMALL), "gpu-1")
    liveness = WorkerLiveness()
    for minutes in (0, 10, 60):
        beat(redis_client, "gpu-1", current_job=str(job.pk))
        assert sweep(later(60 * minutes), liveness).requeued == []
    assert status_of(job) == "running"


def test_the_old_workers_late_messages_change_nothing_after_the_job_moved_on(
    alice, catalogue, broker, redis_client
):
    from generation.worker_events import handle_job_event

    job = running_on(submit_job(alice, SMALL), "gpu-1")
    old = JobEvent(job_id=str(job.pk), attempt=job.attempt, worker_id="gpu-1", kind="started")
    liveness = WorkerLiveness()
    sweep(later(0), liveness)
    sweep(later(liveness.grace), liveness)  # gpu-1 declared dead: the job is back
    assert not handle_job_event(old)
    assert not handle_job_event({**old, "kind": "failed", "error": "late"})
    assert not handle_job_event({**old, "kind": "succeeded", "images": []})
    job.refresh_from_db()
    assert (job.status, job.error, job.images.count()) == ("queued", "", 0)


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
    info = queue_snapshot(workers=1).infos[str(job.pk)]
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
    assert snapshot.infos[str(first.pk)].source == "history"
    assert snapshot.infos[str(first.pk)].eta == pytest.approx(9.0, abs=0.2)  # 8 s sampling + 1 s
    assert snapshot.infos[str(second.pk)].position == 2
    assert snapshot.infos[str(second.pk)].eta == pytest.approx(18.0, abs=0.4)


def test_two_workers_halve_the_wait(alice, bob, catalogue, redis_client):
    finished(bob, "model-a", 8.0)
    submit_job(alice, SMALL)
    second = submit_job(bob, SMALL)
    assert queue_snapshot(workers=2).infos[str(second.pk)].eta == pytest.approx(9.0, abs=0.2)
