"""Pickup latency: from the platform's send to an idle GPU worker starting the job.

    python bench/bench_dispatch_pickup.py        (needs Redis: REDIS_URL or 127.0.0.1:6379/15)

The real Dramatiq consumers on a real Redis, with a stand-in actor that only notes when it
starts (no engine: the figure is delivery alone). Each job is sent after the worker has sat idle
for a random 50-400 ms, as a free GPU waits for the scheduler's next hand-out. Three set-ups,
measured interleaved in one run:
  default   one shared queue, Dramatiq's own idle poll (worker_timeout 1000 ms)
  shared    the previous path: one shared "gpu" queue, worker_timeout 50 ms
  own       the product's path: the worker's own queue via gpu_worker.service.start_worker, on
            the broker that wakes the consumer through Redis (gpu_worker.wakeup)
Goal: own p95 under 100 ms on loopback.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUNS = int(os.environ.get("BENCH_RUNS", "40"))


class Setup:
    def __init__(self, name: str, url: str, queue: str, worker_timeout: int | None) -> None:
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        from gpu_worker.protocol import GENERATE_ACTOR
        from gpu_worker.service import QUEUE_PREFETCH, start_worker
        from gpu_worker.wakeup import WakeupRedisBroker

        self.name, self.queue = name, queue
        # The product's broker (pushed wake-ups) for its own path; Dramatiq's for the others.
        kind = WakeupRedisBroker if worker_timeout is None else RedisBroker
        self.broker = kind(url=url, namespace=f"bench-pickup-{uuid.uuid4().hex[:8]}")
        self.started: dict[str, float] = {}
        self.events: dict[str, threading.Event] = {}

        def generate_images(request: dict) -> None:
            self.started[request["job_id"]] = time.perf_counter()
            self.events[request["job_id"]].set()

        dramatiq.Actor(
            generate_images,
            broker=self.broker,
            actor_name=GENERATE_ACTOR,
            queue_name=queue,
            priority=0,
            options={"max_retries": 0},
        )
        if worker_timeout is None:  # the product's own start-up for a GPU worker
            self.worker = start_worker(self.broker, queue)
        else:
            self.worker = dramatiq.Worker(
                self.broker, queues={queue}, worker_threads=1, worker_timeout=worker_timeout
            )
            self.worker.queue_prefetch = QUEUE_PREFETCH
            self.worker.start()
        self.latencies: list[float] = []

    def send_one(self) -> None:
        import dramatiq

        from gpu_worker.protocol import GENERATE_ACTOR, GENERATE_KWARG

        job_id = uuid.uuid4().hex
        self.events[job_id] = threading.Event()
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=self.queue,
            actor_name=GENERATE_ACTOR,
            args=(),
            kwargs={GENERATE_KWARG: {"job_id": job_id}},
            options={},
        )
        sent = time.perf_counter()
        self.broker.enqueue(message)
        assert self.events[job_id].wait(10), f"{self.name}: job not picked up"
        self.latencies.append((self.started[job_id] - sent) * 1000)

    def close(self) -> None:
        self.worker.stop(timeout=10_000)
        self.broker.flush_all()
        self.broker.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> None:
    from gpu_worker.protocol import GPU_QUEUE, worker_queue

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    rng = random.Random(9)
    setups = [
        Setup("default", url, GPU_QUEUE, 1000),
        Setup("shared", url, GPU_QUEUE, 50),
        Setup("own", url, worker_queue("bench-gpu-1"), None),
    ]
    try:
        for setup in setups:  # warm-up: connections and Lua scripts
            setup.send_one()
            setup.latencies.clear()
        for _ in range(RUNS):
            for setup in setups:
                time.sleep(rng.uniform(0.05, 0.4))  # the worker sits idle, polling
                setup.send_one()
    finally:
        for setup in setups:
            setup.close()
    base = statistics.median(setups[0].latencies)
    print(f"pickup latency, send -> idle worker starts the job ({RUNS} jobs each, ms)")
    print(f"{'set-up':<10}{'median':>9}{'p95':>9}{'max':>9}{'median vs default':>20}")
    for setup in setups:
        median = statistics.median(setup.latencies)
        print(
            f"{setup.name:<10}{median:>9.1f}{pct(setup.latencies, 0.95):>9.1f}"
            f"{max(setup.latencies):>9.1f}{median / base:>19.3f}x"
        )
    own = setups[2]
    goal = pct(own.latencies, 0.95) < 100
    print(f"goal own p95 < 100 ms: {'met' if goal else 'MISSED'}")


if __name__ == "__main__":
    main()
