"""The scheduling pass hands waiting jobs to alive workers on their own queues: never more than
a worker may hold, never a model it lacks, nothing to a draining worker, one pass at a time; and
the web refuses submissions with a clear 503 while Redis is unreachable, writing nothing."""

from __future__ import annotations

import json
import time

import pytest
from django.test import override_settings

from accounts.models import CreditEntry
from generation.broker import reset_for_tests
from generation.models import Job
from generation.scheduling.dispatcher import (
    AGAIN_KEY,
    LOCK_KEY,
    schedule_pending,
    wake_dispatcher,
)
from generation.scheduling.policy import FairScheduler
from generation.submission import submit_job
from generation.worker_events import handle_job_event
from gpu_worker.protocol import JobEvent
from operations.redis_server import free_port
from tests.generation.conftest import SMALL, api_client, beat

pytestmark = pytest.mark.django_db


def queued_on(redis_client, worker_id: str) -> list[dict]:
    return [
        json.loads(raw)["kwargs"]["request"]
        for raw in redis_client.hvals(f"dramatiq:gpu.{worker_id}.msgs")
    ]


def submit(user, capture, **params) -> Job:
    with capture(execute=True):  # the pass runs after the submission commits
        job = submit_job(user, {**SMALL, **params})
    job.refresh_from_db()
    return job


def test_a_job_goes_to_the_worker_holding_its_model_hot_on_that_workers_queue(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    beat(redis_client, "gpu-a", hot=["model-a"])
    beat(redis_client, "gpu-b", hot=["model-b"])
    job = submit(alice, django_capture_on_commit_callbacks, checkpoint="model-b")
    assert (job.worker_id, job.attempt, job.status) == ("gpu-b", 1, "queued")
    [request] = queued_on(redis_client, "gpu-b")
    assert request["job_id"] == str(job.pk) and request["checkpoint"] == "model-b"
    assert queued_on(redis_client, "gpu-a") == []


def test_a_worker_holds_at_most_one_job_beyond_the_one_it_runs(
    alice, bob, carol, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    beat(redis_client, "gpu-1", hot=["model-a"])
    # three sizes: no two of them may share a UNet batch (see the next test)
    jobs = [
        submit(user, django_capture_on_commit_callbacks, width=width)
        for user, width in ((alice, 64), (bob, 72), (carol, 80))
    ]
    assigned = [job for job in jobs if job.worker_id == "gpu-1"]
    assert len(assigned) == 2 and len(queued_on(redis_client, "gpu-1")) == 2
    [left] = [job for job in jobs if not job.worker_id]
    # The first finishes: its slot goes to the job left waiting.
    first = assigned[0]
    event = JobEvent(job_id=str(first.pk), attempt=first.attempt, worker_id="gpu-1", kind="started")
    assert handle_job_event(event)
    assert handle_job_event({**event, "kind": "failed", "error": "boom"})
    with django_capture_on_commit_callbacks(execute=True):
        schedule_pending()
    left.refresh_from_db()
    assert left.worker_id == "gpu-1"


def test_a_full_worker_also_gets_jobs_that_can_join_its_batch(
    alice, bob, carol, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    beat(redis_client, "gpu-1", hot=["model-a"])
    jobs = [submit(user, django_capture_on_commit_callbacks) for user in (alice, bob, carol)]
    assert [job.worker_id for job in jobs] == ["gpu-1"] * 3
    assert len(queued_on(redis_client, "gpu-1")) == 3
    other = submit(alice, django_capture_on_commit_callbacks, width=72)  # another batch key
    assert other.worker_id == ""


def test_a_worker_that_runs_every_job_alone_gets_no_batch_companions(
    alice, bob, carol, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    """`--batch-max 0`: a third compatible job waits for a free slot (any worker's) instead of
    queueing behind the two this worker holds."""
    beat(redis_client, "gpu-1", hot=["model-a"], batch_max_images=0)
    jobs = [submit(user, django_capture_on_commit_callbacks) for user in (alice, bob, carol)]
    assert [job.worker_id for job in jobs] == ["gpu-1", "gpu-1", ""]
    beat(redis_client, "gpu-2", hot=["model-a"])
    with django_capture_on_commit_callbacks(execute=True):
        schedule_pending()
    jobs[2].refresh_from_db()
    assert jobs[2].worker_id == "gpu-2"


def test_a_worker_never_gets_a_model_it_does_not_have_on_disk(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    beat(redis_client, "gpu-1", inventory=["model-a"])
    job = submit(alice, django_capture_on_commit_callbacks, checkpoint="model-b")
    assert job.worker_id == "" and queued_on(redis_client, "gpu-1") == []
    beat(redis_client, "gpu-2", inventory=["model-a", "model-b"])
    with django_capture_on_commit_callbacks(execute=True):
        schedule_pending()
    job.refresh_from_db()
    assert job.worker_id == "gpu-2"


def test_a_lora_named_like_the_checkpoint_does_not_count_as_the_checkpoint(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    beat(redis_client, "gpu-1", inventory=["model-a", ("lora", "model-b")])
    job = submit(alice, django_capture_on_commit_callbacks, checkpoint="model-b")
    assert job.worker_id == "" and queued_on(redis_client, "gpu-1") == []
    beat(redis_client, "gpu-2", inventory=["model-b"])
    with django_capture_on_commit_callbacks(execute=True):
        schedule_pending()
    job.refresh_from_db()
    assert job.worker_id == "gpu-2"


def test_a_draining_worker_gets_nothing(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    beat(redis_client, "gpu-1", hot=["model-a"], draining=True)
    job = submit(alice, django_capture_on_commit_callbacks)
    assert job.worker_id == "" and queued_on(redis_client, "gpu-1") == []


def test_a_released_job_goes_back_and_to_another_worker(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    beat(redis_client, "gpu-1")
    job = submit(alice, django_capture_on_commit_callbacks)
    assert job.worker_id == "gpu-1"
    beat(redis_client, "gpu-1", draining=True)  # SIGTERM: it gives the job back unstarted
    beat(redis_client, "gpu-2")
    released = JobEvent(job_id=str(job.pk), attempt=job.attempt, worker_id="gpu-1", kind="released")
    with django_capture_on_commit_callbacks(execute=True):
        assert handle_job_event(released)
        schedule_pending()
    job.refresh_from_db()
    assert (job.worker_id, job.attempt, job.workers_lost) == ("gpu-2", 3, 0)
    assert not handle_job_event({**released, "kind": "started"})  # the old hand-out is stale


def test_a_pass_asked_for_while_another_runs_is_run_by_that_one(
    alice, catalogue, broker, redis_client
):
    beat(redis_client, "gpu-1")
    submit_job(alice, SMALL)
    redis_client.set(LOCK_KEY, "another-process", px=5000)
    report = schedule_pending()
    assert report.skipped and report.assigned == []
    assert redis_client.get(AGAIN_KEY)  # the holder goes round once more
    redis_client.delete(LOCK_KEY)
    report = schedule_pending()
    assert len(report.assigned) == 1 and not redis_client.exists(AGAIN_KEY)
    assert not redis_client.exists(LOCK_KEY)


class AskingAgainScheduler(FairScheduler):
    """The policy, with another trigger arriving during its first `plan` (as a job event or a
    submission would, from another process): that trigger finds the lock held."""

    def __init__(self) -> None:
        super().__init__()
        self.concurrent: list[bool] = []

    def plan(self, *args, **kwargs):
        if not self.concurrent:
            self.concurrent.append(schedule_pending().skipped)
        return super().plan(*args, **kwargs)


def test_a_pass_asked_for_during_another_is_run_by_the_holder_and_the_lock_let_go(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    submit_job(alice, SMALL)
    beat(redis_client, "gpu-1")
    scheduler = AskingAgainScheduler()
    with django_capture_on_commit_callbacks(execute=True):
        report = schedule_pending(scheduler)
    assert scheduler.concurrent == [True]  # skipped: the holder goes round again for it
    assert report.rounds == 2 and len(report.assigned) == 1
    assert not redis_client.exists(LOCK_KEY) and not redis_client.exists(AGAIN_KEY)


def test_submission_answers_503_while_redis_is_unreachable_and_writes_nothing(
    alice, catalogue, client
):
    holds = CreditEntry.objects.filter(kind="hold").count()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(REDIS_URL=dead):
        reset_for_tests()
        try:
            response = api_client(alice).post("/api/v1/jobs/", SMALL, format="json")
            client.force_login(alice)
            page = client.get("/generate/")
        finally:
            reset_for_tests()
    assert response.status_code == 503
    assert response.json() == {
        "field": "queue",
        "detail": "the queue is unreachable, try again shortly",
        "message": "Queue: The queue is unreachable, try again shortly",
    }
    assert response["Retry-After"]
    assert not Job.objects.exists()
    assert CreditEntry.objects.filter(kind="hold").count() == holds
    assert page.status_code == 200  # the pages keep working


def test_a_submission_is_accepted_after_redis_dropped_the_pooled_connections(
    alice, catalogue, broker, redis_client
):
    """The queue's PING goes out on a pooled connection as the submission's writes start; one
    that Redis dropped meanwhile (a restart) is asked again, not taken for a dead queue."""
    from generation.broker import get_redis

    pooled = get_redis().client_id()  # the web's pooled connection (one: no other thread)
    redis_client.client_kill_filter(_id=pooled)  # dropped, as a restart would (only that one)
    response = api_client(alice).post("/api/v1/jobs/", SMALL, format="json")
    assert response.status_code == 201, response.json()
    assert Job.objects.filter(pk=response.json()["id"]).exists()
    assert get_redis().client_id() != pooled  # the dropped one was replaced


@pytest.fixture
def dispatcher_thread(broker, redis_client, transactional_db):
    """The platform worker's dispatcher thread, with a long housekeeping wait: any hand-out
    within it was woken through Redis, not found by a poll."""
    import threading

    from django.db import connections

    from generation.scheduling.dispatcher import ALIVE_KEY, serve_dispatcher

    stop = threading.Event()

    def serve() -> None:
        serve_dispatcher(stop, wait_seconds=30)
        connections.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not redis_client.exists(ALIVE_KEY) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield thread
    stop.set()
    wake_dispatcher()  # let it see the stop now rather than after its wait
    thread.join(timeout=10)


def test_a_submitted_job_is_handed_out_at_once_by_the_dispatcher_not_by_the_request(
    alice, catalogue, dispatcher_thread, redis_client
):
    beat(redis_client, "gpu-1", hot=["model-a"])
    response = api_client(alice).post("/api/v1/jobs/", SMALL, format="json")
    assert response.status_code == 201
    job = Job.objects.get(pk=response.json()["id"])
    sent = time.monotonic()
    while not queued_on(redis_client, "gpu-1") and time.monotonic() - sent < 5:
        time.sleep(0.01)
    assert time.monotonic() - sent < 1.0  # far within the dispatcher's 30 s wait: woken
    job.refresh_from_db()
    assert job.worker_id == "gpu-1"
    [request] = queued_on(redis_client, "gpu-1")
    assert request["job_id"] == str(job.pk)


def test_wake_ups_rung_before_the_dispatcher_listens_are_all_answered_in_one_turn(
    alice, bob, catalogue, broker, redis_client, monkeypatch, transactional_db
):
    """Several values waiting on the doorbell (new jobs rung while the dispatcher was busy or
    restarting): its next turn takes them all at once, and none is left for a second turn."""
    import threading

    from django.db import connections

    from generation.scheduling import dispatcher
    from generation.scheduling.wakeups import WAKE_KEY, ring

    jobs = [str(submit_job(member, SMALL).pk) for member in (alice, alice, bob)]  # all wait
    ring(jobs)
    turns: list[set[str]] = []

    def answered(values, *args, **kwargs):
        turns.append(set(values))
        return answer_wake(values, *args, **kwargs)

    answer_wake = dispatcher.answer_wake
    monkeypatch.setattr(dispatcher, "answer_wake", answered)
    stop = threading.Event()

    def serve() -> None:
        dispatcher.serve_dispatcher(stop, wait_seconds=0.2)
        connections.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not turns and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=10)
    assert turns and turns[0] == set(jobs)
    assert redis_client.llen(WAKE_KEY) == 0


def test_the_fleet_is_read_with_each_present_workers_heartbeat(redis_client):
    """The index and the heartbeats in one read: a worker whose key expired is indexed but not
    present; a worker's beat comes back as it wrote it."""
    from generation.fleet import present_heartbeats, read_heartbeats

    assert read_heartbeats(redis_client) == {}
    beat(redis_client, "gpu-1", hot=["model-a"])
    beat(redis_client, "gpu-2")
    redis_client.delete("atelier:worker:gpu-2")  # expired
    beats = read_heartbeats(redis_client)
    assert set(beats) == {"gpu-1", "gpu-2"} and beats["gpu-2"] is None
    live = beats["gpu-1"]
    assert live is not None and live["loaded_models"] == ["model-a"]
    assert set(present_heartbeats(redis_client)) == {"gpu-1"}
    assert read_heartbeats(redis_client, ["gpu-2", "gpu-1"]) == beats


def test_with_a_dispatcher_alive_the_request_only_wakes_it(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    from generation.scheduling.dispatcher import ALIVE_KEY, WAKE_KEY

    redis_client.set(ALIVE_KEY, "1", ex=30)  # a dispatcher serves (not this test's thread)
    beat(redis_client, "gpu-1")
    job = submit(alice, django_capture_on_commit_callbacks)
    assert job.worker_id == ""  # no pass in the request
    assert redis_client.lrange(WAKE_KEY, 0, -1) == [str(job.pk).encode()]


def test_a_pass_considers_only_the_oldest_waiting_jobs_so_its_cost_stays_flat(
    alice, bob, catalogue, broker, redis_client, monkeypatch
):
    from generation.scheduling import dispatcher

    monkeypatch.setattr(dispatcher, "SCHEDULING_WINDOW", 2)
    oldest = [submit_job(alice, SMALL) for _ in range(2)]  # no worker yet: all wait
    later = [submit_job(bob, SMALL) for _ in range(2)]
    beat(redis_client, "gpu-1")
    beat(redis_client, "gpu-2")  # four free slots
    assigned = {a.job_id for a in schedule_pending().assigned}
    assert assigned == {str(j.pk) for j in oldest}
    assert not assigned & {str(j.pk) for j in later}
