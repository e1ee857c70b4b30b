"""A training job on the worker: fetch the dataset, resume if asked, train epoch by epoch, post
each finished epoch (LoRA, resumable state, sample image, losses) to the platform.

Called by the worker service in place of `Engine.run` for requests of mode "train". The
platform records an epoch only when its post arrives, and charges it then; the worker keeps
nothing the platform needs after a post, so a worker that dies loses at most the epoch it was
in. Cancel comes through the step observer
(JobInterrupted). When `hand_over()` turns True (the worker drains, or another member's job
waits for this GPU) the job ends after the epoch in hand and the service gives it back to the
platform: the next attempt, here or elsewhere, resumes from that epoch.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from PIL import Image

from gpu_worker.engine import Engine
from gpu_worker.job_outcome import (
    GenerationResult,
    JobFailed,
    JobInterrupted,
    StepInfo,
    StepObserver,
)
from gpu_worker.loading import ModelLoadError, load_checkpoint
from gpu_worker.protocol import GenerationRequest, ResultImage, TrainingImageDelivery
from gpu_worker.training_rules import batches_per_epoch

log = logging.getLogger(__name__)
HTTP_TIMEOUT_SECONDS = 120
POST_ATTEMPTS = 5  # an epoch post is retried (the platform records it once per epoch)
DEFAULT_CHUNK_BYTES = 8 * 2**20


class EpochRefused(Exception):  # noqa: N818 - the platform's answer, not our error
    """The platform no longer takes this attempt's epochs (cancelled, or handed elsewhere)."""


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
        return bytes(response.read())


def fetch_dataset(images: list[TrainingImageDelivery], captions: list[str]) -> list[Any]:
    """The job's images (or its class images), each checked against its sha256."""
    from gpu_worker.training import TrainingImage

    items = []
    for index, image in enumerate(images):
        try:
            data = _get(image["url"])
        except (urllib.error.URLError, OSError) as exc:
            raise JobFailed(f"cannot fetch training image {index + 1}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != image["sha256"]:
            raise JobFailed(f"training image {index + 1} does not match its sha256")
        with Image.open(io.BytesIO(data)) as decoded:
            items.append(TrainingImage(decoded.convert("RGB"), captions[index]))
    return items


def _multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for name, data in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _send(url: str, body: bytes, content_type: str) -> None:
    """One request, retried on network and server errors; EpochRefused on 404/409/410 (the
    platform no longer takes this attempt's epochs)."""
    delay = 1.0
    for attempt in range(POST_ATTEMPTS):
        request = urllib.request.Request(  # noqa: S310 - the platform's signed URL
            url, data=body, method="POST", headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS):  # noqa: S310
                return
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 409, 410):
                raise EpochRefused(exc.read().decode(errors="replace")[:500]) from exc
            if attempt == POST_ATTEMPTS - 1 or exc.code < 500:
                raise
        except (urllib.error.URLError, OSError):
            if attempt == POST_ATTEMPTS - 1:
                raise
        time.sleep(delay)
        delay *= 2


def post_epoch(
    url: str,
    epoch: int,
    fields: dict[str, str],
    parts: dict[str, bytes],
    sample: bytes,
    chunk_bytes: int,
) -> None:
    """Send the epoch's large parts (LoRA, state) in chunks that fit the platform's request
    limit, then commit it with its numbers, the parts' sha256s and the sample image."""
    separator = "&" if "?" in url else "?"
    for name, data in parts.items():
        for offset in range(0, max(len(data), 1), chunk_bytes):
            query = urllib.parse.urlencode({"part": name, "epoch": epoch, "offset": offset})
            chunk = data[offset : offset + chunk_bytes]
            _send(f"{url}{separator}{query}", chunk, "application/octet-stream")
    digests = {f"{name}_sha256": hashlib.sha256(data).hexdigest() for name, data in parts.items()}
    body, content_type = _multipart({"epoch": str(epoch), **fields, **digests}, {"sample": sample})
    _send(url, body, content_type)


def _sample_infotext(request: GenerationRequest, base: str, epoch: int) -> str:
    train = request["train"]
    lines = [request["prompt"]]
    if request["negative_prompt"]:
        lines.append(f"Negative prompt: {request['negative_prompt']}")
    lines.append(
        f"Steps: {request['steps']}, CFG scale: {request['cfg_scale']}, Seed: {request['seed']}, "
        f"Size: {request['width']}x{request['height']}, Model: {base}, "
        f"{'Embedding' if train.get('method') == 'textual_inversion' else 'Lora'}: "
        f"{train['output_name']} (epoch {epoch}/{train['epochs']})"
    )
    return "\n".join(lines)


def run_training(
    engine: Engine,
    request: GenerationRequest,
    observer: StepObserver | None,
    hand_over: Callable[[], bool] = lambda: False,
) -> GenerationResult:
    import torch

    from gpu_worker.textual_inversion import EmbeddingTrainer
    from gpu_worker.training import LoraTrainer, loss_of

    started = time.perf_counter()
    train, delivery = request.get("train"), request.get("training")
    if not train or not delivery or len(delivery["images"]) != len(train["images"]):
        raise JobFailed("a training job needs its train parameters and dataset")
    checkpoint = engine.resolve("checkpoint", request["checkpoint"])
    dataset = fetch_dataset(delivery["images"], [i["caption"] for i in train["images"]])
    class_captions = [i["caption"] for i in train.get("class_images") or []]
    class_images = fetch_dataset(delivery.get("class_images") or [], class_captions)
    if len(class_images) != len(class_captions):
        raise JobFailed("a training job needs its class images")
    resume_state = None
    if delivery["resume_epoch"] and delivery["resume_state_url"]:
        try:
            resume_state = _get(delivery["resume_state_url"])
        except (urllib.error.URLError, OSError) as exc:
            raise JobFailed(f"cannot fetch the state of epoch {delivery['resume_epoch']}") from exc
    if engine.device.type == "cuda":
        engine.cache.clear()  # the GPU is this job's until it ends; cached pipelines reload
    t0 = time.perf_counter()
    try:
        pipe = load_checkpoint(checkpoint, dtype=engine.dtype, cache_dir=engine.cache_dir)
    except ModelLoadError as exc:
        raise JobFailed(str(exc)) from exc
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    trainer_class = EmbeddingTrainer if train.get("method") == "textual_inversion" else LoraTrainer
    trainer = trainer_class(
        pipe,
        checkpoint.family,
        train,
        dataset,
        seed=request["seed"],
        device=engine.device,
        class_images=class_images if train.get("prior_loss_weight") else None,
    )
    if resume_state is not None:
        trainer.load_state(resume_state)
        log.info("job %s resumes after epoch %d", request["job_id"], trainer.epoch)
    sizes = [(i["width"], i["height"]) for i in train["images"]]
    per_epoch = batches_per_epoch(sizes, train["resolution"], train["repeats"], train["batch_size"])
    total = per_epoch * train["epochs"]

    def on_step(done: int, latents: torch.Tensor) -> None:
        if observer is not None:
            observer(
                StepInfo(
                    done=done,
                    total=total,
                    iteration=trainer.epoch,
                    latents=latents,
                    family=checkpoint.family,
                )
            )

    result = GenerationResult()

    def render_sample(epoch: int) -> bytes:
        """The epoch's sample image with the job's own prompt and settings."""
        return trainer.sample(
            request["prompt"],
            request["negative_prompt"],
            steps=request["steps"],
            cfg_scale=request["cfg_scale"],
            width=request["width"],
            height=request["height"],
            infotext=_sample_infotext(request, checkpoint.name, epoch),
        )

    sample: bytes | None = None
    try:
        while trainer.epoch < train["epochs"]:
            epoch = trainer.train_epoch(on_step)
            sample = render_sample(epoch.epoch)
            model_file = trainer.output_file(
                output_name=train["output_name"],
                base_name=checkpoint.name,
                base_sha256=checkpoint.sha256,
                architecture=checkpoint.architecture,
            )
            post_epoch(
                delivery["epoch_url"],
                epoch.epoch,
                {
                    "steps": str(epoch.global_step),
                    "losses": json.dumps(epoch.losses),
                    "loss": repr(loss_of(epoch.losses)),
                    "prior_losses": json.dumps(epoch.prior_losses),
                },
                # the part keeps its first name: the epoch's model file, LoRA or embedding
                {"lora": model_file, "state": trainer.state_bytes()},
                sample,
                int(delivery.get("chunk_bytes") or DEFAULT_CHUNK_BYTES),
            )
            result.steps_done = epoch.global_step
            if trainer.epoch < train["epochs"] and hand_over():
                result.handed_over = True  # drained: the next worker resumes from here
                break
    except JobInterrupted:
        result.interrupted = True
        result.steps_done = trainer.global_step
    except EpochRefused as exc:
        log.info("job %s: the platform refused an epoch (%s); stopping", request["job_id"], exc)
        result.interrupted = True
        result.steps_done = trainer.global_step
    finished = not result.interrupted and not result.handed_over
    if finished and sample is None:  # resumed after the last epoch: its sample, again
        sample = render_sample(trainer.epoch)
    if sample is not None and finished:
        with Image.open(io.BytesIO(sample)) as image:
            width, height = image.size
        result.images = [
            ResultImage(
                png_b64=base64.b64encode(sample).decode(),
                seed=request["seed"],
                infotext=_sample_infotext(request, checkpoint.name, trainer.epoch),
                width=width,
                height=height,
            )
        ]
    result.timings["model_load_s"] = round(load_s, 4)
    result.timings["total_s"] = round(time.perf_counter() - started, 4)
    return result
