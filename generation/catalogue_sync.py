"""The model catalogue kept in step with what exists: `sync_catalogue` imports what the GPU
workers (their heartbeat inventories) and the local models folder hold into CatalogEntry;
entries nobody has any more become unavailable. The platform worker runs it every few seconds,
the catalogue admin and the A1111 refresh endpoints on demand."""

from __future__ import annotations

import logging
from pathlib import Path

import redis
from django.conf import settings
from django.utils import timezone

from generation.broker import get_redis
from generation.fleet import inventories
from generation.models import CatalogEntry
from gpu_worker.catalogue import scan_models
from gpu_worker.demo_model import (
    DEMO_CHECKPOINTS,
    DEMO_CODEFORMER,
    DEMO_CONTROLNET,
    DEMO_FACE_RESTORER,
    DEMO_INPAINT,
    DEMO_LORA,
    DEMO_UPSCALER,
    DEMO_VAE,
)
from gpu_worker.protocol import ModelInventoryEntry

logger = logging.getLogger(__name__)

DEMO_DEFAULT_PARAMS = {
    "width": 128,
    "height": 128,
    "steps": 8,
    "sampler": "Euler a",
    "cfg_scale": 7.0,
}


def local_inventory(models_dir: Path | None = None) -> list[ModelInventoryEntry]:
    folder = Path(models_dir or settings.MODELS_DIR)
    if not folder.is_dir():
        return []
    hash_cache = Path(settings.VAR_DIR) / "model-hashes.json"
    return scan_models(folder, hash_cache=hash_cache).entries()


def _demo_names() -> set[str]:
    demos = (
        *DEMO_CHECKPOINTS,
        *(DEMO_INPAINT, DEMO_LORA, DEMO_VAE, DEMO_UPSCALER, DEMO_CONTROLNET, DEMO_FACE_RESTORER),
        DEMO_CODEFORMER,
    )
    return {d.name for d in demos}


def sync_catalogue(models_dir: Path | None = None, include_workers: bool = True) -> dict[str, int]:
    """Upsert what workers and the local folder hold; mark the rest unavailable. New entries are
    enabled by default; demo files are flagged and get small default parameters."""
    try:
        from_workers = inventories(get_redis()) if include_workers else []
        inventory = from_workers + local_inventory(models_dir)
    except (redis.RedisError, OSError):
        logger.warning("catalogue sync skipped: Redis unreachable", exc_info=True)
        return {"created": 0, "updated": 0, "unavailable": 0}
    seen: dict[tuple[str, str], ModelInventoryEntry] = {}
    for entry in inventory:
        seen.setdefault((entry["kind"], entry["name"]), entry)
    demo = _demo_names()
    created = updated = 0
    platform = CatalogEntry.objects.filter(owner__isnull=True)
    existing = {(e.kind, e.name): e for e in platform.filter(stored_file__isnull=True)}
    # Staff uploads live in the model store, delivered by hash: no worker inventory says
    # whether they are available, and a worker's file of the same name does not replace them.
    stored = set(platform.filter(stored_file__isnull=False).values_list("kind", "name"))
    for (kind, name), item in seen.items():
        if (kind, name) in stored:
            continue
        fields = {
            "family": item.get("family") or "unknown",
            "filename": item.get("filename", ""),
            "size_bytes": int(item.get("size_bytes") or 0),
            "sha256": item.get("sha256", ""),
            "short_hash": item.get("short_hash", ""),
            "native_scale": int(item.get("scale") or 0),
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
