"""What staff change on a member's account from the admin: credits, tier and API tokens.

Each change goes through the service that owns it (the ledger for credits, accounts.tiers for the
tier) and is written to Django's admin log in the same transaction, with who made it and why, as
suspensions are (accounts/suspension.py): the member's History page in the admin tells it all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts import ledger
from accounts.models import ApiToken, CreditEntry, MembershipTier
from accounts.tiers import set_tier, tier_of


class StaffActionError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def log_member_change(actor: Any, user: Any, message: str) -> None:
    """One line in the admin log of `user`, signed by `actor` (None for the system)."""
    LogEntry.objects.log_actions(
        user_id=actor.pk,
        queryset=get_user_model()._default_manager.filter(pk=user.pk),
        action_flag=CHANGE,
        change_message=message,
        single_object=True,
    )


def _check(actor: Any, user: Any, reason: str) -> str:
    if not getattr(actor, "is_staff", False):
        raise StaffActionError(_("Only staff can change a member's credits or tier."))
    if actor.pk == user.pk and not actor.is_superuser:
        raise StaffActionError(_("Ask another admin to change your own credits or tier."))
    if not reason.strip():
        raise StaffActionError(_("Give a reason: it is kept in the log."))
    return reason.strip()


def adjust_credits(actor: Any, user: Any, amount: Any, reason: str) -> CreditEntry:
    """Grant (positive) or deduct (negative) credits: one ledger adjustment, one log line."""
    why = _check(actor, user, reason)
    try:
        with transaction.atomic():
            entry = ledger.adjust(user, amount, actor=actor, reason=why)
            log_member_change(actor, user, f"Credits {entry.amount:+}: {why}")
    except ledger.InsufficientCredits as exc:
        raise StaffActionError(
            _("the balance is %(balance)s, so %(amount)s cannot be deducted.")
            % {"balance": exc.balance, "amount": exc.price}
        ) from None
    except ledger.LedgerError as exc:
        raise StaffActionError(str(exc)) from None
    return entry


def change_tier(
    actor: Any, user: Any, tier: MembershipTier, reason: str, until: datetime | None = None
) -> None:
    """Put the member on `tier` (until a time, or with no end), logged with the reason."""
    why = _check(actor, user, reason)
    if until is not None and until <= timezone.now():
        raise StaffActionError(_("The end of the tier must be in the future."))
    before = tier_of(user)
    with transaction.atomic():
        set_tier(user, tier, until=until)
        end = f" until {until:%Y-%m-%d %H:%M}" if until else ""
        log_member_change(actor, user, f"Tier {before.name} -> {tier.name}{end}: {why}")


def revoke_token(actor: Any, token: ApiToken) -> bool:
    """Revoke a member's API token; False when it was already revoked."""
    if not getattr(actor, "is_staff", False):
        raise StaffActionError(_("Only staff can revoke a member's token."))
    with transaction.atomic():
        revoked = bool(
            ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
        )
        if revoked:
            log_member_change(actor, token.user, f"Revoked API token {token.name} ({token.hint})")
    return revoked
