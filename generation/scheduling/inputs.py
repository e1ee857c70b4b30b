"""The policy's inputs from the database: waiting jobs as `WaitingJob`s, each user's recent GPU
usage, each owner's tier weight. A constant number of queries whatever the queue length (one
per table and purpose), shared by the dispatcher's pass and the queue positions/ETAs, so both
see the same order."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, NamedTuple

from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.compiled_queries import CompiledQuery
from accounts.models import CreditAccount, MembershipTier
from accounts.tiers import tier_expired
from generation.models import CatalogEntry, Job, ModelRecipe
from generation.scheduling.estimates import Source, SpeedCache, estimate_duration
from generation.scheduling.policy import Download, ModelKey, WaitingJob
from generation.stored_models import StoredModel, StoredModels
from gpu_worker.batch_key import batch_key
from gpu_worker.extras_plan import RESAMPLERS
from gpu_worker.protocol import DEFAULT_DOWNLOAD_BYTES_PER_S, WorkerHeartbeat, stored_model_key

# The fair-share memory: how far back a user's GPU time counts against them. The bench's
# simulation measured the policy with this window.
USAGE_WINDOW = timedelta(minutes=10)
WAITING_FIELDS = (
    "pk", "owner_id", "created_at", "checkpoint_id", "checkpoint__name", "params", "mode",
    "checkpoint__stored_file_id", "checkpoint__sha256", "checkpoint__size_bytes",
    "checkpoint__recipe__recipe_hash", "checkpoint__recipe__params",  # a virtual model's
    # the owner's tier (`tier_weights`), read with the rows rather than after them
    "owner__credit_account__tier__priority_weight", "owner__credit_account__tier_expires_at",
)  # fmt: skip
IN_FLIGHT_FIELDS = (
    "owner_id", "status", "worker_id", "params", "mode", "checkpoint_id",
    "created_at", "dispatched_at", "started_at",
    # what the queue's ETAs need to count a stored checkpoint's download
    "checkpoint__kind", "checkpoint__name", "checkpoint__sha256", "checkpoint__size_bytes",
    "checkpoint__stored_file_id", "checkpoint__recipe__recipe_hash", "checkpoint__recipe__params",
)  # fmt: skip
IN_FLIGHT_ORDER = ("dispatched_at", "created_at")  # hand-out order


def tier_weights(owner_ids: Iterable[int], now: datetime | None = None) -> dict[int, float]:
    """Each owner's tier priority weight (at least 1): the default tier's where a time-limited
    tier ran out (`accounts.tiers.tier_expired`) or there is no account yet."""
    ids = set(owner_ids)
    accounts = CreditAccount.objects.filter(pk__in=ids).values_list(
        "pk", "tier__priority_weight", "tier_expires_at"
    )
    return weights_of(ids, accounts, now)


def weights_of(
    owner_ids: set[int],
    accounts: Iterable[tuple[int, int | None, datetime | None]],
    now: datetime | None = None,
) -> dict[int, float]:
    """`tier_weights` from accounts already read: (owner id, tier weight, tier expiry), the
    weight None where the owner has no account."""
    now = now or timezone.now()
    weights: dict[int, float] = {}
    for owner_id, weight, expires_at in accounts:
        if weight is not None and not tier_expired(expires_at, now):
            weights[owner_id] = float(max(1, weight))
    if missing := owner_ids - weights.keys():
        default = float(max(1, MembershipTier.objects.default().priority_weight))
        weights.update(dict.fromkeys(missing, default))
    return weights


class Waiting(NamedTuple):
    jobs: list[WaitingJob]
    sources: dict[str, Source]  # job id -> where its cost estimate came from
    # The stored models these jobs may name (None: no job): a pass builds their requests from it
    stored: StoredModels | None = None

    def without(self, job_ids: set[str]) -> Waiting:
        """These jobs, less `job_ids` (just handed out): what a new read would find, were no
        other job waiting beyond the ones read."""
        jobs = [job for job in self.jobs if job.job_id not in job_ids]
        sources = {job.job_id: self.sources[job.job_id] for job in jobs}
        return Waiting(jobs, sources, self.stored)


def checkpoint_key(
    name: str, stored_file_id: int | None, sha256: str, recipe_hash: str | None = None
) -> str:
    """How the scheduler and heartbeats name a checkpoint: a stored one (fetched by hash) by
    its hash, since members' names may repeat; a virtual model (no file, computed on the worker)
    by its recipe hash; a models-folder one by its catalogue name."""
    if stored_file_id:
        return stored_model_key(sha256)
    return stored_model_key(recipe_hash) if recipe_hash else name


def checkpoint_key_of(entry: CatalogEntry) -> str:
    """`checkpoint_key` of a loaded catalogue entry (with its recipe, if any, selected)."""
    recipe: ModelRecipe | None = getattr(entry, "recipe", None)  # None: no such row
    recipe_hash = recipe.recipe_hash if recipe is not None else None
    return checkpoint_key(entry.name, entry.stored_file_id, entry.sha256, recipe_hash)


def waiting_jobs(limit: int | None = None, speeds: SpeedCache | None = None) -> Waiting:
    """The jobs the scheduler may hand out (queued, held by no worker), oldest first (the first
    `limit`), as the policy sees them. Plain rows, no model instances: a pass over a thousand
    waiting jobs stays cheap; load the few rows a plan hands out by their ids."""
    speeds = speeds or SpeedCache()
    rows = _WAITING.rows(limit)
    if not rows:
        return Waiting([], {})
    accounts = {(row[1], row[12], row[13]) for row in rows}  # owner, tier weight, tier expiry
    weights = weights_of({row[1] for row in rows}, accounts)
    recipes = [row[5]["merge"] for row in rows if row[6] == Job.Mode.MERGE]
    recipes += [row[11] for row in rows if row[11] and not row[7]]  # virtual checkpoints'
    stored = StoredModels({row[1] for row in rows}, recipes)
    waiting = Waiting([], {}, stored)
    for row in rows:
        job_id, owner_id, created_at, checkpoint_id, name, params, mode, *file = row[:12]
        stored_file_id, sha256, size, recipe_hash, recipe = file
        virtual = recipe_hash if recipe and not stored_file_id else None
        key = checkpoint_key(name, stored_file_id, sha256, virtual)
        speed = speeds(checkpoint_id, params)
        loras = frozenset(params.get("loras") or ())
        fetchable: set[ModelKey] = set()
        downloads: list[Download] = []
        stored_checkpoint = None
        if stored_file_id:
            stored_checkpoint = Download(sha256, size)
            downloads.append(stored_checkpoint)
        elif virtual:  # computed on the worker from its inputs: those are what it fetches
            stored_checkpoint = Download(virtual, size)
            downloads += downloads_of(stored.inputs_of(recipe, part_of=virtual))
        if stored_checkpoint is not None:
            fetchable.add(("checkpoint", key))
        if mode == Job.Mode.MERGE:  # its inputs are read from disk, not loaded
            downloads += downloads_of(stored.inputs_of(params["merge"]))
        named = [("lora", n) for n in loras] + (
            [("vae", params["vae"])] if params.get("vae") else []
        )
        for kind, model_name in named:
            if (model := stored.find(owner_id, kind, model_name)) is not None:
                fetchable.add((kind, model_name))
                downloads.append(Download(model.sha256, model.size_bytes))
        upscalers = extras_models(params) if mode == Job.Mode.EXTRAS else face_model(params)
        waiting.jobs.append(
            WaitingJob(
                job_id=str(job_id),
                user_id=str(owner_id),
                weight=weights[owner_id],
                submitted_at=created_at.timestamp(),  # a returned job keeps its first place
                checkpoint="" if mode == Job.Mode.EXTRAS else key,
                loras=loras,
                controlnets=frozenset(u["model"] for u in params.get("controlnet") or ()),
                cost=speed.duration({**params, "mode": mode}),
                fetchable=frozenset(fetchable),
                downloads=tuple(downloads),
                stored_checkpoint=stored_checkpoint,
                other_models=upscalers,
                batch_key=batch_key({**params, "mode": mode}, has_uploads=bool(fetchable)),
            )
        )
        waiting.sources[str(job_id)] = speed.source
    return waiting


def _waiting_window(limit: int | None) -> QuerySet[Job, tuple[Any, ...]]:
    query = Job.objects.waiting().order_by("created_at", "pk").values_list(*WAITING_FIELDS)
    return query[:limit] if limit is not None else query


_WAITING = CompiledQuery(_waiting_window)


def downloads_of(models: Iterable[StoredModel]) -> list[Download]:
    """Stored models as the policy counts their fetch time."""
    return [Download(m.sha256, m.size_bytes, m.part_of) for m in models]


def worker_disk(beat: WorkerHeartbeat) -> tuple[frozenset[str], float]:
    """A worker's download cache (sha256s) and fetch rate, from its heartbeat."""
    rate = float(beat.get("download_bytes_per_s") or DEFAULT_DOWNLOAD_BYTES_PER_S)
    return frozenset(beat.get("disk_models") or ()), rate


def extras_models(params: dict) -> frozenset[ModelKey]:
    """The upscaler and face models an extras job runs (a resampler needs none)."""
    extras = params.get("extras") or {}
    names = {extras.get("upscaler_1"), extras.get("upscaler_2")} - {None, *RESAMPLERS}
    needed = {("upscaler", str(name)) for name in names}
    for key in ("face_restorer", "codeformer"):  # GFPGAN, CodeFormer
        if extras.get(key):
            needed.add(("face_restorer", str(extras[key])))
    return frozenset(needed)


def face_model(params: dict) -> frozenset[ModelKey]:
    """restore_faces: the face-restoration model the job runs."""
    name = params.get("face_restorer") if params.get("restore_faces") else None
    return frozenset({("face_restorer", str(name))}) if name else frozenset()


def in_flight_jobs() -> list[Job]:
    """Jobs running or handed to a worker and not started yet, in the order they were handed
    out (the in-flight part of `recent_usage`, and what the queue ETAs start from)."""
    return _IN_FLIGHT.objects()


def _in_flight() -> QuerySet[Job]:
    held = Q(status=Job.Status.RUNNING) | Q(status=Job.Status.QUEUED, worker_id__gt="")
    return (
        Job.objects.filter(held)
        .select_related("checkpoint__recipe")
        .order_by(*IN_FLIGHT_ORDER)
        .only(*IN_FLIGHT_FIELDS)
    )


_IN_FLIGHT = CompiledQuery(_in_flight)


def in_flight_with(held: list[Job], claimed: list[Job]) -> list[Job] | None:
    """`in_flight_jobs` as it reads once `claimed` (waiting jobs just handed out by
    `Job.mark_assigned`) joined `held` (read before): in hand-out order. None where that
    order cannot be told here (a job without a hand-out time: the databases place those
    differently)."""
    jobs = held + claimed
    if any(job.dispatched_at is None for job in jobs):
        return None
    return sorted(jobs, key=attrgetter(*IN_FLIGHT_ORDER))


def recent_usage(
    now: datetime | None = None,
    speeds: SpeedCache | None = None,
    in_flight: Iterable[Job] | None = None,
    finished: dict[str, float] | None = None,
) -> dict[str, float]:
    """GPU seconds per user (by str id) over the last USAGE_WINDOW: finished jobs' run time
    inside the window, plus every job handed out and not finished at its estimated cost (or its
    time so far, if longer). A job counts from the moment it is handed out, so the next pass
    does not give the same user another slot as if it had used nothing. `finished`:
    `finished_usage(now)` already read."""
    now = now or timezone.now()
    speeds = speeds or SpeedCache()
    usage = dict(finished_usage(now) if finished is None else finished)
    for job in in_flight if in_flight is not None else in_flight_jobs():
        elapsed = (now - job.started_at).total_seconds() if job.started_at else 0.0
        seconds = max(estimate_duration(job, speeds)[0], elapsed)
        usage[str(job.owner_id)] = usage.get(str(job.owner_id), 0.0) + seconds
    return usage


def finished_usage(now: datetime) -> dict[str, float]:
    """The finished jobs' part of `recent_usage`: run time inside USAGE_WINDOW per user."""
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
    return usage
