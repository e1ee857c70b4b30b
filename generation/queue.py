"""Queue position and ETA, from measured throughput.

Speed is learned from recently finished jobs: seconds per pixel-step (the unit `pricing` uses),
preferring the same checkpoint at the same resolution, then the same checkpoint at any resolution,
then any checkpoint. With no history at all a conservative default is used and every estimate
says so (`source == "default"`). The queue is simulated first in, first out over the workers that
are alive now (their heartbeat keys), which is what `dispatch` does.
"""

from __future__ import annotations

import heapq
import logging
import statistics
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import redis
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


def measured_speed(checkpoint_id: int, width: int, height: int) -> Speed:
    recent = (
        Job.objects.filter(
            status=Job.Status.SUCCEEDED,
            started_at__isnull=False,
            finished_at__gte=timezone.now() - HISTORY_WINDOW,
        )
        .order_by("-finished_at")
        .values("params", "mode", "timings", "started_at", "finished_at")
    )
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
    def __init__(self) -> None:
        self.known: dict[tuple[int, int, int], Speed] = {}

    def __call__(self, checkpoint_id: int, params: dict[str, Any]) -> Speed:
        key = (checkpoint_id, int(params["width"]), int(params["height"]))
        if key not in self.known:
            self.known[key] = measured_speed(*key)
        return self.known[key]


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
    """Position and ETA of every queued job (the first MAX_SIMULATED), simulating FIFO dispatch
    over the alive workers, each first finishing what it runs now."""
    speeds = _SpeedCache()
    now = timezone.now()
    slots: list[float] = []
    for job in Job.objects.running().only("params", "mode", "checkpoint_id", "started_at"):
        duration, _source = estimate_duration(job, speeds)
        elapsed = (now - job.started_at).total_seconds() if job.started_at else 0.0
        slots.append(max(0.0, duration - elapsed))
    count = max(workers or alive_workers(), 1)
    slots = sorted(slots)[:count] + [0.0] * max(0, count - len(slots))
    heapq.heapify(slots)
    snapshot = QueueSnapshot()
    queued = (
        Job.objects.queued()
        .order_by("created_at", "pk")
        .only("params", "mode", "checkpoint_id", "created_at")[:MAX_SIMULATED]
    )
    for position, job in enumerate(queued, start=1):
        duration, source = estimate_duration(job, speeds)
        finish = heapq.heappop(slots) + duration
        heapq.heappush(slots, finish)
        snapshot.infos[str(job.pk)] = QueueInfo(position, round(finish, 1), source)
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
