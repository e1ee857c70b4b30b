"""Recording a job's start and result: a GPU worker's 'started' and 'succeeded' events through
the real platform worker.

    python -m operations.with_redis -- python bench/bench_record_path.py [--database URL]

The two last hops of bench_platform_overhead (engine-to-record, record-to-client) without the
rest of the platform around them, so that they can be measured many times: a job is handed to
a (pretend) worker as the dispatcher does, then its 'started' event, and later its 'succeeded'
one (a 128x128 PNG as the demo job makes; RECORD_SIDE=512 for SD's size), are sent the way a
GPU worker sends them (a Dramatiq message on the platform queue), and the bench waits for
job.started / job.succeeded on the owner's channel-layer group (what the websocket relays).
The platform worker (`manage.py run_platform_worker --no-periodic`) runs as deployed, in its
own process, with a dispatcher pretended alive elsewhere: the scheduling pass a finished job
wakes is not part of the recording. Runs on SQLite and PostgreSQL (BENCH_POSTGRES_URL, default
postgres://postgres@127.0.0.1:5432/atelier_bench_platform, dropped and created). Prints:

  <kind> sent to event     median and p90 over RECORD_RUNS jobs (after 5 unmeasured)
  platform worker CPU      its CPU time (/proc) per event recorded: the steadiest figure on a
                           busy machine (the 'started' one is taken from the job's engine)
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from support import cpu_seconds, per_database, setup_django, start, stop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = int(os.environ.get("RECORD_RUNS", "50"))
SIDE = int(os.environ.get("RECORD_SIDE", "128"))  # the result image's width and height
WARM_UP = 5
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/atelier_bench_platform"
)
JOB = {
    "checkpoint": "atelier-demo-v1",
    "prompt": "a lighthouse at dusk",
    "steps": 10,
    "width": 128,
    "height": 128,
    "sampler": "Euler a",
    "seed": 1234,
    "cfg_scale": 7,
}


def result_image() -> dict[str, Any]:
    """A SIDE x SIDE result as a worker reports the demo job's image (a gradient with noise:
    about as large as the demo model's output): its PNG with the infotext."""
    import numpy as np
    from PIL import Image

    from gpu_worker.infotext import png_with_infotext

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 190, SIDE)[None, :, None]
    image = Image.fromarray((rng.random((SIDE, SIDE, 3)) * 64 + ramp).astype("uint8"))
    png = png_with_infotext(image, "a lighthouse at dusk\nSteps: 10, Seed: 1")
    return {
        "png_b64": base64.b64encode(png).decode("ascii"),
        "seed": 1,
        "infotext": "a lighthouse",
        "width": SIDE,
        "height": SIDE,
    }


def bench_user() -> Any:
    from accounts import ledger
    from accounts.models import MembershipTier, User
    from accounts.tiers import set_tier

    roomy = MembershipTier.objects.create(
        name="Bench", slug="bench", rank=99, max_unfinished_jobs=10**6
    )
    user = User.objects.create_user("bench", "bench@example.com", "x" * 20)
    set_tier(user, roomy)
    ledger.credit(user, 10**6, "grant", reason="bench")
    return user


KINDS = ("started", "succeeded")  # each job's two events, in the order a worker sends them


def record_jobs(user: Any, count: int) -> dict[str, tuple[list[float], float]]:
    """For each event kind: (seconds from each event sent to its job.<kind> heard, CPU
    seconds the platform worker spent on the measured ones); all the jobs' 'started' first (the
    others still queued, as on a busy platform), then their 'succeeded'. The worker's pid is
    read from $PLATFORM_PID."""
    import dramatiq

    from generation.broker import get_broker
    from generation.events import user_group
    from generation.queue import queue_snapshot, store_snapshot
    from generation.submission import submit_job
    from gpu_worker.channel_layer import make_channel_layer
    from gpu_worker.protocol import JOB_EVENT_ACTOR, JOB_EVENT_KWARG, PLATFORM_QUEUE

    broker = get_broker()
    image = result_image()
    pid = int(os.environ["PLATFORM_PID"])
    jobs = []
    for _ in range(count + WARM_UP):
        job = submit_job(user, JOB)
        assert job.mark_assigned("bench-gpu")  # handed out, as the dispatcher does
        jobs.append(job)

    def send(job: Any, kind: str) -> None:  # as WorkerService.flush_events sends an event
        event: dict[str, Any] = {
            "job_id": str(job.pk),
            "attempt": job.attempt,
            "worker_id": "bench-gpu",
            "kind": kind,
        }
        if kind == "succeeded":
            event.update(images=[image], timings={"total_s": 0.15}, steps_done=10)
        broker.enqueue(
            dramatiq.Message(
                queue_name=PLATFORM_QUEUE,
                actor_name=JOB_EVENT_ACTOR,
                args=(),
                kwargs={JOB_EVENT_KWARG: event},
                options={},
            )
        )

    def keep_snapshot() -> None:
        """As the dispatcher does after each pass: a start's ETA uses its speeds (it lasts
        SNAPSHOT_TTL_MS; 20 starts take well under that)."""
        store_snapshot(queue_snapshot())

    async def measure(layer: Any, channel: str, kind: str) -> tuple[list[float], float]:
        latencies: list[float] = []
        cpu0 = 0.0
        for i, job in enumerate(jobs):
            if i == WARM_UP:
                cpu0 = cpu_seconds(pid)
            if kind == "started" and i % 20 == 0:  # outside the timing: the dispatcher's work
                await asyncio.to_thread(keep_snapshot)
            t0 = time.perf_counter()
            await asyncio.to_thread(send, job, kind)
            while True:
                event = await asyncio.wait_for(layer.receive(channel), 30)
                if event.get("job_id") == str(job.pk) and event["type"] == f"job.{kind}":
                    break
            if i >= WARM_UP:
                latencies.append(time.perf_counter() - t0)
        return latencies, cpu_seconds(pid) - cpu0

    async def run() -> dict[str, tuple[list[float], float]]:
        layer = make_channel_layer(os.environ["REDIS_URL"], os.environ.get("CHANNEL_LAYER", ""))
        channel = await layer.new_channel()
        await layer.group_add(user_group(user.pk), channel)
        measured = {kind: await measure(layer, channel, kind) for kind in KINDS}
        await layer.flush()
        return measured

    return asyncio.run(run())


def run_one(database_url: str, label: str) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-record-"))
    setup_django(tmp, database_url)
    from gpu_worker.demo_model import make_demo_models

    make_demo_models(tmp / "models")
    from generation.catalogue_sync import sync_catalogue

    sync_catalogue(models_dir=tmp / "models", include_workers=False)
    user = bench_user()
    import redis

    from generation.scheduling.wakeups import ALIVE_KEY

    redis.Redis.from_url(os.environ["REDIS_URL"]).set(ALIVE_KEY, "bench", ex=3600)
    print(f"--- {label} ---")
    worker = start(
        [sys.executable, "manage.py", "run_platform_worker", "--no-periodic"], dict(os.environ)
    )
    try:
        time.sleep(3)  # its imports; the warm-up jobs cover the rest
        os.environ["PLATFORM_PID"] = str(worker.pid)
        measured = record_jobs(user, RUNS)
    finally:
        stop([worker])
        redis.Redis.from_url(os.environ["REDIS_URL"]).delete(ALIVE_KEY)
    print(f"recording each job's events, {RUNS} jobs one after another ({SIDE}x{SIDE} PNG):")
    for kind in KINDS:
        latencies, cpu = measured[kind]
        ms = sorted(v * 1000 for v in latencies)
        print(
            f"  {kind:9} sent to event  median {statistics.median(ms):6.2f} ms, "
            f"p90 {ms[int(len(ms) * 0.9)]:6.2f} ms; "
            f"platform worker CPU {cpu / RUNS * 1000:6.2f} ms per event"
        )
    return 0


def main() -> int:
    return per_database(__file__, run_one, POSTGRES_URL)


if __name__ == "__main__":
    raise SystemExit(main())
