"""The checkpoint merger's rules, defined once for the platform and the worker. Torch-free.

A1111's merger (its Checkpoint Merger tab) names three methods: "No interpolation" (A alone:
convert, prune, bake), "Weighted sum" `(1-M)*A + M*B` and "Add difference" `A + M*(B-C)`. As
there, only keys A has are written; a key is merged when its name contains "model" and the
other inputs have it; the text encoder's position ids are copied from A. A 9-channel inpaint (or
8-channel instruct-pix2pix) A merged with a normal B mixes only the first four input channels of
the UNet's first convolution. Beyond A1111, per-block weights (SD.Next's "BASE, IN00.., M00,
OUT.."): each UNet block takes its own M, everything outside the UNet takes BASE.

Everything that can be decided from the inputs' safetensors headers is decided here, before any
tensor is read: the platform refuses mismatched inputs at submission (the 422 names the keys),
and the worker builds the output's header from the same `MergePlan` before it streams the data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

from gpu_worker.model_files import DTYPE_BYTES, tensors
from gpu_worker.params import MergeInput, MergeMethod, MergeParams

METHODS: tuple[MergeMethod, ...] = ("No interpolation", "Weighted sum", "Add difference")
INPUTS_OF: dict[str, tuple[str, ...]] = {
    "No interpolation": ("primary",),
    "Weighted sum": ("primary", "secondary"),
    "Add difference": ("primary", "secondary", "tertiary"),
}
ROLE_LETTER = {"primary": "A", "secondary": "B", "tertiary": "C"}
# A1111 leaves these alone whatever the method (int64 ids, not weights).
SKIP_ON_MERGE = frozenset({"cond_stage_model.transformer.text_model.embeddings.position_ids"})
# Keys a checkpoint may carry or not without being another architecture (EMA copies).
OPTIONAL_PREFIXES = ("model_ema.",)
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
FIRST_CONV = UNET_PREFIX + "input_blocks.0.0.weight"
LATENT_CHANNELS = 4
INPAINT_CHANNELS = 9
PIX2PIX_CHANNELS = 8
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
MAX_DISCARD_CHARS = 500
NAMED_KEYS = 5  # how many mismatching keys an error names
MERGE_FORMAT = 1  # bump when the output bytes of a recipe change: recipe hashes change with it

# Price: a merge reads every input once; its work is its bytes (web: generation.pricing).
CREDITS_PER_GIB = Decimal("0.5")
CENT = Decimal("0.01")


class MergeMismatch(ValueError):
    """Inputs that cannot be merged; `keys` are the tensor names at fault."""

    def __init__(self, message: str, keys: list[str] | None = None, field: str = "secondary"):
        super().__init__(message)
        self.keys = keys or []
        self.field = field


# --- blocks -------------------------------------------------------------------------------------


def block_names(family: str) -> list[str]:
    """SD1/SD2: BASE, IN00-IN11, M00, OUT00-OUT11 (26); SDXL: BASE, IN00-IN08, M00, OUT00-OUT08."""
    count = 9 if family == "sdxl" else 12
    return (
        ["BASE"]
        + [f"IN{i:02d}" for i in range(count)]
        + ["M00"]
        + [f"OUT{i:02d}" for i in range(count)]
    )


_BLOCK_RE = re.compile(
    r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\.?(\d*)"
)


def block_of(key: str, family: str) -> str:
    """The block a tensor belongs to. As the MBW extension does, the UNet's time embedding
    counts with the first input block and its final norm/conv with the last output block;
    every tensor outside the UNet (text encoders, VAE) is BASE."""
    if not key.startswith(UNET_PREFIX):
        return "BASE"
    match = _BLOCK_RE.match(key)
    last = block_names(family)[-1]
    if match is None:
        return last if key.startswith(UNET_PREFIX + "out.") else "IN00"
    kind, number = match.groups()
    if kind == "middle_block":
        return "M00"
    prefix = "IN" if kind == "input_blocks" else "OUT"
    name = f"{prefix}{int(number or 0):02d}"
    return name if name in block_names(family) else last


# SD.Next-like presets over the UNet blocks (IN.., M00, OUT..), by position t in [0, 1];
# BASE takes the multiplier.
PRESETS: dict[str, Any] = {
    "FLAT_25": lambda t: 0.25,
    "FLAT_75": lambda t: 0.75,
    "GRAD_V": lambda t: abs(1 - 2 * t),
    "GRAD_A": lambda t: 1 - abs(1 - 2 * t),
    "SMOOTHSTEP": lambda t: t * t * (3 - 2 * t),
    "REVERSE_SMOOTHSTEP": lambda t: 1 - t * t * (3 - 2 * t),
}


def preset_weights(preset: str, family: str, base: float) -> list[float]:
    """A preset's weights for a family: BASE first, then the UNet blocks in order."""
    shape = PRESETS[preset]
    blocks = len(block_names(family)) - 1
    return [base] + [round(float(shape(i / (blocks - 1))), 6) for i in range(blocks)]


# --- headers -> plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTensor:
    key: str
    source: str  # "A": from A (merged or copied), "VAE": the baked-in VAE's tensor
    vae_key: str  # the key in the VAE file, when source is VAE
    dtype: str  # output dtype (safetensors name)
    shape: tuple[int, ...]
    merged: bool  # combined with B (and C); else copied
    partial_channels: bool  # inpaint/pix2pix A: only the first 4 input channels mixed
    weight: float  # M for this tensor

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


@dataclass
class MergePlan:
    tensors: list[PlannedTensor] = field(default_factory=list)
    is_inpainting: bool = False
    is_instruct_pix2pix: bool = False

    @property
    def total(self) -> int:
        return len(self.tensors)

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _named(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:NAMED_KEYS])
    more = len(keys) - NAMED_KEYS
    return shown + (f" and {more} more" if more > 0 else "")


def _compare(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], la: str, lb: str, field: str
) -> None:
    """Refuse two checkpoints of different architectures, naming the keys that differ."""

    def weights(entries: dict[str, dict[str, Any]]) -> set[str]:
        return {k for k in entries if "model" in k and not k.startswith(OPTIONAL_PREFIXES)}

    ka, kb = weights(a) - SKIP_ON_MERGE, weights(b) - SKIP_ON_MERGE
    if only_a := sorted(ka - kb):
        raise MergeMismatch(
            f"{lb} is a different architecture from {la}: it lacks {len(only_a)} of {la}'s keys "
            f"({_named(only_a)})",
            only_a,
            field,
        )
    if only_b := sorted(kb - ka):
        raise MergeMismatch(
            f"{lb} is a different architecture from {la}: it has {len(only_b)} keys {la} lacks "
            f"({_named(only_b)})",
            only_b,
            field,
        )
    shapes = [k for k in ka if a[k]["shape"] != b[k]["shape"] and not _inpaint_pair(k, a, b)]
    if shapes:
        first = sorted(shapes)[0]
        raise MergeMismatch(
            f"{lb} does not fit {la}: {len(shapes)} tensors differ in shape ({_named(shapes)}; "
            f"{first}: {a[first]['shape']} vs {b[first]['shape']})",
            shapes,
            field,
        )


def _inpaint_pair(key: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    sa, sb = a[key]["shape"], b[key]["shape"]
    if len(sa) != 4 or len(sb) != 4 or sa[:1] + sa[2:] != sb[:1] + sb[2:]:
        return False
    if sa[1] == LATENT_CHANNELS and sb[1] in (INPAINT_CHANNELS, PIX2PIX_CHANNELS):
        raise MergeMismatch(
            "when merging an inpainting or instruct-pix2pix model with a normal one, A must be "
            f"the inpainting model ({key}: A has {sa[1]} input channels, B {sb[1]})",
            [key],
            "primary",
        )
    return sa[1] in (INPAINT_CHANNELS, PIX2PIX_CHANNELS) and sb[1] == LATENT_CHANNELS


def compile_discard(pattern: str) -> re.Pattern[str] | None:
    """The discard regex, or None for none; raises re.error for a bad one."""
    return re.compile(pattern) if pattern else None


def plan_merge(
    params: MergeParams,
    headers: dict[str, dict[str, Any]],
    family: str,
) -> MergePlan:
    """Check the inputs against each other and list the output tensors, in file order.

    `headers` holds the safetensors header of each role the method uses ("primary",
    "secondary", "tertiary") and "vae" when one is baked in. Raises MergeMismatch."""
    method = params["method"]
    a = tensors(headers["primary"])
    b = tensors(headers["secondary"]) if "secondary" in INPUTS_OF[method] else None
    c = tensors(headers["tertiary"]) if "tertiary" in INPUTS_OF[method] else None
    if b is not None:
        _compare(a, b, "A", "B", "secondary")
    if b is not None and c is not None:
        for key in set(b) & set(c):
            if b[key]["shape"] != c[key]["shape"] and not key.startswith(OPTIONAL_PREFIXES):
                raise MergeMismatch(
                    f"C does not fit B: {key} is {c[key]['shape']} in C and {b[key]['shape']} in B",
                    [key],
                    "tertiary",
                )
        _compare(b, c, "B", "C", "tertiary")
    vae = tensors(headers["vae"]) if "vae" in headers else {}
    vae_for = {VAE_PREFIX + k: k for k in vae if VAE_PREFIX + k in a}
    if "vae" in headers:
        if not vae_for:
            raise MergeMismatch("the VAE has none of A's first_stage_model keys", [], "bake_in_vae")
        wrong = [k for k, v in vae_for.items() if vae[v]["shape"] != a[k]["shape"]]
        if wrong:
            raise MergeMismatch(
                f"the VAE does not fit A: {_named(wrong)} differ in shape", wrong, "bake_in_vae"
            )
    discard = compile_discard(params["discard_weights"])
    weights = params["block_weights"]
    names = block_names(family)
    plan = MergePlan()
    for key in sorted(a):
        if discard is not None and discard.search(key):
            continue
        info = vae[vae_for[key]] if key in vae_for else a[key]
        dtype = info["dtype"]
        if params["save_as_half"] and dtype == "F32":  # A1111's to_half: float32 only
            dtype = "F16"
        merged = (
            b is not None
            and key not in vae_for
            and "model" in key
            and key in b
            and key not in SKIP_ON_MERGE
            and a[key]["dtype"] in FLOAT_DTYPES
        )
        partial = merged and b is not None and a[key]["shape"] != b[key]["shape"]
        if partial:
            if a[key]["shape"][1] == INPAINT_CHANNELS:
                plan.is_inpainting = True
            else:
                plan.is_instruct_pix2pix = True
        weight = params["multiplier"]
        if weights is not None:
            weight = weights[names.index(block_of(key, family))]
        plan.tensors.append(
            PlannedTensor(
                key=key,
                source="VAE" if key in vae_for else "A",
                vae_key=vae_for.get(key, ""),
                dtype=dtype,
                shape=tuple(info["shape"]),
                merged=merged,
                partial_channels=partial,
                weight=float(weight),
            )
        )
    return plan


# --- provenance ---------------------------------------------------------------------------------


def recipe_hash(params: MergeParams) -> str:
    """The identity of a merge's output: same recipe, same bytes (a virtual model's cache key)."""
    canonical = json.dumps({"format": MERGE_FORMAT, **params}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class InputFacts:
    """What the metadata says about one input (read by the worker from its file)."""

    name: str
    sha256: str
    legacy_hash: str  # A1111's old 8-hex model hash
    metadata: dict[str, str]


def merge_metadata(
    params: MergeParams, inputs: dict[str, InputFacts], plan: MergePlan
) -> dict[str, str]:
    """The output's safetensors metadata, as A1111 writes it: A's own metadata (its
    config_source), then `sd_merge_recipe` and `sd_merge_models` (each input's sha256 -> name,
    legacy hash and its own recipe; the inputs' own sd_merge_models folded in, so provenance
    nests)."""
    primary = inputs["primary"]
    metadata = {
        k: v for k, v in primary.metadata.items() if k not in ("sd_merge_recipe", "sd_merge_models")
    }
    metadata["format"] = "pt"
    recipe: dict[str, Any] = {
        "type": "webui",
        "primary_model_hash": primary.sha256,
        "secondary_model_hash": inputs["secondary"].sha256 if "secondary" in inputs else None,
        "tertiary_model_hash": inputs["tertiary"].sha256 if "tertiary" in inputs else None,
        "interp_method": params["method"],
        "multiplier": params["multiplier"],
        "save_as_half": params["save_as_half"],
        "custom_name": params["name"],
        "config_source": 0,  # A1111's "A, B or C": A
        "bake_in_vae": params["bake_in_vae"]["name"] if params["bake_in_vae"] else "None",
        "discard_weights": params["discard_weights"],
        "is_inpainting": plan.is_inpainting,
        "is_instruct_pix2pix": plan.is_instruct_pix2pix,
    }
    if params["block_weights"] is not None:
        recipe["block_weights"] = params["block_weights"]  # SD.Next's per-block alphas
    models: dict[str, Any] = {}
    for role in ("primary", "secondary", "tertiary"):
        facts = inputs.get(role)
        if facts is None:
            continue
        own = facts.metadata.get("sd_merge_recipe")
        models[facts.sha256] = {
            "name": facts.name,
            "legacy_hash": facts.legacy_hash,
            "sd_merge_recipe": json.loads(own) if own else None,
        }
        # a foreign file's unreadable provenance is dropped, not fatal
        with contextlib.suppress(ValueError):
            models.update(json.loads(facts.metadata.get("sd_merge_models") or "{}"))
    metadata["sd_merge_recipe"] = json.dumps(recipe)
    metadata["sd_merge_models"] = json.dumps(models)
    return metadata


def default_name(method: str, a: str, b: str | None, c: str | None, m: float) -> str:
    """A1111's name for a merge left unnamed: `0.7(a) + 0.3(b)`, `a + 0.3(b - c)`; A alone is
    `a (converted)` (a member's model may not take a platform model's name)."""
    if method == "Weighted sum":
        name = f"{round(1 - m, 2)}({a}) + {round(m, 2)}({b})"
    elif method == "Add difference":
        name = f"{a} + {round(m, 2)}({b} - {c})"
    else:
        name = f"{a} (converted)"
    return name[:100]


def merge_price(input_bytes: int) -> Decimal:
    """Credits for a merge: CREDITS_PER_GIB per GiB of input read, at least a cent."""
    raw = Decimal(input_bytes) / Decimal(2**30) * CREDITS_PER_GIB
    return max(CENT, raw.quantize(CENT, rounding=ROUND_CEILING))


def inputs_of(params: MergeParams) -> dict[str, MergeInput]:
    """The inputs the method reads, by role, plus "vae" when one is baked in."""
    given: dict[str, MergeInput | None] = {
        "primary": params["primary"],
        "secondary": params["secondary"],
        "tertiary": params["tertiary"],
    }
    found = {role: given[role] for role in INPUTS_OF[params["method"]]}
    if params["bake_in_vae"]:
        found["vae"] = params["bake_in_vae"]
    return {role: item for role, item in found.items() if item is not None}


def input_bytes(params: MergeParams) -> int:
    return sum(int(item["size_bytes"]) for item in inputs_of(params).values())
