"""The public pricing page: what typical jobs cost, and which models cost more (from the
catalogue, as the visitor's tier sees it)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET

from accounts.models import MembershipTier
from generation.models import CatalogEntry
from generation.pricing import price_job
from gpu_worker.params import EXTRAS_DEFAULTS


def _upscale(**options: Any) -> dict[str, Any]:
    """An Extras job of a 512×512 image (priced per output megapixel)."""
    extras = {**EXTRAS_DEFAULTS, "source_width": 512, "source_height": 512}
    extras |= {"source_image_id": None, "upscaler_1": "R-ESRGAN 4x+", "upscaler_1_scale": 4}
    extras |= {"upscaler_2_scale": 0, "face_restorer": "", **options}
    return {"mode": "extras", "extras": extras}


# Requests priced on the pricing page, through generation's own price function. Lazy labels:
# the list is built at import, the page is read in each visitor's language.
PRICE_EXAMPLES: list[tuple[Promise, dict[str, Any]]] = [
    (_("512×512, 20 steps, one image"), {"width": 512, "height": 512, "steps": 20}),
    (_("1024×1024, 30 steps, one image"), {"width": 1024, "height": 1024, "steps": 30}),
    (
        _("512×768, 25 steps, batch of 4"),
        {"width": 512, "height": 768, "steps": 25, "batch_size": 4},
    ),
    (
        _("512×512, 20 steps, Heun (39 model runs)"),
        {"width": 512, "height": 512, "steps": 20, "sampler": "Heun"},
    ),
    (
        _("512×512, 20 steps, hires fix ×2"),
        {"width": 512, "height": 512, "steps": 20, "hires": {"scale": 2.0}},
    ),
    (_("Upscale a 512×512 image ×2 (Extras)"), _upscale()),
    (_("Upscale ×2 and restore faces (Extras)"), _upscale(gfpgan_visibility=1.0)),
]


@require_GET
def pricing(request: HttpRequest) -> HttpResponse:
    class _Multiplier1:
        cost_multiplier = 1

    examples = [(label, price_job(params, _Multiplier1())) for label, params in PRICE_EXAMPLES]
    models = CatalogEntry.objects.visible_to(request.user).checkpoints().exclude(cost_multiplier=1)
    return render(
        request,
        "accounts/pricing.html",
        {
            "examples": examples,
            "models": models,
            "tiers": MembershipTier.objects.all(),
        },
    )
