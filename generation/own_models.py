"""Members' own models: add an upload to the catalogue, edit, delete, and the storage quota.

Each member's entries count against their tier's quota (bytes and count) even when the bytes are
shared with another member's identical upload: the store keeps them once, the quota is personal.
A file's bytes leave the store when the last entry pointing at them goes.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.tiers import tier_of
from generation import model_store
from generation.limits import limits_for
from generation.model_delivery import evict_everywhere
from generation.models import CatalogEntry, ModelFile, ModelRecipe, ModelUpload
from generation.request_errors import SubmissionError
from generation.uploaded_images import uploaded_image

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,99}$")
MAX_DESCRIPTION = 2000
MAX_TRIGGER_WORDS = 500
MiB = 2**20
PREVIEW_SIDE = 512  # previews are cards in the generator and rows on My models


class OwnModelError(Exception):
    """A refused upload or edit; `field` names what to fix, `status` the HTTP answer."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field, message, status

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "detail": self.message}


@dataclass(frozen=True)
class Quota:
    used_bytes: int
    used_count: int
    max_bytes: int
    max_count: int

    @property
    def used_mb(self) -> float:
        return round(self.used_bytes / MiB, 1)

    @property
    def max_mb(self) -> int:
        return self.max_bytes // MiB


def quota_for(user: Any) -> Quota:
    tier = tier_of(user)
    own = CatalogEntry.objects.filter(owner=user, stored_file__isnull=False)
    return Quota(
        used_bytes=own.aggregate(total=Sum("size_bytes"))["total"] or 0,
        used_count=own.count(),
        max_bytes=tier.model_storage_mb * MiB,
        max_count=tier.model_count,
    )


def check_quota(user: Any, size_bytes: int) -> None:
    """Refuse an upload of `size_bytes` that would pass the tier's quota, naming it."""
    quota = quota_for(user)
    if quota.used_count + 1 > quota.max_count:
        raise OwnModelError(
            "file",
            f"your membership allows {quota.max_count} uploaded models and you have "
            f"{quota.used_count}: delete one first",
            413,
        )
    if quota.used_bytes + size_bytes > quota.max_bytes:
        raise OwnModelError(
            "file",
            f"this upload ({size_bytes / MiB:.1f} MiB) would pass your model storage quota of "
            f"{quota.max_mb} MiB ({quota.used_mb} MiB used)",
            413,
        )


def check_name(user: Any, kind: str, name: str, *, exclude_pk: int | None = None) -> str:
    """A name the owner may use: safe characters, not one of theirs or a public one already."""
    name = (name or "").strip()
    if not NAME_PATTERN.match(name):
        raise OwnModelError(
            "name", "name must be 1-100 letters, digits, spaces or . _ ( ) + - characters"
        )
    taken = CatalogEntry.objects.filter(kind=kind, name=name).filter(
        pk__in=CatalogEntry.objects.owned_by(user).values("pk")
    ) | CatalogEntry.objects.public().filter(kind=kind, name=name)
    if exclude_pk is not None:
        taken = taken.exclude(pk=exclude_pk)
    if taken.exists():
        raise OwnModelError("name", f"you already have a {kind} named {name!r}", 409)
    return name


def record_file(stored: model_store.StoredBytes) -> ModelFile:
    """The facts row of stored bytes (one per sha256, shared by every entry of that file)."""
    facts = stored.facts
    model_file, _created = ModelFile.objects.get_or_create(
        sha256=stored.sha256,
        defaults={
            "size_bytes": stored.size_bytes,
            "kind": facts.kind,
            "family": facts.family,
            "architecture": facts.architecture or "",
            "detail": facts.detail,
        },
    )
    return model_file


def _entry_fields(stored: model_store.StoredBytes, name: str) -> dict[str, Any]:
    return {
        "kind": stored.facts.kind,
        "name": name,
        "family": stored.facts.family,
        "filename": f"{name}.safetensors",
        "size_bytes": stored.size_bytes,
        "sha256": stored.sha256,
        "short_hash": stored.sha256[:10],
        "available": True,  # the store delivers it to any worker
    }


def add_own_model(user: Any, stored: model_store.StoredBytes, name: str) -> CatalogEntry:
    """Record checked bytes in the store as the user's private catalogue entry."""
    try:
        name = check_name(user, stored.facts.kind, name)
        check_quota(user, stored.size_bytes)
    except OwnModelError:
        forget_if_unused(stored.sha256)
        raise
    with transaction.atomic():
        model_file = record_file(stored)
        return CatalogEntry.objects.create(
            owner=user, stored_file=model_file, **_entry_fields(stored, name)
        )


def add_platform_model(user: Any, stored: model_store.StoredBytes, name: str) -> CatalogEntry:
    """Staff's upload as a catalogue (platform) model: no owner, no quota, public like a model
    in workers' folders and limited to tiers the same way (the admin's tier choice); workers
    fetch it by hash like any stored model."""
    try:
        if not getattr(user, "is_staff", False):
            raise OwnModelError("platform", "only staff add platform models", 403)
        name = check_platform_name(stored.facts.kind, name)
    except OwnModelError:
        forget_if_unused(stored.sha256)
        raise
    with transaction.atomic():
        model_file = record_file(stored)
        return CatalogEntry.objects.create(
            owner=None, stored_file=model_file, **_entry_fields(stored, name)
        )


def check_platform_name(kind: str, name: str) -> str:
    name = (name or "").strip()
    if not NAME_PATTERN.match(name):
        raise OwnModelError(
            "name", "name must be 1-100 letters, digits, spaces or . _ ( ) + - characters"
        )
    if CatalogEntry.objects.filter(owner__isnull=True, kind=kind, name=name).exists():
        raise OwnModelError("name", f"the catalogue already has a {kind} named {name!r}", 409)
    return name


def update_own_model(user: Any, entry: CatalogEntry, changes: Mapping[str, Any]) -> CatalogEntry:
    """Rename, describe or set trigger words of the user's own entry."""
    if entry.owner_id != getattr(user, "pk", None):
        raise OwnModelError("model", "no such model", 404)
    if "name" in changes:
        entry.name = check_name(user, entry.kind, changes["name"], exclude_pk=entry.pk)
        entry.filename = f"{entry.name}.safetensors"
    if "description" in changes:
        entry.description = _limited(changes["description"], "description", MAX_DESCRIPTION)
    if "trigger_words" in changes:
        entry.trigger_words = _limited(changes["trigger_words"], "trigger_words", MAX_TRIGGER_WORDS)
    entry.save()
    return entry


def set_preview(user: Any, entry: CatalogEntry, raw: Any) -> CatalogEntry:
    """The owner's preview image for their model: read under the same caps as any uploaded
    image (bytes, pixels, PNG/JPEG/WEBP), re-encoded to a small WEBP, so nothing of the file
    but its pixels is kept (no metadata, no script in a crafted file)."""
    if entry.owner_id != getattr(user, "pk", None):
        raise OwnModelError("model", "no such model", 404)
    try:
        image = uploaded_image(raw, limits_for(user), "preview")
    except SubmissionError as exc:
        raise OwnModelError(exc.field, exc.message, exc.status) from exc
    image = image.convert("RGB")
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    out = io.BytesIO()
    image.save(out, "WEBP", quality=85)
    _drop_preview(entry)
    entry.preview.save("preview.webp", ContentFile(out.getvalue()), save=True)
    return entry


def clear_preview(user: Any, entry: CatalogEntry) -> CatalogEntry:
    if entry.owner_id != getattr(user, "pk", None):
        raise OwnModelError("model", "no such model", 404)
    _drop_preview(entry)
    entry.save(update_fields=["preview", "updated_at"])
    return entry


def _drop_preview(entry: CatalogEntry) -> None:
    if entry.preview.name:
        entry.preview.storage.delete(entry.preview.name)
        entry.preview.name = ""


def _limited(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise OwnModelError(field, f"{field} must be text of at most {limit} characters")
    return value


def delete_own_model(user: Any, entry: CatalogEntry) -> None:
    """Delete the user's entry; its quota is free at once, its bytes go with the last reference.
    An entry that past jobs point at stays as a disabled tombstone without a file, so the jobs
    keep their history; its name is freed."""
    if entry.owner_id != getattr(user, "pk", None):
        raise OwnModelError("model", "no such model", 404)
    sha256 = entry.sha256
    _drop_preview(entry)
    with transaction.atomic():
        # a bake still running writes into nothing: its end fails it (and refunds it)
        ModelRecipe.objects.filter(entry=entry).update(job=None)
        if entry.jobs.exists():
            CatalogEntry.objects.filter(pk=entry.pk).update(
                name=f"deleted-{entry.pk}",
                enabled=False,
                available=False,
                published=False,
                stored_file=None,
                size_bytes=0,
                preview="",
            )
        else:
            entry.delete()
        transaction.on_commit(lambda: forget_if_unused(sha256))


def forget_if_unused(sha256: str) -> None:
    """Drop stored bytes no entry refers to any more, from the store and every worker."""
    if CatalogEntry.objects.filter(stored_file__sha256=sha256).exists():
        return
    ModelFile.objects.filter(sha256=sha256).delete()
    model_store.delete_bytes(sha256)
    evict_everywhere(sha256)


def drop_expired_uploads() -> int:
    """Uploads past their expiry (drf-tus gives each a day) go, with any partial file: an
    abandoned upload must not hold disk for ever. Run by the platform worker's periodic pass."""
    expired = ModelUpload.objects.filter(expires__lt=timezone.now())
    for upload in expired:
        upload.delete()  # drf-tus's delete removes the temporary file
    return len(expired)
