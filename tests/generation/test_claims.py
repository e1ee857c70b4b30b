"""The pass's claims (generation/scheduling/claims.py): a planned job is handed out once, as
its next attempt, loaded with its checkpoint for the message; one that no longer waits is not."""

from __future__ import annotations

import pytest
from django.db import connection

from generation.models import Job
from generation.scheduling.claims import claims_for
from generation.submission import submit_job
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db


def test_a_planned_job_is_claimed_once_as_its_next_attempt_with_its_checkpoint(
    alice, catalogue, broker
):
    job = submit_job(alice, SMALL)
    claim = claims_for([str(job.pk)])
    claimed = claim(str(job.pk), "gpu-1")
    assert claimed is not None
    assert (claimed.attempt, claimed.worker_id) == (job.attempt + 1, "gpu-1")
    assert claimed.checkpoint == job.checkpoint and claimed.checkpoint.name == "model-a"
    stored = Job.objects.get(pk=job.pk)
    assert (stored.attempt, stored.worker_id) == (claimed.attempt, "gpu-1")
    assert stored.dispatched_at == claimed.dispatched_at
    # a second pass planning the same job (it no longer waits) does not take it again
    assert claims_for([str(job.pk)])(str(job.pk), "gpu-2") is None
    assert Job.objects.get(pk=job.pk).worker_id == "gpu-1"


def test_a_job_cancelled_or_gone_after_the_plan_is_not_claimed(alice, catalogue, broker):
    cancelled, kept = submit_job(alice, SMALL), submit_job(alice, SMALL)
    claim = claims_for([str(cancelled.pk), str(kept.pk)])
    Job.objects.filter(pk=cancelled.pk).update(status=Job.Status.CANCELLED)
    assert claim(str(cancelled.pk), "gpu-1") is None
    assert Job.objects.get(pk=cancelled.pk).worker_id == ""
    assert claim(str(kept.pk), "gpu-1") is not None


def test_on_postgresql_the_claim_and_the_jobs_read_are_one_statement(
    alice, catalogue, broker, django_assert_num_queries
):
    if connection.vendor != "postgresql":
        pytest.skip("elsewhere the planned jobs are read first, then each claimed")
    job = submit_job(alice, SMALL)
    with django_assert_num_queries(1):
        claimed = claims_for([str(job.pk)])(str(job.pk), "gpu-1")
        assert claimed is not None and claimed.checkpoint.sha256  # loaded with it


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return str(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_a_claims_asynchronous_commit_stays_with_the_claim(alice, catalogue, broker):
    """The dispatcher's claim commits without waiting for the disk (claims.py says why); that
    must not outlive its own statement: the pooled connection's next transaction (a result, a
    ledger entry) commits durably, and a claim made inside a caller's transaction leaves that
    transaction's commit as it was."""
    from django.db import transaction

    if connection.vendor != "postgresql":
        pytest.skip("synchronous_commit is PostgreSQL's")
    first, second = submit_job(alice, SMALL), submit_job(alice, SMALL)
    assert _synchronous_commit() == "on"
    assert claims_for([str(first.pk)])(str(first.pk), "gpu-1") is not None
    assert _synchronous_commit() == "on"
    with transaction.atomic():
        assert claims_for([str(second.pk)])(str(second.pk), "gpu-1") is not None
        assert _synchronous_commit() == "on"
    assert Job.objects.get(pk=first.pk).worker_id == "gpu-1"
    assert Job.objects.get(pk=second.pk).worker_id == "gpu-1"
