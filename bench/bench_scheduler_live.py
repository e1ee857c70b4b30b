"""Scheduler, real run: FIFO vs FairScheduler through the live platform, 2 CPU gpu_workers.

    python bench/bench_scheduler_live.py

Live processes on loopback, started the way the drills start them (tests/drills/conftest.py,
DrillWorld): a private redis-server, the platform worker, two `python -m gpu_worker --device
cpu` with the demo models, a fresh SQLite file per run. Three demo checkpoints; each worker keeps
one on its device (16 MB budget) and none in RAM, so switching models reloads from disk (~0.25 s
here, a tiny job runs about as long). Workload, fixed seed: 4 users (Pro tier) submit 20 tiny
jobs in one transaction (64x64, 6 steps) - 8, 6, 4 and 2 jobs - each on a checkpoint drawn with
Zipf popularity. The same jobs run twice: with the dispatcher's policy replaced by the
simulator's FifoScheduler in every platform process ("fifo"), and as shipped ("fair").
Jobs are free here (see `child`: a SQLite ledger issue). Figures: model loads per 100 jobs
(jobs whose model_load_s > 50 ms), mean wait per user and makespan, FIFO vs fair with ratios.
Takes a minute or two. A CPU stands in for GPUs, so loads are cheap: the figure that carries
over is the count of loads, not the seconds.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BENCH = "bench/bench_scheduler_live.py"
CHECKPOINTS = ("atelier-demo-v1", "atelier-demo-v2", "atelier-demo-v3")
USERS = {"live-ann": 8, "live-ben": 6, "live-cat": 4, "live-dan": 2}
JOB = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 6, "sampler": "Euler a"}
LOADED_S = 0.05  # a hit takes microseconds, a load from disk a quarter of a second
WORKER_OPTIONS = ["--device", "cpu", "--gpu-memory-budget", "16M", "--ram-budget", "1M"]


def workload(seed: int = 7) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    jobs = [(user, n) for user, count in USERS.items() for n in range(count)]
    rng.shuffle(jobs)  # users' submissions interleave
    weights = [1 / k for k in range(1, len(CHECKPOINTS) + 1)]
    return [
        (user, {**JOB, "seed": n, "checkpoint": rng.choices(CHECKPOINTS, weights=weights)[0]})
        for user, n in jobs
    ]


# --- inside the platform's processes ----------------------------------------------------------


def child(policy: str, command: str, *args: str) -> None:
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    if policy == "fifo":
        import generation.scheduling.dispatcher as dispatcher
        from generation.scheduling.simulation import FifoScheduler

        # The live run swaps the policy in place: a bench-only patch of the dispatcher's class.
        dispatcher.FairScheduler = FifoScheduler  # type: ignore[misc,assignment]
    from django.core.management import call_command
    from django.db import transaction

    from accounts import ledger
    from accounts.models import MembershipTier, User
    from accounts.tiers import set_tier
    from generation.catalogue_sync import sync_catalogue
    from generation.models import CatalogEntry
    from generation.submission import submit_job
    from gpu_worker.demo_model import write_demo_checkpoint

    if command == "setup":
        write_demo_checkpoint(Path(os.environ["MODELS_DIR"]), "atelier-demo-v3", 3)
        pro = MembershipTier.objects.get(slug="pro")
        for name in USERS:
            user = User.objects.create_user(username=name, email=f"{name}@example.com")
            ledger.credit(user, 10_000, "grant", reason="bench", key=f"bench:{name}")
            set_tier(user, pro)
        sync_catalogue(include_workers=False)
        # Free jobs: on SQLite the ledger's cent arithmetic runs in floating point, and a user's
        # last capture after many 0.01 holds can trip held_not_negative (reported to the lead).
        CatalogEntry.objects.checkpoints().update(cost_multiplier=0)
    elif command == "submit":  # one transaction: the jobs are all waiting before any pass
        with transaction.atomic():
            users = {u.username: u for u in User.objects.filter(username__in=USERS)}
            ids = [str(submit_job(users[name], params).pk) for name, params in workload()]
        print(json.dumps([i.replace("-", "") for i in ids]))
    elif command == "platform":
        call_command("run_platform_worker", "--tick", "0.2", "--worker-grace", "1.5")


# --- the run ----------------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def run(policy: str) -> dict[str, float]:
    from tests.drills.conftest import HEARTBEAT_INTERVAL, DrillWorld

    world = DrillWorld(Path(tempfile.mkdtemp(prefix=f"atelier-live-{policy}-")))
    try:
        world.run("manage.py", "migrate", "--no-input", "-v", "0")
        world.run("-m", "gpu_worker", "make-demo-model", "--models-dir", str(world.models))
        world.run(BENCH, "child", policy, "setup")
        world.start_redis()
        world.start("platform", [BENCH, "child", policy, "platform"])
        workers = ("gpu-1", "gpu-2")
        for worker_id in workers:
            world.start(
                worker_id,
                ["-m", "gpu_worker", "--models-dir", str(world.models), *WORKER_OPTIONS]
                + ["--worker-id", worker_id, "--heartbeat-interval", str(HEARTBEAT_INTERVAL)],
            )
        world.wait(
            lambda: all(world.redis.get(f"atelier:worker:{w}") for w in workers), 120, "workers"
        )
        ids = json.loads(world.run(BENCH, "child", policy, "submit").strip().splitlines()[-1])
        world.wait_finished(ids, timeout=180)
        rows = world.query(
            "SELECT u.username, j.status, j.created_at, j.started_at, j.finished_at, j.timings "
            "FROM generation_job j JOIN accounts_user u ON u.id = j.owner_id"
        )
    finally:
        world.stop_all()
        world.stop_redis()
    assert all(status == "succeeded" for _u, status, *_rest in rows), rows
    waits: dict[str, list[float]] = {}
    loads = 0
    for user, _status, created, started, _finished, timings in rows:
        waits.setdefault(user, []).append(
            (parse_time(started) - parse_time(created)).total_seconds()
        )
        loads += float(json.loads(timings).get("model_load_s") or 0) > LOADED_S
    begin = min(parse_time(r[2]) for r in rows)
    end = max(parse_time(r[4]) for r in rows)
    figures = {f"wait {u}": statistics.fmean(w) for u, w in sorted(waits.items())}
    return {
        "loads": 100.0 * loads / len(rows),
        **figures,
        "makespan": (end - begin).total_seconds(),
    }


def main() -> None:
    results = {policy: run(policy) for policy in ("fifo", "fair")}
    fifo, fair = results["fifo"], results["fair"]
    print(f"live: 2 CPU gpu_workers x 1 checkpoint, 3 demo checkpoints, {len(workload())} jobs")
    print(f"  {'':28}{'FIFO':>10}{'fair':>10}   FIFO/fair")
    for key in fifo:
        label = "model loads per 100 jobs" if key == "loads" else f"{key} (s)"
        ratio = fifo[key] / fair[key] if fair[key] else float("inf")
        print(f"  {label:<28}{fifo[key]:10.2f}{fair[key]:10.2f}   {ratio:.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(*sys.argv[2:])
    else:
        main()
