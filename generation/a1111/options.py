"""/options, /memory and the refresh endpoints: the caller's settings, never global ones."""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.utils.translation import gettext as _

from generation.a1111.catalog import find_checkpoint
from generation.a1111.errors import A1111Error
from generation.broker import get_redis
from generation.catalogue_sync import sync_catalogue
from generation.face_models import default_face_restorer
from generation.fleet import read_workers
from generation.submission import default_checkpoint, set_default_checkpoint
from gpu_worker.params import CODE_FORMER_WEIGHT

logger = logging.getLogger(__name__)


def get_options(user: Any) -> dict[str, Any]:
    """The caller's view: their default model, and A1111 option keys at what this engine does."""
    model = default_checkpoint(user)
    return {
        "sd_model_checkpoint": model.title if model else None,
        "sd_checkpoint_hash": (model.sha256 or None) if model else None,
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "randn_source": "CPU",
        "samples_format": "png",
        "live_previews_enable": True,
        "live_previews_image_format": "jpeg",
        "sd_checkpoints_limit": 1,
        # restore_faces' default restorer for this caller, and CodeFormer's default weight
        "face_restoration_model": default_face_restorer(user),
        "code_former_weight": CODE_FORMER_WEIGHT,
    }


def set_options(user: Any, body: Any) -> None:
    """Only `sd_model_checkpoint` is kept, as the caller's own default model. Other keys are
    accepted and ignored (clients post whole option sets back): set them per call with
    override_settings."""
    if not isinstance(body, dict):
        raise A1111Error(422, _("the request body must be a JSON object"), "body")
    if "sd_model_checkpoint" in body:
        field = "sd_model_checkpoint"
        entry = find_checkpoint(user, body[field], field)
        set_default_checkpoint(user, entry.name)


def _ram() -> dict[str, int]:
    import psutil

    memory = psutil.virtual_memory()
    return {
        "free": memory.available,
        "used": memory.total - memory.available,
        "total": memory.total,
    }


def _gpus() -> dict[str, Any]:
    try:
        workers = [w for w in read_workers(get_redis()) if w.present]
    except (redis.RedisError, OSError):
        return {"error": _("the worker heartbeats are unreachable")}
    if not workers:
        return {"error": _("no GPU worker is running")}
    used = sum(w.heartbeat["memory_used_bytes"] for w in workers if w.heartbeat)
    total = sum(w.heartbeat["memory_budget_bytes"] for w in workers if w.heartbeat)
    return {
        "system": {"free": max(0, total - used), "used": used, "total": total},
        "workers": [
            {
                "worker_id": w.worker_id,
                "device": w.heartbeat["device"],
                "used": w.heartbeat["memory_used_bytes"],
                "total": w.heartbeat["memory_budget_bytes"],
            }
            for w in workers
            if w.heartbeat
        ],
    }


def memory(user: Any) -> dict[str, Any]:
    """Staff: the web host's RAM and every GPU worker's memory (from heartbeats). Members learn
    nothing about the machines."""
    if not user.is_staff:
        hidden = {"error": _("memory details are shown to staff only")}
        return {"ram": hidden, "cuda": hidden}
    return {"ram": _ram(), "cuda": _gpus()}


def refresh_catalogue(user: Any) -> None:
    """Rescan the models folder and the workers' inventories (staff only)."""
    if not user.is_staff:
        raise A1111Error(403, _("only staff can rescan the model folders"))
    sync_catalogue()
