"""The txt2img/img2img response: `{images: [base64 PNG], parameters: <echo>, info: "<JSON>"}`.

`info` is a JSON *string*, as A1111's `Processed.js()` makes it, with one infotext per image.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from generation.a1111.translation import Translated
from generation.models import Job, JobImage
from gpu_worker.infotext import CORE_KEY_ORDER, parse_infotext

TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"
# Keys of a parsed infotext that are not "extra generation parameters" in A1111's sense.
NOT_EXTRA = {*CORE_KEY_ORDER, "Prompt", "Negative prompt", "Size-1", "Size-2", "Version"}


def job_timestamp(job: Job) -> str:
    return (job.started_at or job.created_at).strftime(TIMESTAMP_FORMAT)


def _extra_params(infotext: str) -> dict[str, str]:
    parsed = parse_infotext(infotext) if infotext else {}
    extra = {k: v for k, v in parsed.items() if k not in NOT_EXTRA}
    if "Schedule type" in parsed:  # A1111 >= 1.9 keeps it with the extras
        extra["Schedule type"] = parsed["Schedule type"]
    if parsed.get("Clip skip") == "1":
        extra.pop("Clip skip", None)
    return extra


def build_info(job: Job, images: list[JobImage]) -> dict[str, Any]:
    p = job.params
    count = job.image_count
    seeds = [image.seed for image in images] or [p["seed"] + i for i in range(count)]
    # image i of the job used subseed + i (older jobs had none: A1111's -1)
    subseeds = [p["subseed"] + s - p["seed"] if "subseed" in p else -1 for s in seeds]
    infotexts = [image.infotext for image in images]
    first = parse_infotext(infotexts[0]) if infotexts else {}
    vae = p.get("vae")
    hires = p.get("hires")
    denoising = hires["denoising_strength"] if hires else p.get("denoising_strength")
    checkpoint = job.checkpoint
    return {
        "prompt": p["prompt"],
        "all_prompts": [p["prompt"]] * len(seeds),
        "negative_prompt": p["negative_prompt"],
        "all_negative_prompts": [p["negative_prompt"]] * len(seeds),
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": subseeds[0],
        "all_subseeds": subseeds,
        "subseed_strength": p.get("subseed_strength", 0),
        "width": p["width"],
        "height": p["height"],
        "sampler_name": p["sampler"],
        "cfg_scale": p["cfg_scale"],
        "steps": p["steps"],
        "batch_size": p["batch_size"],
        "restore_faces": bool(p.get("restore_faces")),
        # the restorer that ran, as the infotext names it (older jobs: GFPGAN, the only one)
        "face_restoration_model": (first.get("Face restoration") or "GFPGAN")
        if p.get("restore_faces")
        else None,
        "sd_model_name": checkpoint.name,
        "sd_model_hash": checkpoint.short_hash or None,
        "sd_vae_name": vae,
        "sd_vae_hash": first.get("VAE hash") if vae else None,
        "seed_resize_from_w": p.get("seed_resize_from_w") or -1,
        "seed_resize_from_h": p.get("seed_resize_from_h") or -1,
        "denoising_strength": denoising,
        "extra_generation_params": _extra_params(infotexts[0]) if infotexts else {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": job_timestamp(job),
        "clip_skip": p.get("clip_skip", 1),
        "is_using_inpainting_conditioning": False,
        "version": first.get("Version", ""),
    }


def _base64(image: JobImage) -> str:
    with image.file.open("rb") as fh:
        return base64.b64encode(fh.read()).decode("ascii")


def generation_response(job: Job, request: Translated) -> dict[str, Any]:
    """Reads the image files: call it from a thread (sync_to_async)."""
    images = list(JobImage.objects.filter(job=job).order_by("index"))
    return {
        "images": [_base64(image) for image in images] if request.send_images else [],
        "parameters": request.parameters,
        "info": json.dumps(build_info(job, images)),
    }
