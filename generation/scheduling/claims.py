"""The pass's claim of each job it plans to hand out, with the job's rows for its message.

A claim is a conditional update (`Job.mark_assigned`: the next attempt, to this worker, only if
the job still waits), and the message is built from the job with its checkpoint and recipe. On
PostgreSQL both are one statement per job: the claim as a data-modifying common table
expression, the rows read beside it as they were when the statement began (a job that a
concurrent hand-out changed meanwhile is not claimed: its attempt is pinned to that moment).
Elsewhere the planned jobs are read in one query, then each claimed.

On PostgreSQL a claim made outside a transaction (the dispatcher's) also commits without
waiting for the write-ahead log to reach the disk (`synchronous_commit` off for that statement
alone): a one-row UPDATE took 0.30-0.85 ms with that wait on the development machine and
0.14-0.24 ms without, and every job's way to its worker has one. What a crash of the database
server can lose is at most the last fraction of a second of claims, and a lost claim is safe:
the job reads as waiting again with its attempt before the claim, so the worker's events for
the lost attempt match nothing (ignored, nothing charged) and the next pass hands the job out
anew. Everything else (submissions, results, credits) keeps the server's durable commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from django.db import connection
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from accounts.compiled_queries import CompiledQuery
from generation.models import CLAIM_IF_WAITING, Job

Claim = Callable[[str, str], Job | None]  # (job id, worker id) -> the claimed job, or None

# `Job.mark_assigned`'s claim, its attempt the one the statement's snapshot reads
_CLAIM_RETURNING_ID = (
    f"claimed AS ({CLAIM_IF_WAITING}"  # noqa: S608 (constant SQL, no value in it)
    '(SELECT "attempt" FROM "generation_job" WHERE "id" = %s) RETURNING "id")'
)
# The same, its commit not waiting for the disk (module docstring): set_config's `true` scopes
# the setting to the statement's own transaction, so only when the claim is not inside a
# caller's transaction (whose other writes are the caller's to keep durable).
_CLAIM_RETURNING_ID_ASYNC = _CLAIM_RETURNING_ID.replace(
    ' RETURNING "id")',
    " AND set_config('synchronous_commit', 'off', true) = 'off' RETURNING \"id\")",
)


def claims_for(job_ids: Iterable[str]) -> Claim:
    """How this pass claims its planned jobs (`job_ids`), each loaded for its message."""
    if connection.vendor == "postgresql":
        return claim_with_rows
    jobs = {job.pk: job for job in _PLANNED.objects(ids=list(job_ids))}

    def claim_after_read(job_id: str, worker_id: str) -> Job | None:
        job = jobs.get(uuid.UUID(job_id))
        return job if job is not None and job.mark_assigned(worker_id) else None

    return claim_after_read


def claim_with_rows(job_id: str, worker_id: str) -> Job | None:
    """PostgreSQL: claim the job and read it with its checkpoint and recipe, in one statement.
    The job as `mark_assigned` leaves it (the next attempt, this worker), or None where it no
    longer waits (cancelled, taken, gone)."""
    worker_id, now = worker_id[:200], timezone.now()
    pk = Job._meta.pk.get_db_prep_value(job_id, connection)
    stamp = connection.ops.adapt_datetimefield_value(now)
    params = [worker_id, stamp, pk, Job.Status.QUEUED, pk]
    claim = _CLAIM_RETURNING_ID if connection.in_atomic_block else _CLAIM_RETURNING_ID_ASYNC
    found = _CLAIMED.objects_with((claim,), params)
    if not found:
        return None
    [job] = found  # read as it was before the claim: what the claim wrote, set here
    job.attempt += 1
    job.worker_id, job.dispatched_at = worker_id, now
    return job


def _planned(ids: RawSQL) -> QuerySet[Job]:
    return Job.objects.select_related("checkpoint__recipe").filter(pk__in=ids).order_by()


_PLANNED = CompiledQuery(_planned, ids="uuid_list")
# The row the claim above took, read beside it
_CLAIMED = CompiledQuery(lambda: _planned(RawSQL('SELECT "id" FROM claimed', ())))
