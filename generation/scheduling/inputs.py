"""The policy's inputs from the database: waiting jobs as `WaitingJob`s, each user's recent GPU
usage, each owner's tier weight. A constant number of queries whatever the queue length (one
per table and purpose), shared by the dispatcher's pass and the queue positions/ETAs, so both
see the same order."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

from django.db.models import Q
from django.utils import timezone

from accounts.models import CreditAccount, MembershipTier
from accounts.tiers import tier_expired
from generation.models import CatalogEntry, Job
from generation.scheduling.estimates import Source, SpeedCache, estimate_duration
from generation.scheduling.policy import WaitingJob

# The fair-share memory: how far back a user's GPU time counts against them. The bench's
# simulation measured the policy with this window.
USAGE_WINDOW = timedelta(minutes=10)
WAITING_FIELDS = (
    "pk", "owner_id", "created_at", "checkpoint_id", "checkpoint__name", "params", "mode",
)  # fmt: skip
IN_FLIGHT_FIELDS = (
    "owner_id", "status", "worker_id", "params", "mode", "checkpoint_id",
    "created_at", "dispatched_at", "started_at",
)  # fmt: skip


def tier_weights(owner_ids: Iterable[int], now: datetime | None = None) -> dict[int, float]:
    """Each owner's tier priority weight (at least 1): the default tier's where a time-limited
    tier ran out (`accounts.tiers.tier_expired`) or there is no account yet."""
    now = now or timezone.now()
    ids = set(owner_ids)
    weights: dict[int, float] = {}
    rows = CreditAccount.objects.filter(pk__in=ids).values_list(
        "pk", "tier__priority_weight", "tier_expires_at"
    )
    for owner_id, weight, expires_at in rows:
        if not tier_expired(expires_at, now):
            weights[owner_id] = float(max(1, weight))
    if missing := ids - weights.keys():
        default = float(max(1, MembershipTier.objects.default().priority_weight))
        weights.update(dict.fromkeys(missing, default))
    return weights


class Waiting(NamedTuple):
    jobs: list[WaitingJob]
    sources: dict[str, Source]  # job id -> where its cost estimate came from


def waiting_jobs(limit: int | None = None, speeds: SpeedCache | None = None) -> Waiting:
    """The jobs the scheduler may hand out (queued, held by no worker), oldest first (the first
    `limit`), as the policy sees them. Plain rows, no model instances: a pass over a thousand
    waiting jobs stays cheap; load the few rows a plan hands out by their ids."""
    speeds = speeds or SpeedCache()
    query = Job.objects.waiting().order_by("created_at", "pk").values_list(*WAITING_FIELDS)
    rows = list(query[:limit] if limit is not None else query)
    weights = tier_weights({row[1] for row in rows})
    uploads = uploaded_models({row[1] for row in rows})
    waiting = Waiting([], {})
    for job_id, owner_id, created_at, checkpoint_id, checkpoint, params, mode in rows:
        speed = speeds(checkpoint_id, params)
        loras = frozenset(params.get("loras") or ())
        fetchable = {
            (kind, name)
            for kind, name in [("checkpoint", checkpoint), *(("lora", n) for n in loras)]
            if (owner_id, kind, name) in uploads
        }
        waiting.jobs.append(
            WaitingJob(
                job_id=str(job_id),
                user_id=str(owner_id),
                weight=weights[owner_id],
                submitted_at=created_at.timestamp(),  # a returned job keeps its first place
                checkpoint=checkpoint,
                loras=loras,
                controlnets=frozenset(u["model"] for u in params.get("controlnet") or ()),
                cost=speed.duration({**params, "mode": mode}),
                fetchable=frozenset(fetchable),
            )
        )
        waiting.sources[str(job_id)] = speed.source
    return waiting


def uploaded_models(owner_ids: Iterable[int]) -> set[tuple[int, str, str]]:
    """(owner, kind, name) of the owners' uploads, which workers fetch when they lack them."""
    rows = CatalogEntry.objects.filter(owner_id__in=owner_ids).filter(
        Q(stored_file__isnull=False) | Q(recipe__isnull=False)  # virtual: computed there
    )
    return set(rows.values_list("owner_id", "kind", "name"))


def in_flight_jobs() -> list[Job]:
    """Jobs running or handed to a worker and not started yet, in the order they were handed
    out (the in-flight part of `recent_usage`, and what the queue ETAs start from)."""
    held = Q(status=Job.Status.RUNNING) | Q(status=Job.Status.QUEUED, worker_id__gt="")
    return list(
        Job.objects.filter(held).order_by("dispatched_at", "created_at").only(*IN_FLIGHT_FIELDS)
    )


def recent_usage(
    now: datetime | None = None,
    speeds: SpeedCache | None = None,
    in_flight: Iterable[Job] | None = None,
) -> dict[str, float]:
    """GPU seconds per user (by str id) over the last USAGE_WINDOW: finished jobs' run time
    inside the window, plus every job handed out and not finished at its estimated cost (or its
    time so far, if longer). A job counts from the moment it is handed out, so the next pass
    does not give the same user another slot as if it had used nothing."""
    now = now or timezone.now()
    speeds = speeds or SpeedCache()
    start = now - USAGE_WINDOW
    usage: dict[str, float] = {}
    finished = Job.objects.filter(started_at__isnull=False, finished_at__gte=start).values_list(
        "owner_id", "started_at", "finished_at"
    )
    for owner_id, started_at, finished_at in finished:
        if started_at is None or finished_at is None:  # excluded by the filter (for mypy)
            continue
        seconds = (finished_at - max(started_at, start)).total_seconds()
        usage[str(owner_id)] = usage.get(str(owner_id), 0.0) + max(0.0, seconds)
    for job in in_flight if in_flight is not None else in_flight_jobs():
        elapsed = (now - job.started_at).total_seconds() if job.started_at else 0.0
        seconds = max(estimate_duration(job, speeds)[0], elapsed)
        usage[str(job.owner_id)] = usage.get(str(job.owner_id), 0.0) + seconds
    return usage
