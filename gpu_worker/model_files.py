"""What a model file is, read from its safetensors header alone. Torch-free and Django-free.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and [begin, end) byte range, then the tensor bytes. The header is checked against
itself and the file size before anything trusts it: ranges must tile the data exactly (no
overlaps, no gaps, nothing past the end), and each range must be as long as its dtype and shape
say. Then the kind (checkpoint, LoRA, embedding, VAE) and the base family are read from tensor
names and shapes. The catalogue scan (worker and web) and the upload check (web) share these
rules; neither ever loads a tensor.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

ARCHITECTURE_METADATA_KEY = "atelier.architecture"  # written by demo_model
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_TENSOR_DIMS = 8
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
# The first bytes of torch's zip container and of a bare pickle stream (protocols 2-5).
PICKLE_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
FAMILY_BY_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
ARCHITECTURE_BY_FAMILY = {"sd1": "sd1", "sdxl": "sdxl"}  # configs shipped in gpu_worker/configs
UNET_INPUT_KEY = "model.diffusion_model.input_blocks.0.0.weight"  # original (LDM) layout
INPAINT_SUFFIX = "-inpaint"  # the base architecture's inpaint variant (gpu_worker/loading.py)
INPAINT_IN_CHANNELS = 9


class UnreadableModel(ValueError):
    """A file that is not a sound safetensors file: truncated, lying, pickled or unknown."""


@dataclass(frozen=True)
class ModelFacts:
    """What the header says a file is."""

    kind: str  # checkpoint / lora / embedding / vae
    family: str  # sd1 / sd2 / sdxl
    architecture: str | None  # config folder under gpu_worker/configs, when one fits
    detail: dict[str, Any] = field(default_factory=dict)  # inpaint, lora type, token count


def read_header(fh: BinaryIO, file_size: int, label: str = "file") -> dict[str, Any]:
    """The checked header of an open safetensors file of `file_size` bytes."""
    raw = fh.read(9)
    if raw.startswith(PICKLE_MAGICS) and raw[8:9] != b"{":
        # A pickle can run code when loaded: never accepted, whatever its name says. (A header
        # length may begin with the same two bytes, so the JSON brace decides.)
        raise UnreadableModel(f"{label}: pickle formats (.ckpt, .pt, .bin) are refused")
    if len(raw) != 9:
        raise UnreadableModel(f"{label}: too short for a safetensors file")
    (length,) = struct.unpack("<Q", raw[:8])
    if length <= 1 or length > MAX_HEADER_BYTES:
        raise UnreadableModel(f"{label}: implausible header length {length}")
    data = raw[8:] + fh.read(length - 1)
    if len(data) != length:
        raise UnreadableModel(f"{label}: file is truncated (inside the header)")
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableModel(f"{label}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise UnreadableModel(f"{label}: header is not an object")
    _check_tensors(header, file_size - 8 - length, label)
    return header


def read_safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        return read_header(fh, path.stat().st_size, path.name)


def _check_tensors(header: dict[str, Any], data_size: int, label: str) -> None:
    ranges: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise UnreadableModel(f"{label}: __metadata__ is not an object")
            continue
        if not isinstance(info, dict):
            raise UnreadableModel(f"{label}: tensor {name!r} has no description")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise UnreadableModel(f"{label}: tensor {name!r} has unknown dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_TENSOR_DIMS
            or not all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            raise UnreadableModel(f"{label}: tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise UnreadableModel(f"{label}: tensor {name!r} has invalid offsets {offsets!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise UnreadableModel(
                f"{label}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes but "
                f"{dtype} {shape} needs {math.prod(shape) * DTYPE_BYTES[dtype]}"
            )
        ranges.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(ranges):
        if begin < position:
            raise UnreadableModel(f"{label}: tensor {name!r} overlaps another")
        if begin > position:
            raise UnreadableModel(f"{label}: unaccounted bytes before tensor {name!r}")
        position = end
    if position > data_size:
        raise UnreadableModel(
            f"{label}: file is truncated ({data_size} data bytes, header needs {position})"
        )
    if position < data_size:
        raise UnreadableModel(f"{label}: {data_size - position} bytes after the last tensor")


# --- what the tensors say ----------------------------------------------------------------------


def tensors(header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in header.items() if k != "__metadata__"}


def detect_kind(header: dict[str, Any]) -> str | None:
    keys = tensors(header).keys()
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "checkpoint"
    if any(_is_lora_key(k) for k in keys):
        return "lora"
    if "emb_params" in keys or "clip_l" in keys or "clip_g" in keys or "string_to_param" in keys:
        return "embedding"
    if any(k.startswith(("encoder.conv_in.", "decoder.conv_out.")) for k in keys):
        return "vae"
    return None


LORA_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1_a", ".lokr_w1")


def _is_lora_key(key: str) -> bool:
    return any(marker in key for marker in LORA_MARKERS)


def detect_family_from_header(header: dict[str, Any], kind: str) -> tuple[str, str | None]:
    """(family, config architecture) for a file of a known kind; family may be "unknown"."""
    metadata = header.get("__metadata__") or {}
    declared = metadata.get(ARCHITECTURE_METADATA_KEY)
    if declared:
        family = "sdxl" if "sdxl" in declared else "sd2" if "sd2" in declared else "sd1"
        return family, declared
    entries = tensors(header)
    keys = entries.keys()
    family = "unknown"
    if kind == "checkpoint":
        if any(k.startswith("conditioner.embedders.1.model.") for k in keys):
            family = "sdxl"
        elif "cond_stage_model.model.token_embedding.weight" in keys:
            family = "sd2"
        elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
            family = "sd1"
    elif kind == "lora":
        if any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys):
            family = "sdxl"
        else:
            for key, info in entries.items():
                if "attn2_to_k" in key and key.endswith(("lora_down.weight", "hada_w1_b")):
                    family = FAMILY_BY_CONTEXT.get(info["shape"][-1], "unknown")
                    break
    elif kind == "controlnet":  # the width of its cross-attention context, in either key layout
        for key, info in entries.items():
            if key.endswith("attn2.to_k.weight") and info.get("shape"):
                family = FAMILY_BY_CONTEXT.get(info["shape"][-1], "unknown")
                break
    elif kind == "embedding":
        if "clip_g" in keys:
            family = "sdxl"
        else:
            for info in entries.values():
                if info.get("shape"):
                    family = {768: "sd1", 1024: "sd2"}.get(info["shape"][-1], "unknown")
                    break
    elif kind == "vae":
        # SD1 and SD2 share one VAE layout; an SDXL VAE has the same tensors and says so only in
        # its metadata.
        family = "sdxl" if "xl" in str(metadata.get("modelspec.architecture", "")) else "sd1"
    architecture = ARCHITECTURE_BY_FAMILY.get(family)
    if architecture and kind == "checkpoint" and is_inpaint_unet(header):
        architecture += INPAINT_SUFFIX
    return family, architecture


def is_inpaint_unet(header: dict[str, Any]) -> bool:
    """A dedicated inpaint checkpoint: the UNet's first convolution reads 9 channels."""
    info = header.get(UNET_INPUT_KEY) or {}
    shape = info.get("shape") or []
    return len(shape) > 1 and shape[1] == INPAINT_IN_CHANNELS


def describe(header: dict[str, Any], label: str = "file") -> ModelFacts:
    """Kind, family and details of a checked header; unknown architectures are refused."""
    kind = detect_kind(header)
    if kind is None:
        raise UnreadableModel(
            f"{label}: unknown architecture (not a Stable Diffusion checkpoint, LoRA, "
            "embedding or VAE)"
        )
    family, architecture = detect_family_from_header(header, kind)
    if family == "unknown":
        raise UnreadableModel(f"{label}: unknown base model for this {kind} (not SD1, SD2 or SDXL)")
    entries = tensors(header)
    detail: dict[str, Any] = {}
    if kind == "checkpoint":
        detail["inpaint"] = is_inpaint_unet(header)
    elif kind == "lora":
        detail["lora_type"] = _lora_type(entries)
    elif kind == "embedding":
        vectors = entries.get("emb_params") or entries.get("clip_l") or next(iter(entries.values()))
        shape = vectors.get("shape", [])
        detail["tokens"] = shape[0] if len(shape) == 2 else 1
    return ModelFacts(kind=kind, family=family, architecture=architecture, detail=detail)


def _lora_type(entries: dict[str, dict[str, Any]]) -> str:
    keys = entries.keys()
    if any(".hada_w1_a" in k for k in keys):
        return "loha"
    if any(".lokr_w1" in k for k in keys):
        return "lokr"
    if any(len(v.get("shape", [])) == 4 for k, v in entries.items() if "lora_down" in k):
        return "locon"
    return "lora"


def inspect_file(fh: BinaryIO, file_size: int, label: str = "file") -> ModelFacts:
    """Check and describe an open file, reading its header only."""
    return describe(read_header(fh, file_size, label), label)
