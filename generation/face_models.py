"""Which face-restoration model a request gets, and what it may not ask for.

A1111's `restore_faces` (txt2img, img2img) names the restorer with its `face_restoration_model`
setting ("GFPGAN" or "CodeFormer", overridden per call; ours: the job parameter of that
name) and CodeFormer's fidelity with `code_former_weight` (0.5 by default). Unnamed, the job
uses GFPGAN, or CodeFormer where it is the only one the user may run (A1111 defaults to
CodeFormer, which is off here unless the operator enables it). Extras' `gfpgan_visibility` and
`codeformer_visibility` each use the first usable model of that architecture (catalogue kind
"face_restorer", whose family is the architecture read from the file).

CodeFormer's licence (S-Lab License 1.0) forbids a paid service: asking for it is a 422 saying
so, unless the operator named that licence in ATELIER_ALLOW_NONCOMMERCIAL_MODELS
(gpu_worker.face_licences).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.translation import gettext as _

from generation.models import CatalogEntry
from gpu_worker.face_licences import CODEFORMER, GFPGAN, LABELS, parse_allowed, refusal

# A1111's face_restoration_model values -> architecture
RESTORERS = {LABELS[GFPGAN]: GFPGAN, LABELS[CODEFORMER]: CODEFORMER}
FOLDERS = {GFPGAN: "GFPGAN", CODEFORMER: "Codeformer"}


class FaceChoiceError(Exception):
    """A face-restoration field the platform refuses (field, message, HTTP status)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


def _first(user: Any, architecture: str) -> CatalogEntry | None:
    return (
        CatalogEntry.objects.usable_by(user)
        .filter(kind=CatalogEntry.Kind.FACE_RESTORER, family=architecture)
        .order_by("name")
        .first()
    )


def licence_refusal(architecture: str) -> str | None:
    """Why the platform may not run this architecture (None: it may)."""
    return refusal(architecture, parse_allowed(settings.ALLOW_NONCOMMERCIAL_MODELS))


def model_for(user: Any, architecture: str, field: str) -> str:
    """The catalogue name of the model of that architecture the user's job will use."""
    reason = licence_refusal(architecture)
    if reason is not None:
        raise FaceChoiceError(field, f"{field}: {reason}")
    entry = _first(user, architecture)
    if entry is None:
        raise FaceChoiceError(
            field,
            _("%(field)s: no %(label)s model is installed (models/%(folder)s/)")
            % {"field": field, "label": LABELS[architecture], "folder": FOLDERS[architecture]},
        )
    return entry.name


def face_restorer_for(user: Any, field: str) -> str:
    """The catalogue name of the GFPGAN model the user's job will use."""
    return model_for(user, GFPGAN, field)


def codeformer_for(user: Any, visibility: float, field: str = "codeformer_visibility") -> str:
    """Extras' CodeFormer model ("" when its visibility is 0)."""
    return model_for(user, CODEFORMER, field) if visibility > 0 else ""


def available(user: Any) -> list[str]:
    """The restorers (A1111's names) the user may run: enabled and installed."""
    return [
        label
        for label, architecture in RESTORERS.items()
        if licence_refusal(architecture) is None and _first(user, architecture) is not None
    ]


def default_face_restorer(user: Any) -> str | None:
    """What `restore_faces` uses when no restorer is named (A1111's name; None: none usable)."""
    usable = available(user)
    if not usable:
        return None
    return LABELS[GFPGAN] if LABELS[GFPGAN] in usable else usable[0]


def restore_faces_choice(user: Any, wanted: bool, name: Any = None) -> str | None:
    """txt2img/img2img `restore_faces`: the model (None when off). `name` is A1111's
    `face_restoration_model`; unnamed, GFPGAN, or CodeFormer when it is the only one usable."""
    if not wanted:
        return None
    field = "face_restoration_model"
    if name in (None, ""):
        default = RESTORERS.get(default_face_restorer(user) or "", GFPGAN)
        return model_for(user, default, "restore_faces")
    if name not in RESTORERS:
        raise FaceChoiceError(
            field,
            _("%(field)s: unknown face restorer %(name)r; valid: %(valid)s")
            % {"field": field, "name": name, "valid": ", ".join(RESTORERS)},
        )
    return model_for(user, RESTORERS[name], field)
