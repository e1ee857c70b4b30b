"""Tiny safetensors files written by hand (zero-filled tensors), for the upload checks: no
torch, and any header lie a test needs."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from gpu_worker.model_files import DTYPE_BYTES


def safetensors_bytes(
    tensors: dict[str, tuple[str, list[int]]], metadata: dict[str, str] | None = None
) -> bytes:
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        length = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + length]}
        offset += length
    if metadata:
        header["__metadata__"] = metadata
    return raw_file(header, b"\0" * offset)


def raw_file(header: dict[str, Any], data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def sd1_checkpoint(in_channels: int = 4) -> bytes:
    return safetensors_bytes(
        {
            "model.diffusion_model.input_blocks.0.0.weight": ("F16", [8, in_channels, 3, 3]),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (
                "F16",
                [4, 8],
            ),
            "first_stage_model.decoder.conv_out.weight": ("F16", [3, 4, 1, 1]),
        }
    )


def sd1_lora() -> bytes:
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    return safetensors_bytes(
        {
            f"{key}.lora_down.weight": ("F16", [4, 768]),
            f"{key}.lora_up.weight": ("F16", [320, 4]),
            f"{key}.alpha": ("F32", []),
        }
    )
