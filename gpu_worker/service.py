"""The worker service: takes GenerationRequests from Dramatiq, runs the engine, reports events.

Nothing here is declared at import time: `register_actors(broker, service)` builds the actor on
the broker it is given (tests pass their own), and events go back to the platform by actor name
(`protocol.JOB_EVENT_ACTOR` on `protocol.PLATFORM_QUEUE`), so no Django code is imported.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.middleware import CurrentMessage, TimeLimitExceeded

from gpu_worker.heartbeat import Heartbeat, WorkerStatus
from gpu_worker.protocol import (
    GENERATE_ACTOR,
    GENERATE_KWARG,
    GPU_QUEUE,
    JOB_EVENT_ACTOR,
    JOB_EVENT_KWARG,
    PLATFORM_QUEUE,
    GenerationRequest,
    JobEvent,
    JobTimings,
    WorkerCommand,
    WorkerHeartbeat,
)

if TYPE_CHECKING:
    import redis

    from gpu_worker.engine import Engine
    from gpu_worker.progress import ChannelPublisher

log = logging.getLogger(__name__)

# Dramatiq options for the GPU actor, named on purpose.
MAX_RETRIES = 2  # only unexpected errors are retried; a failed job is reported, not retried
TIME_LIMIT_MS = 2 * 3600 * 1000  # a big CPU batch can take long; the platform sweeps stuck jobs
MIN_BACKOFF_MS = 2_000
WORKER_TIMEOUT_MS = 50  # Dramatiq's idle poll: ~50 ms pickup instead of up to 1 s
QUEUE_PREFETCH = 1  # one GPU, one job: leave the others in Redis for other workers


class WorkerService:
    def __init__(
        self,
        *,
        engine: Engine,
        broker: dramatiq.Broker,
        redis_client: redis.Redis,
        publisher: ChannelPublisher | None,
        worker_id: str,
        progress_interval: float = 0.25,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self.engine = engine
        self.broker = broker
        self.redis = redis_client
        self.publisher = publisher
        self.worker_id = worker_id
        self.progress_interval = progress_interval
        self.max_retries = max_retries
        self.status = WorkerStatus(worker_id=worker_id, device=str(engine.device))
        self.worker: dramatiq.Worker | None = None  # set at boot, for drain (pausing consumers)

    # --- operator commands -----------------------------------------------------------------
    def apply_command(self, command: WorkerCommand) -> None:
        action = command.get("action")
        if action == "drain":
            self.drain()
        elif action == "undrain":
            self.undrain()
        elif action == "unload":
            self.unload(command.get("model", ""))
        else:
            log.warning("unknown worker command %r", command)

    def drain(self) -> None:
        """Finish the current job and take no more (they stay in Redis for other workers)."""
        self.status.draining = True
        for consumer in self.worker.consumers.values() if self.worker else ():
            consumer.pause()

    def undrain(self) -> None:
        self.status.draining = False
        for consumer in self.worker.consumers.values() if self.worker else ():
            consumer.resume()

    def unload(self, name: str) -> int:
        """Free a checkpoint (with any VAE pairing) from the cache; unknown names free nothing."""
        shas = {
            item.sha256
            for item in self.engine.catalogue.items.values()
            if item.kind == "checkpoint" and item.name == name
        }
        return self.engine.cache.discard_where(
            lambda key: isinstance(key, tuple) and key[0] in shas
        )

    def requeue(self, request: GenerationRequest) -> None:
        """Give a request back to the queue (a new message: the one being handled gets acked)."""
        self.broker.enqueue(
            dramatiq.Message(
                queue_name=GPU_QUEUE,
                actor_name=GENERATE_ACTOR,
                args=(),
                kwargs={GENERATE_KWARG: request},
                options={},
            )
        )

    # --- events to the platform ------------------------------------------------------------
    def report(self, event: JobEvent) -> None:
        self.broker.enqueue(
            dramatiq.Message(
                queue_name=PLATFORM_QUEUE,
                actor_name=JOB_EVENT_ACTOR,
                args=(),
                kwargs={JOB_EVENT_KWARG: dict(event)},
                options={},
            )
        )

    def _event(self, request: GenerationRequest, kind: Any, **fields: Any) -> JobEvent:
        event = JobEvent(
            job_id=request["job_id"],
            attempt=request["attempt"],
            worker_id=self.worker_id,
            kind=kind,
        )
        event.update(fields)  # type: ignore[typeddict-item]
        return event

    # --- one job ---------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        *,
        enqueued_at_ms: int | None = None,
        retries: int = 0,
    ) -> JobEvent | None:
        """Run one request and report it; returns the terminal event that was sent (None when
        a draining worker gave the request back to the queue)."""
        from gpu_worker.engine import JobFailed
        from gpu_worker.progress import JobMonitor, read_cancel_flag

        if self.status.draining:  # it was prefetched before the drain: let another worker run it
            self.requeue(request)
            return None
        started_wall = time.time()
        queued_s = max(0.0, started_wall - enqueued_at_ms / 1000) if enqueued_at_ms else None
        if read_cancel_flag(self.redis, request["job_id"]) == "interrupt":
            return self._send(self._event(request, "cancelled", steps_done=0))
        self.status.job_started(request["job_id"])
        try:
            self.report(self._event(request, "started"))
            monitor = JobMonitor(
                job_id=request["job_id"],
                events_group=request["events_group"],
                redis_client=self.redis,
                publisher=self.publisher,
                min_interval=self.progress_interval,
                on_step=self.status.step,
            )
            try:
                result = self.engine.run(request, monitor)
            except JobFailed as exc:
                return self._send(self._event(request, "failed", error=str(exc)))
            except TimeLimitExceeded:
                return self._send(self._event(request, "failed", error="time limit exceeded"))
            except Exception as exc:
                log.exception("job %s failed unexpectedly", request["job_id"])
                if retries < self.max_retries:
                    raise  # Dramatiq retries it; the platform treats the redelivery as a no-op
                return self._send(
                    self._event(request, "failed", error=f"internal error: {type(exc).__name__}")
                )
            finally:
                if self.publisher is not None:
                    self.publisher.flush()
            timings: JobTimings = result.timings
            if queued_s is not None:
                timings["queued_s"] = round(queued_s, 4)
            if result.interrupted or not result.images:
                fields: dict[str, Any] = {"steps_done": result.steps_done, "timings": timings}
                if result.images:
                    fields["images"] = result.images
                return self._send(self._event(request, "cancelled", **fields))
            return self._send(
                self._event(
                    request,
                    "succeeded",
                    images=result.images,
                    timings=timings,
                    steps_done=result.steps_done,
                )
            )
        finally:
            self.status.job_finished()

    def _send(self, event: JobEvent) -> JobEvent:
        self.report(event)
        return event

    # --- heartbeat -------------------------------------------------------------------------
    def heartbeat_snapshot(self) -> WorkerHeartbeat:
        engine = self.engine
        names = {
            item.sha256: item.name
            for item in engine.catalogue.items.values()
            if item.kind == "checkpoint"
        }
        # cache keys are (checkpoint sha256, VAE sha256 or None)
        loaded = [
            names.get(key[0], key[0][:10])
            for key in engine.cache.keys_hottest_first()
            if isinstance(key, tuple)
        ]
        used = engine.cache.device_bytes()
        if engine.device.type == "cuda":
            import torch

            used = int(torch.cuda.memory_allocated(engine.device))
        status = self.status
        return WorkerHeartbeat(
            worker_id=self.worker_id,
            hostname=status.hostname,
            device=str(engine.device),
            memory_used_bytes=used,
            memory_budget_bytes=engine.cache.device_budget_bytes,
            loaded_models=loaded,
            current_job=status.current_job,
            current_step=status.current_step,
            current_steps=status.current_steps,
            recent_its=round(status.recent_its, 3) if status.recent_its else None,
            draining=status.draining,
            inventory=engine.catalogue.entries(),
            sent_at=time.time(),
        )


class _AttachWorker(dramatiq.Middleware):
    """Lets the service pause its worker's consumers for a drain."""

    def __init__(self, service: WorkerService) -> None:
        self.service = service

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.service.worker = worker


def register_actors(broker: dramatiq.Broker, service: WorkerService) -> dramatiq.Actor:
    """Create the GPU actor on `broker` (not on the global one) and return it."""
    if not any(isinstance(m, CurrentMessage) for m in broker.middleware):
        broker.add_middleware(CurrentMessage())
    broker.add_middleware(_AttachWorker(service))

    def generate_images(request: GenerationRequest) -> None:
        message = CurrentMessage.get_current_message()
        service.generate(
            request,
            enqueued_at_ms=message.message_timestamp if message else None,
            retries=message.options.get("retries", 0) if message else 0,
        )

    return dramatiq.Actor(
        generate_images,
        broker=broker,
        actor_name=GENERATE_ACTOR,
        queue_name=GPU_QUEUE,
        priority=0,
        options={
            "max_retries": service.max_retries,
            "min_backoff": MIN_BACKOFF_MS,
            "time_limit": TIME_LIMIT_MS,
        },
    )


class WorkerLifecycle(dramatiq.Middleware):
    """Boot and shutdown work in Dramatiq's hooks, not at import: start the heartbeat and
    preload the named checkpoints (the first job then skips the import and load); on shutdown
    mark the worker draining, then stop the heartbeat and remove its key."""

    def __init__(
        self, service: WorkerService, *, preload: list[str], heartbeat: Heartbeat | None
    ) -> None:
        self.service = service
        self.preload = preload
        self.heartbeat = heartbeat

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # before the consumers start: no job is taken until the preloaded models are ready
        self.service.engine.refresh_catalogue()
        if self.heartbeat is not None:
            self.heartbeat.start()
        for name in self.preload:
            log.info("preloading %s", name)
            self.service.engine.preload(name)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.service.status.draining = True
        if self.heartbeat is not None:
            try:
                self.heartbeat.beat()  # the admin page sees "draining" at once
            except Exception:
                log.debug("last heartbeat failed", exc_info=True)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()


def start_worker(broker: dramatiq.Broker) -> dramatiq.Worker:
    """A Dramatiq worker for the GPU queue: one thread, one prefetched message, fast pickup."""
    worker = dramatiq.Worker(
        broker, queues={GPU_QUEUE}, worker_threads=1, worker_timeout=WORKER_TIMEOUT_MS
    )
    worker.queue_prefetch = QUEUE_PREFETCH
    worker.start()
    return worker


@contextlib.contextmanager
def running_worker(broker: dramatiq.Broker) -> Iterator[dramatiq.Worker]:
    """For tests and the embedded run: a started worker, stopped (job finished) on exit."""
    worker = start_worker(broker)
    try:
        yield worker
    finally:
        worker.stop(timeout=60_000)
