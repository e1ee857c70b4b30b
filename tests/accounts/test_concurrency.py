"""Money under real concurrency. SQLite serialises writers, so these run on Postgres only
(DATABASE_URL=postgres://...; CI sets it)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from accounts import ledger
from accounts.models import CreditAccount, CreditEntry, MembershipTier, RedeemCode, Redemption
from accounts.redeem import RedeemError, redeem_code
from accounts.tiers import set_tier
from generation.models import CatalogEntry, Job
from generation.submission import SubmissionError, submit_job
from tests.accounts.conftest import balance_of, held_of, set_balance
from tests.conftest import make_user

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="SQLite serialises writers: concurrency needs Postgres",
    ),
    pytest.mark.django_db(transaction=True),
]

UNIT_JOB = {
    "prompt": "a lighthouse",
    "width": 512,
    "height": 512,
    "steps": 20,
    "checkpoint": "base",
}  # 1.00 credit


def all_at_once(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(i) in `count` threads released together; each result or the exception."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as exc:  # collected and checked by the test
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.fixture
def roomy_tier(tiers) -> MembershipTier:
    """Limits that let 50 jobs wait at once, so only credits decide."""
    return MembershipTier.objects.create(
        name="Roomy", slug="roomy", rank=5, max_unfinished_jobs=100
    )


def test_fifty_simultaneous_submissions_with_credits_for_ten_accept_exactly_ten(
    alice, roomy_tier, redis_client
):
    CatalogEntry.objects.create(name="base", kind="checkpoint", family="sd1")
    set_tier(alice, roomy_tier)
    set_balance(alice, 10)

    results = all_at_once(50, lambda i: submit_job(alice, UNIT_JOB))

    accepted = [r for r in results if isinstance(r, Job)]
    refused = [r for r in results if isinstance(r, SubmissionError)]
    assert len(accepted) == 10, results
    assert len(refused) == 40 and {r.status for r in refused} == {402}
    account = CreditAccount.objects.get(pk=alice.pk)
    assert (account.balance, account.held) == (Decimal("0.00"), Decimal("10.00"))
    assert Job.objects.count() == 10
    call_command("check_ledger")


def test_twenty_users_racing_for_a_code_with_five_uses_get_five(tiers):
    users = [make_user(f"racer{i}") for i in range(20)]
    RedeemCode.objects.create(code="FIVE", credits=Decimal("3"), max_uses=5)

    results = all_at_once(20, lambda i: redeem_code(users[i], "FIVE"))

    assert sum(isinstance(r, Redemption) for r in results) == 5
    assert all(isinstance(r, (Redemption, RedeemError)) for r in results), results
    assert RedeemCode.objects.get(code="FIVE").uses == 5
    call_command("check_ledger")


def test_one_user_redeeming_a_code_ten_times_at_once_gets_it_once(alice, tiers):
    RedeemCode.objects.create(code="MANY", credits=Decimal("3"), max_uses=100)

    results = all_at_once(10, lambda i: redeem_code(alice, "MANY"))

    assert sum(isinstance(r, Redemption) for r in results) == 1, results
    assert RedeemCode.objects.get(code="MANY").uses == 1
    call_command("check_ledger")


def test_fifty_simultaneous_holds_without_any_other_lock_never_overdraw(alice, tiers):
    """The ledger alone, without submission's per-user lock: the conditional UPDATE decides."""
    import uuid

    from django.db import transaction

    from accounts import ledger

    set_balance(alice, Decimal("10.00"))

    def take(i: int) -> Any:
        with transaction.atomic():
            return ledger.hold(alice, Decimal("1.00"), uuid.uuid4())

    results = all_at_once(50, take)

    assert sum(not isinstance(r, Exception) for r in results) == 10
    assert all(
        isinstance(r, ledger.InsufficientCredits) for r in results if isinstance(r, Exception)
    ), results
    assert CreditAccount.objects.get(pk=alice.pk).balance == Decimal("0.00")
    call_command("check_ledger")


def test_a_jobs_hold_settled_by_ten_racing_messages_is_charged_once_with_its_parts(alice, tiers):
    """The ledger alone, without the job row's claim that serialises a job's ends: captures,
    releases and an epoch's part race for one hold; the account lock decides. Either the part
    comes first (then the settlement settles only the rest) or after (then it charges nothing)."""
    import uuid

    from django.db import transaction

    from accounts import ledger
    from accounts.models import CreditEntry

    set_balance(alice, Decimal("10.00"))
    job_id = uuid.uuid4()
    with transaction.atomic():
        ledger.hold(alice, Decimal("4.00"), job_id)

    def settle(i: int) -> Any:
        with transaction.atomic():
            if i == 0:
                return ledger.capture_part(job_id, Decimal("1.50"), key=f"{job_id}:epoch-1")
            if i % 2:
                return ledger.capture(job_id)
            return ledger.release(job_id)

    results = all_at_once(11, settle)

    assert not [r for r in results if isinstance(r, Exception)], results
    settlements = CreditEntry.objects.filter(job_id=job_id, kind__in=CreditEntry.SETTLEMENTS)
    assert settlements.count() == 1
    account = CreditAccount.objects.get(pk=alice.pk)
    assert account.held == Decimal("0.00")
    # 10 less what the part and the settlement charged, whichever order they came in.
    charged = ledger.charged_so_far(job_id)
    assert account.balance == Decimal("10.00") - charged
    assert charged in (Decimal("0.00"), Decimal("1.50"), Decimal("4.00"))
    call_command("check_ledger")


def _wait_until_a_statement_waits_for_a_lock() -> None:
    """Until another connection of this test database waits for a row lock (the second
    settlement, behind the first's)."""
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the second settlement never waited for the account's lock")


def test_a_settlement_that_waited_for_the_lock_sees_the_first_ones_entry(alice):
    """The read after the account's lock runs with a new snapshot, so the second of two
    settlements of one job finds it settled and writes nothing (a read in the lock's own
    snapshot would miss the first one's entry and give the hold back a second time)."""
    set_balance(alice, 10)
    job_id = uuid.uuid4()
    ledger.hold(alice, 3, job_id)
    locked, let_go = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                outcome["first"] = ledger.capture(job_id)
                locked.set()
                let_go.wait(10)  # commit only once the second waits for the account
        finally:
            locked.set()
            connection.close()

    def second() -> None:
        try:
            locked.wait(10)
            outcome["second"] = ledger.release(job_id)
        except Exception as exc:  # checked below
            outcome["second"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    try:
        _wait_until_a_statement_waits_for_a_lock()
    finally:
        let_go.set()
        for thread in threads:
            thread.join(10)
    assert isinstance(outcome["first"], CreditEntry)
    assert outcome["second"] is None
    settlements = CreditEntry.objects.filter(job_id=job_id, kind__in=CreditEntry.SETTLEMENTS)
    assert [entry.kind for entry in settlements] == [CreditEntry.Kind.CAPTURE]
    assert (balance_of(alice), held_of(alice)) == (Decimal("7.00"), Decimal("0.00"))
