"""Periodic repairs, run by the platform worker every second: nothing a worker or Redis loses
stays lost, and nothing is run or charged twice.

- A dead worker (heartbeat key missing for WORKER_MISSING_GRACE_SECONDS of time during which Redis
  answered, on this process's clock, see `generation.fleet.WorkerLiveness`): its running and
  assigned jobs go back to the queue, keeping their place (created_at). A running job counts the
  loss in `workers_lost`; one that has now killed MAX_WORKERS_LOST workers fails with a clear error
  and its hold released (a poison job must not loop through the fleet).
- A draining worker (shutting down, or drained by an operator): its assigned, unstarted jobs go
  back at once, for other workers.
- A lost message (Redis restarted empty or was flushed): an assigned job whose message is in
  neither its worker's queue nor the delay queue goes back to the queue, so one sweep rebuilds
  the queue from the database.
- An unreported job (its terminal event lost with Redis): running on a live worker that has
  moved on, with no event of it waiting and no message of it (a Dramatiq retry) in the worker's
  queue or delay queue, for UNREPORTED_GRACE_SECONDS: back to the queue. The
  count is per hand-out (job and attempt), so the next hand-out starts its own.

Every take-back is `Job.return_to_queue`, a conditional update that also moves the attempt on,
so a late message or event of the old hand-out is a no-op.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from generation import lifecycle
from generation.broker import get_broker, get_redis
from generation.fleet import WorkerLiveness, read_heartbeats
from generation.job_messages import MESSAGE_ID_KEY
from generation.models import Job
from generation.scheduling.dispatcher import wake_dispatcher
from gpu_worker.protocol import (
    PLATFORM_QUEUE,
    WORKER_MISSING_GRACE_SECONDS,
    WorkerHeartbeat,
    worker_queue,
)

logger = logging.getLogger(__name__)

# An assignment younger than this is left alone: its enqueue may still be in flight.
DISPATCH_GRACE = timedelta(seconds=3)
# A running job its live worker no longer reports, with no event of it waiting, this long.
UNREPORTED_GRACE_SECONDS = 10.0
MAX_WORKERS_LOST = 3
# Hand-outs after which a job is failed (and refunded) instead of taken back again: ends any
# loop that is not a worker's death, e.g. a result the platform keeps failing to record.
MAX_HAND_OUTS = 10


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)


HandOut = tuple[str, int]  # (job id, attempt)


class SweepMemory:
    """What the sweeper keeps across passes: each worker's liveness and, per hand-out (job and
    attempt), since when a live worker has not reported a job it no longer runs. One per
    sweeping process (a fresh one declares nobody dead and nothing unreported)."""

    def __init__(
        self,
        grace: float = WORKER_MISSING_GRACE_SECONDS,
        unreported_grace: float = UNREPORTED_GRACE_SECONDS,
    ) -> None:
        self.liveness = WorkerLiveness(grace)
        self.unreported_grace = unreported_grace
        self.unreported_since: dict[HandOut, float] = {}

    def unreported_long_enough(self, job: Job, now: float) -> bool:
        since = self.unreported_since.setdefault((str(job.pk), job.attempt), now)
        return now - since >= self.unreported_grace

    def forget_unreported(self, keep: set[HandOut]) -> None:
        for hand_out in set(self.unreported_since) - keep:
            del self.unreported_since[hand_out]


def _job_ids_in(client: redis.Redis, hash_key: str) -> set[str]:
    """Job ids mentioned by the messages stored in one Dramatiq hash (small queues only)."""
    ids = set()
    for raw in client.hvals(hash_key):
        try:
            kwargs = json.loads(raw).get("kwargs") or {}
        except (ValueError, AttributeError):
            continue
        payload = kwargs.get("request") or kwargs.get("event") or {}
        if isinstance(payload, dict) and payload.get("job_id"):
            ids.add(str(payload["job_id"]))
    return ids


def _messages_key(queue: str, suffix: str = "") -> str:
    namespace = getattr(get_broker(), "namespace", "dramatiq")
    return f"{namespace}:{queue}{suffix}.msgs"


def _current_job(beat: WorkerHeartbeat | None) -> str | None:
    return beat.get("current_job") if beat is not None else None


def _take_back(job: Job, report: SweepReport, from_status: str, why: str) -> None:
    """Back to the queue for another worker, unless it has been handed out MAX_HAND_OUTS times
    already: then it fails with its hold released."""
    if job.hand_outs >= MAX_HAND_OUTS:
        error = (
            f"this job was handed to GPU workers {job.hand_outs} times without a result being "
            "recorded, so it is not tried again; its credits were given back"
        )
        if lifecycle.fail_job(job, error, attempt=job.attempt):
            logger.error("job %s failed after %s hand-outs (%s)", job.pk, job.hand_outs, why)
            report.failed.append(str(job.pk))
        return
    if job.return_to_queue(from_statuses=(from_status,)):
        logger.info("job %s back in the queue: %s", job.pk, why)
        report.requeued.append(str(job.pk))
        lifecycle.cancel_if_requested(job)


def _lost_with_worker(job: Job, report: SweepReport) -> None:
    """Its worker died. Assigned: back to the queue. Running: count the loss, and fail the job
    once it has killed MAX_WORKERS_LOST workers."""
    if job.status == Job.Status.QUEUED:
        _take_back(job, report, Job.Status.QUEUED, f"worker {job.worker_id} died before it")
        return
    worker_id = job.worker_id
    if job.workers_lost + 1 < MAX_WORKERS_LOST:
        if job.return_to_queue(from_statuses=(Job.Status.RUNNING,), worker_lost=True):
            logger.warning("job %s back in the queue: worker %s died", job.pk, worker_id)
            report.requeued.append(str(job.pk))
            lifecycle.cancel_if_requested(job)
        return
    with transaction.atomic():
        counted = Job.objects.filter(
            pk=job.pk, status=Job.Status.RUNNING, attempt=job.attempt
        ).update(workers_lost=F("workers_lost") + 1)
        error = (
            f"this job stopped {MAX_WORKERS_LOST} GPU workers (each died while running it), so "
            "it is not tried again; its credits were given back"
        )
        if counted and lifecycle.fail_job(job, error, attempt=job.attempt):
            logger.error("poison job %s failed after %s workers died", job.pk, MAX_WORKERS_LOST)
            report.failed.append(str(job.pk))


def take_back_lost_jobs(
    memory: SweepMemory, now: datetime | None = None, client: redis.Redis | None = None
) -> SweepReport:
    now = now or timezone.now()
    clock = now.timestamp()
    client = client or get_redis()
    report = SweepReport()
    held = list(Job.objects.filter(status__in=Job.UNFINISHED).exclude(worker_id=""))
    beats = read_heartbeats(client, {job.worker_id for job in held})
    dead = memory.liveness.dead(beats, clock)
    report.dead_workers = sorted(dead)
    alive: list[Job] = []
    for job in held:
        beat = beats.get(job.worker_id)
        if job.worker_id in dead:
            _lost_with_worker(job, report)
        elif beat is None:
            continue  # missing, not yet for long: a Redis flush looks the same for a moment
        elif beat.get("draining") and job.status == Job.Status.QUEUED:
            _take_back(job, report, Job.Status.QUEUED, f"{job.worker_id} is draining")
        else:
            alive.append(job)
    _take_back_lost_messages(client, alive, now, report)
    _take_back_unreported(client, alive, beats, memory, clock, report)
    if report.requeued:
        # The dispatcher sleeps while nothing waits: wake it, so the jobs go to another worker.
        transaction.on_commit(wake_dispatcher)
        transaction.on_commit(lifecycle.publish_queue_positions)
    return report


def _take_back_lost_messages(
    client: redis.Redis, alive: list[Job], now: datetime, report: SweepReport
) -> None:
    assigned = [
        job
        for job in alive
        if job.status == Job.Status.QUEUED
        and job.dispatched_at is not None
        and job.dispatched_at < now - DISPATCH_GRACE
    ]
    if not assigned:
        return
    message_ids = client.mget([MESSAGE_ID_KEY.format(job_id=job.pk) for job in assigned])
    pipe = client.pipeline()
    for job, message_id in zip(assigned, message_ids, strict=True):
        pipe.hexists(_messages_key(worker_queue(job.worker_id)), message_id or "-")
    present = pipe.execute()
    missing = [job for job, here in zip(assigned, present, strict=True) if not here]
    if not missing:
        return
    # A retry waits in the worker's delay queue under a new id; a job run quickly has its
    # message acked while its 'started' event still waits in the platform queue.
    held = _job_ids_in(client, _messages_key(PLATFORM_QUEUE))
    for worker_id in {job.worker_id for job in missing}:
        held |= _job_ids_in(client, _messages_key(worker_queue(worker_id), ".DQ"))
    for job in missing:
        if str(job.pk) not in held:
            _take_back(job, report, Job.Status.QUEUED, f"message to {job.worker_id} lost")


def _take_back_unreported(
    client: redis.Redis,
    alive: list[Job],
    beats: dict[str, WorkerHeartbeat | None],
    memory: SweepMemory,
    clock: float,
    report: SweepReport,
) -> None:
    suspects = [
        job
        for job in alive
        if job.status == Job.Status.RUNNING
        and _current_job(beats.get(job.worker_id)) != str(job.pk)
    ]
    memory.forget_unreported({(str(job.pk), job.attempt) for job in suspects})
    if not suspects:
        return
    # A job that raised is retried by Dramatiq: its message waits in the worker's delay queue
    # (then its queue) while the row still says running, so a message of it counts as "still
    # reported". The row stays the truth: the message only nudges the worker, and once Redis
    # holds neither a message nor an event of the job the grace runs and it is taken back.
    waiting = _job_ids_in(client, _messages_key(PLATFORM_QUEUE))
    for worker_id in {job.worker_id for job in suspects}:
        for suffix in ("", ".DQ"):
            waiting |= _job_ids_in(client, _messages_key(worker_queue(worker_id), suffix))
    for job in suspects:
        hand_out = (str(job.pk), job.attempt)
        if str(job.pk) in waiting:
            memory.unreported_since.pop(hand_out, None)
            continue
        if memory.unreported_long_enough(job, clock):
            memory.unreported_since.pop(hand_out, None)  # taken back: this count is over
            why = f"{job.worker_id} moved on without reporting it"
            _take_back(job, report, Job.Status.RUNNING, why)


def sweep(now: datetime | None = None, memory: SweepMemory | None = None) -> SweepReport:
    """One pass of every repair; Redis being down skips the pass (nothing can be checked) and
    restarts every worker's grace once it answers again."""
    memory = memory or SweepMemory()
    try:
        return take_back_lost_jobs(memory, now)
    except (redis.RedisError, OSError):
        logger.warning("sweep skipped: Redis unreachable")
        memory.liveness.redis_unreachable()
        return SweepReport()
