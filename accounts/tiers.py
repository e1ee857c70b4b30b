"""Membership tiers: which one a user is on, and changing it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.ledger import account_for
from accounts.models import CreditAccount, MembershipTier, User
from accounts.request_memo import forget, remember, remembered


def tier_expired(expires_at: datetime | None, now: datetime) -> bool:
    """The one tier-expiry rule: a time-limited tier has run out once its end is reached (the
    periodic task writes the downgrade; reads never wait for it)."""
    return expires_at is not None and expires_at <= now


def effective_tier(account: CreditAccount, now: datetime | None = None) -> MembershipTier:
    """The account's tier, or the default one once a time-limited tier has run out."""
    if tier_expired(account.tier_expires_at, now or timezone.now()):
        return MembershipTier.objects.default()
    return account.tier


def tier_of(user: Any) -> MembershipTier:
    if user is None or not getattr(user, "is_authenticated", False):
        return MembershipTier.objects.default()
    if (tier := remembered(user.pk)) is not None:
        return tier
    tier = effective_tier(account_for(user))
    remember(user.pk, tier)
    return tier


def remember_loaded_tier(user: Any) -> None:
    """Put the tier of a user loaded with its credit account and tier (token authentication:
    `select_related("user__credit_account__tier")`) in the request's memo, so that `tier_of`
    reads no account again in this request. A user loaded without them: nothing to do."""
    if not User.credit_account.is_cached(user):
        return
    try:
        account = user.credit_account
    except CreditAccount.DoesNotExist:  # no account yet: tier_of opens it when asked
        return
    remember(user.pk, effective_tier(account))


def allowed_model_names(user: Any) -> list[str] | None:
    """Catalogue names the user's tier may use; None means every model."""
    tier = tier_of(user)
    return None if tier.all_models else list(tier.allowed_models or [])


def set_tier(user: Any, tier: MembershipTier, *, until: datetime | None = None) -> None:
    """Put the user on `tier` (until a time, or with no end). Staff and services use this."""
    account = account_for(user)
    forget(user.pk)
    CreditAccount.objects.filter(pk=account.pk).update(
        tier=tier, tier_expires_at=until, updated_at=timezone.now()
    )


def upgrade_tier(
    user: Any, tier: MembershipTier, days: int | None, now: datetime | None = None
) -> None:
    """Grant `tier` for `days` (None: no end) without ever downgrading: the same tier bought
    again extends its end; a lower tier than the current one changes nothing."""
    now = now or timezone.now()
    forget(user.pk)
    with transaction.atomic():
        account = account_for(user)
        account = (
            CreditAccount.objects.select_for_update(no_key=True)
            .select_related("tier")
            .get(pk=account.pk)
        )
        current = effective_tier(account, now)
        if current.rank > tier.rank:
            return
        if days is None:
            until = None
        else:
            start = now
            if current.pk == tier.pk and account.tier_expires_at and account.tier_expires_at > now:
                start = account.tier_expires_at
            elif current.pk == tier.pk and account.tier_expires_at is None:
                return  # already on it with no end
            until = start + timedelta(days=days)
        CreditAccount.objects.filter(pk=account.pk).update(
            tier=tier, tier_expires_at=until, updated_at=now
        )


def expire_tiers(now: datetime | None = None) -> int:
    """Move accounts whose time-limited tier has run out back to the default tier."""
    now = now or timezone.now()
    default = MembershipTier.objects.default()
    return CreditAccount.objects.filter(tier_expires_at__lte=now).update(
        tier=default, tier_expires_at=None, updated_at=now
    )


def tiers_allowing(model_name: str) -> list[MembershipTier]:
    """Tiers whose members may use the catalogue entry named `model_name`."""
    return [tier for tier in MembershipTier.objects.all() if tier.allows_model(model_name)]


def set_model_tiers(model_name: str, tiers: Any, *, previous_name: str | None = None) -> None:
    """Make exactly `tiers` (among those not allowing every model) list `model_name`.

    Seen from the catalogue side: the lists live on the tiers. A renamed entry takes its old
    name's place first, so no tier keeps a name that no longer exists."""
    chosen = {tier.pk for tier in tiers}
    with transaction.atomic():
        for tier in MembershipTier.objects.select_for_update().filter(all_models=False):
            names = list(tier.allowed_models or [])
            if previous_name and previous_name != model_name and previous_name in names:
                names = [model_name if n == previous_name else n for n in names]
            if tier.pk in chosen and model_name not in names:
                names.append(model_name)
            elif tier.pk not in chosen and model_name in names:
                names.remove(model_name)
            if names != list(tier.allowed_models or []):
                MembershipTier.objects.filter(pk=tier.pk).update(
                    allowed_models=list(dict.fromkeys(names))
                )
