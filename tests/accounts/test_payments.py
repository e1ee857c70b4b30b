"""Stripe: checkout is opened server-side (Stripe's servers mocked), webhooks are signed here
with a test secret by Stripe's own scheme (t=..., v1=HMAC-SHA256 of 't.payload')."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import stripe
from django.urls import reverse

from accounts.models import CreditEntry, CreditPack, MembershipPlan, Purchase, StripeEvent
from accounts.tiers import tier_of
from tests.accounts.conftest import WEBHOOK_SECRET, balance_of

pytestmark = pytest.mark.django_db


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    timestamp = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def event(
    purchase: Purchase,
    kind: str = "checkout.session.completed",
    event_id: str = "evt_1",
    payment_status: str = "paid",
    **session: Any,
) -> bytes:
    body = {
        "id": event_id,
        "object": "event",
        "type": kind,
        "data": {
            "object": {
                "id": purchase.stripe_session_id,
                "object": "checkout.session",
                "client_reference_id": str(purchase.pk),
                "payment_status": payment_status,
                "amount_total": purchase.amount_cents,
                **session,
            }
        },
    }
    return json.dumps(body).encode()


def deliver(client, payload: bytes, signature: str | None = "sign"):
    headers = {}
    if signature == "sign":
        signature = sign(payload)
    if signature is not None:
        headers["HTTP_STRIPE_SIGNATURE"] = signature
    return client.post(
        reverse("stripe_webhook"), payload, content_type="application/json", **headers
    )


@pytest.fixture
def pack(db) -> CreditPack:
    return CreditPack.objects.create(name="Starter", credits=Decimal("100"), price_cents=500)


@pytest.fixture
def plan(tiers) -> MembershipPlan:
    return MembershipPlan.objects.create(
        name="Member, 30 days",
        tier=tiers["member"],
        days=30,
        credits=Decimal("50"),
        price_cents=900,
    )


@pytest.fixture
def stripe_sessions(stripe_keys):
    """Stripe's servers: the Checkout session creation call, and nothing else."""
    created = SimpleNamespace(id="cs_test_1", url="https://checkout.stripe.test/cs_test_1")
    with mock.patch(
        "stripe.checkout._session_service.SessionService.create", return_value=created
    ) as create:
        yield create


def checkout(client, user, kind: str, item: int):
    client.force_login(user)
    return client.post(reverse("checkout"), {"kind": kind, "item": item})


@pytest.fixture
def alices_purchase(client, alice, pack, stripe_sessions) -> Purchase:
    response = checkout(client, alice, "pack", pack.pk)
    assert response.status_code == 302
    return Purchase.objects.get(user=alice)


def test_alice_is_sent_to_stripe_checkout_for_a_pack(client, alice, pack, stripe_sessions):
    response = checkout(client, alice, "pack", pack.pk)
    assert response.status_code == 302
    assert response["Location"] == "https://checkout.stripe.test/cs_test_1"
    purchase = Purchase.objects.get(user=alice)
    assert (purchase.status, purchase.stripe_session_id, purchase.credits) == (
        "pending",
        "cs_test_1",
        Decimal("100.00"),
    )
    params = stripe_sessions.call_args.kwargs["params"]
    assert params["client_reference_id"] == str(purchase.pk)
    assert params["line_items"][0]["price_data"]["unit_amount"] == 500


@pytest.mark.parametrize(
    "form",
    [
        {"kind": "pack", "item": "999"},
        {"kind": "pack", "item": "abc"},
        {"kind": "coupon", "item": "1"},
        {"kind": "pack", "item": "-1"},
        {},
    ],
)
def test_an_unknown_item_is_a_bad_request_and_nothing_is_recorded(
    client, alice, pack, stripe_sessions, form
):
    client.force_login(alice)
    response = client.post(reverse("checkout"), form)
    assert response.status_code == 400
    assert not Purchase.objects.exists()
    stripe_sessions.assert_not_called()


def test_an_item_off_sale_cannot_be_bought(client, alice, pack, stripe_sessions):
    CreditPack.objects.filter(pk=pack.pk).update(active=False)
    assert checkout(client, alice, "pack", pack.pk).status_code == 400


def test_without_stripe_keys_the_shop_says_payments_are_off(client, alice, pack, settings):
    settings.STRIPE_SECRET_KEY = settings.STRIPE_WEBHOOK_SECRET = ""
    client.force_login(alice)
    page = client.get(reverse("credits"))
    assert page.status_code == 200
    assert "Payments are off" in page.content.decode()
    assert checkout(client, alice, "pack", pack.pk).status_code == 503
    assert not Purchase.objects.exists()


def test_stripe_being_down_is_a_clear_error(client, alice, pack, stripe_keys):
    with mock.patch(
        "stripe.checkout._session_service.SessionService.create",
        side_effect=stripe.APIConnectionError("down"),
    ):
        response = checkout(client, alice, "pack", pack.pk)
    assert response.status_code == 502
    assert Purchase.objects.get().status == "failed"


def test_a_signed_completed_event_credits_the_pack_once(client, alice, alices_purchase):
    response = deliver(client, event(alices_purchase))
    assert response.status_code == 200
    assert response.json()["outcome"] == "fulfilled"
    assert balance_of(alice) == Decimal("120.00")  # welcome 20 + pack 100
    alices_purchase.refresh_from_db()
    assert alices_purchase.status == "paid"
    entry = CreditEntry.objects.of_user(alice).get(kind="top_up")
    assert entry.purchase == alices_purchase


def test_a_replayed_event_is_recorded_once_and_credits_nothing_more(client, alice, alices_purchase):
    payload = event(alices_purchase)
    deliver(client, payload)
    again = deliver(client, payload)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    assert StripeEvent.objects.count() == 1
    assert balance_of(alice) == Decimal("120.00")


def test_two_events_for_the_same_payment_credit_once(client, alice, alices_purchase):
    deliver(client, event(alices_purchase, event_id="evt_a"))
    second = deliver(
        client, event(alices_purchase, "checkout.session.async_payment_succeeded", event_id="evt_b")
    )
    assert second.json()["outcome"] == "already fulfilled"
    assert balance_of(alice) == Decimal("120.00")


def test_an_expired_event_arriving_after_payment_does_not_undo_it(client, alice, alices_purchase):
    deliver(client, event(alices_purchase, event_id="evt_paid"))
    deliver(
        client,
        event(
            alices_purchase, "checkout.session.expired", event_id="evt_exp", payment_status="unpaid"
        ),
    )
    alices_purchase.refresh_from_db()
    assert alices_purchase.status == "paid"
    assert balance_of(alice) == Decimal("120.00")


def test_a_delayed_payment_is_credited_when_it_succeeds_whatever_the_order(
    client, alice, alices_purchase
):
    succeeded = event(alices_purchase, "checkout.session.async_payment_succeeded", event_id="evt_2")
    pending = event(alices_purchase, event_id="evt_1", payment_status="unpaid")
    assert deliver(client, succeeded).json()["outcome"] == "fulfilled"
    assert deliver(client, pending).json()["outcome"] == "awaiting payment"
    assert balance_of(alice) == Decimal("120.00")


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "garbage",
        "t=1,v1=00",
        "v1=abc",
        "other-body",
        "wrong-secret",
    ],
)
def test_an_unsigned_or_badly_signed_webhook_is_refused_and_credits_nothing(
    client, alice, alices_purchase, signature
):
    payload = event(alices_purchase)
    if signature == "wrong-secret":
        signature = sign(payload, secret="whsec_wrong")
    elif signature == "other-body":
        signature = sign(b'{"id": "evt_1"}')
    response = deliver(client, payload, signature=signature)
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()
    assert balance_of(alice) == Decimal("20.00")


def test_an_old_signature_is_refused_as_a_replay(client, alice, alices_purchase):
    payload = event(alices_purchase)
    stale = sign(payload, at=int(time.time()) - 3600)
    assert deliver(client, payload, signature=stale).status_code == 400
    assert not StripeEvent.objects.exists()


def test_a_signed_body_that_is_not_an_event_is_refused(client, stripe_keys):
    assert deliver(client, b"[1, 2]").status_code == 400
    assert deliver(client, b"not json").status_code == 400


def test_webhooks_are_refused_when_stripe_is_not_configured(client, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    assert deliver(client, b"{}").status_code == 400


def test_an_event_for_a_purchase_we_never_made_is_recorded_and_credits_nothing(
    client, alice, alices_purchase
):
    payload = json.dumps(
        {
            "id": "evt_x",
            "type": "checkout.session.completed",
            "data": {"object": {"client_reference_id": "not-a-uuid", "payment_status": "paid"}},
        }
    ).encode()
    assert deliver(client, payload).json()["outcome"] == "unknown purchase"
    assert balance_of(alice) == Decimal("20.00")


def test_a_paid_amount_that_differs_from_the_sale_is_not_credited(client, alice, alices_purchase):
    response = deliver(client, event(alices_purchase, amount_total=1))
    assert response.json()["outcome"] == "amount mismatch"
    assert balance_of(alice) == Decimal("20.00")


def test_a_membership_plan_upgrades_the_tier_and_adds_its_credits(
    client, alice, plan, stripe_sessions
):
    checkout(client, alice, "plan", plan.pk)
    purchase = Purchase.objects.get(user=alice)
    deliver(client, event(purchase))
    assert tier_of(alice) == plan.tier
    assert balance_of(alice) == Decimal("70.00")


def test_the_success_page_shows_only_the_callers_own_purchase(client, alice, bob, alices_purchase):
    client.force_login(bob)
    page = client.get(reverse("checkout_success"), {"session_id": "cs_test_1"})
    assert page.status_code == 200
    assert page.context["purchase"] is None
