"""Queue position and ETA shown to users: the scheduler's own order, timed by measured speed.

Jobs already handed to a worker come first, behind what that worker runs now; then the waiting
jobs in the policy's start order (`FairScheduler.fair_order`: fair share by recent usage and tier
weight, aged jobs first) over the workers present now (`generation.fleet`), each job timed by
`scheduling.estimates`. A job whose models come from the store (members' and staff uploads)
also counts the time to download what the best-placed present worker lacks on its disk, at that
worker's reported fetch rate. A snapshot costs a constant number of queries whatever the queue
length, and simulates only the oldest MAX_SIMULATED waiting jobs (the scheduler's own window),
so it costs the same at a hundred or ten thousand queued jobs. A job behind that window is
placed by its age (`QueueSnapshot.beyond`: its rank in `generation.waiting_set`, O(log n); an
indexed count where the set cannot say), timed at the window's mean pace. Storing a snapshot
(the dispatcher, after each pass) also repairs that set from the window it read.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from django.db import connection
from django.db.models.expressions import RawSQL
from django.utils import timezone

from generation import waiting_set
from generation.broker import get_redis
from generation.fleet import present_heartbeats
from generation.model_delivery import recipes_of, stored_models_of
from generation.models import Job
from generation.scheduling.estimates import (
    KnownSpeeds,
    Source,
    Speed,
    SpeedCache,
    estimate_duration,
)
from generation.scheduling.inputs import (
    Waiting,
    downloads_of,
    in_flight_jobs,
    recent_usage,
    waiting_jobs,
    worker_disk,
)
from generation.scheduling.policy import (
    Download,
    FairScheduler,
    download_seconds,
    usage_matters,
)
from generation.stored_models import StoredModels
from gpu_worker.protocol import DEFAULT_DOWNLOAD_BYTES_PER_S, WorkerHeartbeat

logger = logging.getLogger(__name__)
SNAPSHOT_KEY = "atelier:queue:snapshot"
# The dispatcher stores a snapshot after every pass and at least every second while jobs wait;
# readers (job pages, the API, websocket connects) use it while it is this fresh.
SNAPSHOT_TTL_MS = 3000
MAX_SIMULATED = 100  # = dispatcher.SCHEDULING_WINDOW: nothing behind it starts before it


@dataclass(frozen=True)
class QueueInfo:
    position: int  # 1 = next to start
    eta: float  # seconds until finished
    source: Source
    fetch_s: float = 0.0  # of which: downloading its models to the worker that lacks them


@dataclass
class QueueSnapshot:
    infos: dict[str, QueueInfo] = field(default_factory=dict)
    # For a waiting job not simulated (behind the window, or newer than the snapshot): the
    # window's last place and finish, and the seconds each job ahead of it adds (mean cost
    # over the workers).
    window_end: tuple[int, float, float] | None = None
    # The speeds the snapshot was timed with: a job placed later (beyond) reuses them instead
    # of reading the history again (a submission's response places its new job).
    speeds: SpeedCache = field(default_factory=lambda: KnownSpeeds({}))
    # The waiting jobs simulated (id -> `waiting_set` score), whether they were all the waiting
    # jobs read (fewer than the window), and when: what `store_snapshot` repairs the set from.
    # Not stored: readers do not need them.
    window: dict[str, int] = field(default_factory=dict)
    window_full: bool = False
    read_at: datetime | None = None
    _placed: dict[str, QueueInfo | None] = field(default_factory=dict)

    def get(self, job_id: Any) -> QueueInfo | None:
        return self.infos.get(str(job_id))

    def place(self, job: Job) -> QueueInfo | None:
        """`get`, or for a job behind the window `beyond` (asked once per job)."""
        if (info := self.get(job.pk)) is not None:
            return info
        if str(job.pk) not in self._placed:
            self._placed[str(job.pk)] = self.beyond(job)
        return self._placed[str(job.pk)]

    def beyond(self, job: Job) -> QueueInfo | None:
        """A waiting job the snapshot did not simulate: placed by age behind the window."""
        if self.window_end is None or job.status != Job.Status.QUEUED or job.worker_id:
            return None
        last_position, last_finish, pace = self.window_end
        ahead = self._ahead(job)
        own, source = estimate_duration(job, self.speeds)
        finish = last_finish + pace * ahead + own
        return QueueInfo(last_position + ahead + 1, round(finish, 1), source)

    def _ahead(self, job: Job) -> int:
        """The waiting jobs ahead of `job` that the snapshot did not place: its rank in the
        waiting set, or where the set cannot say (Redis lost it, a path missed the job), the
        count in the database; the job then goes back into a complete set."""
        member, score = waiting_set.member_of(job.pk), waiting_set.score_of(job.created_at)
        try:
            ahead, complete = waiting_set.ahead_of(member, score, list(self.infos))
        except (redis.RedisError, OSError):
            ahead, complete = None, False
        if ahead is not None:
            return ahead
        ahead = self.counted_ahead(job)
        if complete:  # missing from a complete set: a path missed it
            with contextlib.suppress(redis.RedisError, OSError):
                get_redis().zadd(waiting_set.KEY, {member: score})
        return ahead

    def counted_ahead(self, job: Job) -> int:
        """`_ahead` by an index-only count in the database: linear in the jobs ahead."""
        return (
            Job.objects.waiting()
            .filter(created_at__lte=job.created_at)
            .exclude(pk=job.pk)
            .exclude(pk__in=ids_in_one_parameter(self.infos))
            .count()
        )


def ids_in_one_parameter(ids: Iterable[str]) -> RawSQL | list[str]:
    """Job ids for `pk__in` as one query parameter: the window's hundred ids as a hundred
    parameters cost more CPU (each converted, quoted and the query split anew) than the
    count they take part in."""
    if connection.vendor == "postgresql":
        return RawSQL("SELECT unnest(string_to_array(%s, ','))::uuid", [",".join(ids)])
    if connection.vendor == "sqlite":  # a UUID is kept as 32 hex digits there
        hex_ids = [uuid.UUID(job_id).hex for job_id in ids]
        return RawSQL("SELECT value FROM json_each(%s)", [json.dumps(hex_ids)])
    return list(ids)


Disks = dict[str, tuple[frozenset[str], float]]  # worker id -> (sha256s on disk, bytes/s)


def _present_disks() -> Disks:
    try:
        beats: dict[str, WorkerHeartbeat] = present_heartbeats(get_redis())
    except (redis.RedisError, OSError):
        beats = {}
    return disks_of(beats)


def disks_of(beats: dict[str, WorkerHeartbeat]) -> Disks:
    return {worker_id: worker_disk(beat) for worker_id, beat in beats.items()}


def fetch_seconds(downloads: tuple[Download, ...], disks: Disks, worker_id: str = "") -> float:
    """Download time of `downloads` on `worker_id`, or on the best present worker (any worker
    at the default rate when none is present)."""
    if not downloads:
        return 0.0
    if worker_id:
        places = [disks.get(worker_id, (frozenset(), DEFAULT_DOWNLOAD_BYTES_PER_S))]
    else:
        places = list(disks.values()) or [(frozenset(), DEFAULT_DOWNLOAD_BYTES_PER_S)]
    return min(download_seconds(downloads, disk, rate) for disk, rate in places)


@dataclass
class QueueReads:
    """What a snapshot is made from, as `queue_snapshot` reads it, or as a scheduling pass that
    has just read it leaves it (`dispatcher.queue_after_pass`: no second read)."""

    now: datetime
    disks: Disks  # the present workers'
    held: list[Job]  # `in_flight_jobs()`
    waiting: Waiting  # `waiting_jobs(limit=MAX_SIMULATED)`
    finished: dict[str, float] | None = None  # `finished_usage(now)` if read


def queue_snapshot(workers: int | None = None, speeds: SpeedCache | None = None) -> QueueSnapshot:
    """Position and ETA of every queued job (the oldest MAX_SIMULATED waiting), in the order the
    scheduler starts them, over the present workers, each first finishing what it holds.
    `speeds`: a history already read (the dispatcher's pass just before). Reads only what the
    queue needs: no stored models while nothing is handed out and unstarted (nor when the
    waiting jobs' read holds them), no usage unless several users have jobs waiting
    (`usage_matters`)."""
    speeds = speeds or SpeedCache()
    now, disks, held = timezone.now(), _present_disks(), in_flight_jobs()
    waiting = waiting_jobs(limit=MAX_SIMULATED, speeds=speeds)
    return snapshot_of(QueueReads(now, disks, held, waiting), speeds, workers)


def snapshot_of(reads: QueueReads, speeds: SpeedCache, workers: int | None = None) -> QueueSnapshot:
    """`queue_snapshot` from its reads (see there)."""
    now, disks, held, waiting = reads.now, reads.disks, reads.held, reads.waiting
    snapshot = QueueSnapshot(speeds=speeds)
    stored = _stored_for([job for job in held if job.status == Job.Status.QUEUED], waiting.stored)
    free_at: dict[str, float] = {}  # per worker: seconds until it has finished what it holds
    handed_out: list[tuple[float, float, Job, Source, float]] = []
    for job in held:
        duration, source = estimate_duration(job, speeds)
        if job.status == Job.Status.RUNNING:
            elapsed = (now - job.started_at).total_seconds() if job.started_at else 0.0
            free_at[job.worker_id] = free_at.get(job.worker_id, 0.0) + max(0.0, duration - elapsed)
        else:
            files = tuple(downloads_of(stored_models_of(job, stored)))
            fetch = fetch_seconds(files, disks, job.worker_id)
            begins = free_at.get(job.worker_id, 0.0)
            free_at[job.worker_id] = begins + fetch + duration
            handed_out.append((begins, begins + fetch + duration, job, source, fetch))
    for position, (_begins, finish, job, source, fetch) in enumerate(
        sorted(handed_out, key=lambda h: (h[0], h[2].created_at)), start=1
    ):
        snapshot.infos[str(job.pk)] = QueueInfo(position, round(finish, 1), source, round(fetch, 1))
    count = max(workers or len(disks), 1)
    slots = sorted(free_at.values())[:count]
    slots += [0.0] * (count - len(slots))
    heapq.heapify(slots)
    usage = (
        recent_usage(now, speeds, in_flight=held, finished=reads.finished)
        if usage_matters(waiting.jobs)
        else {}
    )
    order = FairScheduler().fair_order(waiting.jobs, now=now.timestamp(), usage=usage)
    position, finish = len(handed_out), 0.0
    for position, entry in enumerate(order, start=len(handed_out) + 1):
        fetch = fetch_seconds(entry.downloads, disks)
        finish = heapq.heappop(slots) + fetch + entry.cost
        heapq.heappush(slots, finish)
        snapshot.infos[entry.job_id] = QueueInfo(
            position, round(finish, 1), waiting.sources[entry.job_id], round(fetch, 1)
        )
    pace = sum(e.cost for e in order) / len(order) / count if order else 0.0
    snapshot.window_end = (position, finish, pace)
    snapshot.window = {
        job.job_id: waiting_set.score_of_timestamp(job.submitted_at) for job in waiting.jobs
    }
    snapshot.window_full = len(waiting.jobs) >= MAX_SIMULATED
    snapshot.read_at = now
    return snapshot


def _stored_for(unstarted: list[Job], known: StoredModels | None) -> StoredModels | None:
    """The stored models the handed-out, unstarted jobs may fetch: `known` (the waiting jobs')
    where it holds them, else one read for them (none: nothing unstarted)."""
    if not unstarted:
        return None
    owners = {job.owner_id for job in unstarted}
    recipes = [r for job in unstarted for r in recipes_of(job)]
    if known is not None and known.covers(owners, recipes):
        return known
    return StoredModels(owners, recipes)


def store_snapshot(snapshot: QueueSnapshot) -> None:
    """Publish a snapshot for readers in every process (the dispatcher does, after a pass), and
    in the same round trip check the waiting set against the window the snapshot read
    (`repair_waiting_set`)."""
    data: dict[str, Any] = {
        "infos": {k: [v.position, v.eta, v.source] for k, v in snapshot.infos.items()},
        "window_end": list(snapshot.window_end) if snapshot.window_end else None,
        "speeds": [
            [*key, speed.seconds_per_pixel_step, speed.overhead_seconds, speed.source]
            for key, speed in snapshot.speeds.known.items()
        ],
    }
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.set(SNAPSHOT_KEY, json.dumps(data), px=SNAPSHOT_TTL_MS)
        if snapshot.read_at is not None:
            waiting_set.read_for_repair(pipe, _repair_reach(snapshot))
        _stored, *repair = pipe.execute()
    except (redis.RedisError, OSError):  # readers then compute their own
        logger.warning("queue snapshot not stored", exc_info=True)
        return
    if repair:
        repair_waiting_set(snapshot, *repair)


# Where the window holds every waiting job, a member not in it is stale if it is older than
# this at the read: a job committed after the read may be younger (and already in the set).
COMMIT_GRACE = timedelta(seconds=30)


def _repair_reach(snapshot: QueueSnapshot) -> int:
    """The last score at which only the window's jobs may be in the waiting set."""
    last = max(snapshot.window.values(), default=0)
    if snapshot.window_full or snapshot.read_at is None:
        return last
    return max(last, waiting_set.score_of(snapshot.read_at - COMMIT_GRACE))


def repair_waiting_set(snapshot: QueueSnapshot, complete: Any, members: list) -> None:
    """Bring the waiting set in line with the window the snapshot read exactly: add its jobs a
    path missed, remove members ahead of its last job that are not in it (a cancel or claim
    whose removal was lost): bounded by the window. A set that is not complete is rebuilt."""
    plan = waiting_set.repair_plan(snapshot.window, complete, members)
    try:
        if plan is None and not snapshot.window_full:  # the window is every waiting job
            rebuild_waiting_set(snapshot.window)
        elif plan is None:
            rebuild_waiting_set()
        elif plan != ({}, []):
            missing, stale = plan
            logger.info("waiting set repaired: %s added, %s removed", len(missing), len(stale))
            pipe = get_redis().pipeline(transaction=False)
            waiting_set.add(pipe, missing)
            waiting_set.remove(pipe, stale)
            pipe.execute()
    except (redis.RedisError, OSError):
        logger.warning("waiting set not repaired: Redis unreachable")


def rebuild_waiting_set(every: dict[str, int] | None = None) -> None:
    """Fill the waiting set and mark it complete, after Redis lost it. `every`: all the waiting
    jobs, as a snapshot that saw fewer than its window just read them (one round trip); else
    read from the database (linear in the queue, but rare and off the request path).
    Adds, never clears, so submissions added meanwhile stay. From the database, it then drops
    what left the queue while it ran (a cancel or claim whose removal came before this add),
    read again, before marking it complete: a job that leaves after that second read removes
    itself after this. (From a snapshot, such a job is a stale member the next repair drops.)"""
    client = get_redis()
    if every is not None:
        pipe = client.pipeline(transaction=False)
        waiting_set.add(pipe, every)
        pipe.zadd(waiting_set.KEY, {waiting_set.COMPLETE: float("-inf")})
        pipe.execute()
        logger.info("waiting set rebuilt from the window: %s jobs", len(every))
        return
    first = {
        waiting_set.member_of(pk): waiting_set.score_of(at)
        for pk, at in Job.objects.waiting().values_list("pk", "created_at")
    }
    pipe = client.pipeline(transaction=False)
    for chunk in _chunks(list(first.items()), 5000):
        waiting_set.add(pipe, dict(chunk))
    pipe.execute()
    still = {waiting_set.member_of(pk) for pk in Job.objects.waiting().values_list("pk", flat=True)}
    pipe = client.pipeline(transaction=False)
    waiting_set.remove(pipe, [member for member in first if member not in still])
    pipe.zadd(waiting_set.KEY, {waiting_set.COMPLETE: float("-inf")})
    pipe.execute()
    logger.info("waiting set rebuilt: %s jobs", len(still))


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def current_snapshot() -> QueueSnapshot:
    """The dispatcher's latest snapshot if fresh (a Redis read), else one computed here."""
    return stored_snapshot() or queue_snapshot()


def stored_snapshot() -> QueueSnapshot | None:
    """The dispatcher's latest snapshot if fresh (a Redis read), else None."""
    try:
        raw = get_redis().get(SNAPSHOT_KEY)
    except (redis.RedisError, OSError):
        raw = None
    if not raw:
        return None
    data = json.loads(raw)
    speeds = {
        (int(c), int(w), int(h)): Speed(float(unit), float(overhead), source)
        for c, w, h, unit, overhead, source in data.get("speeds", [])
    }
    snapshot = QueueSnapshot(
        infos={k: QueueInfo(int(p), float(e), s) for k, (p, e, s) in data["infos"].items()},
        speeds=KnownSpeeds(speeds),
    )
    if data["window_end"]:
        position, finish, pace = data["window_end"]
        snapshot.window_end = (int(position), float(finish), float(pace))
    return snapshot


def queue_info(job: Job) -> QueueInfo | None:
    """Position and ETA of one queued job (None once it left the queue)."""
    if job.status != Job.Status.QUEUED:
        return None
    return current_snapshot().place(job)
