"""The sweeper takes back what Redis lost and what dead or draining workers held, and keeps the
model catalogue in step; queue positions and ETAs come from measured history."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
from django.test import override_settings
from django.utils import timezone

from generation.broker import reset_for_tests
from generation.catalogue_sync import sync_catalogue
from generation.job_messages import build_request
from generation.models import CatalogEntry, Job
from generation.queue import queue_snapshot
from generation.scheduling.dispatcher import schedule_pending
from generation.scheduling.estimates import DEFAULT_SPEED
from generation.submission import submit_job
from generation.sweeper import (
    MAX_HAND_OUTS,
    UNREPORTED_GRACE_SECONDS,
    SweepMemory,
    sweep,
)
from gpu_worker.protocol import GENERATE_ACTOR, GENERATE_KWARG, JobEvent, worker_queue
from operations.redis_server import free_port
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
    memory = SweepMemory()
    assert sweep(later(60), memory).requeued == []  # its message is still there
    redis_client.flushdb()
    beat(redis_client, "gpu-1")  # the live worker beats again after the flush
    report = sweep(later(60), memory)
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
    memory = SweepMemory()
    first = timezone.now()
    assert sweep(first, memory).dead_workers == []  # missing from now on
    assert sweep(first + timedelta(seconds=memory.liveness.grace - 0.5), memory).requeued == []
    report = sweep(first + timedelta(seconds=memory.liveness.grace), memory)
    job.refresh_from_db()
    assert report.dead_workers == ["gpu-gone"] and report.requeued == [str(job.pk)]
    assert (job.status, job.worker_id, job.workers_lost) == ("queued", "", 1)
    assert job.created_at == created and job.started_at is None


def test_a_dead_worker_is_declared_within_15_seconds_of_its_last_beat(
    alice, catalogue, broker, redis_client
):
    from gpu_worker.protocol import HEARTBEAT_TTL_SECONDS

    job = running_on(submit_job(alice, SMALL), "gpu-1")
    memory = SweepMemory()
    last_beat = timezone.now()
    beat(redis_client, "gpu-1", current_job=str(job.pk))
    # The key lives TTL seconds after the last beat; the platform ticks every second.
    for second in range(HEARTBEAT_TTL_SECONDS + 1):
        assert sweep(last_beat + timedelta(seconds=second), memory).dead_workers == []
    redis_client.delete("atelier:worker:gpu-1")  # expired
    dead_at = next(
        second
        for second in range(HEARTBEAT_TTL_SECONDS + 1, 30)
        if sweep(last_beat + timedelta(seconds=second), memory).dead_workers
    )
    assert dead_at <= 15


def test_a_redis_flush_does_not_kill_live_workers(alice, catalogue, broker, redis_client):
    job = running_on(submit_job(alice, SMALL), "gpu-1")
    beat(redis_client, "gpu-1", current_job=str(job.pk))
    memory = SweepMemory()
    start = timezone.now()
    sweep(start, memory)
    redis_client.flushdb()  # every heartbeat gone at once
    assert sweep(start + timedelta(seconds=1), memory).dead_workers == []
    beat(redis_client, "gpu-1", current_job=str(job.pk))  # within one beat interval
    for second in range(2, 20):
        assert sweep(start + timedelta(seconds=second), memory).dead_workers == []
    assert status_of(job) == "running"


@contextmanager
def redis_unreachable() -> Iterator[None]:
    """The platform's Redis is down: its clients point at a port nobody listens on."""
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        reset_for_tests()
        try:
            yield
        finally:
            reset_for_tests()


def test_a_redis_outage_longer_than_the_grace_kills_no_worker_and_a_real_death_still_counts(
    alice, catalogue, broker, redis_client
):
    job = running_on(submit_job(alice, SMALL), "gpu-1")
    beat(redis_client, "gpu-1", current_job=str(job.pk))
    memory = SweepMemory()
    grace = memory.liveness.grace
    start = timezone.now()
    sweep(start, memory)
    with redis_unreachable():  # ten seconds, twice the grace, of sweeps that read nothing
        for second in range(1, 11):
            assert sweep(start + timedelta(seconds=second), memory).dead_workers == []
    redis_client.flushdb()  # back, and empty: no heartbeat until the worker's next beat
    back = start + timedelta(seconds=11)
    assert sweep(back, memory).dead_workers == []  # the grace starts again now
    assert sweep(back + timedelta(seconds=grace - 0.5), memory).dead_workers == []
    assert status_of(job) == "running"
    # gpu-1 never beats again: it did die, and is declared dead a grace after Redis came back.
    report = sweep(back + timedelta(seconds=grace), memory)
    assert report.dead_workers == ["gpu-1"] and report.requeued == [str(job.pk)]


def test_a_worker_beating_again_after_a_redis_outage_keeps_its_job(
    alice, catalogue, broker, redis_client
):
    job = running_on(submit_job(alice, SMALL), "gpu-1")
    beat(redis_client, "gpu-1", current_job=str(job.pk))
    memory = SweepMemory()
    start = timezone.now()
    sweep(start, memory)
    with redis_unreachable():
        sweep(start + timedelta(seconds=10), memory)
    redis_client.flushdb()
    sweep(start + timedelta(seconds=11), memory)
    beat(redis_client, "gpu-1", current_job=str(job.pk))
    for second in range(12, 30):
        assert sweep(start + timedelta(seconds=second), memory).dead_workers == []
    job.refresh_from_db()
    assert (job.status, job.workers_lost, job.attempt) == ("running", 0, 1)


def test_a_draining_workers_assigned_job_goes_back_at_once_and_its_running_one_stays(
    alice, bob, catalogue, broker, redis_client
):
    running = running_on(submit_job(alice, SMALL), "gpu-1")
    waiting = submit_job(bob, SMALL)
    assert waiting.mark_assigned("gpu-1")
    beat(redis_client, "gpu-1", current_job=str(running.pk), draining=True)
    report = sweep(later(0), SweepMemory())
    assert report.requeued == [str(waiting.pk)]
    waiting.refresh_from_db()
    assert (waiting.status, waiting.worker_id) == ("queued", "")
    assert status_of(running) == "running"


def test_a_running_job_its_live_worker_moved_on_from_goes_back(
    alice, catalogue, broker, redis_client
):
    job = running_on(submit_job(alice, SMALL), "gpu-1")
    beat(redis_client, "gpu-1", current_job=None)  # its 'succeeded' was lost with Redis
    memory = SweepMemory()
    start = timezone.now()
    assert sweep(start, memory).requeued == []
    report = sweep(start + timedelta(seconds=UNREPORTED_GRACE_SECONDS), memory)
    assert report.requeued == [str(job.pk)] and status_of(job) == "queued"


def test_a_running_job_whose_dramatiq_retry_waits_in_the_delay_queue_is_left_alone(
    alice, catalogue, broker, redis_client
):
    job = running_on(submit_job(alice, SMALL), "gpu-1")
    # Its run raised on gpu-1 and Dramatiq put the retry in the worker's delay queue.
    retry: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=worker_queue("gpu-1"),
        actor_name=GENERATE_ACTOR,
        args=(),
        kwargs={GENERATE_KWARG: build_request(job)},
        options={},
    )
    broker.enqueue(retry, delay=60_000)
    assert redis_client.hlen("dramatiq:gpu.gpu-1.DQ.msgs") == 1 and not queue_length(
        redis_client, "gpu-1"
    )
    beat(redis_client, "gpu-1", current_job=None)
    memory = SweepMemory()
    start = timezone.now()
    for second in (0, UNREPORTED_GRACE_SECONDS, 3 * UNREPORTED_GRACE_SECONDS):
        assert sweep(start + timedelta(seconds=second), memory).requeued == []
    assert status_of(job) == "running"


def test_a_job_taken_back_as_unreported_starts_a_fresh_count_on_its_next_hand_out(
    alice, catalogue, broker, redis_client
):
    job = running_on(submit_job(alice, SMALL), "gpu-1")
    # gpu-1 was killed and restarted at once under the same id: it knows nothing of the job.
    beat(redis_client, "gpu-1", current_job=None)
    memory = SweepMemory()
    start = timezone.now()
    sweep(start, memory)
    taken_back = start + timedelta(seconds=UNREPORTED_GRACE_SECONDS)
    assert sweep(taken_back, memory).requeued == [str(job.pk)]
    job.refresh_from_db()
    running_on(job, "gpu-1")  # handed out again and started; the heartbeat lags a beat behind
    for second in (1, 2, UNREPORTED_GRACE_SECONDS - 1):
        assert sweep(taken_back + timedelta(seconds=second), memory).requeued == []
    assert status_of(job) == "running"


def test_a_job_whose_result_never_gets_recorded_fails_refunded_instead_of_looping(
    alice, catalogue, broker, redis_client
):
    from accounts.ledger import account_for

    balance = account_for(alice).balance
    job = submit_job(alice, SMALL)
    memory = SweepMemory()
    clock, failed = timezone.now(), []
    for _ in range(MAX_HAND_OUTS):  # each time a worker runs it and its result is lost
        job.refresh_from_db()
        running_on(job, "gpu-1")
        beat(redis_client, "gpu-1", current_job=None)
        for _sweep in range(2):
            failed += sweep(clock, memory).failed
            clock += timedelta(seconds=UNREPORTED_GRACE_SECONDS)
    job.refresh_from_db()
    assert failed == [str(job.pk)] and job.hand_outs == MAX_HAND_OUTS
    assert job.status == "failed" and "handed to GPU workers 10 times" in job.error
    assert account_for(alice).balance == balance


def test_a_running_job_whose_worker_still_beats_on_it_is_left_alone(
    alice, catalogue, broker, redis_client
):
    job = running_on(submit_job(alice, SMALL), "gpu-1")
    memory = SweepMemory()
    for minutes in (0, 10, 60):
        beat(redis_client, "gpu-1", current_job=str(job.pk))
        assert sweep(later(60 * minutes), memory).requeued == []
    assert status_of(job) == "running"


def test_the_old_workers_late_messages_change_nothing_after_the_job_moved_on(
    alice, catalogue, broker, redis_client
):
    from generation.worker_events import handle_job_event

    job = running_on(submit_job(alice, SMALL), "gpu-1")
    old = JobEvent(job_id=str(job.pk), attempt=job.attempt, worker_id="gpu-1", kind="started")
    memory = SweepMemory()
    sweep(later(0), memory)
    sweep(later(memory.liveness.grace), memory)  # gpu-1 declared dead: the job is back
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
