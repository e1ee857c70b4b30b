"""Measured speed per model and size, and the durations and ETAs made from it.

Speed is learned from recently finished jobs: seconds per pixel-step (the unit `pricing` uses),
preferring the same checkpoint at the same resolution, then the same checkpoint at any resolution,
then any checkpoint. With no history at all a conservative default is used and every estimate
says so (`source == "default"`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from django.db.models import QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from accounts.compiled_queries import CompiledQuery
from generation.models import Job
from generation.pricing import SomeParams, work_units

# No history: a mid-range GPU does a 512x512 SD1.5 step in ~0.1 s; err on the slow side.
DEFAULT_SECONDS_PER_PIXEL_STEP = 0.15 / (512 * 512)
DEFAULT_OVERHEAD_SECONDS = 2.0
HISTORY_WINDOW = timedelta(days=3)
HISTORY_JOBS = 20
HISTORY_ROWS = 500  # what one snapshot reads of the history
HISTORY_FIELDS = ("params", "mode", "timings", "started_at", "finished_at")
# A kept history (`KeptHistory`) re-reads the jobs finished this long before the newest it holds
# (a settlement's finish time is stamped before its transaction commits), and all of it this
# often (jobs deleted, or finished long after their stamp, meanwhile).
HISTORY_OVERLAP = timedelta(seconds=10)
HISTORY_FULL_READ_SECONDS = 60.0

Source = Literal["history", "default"]


@dataclass(frozen=True)
class Speed:
    seconds_per_pixel_step: float
    overhead_seconds: float
    source: Source

    def duration(self, params: SomeParams) -> float:
        return self.overhead_seconds + self.seconds_per_pixel_step * work_units(params)


DEFAULT_SPEED = Speed(DEFAULT_SECONDS_PER_PIXEL_STEP, DEFAULT_OVERHEAD_SECONDS, "default")


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


def _history_rows(since: Any = None) -> list[dict[str, Any]]:
    """The last HISTORY_ROWS finished jobs within HISTORY_WINDOW (finished from `since` on),
    newest first."""
    start = timezone.now() - HISTORY_WINDOW
    rows = _HISTORY.rows(since is not None, start=start, since=since)
    return [dict(zip(HISTORY_COLUMNS, row, strict=True)) for row in rows]


HISTORY_COLUMNS = (*HISTORY_FIELDS, "checkpoint_id", "pk")


def _history(since_given: bool, *, start: RawSQL, since: RawSQL) -> QuerySet[Job, Any]:
    recent = Job.objects.filter(
        status=Job.Status.SUCCEEDED, started_at__isnull=False, finished_at__gte=start
    )
    if since_given:
        recent = recent.filter(finished_at__gte=since)
    return recent.order_by("-finished_at").values_list(*HISTORY_COLUMNS)[:HISTORY_ROWS]


_HISTORY = CompiledQuery(_history, start="datetime", since="datetime")  # every wake-up


class KeptHistory:
    """The speed history for a long-lived reader (the dispatcher thread), kept between reads:
    after the first full read, a read takes only the jobs finished since the newest one held
    (less HISTORY_OVERLAP) and merges them in, so a pass does not decode HISTORY_ROWS rows of
    JSON each time (~14 ms of a pass at 500 rows); every HISTORY_FULL_READ_SECONDS it reads
    everything again. What it returns is what a full read would."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] | None = None
        self._full_read_at = 0.0
        self._read_at = 0.0

    def rows(self, reuse_within: float = 0.0) -> list[dict[str, Any]]:
        """`reuse_within`: seconds during which the rows held are returned unread (a caller
        that knows no job finished since)."""
        now = time.monotonic()
        if self._rows is None or now - self._full_read_at >= HISTORY_FULL_READ_SECONDS:
            self._rows, self._full_read_at = _history_rows(), now
            self._read_at = now
            return self._rows
        if now - self._read_at < reuse_within:
            return self._rows
        self._read_at = now
        if not self._rows:
            self._rows = _history_rows()  # nothing held: nothing to merge
            return self._rows
        since = self._rows[0]["finished_at"] - HISTORY_OVERLAP
        fresh = _history_rows(since)  # all the rows from `since` on: they replace ours
        oldest = timezone.now() - HISTORY_WINDOW
        older = [r for r in self._rows if oldest <= r["finished_at"] < since]
        self._rows = (fresh + older)[:HISTORY_ROWS]
        return self._rows


class SpeedCache:
    """Speeds for many jobs from one read of the history (the last HISTORY_ROWS finished jobs
    within HISTORY_WINDOW), each picked the way `measured_speed` picks it. `read`: where that
    history comes from when first needed (a `KeptHistory`'s rows; by default a full read)."""

    def __init__(self, read: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.known: dict[SpeedKey, Speed] = {}
        self._history: list[dict[str, Any]] | None = None
        self._read = read or _history_rows

    def history(self) -> list[dict[str, Any]]:
        if self._history is None:
            self._history = self._read()
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


SpeedKey = tuple[int, int, int]  # checkpoint id, width, height


class RecentSpeedKeys:
    """The kinds of job (checkpoint and size) a long-lived snapshot maker, the dispatcher
    thread, timed lately. Each snapshot it stores carries their speeds, also after a wake-up
    that found the queue empty: a reader placing a new job of a known kind (a submission's
    answer, `QueueSnapshot.place`) then reads no history of its own."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._keys: dict[SpeedKey, None] = {}  # oldest first

    def fill(self, speeds: SpeedCache) -> None:
        """Remember the kinds `speeds` timed, then time the remembered ones it lacks (from the
        history it reads anyway, or that the dispatcher keeps)."""
        for key in speeds.known:
            self._keys.pop(key, None)
            self._keys[key] = None
        for key in list(self._keys)[: -self.size]:
            del self._keys[key]
        for checkpoint_id, width, height in self._keys:
            speeds(checkpoint_id, {"width": width, "height": height})


class KnownSpeeds(SpeedCache):
    """The speeds a snapshot picked (carried with it to other processes); a size it did not
    meet is read the narrow way, as for one job (`measured_speed`)."""

    def __init__(self, known: dict[tuple[int, int, int], Speed]) -> None:
        super().__init__()
        self.known = dict(known)

    def _pick(self, checkpoint_id: int, width: int, height: int) -> Speed:
        return measured_speed(checkpoint_id, width, height)


def estimate_duration(job: Job, speeds: SpeedCache | None = None) -> tuple[float, Source]:
    """For many jobs pass one SpeedCache (one read of the history); for one job the narrow
    reads of `measured_speed` (at most HISTORY_JOBS rows, not HISTORY_ROWS: a submission
    pays this)."""
    if speeds is None:
        speed = measured_speed(
            job.checkpoint_id, int(job.params["width"]), int(job.params["height"])
        )
    else:
        speed = speeds(job.checkpoint_id, job.params)
    return speed.duration({**job.params, "mode": job.mode}), speed.source


def running_eta(job: Job, speeds: SpeedCache | None = None) -> float:
    """Seconds until a running job is expected to finish (`speeds`: ones already known, e.g.
    the queue snapshot's)."""
    duration, _source = estimate_duration(job, speeds)
    elapsed = (timezone.now() - job.started_at).total_seconds() if job.started_at else 0.0
    return round(max(0.0, duration - elapsed), 1)
