"""The upscalers a member may choose in the Upscale form: the resamplers, then their models."""

from __future__ import annotations

from typing import Any

from django import template

from generation.submission import upscaler_models
from gpu_worker.extras_plan import RESAMPLERS

register = template.Library()


@register.simple_tag(takes_context=True)
def upscaler_choices(context: Any) -> list[str]:
    user = context["request"].user
    return [*RESAMPLERS, *upscaler_models(user)]
