"""The GPU worker's side of sending a result: its PNG as base64 inside the 'succeeded' event, or
as bytes in Redis beside it (`gpu_worker.result_store`).

    python -m operations.with_redis -- python bench/bench_result_channel.py

For each side of CHANNEL_SIDES (default 512 and 1024, SD's sizes), CHANNEL_RUNS sends of each
kind, alternated: what the worker's reporting thread does once a job's image is encoded, with
the worker's own code (`result_store.with_base64` or `result_store.for_the_wire`, then the
event enqueued on the platform queue as `WorkerService.flush_events` sends it: the broker's
JSON and Redis). Prints each kind's median wall time and the sending thread's CPU time
(`time.thread_time`), and the ratio bytes/base64 of that CPU: on a GPU worker the base64 and the
JSON of a multi-megabyte string hold the GIL that the sampling thread needs, while a SET's
socket write does not. The bench's own broker namespace is deleted afterwards.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from support import NEEDS_REDIS, result_picture, result_png, vs_goal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = int(os.environ.get("CHANNEL_RUNS", "30"))
SIDES = [int(v) for v in os.environ.get("CHANNEL_SIDES", "512,1024").split(",")]
IN_EVENT, IN_REDIS = "PNG in the event", "PNG in Redis"


def send_once(broker: Any, client: Any, png: bytes, kind: str) -> tuple[float, float]:
    """(wall, thread CPU) seconds of one 'succeeded' event with this PNG, sent as `kind`."""
    from gpu_worker import result_store
    from gpu_worker.protocol import JobEvent, ResultImage
    from gpu_worker.service import job_event_message

    job_id = uuid.uuid4().hex
    image = ResultImage(png=png, seed=1, infotext="a lighthouse", width=1, height=1)
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    if kind == IN_REDIS:
        images = result_store.for_the_wire(client, job_id, 1, [image])
    else:
        images = result_store.with_base64([image])
    event = JobEvent(job_id=job_id, attempt=1, worker_id="bench", kind="succeeded", images=images)
    broker.enqueue(job_event_message(event))
    return time.perf_counter() - wall0, time.thread_time() - cpu0


def main() -> int:
    url = os.environ.get("REDIS_URL")
    if not url:
        print(NEEDS_REDIS)
        return 2
    import redis

    from gpu_worker.wakeup import WakeupRedisBroker

    namespace = "atelier-bench-" + uuid.uuid4().hex[:8]
    broker = WakeupRedisBroker(url=url, namespace=namespace)
    client = redis.Redis.from_url(url)
    print(f"sending a 'succeeded' event, {RUNS} of each kind alternated (the sending thread):")
    try:
        for side in SIDES:
            png = result_png(result_picture(side))
            measured: dict[str, list[tuple[float, float]]] = {IN_EVENT: [], IN_REDIS: []}
            for i in range(2 * (RUNS + 3)):
                kind = (IN_EVENT, IN_REDIS)[i % 2]
                figures = send_once(broker, client, png, kind)
                if i >= 6:  # three of each unmeasured
                    measured[kind].append(figures)
                client.delete(*client.keys("atelier:result-png:*") or ["-"])
                client.delete(f"{namespace}:platform", f"{namespace}:platform.msgs")
            cpu = {}
            for kind, runs in measured.items():
                wall = statistics.median(w for w, _ in runs) * 1000
                cpu[kind] = statistics.median(c for _, c in runs) * 1000
                print(
                    f"  {side}x{side} ({len(png) / 1e6:.2f} MB PNG) {kind:16}  "
                    f"wall {wall:6.2f} ms, thread CPU {cpu[kind]:6.2f} ms"
                )
            print(
                f"  {side}x{side} thread CPU {IN_REDIS} / {IN_EVENT}: "
                f"{vs_goal(cpu[IN_REDIS] / cpu[IN_EVENT], '< 1')}"
            )
    finally:
        for key in client.scan_iter(f"{namespace}:*"):
            client.delete(key)
        broker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
