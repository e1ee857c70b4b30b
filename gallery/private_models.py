"""Published images made with a member's private models: the pages never name those models.

The gallery shows a publication's parameters to everyone; a private checkpoint or LoRA's name
and hash are taken out of what the pages show (the owner's own pages are unaffected)."""

from __future__ import annotations

import re

from generation.models import CatalogEntry, Job

MODEL_FIELDS = re.compile(r"(?:, )?\b(?:Model|Model hash|Lora hashes): (?:\"[^\"]*\"|[^,\n]*)")


def uses_private_models(job: Job) -> bool:
    if not job.checkpoint.is_public:
        return True
    loras = job.params.get("loras") or []
    return (
        bool(loras)
        and CatalogEntry.objects.filter(
            owner_id=job.owner_id, published=False, kind=CatalogEntry.Kind.LORA, name__in=loras
        ).exists()
    )


def without_model_names(infotext: str) -> str:
    """The infotext without its Model, Model hash and Lora hashes fields (last line only)."""
    head, _, last = infotext.rpartition("\n")
    cleaned = MODEL_FIELDS.sub("", last).lstrip(", ")
    return f"{head}\n{cleaned}" if head else cleaned
