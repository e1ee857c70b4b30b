"""Which jobs may share one UNet batch (cross-user batching), defined once for both sides.

Torch- and Django-free: the platform's scheduler calls `batch_key` on a job's stored params to
hand a busy worker compatible companions, and the GPU worker calls it on each request to pick
the messages in its queue that join the batch it runs (gpu_worker/batching.py). Two jobs with
the same key run their denoising steps in one UNet call; `None` means the job always runs alone.

What must be equal is what the UNet and its weights see: the checkpoint and VAE, the LoRA set
(names and weights, in order: the adapters are summed in that order), the size (the latents'
shape) and the sampler family (the diffusers scheduler class: every job keeps its own scheduler,
timesteps, seed, prompt, CFG and step count; one class keeps the timesteps' dtype the same).
The checkpoint also fixes the family: an SDXL job only ever shares a batch with SDXL jobs of
that checkpoint, each with its own pooled embeddings and size ids (gpu_worker/batch_families.py).

Kept on the serial path, because their passes are not one plain denoising loop: img2img and
inpainting (their own noise and masks), hires fix (a second pass at another size), ControlNet
(extra residuals per unit), prompt editing and alternation (conditioning switched per step),
variation seeds and tiling (their own noise; circular padding changes the shared UNet), batch
count > 1 (iterations one after another), and members' uploads (two owners' models may share a
name). The worker also runs alone what its checkpoint cannot batch (inpainting UNets, LCM's
guidance embedding, SDXL refiners).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gpu_worker.prompt_syntax import PromptSyntaxError, extract_loras, prompt_schedule
from gpu_worker.samplers import UnknownSampler, resolve_sampler

# The most jobs the scheduler hands one worker for one batch, and the most images a worker
# puts in one UNet batch by default (`--batch-max`): beyond that, a GPU is saturated anyway.
MAX_BATCH_JOBS = 8
MAX_BATCH_IMAGES = 8


def sampler_family(sampler: str | None, schedule: str | None = None) -> str | None:
    """The diffusers scheduler class the sampler runs on; None for an unknown one."""
    try:
        return resolve_sampler(sampler, schedule).sampler.scheduler_class
    except UnknownSampler:
        return None


def batch_key(params: Mapping[str, Any], *, has_uploads: bool = False) -> str | None:
    """The group key of a job (equal keys share UNet calls), or None when it runs alone."""
    if has_uploads or params.get("models"):
        return None
    if params.get("mode") != "txt2img" or params.get("hires") or params.get("controlnet"):
        return None
    if params.get("restore_faces"):
        return None  # a per-image pass after decoding, on the serial path
    if params.get("tiling") or params.get("inpaint") or int(params.get("n_iter") or 1) != 1:
        return None
    if float(params.get("subseed_strength") or 0) or params.get("seed_resize_from_w"):
        return None
    family = sampler_family(params.get("sampler"), params.get("scheduler"))
    if family is None:
        return None
    steps = int(params.get("steps") or 1)
    try:
        prompt, loras = extract_loras(str(params.get("prompt") or ""))
        negative, _ = extract_loras(str(params.get("negative_prompt") or ""))
        if len(prompt_schedule(prompt, steps)) > 1 or len(prompt_schedule(negative, steps)) > 1:
            return None  # prompt editing or alternation: the conditioning changes per step
    except PromptSyntaxError:
        return None  # the serial path reports it
    key = [
        params.get("checkpoint"),
        params.get("vae"),
        [[t.name, t.unet_weight, t.text_encoder_weight] for t in loras],
        int(params.get("width") or 0),
        int(params.get("height") or 0),
        family,
    ]
    return json.dumps(key, separators=(",", ":"))
