"""The model catalogue: A1111 folders, families from headers, cached hashes, safe names."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from gpu_worker.catalogue import (
    UnknownModel,
    UnreadableModel,
    read_safetensors_header,
    scan_models,
    sha256_file,
)


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> Path:
    """A real safetensors file with zero tensors, written without torch."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 2
        for dim in shape:
            size *= dim
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path


@pytest.fixture
def models(tmp_path: Path, demo_models_dir: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(demo_models_dir, root)
    return root


def test_scan_lists_the_demo_models_with_hashes_and_family(models: Path, tmp_path: Path) -> None:
    catalogue = scan_models(models, hash_cache=tmp_path / "h.json")
    entries = {(e["kind"], e["name"]): e for e in catalogue.entries()}
    assert set(entries) == {
        ("checkpoint", "atelier-demo-v1"),
        ("checkpoint", "atelier-demo-v2"),
        ("checkpoint", "atelier-demo-v1-inpainting"),
        ("lora", "atelier-demo-lora"),
        ("vae", "atelier-demo-vae"),
        ("embedding", "atelier-demo-embedding"),
        ("controlnet", "atelier-demo-controlnet"),
        ("upscaler", "atelier-demo-upscaler"),
        ("face_restorer", "atelier-demo-gfpgan"),
        ("face_restorer", "atelier-demo-codeformer"),
    }
    assert entries[("controlnet", "atelier-demo-controlnet")]["family"] == "sd1"
    assert entries[("upscaler", "atelier-demo-upscaler")]["scale"] == 4
    assert entries[("face_restorer", "atelier-demo-gfpgan")]["family"] == "gfpgan"
    assert entries[("face_restorer", "atelier-demo-codeformer")]["family"] == "codeformer"
    v1 = entries[("checkpoint", "atelier-demo-v1")]
    path = models / v1["filename"]
    assert v1["family"] == "sd1"
    assert v1["sha256"] == sha256_file(path)
    assert v1["short_hash"] == v1["sha256"][:10]
    assert v1["size_bytes"] == path.stat().st_size
    assert v1["sha256"] != entries[("checkpoint", "atelier-demo-v2")]["sha256"]


def test_a_restart_does_not_rehash_unchanged_files(models: Path, tmp_path: Path) -> None:
    cache = tmp_path / "h.json"
    scan_models(models, hash_cache=cache)
    data = json.loads(cache.read_text())
    key = str((models / "Stable-diffusion/atelier-demo-v1.safetensors").resolve())
    data["entries"][key]["sha256"] = "f" * 64  # only a cache read can yield this value
    cache.write_text(json.dumps(data))
    assert (
        scan_models(models, hash_cache=cache).resolve("checkpoint", "atelier-demo-v1").sha256
        == "f" * 64
    )
    path = models / "Stable-diffusion/atelier-demo-v1.safetensors"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert scan_models(models, hash_cache=cache).resolve(
        "checkpoint", "atelier-demo-v1"
    ).sha256 == sha256_file(path)


@pytest.mark.parametrize(
    "name", ["../x", "../Stable-diffusion/atelier-demo-v1", "/etc/passwd", "Lora/atelier-demo-lora"]
)
def test_names_are_never_paths(models: Path, tmp_path: Path, name: str) -> None:
    catalogue = scan_models(models, hash_cache=tmp_path / "h.json")
    with pytest.raises(UnknownModel, match="unknown checkpoint"):
        catalogue.resolve("checkpoint", name)


def test_a1111_titles_and_file_names_resolve(models: Path, tmp_path: Path) -> None:
    catalogue = scan_models(models, hash_cache=tmp_path / "h.json")
    item = catalogue.resolve("checkpoint", "atelier-demo-v1")
    assert catalogue.resolve("checkpoint", "atelier-demo-v1.safetensors") == item
    assert (
        catalogue.resolve("checkpoint", f"atelier-demo-v1.safetensors [{item.short_hash}]") == item
    )


def test_pickle_checkpoints_are_refused_unless_allowed(models: Path, tmp_path: Path) -> None:
    (models / "Stable-diffusion/old.ckpt").write_bytes(b"\x80\x02}q\x00.")
    refused = scan_models(models, hash_cache=tmp_path / "h.json")
    assert "old" not in refused.names("checkpoint")
    assert any("pickle" in why for _, why in refused.refused)
    allowed = scan_models(models, allow_pickle=True, hash_cache=tmp_path / "h.json")
    assert allowed.resolve("checkpoint", "old").is_pickle


def test_corrupt_files_are_listed_as_refused(models: Path, tmp_path: Path) -> None:
    (models / "Stable-diffusion/broken.safetensors").write_bytes(b"\xff" * 20)
    catalogue = scan_models(models, hash_cache=tmp_path / "h.json")
    assert "broken" not in catalogue.names("checkpoint")
    assert any(f.endswith("broken.safetensors") for f, _ in catalogue.refused)
    with pytest.raises(UnreadableModel):
        read_safetensors_header(models / "Stable-diffusion/broken.safetensors")


def test_families_from_header_keys(tmp_path: Path) -> None:
    sd = tmp_path / "Stable-diffusion"
    write_safetensors(
        sd / "xl.safetensors",
        {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": [4]},
    )
    write_safetensors(
        sd / "two.safetensors", {"cond_stage_model.model.token_embedding.weight": [4, 2]}
    )
    write_safetensors(
        sd / "one.safetensors",
        {"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": [77, 2]},
    )
    write_safetensors(
        tmp_path / "Lora/xl-lora.safetensors", {"lora_te2_x.lora_down.weight": [2, 2]}
    )
    sd1_lora_key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    write_safetensors(
        tmp_path / "Lora/sd-lora.safetensors", {f"{sd1_lora_key}.lora_down.weight": [4, 768]}
    )
    write_safetensors(tmp_path / "embeddings/emb.safetensors", {"emb_params": [2, 768]})
    original_cn = "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    write_safetensors(tmp_path / "ControlNet/canny15.safetensors", {original_cn: [320, 768]})
    diffusers_cn = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    write_safetensors(tmp_path / "ControlNet/canny-xl.safetensors", {diffusers_cn: [640, 2048]})
    folder = sd / "diffusers-xl"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet/config.json").write_text(json.dumps({"cross_attention_dim": 2048}))
    catalogue = scan_models(tmp_path, hash_cache=tmp_path / "h.json")
    family = {(e["kind"], e["name"]): e["family"] for e in catalogue.entries()}
    assert family == {
        ("checkpoint", "xl"): "sdxl",
        ("checkpoint", "two"): "sd2",
        ("checkpoint", "one"): "sd1",
        ("checkpoint", "diffusers-xl"): "sdxl",
        ("lora", "xl-lora"): "sdxl",
        ("lora", "sd-lora"): "sd1",
        ("embedding", "emb"): "sd1",
        ("controlnet", "canny15"): "sd1",
        ("controlnet", "canny-xl"): "sdxl",
    }
    assert catalogue.resolve("checkpoint", "diffusers-xl").is_folder
