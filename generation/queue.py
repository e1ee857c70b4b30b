"""Queue position and ETA shown to users: the scheduler's own order, timed by measured speed.

Jobs already handed to a worker come first, behind what that worker runs now; then the waiting
jobs in the policy's start order (`FairScheduler.fair_order`: fair share by recent usage and tier
weight, aged jobs first) over the workers present now (`generation.fleet`), each job timed by
`scheduling.estimates`. A job whose models come from the store (members' and staff uploads)
also counts the time to download what the best-placed present worker lacks on its disk, at that
worker's reported fetch rate. A snapshot costs a constant number of queries whatever the queue
length.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import redis
from django.utils import timezone

from generation.broker import get_redis
from generation.fleet import present_heartbeats
from generation.model_delivery import recipes_of, stored_models_of
from generation.models import Job
from generation.scheduling.estimates import Source, SpeedCache, estimate_duration
from generation.scheduling.inputs import (
    downloads_of,
    in_flight_jobs,
    recent_usage,
    waiting_jobs,
    worker_disk,
)
from generation.scheduling.policy import Download, FairScheduler, download_seconds
from generation.stored_models import StoredModels
from gpu_worker.protocol import DEFAULT_DOWNLOAD_BYTES_PER_S, WorkerHeartbeat

MAX_SIMULATED = 1000


@dataclass(frozen=True)
class QueueInfo:
    position: int  # 1 = next to start
    eta: float  # seconds until finished
    source: Source
    fetch_s: float = 0.0  # of which: downloading its models to the worker that lacks them


@dataclass
class QueueSnapshot:
    infos: dict[str, QueueInfo] = field(default_factory=dict)

    def get(self, job_id: Any) -> QueueInfo | None:
        return self.infos.get(str(job_id))


Disks = dict[str, tuple[frozenset[str], float]]  # worker id -> (sha256s on disk, bytes/s)


def _present_disks() -> Disks:
    try:
        beats: dict[str, WorkerHeartbeat] = present_heartbeats(get_redis())
    except (redis.RedisError, OSError):
        beats = {}
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


def queue_snapshot(workers: int | None = None) -> QueueSnapshot:
    """Position and ETA of every queued job (the oldest MAX_SIMULATED waiting), in the order the
    scheduler starts them, over the present workers, each first finishing what it holds."""
    speeds = SpeedCache()
    now = timezone.now()
    snapshot = QueueSnapshot()
    disks = _present_disks()
    held = in_flight_jobs()
    unstarted = [job for job in held if job.status == Job.Status.QUEUED]
    stored = StoredModels(
        {job.owner_id for job in unstarted}, [r for job in unstarted for r in recipes_of(job)]
    )
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
    waiting = waiting_jobs(limit=MAX_SIMULATED, speeds=speeds)
    usage = recent_usage(now, speeds, in_flight=held)
    order = FairScheduler().fair_order(waiting.jobs, now=now.timestamp(), usage=usage)
    for position, entry in enumerate(order, start=len(handed_out) + 1):
        fetch = fetch_seconds(entry.downloads, disks)
        finish = heapq.heappop(slots) + fetch + entry.cost
        heapq.heappush(slots, finish)
        snapshot.infos[entry.job_id] = QueueInfo(
            position, round(finish, 1), waiting.sources[entry.job_id], round(fetch, 1)
        )
    return snapshot


def queue_info(job: Job) -> QueueInfo | None:
    """Position and ETA of one queued job (None once it left the queue)."""
    if job.status != Job.Status.QUEUED:
        return None
    return queue_snapshot().get(job.pk)
