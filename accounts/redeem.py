"""Redeem codes: credits and optionally a tier, each code within its use count, once per user."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.ledger import Kind, credit
from accounts.models import RedeemCode, Redemption
from accounts.tiers import upgrade_tier


class RedeemError(Exception):
    """The code cannot be used; the message is safe to show. Nothing was written."""


def redeem_code(user: Any, text: str, now: datetime | None = None) -> Redemption:
    now = now or timezone.now()
    code = RedeemCode.objects.select_related("tier").filter(code=text.strip().upper()).first()
    if code is None:
        raise RedeemError(_("That code does not exist."))
    if code.expires_at is not None and code.expires_at <= now:
        raise RedeemError(_("That code has expired."))
    if Redemption.objects.filter(code=code, user=user).exists():
        raise RedeemError(_("You have already used that code."))
    try:
        with transaction.atomic():
            # The count is taken by a conditional update: concurrent redeemers cannot pass it.
            taken = RedeemCode.objects.filter(pk=code.pk, uses__lt=F("max_uses")).update(
                uses=F("uses") + 1
            )
            if not taken:
                raise RedeemError(_("That code has been used up."))
            redemption = Redemption.objects.create(code=code, user=user, created_at=now)
            if code.credits > 0:
                credit(
                    user,
                    code.credits,
                    Kind.REDEEM,
                    redemption=redemption,
                    key=f"redeem:{code.pk}",
                    reason=_("Code %(code)s") % {"code": code.code},
                )
            if code.tier is not None:
                upgrade_tier(user, code.tier, code.tier_days, now)
    except IntegrityError:
        # The same user redeeming twice at once: the unique (code, user) refuses the second.
        raise RedeemError(_("You have already used that code.")) from None
    return redemption
