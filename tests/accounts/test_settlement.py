"""Every way a job ends settles its hold exactly once, through generation's own services and the
worker-event handler the platform actor runs."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import ledger
from accounts.models import CreditEntry
from generation.models import CatalogEntry, Job
from generation.submission import SubmissionError, cancel_job, submit_job
from generation.sweeper import MAX_WORKERS_LOST, SweepMemory, sweep
from generation.worker_events import handle_job_event
from gpu_worker.protocol import CANCEL_KEY, PLATFORM_QUEUE, JobEvent, JobEventKind
from tests.accounts.conftest import balance_of, held_of, set_balance
from tests.generation.conftest import send_event, wait_for

pytestmark = pytest.mark.django_db

# 1024x1024, 20 steps: 4 units of work, 4.00 credits at multiplier 1.
PARAMS = {
    "prompt": "a lighthouse",
    "width": 1024,
    "height": 1024,
    "steps": 20,
    "checkpoint": "base",
}
PRICE = Decimal("4.00")


@pytest.fixture
def checkpoint(db) -> CatalogEntry:
    return CatalogEntry.objects.create(
        name="base", kind="checkpoint", family="sd1", filename="base.safetensors"
    )


@pytest.fixture
def job(alice, checkpoint) -> Job:
    set_balance(alice, 10)
    return submit_job(alice, PARAMS)


def event(job: Job, kind: JobEventKind, **extra: Any) -> JobEvent:
    # The extras are whatever the test sends, as on the wire: not checked against JobEvent.
    return cast(
        JobEvent,
        {
            "job_id": str(job.pk),
            "attempt": job.attempt,
            "worker_id": "gpu-0",
            "kind": kind,
            **extra,
        },
    )


def settlement_of(job: Job) -> CreditEntry:
    return CreditEntry.objects.for_job(job.pk).get(kind__in=CreditEntry.SETTLEMENTS)


def assert_ledger_clean() -> None:
    assert ledger.find_violations() == []


def test_submitting_holds_the_jobs_price(alice, job):
    assert job.price == PRICE
    assert (balance_of(alice), held_of(alice)) == (Decimal("6.00"), PRICE)
    assert CreditEntry.objects.for_job(job.pk).get().kind == "hold"


def test_a_submission_the_balance_cannot_cover_is_402_with_balance_and_price_and_no_job(
    alice, checkpoint
):
    set_balance(alice, 3)
    api = APIClient()
    api.force_authenticate(alice)
    response = api.post("/api/v1/jobs/", PARAMS, format="json")
    assert response.status_code == 402
    assert "4.00" in response.json()["detail"] and "3.00" in response.json()["detail"]
    assert not Job.objects.exists()
    assert balance_of(alice) == Decimal("3.00") and held_of(alice) == 0
    assert not CreditEntry.objects.filter(kind="hold").exists()


def test_success_captures_the_hold(alice, job):
    handle_job_event(event(job, "started"))
    assert handle_job_event(event(job, "succeeded", images=[]))
    assert settlement_of(job).charged == PRICE
    assert (balance_of(alice), held_of(alice)) == (Decimal("6.00"), 0)
    assert_ledger_clean()


def test_a_duplicate_finish_message_charges_once(alice, job):
    handle_job_event(event(job, "started"))
    handle_job_event(event(job, "succeeded", images=[]))
    assert not handle_job_event(event(job, "succeeded", images=[]))
    assert not handle_job_event(event(job, "failed", error="late"))
    assert CreditEntry.objects.for_job(job.pk).count() == 2
    assert balance_of(alice) == Decimal("6.00")
    assert_ledger_clean()


def test_failure_releases_the_whole_hold(alice, job):
    handle_job_event(event(job, "started"))
    handle_job_event(event(job, "failed", error="out of memory"))
    assert settlement_of(job).kind == "release"
    assert (balance_of(alice), held_of(alice)) == (Decimal("10.00"), 0)
    assert_ledger_clean()


def test_cancelling_a_queued_job_releases_the_whole_hold(alice, job, redis_client):
    cancel_job(alice, job)
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert settlement_of(job).kind == "release"
    assert balance_of(alice) == Decimal("10.00")
    assert_ledger_clean()


def test_cancelling_a_running_job_charges_the_steps_that_ran(alice, job, redis_client):
    handle_job_event(event(job, "started"))
    job.refresh_from_db()
    cancel_job(alice, job)
    handle_job_event(event(job, "cancelled", steps_done=5))  # 5 of 20 steps
    entry = settlement_of(job)
    assert (entry.kind, entry.charged) == ("capture", Decimal("1.00"))
    assert (balance_of(alice), held_of(alice)) == (Decimal("9.00"), 0)
    assert_ledger_clean()


def test_a_running_job_cancelled_before_any_step_is_free(alice, job, redis_client):
    handle_job_event(event(job, "started"))
    job.refresh_from_db()
    cancel_job(alice, job)
    handle_job_event(event(job, "cancelled", steps_done=0))
    assert settlement_of(job).kind == "release"
    assert balance_of(alice) == Decimal("10.00")


# --- a cancel racing the worker's start: the job was handed out, the worker may have begun ---


@pytest.fixture
def handed_out(job) -> Job:
    """As the scheduler hands it out; the worker's 'started' may still be on the way."""
    assert job.mark_assigned("gpu-0")
    return job


def cancel_while_handed_out(alice: Any, job: Job, redis_client: Any) -> None:
    """The owner cancels before the platform has recorded the worker's 'started'."""
    cancel_job(alice, job)
    job.refresh_from_db()
    assert (job.status, job.cancel_requested_at is not None) == ("queued", True)
    assert redis_client.get(CANCEL_KEY.format(job_id=job.pk)) == b"interrupt"
    assert held_of(alice) == PRICE  # nothing settled until the worker says how far it got


def test_a_cancel_before_the_started_event_charges_the_steps_that_ran(
    alice, handed_out, redis_client
):
    cancel_while_handed_out(alice, handed_out, redis_client)
    assert handle_job_event(event(handed_out, "started"))
    assert handle_job_event(event(handed_out, "cancelled", steps_done=5))  # 5 of 20 steps
    entry = settlement_of(handed_out)
    assert (entry.kind, entry.charged) == ("capture", Decimal("1.00"))
    assert (balance_of(alice), held_of(alice)) == (Decimal("9.00"), 0)
    assert_ledger_clean()


def test_a_cancelled_event_overtaking_its_started_event_still_charges_the_steps(
    alice, handed_out, redis_client
):
    cancel_while_handed_out(alice, handed_out, redis_client)
    assert handle_job_event(event(handed_out, "cancelled", steps_done=5))
    assert not handle_job_event(event(handed_out, "started"))  # late: changes nothing
    handed_out.refresh_from_db()
    assert handed_out.status == "cancelled" and handed_out.started_at is not None
    assert settlement_of(handed_out).charged == Decimal("1.00")
    assert (balance_of(alice), held_of(alice)) == (Decimal("9.00"), 0)
    assert_ledger_clean()


def test_a_worker_that_sees_the_cancel_before_starting_gives_everything_back(
    alice, handed_out, redis_client
):
    cancel_while_handed_out(alice, handed_out, redis_client)
    assert handle_job_event(event(handed_out, "cancelled", steps_done=0))
    assert settlement_of(handed_out).kind == "release"
    assert (balance_of(alice), held_of(alice)) == (Decimal("10.00"), 0)
    assert_ledger_clean()


def test_a_job_finished_before_the_worker_saw_the_cancel_is_charged_once(
    alice, handed_out, redis_client
):
    cancel_while_handed_out(alice, handed_out, redis_client)
    assert handle_job_event(event(handed_out, "started"))
    assert handle_job_event(event(handed_out, "succeeded", images=[]))
    assert not handle_job_event(event(handed_out, "cancelled", steps_done=20))
    assert settlement_of(handed_out).charged == PRICE
    assert (balance_of(alice), held_of(alice)) == (Decimal("6.00"), 0)
    assert_ledger_clean()


def test_a_cancelled_job_given_back_by_a_draining_worker_ends_with_its_hold_released(
    alice, handed_out, redis_client
):
    cancel_while_handed_out(alice, handed_out, redis_client)
    assert handle_job_event(event(handed_out, "released"))
    handed_out.refresh_from_db()
    assert handed_out.status == "cancelled"  # not handed to another worker
    assert settlement_of(handed_out).kind == "release"
    assert (balance_of(alice), held_of(alice)) == (Decimal("10.00"), 0)
    assert_ledger_clean()


def test_a_cancelled_job_whose_worker_died_ends_instead_of_going_to_another_worker(
    alice, handed_out, redis_client
):
    cancel_while_handed_out(alice, handed_out, redis_client)
    memory = SweepMemory()
    first = timezone.now()
    sweep(first, memory)  # no heartbeat from gpu-0: missing from now on...
    sweep(first + timedelta(seconds=memory.liveness.grace), memory)  # ...and declared dead
    handed_out.refresh_from_db()
    assert (handed_out.status, handed_out.worker_id) == ("cancelled", "")
    assert settlement_of(handed_out).kind == "release"
    assert (balance_of(alice), held_of(alice)) == (Decimal("10.00"), 0)
    assert_ledger_clean()


def test_a_job_that_killed_its_workers_releases_the_whole_hold(alice, job, redis_client):
    memory = SweepMemory()
    for n in range(MAX_WORKERS_LOST):
        job.refresh_from_db()
        assert job.status == "queued" and job.mark_assigned(f"gpu-{n}")
        assert handle_job_event({**event(job, "started"), "worker_id": f"gpu-{n}"})
        first = timezone.now()
        sweep(first, memory)  # no heartbeat from gpu-n: missing from now on...
        sweep(first + timedelta(seconds=memory.liveness.grace), memory)  # ...and declared dead
    job.refresh_from_db()
    assert job.status == "failed" and job.workers_lost == MAX_WORKERS_LOST
    assert settlement_of(job).kind == "release"
    assert balance_of(alice) == Decimal("10.00")
    # ...and the last worker's late 'succeeded', should it come back, changes nothing.
    assert not handle_job_event({**event(job, "succeeded", images=[]), "worker_id": "gpu-2"})
    assert balance_of(alice) == Decimal("10.00")
    assert_ledger_clean()


def test_bob_cannot_cancel_alices_job_and_her_hold_stays(alice, bob, job, redis_client):
    with pytest.raises(SubmissionError):
        cancel_job(bob, job)
    assert held_of(alice) == PRICE


def test_a_finish_message_delivered_twice_through_the_platform_actor_charges_once(
    alice, checkpoint, broker, platform_worker
):
    set_balance(alice, 10)
    job = submit_job(alice, PARAMS)
    job.refresh_from_db()
    send_event(broker, event(job, "started"))
    send_event(broker, event(job, "succeeded", images=[]))
    send_event(broker, event(job, "succeeded", images=[]))
    wait_for(lambda: CreditEntry.objects.for_job(job.pk).filter(kind="capture").exists())
    broker.join(PLATFORM_QUEUE)
    platform_worker.join()
    assert CreditEntry.objects.for_job(job.pk).count() == 2
    assert (balance_of(alice), held_of(alice)) == (Decimal("6.00"), 0)
    assert_ledger_clean()
