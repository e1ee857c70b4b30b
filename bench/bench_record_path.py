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

Then the worker's thumbnail against none: for each side of RECORD_THUMBNAIL_SIDES (default 512
and 1024, SD's sizes), RECORD_RUNS 'succeeded' events whose image carries the thumbnail the
GPU worker makes (`gpu_worker.thumbnails`; the platform checks the PNG without decoding it)
alternated with as many without one (what a worker older than the field sends: the platform
decodes the PNG to make it), so that both kinds share the machine's noise. Prints each kind's
latency and the platform worker's CPU per event (its threads' run time, /proc schedstat, to the
nanosecond), and the ratio with/without. Then, the same way, 'succeeded' events whose PNG
waits as bytes in Redis (`gpu_worker.result_store`, what a current worker sends: the bench
SETs it first, as the worker does) alternated with events that carry it as base64 (an older
worker's): each kind's latency and the platform worker's CPU per event, and the ratio.
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
from typing import Any, cast

from support import (
    cpu_seconds,
    per_database,
    result_picture,
    result_png,
    setup_django,
    start,
    stop,
    vs_goal,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = int(os.environ.get("RECORD_RUNS", "50"))
SIDE = int(os.environ.get("RECORD_SIDE", "128"))  # the result image's width and height
THUMBNAIL_SIDES = [int(v) for v in os.environ.get("RECORD_THUMBNAIL_SIDES", "512,1024").split(",")]
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


def result_image(side: int = SIDE, thumbnail: bool = False, raw: bool = False) -> dict[str, Any]:
    """A side x side result as a worker reports the demo job's image (a gradient with noise:
    about as large as the demo model's output): its PNG with the infotext, and with
    `thumbnail` the gallery thumbnail a current worker sends beside it. `raw`: the PNG as the
    worker's encoder leaves it for Redis (`gpu_worker.result_store`), not as base64."""
    from gpu_worker.thumbnails import thumbnail_webp

    image = result_picture(side)
    png = result_png(image)
    result: dict[str, Any] = {
        "png": png,
        "seed": 1,
        "infotext": "a lighthouse",
        "width": side,
        "height": side,
    }
    if thumbnail:
        result["thumbnail_webp_b64"] = base64.b64encode(thumbnail_webp(image)).decode("ascii")
    if not raw:
        result["png_b64"] = base64.b64encode(result.pop("png")).decode("ascii")
    return result


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
WITH, WITHOUT = "worker's thumbnail", "no thumbnail"  # the two kinds of 'succeeded' compared
IN_REDIS, IN_EVENT = "PNG in Redis", "PNG in the event"  # and the two ways its PNG travels

Measured = tuple[list[float], float]  # seconds from each event sent to it heard; CPU seconds


def thread_cpu_seconds(pid: int) -> float:
    """The run time of a process's threads (/proc schedstat, in nanoseconds): precise enough to
    take event by event, where /proc stat counts clock ticks (10 ms). Its threads live as long
    as it does (Dramatiq's, the dispatcher's, the publisher's), so none takes its time away."""
    tasks = Path(f"/proc/{pid}/task")
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks.iterdir()) / 1e9


class Recorder:
    """Sends a job's events as a GPU worker does and waits for each one on the owner's
    channel-layer group (what the websocket relays)."""

    def __init__(self, user: Any, layer: Any, channel: str) -> None:
        from generation.broker import get_broker, get_redis

        self.user, self.layer, self.channel = user, layer, channel
        self.broker = get_broker()
        self.redis = get_redis()

    def new_jobs(self, count: int) -> list[Any]:
        from generation.submission import submit_job

        jobs = []
        for _ in range(count):
            job = submit_job(self.user, JOB)
            assert job.mark_assigned("bench-gpu")  # handed out, as the dispatcher does
            jobs.append(job)
        return jobs

    def send(self, job: Any, kind: str, image: dict[str, Any] | None) -> None:
        """As WorkerService.flush_events sends an event."""
        from gpu_worker import result_store
        from gpu_worker.protocol import JobEvent
        from gpu_worker.service import job_event_message

        event: dict[str, Any] = {
            "job_id": str(job.pk),
            "attempt": job.attempt,
            "worker_id": "bench-gpu",
            "kind": kind,
        }
        if kind == "succeeded":
            assert image is not None
            wire: list[Any] = [image]
            if "png" in image:  # as the worker sends it: the bytes first, in Redis
                wire = result_store.for_the_wire(self.redis, str(job.pk), job.attempt, wire)
            event.update(images=wire, timings={"total_s": 0.15}, steps_done=10)
        self.broker.enqueue(job_event_message(cast(JobEvent, event)))

    async def record(self, job: Any, kind: str, image: dict[str, Any] | None = None) -> float:
        """Seconds from the event sent to its job.<kind> heard."""
        t0 = time.perf_counter()
        await asyncio.to_thread(self.send, job, kind, image)
        while True:
            event = await asyncio.wait_for(self.layer.receive(self.channel), 30)
            if event.get("job_id") == str(job.pk) and event["type"] == f"job.{kind}":
                return time.perf_counter() - t0


def keep_snapshot() -> None:
    """As the dispatcher does after each pass: a start's ETA uses its speeds (it lasts
    SNAPSHOT_TTL_MS; 20 starts take well under that)."""
    from generation.queue import queue_snapshot, store_snapshot

    store_snapshot(queue_snapshot())


async def record_jobs(recorder: Recorder, count: int, pid: int) -> dict[str, Measured]:
    """For each event kind, over `count` jobs after WARM_UP unmeasured: its latencies and the
    CPU seconds the platform worker spent; all the jobs' 'started' first (the others still
    queued, as on a busy platform), then their 'succeeded' (a SIDE x SIDE image as an older
    worker sends it, without a thumbnail)."""
    jobs = await asyncio.to_thread(recorder.new_jobs, count + WARM_UP)
    image = result_image()

    async def measure(kind: str) -> Measured:
        latencies: list[float] = []
        cpu0 = 0.0
        for i, job in enumerate(jobs):
            if i == WARM_UP:
                cpu0 = cpu_seconds(pid)
            if kind == "started" and i % 20 == 0:  # outside the timing: the dispatcher's work
                await asyncio.to_thread(keep_snapshot)
            latency = await recorder.record(job, kind, image)
            if i >= WARM_UP:
                latencies.append(latency)
        return latencies, cpu_seconds(pid) - cpu0

    return {kind: await measure(kind) for kind in KINDS}


async def compare(
    recorder: Recorder, images: dict[str, dict[str, Any]], runs: int, pid: int
) -> dict[str, Measured]:
    """`runs` 'succeeded' of each of the two kinds of image, alternated (after WARM_UP of each
    unmeasured), each job started first."""
    jobs = await asyncio.to_thread(recorder.new_jobs, 2 * (runs + WARM_UP))
    for i, job in enumerate(jobs):
        if i % 20 == 0:
            await asyncio.to_thread(keep_snapshot)
        await recorder.record(job, "started")
    kinds = list(images)
    measured: dict[str, Measured] = {kind: ([], 0.0) for kind in kinds}
    for i, job in enumerate(jobs):
        kind = kinds[i % 2]
        cpu0 = thread_cpu_seconds(pid)
        latency = await recorder.record(job, "succeeded", images[kind])
        cpu = thread_cpu_seconds(pid) - cpu0
        if i >= 2 * WARM_UP:
            latencies, total = measured[kind]
            measured[kind] = ([*latencies, latency], total + cpu)
    return measured


Compared = dict[int, dict[str, Measured]]  # side -> kind -> what was measured


def measure_all(user: Any, pid: int) -> tuple[dict[str, Measured], Compared, Compared]:
    from generation.events import user_group
    from gpu_worker.channel_layer import make_channel_layer

    async def run() -> tuple[dict[str, Measured], Compared, Compared]:
        layer = make_channel_layer(os.environ["REDIS_URL"], os.environ.get("CHANNEL_LAYER", ""))
        channel = await layer.new_channel()
        await layer.group_add(user_group(user.pk), channel)
        recorder = Recorder(user, layer, channel)
        events = await record_jobs(recorder, RUNS, pid)
        thumbnails, channels = {}, {}
        for side in THUMBNAIL_SIDES:
            thumbnails[side] = await compare(
                recorder, {WITH: result_image(side, True), WITHOUT: result_image(side)}, RUNS, pid
            )
            channels[side] = await compare(
                recorder,
                {IN_REDIS: result_image(side, True, raw=True), IN_EVENT: result_image(side, True)},
                RUNS,
                pid,
            )
        await layer.flush()
        return events, thumbnails, channels

    return asyncio.run(run())


def print_comparison(compared: Compared, first: str, second: str, goal: str) -> None:
    for side, measured in compared.items():
        per_event = {kind: cpu / RUNS * 1000 for kind, (_, cpu) in measured.items()}
        for kind, (latencies, _) in measured.items():
            print(
                f"  {side}x{side} {kind:18}  sent to event  {latency_figures(latencies)}; "
                f"platform worker CPU {per_event[kind]:6.2f} ms per event"
            )
        ratio = per_event[first] / per_event[second]
        print(f"  {side}x{side} platform worker CPU {first} / {second}: {vs_goal(ratio, goal)}")


def latency_figures(latencies: list[float]) -> str:
    ms = sorted(v * 1000 for v in latencies)
    return f"median {statistics.median(ms):6.2f} ms, p90 {ms[int(len(ms) * 0.9)]:6.2f} ms"


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
        events, thumbnails, channels = measure_all(user, worker.pid)
    finally:
        stop([worker])
        redis.Redis.from_url(os.environ["REDIS_URL"]).delete(ALIVE_KEY)
    print(f"recording each job's events, {RUNS} jobs one after another ({SIDE}x{SIDE} PNG):")
    for kind in KINDS:
        latencies, cpu = events[kind]
        print(
            f"  {kind:9} sent to event  {latency_figures(latencies)}; "
            f"platform worker CPU {cpu / RUNS * 1000:6.2f} ms per event"
        )
    print(
        f"recording 'succeeded', {RUNS} with the worker's thumbnail alternated with {RUNS} without:"
    )
    print_comparison(thumbnails, WITH, WITHOUT, "<= 0.6")
    print(
        f"recording 'succeeded' (with the worker's thumbnail), {RUNS} whose PNG waits in Redis "
        f"alternated with {RUNS} whose PNG is base64 in the event:"
    )
    print_comparison(channels, IN_REDIS, IN_EVENT, "< 1")
    return 0


def main() -> int:
    return per_database(__file__, run_one, POSTGRES_URL)


if __name__ == "__main__":
    raise SystemExit(main())
