"""The dispatcher's reads on a wake-up: compiled once against their querysets, and the snapshot
after a pass made from the pass's reads against a fresh `queue_snapshot()`.

    python -m operations.with_redis -- python bench/bench_dispatcher_reads.py [--database URL]

In one process on a fresh database (SQLite in a temporary folder; PostgreSQL at
BENCH_POSTGRES_URL when it answers), with one idle GPU worker's heartbeat in Redis and one
queued job (the demo job's hop from wake-up to its worker's queue). Each line is the thread
CPU time of the new way over the old, both run alternately in this process (median of
REPEATS each):

  waiting window   `inputs.waiting_jobs`'s rows: compiled (`CompiledQuery`) / the queryset
  in-flight jobs   `inputs.in_flight_jobs`: compiled / the queryset
  plan's jobs      the jobs a plan hands out, with checkpoint and recipe: compiled / `in_bulk`
  stored models    what the waiting owners may name: compiled / the queryset
  speed history    the finished jobs' history (none here): compiled / the queryset
  snapshot         after a pass: `snapshot_of(its reads)` / `queue_snapshot()` (equal content;
                   the latter already on the compiled reads)

Goal: each below 1 (the new way costs less CPU than the old).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from support import per_database, setup_django, vs_goal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REPEATS = int(os.environ.get("BENCH_REPEATS", "200"))
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/atelier_bench_platform"
)


def cpu_ms(action: Callable[[], object]) -> float:
    start = time.thread_time()
    action()
    return (time.thread_time() - start) * 1e3


def paired(new: Callable[[], object], old: Callable[[], object]) -> tuple[float, float]:
    """Median thread CPU ms of `new` and `old`, run alternately (first calls not counted)."""
    new(), old()
    news, olds = [], []
    for _ in range(REPEATS):
        news.append(cpu_ms(new))
        olds.append(cpu_ms(old))
    return statistics.median(news), statistics.median(olds)


def run(database_url: str, label: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        setup_django(Path(tmp), database_url)
        return measure(label)


def measure(label: str) -> int:
    from accounts import ledger
    from accounts.models import User
    from generation.broker import get_redis
    from generation.models import CatalogEntry, Job
    from generation.queue import queue_snapshot, snapshot_of
    from generation.scheduling.claims import _PLANNED
    from generation.scheduling.dispatcher import schedule_pending
    from generation.scheduling.estimates import (
        HISTORY_FIELDS,
        HISTORY_ROWS,
        SpeedCache,
        _history_rows,
        _recent_history,
    )
    from generation.scheduling.inputs import (
        _IN_FLIGHT,
        _WAITING,
        _in_flight,
        _waiting_window,
    )
    from generation.scheduling.wakeups import ALIVE_KEY
    from generation.stored_models import _AVAILABLE, _available
    from generation.submission import submit_job

    redis = get_redis()
    redis.set(ALIVE_KEY, "1", ex=600)  # a submission only rings: no pass in the request
    CatalogEntry.objects.create(
        name="model-a", kind="checkpoint", family="sd1", filename="checkpoint/model-a.safetensors",
        sha256="ab" * 32, short_hash="ab" * 5,
    )  # fmt: skip
    user = User.objects.create_user("bench", "bench@example.com", "x" * 20)
    ledger.credit(user, 10_000, "grant", reason="bench", key="bench-dispatcher-reads")
    job = submit_job(user, {"prompt": "ink", "width": 64, "height": 64, "steps": 2})
    ids = [str(job.pk)]
    print(f"--- {label}: one queued job, {REPEATS} alternating calls each ---")
    rows = {
        "waiting window": paired(lambda: _WAITING.rows(100), lambda: list(_waiting_window(100))),
        "in-flight jobs": paired(_IN_FLIGHT.objects, lambda: list(_in_flight())),
        "plan's jobs": paired(
            lambda: _PLANNED.objects(ids=ids),
            lambda: Job.objects.select_related("checkpoint__recipe").in_bulk(ids),
        ),
        "stored models": paired(
            lambda: _AVAILABLE.rows(owner_ids=[user.pk]),
            lambda: list(_available([user.pk])),  # type: ignore[arg-type]
        ),
        "speed history": paired(
            _history_rows,
            lambda: list(
                _recent_history().values(*HISTORY_FIELDS, "checkpoint_id", "pk")[:HISTORY_ROWS]
            ),
        ),
    }
    redis.set("atelier:worker:gpu-1", '{"worker_id": "gpu-1", "loaded_models": ["model-a"]}')
    redis.sadd("atelier:workers", "gpu-1")
    speeds = SpeedCache()
    report = schedule_pending(speeds=speeds)
    assert report.queue is not None and len(report.assigned) == 1
    after, fresh = snapshot_of(report.queue, speeds), queue_snapshot(speeds=speeds)
    assert after.infos == fresh.infos, (after.infos, fresh.infos)
    rows["snapshot"] = paired(
        lambda: snapshot_of(report.queue, speeds),  # type: ignore[arg-type]
        lambda: queue_snapshot(speeds=speeds),
    )
    redis.delete("atelier:worker:gpu-1", ALIVE_KEY)
    redis.srem("atelier:workers", "gpu-1")
    for name, (new, old) in rows.items():
        print(f"{name:15s} {new:6.2f} ms vs {old:6.2f} ms CPU  {vs_goal(new / old, '< 1.00')}")
    return 0 if all(new < old for new, old in rows.values()) else 1


def main() -> int:
    return per_database(__file__, run, POSTGRES_URL)


if __name__ == "__main__":
    raise SystemExit(main())
