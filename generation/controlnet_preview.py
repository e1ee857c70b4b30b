"""ControlNet preprocessor previews, run by a GPU worker (the REST `controlnet/detect/`, A1111's
`/controlnet/detect` and the generator's Preview button all call `preview_maps`).

Why a request/response over Redis rather than a Job: a preview is an interactive answer, a
small OpenCV computation wanted at once while the member sets up a unit. As a Job it would
wait behind the running and the assigned generation on every worker (WORKER_SLOTS), land in the
history, and need a price and a hold. Here the platform picks a present worker that lists the
module (an idle live one first), hands it the request on its own list, and waits for the reply
up to a deadline; the worker answers from a thread beside its job thread
(gpu_worker/detect_responder.py). Previews are free: nothing is held or charged, so nothing can
be lost or charged twice. What bounds them is the members' API rate limit, the tier's image
count and upload caps here, and the request's deadline.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from typing import Any

import redis
from PIL import Image

from generation.broker import get_blocking_redis
from generation.fleet import available_preprocessors, read_workers, worker_preprocessors
from generation.limits import limits_for
from generation.request_errors import SubmissionError
from generation.uploaded_images import uploaded_image
from gpu_worker.preprocessors import (
    PROCESSOR_RES_RANGE,
    pixel_perfect_resolution,
    threshold_default,
    threshold_problem,
)
from gpu_worker.protocol import (
    DETECT_KEY_TTL_SECONDS,
    DETECT_QUEUE_KEY,
    DETECT_REPLY_KEY,
    DETECT_TIMEOUT_SECONDS,
    DetectReply,
    DetectRequest,
)


def decode_images(user: Any, raw: Any, field: str = "images") -> list[Image.Image]:
    """Base64 texts (data URIs allowed) or uploaded files -> RGB images, within the init image's
    caps and the tier's image count."""
    if not isinstance(raw, list) or not raw:
        raise SubmissionError(field, f"{field} must be a list of base64 images", 422)
    limits = limits_for(user)
    if len(raw) > limits.max_images:
        raise SubmissionError(field, f"{field}: at most {limits.max_images} images", 422)
    return [
        uploaded_image(item, limits, f"{field}[{i}]").convert("RGB") for i, item in enumerate(raw)
    ]


def processor_resolution(
    image: Image.Image,
    processor_res: Any,
    *,
    pixel_perfect: bool = False,
    target: tuple[int, int] | None = None,
    resize_mode: int = 1,
) -> int:
    """The resolution the unit's preprocessor will use for `image` (pixel perfect: from the
    job's size, as the engine computes it)."""
    if pixel_perfect and target:
        return pixel_perfect_resolution(image.size, target, resize_mode)
    return processor_res


def preview_maps(
    user: Any,
    module: Any,
    images: list[Image.Image],
    processor_res: Any,
    threshold_a: Any,
    threshold_b: Any,
    *,
    client: redis.Redis | None = None,
    timeout: float = DETECT_TIMEOUT_SECONDS,
) -> list[bytes]:
    """The control maps (PNG bytes) of `images`, computed by a GPU worker."""
    if limits_for(user).max_controlnet_units < 1:
        raise SubmissionError("module", "your tier has no ControlNet units", 403)
    client = client or get_blocking_redis()
    module = module or "none"
    if module not in (available := available_preprocessors(client)):
        raise SubmissionError(
            "module", f"unknown preprocessor {module!r}; available: {', '.join(available)}", 422
        )
    res = _number("processor_res", processor_res, *PROCESSOR_RES_RANGE)
    low = _threshold(module, "threshold_a", threshold_a)
    high = _threshold(module, "threshold_b", threshold_b)
    worker_id = _pick_worker(client, module)
    request_id = uuid.uuid4().hex
    request = DetectRequest(
        request_id=request_id,
        module=module,
        images_png_b64=[_png_b64(image) for image in images],
        processor_res=int(res),
        threshold_a=low,
        threshold_b=high,
        deadline=time.time() + timeout,
    )
    queue_key = DETECT_QUEUE_KEY.format(worker_id=worker_id)
    reply_key = DETECT_REPLY_KEY.format(request_id=request_id)
    try:
        pipe = client.pipeline()
        pipe.rpush(queue_key, json.dumps(request))
        pipe.expire(queue_key, DETECT_KEY_TTL_SECONDS)
        pipe.execute()
        popped = client.blpop([reply_key], timeout=timeout)
    except (redis.RedisError, OSError):
        raise SubmissionError(
            "module", "the queue is unreachable; try again shortly", 503
        ) from None
    if popped is None:
        raise SubmissionError("module", f"no preview within {timeout:.0f} s; try again", 504)
    reply: DetectReply = json.loads(popped[1])
    if "error" in reply or "images_png_b64" not in reply:
        raise SubmissionError("images", reply.get("error", "the preview failed"), 422)
    return [base64.b64decode(text) for text in reply["images_png_b64"]]


def _pick_worker(client: redis.Redis, module: str) -> str:
    """A present, undrained worker that runs `module`: live before stale, idle before busy."""
    try:
        workers = read_workers(client)
    except (redis.RedisError, OSError):
        raise SubmissionError(
            "module", "the queue is unreachable; try again shortly", 503
        ) from None
    able = [
        w
        for w in workers
        if w.heartbeat is not None
        and not w.heartbeat.get("draining")
        and module in worker_preprocessors(w.heartbeat)
    ]
    if not able:
        raise SubmissionError("module", "no GPU worker is available for previews right now", 503)
    best = min(
        able,
        key=lambda w: (
            w.state != "live",
            w.heartbeat is not None and w.heartbeat.get("current_job") is not None,
            w.worker_id,
        ),
    )
    return best.worker_id


def _unreachable() -> SubmissionError:
    return SubmissionError("module", "the queue is unreachable; try again shortly", 503)


def _number(field: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SubmissionError(field, f"{field} must be a number", 422)
    if not low <= value <= high:
        raise SubmissionError(field, f"{field} must be between {low:g} and {high:g}", 422)
    return float(value)


def _threshold(module: str, field: str, value: Any) -> float:
    """threshold_a/b within the module's slider; None (or the extension's -1): its default."""
    if value is None or (value == -1 and not isinstance(value, bool)):
        return threshold_default(module, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SubmissionError(field, f"{field} must be a number", 422)
    if problem := threshold_problem(module, field, float(value)):
        raise SubmissionError(field, problem, 422)
    return float(value)


def _png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")
