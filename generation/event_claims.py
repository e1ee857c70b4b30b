"""A GPU worker's 'started' and 'succeeded' claimed by job id, the job read in the same statement.

Every job sends both, and handling them read the job (a SELECT with the ORM compiling it), then
claimed the transition (an UPDATE, compiled again): 2-6 ms of the platform worker's CPU each,
the 'started' one taken from the job's engine beside it. Here the conditional UPDATE returns
what recording needs (UPDATE ... RETURNING: PostgreSQL, SQLite 3.35+), written out as SQL as
`Job.mark_assigned`'s claim is. A claim that matches no row (an unknown job, another attempt, a
redelivered event, a merge) returns None and the caller takes the general path, which reads the
job and says why it ignores the event. The claims are the same conditional updates as
`Job.mark_running` / `Job.mark_succeeded`: a redelivered or stale event changes nothing.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.db import connection
from django.utils import timezone

from generation.models import AWAITED, Job

_CLAIM_SUCCESS = (
    'UPDATE "generation_job" SET "status" = %s, "finished_at" = %s, '
    '"started_at" = COALESCE("started_at", %s), "worker_id" = COALESCE(NULLIF(%s, \'\'), '
    '"worker_id"), "timings" = %s, "steps_done" = "total_steps" '
    'WHERE "id" = %s AND "status" IN (%s, %s) AND "attempt" = %s AND "mode" <> %s '
    'RETURNING "owner_id", "mode", "checkpoint_id", "total_steps", "worker_id", '
    # whether another job waits for this one (Job.objects.with_awaited())
    'EXISTS(SELECT 1 FROM "generation_job" AS "waiting" '
    'WHERE "waiting"."after_id" = "generation_job"."id")'
)
# "Is another job queued?" comes back with the claim: a start tells the queue its new places
# only if one is (`lifecycle.publish_queue_positions`).
_CLAIM_START = (
    'UPDATE "generation_job" SET "status" = %s, "worker_id" = %s, "started_at" = %s '
    'WHERE "id" = %s AND "status" = %s AND "attempt" = %s '
    'RETURNING "owner_id", "mode", "checkpoint_id", "total_steps", "steps_done", "params", '
    'EXISTS(SELECT 1 FROM "generation_job" AS "other" WHERE "other"."status" = %s '
    'AND "other"."id" <> "generation_job"."id")'
)


def claims_return_rows() -> bool:
    """Whether the database returns rows from an UPDATE (SQLite before 3.35 does not)."""
    return bool(connection.features.can_return_columns_from_insert)


def _claimed(sql: str, params: list[Any]) -> tuple[Any, ...] | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _loaded(values: dict[str, Any]) -> Job:
    """A Job with the fields `values` names (by attname); the others deferred, read if used."""
    fields = Job._meta.concrete_fields
    names = [f.attname for f in fields if f.attname in values]
    return Job.from_db(connection.alias, names, [values[name] for name in names])


def claim_success(job_id: str, attempt: int, worker_id: str, timings: dict[str, Any]) -> Job | None:
    """`Job.mark_succeeded` of an image job, claimed by id: the job as far as recording its
    images needs it (and whether a job waits for it), or None when the claim did not match."""
    if not claims_return_rows():
        return None
    now = timezone.now()
    stamp = connection.ops.adapt_datetimefield_value(now)
    row = _claimed(
        _CLAIM_SUCCESS,
        [
            Job.Status.SUCCEEDED,
            stamp,
            stamp,
            worker_id[:200],
            Job._meta.get_field("timings").get_db_prep_value(timings, connection),
            Job._meta.pk.get_db_prep_value(job_id, connection),
            *Job.UNFINISHED,
            attempt,
            Job.Mode.MERGE,
        ],
    )
    if row is None:
        return None
    owner_id, mode, checkpoint_id, total_steps, worker, awaited = row
    job = _loaded(
        {
            "id": uuid.UUID(str(job_id)),
            "owner_id": owner_id,
            "status": Job.Status.SUCCEEDED,
            "mode": mode,
            "checkpoint_id": checkpoint_id,
            "total_steps": total_steps,
            "attempt": attempt,
            "worker_id": worker,
            "finished_at": now,
            "steps_done": total_steps,
            "timings": timings,
        }
    )
    setattr(job, AWAITED, bool(awaited))
    return job


def claim_start(job_id: str, attempt: int, worker_id: str) -> tuple[Job, bool] | None:
    """`Job.mark_running` claimed by id: the job as far as its 'started' event needs it, and
    whether another job is queued; None when the claim did not match."""
    if not claims_return_rows():
        return None
    now = timezone.now()
    worker_id = worker_id[:200]
    row = _claimed(
        _CLAIM_START,
        [
            Job.Status.RUNNING,
            worker_id,
            connection.ops.adapt_datetimefield_value(now),
            Job._meta.pk.get_db_prep_value(job_id, connection),
            Job.Status.QUEUED,
            attempt,
            Job.Status.QUEUED,
        ],
    )
    if row is None:
        return None
    owner_id, mode, checkpoint_id, total_steps, steps_done, params, others_queued = row
    job = _loaded(
        {
            "id": uuid.UUID(str(job_id)),
            "owner_id": owner_id,
            "status": Job.Status.RUNNING,
            "mode": mode,
            "params": json.loads(params) if isinstance(params, str | bytes) else params,
            "checkpoint_id": checkpoint_id,
            "total_steps": total_steps,
            "attempt": attempt,
            "worker_id": worker_id,
            "started_at": now,
            "steps_done": steps_done,
        }
    )
    return job, bool(others_queued)
