"""Merge checkpoints: the one service behind the Merge page and the REST API.

`submit_merge` checks a merge before any work (every input one the member may use, the method's
inputs present, architectures that fit, a free output name, the quota), prices it by the bytes
it reads, and records the job, its credit hold and the output's reserved entry in one
transaction, dispatched after commit. `save_virtual` saves the same recipe as a model with no
file, at once; `bake_virtual` submits the job that writes its file. The web process reads only
safetensors headers, never a tensor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from generation import model_store
from generation.credits_hold import InsufficientCredits, hold_credits
from generation.limits import limits_for
from generation.models import CatalogEntry, Job, ModelRecipe
from generation.own_models import OwnModelError, check_name, check_quota
from generation.pricing import price_job
from generation.queue_reachable import queue_answering
from generation.scheduling.dispatcher import dispatch_on_commit
from generation.submission import (
    SubmissionError,
    _float,
    _lookup,
)
from gpu_worker.merge_rules import (
    INPUTS_OF,
    MAX_DISCARD_CHARS,
    METHODS,
    PRESETS,
    MergeMismatch,
    MergePlan,
    block_names,
    compile_discard,
    default_name,
    inputs_of,
    plan_merge,
    preset_weights,
    recipe_hash,
)
from gpu_worker.model_files import UnreadableModel, read_safetensors_header
from gpu_worker.params import DEFAULTS, GenerationParams, MergeInput, MergeMethod, MergeParams

logger = logging.getLogger(__name__)

FIELDS = frozenset(
    {
        "method",
        "primary",
        "secondary",
        "tertiary",
        "multiplier",
        "block_weights",
        "preset",
        "save_as_half",
        "bake_in_vae",
        "discard_weights",
        "name",
    }
)


@dataclass
class ValidatedMerge:
    params: MergeParams
    primary: CatalogEntry
    plan: MergePlan | None  # None when some input's header is not on this machine
    price: Decimal

    @property
    def output_bytes(self) -> int:
        """The output's size: exact from the plan, else A's size (halved for fp16)."""
        if self.plan is not None:
            return self.plan.output_bytes
        size = self.primary.size_bytes
        return size // 2 if self.params["save_as_half"] else size


def _pinned(entry: CatalogEntry) -> MergeInput:
    return MergeInput(name=entry.name, sha256=entry.sha256, size_bytes=entry.size_bytes)


def _input(user: Any, raw: dict[str, Any], field: str, kind: str) -> CatalogEntry:
    name = raw.get(field)
    if not isinstance(name, str) or not name.strip():
        raise SubmissionError(field, f"{field} must name a model", 422)
    entry = _lookup(user, kind, name, field)  # unknown and not-yours read the same
    if entry.stored_file_id is None and ModelRecipe.objects.filter(entry=entry).exists():
        raise SubmissionError(field, f"{name!r} is a virtual model: bake it first", 422)
    if not entry.sha256:
        raise SubmissionError(field, f"{name!r} has no known hash yet; try again shortly", 409)
    if entry.stored_file_id is None and not entry.filename.endswith(".safetensors"):
        # a diffusers folder or a pickle: the merger streams single .safetensors files only
        raise SubmissionError(
            field, f"{name!r} is not a single .safetensors file, which merging needs", 422
        )
    return entry


def _method(raw: dict[str, Any]) -> MergeMethod:
    value = str(raw.get("method") or "Weighted sum").strip()
    for method in METHODS:
        if method.lower() == value.lower():
            return method
    raise SubmissionError("method", f"method must be one of: {', '.join(METHODS)}", 422)


def _bool(raw: dict[str, Any], name: str) -> bool:
    value = raw.get(name, False)
    if value in (True, False, "true", "false", "on", "", None):
        return value in (True, "true", "on")
    raise SubmissionError(name, f"{name} must be true or false")


def _block_weights(raw: dict[str, Any], family: str, multiplier: float) -> list[float] | None:
    names = block_names(family)
    preset, weights = raw.get("preset") or None, raw.get("block_weights")
    if preset is not None and weights is not None:
        raise SubmissionError("preset", "give a preset or block_weights, not both", 422)
    if preset is not None:
        if preset not in PRESETS:
            raise SubmissionError(
                "preset", f"preset must be one of: {', '.join(sorted(PRESETS))}", 422
            )
        return preset_weights(str(preset), family, multiplier)
    if weights in (None, "", []):
        return None
    if isinstance(weights, str):  # the page's text box: comma-separated
        weights = [w for w in weights.replace(" ", "").split(",") if w]
    if not isinstance(weights, list) or len(weights) != len(names):
        raise SubmissionError(
            "block_weights",
            f"block_weights must be {len(names)} numbers for {family} "
            f"({names[0]}, {names[1]}..{names[-1]})",
            422,
        )
    return [_float({"block_weights": w}, "block_weights", 0.0, 1.0) for w in weights]


def _header(entry: CatalogEntry) -> dict[str, Any] | None:
    """The entry's safetensors header where this machine has the file: the model store for an
    upload, the local models folder for a platform model; None elsewhere."""
    if entry.stored_file_id is not None:
        path = model_store.path_for(entry.sha256)
    elif entry.filename and ".." not in entry.filename:
        path = Path(settings.MODELS_DIR) / entry.filename
    else:
        return None
    try:
        return read_safetensors_header(path) if path.is_file() else None
    except UnreadableModel:
        return None


def _plan(params: MergeParams, family: str) -> MergePlan | None:
    """The merge's plan from the inputs' headers, when this machine has every one of them
    (else the worker checks the same before it reads a tensor); MergeMismatch is a 422."""
    headers: dict[str, dict[str, Any]] = {}
    for role, pinned in inputs_of(params).items():
        entry = CatalogEntry.objects.filter(name=pinned["name"], sha256=pinned["sha256"]).first()
        header = _header(entry) if entry is not None else None
        if header is None:
            return None
        headers[role] = header
    try:
        return plan_merge(params, headers, family)
    except MergeMismatch as exc:
        raise SubmissionError(exc.field, str(exc), 422) from None


def validate_merge(user: Any, raw: dict[str, Any]) -> ValidatedMerge:
    """Check a merge request and normalise it into MergeParams; raises SubmissionError naming
    the field and the limit (mismatched architectures: the keys)."""
    if not isinstance(raw, dict):
        raise SubmissionError("params", "the request body must be a JSON object")
    if unknown := sorted(set(raw) - FIELDS - {"virtual"}):
        raise SubmissionError(
            unknown[0], f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(FIELDS))}"
        )
    method = _method(raw)
    roles = INPUTS_OF[method]
    entries = {role: _input(user, raw, role, CatalogEntry.Kind.CHECKPOINT) for role in roles}
    vae = None
    if raw.get("bake_in_vae") not in (None, "", "None"):
        vae = _input(user, raw, "bake_in_vae", CatalogEntry.Kind.VAE)
    primary = entries["primary"]
    for role, entry in entries.items():
        if entry.family != primary.family:
            raise SubmissionError(
                role,
                f"{entry.name!r} is {entry.family} and A ({primary.name!r}) is {primary.family}: "
                "architectures must match",
                422,
            )
    multiplier = _float({**raw, "multiplier": raw.get("multiplier", 0.5)}, "multiplier", 0.0, 1.0)
    discard = raw.get("discard_weights") or ""
    if not isinstance(discard, str) or len(discard) > MAX_DISCARD_CHARS:
        raise SubmissionError(
            "discard_weights", f"discard_weights must be a regex of at most {MAX_DISCARD_CHARS}"
        )
    try:
        compile_discard(discard)
    except Exception as exc:  # re.error, or a pattern too deep to compile
        raise SubmissionError(
            "discard_weights", f"discard_weights is not a regex: {exc}", 422
        ) from None
    name = raw.get("name") or default_name(
        method,
        primary.name,
        entries["secondary"].name if "secondary" in entries else None,
        entries["tertiary"].name if "tertiary" in entries else None,
        multiplier,
    )
    try:
        name = check_name(user, CatalogEntry.Kind.CHECKPOINT, str(name))
    except OwnModelError as exc:
        raise SubmissionError(exc.field, exc.message, 409 if exc.status == 409 else 422) from None
    params = MergeParams(
        method=method,
        primary=_pinned(primary),
        secondary=_pinned(entries["secondary"]) if "secondary" in entries else None,
        tertiary=_pinned(entries["tertiary"]) if "tertiary" in entries else None,
        multiplier=multiplier,
        block_weights=_block_weights(raw, primary.family, multiplier)
        if method != "No interpolation"
        else None,
        save_as_half=_bool(raw, "save_as_half"),
        bake_in_vae=_pinned(vae) if vae else None,
        discard_weights=discard,
        name=name,
    )
    plan = _plan(params, primary.family)
    price = price_job({"mode": "merge", "merge": params}, primary)
    return ValidatedMerge(params=params, primary=primary, plan=plan, price=price)


def _job_params(merge: MergeParams) -> GenerationParams:
    """A merge job's `Job.params`: the image fields at their defaults, the merge block set."""
    params: dict[str, Any] = {
        **DEFAULTS,
        "seed": 0,
        "subseed": 0,
        "mode": "merge",
        "checkpoint": merge["primary"]["name"],
        "vae": None,
        "hires": None,
        "loras": [],
        "inpaint": None,
        "merge": merge,
    }
    return cast(GenerationParams, params)  # every field of GenerationParams is set above


def _create_job(user: Any, valid: ValidatedMerge, recipe: ModelRecipe | None) -> Job:
    """Inside a transaction: the job, its hold, and the entry its file becomes."""
    limits = limits_for(user)
    get_user_model().objects.select_for_update(no_key=True).filter(pk=user.pk).first()
    unfinished = Job.objects.owned_by(user).unfinished().count()
    if unfinished >= limits.max_unfinished_jobs:
        raise SubmissionError(
            "jobs",
            f"you have {unfinished} unfinished jobs; the limit is {limits.max_unfinished_jobs}",
            429,
        )
    job = Job.objects.create(
        owner=user,
        mode=Job.Mode.MERGE,
        params=_job_params(valid.params),
        checkpoint=valid.primary,
        price=valid.price,
        total_steps=valid.plan.total if valid.plan else 1,
    )
    try:
        hold_credits(user, job)
    except InsufficientCredits as exc:
        raise SubmissionError("price", str(exc) or "not enough credits", 402) from None
    if recipe is None:  # a new merge: its name is reserved now, the file comes with success
        entry = CatalogEntry.objects.create(
            owner=user,
            kind=CatalogEntry.Kind.CHECKPOINT,
            name=valid.params["name"],
            family=valid.primary.family,
            filename=f"{valid.params['name']}.safetensors",
            enabled=False,
            available=False,
        )
        ModelRecipe.objects.create(
            entry=entry, params=valid.params, recipe_hash=recipe_hash(valid.params), job=job
        )
    else:
        ModelRecipe.objects.filter(pk=recipe.pk).update(job=job)
    dispatch_on_commit(job)  # the dispatcher schedules, then tells the owner its place
    return job


def submit_merge(user: Any, raw: dict[str, Any]) -> Job:
    """Validate, price, and record a merge job writing a new model of the member's."""
    valid = validate_merge(user, raw)
    try:
        check_quota(user, valid.output_bytes)
    except OwnModelError as exc:
        raise SubmissionError("name", exc.message, exc.status) from None
    try:
        with transaction.atomic(), queue_answering():
            return _create_job(user, valid, None)
    except IntegrityError:  # the same name raced in from another request
        raise SubmissionError(
            "name", f"you already have a checkpoint named {valid.params['name']!r}", 409
        ) from None


def save_virtual(user: Any, raw: dict[str, Any]) -> CatalogEntry:
    """Save a recipe as the member's model without writing a file: any worker computes it
    when a job names it (keyed by the recipe hash), and it can be baked later."""
    valid = validate_merge(user, raw)
    params = valid.params
    digest = recipe_hash(params)
    try:
        with transaction.atomic():
            entry = CatalogEntry.objects.create(
                owner=user,
                kind=CatalogEntry.Kind.CHECKPOINT,
                name=params["name"],
                family=valid.primary.family,
                filename=f"{params['name']}.safetensors",
                sha256=digest,
                short_hash=digest[:10],
                size_bytes=valid.output_bytes,  # what a worker's disk cache will hold
                cost_multiplier=valid.primary.cost_multiplier,
                available=True,
            )
            ModelRecipe.objects.create(entry=entry, params=params, recipe_hash=digest)
    except IntegrityError:
        raise SubmissionError(
            "name", f"you already have a checkpoint named {params['name']!r}", 409
        ) from None
    return entry


def bake_virtual(user: Any, entry: CatalogEntry) -> Job:
    """Write a virtual model's file: a merge job whose output becomes this same entry."""
    recipe = ModelRecipe.objects.filter(entry=entry, entry__owner=user).first()
    if recipe is None or entry.owner_id != getattr(user, "pk", None):
        raise SubmissionError("model", "no such model", 404)
    if entry.stored_file_id is not None:
        raise SubmissionError("model", f"{entry.name!r} already has its file", 409)
    if recipe.job_id is not None:
        raise SubmissionError("model", f"{entry.name!r} is being baked already", 409)
    params: MergeParams = recipe.params
    usable: dict[str, CatalogEntry] = {}
    for role, pinned in inputs_of(params).items():  # still the member's to use, same bytes
        kind = CatalogEntry.Kind.VAE if role == "vae" else CatalogEntry.Kind.CHECKPOINT
        found = CatalogEntry.objects.visible_to(user).filter(
            kind=kind, name=pinned["name"], sha256=pinned["sha256"]
        )
        if (usable_entry := found.first()) is None:
            raise SubmissionError(role, f"{pinned['name']!r} is no longer available", 409)
        usable[role] = usable_entry
    first = usable["primary"]
    try:
        check_quota(user, entry.size_bytes)
    except OwnModelError as exc:
        raise SubmissionError("model", exc.message, exc.status) from None
    valid = ValidatedMerge(
        params=params,
        primary=first,
        plan=_plan(params, first.family),
        price=price_job({"mode": "merge", "merge": params}, first),
    )
    with transaction.atomic(), queue_answering():
        return _create_job(user, valid, recipe)
