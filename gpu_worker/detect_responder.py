"""ControlNet preprocessor previews on the worker: a thread that answers DetectRequests.

A preview is a small request/response over Redis (gpu_worker.protocol), not a Job: it holds no
credits, lands in no history, and needs no scheduling pass, and the platform waits for it with a
deadline. It runs beside the job thread so that a preview need not wait for the generation
running here to end: the built-in preprocessors are OpenCV/Pillow on the CPU and share nothing
with the diffusers pipeline; a weight-based annotator is a small network of its own, run under
the annotators' lock.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable

import redis
from PIL import Image

from gpu_worker.protocol import (
    DETECT_KEY_TTL_SECONDS,
    DETECT_QUEUE_KEY,
    DETECT_REPLY_KEY,
    DetectReply,
    DetectRequest,
)

log = logging.getLogger(__name__)

# (module, image, processor_res, threshold_a, threshold_b) -> the control map
ControlMap = Callable[[str, Image.Image, int, float, float], Image.Image]

POLL_SECONDS = 1.0  # BLPOP timeout (`stop` wakes it at once)
RETRY_SECONDS = 1.0  # after Redis errors


class DetectResponder:
    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        modules: Callable[[], list[str]],
        control_map: ControlMap,
        *,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.modules = modules  # what this worker runs now (its heartbeat says the same)
        self.control_map = control_map  # the engine's (annotators.Annotators.control_map)
        self.poll_seconds = poll_seconds
        self.key = DETECT_QUEUE_KEY.format(worker_id=worker_id)
        # this responder's own list, pushed to by `stop` so that the BLPOP returns at once
        self._wake_key = f"{self.key}:stop:{uuid.uuid4().hex}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="detect-responder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):  # else the poll ends at its timeout
            pipe = self.client.pipeline()
            pipe.rpush(self._wake_key, 1)
            pipe.expire(self._wake_key, 60)
            pipe.execute()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_seconds + 5)
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self._wake_key)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.serve_one(self.poll_seconds)
            except redis.RedisError:
                log.warning("preview requests: Redis unreachable", exc_info=True)
                self._stop.wait(RETRY_SECONDS)

    def serve_one(self, timeout: float) -> bool:
        """Answer the next request, waiting up to `timeout`; False when none came."""
        popped = self.client.blpop([self.key, self._wake_key], timeout=timeout)
        if popped is None or popped[0] in (self._wake_key, self._wake_key.encode()):
            return False
        try:
            request: DetectRequest = json.loads(popped[1])
            request_id = str(request["request_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable preview request dropped")
            return True
        if float(request.get("deadline", 0)) < time.time():
            return True  # the caller stopped waiting
        reply = self.answer(request)
        reply_key = DETECT_REPLY_KEY.format(request_id=request_id)
        pipe = self.client.pipeline()
        pipe.rpush(reply_key, json.dumps(reply))
        pipe.expire(reply_key, DETECT_KEY_TTL_SECONDS)
        pipe.execute()
        return True

    def answer(self, request: DetectRequest) -> DetectReply:
        reply = DetectReply(request_id=str(request["request_id"]), worker_id=self.worker_id)
        module = request.get("module")
        if module not in self.modules():
            reply["error"] = f"this worker has no preprocessor {module!r}"
            return reply
        maps = []
        for index, text in enumerate(request.get("images_png_b64") or []):
            try:
                image = Image.open(io.BytesIO(base64.b64decode(text)))
                image.load()
                control_map = self.control_map(
                    str(module),
                    image,
                    int(request["processor_res"]),
                    float(request["threshold_a"]),
                    float(request["threshold_b"]),
                )
            except Exception as exc:  # a bad image or value: the caller is told, we go on
                log.info("preview %s failed: %s", request["request_id"], exc)
                reply["error"] = f"image {index} could not be processed"
                return reply
            out = io.BytesIO()
            control_map.save(out, "PNG")
            maps.append(base64.b64encode(out.getvalue()).decode("ascii"))
        reply["images_png_b64"] = maps
        return reply
