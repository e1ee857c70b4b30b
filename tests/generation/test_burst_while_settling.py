"""A burst of submissions from one member while her earlier jobs finish: the submission's lock and
the settlement's lock must never wait on each other in a circle (issue 14, item 1). Row locks
only conflict for real on PostgreSQL, so this runs there only (DATABASE_URL=postgres://...)."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any, cast

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from PIL import Image
from rest_framework.test import APIClient

from accounts.models import CreditAccount, MembershipTier, User
from accounts.tiers import set_tier
from generation.models import Job
from generation.submission import submit_job
from generation.worker_events import handle_job_event
from gpu_worker.protocol import JobEvent, JobEventKind
from tests.generation.conftest import SMALL

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="SQLite serialises writers: lock order needs Postgres",
    ),
    pytest.mark.django_db(transaction=True),
]

SETTLING = 25
BURST = 50


def all_at_once(work: list[Callable[[], Any]]) -> list[Any]:
    """Run every callable in its own thread, released together; each result or the exception."""
    barrier = threading.Barrier(len(work))
    results: list[Any] = [None] * len(work)

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work[i]()
        except Exception as exc:  # collected and checked by the test
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def png_b64() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def event(job: Job, kind: JobEventKind, **extra: Any) -> JobEvent:
    # The extras are whatever the test sends, as on the wire: not checked against JobEvent.
    return cast(
        JobEvent,
        {"job_id": str(job.pk), "attempt": job.attempt, "worker_id": "gpu-0", "kind": kind} | extra,
    )


def succeeded(job: Job, image: str) -> JobEvent:
    return event(job, "succeeded", images=[{"png_b64": image, "seed": 1, "infotext": "a fox"}])


def test_fifty_submissions_while_earlier_jobs_settle_give_no_5xx_and_an_exact_balance(
    alice, catalogue, redis_client
):
    roomy = MembershipTier.objects.create(
        name="Roomy", slug="roomy", rank=5, max_unfinished_jobs=SETTLING + BURST
    )
    set_tier(alice, roomy)
    earlier = [submit_job(alice, SMALL) for _ in range(SETTLING)]
    for job in earlier:
        handle_job_event(event(job, "started"))
    price = earlier[0].price
    start = CreditAccount.objects.get(pk=alice.pk)
    image = png_b64()

    def submit() -> int:
        client = APIClient()
        client.force_authenticate(alice)
        return client.post("/api/v1/jobs/", SMALL, format="json").status_code

    def settle(job: Job) -> bool:
        return handle_job_event(succeeded(job, image))

    work: list[Callable[[], Any]] = [submit] * BURST
    work += [partial(settle, job) for job in earlier]
    results = all_at_once(work)

    statuses = results[:BURST]
    assert statuses.count(201) == BURST, statuses
    assert results[BURST:] == [True] * SETTLING, results[BURST:]
    account = CreditAccount.objects.get(pk=alice.pk)
    assert account.held == start.held - SETTLING * price + BURST * price
    assert account.balance == start.balance - BURST * price
    assert Job.objects.filter(status=Job.Status.SUCCEEDED).count() == SETTLING
    assert account.balance >= Decimal("0")
    call_command("check_ledger")


def test_a_submission_that_gives_up_on_a_lock_is_a_503_to_retry_not_a_500(
    alice, catalogue, redis_client
):
    """Whatever lock conflict the database ends (here a lock timeout while another transaction
    holds alice's row), the client gets a JSON 503 with Retry-After and nothing is written."""
    locked, release = threading.Event(), threading.Event()

    def hold_alices_row() -> None:
        try:
            with transaction.atomic():
                User.objects.select_for_update().get(pk=alice.pk)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_alices_row)
    holder.start()
    try:
        assert locked.wait(10)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        client = APIClient()
        client.force_authenticate(alice)
        response = client.post("/api/v1/jobs/", SMALL, format="json")
    finally:
        release.set()
        holder.join()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json()["error"] == "ServiceUnavailable"
    assert not Job.objects.exists()
