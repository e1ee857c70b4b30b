"""Periodic free credits: each account gets its tier's grant once per period, if its member may
receive grants (a verified address while e-mail verification is on).

The entry's key names the period ('grant:daily:2026-11-23'), and at most one entry per account
carries a key, so running the task twice, or in two processes at once, grants once.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.ledger import Kind, credit
from accounts.models import CreditAccount
from accounts.tiers import expire_tiers
from accounts.verification import grant_eligible


def grant_periodic_credits(now: datetime | None = None) -> int:
    """Grant every account its tier's periodic credits for the period `now` is in.

    Returns how many grants were written (0 on a second run in the same period)."""
    now = now or timezone.now()
    expire_tiers(now)
    granted = 0
    accounts = (
        CreditAccount.objects.select_related("user", "tier")
        .filter(tier__grant_amount__gt=0, user__is_active=True)
        .filter(grant_eligible())
        .exclude(tier__grant_period="none")
    )
    for account in accounts.iterator(chunk_size=500):
        key = account.tier.period_key(now)
        if key is None:
            continue
        entry = credit(
            account.user,
            account.tier.grant_amount,
            Kind.GRANT,
            key=key,
            reason=_("%(tier)s credits for this period") % {"tier": account.tier.name},
        )
        granted += entry is not None
    return granted
