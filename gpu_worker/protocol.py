"""The contract between the platform (Django) and GPU workers, shared by both sides.

This module is pure Python with no torch, diffusers or Django import: the web process imports it
to build messages, the GPU worker to read them. Messages travel as Dramatiq messages over Redis;
the database on the platform side stays the record of truth, a message is only a nudge.
"""

from __future__ import annotations

import re
from typing import Literal, NotRequired, TypedDict

from gpu_worker.params import GenerationParams, MergeParams

# Dramatiq queues and actor names. Each side sends to the other's actor by name with
# `dramatiq.Message(...)`, so neither side imports the other's code. Every GPU worker consumes
# only its own queue, `worker_queue(worker_id)`: the platform's scheduler decides which worker
# runs which job, so the choice of job stays on the platform until a worker is free.
GPU_QUEUE = "gpu"
GENERATE_ACTOR = "generate_images"
PLATFORM_QUEUE = "platform"
JOB_EVENT_ACTOR = "record_job_event"
# Argument names: the platform sends kwargs={GENERATE_KWARG: GenerationRequest} to GENERATE_ACTOR,
# the worker sends kwargs={JOB_EVENT_KWARG: JobEvent} to JOB_EVENT_ACTOR.
GENERATE_KWARG = "request"
JOB_EVENT_KWARG = "event"

# Redis keys (plain redis-py, same REDIS_URL as the broker).
CANCEL_KEY = "atelier:cancel:{job_id}"  # value: "interrupt" or "skip"; set by the platform
CANCEL_TTL_SECONDS = 24 * 3600
# JSON ProgressEvent: the latest step of a running job, written by the worker with a short
# expiry, so the platform can answer a poll (A1111's /progress) without the channel layer.
PROGRESS_KEY = "atelier:progress:{job_id}"
HEARTBEAT_KEY = "atelier:worker:{worker_id}"  # JSON WorkerHeartbeat, expires when the worker dies
HEARTBEAT_INDEX = "atelier:workers"  # set of worker ids ever seen (prune those whose key expired)
# A worker is declared dead once its key has been missing for WORKER_MISSING_GRACE_SECONDS: at
# most TTL + grace + one platform tick (~14 s) after its last beat. The grace outlasts two beats,
# so a Redis flush (every key gone at once) does not kill live workers: they beat again first.
HEARTBEAT_INTERVAL_SECONDS = 2
HEARTBEAT_TTL_SECONDS = 8
WORKER_MISSING_GRACE_SECONDS = 5
# Jobs a worker may hold at once: the one running plus one waiting in its queue, so the
# scheduler's choice for that worker is made as late as possible.
WORKER_SLOTS = 2
# Operator commands for one worker (JSON WorkerCommand items, RPUSH by the platform, LPOP by the
# worker on each heartbeat).
WORKER_COMMANDS_KEY = "atelier:worker:{worker_id}:commands"
# ControlNet preprocessor previews (/controlnet/detect, the generator's Preview button): a small
# request/response over Redis, not a Job. The platform RPUSHes a JSON DetectRequest onto the
# chosen worker's list and waits on the request's reply list (BLPOP) up to the request's
# deadline; the worker's responder thread BLPOPs its list and RPUSHes one DetectReply. Both lists
# expire, so a request to a worker that died is gone, not run later.
DETECT_QUEUE_KEY = "atelier:detect:{worker_id}"
DETECT_REPLY_KEY = "atelier:detect:reply:{request_id}"
DETECT_TIMEOUT_SECONDS = 15.0
DETECT_KEY_TTL_SECONDS = 60
# How fast a worker is assumed to fetch models from the platform's store until it has measured
# it (its `--download-mbps`, reported in its heartbeat); the scheduler turns bytes to fetch into
# seconds with it.
DEFAULT_DOWNLOAD_BYTES_PER_S = 50 * 2**20
STORED_KEY_PREFIX = "sha256:"

CancelKind = Literal["interrupt", "skip"]
# "released": the worker gives an assigned job back unstarted (draining or shutting down).
JobEventKind = Literal["started", "succeeded", "failed", "cancelled", "released"]

_QUEUE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def worker_queue(worker_id: str) -> str:
    """The Dramatiq queue of one GPU worker: `gpu.<worker id>`, with anything but letters,
    digits, `-` and `_` replaced (Dramatiq gives `.DQ`/`.XQ` suffixes a meaning)."""
    return f"{GPU_QUEUE}.{_QUEUE_UNSAFE.sub('-', worker_id)[:150] or 'worker'}"


def stored_model_key(sha256: str) -> str:
    """How a heartbeat and the scheduler name a checkpoint fetched from the store: by its hash,
    since members' names are theirs alone and may repeat (no catalogue name holds a colon)."""
    return f"{STORED_KEY_PREFIX}{sha256}"


class JobEnvelope(TypedDict):
    """Which job and attempt a message is about, and where its progress goes."""

    job_id: str
    attempt: int  # 1 for the first dispatch; a redelivery carries the same job_id and attempt
    events_group: str  # channel-layer group to publish job.progress to (the owner's group)


class ModelDelivery(TypedDict):
    """A model the job names that the worker may not have (a member's upload): the worker
    resolves the (kind, name) to this file, fetched by sha256 from the signed URL when its disk
    cache lacks it, and checks the hash."""

    kind: Literal["checkpoint", "lora", "vae", "embedding"]
    name: str  # the name the job's params use
    sha256: str
    size_bytes: int
    url: str  # short-lived signed URL on the platform's model store ("" for a virtual model)
    # A virtual model (a saved merge recipe): no file to fetch; the worker computes it from
    # its inputs (delivered beside it when they are uploads) under `sha256`, the recipe hash.
    recipe: NotRequired[MergeParams]


class MergedModel(TypedDict):
    """The file a merge job made, as uploaded to the platform (which checked the hash)."""

    sha256: str
    size_bytes: int


class TrainingImageDelivery(TypedDict):
    sha256: str  # of the PNG; the worker checks it
    url: str  # short-lived signed URL


class TrainingDelivery(TypedDict):
    """How a training job's worker reaches the platform, no database nor shared disk needed:
    the dataset's images by signed URL, the URL each finished epoch is posted to (signed for
    this job and attempt: a stale attempt is refused), and the state to resume from."""

    images: list[TrainingImageDelivery]  # in the order of the job's train.images
    epoch_url: str
    resume_epoch: int  # 0: from the start
    resume_state_url: str | None  # the state after `resume_epoch`, signed
    chunk_bytes: int  # an epoch's LoRA and state are posted in chunks of at most this size
    class_images: NotRequired[list[TrainingImageDelivery]]  # prior preservation's, in order


class GenerationRequest(JobEnvelope, GenerationParams):
    """What the platform asks a GPU worker to make: the job's validated GenerationParams (its
    `Job.params`, unchanged) in an envelope, plus the img2img source image, inpaint mask,
    ControlNet unit images and the models to fetch."""

    init_image_png_b64: NotRequired[str | None]  # img2img source, PNG, base64
    mask_png_b64: NotRequired[str | None]  # inpaint mask, PNG, base64 (white = repaint)
    # ControlNet units' images by the sha256 their stored units name, PNG, base64
    controlnet_images_png_b64: NotRequired[dict[str, str]]
    models: NotRequired[list[ModelDelivery]]
    training: NotRequired[TrainingDelivery]  # mode "train" only
    # A merge job: where its output goes (signed, for this attempt) and in what chunk size.
    upload_url: NotRequired[str]
    upload_chunk_bytes: NotRequired[int]
    # The platform reads the result PNGs from Redis (`gpu_worker.result_store`), not as base64
    # in the event; absent (an older platform): base64.
    result_pngs_in_redis: NotRequired[bool]


class DetectRequest(TypedDict):
    """Run one preprocessor on some images (a preview: no job, no model to load for built-ins)."""

    request_id: str
    module: str  # a module this worker lists in its heartbeat's `preprocessors`
    images_png_b64: list[str]
    processor_res: int
    threshold_a: float
    threshold_b: float
    deadline: float  # unix time: a worker that picks it up later drops it (nobody is waiting)


class DetectReply(TypedDict):
    request_id: str
    worker_id: str
    images_png_b64: NotRequired[list[str]]  # the control maps, PNG, in the request's order
    error: NotRequired[str]  # fit to show the caller


class ResultImage(TypedDict):
    # PNG with the A1111 `parameters` text chunk, in one of three ways: base64 here; or, in the
    # event, `png_in_redis` (the bytes under `gpu_worker.result_store.png_key`); or, inside the
    # worker only, `png` (the bytes, until the event is sent: never on the wire).
    png_b64: NotRequired[str]
    png_in_redis: NotRequired[bool]
    png: NotRequired[bytes]
    seed: int
    infotext: str
    width: int
    height: int
    # The gallery's thumbnail (`gpu_worker.thumbnails`), made by the worker from the image it
    # already holds, so that the platform checks the PNG instead of decoding it. Workers older
    # than this field send none; the platform then makes it.
    thumbnail_webp_b64: NotRequired[str]


class JobTimings(TypedDict, total=False):
    queued_s: float  # from the Dramatiq message's enqueue time to the worker starting it
    model_load_s: float
    model_loaded: bool  # True: read from disk for this job; False: the cache had it
    sampling_s: float
    encode_s: float
    total_s: float
    # cross-user batching (gpu_worker/batching.py): the most jobs that shared one UNet call
    # with this one, itself included (absent: it ran alone, on the serial path)
    batch_jobs: int


class JobEvent(TypedDict):
    """What a GPU worker reports to the platform about a job (queue PLATFORM_QUEUE)."""

    job_id: str
    attempt: int
    worker_id: str
    kind: JobEventKind
    images: NotRequired[list[ResultImage]]  # succeeded (also the finished images of a skip);
    # cancelled: the images finished before an interrupt, when there are any
    error: NotRequired[str]  # failed: a message fit to show the job's owner
    steps_done: NotRequired[int]  # cancelled: sampling steps completed, for pro-rata pricing
    timings: NotRequired[JobTimings]
    model: NotRequired[MergedModel]  # succeeded merge: the uploaded file


class ProgressEvent(TypedDict):
    """Sent by the GPU worker to the job's events_group on the channel layer."""

    type: Literal["job.progress"]
    job_id: str
    step: int
    steps: int
    eta: float  # seconds left for this job
    preview: str | None  # data:image/jpeg;base64,... small, cheap latent approximation


class ModelInventoryEntry(TypedDict):
    name: str  # file name without extension: the catalogue key
    filename: str  # relative to the models folder
    kind: Literal[
        "checkpoint", "lora", "vae", "embedding", "controlnet", "upscaler", "face_restorer"
    ]
    family: str  # "sd1", "sd2", "sdxl", or "unknown"
    size_bytes: int
    sha256: str
    short_hash: str  # A1111: first 10 hex of sha256
    scale: NotRequired[int]  # upscalers: the model's native factor (gpu_worker.upscaler_files)


class WorkerCommand(TypedDict):
    """An operator's request to one worker: finish the current job and take no more, or free a
    checkpoint from its cache."""

    action: Literal["drain", "undrain", "unload", "evict"]
    model: NotRequired[str]  # for "unload": the checkpoint's catalogue name
    sha256: NotRequired[str]  # for "evict": a deleted upload, dropped from disk and memory


class WorkerHeartbeat(TypedDict):
    worker_id: str
    hostname: str
    device: str  # "cuda:0", "cpu"
    memory_used_bytes: int
    memory_budget_bytes: int
    # Checkpoints on the device, hottest first, by catalogue name; one fetched from the store
    # (a member's or staff upload) or computed from a recipe (a virtual model) by
    # `stored_model_key(sha256)` (its recipe hash for a virtual model).
    loaded_models: list[str]
    warm_models: NotRequired[list[str]]  # held in CPU RAM only, hottest first, named the same
    # ControlNets on the device, by catalogue name (the scheduler prefers a worker holding a
    # job's ControlNets)
    loaded_controlnets: NotRequired[list[str]]
    # ControlNet preprocessors it runs: the built-in ones and the weight-based ones whose
    # annotator weights lie in its models folder (absent in older workers: the built-in ones)
    preprocessors: NotRequired[list[str]]
    hot_capacity: NotRequired[int]  # checkpoints that fit on the device at once (estimate)
    # The most images it denoises in one cross-user batch; 0: it runs every job alone, so the
    # scheduler hands it no batch companions (absent in older workers: batching on).
    batch_max_images: NotRequired[int]
    queue: NotRequired[str]  # the Dramatiq queue it consumes (worker_queue(worker_id))
    current_job: str | None
    current_step: int | None
    current_steps: int | None
    recent_its: float | None  # sampling iterations per second, recent average
    draining: bool
    inventory: list[ModelInventoryEntry]
    # The disk tier of fetched models (members' uploads): their sha256s, most recent first.
    disk_models: NotRequired[list[str]]
    disk_used_bytes: NotRequired[int]
    disk_budget_bytes: NotRequired[int]
    download_bytes_per_s: NotRequired[float]  # measured on its fetches (configured until then)
    sent_at: float  # unix time
