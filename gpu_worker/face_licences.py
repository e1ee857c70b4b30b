"""Face-restoration architectures: which one a file is (from its tensor names alone) and whether
its licence lets a paid service run it. Torch-free: the catalogue scan (worker and web) tags
each file with its architecture, the platform refuses what the operator has not enabled.

GFPGAN (TencentARC) is Apache-2.0: enabled. CodeFormer (S-Lab License 1.0) is for non-commercial
use only: enabled only when the operator names that licence in
ATELIER_ALLOW_NONCOMMERCIAL_MODELS (e.g. "codeformer:S-Lab-1.0"), taking responsibility for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpu_worker.model_files import tensors

GFPGAN = "gfpgan"
CODEFORMER = "codeformer"
# architecture -> (licence, whether it allows a paid service)
LICENCES: dict[str, tuple[str, bool]] = {
    GFPGAN: ("Apache-2.0", True),
    CODEFORMER: ("S-Lab-1.0", False),
}
LABELS = {GFPGAN: "GFPGAN", CODEFORMER: "CodeFormer"}  # as A1111 names them in infotexts
GFPGAN_KEYS = ("conv_body_first.weight", "stylegan_decoder.style_conv1.modulated_conv.weight")
CODEFORMER_KEYS = ("quantize.embedding.weight", "position_emb")


def architecture_of(keys: Iterable[str]) -> str:
    """GFPGAN, CodeFormer, or "unknown", from the tensor names (BasicSR's `params_ema.` prefix
    of a converted .pth allowed)."""
    names = {key.removeprefix("params_ema.").removeprefix("params.") for key in keys}
    if all(key in names for key in GFPGAN_KEYS):
        return GFPGAN
    if any(key in names for key in CODEFORMER_KEYS) or any(
        k.startswith("ft_layers.") for k in names
    ):
        return CODEFORMER
    return "unknown"


def architecture_from_header(header: dict[str, Any]) -> str:
    return architecture_of(tensors(header))


def parse_allowed(setting: str) -> dict[str, str]:
    """ "codeformer:S-Lab-1.0, other:Licence" -> {architecture: licence named}."""
    allowed: dict[str, str] = {}
    for item in setting.split(","):
        name, _, licence = item.strip().partition(":")
        if name.strip() and licence.strip():
            allowed[name.strip().lower()] = licence.strip()
    return allowed


def refusal(architecture: str, allowed: Mapping[str, str]) -> str | None:
    """Why a paid service may not run this architecture (None: it may)."""
    licence, commercial = LICENCES.get(architecture, ("unknown", False))
    if commercial:
        return None
    if allowed.get(architecture, "").lower() == licence.lower():
        return None
    label = LABELS.get(architecture, architecture)
    return (
        f"{label}'s licence ({licence}) does not allow a paid service; the operator may enable "
        f'it by setting ATELIER_ALLOW_NONCOMMERCIAL_MODELS="{architecture}:{licence}"'
    )
