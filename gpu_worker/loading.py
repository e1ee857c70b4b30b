"""Loading checkpoints, VAEs and LoRAs offline from catalogue items (torch + diffusers).

Single-file checkpoints load with `from_single_file(..., config=<local folder>)`: the folder is
assembled once in a cache directory from the JSON configs shipped in gpu_worker/configs plus the
CLIP tokenizer derived from open-clip's vocabulary, so nothing is ever fetched from the hub.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from gpu_worker.catalogue import CatalogueItem
from gpu_worker.clip_vocab import write_tokenizer_folder
from gpu_worker.model_files import INPAINT_IN_CHANNELS, INPAINT_SUFFIX

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

SHIPPED_CONFIGS = Path(__file__).parent / "configs"
SUPPORTED_ARCHITECTURES = ("sd1", "sdxl", "tiny-sd1")
# A dedicated inpaint checkpoint of a supported architecture (model_files.INPAINT_SUFFIX) loads with
# the base config folder whose UNet reads 9 channels (latents, mask, masked-image latents).
SDXL_SECOND_PAD = "!"  # SDXL's second tokenizer pads with "!", the first with <|endoftext|>


class ModelLoadError(RuntimeError):
    """A model file that is missing, corrupt, or of an architecture we cannot load."""


def config_folder(architecture: str, cache_dir: Path) -> Path:
    """A complete offline diffusers config folder (configs + tokenizers) for an architecture."""
    base = architecture.removesuffix(INPAINT_SUFFIX)
    if base not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"no shipped config for architecture {architecture!r}")
    target = cache_dir / "configs" / architecture
    marker = target / ".complete"
    if marker.exists():
        return target
    shutil.copytree(SHIPPED_CONFIGS / base, target, dirs_exist_ok=True)
    if base != architecture:
        unet_config = target / "unet" / "config.json"
        config = json.loads(unet_config.read_text())
        unet_config.write_text(json.dumps({**config, "in_channels": INPAINT_IN_CHANNELS}))
    write_tokenizer_folder(target / "tokenizer")
    if (target / "text_encoder_2").is_dir():
        write_tokenizer_folder(target / "tokenizer_2", pad_token=SDXL_SECOND_PAD)
    marker.touch()
    return target


def architecture_of(item: CatalogueItem, state_dict: dict | None = None) -> str:
    if item.architecture:
        return item.architecture
    if state_dict is not None:
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type

        model_type = infer_diffusers_model_type(state_dict)
        mapped = {
            "v1": "sd1",
            "xl_base": "sdxl",
            "inpainting": "sd1" + INPAINT_SUFFIX,
            "xl_inpaint": "sdxl" + INPAINT_SUFFIX,
        }.get(model_type)
        if mapped:
            return mapped
        raise ModelLoadError(f"{item.filename}: architecture {model_type!r} is not supported")
    raise ModelLoadError(f"{item.filename}: family {item.family!r} is not supported")


def quiet_libraries() -> None:
    """No progress bars in a worker's log (one per component per load otherwise)."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()  # e.g. a float32-modules note on every cache move
    transformers_logging.disable_progress_bar()


def load_checkpoint(item: CatalogueItem, *, dtype: Any, cache_dir: Path) -> Any:
    """A StableDiffusion(XL)Pipeline on the CPU, from a single file or a diffusers folder."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    quiet_libraries()

    if not item.path.exists():
        raise ModelLoadError(f"model file {item.filename} is missing")
    if item.family == "sd2" and not item.is_folder:
        raise ModelLoadError(f"{item.filename}: SD 2.x single-file checkpoints are not supported")
    pipeline_cls = StableDiffusionXLPipeline if item.family == "sdxl" else StableDiffusionPipeline
    extra = (
        {} if item.family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    )
    try:
        if item.is_folder:
            return pipeline_cls.from_pretrained(
                item.path, dtype=dtype, local_files_only=True, **extra
            )
        state_dict = None
        if not item.architecture:
            from diffusers.loaders.single_file_utils import load_single_file_checkpoint

            state_dict = load_single_file_checkpoint(str(item.path), local_files_only=True)
        architecture = architecture_of(item, state_dict)
        folder = config_folder(architecture, cache_dir)
        source: Any = state_dict if state_dict is not None else str(item.path)
        if architecture.startswith("sdxl"):
            pipeline_cls, extra = StableDiffusionXLPipeline, {}
        return pipeline_cls.from_single_file(
            source, config=str(folder), local_files_only=True, dtype=dtype, **extra
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # safetensors/diffusers raise many kinds for a bad file
        raise ModelLoadError(f"cannot load model file {item.filename}: {exc}") from exc


def load_vae(item: CatalogueItem, *, architecture: str, dtype: Any, cache_dir: Path) -> Any:
    from diffusers import AutoencoderKL

    if not item.path.exists():
        raise ModelLoadError(f"VAE file {item.filename} is missing")
    try:
        if item.is_folder:
            return AutoencoderKL.from_pretrained(item.path, dtype=dtype, local_files_only=True)
        folder = config_folder(item.architecture or architecture, cache_dir)
        return AutoencoderKL.from_single_file(
            str(item.path),
            config=str(folder),
            subfolder="vae",
            local_files_only=True,
            dtype=dtype,
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load VAE file {item.filename}: {exc}") from exc


def architecture_for_pipe(pipe: Any) -> str:
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd1"
