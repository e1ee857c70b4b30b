"""Periodic repairs, run by the platform worker every few seconds.

- Re-dispatch queued jobs that no worker holds: the broker message of their latest attempt is gone
  (Redis restarted or was flushed) or was never sent (Redis was down at submission). A job that
  still has not started after `max_attempts` dispatches is failed and its hold released.
- Fail (and release) running jobs whose worker vanished: no heartbeat key, or a heartbeat that
  shows the worker busy with another job, past a deadline derived from the job's size.
- `sync_catalogue`: import what workers (heartbeat inventories) and the local models folder hold
  into CatalogEntry; entries nobody has any more become unavailable.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone

from generation import lifecycle
from generation.broker import get_broker, get_redis
from generation.dispatch import MESSAGE_ID_KEY, dispatch_job
from generation.limits import limits_for
from generation.models import CatalogEntry, Job
from generation.queue import estimate_duration
from gpu_worker.protocol import (
    GPU_QUEUE,
    HEARTBEAT_INDEX,
    HEARTBEAT_KEY,
    HEARTBEAT_TTL_SECONDS,
    PLATFORM_QUEUE,
    ModelInventoryEntry,
    WorkerHeartbeat,
)

logger = logging.getLogger(__name__)

# A dispatch younger than this is left alone: its enqueue may still be in flight.
DISPATCH_GRACE = timedelta(seconds=10)
# A job never dispatched (Redis was down at submission): its on_commit dispatch had its chance.
UNDISPATCHED_GRACE = timedelta(seconds=5)
# A worker whose heartbeat key is missing this long past its job's expected end is gone.
VANISHED_GRACE_SECONDS = 2 * HEARTBEAT_TTL_SECONDS
DEMO_DEFAULT_PARAMS = {
    "width": 128,
    "height": 128,
    "steps": 8,
    "sampler": "Euler a",
    "cfg_scale": 7.0,
}


@dataclass
class SweepReport:
    redispatched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


def redispatch_lost_jobs(now: Any = None) -> SweepReport:
    now = now or timezone.now()
    report = SweepReport()
    client = get_redis()
    stale = list(
        Job.objects.queued()
        .filter(dispatched_at__lt=now - DISPATCH_GRACE)
        .select_related("owner", "checkpoint")
    )
    never = list(
        Job.objects.queued()
        .filter(dispatched_at__isnull=True, created_at__lt=now - UNDISPATCHED_GRACE)
        .select_related("owner", "checkpoint")
    )
    if not stale and not never:
        return report
    lost = list(never)
    if stale:
        message_ids = client.mget([MESSAGE_ID_KEY.format(job_id=job.pk) for job in stale])
        pipe = client.pipeline()
        for message_id in message_ids:
            pipe.hexists(_messages_key(GPU_QUEUE), message_id or "-")
        present = pipe.execute()
        missing = [job for job, here in zip(stale, present, strict=True) if not here]
        if missing:
            # A retry waits in the delay queue under a new id; events may wait unprocessed.
            held = _job_ids_in(client, _messages_key(GPU_QUEUE, ".DQ")) | _job_ids_in(
                client, _messages_key(PLATFORM_QUEUE)
            )
            lost += [job for job in missing if str(job.pk) not in held]
    for job in sorted(lost, key=lambda j: j.created_at):
        if job.attempt >= limits_for(job.owner).max_attempts:
            if lifecycle.fail_job(
                job,
                f"no worker could start this job after {job.attempt} attempts",
                attempt=job.attempt,
            ):
                report.failed.append(str(job.pk))
            continue
        if dispatch_job(job):
            logger.info("re-dispatched job %s as attempt %s", job.pk, job.attempt)
            report.redispatched.append(str(job.pk))
    return report


def abandon_deadline(job: Job) -> float:
    """Seconds after its start past which a running job whose worker vanished is failed."""
    expected, _source = estimate_duration(job)
    return VANISHED_GRACE_SECONDS + 2 * expected


def _heartbeats(client: redis.Redis, worker_ids: set[str]) -> dict[str, WorkerHeartbeat | None]:
    ids = sorted(worker_ids)
    values = client.mget([HEARTBEAT_KEY.format(worker_id=i) for i in ids]) if ids else []
    beats: dict[str, WorkerHeartbeat | None] = {}
    for worker_id, raw in zip(ids, values, strict=True):
        try:
            beats[worker_id] = json.loads(raw) if raw else None
        except ValueError:
            beats[worker_id] = None
    return beats


def fail_abandoned_jobs(now: Any = None) -> SweepReport:
    now = now or timezone.now()
    report = SweepReport()
    running = list(Job.objects.running().select_related("owner"))
    if not running:
        return report
    beats = _heartbeats(get_redis(), {job.worker_id for job in running if job.worker_id})
    for job in running:
        beat = beats.get(job.worker_id)
        if beat is not None and beat.get("current_job") == str(job.pk):
            continue  # alive and on it, however long it takes
        elapsed = (now - (job.started_at or job.created_at)).total_seconds()
        if elapsed <= abandon_deadline(job):
            continue
        why = (
            "the worker running this job stopped responding"
            if beat is None
            else ("the worker running this job moved on without reporting it")
        )
        if lifecycle.fail_job(job, why, attempt=job.attempt):
            logger.warning("job %s failed: %s (%s)", job.pk, why, job.worker_id)
            report.failed.append(str(job.pk))
    return report


def sweep(now: Any = None) -> SweepReport:
    """One pass of every repair; Redis being down skips the pass (nothing can be checked)."""
    try:
        first = redispatch_lost_jobs(now)
        second = fail_abandoned_jobs(now)
    except (redis.RedisError, OSError):
        logger.warning("sweep skipped: Redis unreachable", exc_info=True)
        return SweepReport()
    return SweepReport(first.redispatched, first.failed + second.failed)


# --- the catalogue ------------------------------------------------------------------------------


def worker_inventories(client: redis.Redis | None = None) -> list[ModelInventoryEntry]:
    client = client or get_redis()
    ids = {_decode(i) for i in client.smembers(HEARTBEAT_INDEX)}
    entries: list[ModelInventoryEntry] = []
    for worker_id, beat in _heartbeats(client, ids).items():
        if beat is None:
            client.srem(HEARTBEAT_INDEX, worker_id)  # expired: prune the index
            continue
        entries.extend(beat.get("inventory") or [])
    return entries


def local_inventory(models_dir: Path | None = None) -> list[ModelInventoryEntry]:
    from gpu_worker.catalogue import scan_models

    folder = Path(models_dir or settings.MODELS_DIR)
    if not folder.is_dir():
        return []
    hash_cache = Path(settings.VAR_DIR) / "model-hashes.json"
    return scan_models(folder, hash_cache=hash_cache).entries()


def _demo_names() -> set[str]:
    from gpu_worker.demo_model import DEMO_CHECKPOINTS, DEMO_LORA, DEMO_VAE

    return {d.name for d in (*DEMO_CHECKPOINTS, DEMO_LORA, DEMO_VAE)}


def sync_catalogue(models_dir: Path | None = None, include_workers: bool = True) -> dict[str, int]:
    """Upsert what workers and the local folder hold; mark the rest unavailable. New entries are
    enabled by default; demo files are flagged and get small default parameters."""
    try:
        inventory = (worker_inventories() if include_workers else []) + local_inventory(models_dir)
    except (redis.RedisError, OSError):
        logger.warning("catalogue sync skipped: Redis unreachable", exc_info=True)
        return {"created": 0, "updated": 0, "unavailable": 0}
    seen: dict[tuple[str, str], ModelInventoryEntry] = {}
    for entry in inventory:
        seen.setdefault((entry["kind"], entry["name"]), entry)
    demo = _demo_names()
    created = updated = 0
    existing = {(e.kind, e.name): e for e in CatalogEntry.objects.all()}
    for (kind, name), item in seen.items():
        fields = {
            "family": item.get("family") or "unknown",
            "filename": item.get("filename", ""),
            "size_bytes": int(item.get("size_bytes") or 0),
            "sha256": item.get("sha256", ""),
            "short_hash": item.get("short_hash", ""),
            "available": True,
        }
        row = existing.get((kind, name))
        if row is None:
            is_demo = name in demo
            CatalogEntry.objects.create(
                kind=kind,
                name=name,
                is_demo=is_demo,
                default_params=dict(DEMO_DEFAULT_PARAMS)
                if is_demo and kind == "checkpoint"
                else {},
                **fields,
            )
            created += 1
        elif any(getattr(row, k) != v for k, v in fields.items()):
            CatalogEntry.objects.filter(pk=row.pk).update(**fields, updated_at=timezone.now())
            updated += 1
    gone = [row.pk for key, row in existing.items() if key not in seen and row.available]
    CatalogEntry.objects.filter(pk__in=gone).update(available=False, updated_at=timezone.now())
    return {"created": created, "updated": updated, "unavailable": len(gone)}
