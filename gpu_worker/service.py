"""The worker service: takes GenerationRequests from Dramatiq, runs the engine, reports events.

Nothing here is declared at import time: `register_actors(broker, service)` builds the actor on
the broker it is given (tests pass their own), on this worker's own queue
(`protocol.worker_queue(worker_id)`: the platform's scheduler picks the worker), and events go
back to the platform by actor name (`protocol.JOB_EVENT_ACTOR` on `protocol.PLATFORM_QUEUE`), so
no Django code is imported. Events are buffered while Redis is unreachable and sent in order
once it answers again (the heartbeat thread retries), so a finished job's images are not lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import CurrentMessage, TimeLimitExceeded

from gpu_worker import result_store
from gpu_worker.batch_key import MAX_BATCH_IMAGES, batch_key
from gpu_worker.batch_queue import BatchQueue, Claimed
from gpu_worker.cancel_watch import CancelWatch
from gpu_worker.detect_responder import DetectResponder
from gpu_worker.heartbeat import Heartbeat, WorkerStatus
from gpu_worker.job_outcome import GenerationResult, JobFailed
from gpu_worker.model_downloads import DownloadCache, ModelFetchError
from gpu_worker.preprocessors import worker_preprocessors
from gpu_worker.protocol import (
    GENERATE_ACTOR,
    GENERATE_KWARG,
    JOB_EVENT_ACTOR,
    JOB_EVENT_KWARG,
    PLATFORM_QUEUE,
    STORED_KEY_PREFIX,
    GenerationRequest,
    JobEvent,
    JobTimings,
    ResultImage,
    WorkerCommand,
    WorkerHeartbeat,
    stored_model_key,
    worker_queue,
)

if TYPE_CHECKING:
    from gpu_worker.batching import BatchJob, BatchRunner
    from gpu_worker.engine import Engine
    from gpu_worker.progress import ChannelPublisher, JobMonitor

log = logging.getLogger(__name__)

# Dramatiq options for the GPU actor, named on purpose.
MAX_RETRIES = 2  # only unexpected errors are retried; a failed job is reported, not retried
# (a retry waits in this worker's delay queue; the sweeper counts it as the job still in hand)
TIME_LIMIT_MS = 2 * 3600 * 1000  # a big CPU batch can take long; the platform sweeps stuck jobs
MIN_BACKOFF_MS = 2_000
# How long an idle consumer waits before its housekeeping round. Pickup does not wait for it:
# the broker (gpu_worker.wakeup) wakes the consumer the moment a job is sent.
WORKER_TIMEOUT_MS = 1000
QUEUE_PREFETCH = 1  # one GPU, one job: the next assigned one waits in Redis, not in memory
DRAIN_WAIT_SECONDS = 2.0  # how long drain waits for its consumers to stop fetching
SEND_ERRORS = (redis.RedisError, BrokerConnectionError, OSError)
SHUTDOWN_FLUSH_SECONDS = 30  # how long a stopping worker keeps trying to send buffered events
HAND_OVER_AT_LIMIT_SHARE = 0.5  # a training hands its job on after this share of TIME_LIMIT_MS
# A batch takes no more joiners after this long, so its actor (one Dramatiq message) ends well
# inside TIME_LIMIT_MS however steady the stream of compatible jobs.
BATCH_JOIN_SECONDS = 20 * 60
# How often a running batch looks at its queue for joiners: a Redis round trip per step would
# cost a fast GPU a few percent; a joiner waits at most this long for its next step boundary.
BATCH_LOOK_SECONDS = 0.05
# With a broker that counts wake-ups (gpu_worker.wakeup), a batch looks only after a message
# was sent to its queue, and at least this often (a wake-up lost with a dropped subscription,
# a retry moved in from the delay queue).
BATCH_RECHECK_SECONDS = 1.0


def job_event_message(event: JobEvent) -> dramatiq.Message[Any]:
    """The message a job event travels in: to the platform's actor, by name."""
    return dramatiq.Message(
        queue_name=PLATFORM_QUEUE,
        actor_name=JOB_EVENT_ACTOR,
        args=(),
        kwargs={JOB_EVENT_KWARG: dict(event)},
        options={},
    )


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Admitted:
    """A job the worker starts: its 'started' event is sent, its step observer made."""

    monitor: JobMonitor
    queued_s: float | None


@dataclass
class _BatchMember:
    """A job of a running batch and the message it came in: `claim` None for the one Dramatiq
    handed the actor, else a message claimed from the queue, acked once the job is reported."""

    job: BatchJob
    admitted: _Admitted
    claim: Claimed | None
    reported: bool = False


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
        downloads: DownloadCache | None = None,
        batch_max_images: int = MAX_BATCH_IMAGES,
    ) -> None:
        self.engine = engine
        self.downloads = downloads
        self.broker = broker
        self.redis = redis_client
        self.publisher = publisher
        self.worker_id = worker_id
        self.progress_interval = progress_interval
        self.max_retries = max_retries
        self.status = WorkerStatus(worker_id=worker_id, device=str(engine.device))
        self.worker: dramatiq.Worker | None = None  # set at boot, for drain (pausing consumers)
        self.queue = worker_queue(worker_id)
        self._outbox: deque[JobEvent] = deque()  # events not yet accepted by Redis, in order
        # The broker id of the message being run: never given back, its job is running here.
        self.in_hand: str | None = None
        self.started_monotonic = time.monotonic()  # of the job being run (hand_over reads it)
        self._outbox_lock = threading.Lock()
        # Cross-user batching (gpu_worker/batching.py): off with batch_max_images 0 or a broker
        # without Redis. `claimed`: messages taken from the queue into the running batch.
        self.batch_max_images = batch_max_images
        client = getattr(broker, "client", None)
        namespace = getattr(broker, "namespace", "dramatiq")
        self.batch_queue = (
            BatchQueue(client, namespace=namespace, queue=self.queue)
            if client is not None and batch_max_images > 0
            else None
        )
        self.claimed: set[str] = set()
        self._batcher: BatchRunner | None = None
        # A batch job whose PNGs are still being written is reported from here once they are,
        # so that the batch's other jobs step on meanwhile (in the order the jobs finished).
        self._reporter = ThreadPoolExecutor(1, thread_name_prefix="batch-reporter")
        self._member_reports: list[Future[BaseException | None]] = []
        # ControlNet preprocessor previews, answered beside the job thread (WorkerLifecycle
        # starts and stops it)
        self.previews = DetectResponder(
            redis_client, worker_id, self.preprocessors, engine.annotators.control_map
        )
        # Tells each step whether its cancel flag may have changed (one connection, no reads).
        self.cancel_watch = CancelWatch.for_client(redis_client)

    def preprocessors(self) -> list[str]:
        return worker_preprocessors(self.engine.models_dir)

    # --- operator commands -----------------------------------------------------------------
    def apply_command(self, command: WorkerCommand) -> None:
        action = command.get("action")
        if action == "drain":
            self.drain()
        elif action == "undrain":
            self.undrain()
        elif action == "unload":
            self.unload(command.get("model", ""))
        elif action == "evict":
            self.evict(command.get("sha256", ""))
        else:
            log.warning("unknown worker command %r", command)

    def drain(self) -> None:
        """Finish the current job and take no more: the platform takes back what is assigned
        here (it sees `draining` in the heartbeat), and whatever is fetched meanwhile is
        released to it (see `generate`)."""
        self.status.draining = True
        consumers = list(self.worker.consumers.values()) if self.worker else []
        for consumer in consumers:
            consumer.pause()
        wake = getattr(self.broker, "wake", None)
        if wake is not None:  # an idle consumer notices the pause now, not after its timeout
            wake(self.queue)
        # Wait until each consumer noticed, so that once drain returns nothing more is fetched
        # (bounded: never hang the caller).
        for consumer in consumers:
            consumer.paused_event.wait(timeout=DRAIN_WAIT_SECONDS)

    def undrain(self) -> None:
        self.status.draining = False
        for consumer in self.worker.consumers.values() if self.worker else ():
            consumer.resume()

    def unload(self, name: str) -> int:
        """Free a checkpoint (with any VAE pairing) from the cache, by catalogue name or, for
        one fetched from the store, by its heartbeat key; unknown names free nothing."""
        shas = {
            item.sha256
            for item in self.engine.catalogue.items.values()
            if item.kind == "checkpoint" and item.name == name
        }
        if name.startswith(STORED_KEY_PREFIX):
            shas.add(name.removeprefix(STORED_KEY_PREFIX))
        return self.engine.cache.discard_where(
            lambda key: isinstance(key, tuple) and key[0] in shas
        )

    def evict(self, sha256: str) -> None:
        """A deleted upload: drop it from the disk cache and from memory."""
        if self.downloads is not None and sha256:
            self.downloads.evict(sha256)
        self.engine.cache.discard_where(lambda key: isinstance(key, tuple) and sha256 in key)

    # --- events to the platform ------------------------------------------------------------
    def report(self, event: JobEvent, *, wait: bool = True) -> None:
        """Send an event; if Redis is unreachable it waits in the outbox (`flush_events`).
        `wait=False`: sent from the publisher's thread, so that the caller (a job about to
        start its engine) does not wait on Redis; the outbox keeps the order, and the next
        report or flush sends whatever is still in it first."""
        with self._outbox_lock:
            self._outbox.append(event)
        if not wait and self.publisher is not None:
            self.publisher.run(self.flush_events)
            return
        self.flush_events()

    def flush_events(self) -> bool:
        """Send the buffered events in order; True when none is left."""
        with self._outbox_lock:
            while self._outbox:
                event = self._outbox[0]
                try:
                    self.broker.enqueue(job_event_message(event))
                except SEND_ERRORS:
                    log.warning(
                        "Redis unreachable: %d job event(s) kept to resend", len(self._outbox)
                    )
                    return False
                self._outbox.popleft()
        return True

    def pending_events(self) -> int:
        with self._outbox_lock:
            return len(self._outbox)

    def job_waiting(self) -> bool:
        """Whether another job waits in this worker's queue (the scheduler's second slot): a
        training then yields the GPU at its next epoch boundary, so others' jobs wait at most
        one epoch."""
        client = getattr(self.broker, "client", None)
        namespace = getattr(self.broker, "namespace", "dramatiq")
        if client is None:
            return False
        try:
            ids = {_decode(i) for i in client.hkeys(f"{namespace}:{self.queue}.msgs")}
        except SEND_ERRORS:
            return False  # Redis away for a moment: keep training
        return bool(ids - {self.in_hand})

    def hand_over(self) -> bool:
        """Asked by a training between epochs: give the job back now (drain, another job
        waiting here, or half the actor's time limit spent, so a long training never meets
        it); the next attempt resumes from the epoch just posted."""
        running_for = time.monotonic() - self.started_monotonic
        if running_for > TIME_LIMIT_MS / 1000 * HAND_OVER_AT_LIMIT_SHARE:
            return True
        return self.status.draining or self.job_waiting()

    def release_queued(self) -> int:
        """On shutdown: give every job still waiting in this worker's queue back to the
        platform (a 'released' event each) and empty the queue; how many were. The message
        being run stays: its job finishes here and its message is acked as usual."""
        client = getattr(self.broker, "client", None)
        namespace = getattr(self.broker, "namespace", "dramatiq")
        if client is None:
            return 0
        released = 0
        for suffix in ("", ".DQ"):
            key = f"{namespace}:{self.queue}{suffix}.msgs"
            for message_id, raw in client.hgetall(key).items():
                if _decode(message_id) == self.in_hand or _decode(message_id) in self.claimed:
                    continue
                client.hdel(key, message_id)
                try:
                    request = (dramatiq.Message.decode(raw).kwargs or {})[GENERATE_KWARG]
                except (ValueError, KeyError, TypeError):
                    log.warning("unreadable message in %s dropped", key)
                    continue
                self.report(self._event(request, "released"))
                released += 1
            client.delete(f"{namespace}:{self.queue}{suffix}")
        return released

    def _event(self, request: GenerationRequest, kind: Any, **fields: Any) -> JobEvent:
        event = JobEvent(
            job_id=request["job_id"],
            attempt=request["attempt"],
            worker_id=self.worker_id,
            kind=kind,
        )
        # `fields` are JobEvent's optional keys, by name (images, error, steps_done, timings).
        event.update(fields)  # type: ignore[typeddict-item]
        return event

    # --- one job ---------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        *,
        enqueued_at_ms: int | None = None,
        retries: int = 0,
    ) -> JobEvent:
        """Run one request and report it; returns the last event sent (a 'released' one when a
        draining worker gives the request back)."""
        admitted = self._admit(request, enqueued_at_ms, current=True)
        if not isinstance(admitted, _Admitted):
            return admitted
        try:
            outcome: GenerationResult | BaseException
            try:
                self.engine.job_items = self._fetch_models(request)
                if request["mode"] == "train":  # LoRA training: its own module, same events
                    from gpu_worker.training_job import run_training

                    outcome = run_training(self.engine, request, admitted.monitor, self.hand_over)
                elif request["mode"] == "merge":  # the checkpoint merger (gpu_worker/merging.py)
                    from gpu_worker.merging import run_merge_job

                    outcome = run_merge_job(self.engine, request, admitted.monitor)
                else:
                    outcome = self.engine.run(request, admitted.monitor)
            except (Exception, TimeLimitExceeded) as exc:  # the latter is no Exception
                outcome = exc
            finally:
                self.engine.job_items = {}
                if self.publisher is not None:
                    self.publisher.flush()
            return self._settle(request, outcome, admitted.queued_s, retries=retries)
        finally:
            self.status.job_finished()

    def _admit(
        self, request: GenerationRequest, enqueued_at_ms: int | None, *, current: bool
    ) -> _Admitted | JobEvent:
        """Start a job: 'started' sent and its monitor made; or the event that ends it unrun
        (released while draining, cancelled before it started). `current`: the job the
        heartbeat shows."""
        from gpu_worker.progress import read_cancel_flag

        if self.status.draining:  # fetched as the drain began: another worker will run it
            return self._send(self._event(request, "released"))
        started_wall = time.time()
        queued_s = max(0.0, started_wall - enqueued_at_ms / 1000) if enqueued_at_ms else None
        watched = self.cancel_watch.version()  # before the read: a flag set after it is seen
        flag = read_cancel_flag(self.redis, request["job_id"])
        if flag == "interrupt":
            return self._send(self._event(request, "cancelled", steps_done=0))
        if current:
            self.status.job_started(request["job_id"])
            self.started_monotonic = time.monotonic()
        try:
            # Off this thread: the engine starts now, not two round trips later.
            self.report(self._event(request, "started"), wait=False)
        except BaseException:
            if current:
                self.status.job_finished()
            raise
        # The flag was read just now: the first step need not read it again (unless it said
        # "skip", which that step must act on).
        read_at = watched if flag is None else None
        return _Admitted(
            self._monitor(request, current=current, flag_read_at_version=read_at), queued_s
        )

    def _monitor(
        self,
        request: GenerationRequest,
        *,
        current: bool,
        flag_read_at_version: int | None = None,
    ) -> JobMonitor:
        from gpu_worker.progress import JobMonitor

        return JobMonitor(
            job_id=request["job_id"],
            events_group=request["events_group"],
            redis_client=self.redis,
            publisher=self.publisher,
            min_interval=self.progress_interval,
            on_step=self.status.step if current else None,
            cancel_watch=self.cancel_watch,
            flag_read_at_version=flag_read_at_version,
        )

    def _settle(
        self,
        request: GenerationRequest,
        outcome: GenerationResult | BaseException,
        queued_s: float | None,
        *,
        retries: int,
    ) -> JobEvent:
        """Report how the job ended. An unexpected error is raised again while retries are
        left (Dramatiq retries it; the platform treats the redelivery as a no-op)."""
        if isinstance(outcome, ModelFetchError | JobFailed):
            return self._send(self._event(request, "failed", error=str(outcome)))
        if isinstance(outcome, TimeLimitExceeded):
            return self._send(self._event(request, "failed", error="time limit exceeded"))
        if isinstance(outcome, BaseException):
            log.error("job %s failed unexpectedly", request["job_id"], exc_info=outcome)
            if retries < self.max_retries:
                raise outcome
            error = f"internal error: {type(outcome).__name__}"
            return self._send(self._event(request, "failed", error=error))
        result = outcome
        timings: JobTimings = result.timings
        if queued_s is not None:
            timings["queued_s"] = round(queued_s, 4)
        if result.handed_over:  # drained between epochs: another worker resumes it
            return self._send(self._event(request, "released", steps_done=result.steps_done))
        if result.interrupted or not (result.images or result.model):
            fields: dict[str, Any] = {"steps_done": result.steps_done, "timings": timings}
            if result.images:  # (the platform keeps none of these: no bytes left in Redis)
                fields["images"] = result_store.with_base64(result.images)
            return self._send(self._event(request, "cancelled", **fields))
        extra: dict[str, Any] = {"model": result.model} if result.model else {}
        return self._send(
            self._event(
                request,
                "succeeded",
                images=self._wire_images(request, result.images),
                timings=timings,
                steps_done=result.steps_done,
                **extra,
            )
        )

    def _wire_images(
        self, request: GenerationRequest, images: list[ResultImage]
    ) -> list[ResultImage]:
        """The images as the event carries them: their PNGs' bytes through Redis where the
        platform asked for that (`gpu_worker.result_store`); else, or when Redis refuses them,
        as base64 in the event (which the outbox keeps until Redis answers)."""
        if images and request.get("result_pngs_in_redis"):
            try:
                return result_store.for_the_wire(
                    self.redis, request["job_id"], request["attempt"], images
                )
            except SEND_ERRORS:
                log.warning("Redis unreachable: job %s's images go in its event", request["job_id"])
        return result_store.with_base64(images)

    # --- a batch (cross-user batching) -----------------------------------------------------
    def batches(self, request: GenerationRequest) -> bool:
        """Whether this request runs through the batch runner (others may join it)."""
        return self.batch_queue is not None and batch_key(request) is not None

    def generate_batch(
        self,
        request: GenerationRequest,
        *,
        enqueued_at_ms: int | None = None,
        retries: int = 0,
    ) -> None:
        """Run a batchable request with every compatible job that is, or comes, in this
        worker's queue joining at a step boundary (gpu_worker/batching.py); each job is
        reported as it ends. A job's own error fails it alone (no Dramatiq retry: the batch's
        other jobs went on); a crash of the batch itself sends the jobs it left unreported
        through the serial path, one by one (`_run_alone`). `retries`: Dramatiq's count for
        the actor's own message."""
        from gpu_worker.batching import BatchJob, BatchRunner

        key, queue = batch_key(request), self.batch_queue
        assert key is not None and queue is not None
        admitted = self._admit(request, enqueued_at_ms, current=True)
        if not isinstance(admitted, _Admitted):
            return
        if self._batcher is None:
            self._batcher = BatchRunner(self.engine, max_images=self.batch_max_images)

        members: list[_BatchMember] = []  # in the order they joined

        def add_member(
            job_request: GenerationRequest, admitted: _Admitted, claim: Claimed | None
        ) -> BatchJob:
            def done(_job: BatchJob, outcome: Any) -> None:  # its end in the batch
                self._report_member(member, outcome, retries=self.max_retries)

            member = _BatchMember(BatchJob(job_request, admitted.monitor, done), admitted, claim)
            members.append(member)
            return member.job

        joining_until = time.monotonic() + BATCH_JOIN_SECONDS
        next_look = recheck_at = 0.0
        heard = getattr(self.broker, "heard", None)  # None: no wake-ups counted, look on a timer
        looked_at_heard: int | None = None  # the count at the last look

        def take_more(room: int) -> list[BatchJob]:
            nonlocal next_look, recheck_at, looked_at_heard
            now = time.monotonic()
            if self.status.draining or now > joining_until or now < next_look:
                return []
            count = heard(self.queue) if heard is not None else None
            if count is not None and count == looked_at_heard and now < recheck_at:
                return []  # nothing sent here since the last look: no round trip
            next_look, recheck_at = now + BATCH_LOOK_SECONDS, now + BATCH_RECHECK_SECONDS
            looked_at_heard = count  # read before the claim: a send during it looks again
            try:
                claimed = queue.claim(key, room)
            except SEND_ERRORS:
                log.warning("cannot look for jobs to batch (Redis unreachable)")
                return []
            joining = []
            for claim in claimed:
                self.claimed.add(claim.message_id)
                joined = self._admit(claim.request, claim.enqueued_at_ms, current=False)
                if not isinstance(joined, _Admitted):
                    self._ack(claim.message_id)
                    continue
                joining.append(add_member(claim.request, joined, claim))
            if joining:
                log.info("%d job(s) joined the batch of %s", len(joining), request["job_id"])
            return joining

        retry_own: BaseException | None = None
        try:
            first = add_member(request, admitted, None)
            stranded = {id(job) for job in self._batcher.run(first, take_more)}
            retry_own = self._run_alone([m for m in members if id(m.job) in stranded], retries)
        except TimeLimitExceeded:
            pass  # every job in the batch was reported failed (as generate does)
        finally:
            self.status.job_finished()
            for member in members:  # stopped while it joined or waited to run alone
                if not member.reported:
                    stopped = JobFailed("the batch it joined stopped")
                    self._report_member(member, stopped, retries=self.max_retries)
            # Every job reported before the actor returns (and Dramatiq acks its message).
            self._await_member_reports()
        if retry_own is not None:
            raise retry_own  # Dramatiq retries the actor's own message, as the serial path's

    def _run_alone(self, members: list[_BatchMember], retries: int) -> BaseException | None:
        """The jobs a crash of their batch left unreported (out of memory in the shared UNet
        call...: no one job's fault) run again one by one, in the order they joined, as the
        serial path runs them: a fresh monitor (progress restarts, cancel works) and an
        unexpected error retried while retries are left. What the actor must raise for its own
        message's retry comes back, to raise once every job is reported."""
        retry_own = None
        for member in members:
            request = member.job.request
            self.status.job_started(request["job_id"])  # the heartbeat shows it running now
            outcome: GenerationResult | BaseException
            try:
                outcome = self.engine.run(request, self._monitor(request, current=True))
            except (Exception, TimeLimitExceeded) as exc:  # the latter is no Exception
                outcome = exc
            own = member.claim.retries if member.claim else retries
            retry_own = self._report_member(member, outcome, retries=own) or retry_own
            if isinstance(outcome, TimeLimitExceeded):
                break  # the actor's time is up: the rest are reported stopped
        return retry_own

    def _report_member(
        self, member: _BatchMember, outcome: GenerationResult | BaseException, *, retries: int
    ) -> BaseException | None:
        """Report a batch job's end (as `_settle`), then ack its claimed message. An unexpected
        error with retries left is retried as Dramatiq would: a claimed message is sent again
        (before the ack, so the sweeper always sees one); for the actor's own message the
        error comes back, for the actor to raise. A result whose images are still being
        written is reported from the reporter's thread once they are."""
        if isinstance(outcome, GenerationResult) and outcome.pending:
            member.reported = True
            report = self._reporter.submit(self._report_member_now, member, outcome, retries)
            self._member_reports.append(report)
            return None
        return self._report_member_now(member, outcome, retries)

    def _await_member_reports(self) -> None:
        reports, self._member_reports = self._member_reports, []
        for report in reports:
            try:
                report.result()
            except Exception:  # its job's event stays unsent: the sweeper settles the job
                log.exception("reporting a batch job failed")

    def _report_member_now(
        self, member: _BatchMember, outcome: GenerationResult | BaseException, retries: int
    ) -> BaseException | None:
        if isinstance(outcome, GenerationResult):
            try:
                outcome.await_images()
            except JobFailed as exc:
                outcome = exc
        if self.publisher is not None:
            self.publisher.flush()  # its last progress before its end
        member.reported = True
        try:
            self._settle(member.job.request, outcome, member.admitted.queued_s, retries=retries)
        except Exception as exc:  # only with retries left
            if member.claim is None:
                return exc
            self._retry_later(member.claim)
        finally:
            if member.claim is not None:
                self._ack(member.claim.message_id)
        return None

    def _retry_later(self, claim: Claimed) -> None:
        """A claimed message again on this worker's delay queue with one retry more, as
        Dramatiq's Retries middleware sends back the message of an actor that raised."""
        delay = MIN_BACKOFF_MS * 2**claim.retries
        self.broker.enqueue(claim.message.copy(options={"retries": claim.retries + 1}), delay=delay)

    def _ack(self, message_id: str) -> None:
        self.claimed.discard(message_id)
        if self.batch_queue is None:
            return
        try:
            self.batch_queue.ack(message_id)
        except SEND_ERRORS:  # left in the hash: a restart under this id releases it (no-op)
            log.warning("cannot forget the batched message %s", message_id)

    def _fetch_models(self, request: GenerationRequest) -> dict[tuple[str, str], Any]:
        deliveries = request.get("models") or []
        if not deliveries:
            return {}
        if self.downloads is None:
            raise ModelFetchError("this worker has no download cache for members' models")
        items = self.downloads.fetch_all([d for d in deliveries if "recipe" not in d])
        recipes = [d for d in deliveries if "recipe" in d]
        if recipes:  # virtual models: computed here from their inputs, fetched just above
            from gpu_worker.merging import materialize

            self.engine.job_items = items
            for delivery in recipes:
                items[(delivery["kind"], delivery["name"])] = materialize(
                    self.engine, delivery, self.downloads
                )
        return items

    def _send(self, event: JobEvent) -> JobEvent:
        self.report(event)
        return event

    # --- heartbeat -------------------------------------------------------------------------
    def heartbeat_snapshot(self) -> WorkerHeartbeat:
        engine = self.engine
        # A checkpoint of the models folder by its name, one fetched from the store by its hash
        # (members' names may repeat; the scheduler keys such jobs by hash too).
        names = {
            item.sha256: item.name
            for item in engine.catalogue.items.values()
            if item.kind == "checkpoint"
        }
        # cache keys are (checkpoint sha256, VAE sha256 or None); a checkpoint is hot when any
        # of its pairings is on the device, warm when held only in CPU RAM
        hot: list[str] = []
        warm: list[str] = []
        sizes: list[int] = []
        for key in engine.cache.keys_hottest_first():
            entry = engine.cache.entry(key)
            if not isinstance(key, tuple) or entry is None:
                continue
            name = names.get(key[0]) or stored_model_key(key[0])
            if entry.on_device:
                sizes.append(entry.size_bytes)
                if name not in hot:
                    hot.append(name)
            elif name not in warm:
                warm.append(name)
        warm = [name for name in warm if name not in hot]
        controlnets = self._loaded_controlnets()
        budget = engine.cache.device_budget_bytes
        hot_capacity = max(1, budget // max(sizes)) if sizes else 1
        used = engine.cache.device_bytes()
        if engine.device.type == "cuda":
            import torch

            used = int(torch.cuda.memory_allocated(engine.device))
        status = self.status
        beat = WorkerHeartbeat(
            worker_id=self.worker_id,
            hostname=status.hostname,
            device=str(engine.device),
            memory_used_bytes=used,
            memory_budget_bytes=engine.cache.device_budget_bytes,
            loaded_models=hot,
            warm_models=warm,
            loaded_controlnets=controlnets,
            preprocessors=self.preprocessors(),
            hot_capacity=int(hot_capacity),
            batch_max_images=self.batch_max_images if self.batch_queue is not None else 0,
            queue=self.queue,
            current_job=status.current_job,
            current_step=status.current_step,
            current_steps=status.current_steps,
            recent_its=round(status.recent_its, 3) if status.recent_its else None,
            draining=status.draining,
            inventory=engine.catalogue.entries(),
            sent_at=time.time(),
        )
        if self.downloads is not None:  # the disk tier of fetched models
            beat["disk_models"] = self.downloads.shas()
            beat["disk_used_bytes"] = self.downloads.used_bytes()
            beat["disk_budget_bytes"] = self.downloads.budget_bytes
            beat["download_bytes_per_s"] = round(self.downloads.bytes_per_s)
        return beat

    def _loaded_controlnets(self) -> list[str]:
        """ControlNets on the device (cache keys `controlnet:<sha256>`), by catalogue name."""
        from gpu_worker.controlnet import CACHE_PREFIX  # torch: loaded in a worker anyway

        names = {
            item.sha256: item.name
            for item in self.engine.catalogue.items.values()
            if item.kind == "controlnet"
        }
        loaded = []
        for key in self.engine.cache.keys_hottest_first():
            entry = self.engine.cache.entry(key)
            if isinstance(key, str) and key.startswith(CACHE_PREFIX) and entry and entry.on_device:
                name = names.get(key[len(CACHE_PREFIX) :])
                if name is not None:
                    loaded.append(name)
        return loaded


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
        service.in_hand = message.options.get("redis_message_id") if message else None
        enqueued_at_ms = message.message_timestamp if message else None
        retries = message.options.get("retries", 0) if message else 0
        try:
            if service.batches(request):
                service.generate_batch(request, enqueued_at_ms=enqueued_at_ms, retries=retries)
            else:
                service.generate(request, enqueued_at_ms=enqueued_at_ms, retries=retries)
        finally:
            service.in_hand = None

    return dramatiq.Actor(
        generate_images,
        broker=broker,
        actor_name=GENERATE_ACTOR,
        queue_name=service.queue,
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
    mark the worker draining and give its queued jobs back, let the running one finish, send
    the buffered events, then stop the heartbeat and remove its key."""

    def __init__(
        self, service: WorkerService, *, preload: list[str], heartbeat: Heartbeat | None
    ) -> None:
        self.service = service
        self.preload = preload
        self.heartbeat = heartbeat

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # before the consumers start: no job is taken until the preloaded models are ready
        self.service.engine.refresh_catalogue()
        # A restart under the same id finds what was queued for its previous life: give it
        # back (the platform ignores what it already took back) rather than run stale work.
        self._release()
        if self.heartbeat is not None:
            self.heartbeat.start()
        self.service.previews.start()
        self.service.cancel_watch.version()  # tracking on before the first job's first step
        for name in self.preload:
            log.info("preloading %s", name)
            self.service.engine.preload(name)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # SIGTERM: the running job finishes; the assigned one goes back to the platform now.
        self.service.status.draining = True
        if self.heartbeat is not None:
            try:
                self.heartbeat.beat()  # the platform and the admin page see "draining" at once
            except Exception:
                log.debug("last heartbeat failed", exc_info=True)
        self._release()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._release()  # anything Dramatiq put back into our queue while stopping
        deadline = time.monotonic() + SHUTDOWN_FLUSH_SECONDS
        while not self.service.flush_events() and time.monotonic() < deadline:
            time.sleep(0.5)  # Redis is down: give it a moment before the events are lost
        self.service.previews.stop()
        self.service.cancel_watch.close()
        if self.heartbeat is not None:
            self.heartbeat.stop()

    def _release(self) -> None:
        try:
            released = self.service.release_queued()
        except SEND_ERRORS:
            log.warning("could not give back the queued jobs (Redis unreachable)")
            return
        if released:
            log.info("gave %d queued job(s) back to the platform", released)


def start_worker(broker: dramatiq.Broker, queue: str) -> dramatiq.Worker:
    """A Dramatiq worker for this GPU worker's own queue: one thread, one message fetched at a
    time, fast pickup."""
    worker = dramatiq.Worker(
        broker, queues={queue}, worker_threads=1, worker_timeout=WORKER_TIMEOUT_MS
    )
    worker.queue_prefetch = QUEUE_PREFETCH
    worker.start()
    return worker


@contextlib.contextmanager
def running_worker(broker: dramatiq.Broker, queue: str) -> Iterator[dramatiq.Worker]:
    """For tests and the embedded run: a started worker, stopped (job finished) on exit."""
    worker = start_worker(broker, queue)
    try:
        yield worker
    finally:
        worker.stop(timeout=60_000)
