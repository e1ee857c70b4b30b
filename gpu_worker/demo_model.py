"""A tiny SD 1.x-architecture demo model with deterministic random weights, written offline.

The embedded run and the tests use it: `python -m gpu_worker make-demo-model` writes two
checkpoints (different weights), a LoRA, a VAE, an embedding, a ControlNet, an upscaler and two
face restorers (GFPGAN, CodeFormer) into the A1111 folders.
Checkpoints are single `.safetensors` files in the ORIGINAL (A1111/LDM) key layout, as people
download them, so the single-file loading path is the one exercised. Images it makes are noise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEMO_CONFIG = "tiny-sd1"  # folder under gpu_worker/configs
ARCHITECTURE_METADATA_KEY = "atelier.architecture"  # "tiny-sd1" marks a demo model


@dataclass(frozen=True)
class DemoFile:
    name: str
    folder: str  # A1111 folder under the models directory
    seed: int

    @property
    def relative(self) -> str:
        return f"{self.folder}/{self.name}.safetensors"


DEMO_CHECKPOINTS = (
    DemoFile("atelier-demo-v1", "Stable-diffusion", 1),
    DemoFile("atelier-demo-v2", "Stable-diffusion", 2),
)
# A dedicated inpaint checkpoint: the demo UNet reading 9 channels (latents, mask, masked image);
# named to sort after v1, the default model of a fresh install (the first demo by name).
DEMO_INPAINT = DemoFile("atelier-demo-v1-inpainting", "Stable-diffusion", 7)
DEMO_INPAINT_CONFIG = DEMO_CONFIG + "-inpaint"  # loading builds its config folder
DEMO_LORA = DemoFile("atelier-demo-lora", "Lora", 3)
DEMO_VAE = DemoFile("atelier-demo-vae", "VAE", 4)
DEMO_EMBEDDING = DemoFile("atelier-demo-embedding", "embeddings", 5)
DEMO_CONTROLNET = DemoFile("atelier-demo-controlnet", "ControlNet", 6)
DEMO_UPSCALER = DemoFile("atelier-demo-upscaler", "ESRGAN", 7)  # 4x, original ESRGAN keys
DEMO_FACE_RESTORER = DemoFile("atelier-demo-gfpgan", "GFPGAN", 8)  # GFPGANv1Clean, 32 px faces
# CodeFormer's layout at 512 px, narrow: runs only where the operator enabled its licence
DEMO_CODEFORMER = DemoFile("atelier-demo-codeformer", "Codeformer", 9)


def make_demo_models(models_dir: Path) -> list[Path]:
    """Write the demo files that are missing (idempotent); return the paths of all of them."""
    written = []
    for demo in DEMO_CHECKPOINTS:
        written.append(_write_if_missing(models_dir / demo.relative, partial(_checkpoint, demo)))
    written.append(
        _write_if_missing(
            models_dir / DEMO_INPAINT.relative, partial(_checkpoint, DEMO_INPAINT, inpaint=True)
        )
    )
    written.append(_write_if_missing(models_dir / DEMO_LORA.relative, _lora))
    written.append(_write_if_missing(models_dir / DEMO_VAE.relative, _vae_file))
    written.append(_write_if_missing(models_dir / DEMO_EMBEDDING.relative, _embedding))
    written.append(_write_if_missing(models_dir / DEMO_CONTROLNET.relative, _controlnet))
    written.append(_write_if_missing(models_dir / DEMO_UPSCALER.relative, _upscaler))
    written.append(_write_if_missing(models_dir / DEMO_FACE_RESTORER.relative, _face_restorer))
    written.append(_write_if_missing(models_dir / DEMO_CODEFORMER.relative, _codeformer))
    return written


def write_demo_checkpoint(models_dir: Path, name: str, seed: int) -> Path:
    """One more demo checkpoint with its own weights (benchmarks want several)."""
    demo = DemoFile(name, "Stable-diffusion", seed)
    return _write_if_missing(models_dir / demo.relative, lambda: _checkpoint(demo))


def _write_if_missing(
    path: Path, build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, str]]]
) -> Path:
    if path.exists():
        return path
    from safetensors.torch import save_file

    tensors, metadata = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def _upscaler() -> tuple[dict, dict]:
    """A tiny random-weight 4x ESRGAN in the original key layout (gpu_worker.upscalers)."""
    from gpu_worker.upscalers import random_state

    return random_state("esrgan-old"), {}


def _face_restorer() -> tuple[dict, dict]:
    """A tiny random-weight GFPGAN in the published GFPGANv1Clean layout (gfpgan_arch)."""
    from gpu_worker.gfpgan_arch import random_state

    return random_state(), {}


def _codeformer() -> tuple[dict, dict]:
    """A tiny random-weight CodeFormer in the published v0.1.0 layout (codeformer_arch)."""
    from gpu_worker.codeformer_arch import random_state

    return random_state(seed=DEMO_CODEFORMER.seed), {}


def _config(component: str) -> dict:
    folder = Path(__file__).parent / "configs" / DEMO_CONFIG / component
    name = "config.json" if component != "scheduler" else "scheduler_config.json"
    return json.loads((folder / name).read_text())


def build_demo_components(seed: int, *, inpaint: bool = False) -> dict:
    """The demo pipeline's modules in diffusers layout, weights drawn from `seed`; with
    `inpaint`, a UNet of 9 input channels (an inpaint checkpoint's)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_config = {**_config("unet"), **({"in_channels": 9} if inpaint else {})}
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(_config("vae"))
        text_config = CLIPTextConfig(**_strip_private(_config("text_encoder")))
        text_encoder = CLIPTextModel(text_config)
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval()}


def _strip_private(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}


def _checkpoint(
    demo: DemoFile, *, inpaint: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    components = build_demo_components(demo.seed, inpaint=inpaint)
    state: dict[str, torch.Tensor] = {}
    unet_config = components["unet"].config
    for key, value in unet_to_ldm(components["unet"].state_dict(), unet_config).items():
        state["model.diffusion_model." + key] = value
    for key, value in vae_to_ldm(components["vae"].state_dict(), components["vae"].config).items():
        state["first_stage_model." + key] = value
    for key, value in components["text_encoder"].state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value
    # One metadata key only: safetensors writes several in a random order, and the demo files
    # must be byte-identical wherever they are made (their hash is the model hash).
    return state, {ARCHITECTURE_METADATA_KEY: DEMO_INPAINT_CONFIG if inpaint else DEMO_CONFIG}


def _vae_file() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    vae = build_demo_components(DEMO_VAE.seed)["vae"]
    # Standalone A1111 VAE files carry the LDM layout without the first_stage_model. prefix.
    return vae_to_ldm(vae.state_dict(), vae.config), {ARCHITECTURE_METADATA_KEY: DEMO_CONFIG}


def _embedding() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An A1111 textual-inversion embedding: 2 vectors for the 32-wide demo text encoder."""
    import torch

    generator = torch.Generator().manual_seed(DEMO_EMBEDDING.seed)
    vectors = torch.randn(2, 32, generator=generator)
    return {"emb_params": vectors}, {ARCHITECTURE_METADATA_KEY: DEMO_CONFIG}


def _controlnet() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A ControlNet for the demo UNet, in diffusers' key layout (loaded the same single-file way).
    A real ControlNet starts with zero convolutions, which would make it change nothing: here
    they, and the control image's last embedding conv, get random weights, so a unit visibly
    changes the image and the control image matters."""
    import torch
    from diffusers import ControlNetModel

    unet = build_demo_components(DEMO_CHECKPOINTS[0].seed)["unet"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_CONTROLNET.seed)
        controlnet = ControlNetModel.from_unet(unet)
        zeroed = [
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out,
        ]
        for conv in zeroed:
            conv.reset_parameters()
    return controlnet.state_dict(), {ARCHITECTURE_METADATA_KEY: DEMO_CONFIG}


def _lora() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A kohya-format LoRA (the A1111 format) on the attention projections, rank 4."""
    import torch

    components = build_demo_components(DEMO_LORA.seed)
    generator = torch.Generator().manual_seed(DEMO_LORA.seed)
    rank = 4
    state: dict[str, torch.Tensor] = {}
    targets = [
        ("lora_unet_", components["unet"], ("to_q", "to_k", "to_v", "to_out.0")),
        ("lora_te_", components["text_encoder"], ("q_proj", "k_proj", "v_proj", "out_proj")),
    ]
    for prefix, module, suffixes in targets:
        for name, sub in module.named_modules():
            if not isinstance(sub, torch.nn.Linear) or not name.endswith(suffixes):
                continue
            if prefix == "lora_te_" and not name.startswith("text_model."):
                name = "text_model." + name
            key = prefix + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = (
                torch.randn(rank, sub.in_features, generator=generator) * 0.5
            )
            state[f"{key}.lora_up.weight"] = (
                torch.randn(sub.out_features, rank, generator=generator) * 0.5
            )
            state[f"{key}.alpha"] = torch.tensor(float(rank))
    return state, {ARCHITECTURE_METADATA_KEY: DEMO_CONFIG}


# --- diffusers -> original (LDM) key layout -------------------------------------------------

_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]


def unet_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Inverse of diffusers' convert_ldm_unet_checkpoint for SD-style UNets of any depth."""
    per_level = config.layers_per_block + 1
    levels = len(config.block_out_channels)
    prefixes = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(levels):
        up_has_attention = config.up_block_types[i].startswith("CrossAttn")
        for j in range(config.layers_per_block):
            ldm = per_level * i + j + 1
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{ldm}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{ldm}.1."))
        for j in range(per_level):
            ldm = per_level * i + j
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{ldm}.0."))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{ldm}.1."))
        if i < levels - 1:
            prefixes.append(
                (
                    f"down_blocks.{i}.downsamplers.0.conv.",
                    f"input_blocks.{per_level * (i + 1)}.0.op.",
                )
            )
            slot = 2 if up_has_attention else 1
            prefixes.append(
                (
                    f"up_blocks.{i}.upsamplers.0.",
                    f"output_blocks.{per_level * i + per_level - 1}.{slot}.",
                )
            )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = _swap_prefix(key, prefixes)
        if ".resnets." in key or key.startswith("mid_block.resnets"):
            for hf, sd in _RESNET:
                new = new.replace(f".{hf}.", f".{sd}.")
        out[new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    levels = len(config.block_out_channels)
    prefixes = []
    for i in range(levels):
        for j in range(config.layers_per_block + 1):
            prefixes.append(
                (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.")
            )
            prefixes.append(
                (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}.")
            )
        prefixes.append(
            (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
        )
        prefixes.append(
            (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")
        )
    for part in ("encoder", "decoder"):
        prefixes += [
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
            (f"{part}.mid_block.attentions.0.group_norm.", f"{part}.mid.attn_1.norm."),
            (f"{part}.mid_block.attentions.0.to_q.", f"{part}.mid.attn_1.q."),
            (f"{part}.mid_block.attentions.0.to_k.", f"{part}.mid.attn_1.k."),
            (f"{part}.mid_block.attentions.0.to_v.", f"{part}.mid.attn_1.v."),
            (f"{part}.mid_block.attentions.0.to_out.0.", f"{part}.mid.attn_1.proj_out."),
            (f"{part}.conv_norm_out.", f"{part}.norm_out."),
        ]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = _swap_prefix(key, prefixes).replace(".conv_shortcut.", ".nin_shortcut.")
        if ".attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # LDM stores these as 1x1 convolutions
        out[new] = value
    return out


def _swap_prefix(key: str, prefixes: list[tuple[str, str]]) -> str:
    for hf, sd in prefixes:
        if key.startswith(hf):
            return sd + key[len(hf) :]
    return key


DEMO_XL = DemoFile("atelier-demo-xl", "Stable-diffusion", 6)


def write_demo_xl_folder(models_dir: Path, cache_dir: Path) -> Path:
    """A tiny SDXL-architecture pipeline as a diffusers-format folder (two text encoders,
    text_time conditioning), for tests of the SDXL and the folder-loading paths."""
    folder = models_dir / DEMO_XL.folder / DEMO_XL.name
    if (folder / "model_index.json").exists():
        return folder
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    from gpu_worker.clip_vocab import write_tokenizer_folder
    from gpu_worker.loading import quiet_libraries

    quiet_libraries()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_XL.seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=8 * 6 + 32,
            cross_attention_dim=64,
            norm_num_groups=16,
        )
        vae = AutoencoderKL.from_config({**_config("vae"), "scaling_factor": 0.13025})
        text_config = CLIPTextConfig(
            **{**_strip_private(_config("text_encoder")), "hidden_act": "gelu"}
        )
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_folder(cache_dir / "tok-xl-1"))
    tokenizer_2 = CLIPTokenizer.from_pretrained(
        write_tokenizer_folder(cache_dir / "tok-xl-2", pad_token="!")  # noqa: S106 - a token
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )
    tmp = folder.with_name(f".{folder.name}.tmp")
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.replace(folder)
    return folder
