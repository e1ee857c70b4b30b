from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.urls import reverse

from accounts import ledger
from accounts.models import CreditAccount, CreditEntry
from tests.accounts.conftest import balance_of, give

pytestmark = pytest.mark.django_db


def test_alice_sees_her_balance_tier_limits_and_history(client, alice, tiers):
    job_id = uuid.uuid4()
    ledger.hold(alice, 2, job_id)
    client.force_login(alice)
    page = client.get(reverse("credits"))
    html = page.content.decode()
    assert page.status_code == 200
    assert "18.00" in html and "Free" in html
    assert str(tiers["free"].max_side) in html
    assert reverse("job_detail", args=[job_id]) in html
    assert page.context["next_grant"] is not None


def test_the_profile_shows_the_balance_and_links_the_credits_page(client, alice):
    client.force_login(alice)
    html = client.get(reverse("profile")).content.decode()
    assert "20.00" in html and reverse("credits") in html


def test_the_history_is_paginated(client, alice):
    for _ in range(30):
        give(alice, 1)
    client.force_login(alice)
    first = client.get(reverse("credits"))
    assert len(first.context["entries"]) == 25
    second = client.get(reverse("credits"), {"page": 2})
    assert len(second.context["entries"]) == 6  # 30 grants and the welcome grant


def test_bob_never_sees_alices_ledger(client, alice, bob):
    ledger.credit(alice, 7, "grant", reason="alice-secret-bonus", key="a")
    client.force_login(bob)
    html = client.get(reverse("credits"), {"user": alice.pk, "account": alice.pk}).content
    assert b"alice-secret-bonus" not in html
    assert all(e.account_id == bob.pk for e in client.get(reverse("credits")).context["entries"])


def test_the_credits_page_needs_a_login(client):
    assert client.get(reverse("credits")).status_code == 302


def test_the_pricing_page_states_the_unit_price_and_the_cancel_rule(client):
    page = client.get(reverse("pricing"))
    html = page.content.decode()
    assert page.status_code == 200
    assert page.context["examples"][0][1] == Decimal("1.00")
    assert "share of its steps" in html


def test_the_pricing_page_examples_read_in_the_visitors_language(client):
    page = client.get(reverse("pricing"), HTTP_ACCEPT_LANGUAGE="zh-hans")
    html = page.content.decode()
    assert "512×512，20 步，一张图片" in html
    assert "512×512, 20 steps, one image" not in html


def test_carol_adjusts_alices_balance_with_a_reason_in_the_admin(client, alice, carol):
    carol.is_superuser = True
    carol.save()
    ledger.account_for(alice)
    client.force_login(carol)
    url = reverse("admin:accounts_creditaccount_adjust", args=[alice.pk])
    response = client.post(url, {"amount": "-5.50", "reason": "chargeback"})
    assert response.status_code == 302
    entry = CreditEntry.objects.of_user(alice).get(kind="adjustment")
    assert (entry.amount, entry.actor, entry.reason) == (Decimal("-5.50"), carol, "chargeback")
    assert balance_of(alice) == Decimal("14.50")


@pytest.mark.parametrize(
    "form",
    [
        {"amount": "abc", "reason": "x"},
        {"amount": "5", "reason": ""},
        {"amount": "0", "reason": "x"},
        {"amount": "-100", "reason": "too much"},
        {"amount": "1.234", "reason": "x"},
    ],
)
def test_a_bad_adjustment_is_refused_and_nothing_is_written(client, alice, carol, form):
    carol.is_superuser = True
    carol.save()
    ledger.account_for(alice)
    client.force_login(carol)
    url = reverse("admin:accounts_creditaccount_adjust", args=[alice.pk])
    assert client.post(url, form).status_code == 400
    assert not CreditEntry.objects.filter(kind="adjustment").exists()
    assert balance_of(alice) == Decimal("20.00")


def test_the_admin_shows_the_ledger_read_only(client, alice, carol):
    carol.is_superuser = True
    carol.save()
    give(alice, 3)
    client.force_login(carol)
    assert client.get(reverse("admin:accounts_creditentry_changelist")).status_code == 200
    entry = CreditEntry.objects.of_user(alice).first()
    assert entry is not None
    change = client.post(
        reverse("admin:accounts_creditentry_change", args=[entry.pk]), {"amount": "1000"}
    )
    assert change.status_code == 403 or CreditEntry.objects.get(pk=entry.pk).amount != 1000
    account_page = client.get(reverse("admin:accounts_creditaccount_change", args=[alice.pk]))
    assert account_page.status_code == 200
    assert CreditAccount.objects.get(pk=alice.pk).balance == Decimal("23.00")


def test_bob_cannot_reach_the_adjust_page(client, alice, bob):
    client.force_login(bob)
    url = reverse("admin:accounts_creditaccount_adjust", args=[alice.pk])
    assert client.post(url, {"amount": "100", "reason": "me"}).status_code == 302  # to login
    assert not CreditEntry.objects.filter(kind="adjustment").exists()


def test_carol_changes_alices_tier_in_the_admin_without_touching_her_balance(
    client, alice, carol, tiers
):
    carol.is_superuser = True
    carol.save()
    ledger.account_for(alice)
    client.force_login(carol)
    # The account page shows the tier read-only: the change goes through the member action,
    # which asks why and logs it.
    url = reverse("admin:accounts_user_member_action", args=[alice.pk, "tier"])
    response = client.post(url, {"tier": tiers["pro"].pk, "reason": "upgrade", "apply": "1"})
    assert response.status_code == 302
    account = CreditAccount.objects.get(pk=alice.pk)
    assert (account.tier, account.balance) == (tiers["pro"], Decimal("20.00"))


def test_the_grant_command_can_run_from_cron_any_number_of_times(alice, tiers, capsys):
    from django.core.management import call_command

    ledger.account_for(alice)
    call_command("grant_credits")
    call_command("grant_credits")
    assert "1 grant(s)" in capsys.readouterr().out
    assert CreditEntry.objects.of_user(alice).filter(key__startswith="grant:daily").count() == 1
