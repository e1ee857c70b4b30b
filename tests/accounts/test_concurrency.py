"""Money under real concurrency. SQLite serialises writers, so these run on Postgres only
(DATABASE_URL=postgres://...; CI sets it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

from accounts.models import CreditAccount, MembershipTier, RedeemCode, Redemption
from accounts.redeem import RedeemError, redeem_code
from accounts.tiers import set_tier
from generation.models import CatalogEntry, Job
from generation.submission import SubmissionError, submit_job
from tests.accounts.conftest import set_balance
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
