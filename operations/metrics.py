"""The numbers on the operations page, computed from the database (the record of truth)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count
from django.db.models.functions import TruncHour
from django.utils import timezone

from generation.models import Job


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
        if started:
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


def jobs_per_hour(hours: int = 24, now: datetime | None = None) -> list[tuple[datetime, int]]:
    """Jobs submitted per hour over the last `hours`, oldest first, empty hours included."""
    now = now or timezone.now()
    end = now.replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=hours - 1)
    counts = dict(
        Job.objects.filter(created_at__gte=start)
        .annotate(hour=TruncHour("created_at"))
        .values("hour")
        .annotate(n=Count("id"))
        .values_list("hour", "n")
    )
    return [
        (start + timedelta(hours=i), counts.get(start + timedelta(hours=i), 0))
        for i in range(hours)
    ]


def overview(now: datetime | None = None) -> dict[str, object]:
    now = now or timezone.now()
    return {
        "queue_by_model": queue_depth_by_model(),
        "queued_total": Job.objects.queued().count(),
        "running_total": Job.objects.running().count(),
        "windows": [
            window_stats("last hour", now - timedelta(hours=1)),
            window_stats("last day", now - timedelta(days=1)),
        ],
        "jobs_per_hour": jobs_per_hour(24, now),
    }
