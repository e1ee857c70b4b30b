"""Face restoration fields of a request (A1111's gfpgan_visibility, codeformer_visibility), checked
against what the platform may offer."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _

from generation.submission import SubmissionError, _float


def check_face_fields(user: Any, given: dict[str, Any]) -> dict[str, float]:
    fields = {
        "gfpgan_visibility": _float(given, "gfpgan_visibility", 0.0, 1.0),
        "codeformer_visibility": _float(given, "codeformer_visibility", 0.0, 1.0),
        "codeformer_weight": _float(given, "codeformer_weight", 0.0, 1.0),
    }
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if fields[name] > 0:
            raise SubmissionError(name, _("face restoration is not available yet"), 422)
    return fields
