"""Which face-restoration model a request gets, and what it may not ask for.

A1111's `restore_faces` (txt2img, img2img) and the Extras visibilities name no model: the job
uses the first usable GFPGAN in the catalogue (kind "face_restorer", whose family is the
architecture read from the file). CodeFormer's licence forbids a paid service: asking for it is
a 422 saying so, unless the operator named that licence in ATELIER_ALLOW_NONCOMMERCIAL_MODELS
(gpu_worker.face_licences); even then this version has no CodeFormer loader, and says that.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.translation import gettext as _

from generation.models import CatalogEntry
from gpu_worker.face_licences import CODEFORMER, GFPGAN, parse_allowed, refusal


class FaceChoiceError(Exception):
    """A face-restoration field the platform refuses (field, message, HTTP status)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


def face_restorer_for(user: Any, field: str) -> str:
    """The catalogue name of the GFPGAN model the user's job will use."""
    entry = (
        CatalogEntry.objects.usable_by(user)
        .filter(kind=CatalogEntry.Kind.FACE_RESTORER, family=GFPGAN)
        .order_by("name")
        .first()
    )
    if entry is None:
        raise FaceChoiceError(
            field, _("%(field)s: no face restoration model is installed") % {"field": field}
        )
    return entry.name


def check_codeformer(visibility: float, field: str = "codeformer_visibility") -> None:
    if visibility <= 0:
        return
    reason = refusal(CODEFORMER, parse_allowed(settings.ALLOW_NONCOMMERCIAL_MODELS))
    if reason is not None:
        raise FaceChoiceError(field, f"{field}: {reason}")
    raise FaceChoiceError(
        field, _("%(field)s: CodeFormer is not available in this version") % {"field": field}
    )


def restore_faces_choice(user: Any, wanted: bool) -> str | None:
    """txt2img/img2img `restore_faces`: the model, or None when off."""
    return face_restorer_for(user, "restore_faces") if wanted else None
