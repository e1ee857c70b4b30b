"""Uploaded model files: checked from the header alone, stored once under their sha256."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import pytest

from generation.model_store import path_for, store_stream
from gpu_worker.model_files import ModelFacts, UnreadableModel
from tests.model_file_builder import raw_file, safetensors_bytes, sd1_checkpoint, sd1_lora


def blocks(data: bytes, size: int = 7) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def refusal(data: bytes) -> str:
    with pytest.raises(UnreadableModel) as caught:
        store_stream(blocks(data), label="upload.safetensors")
    return str(caught.value)


def test_a_checkpoint_is_stored_under_its_sha256_with_its_kind_and_family():
    data = sd1_checkpoint()
    stored = store_stream(blocks(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.path == path_for(stored.sha256)
    assert stored.path.read_bytes() == data
    assert (stored.facts.kind, stored.facts.family) == ("checkpoint", "sd1")
    assert stored.facts.detail == {"inpaint": False}


def test_the_same_bytes_twice_are_stored_once():
    first = store_stream(blocks(sd1_lora()))
    second = store_stream(blocks(sd1_lora(), size=3))
    assert first.path == second.path
    assert len(list(first.path.parent.iterdir())) == 1


def test_kinds_and_families_are_read_from_tensor_names_and_shapes():
    def facts(data: bytes) -> ModelFacts:
        return store_stream([data]).facts

    assert facts(sd1_checkpoint(in_channels=9)).detail == {"inpaint": True}
    lora = facts(sd1_lora())
    assert (lora.kind, lora.family, lora.detail) == ("lora", "sd1", {"lora_type": "lora"})
    sdxl = facts(
        safetensors_bytes(
            {
                "model.diffusion_model.input_blocks.0.0.weight": ("F16", [8, 4, 3, 3]),
                "conditioner.embedders.1.model.ln_final.weight": ("F16", [8]),
            }
        )
    )
    assert (sdxl.kind, sdxl.family) == ("checkpoint", "sdxl")
    sd2 = facts(
        safetensors_bytes(
            {
                "model.diffusion_model.input_blocks.0.0.weight": ("F16", [8, 4, 3, 3]),
                "cond_stage_model.model.token_embedding.weight": ("F16", [4, 8]),
            }
        )
    )
    assert sd2.family == "sd2"
    embedding = facts(safetensors_bytes({"emb_params": ("F32", [3, 768])}))
    assert (embedding.kind, embedding.family, embedding.detail) == (
        "embedding",
        "sd1",
        {"tokens": 3},
    )
    xl_embedding = facts(
        safetensors_bytes({"clip_l": ("F16", [2, 768]), "clip_g": ("F16", [2, 1280])})
    )
    assert (xl_embedding.family, xl_embedding.detail) == ("sdxl", {"tokens": 2})
    vae = facts(
        safetensors_bytes(
            {
                "encoder.conv_in.weight": ("F16", [8, 3, 3, 3]),
                "decoder.conv_out.weight": ("F16", [3, 8, 3, 3]),
            }
        )
    )
    assert (vae.kind, vae.family) == ("vae", "sd1")
    loha = facts(
        safetensors_bytes(
            {"lora_te1_text_model_encoder_layers_0_mlp_fc1.hada_w1_a": ("F16", [8, 4])}
        )
    )
    assert (loha.family, loha.detail) == ("sdxl", {"lora_type": "loha"})


def test_a_truncated_file_is_refused():
    assert "truncated" in refusal(sd1_checkpoint()[:-5])
    assert "truncated" in refusal(sd1_checkpoint()[:20])


def test_header_lies_are_refused_with_the_tensor_named():
    past_end = raw_file(
        {"emb_params": {"dtype": "F32", "shape": [1, 4], "data_offsets": [0, 16]}}, b"\0" * 8
    )
    assert "truncated" in refusal(past_end)
    overlap = raw_file(
        {
            "emb_params": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "other": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
    )
    assert "'other' overlaps" in refusal(overlap)
    wrong_size = raw_file(
        {"emb_params": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8
    )
    assert "'emb_params' spans 8 bytes but F32 [3] needs 12" in refusal(wrong_size)
    bad_dtype = raw_file(
        {"emb_params": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8
    )
    assert "unknown dtype 'F33'" in refusal(bad_dtype)
    bad_shape = raw_file(
        {"emb_params": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8
    )
    assert "invalid shape" in refusal(bad_shape)
    assert "implausible header length" in refusal(struct.pack("<Q", 2**40) + b"{}")
    assert "not JSON" in refusal(struct.pack("<Q", 4) + b"{{{{")
    assert "bytes after the last tensor" in refusal(
        safetensors_bytes({"emb_params": ("F32", [1, 768])}) + b"x"
    )


def test_pickle_files_are_refused_whatever_their_name():
    assert "pickle" in refusal(b"PK\x03\x04" + b"\0" * 100)
    assert "pickle" in refusal(b"\x80\x04\x95" + b"\0" * 100)


def test_a_header_length_that_looks_like_a_pickle_is_still_a_safetensors_file():
    header = json.dumps(
        {"emb_params": {"dtype": "F32", "shape": [2, 768], "data_offsets": [0, 6144]}}
    )
    header = header + " " * (0x0280 - len(header))  # length 640: its bytes begin 0x80 0x02
    data = struct.pack("<Q", len(header)) + header.encode() + b"\0" * 6144
    assert data.startswith(b"\x80\x02")
    assert store_stream([data]).facts.kind == "embedding"


def test_unknown_architectures_are_refused_with_a_clear_message():
    assert "unknown architecture" in refusal(safetensors_bytes({"fc.weight": ("F32", [2, 2])}))
    odd_lora = safetensors_bytes({"lora_unet_x_attn2_to_k.lora_down.weight": ("F16", [4, 999])})
    assert "unknown base model for this lora" in refusal(odd_lora)


def test_refused_uploads_leave_nothing_in_the_store(settings):
    refusal(sd1_checkpoint()[:-1])
    leftovers = [
        p for p in settings.MODEL_STORE_DIR.rglob("*") if p.is_file() and "incoming" in p.parts
    ]
    assert leftovers == []


def test_reading_model_files_imports_no_torch():
    code = "import sys, gpu_worker.model_files; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_an_inpaint_checkpoint_gets_the_inpaint_variant_of_its_architecture():
    sd1 = safetensors_bytes(
        {
            "model.diffusion_model.input_blocks.0.0.weight": ("F16", [8, 9, 3, 3]),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": ("F16", [768]),
        }
    )
    assert store_stream([sd1]).facts.architecture == "sd1-inpaint"
