"""Price of a job in credits: proportional to the denoising work it asks for.

One unit is a 512x512, 20-step single image (1.00 credit at a model's cost multiplier 1). The
sizes and steps are the engine's own (gpu_worker.passes), so a job is priced for what it runs.
An Extras job (an upscale) is priced per output megapixel by gpu_worker.extras_plan's rule.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Any

from gpu_worker import extras_plan
from gpu_worker.merge_rules import input_bytes, merge_price
from gpu_worker.params import DEFAULTS, HIRES_DEFAULTS, GenerationParams, TrainParams
from gpu_worker.passes import (
    controlnet_factor,
    denoised_size,
    evaluations,
    first_pass_steps,
    hires_pass_steps,
    hires_size,
    progress_steps,
)
from gpu_worker.training_rules import batches_per_epoch, class_image_side, epoch_work

UNIT_WORK = 512 * 512 * 20
CENT = Decimal("0.01")

# A job's params, or only some of them (the rest at their defaults).
SomeParams = GenerationParams | dict[str, Any]


def _filled(params: SomeParams) -> GenerationParams:
    """Missing fields at their defaults: the pricing page prices partial examples, and the
    speed model reads rows from before every field was kept."""
    full: dict[str, Any] = {"mode": "txt2img", **DEFAULTS, **params}
    if full.get("hires"):
        full["hires"] = {**HIRES_DEFAULTS, **full["hires"]}
    return full  # type: ignore[return-value]


def final_size(params: GenerationParams) -> tuple[int, int]:
    """Size of the images a job makes: the hires target when hires fix is on."""
    hires = params.get("hires") if params["mode"] == "txt2img" else None
    if hires:
        return hires_size(params["width"], params["height"], hires)
    return params["width"], params["height"]


def work_units(params: SomeParams) -> int:
    """Pixel-steps of the whole job, all images: a step is one UNet evaluation, so a
    second-order sampler (Heun, DPM2, DPM++ SDE) costs 2N-1 steps for N."""
    if params.get("mode") == "merge":  # no pixel-steps: priced by bytes, kept out of speeds
        return 0
    params = _filled(params)
    if params["mode"] == "train":
        return training_epoch_work(params) * params["train"]["epochs"]
    if params["mode"] == "extras":  # in the speed model's unit: the credits' worth of UNIT_WORK
        extras = params.get("extras")
        return int(extras_plan.credits(extras) * UNIT_WORK) if extras else 0
    images = int(params["batch_size"]) * int(params["n_iter"])
    width, height = denoised_size(params)  # inpainting: the canvas or crop actually denoised
    per_image = width * height * evaluations(params, first_pass_steps(params))
    if hires_steps := hires_pass_steps(params):
        width, height = final_size(params)
        per_image += width * height * evaluations(params, hires_steps)
    per_image = int(per_image * controlnet_factor(params))  # units act on both passes
    if params.get("restore_faces"):  # one face pass per image (extras_plan's fixed share)
        per_image += int(extras_plan.face_restore_credits() * UNIT_WORK)
    return per_image * images


def total_steps(params: SomeParams) -> int:
    """Sampling steps the engine reports progress over (first and hires pass, every batch):
    `Job.total_steps`; an Extras job's are its tiles (extras_plan.progress_units), a training
    job's its optimizer steps, all epochs."""
    params = _filled(params)
    if params["mode"] == "extras":
        return extras_plan.progress_units(params.get("extras") or {})
    if params["mode"] == "train":
        train = params["train"]
        return _batches_per_epoch(train) * train["epochs"]
    return progress_steps(params)


def _batches_per_epoch(train: TrainParams) -> int:
    sizes = [(i["width"], i["height"]) for i in train["images"]]
    return batches_per_epoch(sizes, train["resolution"], train["repeats"], train["batch_size"])


def _class_sizes(train: TrainParams) -> list[tuple[int, int]]:
    """Prior preservation's class images: frozen ones, or the squares still to be generated."""
    if not train.get("prior_loss_weight"):
        return []
    if train.get("class_images"):
        return [(i["width"], i["height"]) for i in train["class_images"]]
    side = class_image_side(train["resolution"])
    return [(side, side)] * int(train.get("class_count") or 0)


def training_epoch_work(params: GenerationParams) -> int:
    """One epoch of a training job: its images at their buckets' sizes, times repeats, as
    training steps (gpu_worker.training_rules), plus the epoch's sample image."""
    train = params["train"]
    return epoch_work(
        [(i["width"], i["height"]) for i in train["images"]],
        train["resolution"],
        train["repeats"],
        # textual inversion's gradient crosses the text encoder as a CLIP LoRA's does
        train["train_text_encoder"] or train.get("method") == "textual_inversion",
        params["width"] * params["height"],
        evaluations(params, params["steps"]),
        class_sizes=_class_sizes(train),
        batch_size=train["batch_size"],
    )


def epoch_price(params: SomeParams, checkpoint: Any) -> Decimal:
    """What one finished epoch of a training job is charged (the job holds epochs times it)."""
    multiplier = Decimal(str(getattr(checkpoint, "cost_multiplier", 1)))
    raw = Decimal(training_epoch_work(_filled(params))) / Decimal(UNIT_WORK) * multiplier
    return raw.quantize(CENT, rounding=ROUND_CEILING)


def price_job(params: SomeParams, checkpoint: Any) -> Decimal:
    if params.get("mode") == "train":  # a whole number of epochs, each charged as it ends
        return epoch_price(params, checkpoint) * int(params["train"]["epochs"])
    if params.get("mode") == "merge" and params.get("merge"):  # by the bytes it reads
        return merge_price(input_bytes(params["merge"]))  # type: ignore[arg-type]
    multiplier = Decimal(str(getattr(checkpoint, "cost_multiplier", 1)))
    if params.get("mode") == "extras":
        rate = Decimal(str(extras_plan.CREDITS_PER_MEGAPIXEL))
        megapixels = Decimal(str(extras_plan.work_megapixels(params.get("extras") or {})))
        raw = megapixels * rate * multiplier
        return max(CENT, raw.quantize(CENT, rounding=ROUND_CEILING))
    raw = Decimal(work_units(params)) / Decimal(UNIT_WORK) * multiplier
    return raw.quantize(CENT, rounding=ROUND_CEILING)
