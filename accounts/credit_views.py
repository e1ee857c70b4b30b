"""Credits pages: the account's balance and ledger, redeem, the shop, Stripe's webhook, pricing."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from accounts.forms import CheckoutForm, RedeemForm
from accounts.ledger import account_for
from accounts.member_request import MemberRequest
from accounts.models import CreditEntry, CreditPack, MembershipPlan, Purchase
from accounts.payments import PaymentError, WebhookRejected, handle_webhook, payments_enabled
from accounts.payments import start_checkout as open_checkout
from accounts.redeem import RedeemError, redeem_code
from accounts.throttles import redeem_refusal_wait
from accounts.tiers import effective_tier
from accounts.verification import may_receive_grants

ENTRIES_PER_PAGE = 25


@login_required
@require_GET
def credits(request: HttpRequest) -> HttpResponse:
    return _render_credits(request)


def _render_credits(
    request: HttpRequest,
    redeem_form: RedeemForm | None = None,
    shop_error: str = "",
    status: int = 200,
) -> HttpResponse:
    account = account_for(request.user)
    tier = effective_tier(account)
    # Only ever the caller's own account: there is no parameter naming whose ledger to show.
    entries = Paginator(CreditEntry.objects.filter(account=account), ENTRIES_PER_PAGE)
    context: dict[str, Any] = {
        "account": account,
        "tier": tier,
        "next_grant": tier.next_grant_at(timezone.now()),
        "awaits_verification": not may_receive_grants(request.user),
        "entries": entries.get_page(request.GET.get("page")),
        "redeem_form": redeem_form or RedeemForm(),
        "payments_enabled": payments_enabled(),
        "packs": CreditPack.objects.filter(active=True),
        "plans": MembershipPlan.objects.filter(active=True).select_related("tier"),
        "shop_error": shop_error,
    }
    return render(request, "accounts/credits.html", context, status=status)


@login_required
@require_POST
def redeem(request: HttpRequest) -> HttpResponse:
    form = RedeemForm(request.POST)
    wait = redeem_refusal_wait(request)
    if wait is not None:
        form.add_error(
            "code",
            _("Too many redeem attempts. Try again in %(seconds)d seconds.") % {"seconds": wait},
        )
        response = _render_credits(request, redeem_form=form, status=429)
        response["Retry-After"] = str(wait)
        return response
    if not form.is_valid():
        return _render_credits(request, redeem_form=form, status=400)
    try:
        redemption = redeem_code(request.user, form.cleaned_data["code"])
    except RedeemError as exc:
        form.add_error("code", str(exc))
        return _render_credits(request, redeem_form=form, status=400)
    messages.success(request, _("Code %(code)s redeemed.") % {"code": redemption.code.code})
    return redirect("credits")


@login_required
@require_POST
def checkout(request: HttpRequest) -> HttpResponse:
    if not payments_enabled():
        return _render_credits(
            request, shop_error=_("Payments are off on this server."), status=503
        )
    form = CheckoutForm(request.POST)
    item: CreditPack | MembershipPlan | None = None
    if form.is_valid():
        model = CreditPack if form.cleaned_data["kind"] == "pack" else MembershipPlan
        item = model.objects.filter(pk=form.cleaned_data["item"], active=True).first()
    if item is None:
        return _render_credits(request, shop_error=_("That item is not on sale."), status=400)
    try:
        url = open_checkout(
            request.user,
            item,
            success_url=request.build_absolute_uri(reverse("checkout_success")),
            cancel_url=request.build_absolute_uri(reverse("checkout_cancel")),
        )
    except PaymentError as exc:
        return _render_credits(request, shop_error=str(exc), status=502)
    return redirect(url)


@login_required
@require_GET
def checkout_success(request: MemberRequest) -> HttpResponse:
    purchase = Purchase.objects.filter(
        user=request.user, stripe_session_id=request.GET.get("session_id") or None
    ).first()
    return render(request, "accounts/checkout_done.html", {"purchase": purchase, "paid": True})


@login_required
@require_GET
def checkout_cancel(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/checkout_done.html", {"purchase": None, "paid": False})


@csrf_exempt  # Stripe cannot send a CSRF token; the signature authenticates the call instead.
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    try:
        outcome = handle_webhook(request.body, request.headers.get("Stripe-Signature"))
    except WebhookRejected:
        return HttpResponseBadRequest(_("Invalid Stripe webhook."))
    return JsonResponse({"received": True, "outcome": outcome})
