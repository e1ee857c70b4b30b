from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts import tiers as tier_service
from accounts.grants import grant_periodic_credits
from accounts.ledger import account_for
from accounts.models import CreditAccount, CreditEntry, User
from generation.limits import limits_for
from generation.models import CatalogEntry
from tests.accounts.conftest import balance_of

pytestmark = pytest.mark.django_db

NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_signing_up_puts_the_new_user_on_free_with_the_welcome_grant(client, tiers):
    response = client.post(
        reverse("signup"),
        {
            "username": "dora",
            "email": "dora@example.com",
            "password1": "a-long-unusual-passphrase",
            "password2": "a-long-unusual-passphrase",
        },
    )
    assert response.status_code == 302
    dora = User.objects.get(username="dora")
    account = CreditAccount.objects.get(pk=dora.pk)
    assert account.tier == tiers["free"]
    assert account.balance == tiers["free"].welcome_grant == Decimal("20")


def test_the_daily_grant_is_given_once_per_day_however_often_the_task_runs(alice, bob, tiers):
    account_for(alice), account_for(bob)
    assert grant_periodic_credits(NOON) == 2
    assert grant_periodic_credits(NOON + timedelta(hours=3)) == 0
    assert balance_of(alice) == Decimal("25")  # welcome 20 + daily 5
    assert grant_periodic_credits(NOON + timedelta(days=1)) == 2
    assert balance_of(alice) == Decimal("30")


def test_the_monthly_grant_is_given_once_per_month(alice, tiers):
    tier_service.set_tier(alice, tiers["member"])
    grant_periodic_credits(NOON)
    grant_periodic_credits(NOON + timedelta(days=5))
    assert CreditEntry.objects.of_user(alice).filter(key="grant:monthly:2026-11").count() == 1
    grant_periodic_credits(NOON + timedelta(days=10))  # December
    assert balance_of(alice) == Decimal("20") + 2 * tiers["member"].grant_amount


def test_inactive_users_get_no_grant(alice, tiers):
    account_for(alice)
    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert grant_periodic_credits(NOON) == 0


def test_the_next_grant_is_at_the_start_of_the_next_period(tiers):
    assert tiers["free"].next_grant_at(NOON) == datetime(2026, 11, 24, tzinfo=UTC)
    assert tiers["member"].next_grant_at(NOON) == datetime(2026, 12, 1, tzinfo=UTC)


def test_generation_limits_come_from_the_users_tier(alice, bob, tiers):
    tier_service.set_tier(bob, tiers["pro"])
    assert limits_for(alice).max_side == tiers["free"].max_side
    assert limits_for(alice).max_unfinished_jobs == tiers["free"].max_unfinished_jobs
    assert limits_for(bob).max_steps == tiers["pro"].max_steps
    assert limits_for(bob).priority_weight == tiers["pro"].priority_weight


def test_a_time_limited_tier_ends_and_the_task_writes_the_downgrade(alice, tiers):
    tier_service.upgrade_tier(alice, tiers["member"], days=30, now=NOON)
    assert tier_service.tier_of(alice) == tiers["member"]
    later = NOON + timedelta(days=31)
    assert tier_service.effective_tier(account_for(alice), later) == tiers["free"]
    grant_periodic_credits(later)
    assert CreditAccount.objects.get(pk=alice.pk).tier == tiers["free"]


def test_buying_the_same_tier_again_extends_it_and_a_lower_tier_never_downgrades(alice, tiers):
    now = timezone.now()
    tier_service.upgrade_tier(alice, tiers["member"], days=30, now=now)
    tier_service.upgrade_tier(alice, tiers["member"], days=30, now=now)
    assert CreditAccount.objects.get(pk=alice.pk).tier_expires_at == now + timedelta(days=60)
    tier_service.upgrade_tier(alice, tiers["pro"], days=None, now=now)
    tier_service.upgrade_tier(alice, tiers["member"], days=30, now=now)
    assert tier_service.tier_of(alice) == tiers["pro"]


def test_a_tier_limited_to_some_models_hides_the_others_from_its_members(alice, carol, tiers):
    for name in ("base", "premium"):
        CatalogEntry.objects.create(name=name, kind="checkpoint")
    CatalogEntry.objects.create(name="style", kind="lora")
    free = tiers["free"]
    free.all_models, free.allowed_models = False, ["base"]
    free.save()
    names = set(CatalogEntry.objects.visible_to(alice).values_list("name", flat=True))
    assert names == {"base", "style"}
    assert CatalogEntry.objects.visible_to(carol).filter(name="premium").exists()  # staff
