"""LoRA training rules both sides need, torch-free: aspect buckets, steps per epoch, the work
an epoch is priced by, and the kohya/A1111 file format (key names and ss_* metadata).

The platform prices and counts a training job with these functions at submission (it knows the
dataset's image sizes); the worker buckets, batches and names its output with the same ones, so
the steps the price was made from are the steps that run.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

# A training step (forward and backward through the UNet) costs about three UNet evaluations:
# the backward pass does roughly twice the forward's arithmetic.
TRAIN_STEP_EVALUATIONS = 3
# Training the text encoder(s) too adds their backward pass: a modest share on top.
TEXT_ENCODER_FACTOR = 1.25
MIN_BUCKET_SIDE = 8
MAX_ASPECT = 4.0  # buckets between 1:4 and 4:1, as kohya's defaults allow


def bucket_step(resolution: int) -> int:
    """Bucket sides are multiples of 64 (kohya's default) at real sizes; tiny test sizes use 8
    (the VAE's factor), so a 32 px dataset still buckets."""
    return 64 if resolution >= 256 else 8


def buckets(resolution: int) -> list[tuple[int, int]]:
    """(width, height) pairs of about resolution² pixels, sides multiples of `bucket_step`."""
    step = bucket_step(resolution)
    area = resolution * resolution
    found: set[tuple[int, int]] = {(resolution // step * step,) * 2}
    width = step
    while width <= resolution * 2:
        height = (area // width) // step * step
        if height >= step and max(width / height, height / width) <= MAX_ASPECT:
            found.add((width, height))
        width += step
    return sorted(found)


def bucket_for(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (ties: the larger area)."""
    aspect = math.log(width / height)
    return min(
        buckets(resolution),
        key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -(b[0] * b[1])),
    )


def batches_per_epoch(
    sizes: Sequence[tuple[int, int]], resolution: int, repeats: int, batch_size: int
) -> int:
    """Optimizer steps in one epoch: each image `repeats` times, batched within its bucket."""
    per_bucket = Counter(bucket_for(w, h, resolution) for w, h in sizes)
    return sum(math.ceil(n * repeats / batch_size) for n in per_bucket.values())


def class_image_side(resolution: int) -> int:
    """The side of the square class images the platform generates for a training (at least
    the generator's smallest side; any square lands in the square bucket)."""
    return max(64, resolution // 8 * 8)


def epoch_work(
    sizes: Sequence[tuple[int, int]],
    resolution: int,
    repeats: int,
    train_text_encoder: bool,
    sample_pixels: int,
    sample_steps: int,
    *,
    class_sizes: Sequence[tuple[int, int]] = (),
    batch_size: int = 1,
) -> int:
    """Pixel-evaluations one epoch costs (the unit generation is priced in): each image's
    bucket area, times repeats, times a training step's evaluations, plus the epoch's sample.
    Backpropagating into the text encoder (LoRA on CLIP, or textual inversion, whose gradient
    must cross the UNet and CLIP to reach its vectors) costs TEXT_ENCODER_FACTOR more. Prior
    preservation adds a class batch to every step: the mean class image's area as often."""
    pixels = sum(math.prod(bucket_for(w, h, resolution)) for w, h in sizes)
    work = pixels * repeats * TRAIN_STEP_EVALUATIONS
    if class_sizes:
        areas = [math.prod(bucket_for(w, h, resolution)) for w, h in class_sizes]
        steps = batches_per_epoch(sizes, resolution, repeats, batch_size)
        mean_area = sum(areas) / len(areas)
        work += int(steps * batch_size * mean_area * TRAIN_STEP_EVALUATIONS)
    if train_text_encoder:
        work = int(work * TEXT_ENCODER_FACTOR)
    return work + sample_pixels * sample_steps


# --- kohya / A1111 LoRA format --------------------------------------------------------------
UNET_PREFIX = "lora_unet"
# SD1.x has one text encoder (lora_te_); SDXL two (lora_te1_, lora_te2_), as sd-scripts names them.
TEXT_ENCODER_PREFIXES = {"sd1": ("lora_te",), "sdxl": ("lora_te1", "lora_te2")}
# Modules the LoRA adapts: attention projections of the UNet's transformers and of CLIP.
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
PEFT_DOWN, PEFT_UP = ".lora_A.weight", ".lora_B.weight"


_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.")
_MID = re.compile(r"^mid_block\.attentions\.0\.")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.")


def sgm_unet_path(path: str, layers_per_block: int) -> str:
    """A diffusers UNet module path in SDXL's original (SGM) block names, which kohya writes for
    SDXL and A1111 reads: down_blocks.i.attentions.j is input_blocks.(1 + i(L+1) + j).1,
    mid_block.attentions.0 is middle_block.1, up_blocks.i.attentions.j is
    output_blocks.(i(L+1) + j).1, with L resnets a down block (one more a up block)."""
    step = layers_per_block + 1
    if m := _DOWN.match(path):
        index = 1 + int(m[1]) * step + int(m[2])
        return f"input_blocks.{index}.1.{path[m.end() :]}"
    if m := _MID.match(path):
        return f"middle_block.1.{path[m.end() :]}"
    if m := _UP.match(path):
        index = int(m[1]) * step + int(m[2])
        return f"output_blocks.{index}.1.{path[m.end() :]}"
    return path


def kohya_name(prefix: str, module_path: str) -> str:
    """`down_blocks.0.attentions.0...attn1.to_q` -> `lora_unet_down_blocks_0_..._attn1_to_q`."""
    return f"{prefix}_{module_path.replace('.', '_')}"


def kohya_keys(prefix: str, peft_keys: Iterable[str]) -> dict[str, str]:
    """peft's adapter keys (`<module>.lora_A.weight` / `.lora_B.weight`) to kohya's
    (`<name>.lora_down.weight` / `.lora_up.weight`); `.alpha` keys are added by the writer."""
    mapping: dict[str, str] = {}
    for key in peft_keys:
        if key.endswith(PEFT_DOWN):
            mapping[key] = kohya_name(prefix, key[: -len(PEFT_DOWN)]) + ".lora_down.weight"
        elif key.endswith(PEFT_UP):
            mapping[key] = kohya_name(prefix, key[: -len(PEFT_UP)]) + ".lora_up.weight"
        else:
            raise ValueError(f"not a LoRA adapter weight: {key}")
    return mapping


BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}


def tag_frequency(captions: Iterable[str], folder: str) -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: comma-separated caption tags counted per dataset folder."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(tag.strip() for tag in caption.split(",") if tag.strip())
    return {folder: dict(counts)}


def training_metadata(
    *,
    family: str,
    output_name: str,
    base_name: str,
    base_sha256: str,
    rank: int,
    alpha: float,
    epochs: int,
    epoch: int,
    steps: int,
    learning_rate: float,
    resolution: int,
    repeats: int,
    captions: Sequence[str],
    train_text_encoder: bool,
    seed: int,
) -> dict[str, str]:
    """The ss_* strings kohya's sd-scripts write and A1111 and Civitai read (all strings: the
    safetensors metadata is str -> str)."""
    folder = f"{repeats}_{output_name}"
    values: Mapping[str, object] = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": rank,
        "ss_network_alpha": alpha,
        "ss_base_model_version": BASE_MODEL_VERSIONS.get(family, family),
        "ss_sd_model_name": base_name,
        "ss_sd_model_hash": base_sha256[:8],
        "ss_new_sd_model_hash": base_sha256,
        "ss_output_name": output_name,
        "ss_num_epochs": epochs,
        "ss_epoch": epoch,
        "ss_steps": steps,
        "ss_learning_rate": learning_rate,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_enable_bucket": True,
        "ss_num_train_images": len(captions) * repeats,
        "ss_seed": seed,
        "ss_network_train_unet_only": not train_text_encoder,
        "ss_tag_frequency": json.dumps(tag_frequency(captions, folder)),
        "ss_training_comment": "trained on Atelier",
        "modelspec.architecture": (
            "stable-diffusion-xl-v1-base/lora" if family == "sdxl" else "stable-diffusion-v1/lora"
        ),
    }
    return {key: str(value) for key, value in values.items()}


# --- A1111 textual-inversion embedding format -------------------------------------------------


def embedding_metadata(
    *, name: str, step: int, base_name: str, base_sha256: str, family: str
) -> dict[str, str]:
    """What A1111 stores beside an embedding's vectors (`name`, `step`, `sd_checkpoint` as the
    checkpoint's short hash, `sd_checkpoint_name`), as safetensors metadata strings."""
    return {
        "name": name,
        "step": str(step),
        "sd_checkpoint": base_sha256[:10],
        "sd_checkpoint_name": base_name,
        "modelspec.architecture": (
            "stable-diffusion-xl-v1-base/textual-inversion"
            if family == "sdxl"
            else "stable-diffusion-v1/textual-inversion"
        ),
    }
