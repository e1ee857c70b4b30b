from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import RedeemCode, Redemption
from accounts.redeem import RedeemError, redeem_code
from accounts.tiers import tier_of
from tests.accounts.conftest import balance_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def code(db) -> RedeemCode:
    return RedeemCode.objects.create(code="spring-50", credits=Decimal("50"), max_uses=2)


def test_alice_redeems_a_code_on_her_credits_page(client, alice, code):
    client.force_login(alice)
    response = client.post(reverse("redeem"), {"code": " Spring-50 "})
    assert response.status_code == 302
    assert balance_of(alice) == Decimal("70.00")
    assert RedeemCode.objects.get(pk=code.pk).uses == 1


def test_alice_cannot_redeem_the_same_code_twice(client, alice, code):
    client.force_login(alice)
    client.post(reverse("redeem"), {"code": "SPRING-50"})
    again = client.post(reverse("redeem"), {"code": "SPRING-50"})
    assert again.status_code == 400
    assert "already used" in again.content.decode()
    assert balance_of(alice) == Decimal("70.00")
    assert RedeemCode.objects.get(pk=code.pk).uses == 1


def test_a_code_stops_at_its_use_count(alice, bob, carol, code):
    redeem_code(alice, "SPRING-50")
    redeem_code(bob, "SPRING-50")
    with pytest.raises(RedeemError, match="used up"):
        redeem_code(carol, "SPRING-50")
    assert balance_of(carol) == Decimal("20.00")
    assert Redemption.objects.filter(code=code).count() == 2


def test_an_expired_or_unknown_code_is_refused(client, alice, code):
    RedeemCode.objects.filter(pk=code.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    client.force_login(alice)
    for text in ("SPRING-50", "NOPE", ""):
        assert client.post(reverse("redeem"), {"code": text}).status_code == 400
    assert not Redemption.objects.exists()


def test_a_code_can_upgrade_the_tier(alice, tiers):
    RedeemCode.objects.create(code="PRO-WEEK", credits=0, tier=tiers["pro"], tier_days=7)
    redeem_code(alice, "pro-week")
    assert tier_of(alice) == tiers["pro"]
