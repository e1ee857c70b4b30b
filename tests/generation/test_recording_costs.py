"""What recording a worker's 'started' and 'succeeded' costs the database: the claim reads the
job in the same statement (no SELECT of the job first), a start runs no transaction around its
one statement, and an event that does not match (stale, redelivered) still changes nothing."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import CreditAccount
from generation.event_claims import claims_return_rows
from generation.models import Job, JobImage
from generation.queue import queue_snapshot, store_snapshot
from generation.submission import submit_job
from generation.worker_events import handle_job_event
from tests.generation.conftest import SMALL
from tests.generation.test_job_lifecycle import dispatched, event, succeeded

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not claims_return_rows(), reason="the database returns no rows"),
]


def statements(queries: CaptureQueriesContext) -> list[str]:
    """The statements' verbs, less the savepoints of the test's own transaction."""
    verbs = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    return [v for v in verbs if v not in ("SAVEPOINT", "RELEASE")]


def test_a_start_with_nobody_else_queued_is_one_statement(
    alice, catalogue, django_capture_on_commit_callbacks
):
    job = dispatched(submit_job(alice, SMALL))
    store_snapshot(queue_snapshot())  # the dispatcher's, with the speeds its ETA uses
    with (
        CaptureQueriesContext(connection) as queries,
        django_capture_on_commit_callbacks(execute=True) as published,
    ):
        assert handle_job_event(event(job, "started"))
    assert statements(queries) == ["UPDATE"]  # the claim, returning the job and the queue
    assert len(published) == 1  # job.started
    job.refresh_from_db()
    assert (job.status, job.worker_id) == (Job.Status.RUNNING, "gpu-1")
    assert job.started_at is not None


def test_a_start_with_others_queued_tells_them_their_place(
    alice, bob, catalogue, django_capture_on_commit_callbacks
):
    job = dispatched(submit_job(alice, SMALL))
    submit_job(bob, SMALL)
    with django_capture_on_commit_callbacks() as published:
        assert handle_job_event(event(job, "started"))
    assert len(published) == 2  # job.started, and the queue's new places


def test_a_success_reads_the_job_with_its_claim(alice, catalogue):
    job = dispatched(submit_job(alice, SMALL))
    with CaptureQueriesContext(connection) as queries:
        assert handle_job_event(succeeded(job, count=2))
    # the claim, the images, the settlement's lock, sums, then account and entry: one
    # statement on PostgreSQL (an UPDATE feeding the INSERT), two elsewhere
    settle = ["WITH"] if connection.vendor == "postgresql" else ["UPDATE", "INSERT"]
    assert statements(queries) == ["UPDATE", "INSERT", "SELECT", "SELECT", *settle]
    job.refresh_from_db()
    assert (job.status, job.steps_done, job.worker_id) == ("succeeded", job.total_steps, "gpu-1")
    assert job.timings == {"sampling_s": 1.5, "total_s": 2.0}
    assert job.started_at == job.finished_at  # its 'started' never came: it started at the end


def test_a_redelivered_success_or_start_changes_nothing(alice, catalogue):
    job = dispatched(submit_job(alice, SMALL))
    assert handle_job_event(event(job, "started"))
    assert handle_job_event(succeeded(job))
    account = CreditAccount.objects.get(pk=alice.pk)
    assert not handle_job_event(succeeded(job))
    assert not handle_job_event(event(job, "started"))
    assert JobImage.objects.filter(job=job).count() == 1
    again = CreditAccount.objects.get(pk=alice.pk)
    assert (again.balance, again.held) == (account.balance, account.held)
    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED


def test_a_success_of_an_older_attempt_is_ignored(alice, catalogue):
    job = dispatched(submit_job(alice, SMALL))
    stale = succeeded(job)
    assert job.return_to_queue() and job.mark_assigned("gpu-2")
    assert not handle_job_event(stale)
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED
    assert not JobImage.objects.filter(job=job).exists()
