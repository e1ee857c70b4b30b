"""Live progress and cancellation for a running job.

- `ChannelPublisher` sends channel-layer group messages from the (synchronous) worker thread
  through channels_redis used standalone, on one background event loop, so a step never waits
  on the network.
- `JobMonitor` is the engine's step observer: at every step it acts on the job's cancel flag in
  Redis ("interrupt" stops the job, "skip" drops the batch being sampled), read only when a
  `CancelWatch` says it may have changed, and publishes `job.progress` at most every
  `min_interval` seconds counted from the job's start, with a small JPEG preview made by a
  cheap linear latent -> RGB approximation (no VAE decode). The last step's event goes out
  without a new preview: the result image follows it. A job shorter than `min_interval` sends
  only that one ('started' told its owner it runs): the first step's event and preview, made
  beside the sampling, slowed a short job's engine by ~2 ms on the 2-core development machine
  (the monitor's cost on a 64x64 demo job, 150 runs alternated with none: 2.9-3.3 ms with that
  event, 0.5-1.4 ms without), for an event its result followed within a quarter of a second.
  The same event is also stored under `PROGRESS_KEY` with a short expiry, for clients that
  poll (A1111's /sdapi/v1/progress). With a publisher, the step only copies the first image's
  latents: the preview, the stored copy and the send are made on the publisher's thread, in
  step order (on the sampling thread they took about 3 ms of each demo job in a profile of
  bench_platform_overhead's worker, time a direct diffusers call does not spend).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from gpu_worker.cancel_watch import RECHECK_SECONDS
from gpu_worker.channel_layer import close_channel_layer, make_channel_layer
from gpu_worker.protocol import CANCEL_KEY, PROGRESS_KEY, ProgressEvent

if TYPE_CHECKING:
    import redis

    from gpu_worker.cancel_watch import CancelWatch
    from gpu_worker.engine import StepInfo

log = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 128
# The latest step outlives a slow step by far, and a finished job's key soon disappears.
PROGRESS_TTL_SECONDS = 600
# Linear maps from the 4 latent channels to RGB (community-measured, used by A1111/ComfyUI).
LATENT_RGB = {
    "sd1": [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    "sdxl": [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
}


class ChannelPublisher:
    """Fire-and-forget group_send from sync code; `flush()` waits for what was sent."""

    def __init__(self, redis_url: str = "", *, kind: str = "", layer: Any = None) -> None:
        """`layer` (the web's, from Django settings) or a new one of `kind` on `redis_url`."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="progress-publisher", daemon=True)
        self._thread.start()
        # One loop for the process's life, so the layer keeps its Redis connections (a fresh
        # loop per message, as async_to_sync makes outside an ASGI server, reconnects each time).
        self.layer = layer or make_channel_layer(redis_url, kind)
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()

    def _serve(self) -> None:
        try:
            self._loop.run_forever()
        finally:
            # Closed here, in the loop's own thread, once `close()` stopped it: channels_redis
            # hooks a loop's close to drop its connections (by running the loop once more), and
            # a loop left to the garbage collector runs that hook in whatever thread collects
            # it, failing there if that thread runs a loop of its own.
            self._loop.close()

    def publish(self, group: str, message: dict[str, Any]) -> None:
        self._track(
            asyncio.run_coroutine_threadsafe(self.layer.group_send(group, message), self._loop)
        )

    def run(
        self, action: Callable[[], object], then_send: Callable[[], tuple[str, dict]] | None = None
    ) -> None:
        """Run a blocking call (a Redis write) on the publisher's thread, in order with the
        sends, so that the caller does not wait for it; `flush()` waits for it too.
        `then_send`: called there next, gives a (group, message) to send."""

        async def call() -> None:
            action()
            if then_send is not None:
                await self.layer.group_send(*then_send())

        self._track(asyncio.run_coroutine_threadsafe(call(), self._loop))

    def _track(self, future: Future[None]) -> None:
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(future)

    def flush(self, timeout: float = 5.0) -> None:
        # Each caller waits for everything sent before its call (a batch job reported from the
        # worker's reporter thread while another is reported from the batch's): taking the list
        # away would let the second caller return before its job's last progress was sent.
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            try:
                future.result(timeout=timeout)
            except Exception:  # progress is best effort: the database has the real state
                log.warning("a progress message could not be sent", exc_info=True)

    def close(self) -> None:
        """Send what is pending, close the layer's connections and stop the thread (which
        closes its loop). Closing again does nothing."""
        if not self._thread.is_alive():  # closed already (the thread closed its loop)
            return
        self.flush()
        try:
            asyncio.run_coroutine_threadsafe(close_channel_layer(self.layer), self._loop).result(5)
        except Exception:
            log.debug("closing the channel layer failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def first_latents(latents: Any) -> Any:
    """The first image's latents, copied to the CPU as float32 (what a preview is made of)."""
    import torch

    return latents[0].detach().to("cpu", torch.float32, copy=True)


def latent_preview(latents: Any, family: str = "sd1") -> str:
    """A data: URI JPEG of one image's latents (as `first_latents` gives them) through a
    linear RGB approximation."""
    import torch
    from PIL import Image

    factors = torch.tensor(LATENT_RGB.get(family, LATENT_RGB["sd1"]))
    rgb = torch.einsum("chw,cr->hwr", latents, factors)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    scale = PREVIEW_MAX_SIDE / max(image.size)
    image = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BILINEAR,
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def read_cancel_flag(redis_client: redis.Redis, job_id: str) -> str | None:
    value = redis_client.get(CANCEL_KEY.format(job_id=job_id))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class JobMonitor:
    """The engine's step observer for one job."""

    def __init__(
        self,
        *,
        job_id: str,
        events_group: str,
        redis_client: redis.Redis,
        publisher: ChannelPublisher | None,
        min_interval: float = 0.25,
        on_step: Any = None,
        cancel_watch: CancelWatch | None = None,
        flag_read_at_version: int | None = None,
    ) -> None:
        """`flag_read_at_version`: the caller found no cancel flag just now, in a read made
        after `cancel_watch` showed this version (the first step need not read it again)."""
        self.job_id = job_id
        self.events_group = events_group
        self.redis = redis_client
        self.publisher = publisher
        self.min_interval = min_interval
        self.on_step = on_step  # e.g. the worker status for the heartbeat: f(done, total)
        self.cancel_watch = cancel_watch  # None: the flag is read at every step
        self.started = time.monotonic()
        self.last_sent = self.started  # the first event after min_interval, as every other
        self.sent = 0
        self.last_preview: str | None = None  # stored with the last step for pollers
        self.flag_version = flag_read_at_version  # the watch's version at the last read
        self.flag_read_at = self.started

    def __call__(self, info: StepInfo) -> None:
        from gpu_worker.engine import BatchSkipped, JobInterrupted

        if self.on_step is not None:
            self.on_step(info.done, info.total)
        flag = self.cancel_flag()
        if flag == "interrupt":
            raise JobInterrupted()
        if flag == "skip":
            # consume the skip so the next batch runs; only if nobody changed it meanwhile
            self.redis.delete(CANCEL_KEY.format(job_id=self.job_id))
            self.flag_version = None  # read again next step, whatever the watch says
            raise BatchSkipped()
        now = time.monotonic()
        last_step = info.done >= info.total
        if now - self.last_sent < self.min_interval and not last_step:
            return
        self.last_sent = now
        self.publish(info, now, with_preview=not last_step and info.latents is not None)

    def cancel_flag(self) -> str | None:
        """The job's cancel flag: read from Redis when the watch saw a change (or has none,
        or the last read is old), else None, as it was at the last read (a read that found a
        flag stops the step)."""
        now = time.monotonic()
        version = self.cancel_watch.version() if self.cancel_watch is not None else None
        if (
            version is not None
            and version == self.flag_version
            and now - self.flag_read_at < RECHECK_SECONDS
        ):
            return None
        try:
            flag = read_cancel_flag(self.redis, self.job_id)
        except Exception:  # Redis away for a moment: keep generating, check again next step
            log.warning("cannot read the cancel flag of %s", self.job_id, exc_info=True)
            return None
        self.flag_version, self.flag_read_at = version, now
        return flag

    def publish(self, info: StepInfo, now: float, *, with_preview: bool) -> None:
        elapsed = now - self.started
        eta = elapsed / info.done * (info.total - info.done) if info.done else 0.0
        event = ProgressEvent(
            type="job.progress",
            job_id=self.job_id,
            step=info.done,
            steps=info.total,
            eta=round(eta, 2),
            preview=None,
        )
        # A copy: the next step may change the latents in place while the preview is made.
        latents = first_latents(info.latents) if with_preview else None

        def preview_and_store() -> None:
            self._with_preview(event, latents, info.family)
            self.store_now(self._stored(event))

        if self.publisher is None:
            preview_and_store()
            return
        self.publisher.run(preview_and_store, then_send=lambda: (self.events_group, dict(event)))
        self.sent += 1

    def _with_preview(self, event: ProgressEvent, latents: Any, family: str) -> None:
        if latents is not None:
            event["preview"] = latent_preview(latents, family)
            self.last_preview = event["preview"]

    def _stored(self, event: ProgressEvent) -> ProgressEvent:
        # A poller (A1111's current_image) keeps the latest preview made; a websocket client
        # keeps the one it has (the event says nothing new), then gets the result image.
        return ProgressEvent(**{**event, "preview": self.last_preview})

    def store_now(self, event: ProgressEvent) -> None:
        try:
            self.redis.set(
                PROGRESS_KEY.format(job_id=self.job_id), json.dumps(event), ex=PROGRESS_TTL_SECONDS
            )
        except Exception:  # best effort, like the channel message: the job goes on
            log.warning("cannot store the progress of %s", self.job_id, exc_info=True)
