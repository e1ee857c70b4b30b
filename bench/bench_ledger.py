"""Ledger cost: job submissions per second with the real credit hold vs without credits.

    python -m operations.with_redis -- python bench/bench_ledger.py

Postgres only (BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/atelier_bench,
created and migrated afresh). 20 client threads, each a different user, call
generation.submission.submit_job as fast as they can: validation, the per-user lock, the job
row, the hold (one conditional UPDATE + one INSERT) and the after-commit dispatch to Redis.
"without" replaces the hold with the old no-op; rounds alternate so drift hits both alike, and
jobs are marked finished between rounds so every round starts from the same queue.
The queued event's queue snapshot (it reads every queued job: seconds per submission once
a thousand wait) is left out unless BENCH_FULL=1, so the figure is about the transaction.
Figures: medians over the rounds. Goal: the ledger costs under 20 % of throughput.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import fresh_postgres  # noqa: E402 - after the path to our packages

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "20"))
PER_CLIENT = int(os.environ.get("BENCH_PER_CLIENT", "40"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
FULL = os.environ.get("BENCH_FULL") == "1"
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/atelier_bench"
)
JOB = {
    "prompt": "a lighthouse",
    "width": 512,
    "height": 512,
    "steps": 20,
    "checkpoint": "bench-model",
}


def fresh_database(url: str) -> None:
    import dj_database_url

    if not dj_database_url.parse(url)["ENGINE"].endswith("postgresql"):
        sys.exit("bench_ledger needs Postgres: set BENCH_DATABASE_URL=postgres://...")
    if not fresh_postgres(url, force=False, connect_timeout=None):
        sys.exit(f"bench_ledger: no PostgreSQL server answers at {url.split('@')[-1]}")


def main() -> None:
    fresh_database(DATABASE_URL)
    os.environ["DATABASE_URL"] = DATABASE_URL
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("AXES_ENABLED", "false")
    import django

    django.setup()
    from decimal import Decimal

    from django.core.management import call_command
    from django.db import connection

    import generation.submission as submission
    from accounts import ledger
    from accounts.models import MembershipTier, User
    from accounts.tiers import set_tier
    from generation.models import CatalogEntry, Job

    call_command("migrate", verbosity=0)
    CatalogEntry.objects.create(name="bench-model", kind="checkpoint", family="sd1")
    roomy = MembershipTier.objects.create(
        name="Bench", slug="bench", rank=99, max_unfinished_jobs=10**6
    )
    users = []
    for i in range(CLIENTS):
        user = User.objects.create_user(f"client{i}", f"client{i}@example.com", "x")
        set_tier(user, roomy)
        ledger.credit(user, Decimal(10**6), "grant", key="bench")
        users.append(user)

    real_hold = submission.hold_credits
    if not FULL:
        # The queued event's snapshot, left out: it reads every queued job.
        import generation.scheduling.dispatcher as dispatcher

        dispatcher.publish_positions = lambda job_ids, snapshot=None: None

    def no_hold(user: User, job: Job) -> None:  # the seam's old no-op
        return None

    def finish_queued_jobs() -> None:
        """As if the GPUs had run them: each settled (charged) and marked succeeded."""
        for pk in Job.objects.filter(status="queued").values_list("pk", flat=True):
            ledger.capture(pk)
        Job.objects.filter(status="queued").update(status="succeeded")

    def round_rate(with_credits: bool) -> float:
        submission.hold_credits = real_hold if with_credits else no_hold
        finish_queued_jobs()
        barrier = threading.Barrier(CLIENTS + 1)
        errors: list[BaseException] = []

        def client(user: User) -> None:
            try:
                barrier.wait()
                for _ in range(PER_CLIENT):
                    submission.submit_job(user, dict(JOB))
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=client, args=(u,)) for u in users]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        if errors:
            raise errors[0]
        return CLIENTS * PER_CLIENT / elapsed

    round_rate(True)  # warm-up: imports, connections, query plans
    without, with_ = [], []
    for _ in range(ROUNDS):
        without.append(round_rate(False))
        with_.append(round_rate(True))
    submission.hold_credits = real_hold
    finish_queued_jobs()

    base, held = statistics.median(without), statistics.median(with_)
    problems = ledger.find_violations()
    print(
        f"clients {CLIENTS}, {PER_CLIENT} submissions each, {ROUNDS} rounds, "
        f"{connection.vendor}, {'full path' if FULL else 'queue snapshot left out'}"
    )
    print(f"without credits  {base:8.1f} submissions/s")
    print(f"with the hold    {held:8.1f} submissions/s")
    print(
        f"ratio            {held / base:8.3f}  (cost {100 * (1 - held / base):.1f} %, goal < 20 %)"
    )
    print(f"ledger check     {'clean' if not problems else problems[:3]}")


if __name__ == "__main__":
    main()
