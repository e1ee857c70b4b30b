"""Who may receive free credits. With e-mail verification on (the production default), only a
member with a verified address: otherwise every throwaway sign-up would be worth its grants."""

from __future__ import annotations

from typing import Any

from allauth.account import app_settings as allauth_settings
from allauth.account.models import EmailAddress
from django.db.models import Exists, OuterRef, Q


def verification_required() -> bool:
    """On when `ACCOUNT_EMAIL_VERIFICATION` is mandatory (settings: EMAIL_VERIFICATION)."""
    return allauth_settings.EMAIL_VERIFICATION == allauth_settings.EmailVerificationMethod.MANDATORY


def may_receive_grants(user: Any) -> bool:
    if not verification_required():
        return True
    return EmailAddress.objects.filter(user=user, verified=True).exists()


def grant_eligible(user_field: str = "user") -> Q:
    """A filter for rows whose `user_field` may receive grants (every row when verification
    is off)."""
    if not verification_required():
        return Q()
    return Q(Exists(EmailAddress.objects.filter(user=OuterRef(user_field), verified=True)))
