"""The worker's heartbeat: its status as JSON in Redis every 2 s, expiring when it dies (the
platform declares it dead once the key has been gone a few seconds, see generation/sweeper.py).

Each beat also takes the operator's commands for this worker (drain, undrain, unload) from
WORKER_COMMANDS_KEY, so they act within one heartbeat interval.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpu_worker.protocol import (
    HEARTBEAT_INDEX,
    HEARTBEAT_INTERVAL_SECONDS,
    HEARTBEAT_KEY,
    HEARTBEAT_TTL_SECONDS,
    WORKER_COMMANDS_KEY,
    WorkerCommand,
    WorkerHeartbeat,
)

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)


@dataclass
class WorkerStatus:
    """What the worker is doing now; written by the job thread, read by the heartbeat."""

    worker_id: str
    device: str
    hostname: str = field(default_factory=socket.gethostname)
    current_job: str | None = None
    current_step: int | None = None
    current_steps: int | None = None
    recent_its: float | None = None
    draining: bool = False
    _last_step_at: float | None = None

    def job_started(self, job_id: str) -> None:
        self.current_job, self.current_step, self.current_steps = job_id, 0, None
        self._last_step_at = time.monotonic()

    def step(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._last_step_at is not None and done > (self.current_step or 0):
            its = (done - (self.current_step or 0)) / max(now - self._last_step_at, 1e-6)
            self.recent_its = its if self.recent_its is None else 0.8 * self.recent_its + 0.2 * its
        self.current_step, self.current_steps, self._last_step_at = done, total, now

    def job_finished(self) -> None:
        self.current_job = self.current_step = self.current_steps = None
        self._last_step_at = None


class Heartbeat:
    """A daemon thread calling `snapshot()` and writing it to HEARTBEAT_KEY with a TTL."""

    def __init__(
        self,
        redis_client: redis.Redis,
        snapshot: Callable[[], WorkerHeartbeat],
        *,
        on_command: Callable[[WorkerCommand], None] | None = None,
        on_tick: Callable[[], object] | None = None,
        interval: float = HEARTBEAT_INTERVAL_SECONDS,
        ttl: float = HEARTBEAT_TTL_SECONDS,
    ) -> None:
        self.redis = redis_client
        self.snapshot = snapshot
        self.on_command = on_command
        self.on_tick = on_tick  # e.g. resend buffered job events; runs even when Redis is down
        self.interval = interval
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> WorkerHeartbeat:
        data = self.snapshot()
        key = HEARTBEAT_KEY.format(worker_id=data["worker_id"])
        pipe = self.redis.pipeline()
        pipe.set(key, json.dumps(data), px=int(self.ttl * 1000))
        pipe.sadd(HEARTBEAT_INDEX, data["worker_id"])
        pipe.execute()
        return data

    def poll_commands(self, worker_id: str) -> int:
        """Apply the operator's queued WorkerCommands (LPOP until empty); how many were."""
        if self.on_command is None:
            return 0
        applied = 0
        key = WORKER_COMMANDS_KEY.format(worker_id=worker_id)
        while (raw := self.redis.lpop(key)) is not None:
            try:
                assert isinstance(raw, (str, bytes)), raw
                command = json.loads(raw)
                self.on_command(command)
                applied += 1
            except Exception:
                log.warning("bad worker command %r", raw, exc_info=True)
        return applied

    def tick(self) -> WorkerHeartbeat:
        """One heartbeat: report, take commands, and report again at once if any applied."""
        data = self.beat()
        if self.poll_commands(data["worker_id"]):
            data = self.beat()
        return data

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.on_tick is not None:
                try:
                    self.on_tick()
                except Exception:
                    log.warning("heartbeat hook failed", exc_info=True)
            try:
                self.tick()
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            self._stop.wait(self.interval)

    def stop(self, *, remove: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if remove:
            try:
                data = self.snapshot()
                self.redis.delete(HEARTBEAT_KEY.format(worker_id=data["worker_id"]))
            except Exception:
                log.debug("could not remove the heartbeat key", exc_info=True)
