"""Scheduling and queue positions at 100, 1,000 and 10,000 queued jobs: the same cost.

    python -m operations.with_redis -- python bench/bench_queue_scale.py [--database URL]

In one process on a fresh database (SQLite in a temporary folder; PostgreSQL at
BENCH_POSTGRES_URL, as bench_platform_overhead, when it answers), with four idle GPU workers'
heartbeats in Redis (two free slots each). For each queue size, waiting jobs of many members
(at most 8 each, as the largest tier allows) are written, then timed, median of REPEATS:

  pass       one scheduling pass (`schedule_pending`: reads, plans, claims 8 jobs), rolled back
             so every repeat sees the same queue
  snapshot   a queue snapshot (`queue_snapshot`: positions and ETAs, what the dispatcher stores)
  place      a new job's place as its submission's answer reads it (`queue_info`: the
             dispatcher's stored snapshot, made just before the job came, then the job's rank
             in the waiting set in Redis, `generation.waiting_set`: one round trip)
  count      the same place as it was read before that set (the baseline, in the same run):
             the stored snapshot, then one indexed count of the waiting jobs ahead of the job
             (`QueueSnapshot.counted_ahead`, what a reader still falls back to)

The jobs are written in bulk, so the bench adds them to the waiting set as their submissions'
wake-ups would; both places are checked to agree. (Before the set, the place at 100 was read
from the snapshot alone: the newest job was in it.)

Goal: each at 1,000 and 10,000 within 1.5x of its cost at 100 (the "same" cost, within noise).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from support import per_database, setup_django, vs_goal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [100, 1_000, 10_000]
REPEATS = int(os.environ.get("BENCH_REPEATS", "7"))
PER_MEMBER = 8
GOAL = 1.5
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/atelier_bench_platform"
)


class Rollback(Exception):
    pass


def timed(action: Callable[[], object]) -> float:
    from django.db import transaction

    samples = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        try:
            with transaction.atomic():
                action()
                raise Rollback
        except Rollback:
            pass
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def run(database_url: str, label: str) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-queue-"))
    setup_django(tmp, database_url)
    import redis
    from django.utils import timezone

    from accounts.models import User
    from generation import waiting_set
    from generation.broker import get_redis
    from generation.models import CatalogEntry, Job
    from generation.queue import queue_info, queue_snapshot, store_snapshot, stored_snapshot
    from generation.scheduling.dispatcher import schedule_pending
    from generation.scheduling.estimates import estimate_duration
    from gpu_worker.protocol import HEARTBEAT_INDEX, HEARTBEAT_KEY

    client: redis.Redis = get_redis()
    client.flushdb()
    now = time.time()
    for i in range(4):
        worker_id = f"bench-gpu-{i}"
        beat = {
            "worker_id": worker_id,
            "loaded_models": ["bench-model"],
            "warm_models": [],
            "hot_capacity": 1,
            "draining": False,
            "current_job": None,
            "inventory": None,
            "sent_at": now,  # fresh for the bench's minute
        }
        client.set(HEARTBEAT_KEY.format(worker_id=worker_id), json.dumps(beat), ex=3600)
        client.sadd(HEARTBEAT_INDEX, worker_id)
    checkpoint = CatalogEntry.objects.create(name="bench-model", kind="checkpoint", family="sd1")
    params = {
        "prompt": "a lighthouse",
        "width": 512,
        "height": 512,
        "steps": 20,
        "sampler": "Euler a",
        "batch_size": 1,
        "n_iter": 1,
        "loras": [],
    }
    results: dict[int, dict[str, float]] = {}
    made = 0
    members: list[User] = []
    for size in SIZES:
        if len(members) * PER_MEMBER < size:
            first, last = len(members), -(-size // PER_MEMBER)
            members += User.objects.bulk_create(
                [User(username=f"m{n}", email=f"m{n}@example.com") for n in range(first, last)]
            )
        base = timezone.now()

        def job(i: int, base: datetime = base, members: list[User] = members) -> Job:
            return Job(
                id=uuid.uuid4(),
                owner=members[i // PER_MEMBER],
                checkpoint=checkpoint,
                params=params,
                total_steps=20,
                created_at=base + timedelta(microseconds=i),
            )

        Job.objects.bulk_create([job(i) for i in range(made, size - 1)], batch_size=1000)
        # What each submission's wake-up adds to the waiting set (bulk_create has none).
        pipe = client.pipeline(transaction=False)
        waiting_set.add(
            pipe,
            {
                waiting_set.member_of(pk): waiting_set.score_of(at)
                for pk, at in Job.objects.values_list("pk", "created_at")
            },
        )
        pipe.execute()
        # The dispatcher's snapshot (it also repairs the set from its window, or the first
        # time marks it complete), then one more submission: the job whose place its answer
        # reads, newer than the snapshot as a new job is, so placed behind its window.
        store_snapshot(queue_snapshot())
        newest = job(size - 1)
        newest.save(force_insert=True)
        client.zadd(waiting_set.KEY, {str(newest.pk): waiting_set.score_of(newest.created_at)})
        made = size
        stored = stored_snapshot()
        assert stored is not None and stored.window_end is not None
        placed = queue_info(newest)
        by_count = stored.window_end[0] + stored.counted_ahead(newest) + 1
        member, score = str(newest.pk), waiting_set.score_of(newest.created_at)
        assert waiting_set.ahead_of(member, score, list(stored.infos))[0] is not None
        assert placed is not None and placed.position == by_count, (placed, by_count)

        def counted(job: Job = newest) -> None:  # the former read: snapshot, count, time
            snapshot = stored_snapshot()
            assert snapshot is not None
            snapshot.counted_ahead(job)
            estimate_duration(job, snapshot.speeds)

        place_s, count_s = timed(partial(queue_info, newest)), timed(counted)
        pass_s = timed(lambda: schedule_pending(client=client))
        snapshot_s = timed(queue_snapshot)
        results[size] = {
            "pass": pass_s,
            "snapshot": snapshot_s,
            "place": place_s,
            "count": count_s,
        }
    print(f"--- {label}: queued jobs vs cost (median of {REPEATS}) ---")
    print(
        f"{'queued':>8} {'pass ms':>9} {'snapshot ms':>12} {'place ms':>9} {'count ms':>9}"
        "  (count: the place read before the waiting set, the baseline)"
    )
    for size, r in results.items():
        print(
            f"{size:>8} {r['pass'] * 1000:9.1f} {r['snapshot'] * 1000:12.1f} "
            f"{r['place'] * 1000:9.2f} {r['count'] * 1000:9.2f}"
        )
    for what in ("pass", "snapshot", "place"):
        for size in SIZES[1:]:
            ratio = results[size][what] / results[SIZES[0]][what]
            print(f"  {what:<8} at {size:>6} / at {SIZES[0]}: {vs_goal(ratio, f'<= {GOAL}')}")
    for size in SIZES[1:]:
        ratio = results[size]["count"] / results[SIZES[0]]["count"]
        print(f"  count    at {size:>6} / at {SIZES[0]}: ratio {ratio:.2f}  (baseline: linear)")
    return 0


def main() -> int:
    return per_database(__file__, run, POSTGRES_URL)


if __name__ == "__main__":
    raise SystemExit(main())
