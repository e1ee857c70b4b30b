"""Paid top-ups through Stripe Checkout.

A purchase row is written before the user leaves for Stripe; the webhook fulfils it. Every
Stripe event id is recorded once (unique), and a purchase turns paid by a conditional update,
so whatever the number or order of deliveries, credits are added exactly once.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from stripe.params.checkout import SessionCreateParams

from accounts.ledger import Kind, credit
from accounts.models import CreditPack, MembershipPlan, Purchase, StripeEvent
from accounts.tiers import upgrade_tier

log = logging.getLogger(__name__)

# Events that mean the money arrived, and those that mean it never will.
PAID_EVENTS = {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
UNPAID_EVENTS = {"checkout.session.expired", "checkout.session.async_payment_failed"}


class PaymentError(Exception):
    """Checkout could not start; the message is safe to show."""


class WebhookRejected(Exception):
    """Unsigned, badly signed or malformed: answered 400, nothing recorded."""


def payments_enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY and settings.STRIPE_WEBHOOK_SECRET)


def _client() -> stripe.StripeClient:
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY)


def start_checkout(
    user: Any, item: CreditPack | MembershipPlan, success_url: str, cancel_url: str
) -> str:
    """Record a pending purchase and open a Checkout session for it; returns Stripe's page URL."""
    if not payments_enabled():
        raise PaymentError(_("Payments are not enabled on this server."))
    if not item.active:
        raise PaymentError(_("That item is not on sale."))
    purchase = Purchase.objects.create(
        user=user,
        pack=item if isinstance(item, CreditPack) else None,
        plan=None if isinstance(item, CreditPack) else item,
        credits=item.credits,
        amount_cents=item.price_cents,
        currency=item.currency,
    )
    params: SessionCreateParams = {
        "mode": "payment",
        "client_reference_id": str(purchase.pk),
        "metadata": {"purchase_id": str(purchase.pk), "user_id": str(user.pk)},
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": item.currency,
                    "unit_amount": item.price_cents,
                    "product_data": {"name": item.name},
                },
            }
        ],
        "success_url": success_url + "?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": cancel_url,
    }
    if user.email:
        params["customer_email"] = user.email
    try:
        session = _client().v1.checkout.sessions.create(params=params)
    except stripe.StripeError as exc:
        log.warning("Stripe refused a checkout session: %s", exc)
        Purchase.objects.filter(pk=purchase.pk).update(status=Purchase.Status.FAILED)
        raise PaymentError(_("The payment provider is unavailable; try again later.")) from exc
    Purchase.objects.filter(pk=purchase.pk).update(stripe_session_id=session.id)
    if not session.url:  # Stripe leaves it empty only for embedded (not hosted) sessions
        raise PaymentError(_("The payment provider is unavailable; try again later."))
    return session.url


def handle_webhook(payload: bytes, signature: str | None) -> str:
    """Verify, record and apply one Stripe event. Returns what happened, for the log."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("webhooks are not configured")
    try:
        stripe.WebhookSignature.verify_header(
            payload, signature, secret, tolerance=stripe.Webhook.DEFAULT_TOLERANCE
        )
        event = json.loads(payload)
    except (stripe.SignatureVerificationError, ValueError, UnicodeDecodeError) as exc:
        raise WebhookRejected(str(exc)) from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or "type" not in event:
        raise WebhookRejected("not a Stripe event")
    try:
        with transaction.atomic():
            record = StripeEvent.objects.create(
                event_id=event["id"], type=str(event["type"])[:100], payload=event
            )
            outcome = apply_event(event)
            StripeEvent.objects.filter(pk=record.pk).update(outcome=outcome[:200])
    except IntegrityError:
        if StripeEvent.objects.filter(event_id=event["id"]).exists():
            return "duplicate"
        raise
    return outcome


def apply_event(event: dict[str, Any]) -> str:
    """Act on an event once it is recorded. Unknown types are recorded and ignored."""
    kind = event["type"]
    if kind not in PAID_EVENTS | UNPAID_EVENTS:
        return "ignored"
    session = (event.get("data") or {}).get("object") or {}
    purchase = _purchase_of(session)
    if purchase is None:
        return "unknown purchase"
    if kind in UNPAID_EVENTS:
        Purchase.objects.filter(pk=purchase.pk, status=Purchase.Status.PENDING).update(
            status=Purchase.Status.EXPIRED if kind.endswith("expired") else Purchase.Status.FAILED
        )
        return "not paid"
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        return "awaiting payment"  # a delayed method: async_payment_succeeded will follow
    if session.get("amount_total") is not None and session["amount_total"] != purchase.amount_cents:
        log.error(
            "Stripe session %s paid %s, expected %s",
            session.get("id"),
            session["amount_total"],
            purchase.amount_cents,
        )
        return "amount mismatch"
    return "fulfilled" if fulfil(purchase) else "already fulfilled"


def _purchase_of(session: dict[str, Any]) -> Purchase | None:
    purchase_id = session.get("client_reference_id") or (session.get("metadata") or {}).get(
        "purchase_id"
    )
    if not purchase_id:
        return None
    try:
        purchase_uuid = uuid.UUID(str(purchase_id))
    except ValueError:
        return None
    purchase = (
        Purchase.objects.select_related("pack", "plan__tier", "user")
        .filter(pk=purchase_uuid)
        .first()
    )
    if purchase is None:
        return None
    if session.get("id") and purchase.stripe_session_id not in (None, session["id"]):
        return None
    return purchase


def fulfil(purchase: Purchase) -> bool:
    """Mark paid and deliver, once. A late 'expired' never undoes it; a 'paid' after an
    'expired' (Stripe does not promise order) still delivers."""
    with transaction.atomic():
        won = (
            Purchase.objects.filter(pk=purchase.pk)
            .exclude(status=Purchase.Status.PAID)
            .update(status=Purchase.Status.PAID, paid_at=timezone.now())
        )
        if not won:
            return False
        if purchase.credits > 0:
            credit(
                purchase.user,
                purchase.credits,
                Kind.TOP_UP,
                purchase=purchase,
                key=f"purchase:{purchase.pk}",
                reason=_("Bought: %(item)s") % {"item": purchase.item.name},
            )
        if purchase.plan is not None:
            upgrade_tier(purchase.user, purchase.plan.tier, purchase.plan.days)
    return True
