"""`python manage.py run_platform_worker`: record GPU workers' job events, schedule, sweep, sync.

One process: a Dramatiq worker on the platform queue (two threads, woken through Redis as events
arrive), the dispatcher thread (a scheduling pass the moment a submission or an event wakes it
through Redis: `generation.scheduling.dispatcher.serve_dispatcher`), plus a tick loop (every
second) that runs the sweeper (dead workers, lost messages) and a safety-net scheduling pass,
and the catalogue sync and credit grants every few seconds. SIGINT/SIGTERM stop all cleanly
(the message in hand finishes; prefetched ones go back to Redis).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import dramatiq
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections

from accounts.grants import grant_periodic_credits
from generation.broker import get_broker
from generation.catalogue_sync import sync_catalogue
from generation.events import use_background_publisher
from generation.own_models import drop_expired_uploads
from generation.scheduling.dispatcher import request_schedule, serve_dispatcher
from generation.sweeper import UNREPORTED_GRACE_SECONDS, SweepMemory, sweep
from generation.worker_events import register_platform_actors
from gpu_worker.progress import ChannelPublisher
from gpu_worker.protocol import PLATFORM_QUEUE, WORKER_MISSING_GRACE_SECONDS
from gpu_worker.pubsub_sender import pubsub_sender

logger = logging.getLogger(__name__)


def keep_sqlite_connections() -> None:
    """On SQLite, each of this process's threads keeps its connection across messages and
    ticks: with Django's default (CONN_MAX_AGE 0, a connection per request) every worker event
    opened the file anew, ~1 ms of each job's recording. The threads live as long as the
    process, so the connections do not pile up; PostgreSQL's pool already makes reuse cheap.
    An operator's DATABASE_CONN_MAX_AGE stays as set."""
    database = connections.settings[DEFAULT_DB_ALIAS]
    if database["ENGINE"].endswith("sqlite3") and database.get("CONN_MAX_AGE") == 0:
        database["CONN_MAX_AGE"] = None


class Command(BaseCommand):
    help = "Run the platform worker: job events from GPU workers, the sweeper, catalogue sync."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument(
            "--tick",
            "--sweep-interval",
            dest="sweep_interval",
            type=float,
            default=1.0,
            help="seconds between sweeps and scheduling passes (default 1)",
        )
        parser.add_argument(
            "--catalogue-interval",
            type=float,
            default=15.0,
            help="seconds between catalogue syncs (default 15)",
        )
        parser.add_argument(
            "--worker-grace",
            type=float,
            default=WORKER_MISSING_GRACE_SECONDS,
            help="seconds a worker's heartbeat may be missing before it is declared dead "
            f"(default {WORKER_MISSING_GRACE_SECONDS}; shorter only with faster heartbeats)",
        )
        parser.add_argument(
            "--unreported-grace",
            type=float,
            default=UNREPORTED_GRACE_SECONDS,
            help="seconds a live worker may not report a job it no longer runs before the job "
            f"goes back to the queue (default {UNREPORTED_GRACE_SECONDS:.0f})",
        )
        parser.add_argument(
            "--no-periodic",
            action="store_true",
            help="only consume events (another process sweeps and schedules)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        keep_sqlite_connections()
        broker = get_broker()
        register_platform_actors(broker)
        # Events leave from the recording thread (one PUBLISH) where the layer allows it.
        publisher = pubsub_sender(settings.REDIS_URL, settings.CHANNEL_LAYER) or ChannelPublisher(
            layer=get_channel_layer()
        )
        use_background_publisher(publisher)
        worker = dramatiq.Worker(
            broker, queues={PLATFORM_QUEUE}, worker_threads=options["threads"], worker_timeout=1000
        )  # pickup is pushed (gpu_worker.wakeup); the timeout only paces housekeeping
        worker.start()
        self.stdout.write(
            f"platform worker consuming {PLATFORM_QUEUE!r} ({options['threads']} threads)"
        )
        dispatcher = None
        if not options["no_periodic"]:
            dispatcher = threading.Thread(
                target=serve_dispatcher, args=(stop,), name="dispatcher", daemon=True
            )
            dispatcher.start()
        try:
            if options["no_periodic"]:
                stop.wait()
            else:
                memory = SweepMemory(options["worker_grace"], options["unreported_grace"])
                self._periodic(
                    stop,
                    options["sweep_interval"],
                    options["catalogue_interval"],
                    memory,
                    dispatcher,
                )
        finally:
            self.stdout.write("stopping the platform worker")
            stop.set()
            if dispatcher is not None:
                dispatcher.join(timeout=10)
            worker.stop(timeout=30_000)
            use_background_publisher(None)
            publisher.close()
            broker.close()
            connections.close_all()

    def _periodic(
        self,
        stop: threading.Event,
        sweep_every: float,
        sync_every: float,
        memory: SweepMemory,  # kept across ticks: it times how long workers are missing
        dispatcher: threading.Thread | None = None,
    ) -> None:
        next_sync = 0.0
        elapsed = 0.0
        while not stop.is_set():
            close_old_connections()
            try:
                if elapsed >= next_sync:
                    counts = sync_catalogue()
                    if any(counts.values()):
                        logger.info("catalogue: %s", counts)
                    next_sync = elapsed + sync_every
                    # Idempotent per period, so running it on every sync is safe.
                    granted = grant_periodic_credits()
                    if granted:
                        logger.info("periodic credits granted to %s accounts", granted)
                    dropped = drop_expired_uploads()
                    if dropped:
                        logger.info("expired model uploads dropped: %s", dropped)
                report = sweep(memory=memory)
                if report.requeued or report.failed or report.dead_workers:
                    logger.info(
                        "sweep: back in the queue %d, failed %d, dead workers %s",
                        len(report.requeued),
                        len(report.failed),
                        report.dead_workers,
                    )
                if dispatcher is None or not dispatcher.is_alive():
                    request_schedule()  # else the dispatcher thread passes while jobs wait
            except Exception:  # the loop must outlive a bad pass; the next one retries
                logger.exception("periodic pass failed")
            finally:
                close_old_connections()
            stop.wait(sweep_every)
            elapsed += sweep_every
