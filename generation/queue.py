"""Queue position and ETA: the scheduler's own order, timed by measured throughput.

Speed is learned from recently finished jobs: seconds per pixel-step (the unit `pricing` uses),
preferring the same checkpoint at the same resolution, then the same checkpoint at any resolution,
then any checkpoint. With no history at all a conservative default is used and every estimate
says so (`source == "default"`). Jobs already handed to a worker come first, behind what that
worker runs now; then the waiting jobs in the policy's start order (`FairScheduler.fair_order`:
fair share by recent usage and tier weight, aged jobs first) over the workers alive now (their
heartbeat keys). A snapshot costs a constant number of queries whatever the queue length.
"""

from __future__ import annotations

import heapq
import logging
import statistics
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import redis
from django.db.models import QuerySet
from django.utils import timezone

from generation.models import Job
from generation.pricing import work_units
from gpu_worker.protocol import HEARTBEAT_INDEX, HEARTBEAT_KEY

logger = logging.getLogger(__name__)

# No history: a mid-range GPU does a 512x512 SD1.5 step in ~0.1 s; err on the slow side.
DEFAULT_SECONDS_PER_PIXEL_STEP = 0.15 / (512 * 512)
DEFAULT_OVERHEAD_SECONDS = 2.0
HISTORY_WINDOW = timedelta(days=3)
HISTORY_JOBS = 20
HISTORY_ROWS = 500  # what one snapshot reads of the history
HISTORY_FIELDS = ("params", "mode", "timings", "started_at", "finished_at")
MAX_SIMULATED = 1000

Source = Literal["history", "default"]


@dataclass(frozen=True)
class Speed:
    seconds_per_pixel_step: float
    overhead_seconds: float
    source: Source

    def duration(self, params: dict[str, Any]) -> float:
        return self.overhead_seconds + self.seconds_per_pixel_step * work_units(params)


DEFAULT_SPEED = Speed(DEFAULT_SECONDS_PER_PIXEL_STEP, DEFAULT_OVERHEAD_SECONDS, "default")


@dataclass(frozen=True)
class QueueInfo:
    position: int  # 1 = next to start
    eta: float  # seconds until finished
    source: Source


def _samples(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    per_unit, overheads = [], []
    for row in rows:
        timings = row["timings"] or {}
        units = work_units({**row["params"], "mode": row["mode"]})
        elapsed = (row["finished_at"] - row["started_at"]).total_seconds()
        sampling = float(timings.get("sampling_s") or 0) or elapsed
        total = float(timings.get("total_s") or 0) or elapsed
        if units > 0 and sampling > 0:
            per_unit.append(sampling / units)
            overheads.append(max(0.0, total - sampling))
    return per_unit, overheads


def _recent_history() -> QuerySet[Job]:
    return Job.objects.filter(
        status=Job.Status.SUCCEEDED,
        started_at__isnull=False,
        finished_at__gte=timezone.now() - HISTORY_WINDOW,
    ).order_by("-finished_at")


def measured_speed(checkpoint_id: int, width: int, height: int) -> Speed:
    recent = _recent_history().values(*HISTORY_FIELDS)
    candidates = (
        recent.filter(checkpoint_id=checkpoint_id, params__width=width, params__height=height),
        recent.filter(checkpoint_id=checkpoint_id),
        recent,
    )
    for rows in candidates:
        per_unit, overheads = _samples(list(rows[:HISTORY_JOBS]))
        if per_unit:
            return Speed(statistics.median(per_unit), statistics.median(overheads), "history")
    return DEFAULT_SPEED


class _SpeedCache:
    """Speeds for many jobs from one read of the history (the last HISTORY_ROWS finished jobs
    within HISTORY_WINDOW), each picked the way `measured_speed` picks it."""

    def __init__(self) -> None:
        self.known: dict[tuple[int, int, int], Speed] = {}
        self._history: list[dict[str, Any]] | None = None

    def history(self) -> list[dict[str, Any]]:
        if self._history is None:
            self._history = list(
                _recent_history().values(*HISTORY_FIELDS, "checkpoint_id")[:HISTORY_ROWS]
            )
        return self._history

    def __call__(self, checkpoint_id: int, params: dict[str, Any]) -> Speed:
        key = (checkpoint_id, int(params["width"]), int(params["height"]))
        if key not in self.known:
            self.known[key] = self._pick(*key)
        return self.known[key]

    def _pick(self, checkpoint_id: int, width: int, height: int) -> Speed:
        rows = self.history()
        same_model = [r for r in rows if r["checkpoint_id"] == checkpoint_id]
        same_size = [
            r
            for r in same_model
            if r["params"].get("width") == width and r["params"].get("height") == height
        ]
        for candidates in (same_size, same_model, rows):
            per_unit, overheads = _samples(candidates[:HISTORY_JOBS])
            if per_unit:
                return Speed(statistics.median(per_unit), statistics.median(overheads), "history")
        return DEFAULT_SPEED


def alive_workers(client: redis.Redis | None = None) -> int:
    """GPU workers whose heartbeat key has not expired (at least 1, so ETAs stay finite)."""
    try:
        if client is None:
            from generation.broker import get_redis

            client = get_redis()
        ids = [i.decode() if isinstance(i, bytes) else i for i in client.smembers(HEARTBEAT_INDEX)]
        if not ids:
            return 1
        keys = [HEARTBEAT_KEY.format(worker_id=i) for i in ids]
        return max(1, int(client.exists(*keys)))
    except (redis.RedisError, OSError):
        return 1


def estimate_duration(job: Job, speeds: _SpeedCache | None = None) -> tuple[float, Source]:
    speed = (speeds or _SpeedCache())(job.checkpoint_id, job.params)
    return speed.duration({**job.params, "mode": job.mode}), speed.source


@dataclass
class QueueSnapshot:
    infos: dict[str, QueueInfo] = field(default_factory=dict)

    def get(self, job_id: Any) -> QueueInfo | None:
        return self.infos.get(str(job_id))


def queue_snapshot(workers: int | None = None) -> QueueSnapshot:
    """Position and ETA of every queued job (the oldest MAX_SIMULATED waiting), in the order the
    scheduler starts them, over the alive workers, each first finishing what it holds."""
    from generation.scheduling.inputs import in_flight_jobs, recent_usage, waiting_jobs
    from generation.scheduling.policy import FairScheduler

    speeds = _SpeedCache()
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
    count = max(workers or alive_workers(), 1)
    slots = sorted(free_at.values())[:count]
    slots += [0.0] * (count - len(slots))
    heapq.heapify(slots)
    waiting = waiting_jobs(limit=MAX_SIMULATED, speeds=speeds)
    usage = recent_usage(now, speeds, in_flight=held)
    order = FairScheduler().fair_order(waiting.jobs, now=now.timestamp(), usage=usage)
    for position, entry in enumerate(order, start=len(handed_out) + 1):
        finish = heapq.heappop(slots) + entry.cost
        heapq.heappush(slots, finish)
        snapshot.infos[entry.job_id] = QueueInfo(
            position, round(finish, 1), waiting.sources[entry.job_id]
        )
    return snapshot


def queue_info(job: Job) -> QueueInfo | None:
    """Position and ETA of one queued job (None once it left the queue)."""
    if job.status != Job.Status.QUEUED:
        return None
    return queue_snapshot().get(job.pk)


def running_eta(job: Job) -> float:
    duration, _source = estimate_duration(job)
    elapsed = (timezone.now() - job.started_at).total_seconds() if job.started_at else 0.0
    return round(max(0.0, duration - elapsed), 1)
