"""The scheduling pass: which alive GPU worker gets which waiting job, decided on the platform.

`schedule_pending()` reads the waiting jobs (queued, held by no worker), the alive workers (their
heartbeats: hot/warm models, inventory, disk cache and fetch rate, draining) with their free
slots counted from the database (running + assigned-not-started, at most `WORKER_SLOTS`), and
each user's recent GPU usage (when several users wait: `policy.usage_matters`); asks the policy
(`FairScheduler.plan`) for assignments; claims each job with a conditional update
(`Job.mark_assigned`: worker and next attempt, only if still waiting) and sends it to that
worker's own queue after commit, its message built from the rows the pass loaded (the job with
its checkpoint and recipe, the stored models of the waiting jobs): a fixed handful of queries
from wake-up to sent, whatever the queue (tests/generation/test_dispatcher_costs.py).

Passes are serialised across processes by a short Redis lock. A pass asked for while another runs
sets a "run again" flag instead, and the running pass goes round once more, so no trigger is lost.
The triggers live here too: after a submission commits (`dispatch_on_commit`), after a job is put
back by hand (`dispatch_job`), after each job event (`generation.worker_events`), and on the
platform worker's tick (`request_schedule`).

Off the request path: a trigger only pushes a wake-up onto a Redis list (`wake_dispatcher`,
`generation.scheduling.wakeups`), and the platform worker's dispatcher thread
(`serve_dispatcher`), blocked on that list, runs the pass, stores the queue snapshot readers use
(timed with the pass's own read of the speed history) and tells the new jobs' owners their place,
or every queued owner when the queue moved (`lifecycle.publish_queue_positions` asks it to);
while jobs wait, it also sweeps the waiting set behind the window (`waiting_scrub`). A web
request pays one Redis round trip for it (which also adds a new job to the waiting set,
`generation.waiting_set`), and the pass starts within a round trip too (no tick to wait for).
Where no dispatcher is alive (a test, a platform worker not started yet), the trigger runs the
pass itself, as before.

A pass considers the oldest SCHEDULING_WINDOW waiting jobs (the policy orders those fairly, by
usage and tier, aged jobs first), so it costs the same at a hundred or ten thousand queued jobs;
with at most a few unfinished jobs per member, the window spans dozens of members.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import redis
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from accounts.compiled_queries import CompiledQuery
from generation import waiting_set
from generation.broker import get_redis
from generation.events import send_to_user
from generation.fleet import ask_present_heartbeats, present_heartbeats, present_in
from generation.job_messages import send_request
from generation.lifecycle import publish_snapshot_positions, queued_event
from generation.models import Job
from generation.queue import (
    MAX_SIMULATED,
    QueueReads,
    QueueSnapshot,
    disks_of,
    queue_snapshot,
    snapshot_of,
    store_snapshot,
)
from generation.scheduling.claims import claims_for
from generation.scheduling.estimates import KeptHistory, RecentSpeedKeys, SpeedCache
from generation.scheduling.inputs import (
    checkpoint_key_of,
    finished_usage,
    in_flight_jobs,
    in_flight_with,
    recent_usage,
    waiting_jobs,
    worker_disk,
)
from generation.scheduling.policy import Assignment, FairScheduler, WorkerView, usage_matters
from generation.scheduling.waiting_scrub import WaitingScrub
from generation.scheduling.wakeups import (
    ALIVE_KEY,
    ALIVE_TTL_S,
    POSITIONS,
    WAKE_BACKLOG,
    WAKE_KEY,
    ring,
)
from gpu_worker.batch_key import MAX_BATCH_IMAGES, batch_key
from gpu_worker.protocol import WORKER_SLOTS, WorkerHeartbeat

logger = logging.getLogger(__name__)

LOCK_KEY = "atelier:scheduler:lock"
AGAIN_KEY = "atelier:scheduler:again"
LOCK_TTL_MS = 5_000  # a pass takes milliseconds; a crashed holder frees the lock this soon
MAX_ROUNDS = 5  # passes one caller runs for the "run again" requests it finds
SCHEDULING_WINDOW = 100  # the oldest waiting jobs a pass considers
# Only a finished job changes the speed history, and each finish wakes the dispatcher: a
# wake-up for new jobs alone reuses the rows read this recently (one query less per
# submission's hand-out), bounding what a missed ring could cost.
HISTORY_REUSE_SECONDS = 2.0

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Take the lock (and clear the "run again" flag: this pass serves it), or leave that flag.
_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('del', KEYS[2])
  return 1
end
redis.call('set', KEYS[2], '1', 'PX', ARGV[2])
return 0
"""
# After a round: asked for meanwhile, keep the lock for another (clearing the flag); else let
# go. Atomic, so a request is either seen here or finds the lock free and runs its own pass.
_AGAIN_OR_RELEASE = """
if redis.call('del', KEYS[2]) == 1 then return 1 end
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
return 0
"""


def worker_views(beats: dict[str, WorkerHeartbeat], held: Iterable[Job]) -> list[WorkerView]:
    """What the policy needs of each present worker (`generation.fleet`); slots are counted from
    the database (`held`: the jobs in flight, in hand-out order as `in_flight_jobs` reads them),
    so a job assigned a moment ago counts even before the worker's next heartbeat."""
    pending: dict[str, list[str]] = defaultdict(list)
    keys: dict[str, list[str | None]] = defaultdict(list)
    unstarted_owners: dict[str, list[str]] = defaultdict(list)
    present = [job for job in held if job.worker_id in beats]
    # running before queued, each in hand-out order
    for job in sorted(present, key=lambda job: job.status != Job.Status.RUNNING):
        pending[job.worker_id].append(checkpoint_key_of(job.checkpoint))
        keys[job.worker_id].append(batch_key({**job.params, "mode": job.mode}))
        if job.status == Job.Status.QUEUED:
            unstarted_owners[job.worker_id].append(str(job.owner_id))
    views = []
    for worker_id, beat in sorted(beats.items()):
        inventory = beat.get("inventory")
        disk, rate = worker_disk(beat)
        views.append(
            WorkerView(
                worker_id=worker_id,
                free_slots=0
                if beat.get("draining")
                else max(0, WORKER_SLOTS - len(pending[worker_id])),
                hot=tuple(beat.get("loaded_models") or ()),
                warm=tuple(beat.get("warm_models") or ()),
                controlnets=frozenset(beat.get("loaded_controlnets") or ()),
                hot_capacity=max(1, int(beat.get("hot_capacity") or 1)),
                inventory=frozenset((e["kind"], e["name"]) for e in inventory)
                if inventory is not None
                else None,
                pending=tuple(pending[worker_id]),
                waiting_owners=tuple(unstarted_owners[worker_id]),
                disk=disk,
                download_bytes_per_s=rate,
                batch_keys=tuple(keys[worker_id]),
                batches=takes_companions(beat),
            )
        )
    return views


def takes_companions(beat: WorkerHeartbeat) -> bool:
    """Whether a worker is handed batch companions: not while draining, nor when it runs
    every job alone (`--batch-max 0`): they would wait in its queue for their turn while
    another worker might be free."""
    return not beat.get("draining") and int(beat.get("batch_max_images", MAX_BATCH_IMAGES)) > 0


@dataclass
class PassReport:
    assigned: list[Assignment]
    rounds: int
    skipped: bool = False  # another process held the lock: it runs again for us
    # The queue as the last pass left it, from that pass's reads (None: it did not see it all)
    queue: QueueReads | None = None


@dataclass
class PassOutcome:
    assigned: list[Assignment]  # claimed: each leaves the waiting set with the round's release
    queue: QueueReads | None = None  # see `PassReport.queue`


# --- the pass ------------------------------------------------------------------------------------


def _one_pass(
    client: redis.Redis,
    scheduler: Any,
    speeds: SpeedCache,
    beats: dict[str, WorkerHeartbeat] | None = None,
) -> PassOutcome:
    """One round; `beats`: the fleet as read with the lock (else read here)."""
    if beats is None:
        beats = present_heartbeats(client)
    if not beats:
        return PassOutcome([])
    held = in_flight_jobs()  # the workers' slots, and the in-flight part of the usage
    views = worker_views(beats, held)
    if not any(v.free_slots or (v.batches and any(v.batch_keys)) for v in views):
        return PassOutcome([])
    now = timezone.now()
    waiting = waiting_jobs(limit=SCHEDULING_WINDOW, speeds=speeds)
    finished = finished_usage(now) if usage_matters(waiting.jobs) else None
    seen = QueueReads(now, disks_of(beats), held, waiting, finished)
    if not waiting.jobs:
        return PassOutcome([], seen)
    usage = recent_usage(now, speeds, held, finished) if finished is not None else {}
    plan = scheduler.plan(waiting.jobs, views, now=now.timestamp(), usage=usage)
    # With its checkpoint and recipe: the message is built from these rows, not read again.
    claim = claims_for(a.job_id for a in plan)
    free = {v.worker_id: v.free_slots for v in views}
    made, claimed = [], []
    for assignment in plan:
        companion = assignment.reason == "batch"  # joins a batch: takes no slot
        if not companion and free.get(assignment.worker_id, 0) <= 0:
            logger.warning("scheduler proposed an impossible assignment %s", assignment)
            continue
        job = claim(assignment.job_id, assignment.worker_id)
        if job is None:
            continue  # cancelled, taken or gone meanwhile
        if not companion:
            free[assignment.worker_id] -= 1
        made.append(assignment)
        claimed.append(job)
        logger.info(
            "job %s -> %s (%s, attempt %s)",
            job.pk,
            assignment.worker_id,
            assignment.reason,
            job.attempt,
        )
        transaction.on_commit(partial(send_request, job, waiting.stored))
    whole = len(claimed) == len(plan)  # else some job changed under the pass: read anew
    return PassOutcome(made, queue_after_pass(seen, claimed) if whole else None)


def queue_after_pass(seen: QueueReads, claimed: list[Job]) -> QueueReads | None:
    """The queue as a pass that read `seen` left it once it had handed out `claimed`, for the
    snapshot after it (`queue.snapshot_of`): the same reads `queue_snapshot` would make now,
    where the pass saw every waiting job (fewer than its window); else None."""
    if len(seen.waiting.jobs) >= min(SCHEDULING_WINDOW, MAX_SIMULATED):
        return None  # jobs behind the window step into it once these leave: read them
    held = in_flight_with(seen.held, claimed)
    if held is None:  # (also where a claimed job went back: its message could not be sent)
        return None
    waiting = seen.waiting.without({str(job.pk) for job in claimed})
    return replace(seen, held=held, waiting=waiting)


def schedule_pending(
    scheduler: Any = None,
    client: redis.Redis | None = None,
    *,
    retry: bool = True,
    speeds: SpeedCache | None = None,
) -> PassReport:
    """Run scheduling passes until nobody asked for another; raises if Redis is unreachable.
    `speeds`: the history read once for a whole wake-up (the snapshot after it reuses it)."""
    client = client or get_redis()
    scheduler = scheduler or FairScheduler()
    speeds = speeds or SpeedCache()
    token = uuid.uuid4().hex
    # The lock and the first round's fleet in one round trip (wasted only when the lock is held).
    pipe = client.pipeline(transaction=False)
    pipe.eval(_ACQUIRE, 2, LOCK_KEY, AGAIN_KEY, token, LOCK_TTL_MS)
    ask_present_heartbeats(pipe)
    acquired, fleet = pipe.execute()
    if not acquired:
        return PassReport(assigned=[], rounds=0, skipped=True)  # the holder goes round again
    beats: dict[str, WorkerHeartbeat] | None = present_in(fleet)
    assigned: list[Assignment] = []
    rounds = 0
    again = True  # a round is asked for (the last call's "run again" flag, already cleared)
    try:
        while again and rounds < MAX_ROUNDS:
            rounds += 1
            outcome = _one_pass(client, scheduler, speeds, beats)
            beats = None  # a later round was asked for since: the fleet read anew
            assigned += outcome.assigned
            pipe = client.pipeline(transaction=False)
            waiting_set.remove(pipe, [a.job_id for a in outcome.assigned])
            pipe.eval(_AGAIN_OR_RELEASE, 2, LOCK_KEY, AGAIN_KEY, token)
            again = bool(pipe.execute()[-1])
    finally:
        if again:  # out of rounds (or failed): still ours
            client.eval(_RELEASE, 1, LOCK_KEY, token)
    if retry and again and rounds == MAX_ROUNDS:
        # Out of rounds with a pass still asked for: take it now, not on the next tick.
        more = schedule_pending(scheduler, client, retry=False, speeds=speeds)
        return replace(more, assigned=assigned + more.assigned, rounds=rounds + more.rounds)
    return PassReport(assigned=assigned, rounds=rounds, queue=outcome.queue)


# --- the triggers ----------------------------------------------------------------------------


def request_schedule(speeds: SpeedCache | None = None) -> PassReport | None:
    """A trigger (after a submission commits, after a job event): never raises, because the
    platform worker's tick runs the pass again within a second anyway (None: it failed)."""
    try:
        return schedule_pending(speeds=speeds)
    except (redis.RedisError, OSError):
        logger.warning("scheduling pass skipped: Redis unreachable")
    except Exception:
        logger.exception("scheduling pass failed; the next tick retries")
    return None


def dispatch_job(job: Job) -> bool:
    """Put a queued job back to be scheduled: taken from the worker it was assigned to (if it
    has not started there) and offered to the next scheduling pass. False if it is running or
    finished."""
    job.refresh_from_db()
    if job.status != Job.Status.QUEUED:
        return False
    if job.worker_id and not job.return_to_queue():
        return False
    schedule_on_commit()
    return True


def schedule_on_commit() -> None:
    """Run a scheduling pass once the current transaction commits (at once outside one)."""
    transaction.on_commit(request_schedule)


def dispatch_on_commit(job: Job) -> None:
    """A new job: schedule once the transaction that created it commits, never before, or the
    worker would race the commit; then its owner hears its place in the queue. The same round
    trip adds it to the waiting set, unless it waits for another job (`after`, known only at
    the commit: a training chain sets it after submitting)."""
    transaction.on_commit(partial(_wake_for_new, job))


def _wake_for_new(job: Job) -> None:
    waiting = {}
    if job.after_id is None:
        waiting[waiting_set.member_of(job.pk)] = waiting_set.score_of(job.created_at)
    wake_dispatcher([str(job.pk)], waiting)


# --- the dispatcher thread (platform worker) -------------------------------------------------


def wake_dispatcher(
    job_ids: list[str] | None = None, waiting: dict[str, int] | None = None
) -> None:
    """Ask the dispatcher for a pass (and to tell `job_ids`' owners their place): one Redis
    round trip, which also adds `waiting` to the waiting set (`ring`). With no dispatcher alive,
    do it here. Never raises (the tick retries)."""
    try:
        alive = ring(job_ids or [""], waiting)
    except (redis.RedisError, OSError):
        logger.warning("scheduling wake-up not sent: Redis unreachable")
        return
    if not alive:
        request_schedule()
        publish_positions(job_ids or [])


def publish_positions(job_ids: list[str], snapshot: QueueSnapshot | None = None) -> None:
    """Tell the owners of these jobs (still queued) their place and ETA: one snapshot."""
    if not job_ids:
        return
    try:
        snapshot = snapshot or queue_snapshot()
        for job in _QUEUED.objects(ids=job_ids):
            info = snapshot.place(job)
            if info is not None:
                send_to_user(job.owner_id, queued_event(job, info.position, info.eta, info.source))
    except Exception:  # a lost position is repaired by the next one or the websocket snapshot
        logger.exception("queue positions not published")


def _queued(ids: RawSQL) -> QuerySet[Job]:
    return Job.objects.filter(pk__in=ids, status=Job.Status.QUEUED)


_QUEUED = CompiledQuery(_queued, ids="uuid_list")  # the jobs whose owners hear their place


def new_jobs_alone(values: set[str]) -> bool:
    """Whether a wake-up names only new jobs: no finish rang it (every finish rings with "",
    `worker_events.record_job_event`), nor a moved queue, nor the timer (no value)."""
    return bool(values) and values.isdisjoint({"", POSITIONS})


def answer_wake(
    values: set[str],
    history: KeptHistory | None = None,
    recent: RecentSpeedKeys | None = None,
) -> bool:
    """One turn of the dispatcher thread for the values rung (`wakeups`; none: its timer while
    jobs wait): a pass (not for positions alone), the snapshot readers use (made from the
    pass's own reads where it saw the whole queue, else read anew), then the owners told. One
    read of the speed history serves the pass and the snapshot (`history`: the thread's, kept
    between turns, and not read again for new jobs alone within HISTORY_REUSE_SECONDS;
    `recent`: the kinds of job whose speeds every stored snapshot carries). True while queued
    jobs remain (the snapshot is then kept fresh)."""
    reuse = HISTORY_REUSE_SECONDS if new_jobs_alone(values) else 0.0
    speeds = SpeedCache(partial(history.rows, reuse) if history is not None else None)
    report = request_schedule(speeds) if values != {POSITIONS} else None
    if report is not None and report.queue is not None:  # the pass saw the whole queue
        snapshot = snapshot_of(report.queue, speeds)
    else:
        snapshot = queue_snapshot(speeds=speeds)
    if recent is not None:
        recent.fill(speeds)  # (the snapshot's `speeds` object: stored with it)
    store_snapshot(snapshot)
    job_ids = sorted(values - {"", POSITIONS})
    publish_positions(job_ids, snapshot)
    if POSITIONS in values:  # the queue moved: everyone in it hears their new place
        publish_snapshot_positions(snapshot, skip=set(job_ids))
    return bool(snapshot.infos)


def serve_dispatcher(
    stop: Any, client: redis.Redis | None = None, *, wait_seconds: float = 1.0
) -> None:
    """The dispatcher thread: blocked on WAKE_KEY, runs a pass the moment it is woken (and
    every `wait_seconds` while jobs wait), until `stop` (a threading.Event) is set. Wake-ups
    that pile up during a pass make one more. Idle, it costs one round trip a second (SET,
    BLPOP, LPOP)."""
    from django.db import close_old_connections

    client = client or get_redis()
    waiting = True  # whether the last snapshot held queued jobs (then it is kept fresh)
    history = KeptHistory()  # the speed history, read anew only for what finished since
    recent = RecentSpeedKeys()
    sweep = WaitingScrub(last=time.monotonic())  # the waiting set behind the window
    try:
        while not stop.is_set():
            try:
                # Alive, then every value rung so far in the round trip that waits for the
                # first: the pop waits, then the rest is taken at once (Redis answers one
                # connection's commands in order; LPOP's count is atomic).
                pipe = client.pipeline(transaction=False)
                pipe.set(ALIVE_KEY, "1", ex=ALIVE_TTL_S)
                pipe.blpop([WAKE_KEY], timeout=wait_seconds)
                pipe.lpop(WAKE_KEY, WAKE_BACKLOG)
                _, popped, rest = pipe.execute()
                values = {v.decode() for v in [*(popped[1:] if popped else ()), *(rest or ())]}
            except (redis.RedisError, OSError):  # Redis away: the web falls back meanwhile
                logger.warning("dispatcher: Redis unreachable, retrying")
                stop.wait(wait_seconds)
                continue
            if popped is None and not waiting:
                continue  # idle: nothing to schedule, no snapshot to refresh
            close_old_connections()
            try:
                # Woken, or jobs wait (a worker may have come free or appeared since): a pass.
                waiting = answer_wake(values, history, recent)
                if waiting:
                    sweep.turn()  # one slice a second at most
            except Exception:  # the thread must outlive a bad pass; the next wake-up retries
                logger.exception("dispatcher pass failed")
            finally:
                close_old_connections()
    finally:
        with contextlib.suppress(redis.RedisError, OSError):
            client.delete(ALIVE_KEY)
