"""The generation request, defined once: what a job asks for, from any front door to the engine.

Torch- and Django-free. The platform validates every front door's input into a
`GenerationParams` (generation.submission), stores exactly that as `Job.params`, and sends it to a
worker with an envelope (protocol.GenerationRequest); the engine reads the same keys.

To add a parameter: add it here (type, default), read it in gpu_worker/engine.py, validate it in
generation/submission.py and show it on the generator page; the front-door test
(tests/generation/test_request_fields.py) names each place that must carry it.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

GenerationMode = Literal["txt2img", "img2img", "extras", "merge", "train"]


class HiresParams(TypedDict):
    """txt2img hires fix: a second img2img pass at a larger size."""

    scale: float  # upscale factor of the first pass (ignored when resize_x/y are set)
    resize_x: int  # target width; 0: from resize_y keeping the aspect ratio, or from scale
    resize_y: int  # target height; 0: likewise
    upscaler: str  # one of passes.UPSCALERS
    second_pass_steps: int  # 0: same as steps
    denoising_strength: float  # in (0, 1]


class InpaintParams(TypedDict):
    """img2img inpainting and outpainting, with A1111's names and meanings (the mask itself, white
    = repaint, travels beside the job like the init image)."""

    mask_blur_x: int  # Gaussian blur of the mask edge, in pixels (A1111's mask_blur sets both)
    mask_blur_y: int
    inpainting_fill: int  # masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool  # "only masked": crop mask + padding, denoise at width x height
    inpaint_full_res_padding: int  # pixels around the mask's box in the "only masked" crop
    inpainting_mask_invert: bool  # repaint the black part instead
    initial_noise_multiplier: float  # scales the starting noise (A1111's img2img option)
    outpaint_left: int  # outpainting: pixels the canvas grows by on each side (new area = mask)
    outpaint_top: int
    outpaint_right: int
    outpaint_bottom: int


# --- LoRA training (issue 20): a job of mode "train" -----------------------------------------
# The job's generation fields describe the sample rendered after each epoch (prompt, negative
# prompt, sampler, steps, cfg, width, height); `seed` seeds the training itself and the samples.
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)


class TrainImage(TypedDict):
    """One image of the dataset as the job froze it at submission (later caption edits do not
    change a running job, so a resumed job trains on exactly what it began with)."""

    sha256: str  # of the re-encoded PNG the platform stores
    caption: str  # the trigger word already put in front
    width: int
    height: int


class TrainParams(TypedDict):
    dataset_id: int
    output_name: str  # the private LoRA it becomes (catalogue name)
    trigger_word: str
    rank: int  # network dim
    alpha: float  # network alpha (kohya): the update is scaled by alpha / rank
    learning_rate: float
    lr_scheduler: str  # one of LR_SCHEDULERS
    lr_warmup_steps: int
    epochs: int
    repeats: int  # each image is seen this many times per epoch (kohya's folder prefix)
    batch_size: int
    resolution: int  # side of the square whose area buckets keep
    train_text_encoder: bool
    images: list[TrainImage]
    # What is trained: "lora", or "textual_inversion" (A1111's Train embedding: one new
    # embedding named output_name, num_vectors per token, started from init_text's tokens).
    method: str
    num_vectors: int
    init_text: str
    # DreamBooth's prior preservation (LoRA): class images from a second dataset of the
    # member's, captioned with class_prompt where they have no caption; their loss counts
    # prior_loss_weight times (0: off).
    class_dataset_id: int | None
    class_prompt: str
    class_count: int  # >0: the platform generates that many class images first (a txt2img job)
    prior_loss_weight: float
    class_images: list[TrainImage]


TRAIN_DEFAULTS: dict[str, Any] = {
    "rank": 16,
    "alpha": 8.0,
    "learning_rate": 1e-4,
    "lr_scheduler": "constant",
    "lr_warmup_steps": 0,
    "epochs": 10,
    "repeats": 10,
    "batch_size": 1,
    "resolution": 512,
    "train_text_encoder": False,
    "method": "lora",
    "num_vectors": 1,
    "init_text": "*",
    "class_dataset_id": None,
    "class_prompt": "",
    "class_count": 0,
    "prior_loss_weight": 1.0,
}
TRAIN_METHODS = ("lora", "textual_inversion")
TRAIN_FIELDS = frozenset(TrainParams.__annotations__) - {"images", "class_images"}
# --------------------------------------------------------------------------------------------


class ExtrasParams(TypedDict):
    """An Extras job (issue 17): upscale a finished image or an upload, A1111's extras tab. The
    source travels beside the job like img2img's init image; sizes and tiles come from
    gpu_worker.extras_plan, shared by the platform (price, limits, progress) and the engine."""

    source_width: int  # the source image's size, read at submission
    source_height: int
    source_image_id: str | None  # the member's JobImage it came from; None: an upload
    resize_mode: int  # 0: scale by `scale`; 1: to target_width x target_height
    scale: float  # A1111's upscaling_resize
    target_width: int  # A1111's upscaling_resize_w (resize_mode 1)
    target_height: int  # A1111's upscaling_resize_h
    crop: bool  # resize_mode 1: crop the result to exactly the target (upscaling_crop)
    upscaler_1: str  # "None", "Lanczos", "Nearest" or an upscaler model's catalogue name
    upscaler_2: str  # likewise; "None": no second upscaler
    upscaler_2_visibility: float  # 0..1: how much of upscaler_2's result is blended in
    upscaler_1_scale: int  # the models' native factors (catalogue), for the tile plan
    upscaler_2_scale: int
    gfpgan_visibility: float  # face restoration after the upscale, as A1111 orders them (0: off)
    face_restorer: str  # catalogue name of the GFPGAN model it uses ("" when none runs)
    codeformer_visibility: float  # CodeFormer: only with the operator's licence setting
    codeformer_weight: float  # its fidelity: 0 = maximum effect, 1 = minimum (A1111)
    codeformer: NotRequired[str]  # catalogue name of the CodeFormer model ("" when none runs)


# --- ControlNet units (issue 22): sd-webui-controlnet's field names -------------------------
ControlMode = Literal["balanced", "prompt", "controlnet"]
CONTROL_MODES: tuple[ControlMode, ...] = ("balanced", "prompt", "controlnet")


class ControlNetUnit(TypedDict):
    """One ControlNet unit. A request sends `image` (base64) or none (img2img: the source);
    the stored unit keeps the image's sha256, its PNG stored beside the job."""

    image_sha256: str | None  # the control image; None: the img2img source image
    module: str  # preprocessor, one of preprocessors.BUILT_IN ("none": already a map)
    model: str  # catalogue name of a ControlNet (models/ControlNet/)
    weight: float
    guidance_start: float  # fraction of the steps where the unit starts acting
    guidance_end: float  # ... and stops
    control_mode: ControlMode  # A1111: Balanced / My prompt is more important / ControlNet is...
    resize_mode: int  # fitting the image to the job: 0 just resize, 1 crop, 2 resize and fill
    pixel_perfect: bool  # processor_res from the job's size instead of processor_res
    processor_res: int  # the preprocessor's working resolution (short side)
    threshold_a: float  # canny: low threshold
    threshold_b: float  # canny: high threshold


CONTROLNET_UNIT_DEFAULTS: dict[str, Any] = {
    "module": "none",
    "weight": 1.0,
    "guidance_start": 0.0,
    "guidance_end": 1.0,
    "control_mode": "balanced",
    "resize_mode": 1,
    "pixel_perfect": False,
    "processor_res": 512,
    "threshold_a": 100.0,
    "threshold_b": 200.0,
}
# What a request's unit may name: the stored fields, less the hash, plus the image itself.
CONTROLNET_UNIT_FIELDS = frozenset(ControlNetUnit.__annotations__) - {"image_sha256"} | {"image"}
# --------------------------------------------------------------------------------------------

# --- Checkpoint merger (issue 19): A1111's names; rules in gpu_worker/merge_rules.py ----------
MergeMethod = Literal["No interpolation", "Weighted sum", "Add difference"]


class MergeInput(TypedDict):
    """One input of a merge, pinned by hash: the recipe names bytes, not a name that may change."""

    name: str  # catalogue name the worker resolves (a member's upload travels as a delivery)
    sha256: str
    size_bytes: int


class MergeParams(TypedDict):
    """A merge job (mode "merge") or a virtual model's recipe: A, B, C as A1111 names them."""

    method: MergeMethod
    primary: MergeInput  # A
    secondary: MergeInput | None  # B (Weighted sum, Add difference)
    tertiary: MergeInput | None  # C (Add difference)
    multiplier: float  # M
    block_weights: list[float] | None  # per-block M (BASE, IN.., M00, OUT..); None: M everywhere
    save_as_half: bool  # float tensors written as fp16
    bake_in_vae: MergeInput | None  # a VAE whose weights replace first_stage_model.*
    discard_weights: str  # regex; matching keys are left out of the output
    name: str  # the output model's name (unique per owner)


# --------------------------------------------------------------------------------------------


class GenerationParams(TypedDict):
    """Everything one job asks for, validated and normalised (`Job.params`)."""

    mode: GenerationMode
    checkpoint: str  # catalogue name of the checkpoint (file name without extension)
    vae: str | None  # catalogue name of a VAE, or None for the checkpoint's own
    prompt: str  # A1111 syntax (prompt_syntax): (emphasis:1.2), [less], BREAK, <lora:name:w>
    negative_prompt: str
    sampler: str  # A1111 sampler name, e.g. "DPM++ 2M" (samplers.resolve_sampler)
    scheduler: str  # A1111 schedule type label, e.g. "Karras"; "Automatic" by default
    steps: int
    cfg_scale: float
    width: int
    height: int
    seed: int  # already resolved: never -1 here; image i of the job uses seed + i
    batch_size: int
    n_iter: int
    clip_skip: int  # 1 = last layer (A1111 semantics)
    denoising_strength: float  # img2img strength (the hires pass has its own)
    resize_mode: int  # img2img: 0 just resize, 1 crop and resize, 2 resize and fill
    hires: HiresParams | None  # txt2img hires fix; None = off (always None for img2img)
    loras: list[str]  # catalogue names of the LoRAs the prompts name (derived, sorted)
    # A1111's toolset (issue 17): variation seeds (gpu_worker/noise.py), tiling (tiling.py).
    # Submission always sets them; jobs stored before them, and the CLI, leave them out (off).
    subseed: NotRequired[int]  # variation seed, already resolved (never -1); image i: subseed + i
    subseed_strength: NotRequired[float]  # 0: no variation; 1: the subseed's noise alone
    seed_resize_from_w: NotRequired[int]  # 0: off; else the noise is made at this size, centred
    seed_resize_from_h: NotRequired[int]  # 0: off (both or neither)
    tiling: NotRequired[bool]  # seamless textures: circular padding in UNet and VAE convolutions
    restore_faces: NotRequired[bool]  # A1111's face restoration of each finished image
    face_restorer: NotRequired[str | None]  # its model (derived: generation.face_models)
    face_restoration_model: NotRequired[str]  # A1111's choice: "GFPGAN", "CodeFormer", "": default
    code_former_weight: NotRequired[float]  # CodeFormer's fidelity, 0..1 (A1111: 0.5)
    # ControlNet units, applied together; [] (or absent, in rows stored before them) = none.
    controlnet: NotRequired[list[ControlNetUnit]]
    # Inpainting / outpainting (img2img with a mask or grown sides); None = plain img2img.
    inpaint: NotRequired[InpaintParams | None]
    # LoRA training (mode "train"); absent for every other mode.
    train: NotRequired[TrainParams]
    # An Extras job (mode "extras"); None or absent for the generating modes.
    extras: NotRequired[ExtrasParams | None]
    # Checkpoint merger: set (and the image fields at their defaults) only when mode is "merge".
    merge: NotRequired[MergeParams | None]


CODE_FORMER_WEIGHT = 0.5  # A1111's default `code_former_weight` (restore_faces with CodeFormer)

# Defaults of a field a request leaves out (a checkpoint's own default_params come between).
DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "sampler": "DPM++ 2M",
    "scheduler": "Automatic",
    "steps": 20,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "seed": -1,
    "batch_size": 1,
    "n_iter": 1,
    "clip_skip": 1,
    "denoising_strength": 0.75,
    "resize_mode": 0,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_w": 0,
    "seed_resize_from_h": 0,
    "tiling": False,
    "restore_faces": False,
    "controlnet": [],
}
HIRES_DEFAULTS: HiresParams = {
    "scale": 2.0,
    "resize_x": 0,
    "resize_y": 0,
    "upscaler": "Latent",
    "second_pass_steps": 0,
    "denoising_strength": 0.7,
}

# Inpaint defaults: A1111's web UI ones (its API's differ: generation.a1111 applies those).
INPAINT_DEFAULTS: InpaintParams = {
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "inpainting_fill": 1,
    "inpaint_full_res": False,
    "inpaint_full_res_padding": 32,
    "inpainting_mask_invert": False,
    "initial_noise_multiplier": 1.0,
    "outpaint_left": 0,
    "outpaint_top": 0,
    "outpaint_right": 0,
    "outpaint_bottom": 0,
}
EXTRAS_DEFAULTS: dict[str, Any] = {
    "resize_mode": 0,
    "scale": 2.0,
    "target_width": 512,
    "target_height": 512,
    "crop": True,
    "upscaler_1": "Lanczos",
    "upscaler_2": "None",
    "upscaler_2_visibility": 0.0,
    "gfpgan_visibility": 0.0,
    "codeformer_visibility": 0.0,
    "codeformer_weight": 0.0,
}
INPAINT_FILLS = ("fill", "original", "latent noise", "latent nothing")  # by inpainting_fill
OUTPAINT_SIDES = ("outpaint_left", "outpaint_top", "outpaint_right", "outpaint_bottom")

# What a request may name: every parameter but the derived ones, plus the img2img source image
# (stored beside the job as a file, sent to the worker in the envelope), its inpaint mask
# (likewise) and the names of saved styles (applied to the prompts at submission: the job
# keeps the styled prompts).
DERIVED_FIELDS = frozenset({"loras", "face_restorer"})
# Blocks of other job kinds: each kind has its own front door (extras, merges; training at
# /api/v1/training/), so the generator's forms and APIs neither offer nor accept them.
KIND_BLOCKS = frozenset({"extras", "merge", "train"})
REQUEST_FIELDS = frozenset(GenerationParams.__annotations__) - DERIVED_FIELDS - KIND_BLOCKS | {
    "init_image",
    "mask",
    "styles",
}
HIRES_FIELDS = frozenset(HiresParams.__annotations__)
INPAINT_FIELDS = frozenset(InpaintParams.__annotations__)
