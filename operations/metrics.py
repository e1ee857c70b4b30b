"""The numbers on the operations page, computed from the database (the record of truth)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict

from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncHour
from django.utils import timezone

from accounts.models import MembershipTier
from generation.models import Job
from operations.credit_metrics import CreditDay, credits_per_day

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class DurationStats:
    count: int
    median_s: float | None
    p95_s: float | None


@dataclass(frozen=True)
class WindowStats:
    label: str
    finished: int
    failed: int
    failure_rate: float | None  # failed / finished (cancelled jobs excluded: users chose them)
    wait: DurationStats  # created -> started
    run: DurationStats  # started -> finished


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile: the value below which `fraction` of samples fall."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(fraction * len(ordered))  # 1-based
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def duration_stats(values: list[float]) -> DurationStats:
    if not values:
        return DurationStats(0, None, None)
    return DurationStats(len(values), statistics.median(values), percentile(values, 0.95))


def window_stats(label: str, since: datetime) -> WindowStats:
    rows = Job.objects.filter(
        finished_at__gte=since, status__in=(Job.Status.SUCCEEDED, Job.Status.FAILED)
    ).values_list("status", "created_at", "started_at", "finished_at")
    waits: list[float] = []
    runs: list[float] = []
    failed = 0
    finished = 0
    for status, created, started, finished_at in rows:
        finished += 1
        failed += status == Job.Status.FAILED
        if started and finished_at:  # finished_at is never null here (the filter)
            waits.append((started - created).total_seconds())
            runs.append((finished_at - started).total_seconds())
    return WindowStats(
        label=label,
        finished=finished,
        failed=failed,
        failure_rate=(failed / finished) if finished else None,
        wait=duration_stats(waits),
        run=duration_stats(runs),
    )


def queue_depth_by_model() -> list[tuple[str, int]]:
    rows = (
        Job.objects.queued()
        .values("checkpoint__name")
        .annotate(n=Count("id"))
        .order_by("-n", "checkpoint__name")
    )
    return [(row["checkpoint__name"], row["n"]) for row in rows]


def queue_depth_by_tier() -> list[tuple[str, int]]:
    """Queued jobs by their owner's tier (a user with no account yet is on the default)."""
    rows = (
        Job.objects.queued()
        .values("owner__credit_account__tier__name")
        .annotate(n=Count("id"))
        .values_list("owner__credit_account__tier__name", "n")
    )
    depth: dict[str, int] = {}
    default_name = None
    for name, n in rows:
        if name is None:
            default_name = default_name or MembershipTier.objects.default().name
            name = default_name
        depth[name] = depth.get(name, 0) + n
    return sorted(depth.items(), key=lambda item: (-item[1], item[0]))


def _per_hour(
    rows: QuerySet, field: str, hours: int, now: datetime | None
) -> list[tuple[datetime, int]]:
    """Rows per hour of `field` over the last `hours`, oldest first, empty hours included."""
    now = now or timezone.now()
    end = now.replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=hours - 1)
    counts = dict(
        rows.filter(**{f"{field}__gte": start})
        .annotate(hour=TruncHour(field))
        .values("hour")
        .annotate(n=Count("id"))
        .values_list("hour", "n")
    )
    return [
        (start + timedelta(hours=i), counts.get(start + timedelta(hours=i), 0))
        for i in range(hours)
    ]


def jobs_per_hour(hours: int = 24, now: datetime | None = None) -> list[tuple[datetime, int]]:
    """Jobs submitted per hour over the last `hours`, oldest first, empty hours included."""
    return _per_hour(Job.objects.all(), "created_at", hours, now)


def model_loads_per_hour(
    hours: int = 24, now: datetime | None = None
) -> list[tuple[datetime, int]]:
    """Jobs whose worker had to load the model (a cache miss: `timings.model_loaded`), by the
    hour they finished. Many loads mean workers thrash their caches between models."""
    return _per_hour(Job.objects.filter(timings__model_loaded=True), "finished_at", hours, now)


@dataclass(frozen=True)
class WorkerUtilisation:
    worker_id: str
    busy_hour_s: float
    busy_day_s: float

    @property
    def hour_fraction(self) -> float:
        return min(self.busy_hour_s / HOUR.total_seconds(), 1.0)

    @property
    def day_fraction(self) -> float:
        return min(self.busy_day_s / DAY.total_seconds(), 1.0)


def _overlap_s(start: datetime, end: datetime, since: datetime, until: datetime) -> float:
    return max(0.0, (min(end, until) - max(start, since)).total_seconds())


def worker_utilisation(now: datetime | None = None) -> list[WorkerUtilisation]:
    """Busy seconds per worker (started -> finished, or now while running) inside the last
    hour and day, from the job rows: the database, not the heartbeats, which expire."""
    now = now or timezone.now()
    day_ago = now - DAY
    rows = (
        Job.objects.filter(started_at__isnull=False)
        .exclude(worker_id="")
        .filter(Q(finished_at__gt=day_ago) | Q(finished_at__isnull=True, status=Job.Status.RUNNING))
        .values_list("worker_id", "started_at", "finished_at")
    )
    busy: dict[str, list[float]] = {}
    for worker_id, started, finished in rows:
        if started is None:  # excluded by the query; says so to the type checker
            continue
        end = finished or now
        totals = busy.setdefault(worker_id, [0.0, 0.0])
        totals[0] += _overlap_s(started, end, now - HOUR, now)
        totals[1] += _overlap_s(started, end, day_ago, now)
    return [WorkerUtilisation(w, hour, day) for w, (hour, day) in sorted(busy.items())]


class Overview(TypedDict):
    queue_by_model: list[tuple[str, int]]
    queue_by_tier: list[tuple[str, int]]
    queued_total: int
    running_total: int
    windows: list[WindowStats]
    jobs_per_hour: list[tuple[datetime, int]]
    model_loads_per_hour: list[tuple[datetime, int]]
    workers: list[WorkerUtilisation]
    credits_per_day: list[CreditDay]


def overview(now: datetime | None = None) -> Overview:
    now = now or timezone.now()
    return {
        "queue_by_model": queue_depth_by_model(),
        "queue_by_tier": queue_depth_by_tier(),
        "queued_total": Job.objects.queued().count(),
        "running_total": Job.objects.running().count(),
        "windows": [
            window_stats("last hour", now - timedelta(hours=1)),
            window_stats("last day", now - timedelta(days=1)),
        ],
        "jobs_per_hour": jobs_per_hour(24, now),
        "model_loads_per_hour": model_loads_per_hour(24, now),
        "workers": worker_utilisation(now),
        "credits_per_day": credits_per_day(14, now),
    }
