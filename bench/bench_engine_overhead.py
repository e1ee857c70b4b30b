"""Engine overhead: a job through the GPU worker vs the same diffusers call made directly.

    python bench/bench_engine_overhead.py        (needs Redis: REDIS_URL or 127.0.0.1:6379/15)

Same demo model, prompt, sampler, size, steps and seed. Three figures, medians of N runs:
  direct    pipe(...) on the cached pipeline (fresh scheduler, CPU generator)
  engine    Engine.run (catalogue lookup, A1111 prompt encoding, PNG + infotext)
  worker    enqueue -> Dramatiq worker -> progress to the channel layer -> JobEvent back
Goal: within 5 % or 50 ms of direct on CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from support import demo_request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUNS = int(os.environ.get("BENCH_RUNS", "12"))
STEPS, SIZE = 10, 128


def main() -> None:
    import dramatiq
    import torch

    from gpu_worker.demo_model import make_demo_models
    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache
    from gpu_worker.progress import ChannelPublisher
    from gpu_worker.protocol import (
        GENERATE_ACTOR,
        GENERATE_KWARG,
        JOB_EVENT_ACTOR,
        PLATFORM_QUEUE,
        GenerationRequest,
    )
    from gpu_worker.samplers import build_scheduler, resolve_sampler
    from gpu_worker.service import WorkerService, register_actors, running_worker
    from gpu_worker.wakeup import WakeupRedisBroker

    torch.set_num_threads(1)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    make_demo_models(tmp / "models")
    cache = ModelCache(device="cpu", device_budget_bytes=1 << 30, ram_budget_bytes=2 << 30)
    engine = Engine(models_dir=tmp / "models", cache=cache, cache_dir=tmp / "cache")

    def request() -> GenerationRequest:
        return demo_request(negative_prompt="blurry", steps=STEPS, width=SIZE, height=SIZE)

    pipe = engine.pipeline(engine.resolve("checkpoint", "atelier-demo-v1"), None)
    choice = resolve_sampler("Euler a")

    def direct() -> None:
        pipe.scheduler = build_scheduler(choice, pipe.scheduler.config, seed=1234)
        pipe(
            "a photo of a cat",
            negative_prompt="blurry",
            num_inference_steps=STEPS,
            guidance_scale=7.0,
            width=SIZE,
            height=SIZE,
            generator=[torch.Generator("cpu").manual_seed(1234)],
        )

    def through_engine() -> None:
        engine.run(request())

    broker = WakeupRedisBroker(url=redis_url, namespace="atelier-bench-" + uuid.uuid4().hex[:6])
    done: dict[str, threading.Event] = {}

    queued: list[float] = []

    def record(event: dict) -> None:
        if event["kind"] != "started":
            queued.append(event["timings"]["queued_s"])
            done[event["job_id"]].set()

    dramatiq.Actor(
        record,
        broker=broker,
        actor_name=JOB_EVENT_ACTOR,
        queue_name=PLATFORM_QUEUE,
        priority=0,
        options={"max_retries": 0},
    )
    import redis

    publisher = ChannelPublisher(redis_url)
    service = WorkerService(
        engine=engine,
        broker=broker,
        redis_client=redis.Redis.from_url(redis_url),
        publisher=publisher,
        worker_id="bench",
    )
    register_actors(broker, service)
    # The stand-in platform polls every 5 ms so that the figure is the GPU worker's own cost
    # (the real platform worker's pickup is the platform's).
    platform = dramatiq.Worker(broker, queues={PLATFORM_QUEUE}, worker_threads=1, worker_timeout=5)
    platform.start()

    def through_worker() -> None:
        r = request()
        done[r["job_id"]] = threading.Event()
        broker.enqueue(
            dramatiq.Message(
                queue_name=service.queue,
                actor_name=GENERATE_ACTOR,
                args=(),
                kwargs={GENERATE_KWARG: r},
                options={},
            )
        )
        assert done[r["job_id"]].wait(60)

    timings: dict[str, list[float]] = {"direct": [], "engine": [], "worker": []}
    cpu: dict[str, list[float]] = {"direct": [], "engine": [], "worker": []}
    with running_worker(broker, service.queue):
        for fn in (direct, through_engine, through_worker):  # warm-up
            fn()
        for _ in range(RUNS):  # interleaved, so drift hits all three alike
            for name, fn in (
                ("direct", direct),
                ("engine", through_engine),
                ("worker", through_worker),
            ):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                timings[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)  # all threads of this process
    platform.stop()
    publisher.close()
    broker.flush_all()
    broker.close()

    print(
        f"demo model, {SIZE}x{SIZE}, {STEPS} steps Euler a, CFG 7, 1 CPU thread, "
        f"{RUNS} interleaved runs (min is the least disturbed by other load on the machine)"
    )
    for label, series, stat in (
        ("wall, min", timings, min),
        ("wall, median", timings, statistics.median),
        ("CPU time of the process, median", cpu, statistics.median),
    ):
        base = stat(series["direct"])
        print(f"  {label}:")
        print(f"    direct diffusers call   {base * 1000:8.1f} ms   ratio 1.000")
        for name in ("engine", "worker"):
            value = stat(series[name])
            print(
                f"    {name:<22}  {value * 1000:8.1f} ms   ratio {value / base:.3f}   "
                f"overhead {(value - base) * 1000:+.1f} ms"
            )
    print(
        f"  worker pickup (enqueue -> job start, queued_s): median "
        f"{statistics.median(queued) * 1000:.1f} ms, max {max(queued) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
