"""Queue position and ETA shown to users: the scheduler's own order, timed by measured speed.

Jobs already handed to a worker come first, behind what that worker runs now; then the waiting
jobs in the policy's start order (`FairScheduler.fair_order`: fair share by recent usage and tier
weight, aged jobs first) over the workers present now (`generation.fleet`), each job timed by
`scheduling.estimates`. A snapshot costs a constant number of queries whatever the queue length,
and simulates only the oldest MAX_SIMULATED waiting jobs (the scheduler's own window), so it
costs the same at a hundred or ten thousand queued jobs. A job behind that window is placed by
its age (`QueueSnapshot.beyond`: one indexed count), timed at the window's mean pace.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from generation.broker import get_redis
from generation.fleet import present_count
from generation.models import Job
from generation.scheduling.estimates import Source, SpeedCache, estimate_duration
from generation.scheduling.inputs import in_flight_jobs, recent_usage, waiting_jobs
from generation.scheduling.policy import FairScheduler

MAX_SIMULATED = 100  # = dispatcher.SCHEDULING_WINDOW: nothing behind it starts before it


@dataclass(frozen=True)
class QueueInfo:
    position: int  # 1 = next to start
    eta: float  # seconds until finished
    source: Source


@dataclass
class QueueSnapshot:
    infos: dict[str, QueueInfo] = field(default_factory=dict)
    # Behind the simulated window: the window's last place and finish, and the seconds each
    # further job adds (mean cost over the workers); None when the window held every job.
    window_end: tuple[int, float, float] | None = None
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
        """A waiting job behind the window: placed by age among the waiting jobs behind it."""
        if self.window_end is None or job.status != Job.Status.QUEUED or job.worker_id:
            return None
        last_position, last_finish, pace = self.window_end
        ahead = (
            Job.objects.waiting()
            .filter(created_at__lte=job.created_at)
            .exclude(pk=job.pk)
            .exclude(pk__in=list(self.infos))
            .count()
        )
        position = last_position + ahead + 1
        return QueueInfo(position, round(last_finish + pace * (ahead + 1), 1), "default")


def queue_snapshot(workers: int | None = None) -> QueueSnapshot:
    """Position and ETA of every queued job (the oldest MAX_SIMULATED waiting), in the order the
    scheduler starts them, over the present workers, each first finishing what it holds."""
    speeds = SpeedCache()
    now = timezone.now()
    snapshot = QueueSnapshot()
    held = in_flight_jobs()
    free_at: dict[str, float] = {}  # per worker: seconds until it has finished what it holds
    handed_out: list[tuple[float, float, Job, Source]] = []
    for job in held:
        duration, source = estimate_duration(job, speeds)
        if job.status == Job.Status.RUNNING:
            elapsed = (now - job.started_at).total_seconds() if job.started_at else 0.0
            free_at[job.worker_id] = free_at.get(job.worker_id, 0.0) + max(0.0, duration - elapsed)
        else:
            begins = free_at.get(job.worker_id, 0.0)
            free_at[job.worker_id] = begins + duration
            handed_out.append((begins, begins + duration, job, source))
    for position, (_begins, finish, job, source) in enumerate(
        sorted(handed_out, key=lambda h: (h[0], h[2].created_at)), start=1
    ):
        snapshot.infos[str(job.pk)] = QueueInfo(position, round(finish, 1), source)
    count = max(workers or present_count(get_redis()), 1)
    slots = sorted(free_at.values())[:count]
    slots += [0.0] * (count - len(slots))
    heapq.heapify(slots)
    waiting = waiting_jobs(limit=MAX_SIMULATED, speeds=speeds)
    usage = recent_usage(now, speeds, in_flight=held)
    order = FairScheduler().fair_order(waiting.jobs, now=now.timestamp(), usage=usage)
    position, finish = len(handed_out), 0.0
    for position, entry in enumerate(order, start=len(handed_out) + 1):
        finish = heapq.heappop(slots) + entry.cost
        heapq.heappush(slots, finish)
        snapshot.infos[entry.job_id] = QueueInfo(
            position, round(finish, 1), waiting.sources[entry.job_id]
        )
    if len(waiting.jobs) >= MAX_SIMULATED:  # there may be more behind it
        pace = sum(e.cost for e in order) / len(order) / count
        snapshot.window_end = (position, finish, pace)
    return snapshot


def queue_info(job: Job) -> QueueInfo | None:
    """Position and ETA of one queued job (None once it left the queue)."""
    if job.status != Job.Status.QUEUED:
        return None
    return queue_snapshot().place(job)
