"""What a merge job's end does to the model it writes: the file becomes the member's model, or
the reserved name is let go. Called by `generation.lifecycle` inside the job's terminal
transition, so the job row, the credit settlement and the model change together."""

from __future__ import annotations

from typing import Any

from generation.models import CatalogEntry, Job, ModelFile, ModelRecipe


def merged_file_problem(job: Job, model: Any) -> str | None:
    """Why a 'succeeded' merge event cannot be recorded (the job then fails), or None."""
    if not isinstance(model, dict) or not isinstance(model.get("sha256"), str):
        return "the worker reported no merged file"
    if not ModelFile.objects.filter(sha256=model["sha256"]).exists():
        return "the merged file never reached the model store"
    if not ModelRecipe.objects.filter(job=job).exists():
        return "the model this merge was writing is gone"
    return None


def attach_merged_file(job: Job, model: Any) -> CatalogEntry:
    """The uploaded file (checked by hash on arrival) becomes the recipe's entry's file: a new
    merge's entry is enabled, a baked virtual model keeps its name and gains the file."""
    recipe = ModelRecipe.objects.select_related("entry").get(job=job)
    stored = ModelFile.objects.get(sha256=model["sha256"])
    entry = recipe.entry
    CatalogEntry.objects.filter(pk=entry.pk).update(
        stored_file=stored,
        sha256=stored.sha256,
        short_hash=stored.sha256[:10],
        size_bytes=stored.size_bytes,
        family=stored.family,
        filename=f"{entry.name}.safetensors",
        enabled=True,
        available=True,
    )
    ModelRecipe.objects.filter(pk=recipe.pk).update(job=None)
    entry.refresh_from_db()
    return entry


def drop_unfinished_merge(job: Job) -> None:
    """A merge that failed or was cancelled: its reserved entry goes (a virtual model being
    baked stays virtual)."""
    if job.mode != Job.Mode.MERGE:
        return
    for recipe in ModelRecipe.objects.select_related("entry").filter(job=job):
        entry = recipe.entry
        if entry.stored_file_id is None and not entry.enabled:
            entry.delete()
        else:
            ModelRecipe.objects.filter(pk=recipe.pk).update(job=None)
