"""The caller's view of the model catalogue in A1111's shapes, and A1111's way of naming a
checkpoint (title, name, file name or hash)."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _

from generation import face_models
from generation.a1111.errors import A1111Error
from generation.models import CatalogEntry, PromptStyle
from gpu_worker.extras_plan import RESAMPLERS, UNKNOWN_NATIVE_SCALE
from gpu_worker.passes import LATENT_UPSCALERS
from gpu_worker.samplers import list_samplers, list_schedulers

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def _stem(text: str) -> str:
    name = text.rsplit("/", 1)[-1]
    for suffix in MODEL_EXTENSIONS:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _matches(entry: CatalogEntry, text: str) -> bool:
    base = text.rsplit(" [", 1)[0] if text.endswith("]") and " [" in text else text
    if text == entry.title or base == entry.filename or _stem(base) == entry.name:
        return True
    lowered = text.lower()
    return len(lowered) >= 8 and bool(
        lowered == entry.short_hash.lower() or (entry.sha256 and entry.sha256.startswith(lowered))
    )


def find_checkpoint(user: Any, text: Any, field: str) -> CatalogEntry:
    """A checkpoint the user may pick, named as A1111 accepts; 422 with the valid titles."""
    if not isinstance(text, str) or not text.strip():
        raise A1111Error(
            422, _("%(field)s must be a model title or name") % {"field": field}, field
        )
    wanted = text.strip()
    visible = CatalogEntry.objects.visible_to(user).checkpoints()
    entry = next((e for e in visible if _matches(e, wanted)), None)
    if entry is None:
        valid = ", ".join(e.title for e in visible.filter(available=True)) or _("none")
        raise A1111Error(
            422,
            _("%(field)s: model %(name)r not found; valid models: %(valid)s")
            % {"field": field, "name": wanted, "valid": valid},
            field,
        )
    if not entry.available:
        raise A1111Error(
            409,
            _("%(field)s: model %(name)r is not available on any worker now")
            % {"field": field, "name": wanted},
            field,
        )
    return entry


def _usable(user: Any, kind: str) -> list[CatalogEntry]:
    return list(CatalogEntry.objects.usable_by(user).filter(kind=kind).order_by("name"))


def sd_models(user: Any) -> list[dict[str, Any]]:
    # `filename` is relative to the models folder: server paths are nobody's business.
    return [
        {
            "title": e.title,
            "model_name": e.name,
            "hash": e.short_hash or None,
            "sha256": e.sha256 or None,
            "filename": e.filename,
            "config": None,
        }
        for e in _usable(user, CatalogEntry.Kind.CHECKPOINT)
    ]


def loras(user: Any) -> list[dict[str, Any]]:
    return [
        {"name": e.name, "alias": e.name, "path": e.filename, "metadata": {}}
        for e in _usable(user, CatalogEntry.Kind.LORA)
    ]


def sd_vaes(user: Any) -> list[dict[str, Any]]:
    return [
        {"model_name": e.name, "filename": e.filename} for e in _usable(user, CatalogEntry.Kind.VAE)
    ]


def embeddings(user: Any) -> dict[str, Any]:
    # The catalogue knows the files, not their vectors: those fields stay null.
    loaded = {
        e.name: {
            "step": None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
            "shape": None,
            "vectors": None,
        }
        for e in _usable(user, CatalogEntry.Kind.EMBEDDING)
    }
    return {"loaded": loaded, "skipped": {}}


def upscaler_models(user: Any) -> list[CatalogEntry]:
    return list(_usable(user, CatalogEntry.Kind.UPSCALER))


def upscalers(user: Any) -> list[dict[str, Any]]:
    """ "None", "Lanczos" and "Nearest", then the upscaler models the caller may use (A1111's
    shape; `scale` is the model's native factor, read from its file's header; the resamplers
    say 4, as A1111's do)."""
    plain = [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for name in RESAMPLERS
    ]
    return plain + [
        {
            "name": entry.name,
            "model_name": entry.name,
            "model_path": entry.filename,
            "model_url": None,
            "scale": entry.native_scale or UNKNOWN_NATIVE_SCALE,
        }
        for entry in upscaler_models(user)
    ]


def face_restorers(user: Any) -> list[dict[str, Any]]:
    """A1111's `[{name, cmd_dir}]`: GFPGAN and CodeFormer, each when a usable model of it exists
    and, for CodeFormer, the operator enabled its licence (generation.face_models)."""
    return [{"name": name, "cmd_dir": None} for name in face_models.available(user)]


def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": name} for name in LATENT_UPSCALERS]


def samplers() -> list[dict[str, Any]]:
    return list_samplers()


def schedulers() -> list[dict[str, Any]]:
    return list_schedulers()


def prompt_styles(user: Any) -> list[dict[str, str]]:
    """The caller's own styles and the shared ones (never another user's), as A1111 lists them."""
    styles = PromptStyle.objects.visible_to(user).order_by("name", "owner")
    return [
        {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles
    ]
