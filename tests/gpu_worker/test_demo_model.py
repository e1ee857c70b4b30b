"""The demo model: original (A1111) key layout, offline single-file loading, idempotence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpu_worker.catalogue import read_safetensors_header, scan_models


def test_demo_checkpoint_is_in_original_layout(demo_models_dir: Path) -> None:
    header = read_safetensors_header(
        demo_models_dir / "Stable-diffusion/atelier-demo-v1.safetensors"
    )
    keys = set(header) - {"__metadata__"}
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.encoder.down.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    assert not any(k.startswith(("unet.", "down_blocks.")) for k in keys)
    token = header["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    assert token["shape"] == [49408, 32]


def test_single_file_checkpoint_loads_offline_bit_identical(
    demo_models_dir: Path, atelier_cache_dir: Path, torch: Any
) -> None:
    from gpu_worker.demo_model import build_demo_components
    from gpu_worker.loading import load_checkpoint

    item = scan_models(demo_models_dir, hash_cache=atelier_cache_dir / "h.json").resolve(
        "checkpoint", "atelier-demo-v2"
    )
    pipe = load_checkpoint(item, dtype=torch.float32, cache_dir=atelier_cache_dir)
    expected = build_demo_components(2)
    for name in ("unet", "vae", "text_encoder"):
        want, got = expected[name].state_dict(), getattr(pipe, name).state_dict()
        assert set(want) == set(got), name
        assert all(torch.equal(want[k], got[k]) for k in want), name
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_make_demo_model_is_idempotent(demo_models_dir: Path) -> None:
    from gpu_worker.demo_model import make_demo_models

    before = {p: p.stat().st_mtime_ns for p in demo_models_dir.rglob("*.safetensors")}
    make_demo_models(demo_models_dir)
    assert before == {p: p.stat().st_mtime_ns for p in demo_models_dir.rglob("*.safetensors")}


def test_shipped_architecture_configs_have_the_real_sizes(torch: Any) -> None:
    """The JSON configs in gpu_worker/configs build models with the published parameter counts
    (built on the meta device: no memory, no weights)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from gpu_worker.loading import SHIPPED_CONFIGS

    def count(model: Any) -> int:
        return sum(p.numel() for p in model.parameters())

    def unet(family: str) -> Any:
        return UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(SHIPPED_CONFIGS / family / "unet")
        )

    with init_empty_weights():
        assert count(unet("sd1")) == 859_520_964
        assert count(unet("sdxl")) == 2_567_463_684
        for family in ("sd1", "sdxl"):
            vae = AutoencoderKL.from_config(
                AutoencoderKL.load_config(SHIPPED_CONFIGS / family / "vae")
            )
            assert count(vae) == 83_653_863
            text = CLIPTextConfig.from_pretrained(SHIPPED_CONFIGS / family / "text_encoder")
            assert count(CLIPTextModel(text)) == 123_060_480
        big_g = CLIPTextConfig.from_pretrained(SHIPPED_CONFIGS / "sdxl" / "text_encoder_2")
        assert count(CLIPTextModelWithProjection(big_g)) == 694_659_840
