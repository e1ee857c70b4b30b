"""Credits' small world: money helpers, a checkpoint to price jobs with, Stripe test keys."""

from __future__ import annotations

import uuid
from decimal import Decimal
from importlib import import_module
from typing import Any

import pytest

from accounts import ledger
from accounts.models import CreditAccount, MembershipTier

# Generation's real broker and in-process platform worker, for settlement through the actor.
from tests.generation.conftest import broker, platform_worker  # noqa: F401

WEBHOOK_SECRET = "whsec_test_secret"


def balance_of(user: Any) -> Decimal:
    ledger.account_for(user)
    return CreditAccount.objects.get(pk=user.pk).balance


def held_of(user: Any) -> Decimal:
    return CreditAccount.objects.get(pk=user.pk).held


def give(user: Any, amount: Any) -> None:
    """Credits on top of whatever the user has, as staff would add them."""
    ledger.credit(user, amount, "grant", reason="test", key=f"test:{uuid.uuid4()}")


def set_balance(user: Any, amount: Any) -> None:
    """Exactly `amount` credits, through the ledger (an adjustment), never by editing the row."""
    current = ledger.account_for(user).balance
    delta = Decimal(amount) - current
    if delta:
        ledger.adjust(user, delta, actor=None, reason="test setup")


@pytest.fixture
def tiers(db) -> dict[str, MembershipTier]:
    """The data migration's tiers (recreated where a transactional test flushed them)."""
    for values in import_module("accounts.migrations.0003_default_tiers").TIERS:
        MembershipTier.objects.get_or_create(slug=values["slug"], defaults=values)
    return {t.slug: t for t in MembershipTier.objects.all()}


@pytest.fixture
def stripe_keys(settings) -> None:
    settings.STRIPE_SECRET_KEY = "sk_test_123"
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
