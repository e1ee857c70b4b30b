"""django-allauth's hooks into Atelier: a new member's sign-up is reviewed and their credit
account opened; the welcome grant waits for a verified address while verification is on."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.models import EmailAddress
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.models import SocialLogin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from accounts.ledger import grant_welcome
from accounts.signup_review import client_address, review_signup


def welcome_member(request: HttpRequest | None, user: Any) -> None:
    """A member just created: record the sign-up's address and flags, open the credit account
    (with the welcome grant if they may receive it already)."""
    review_signup(user, client_address(request))
    grant_welcome(user)


class AccountAdapter(DefaultAccountAdapter):
    error_messages = {
        **DefaultAccountAdapter.error_messages,
        "email_taken": _("An account with this email already exists."),
    }

    def save_user(self, request: HttpRequest, user: Any, form: Any, commit: bool = True) -> Any:
        user = super().save_user(request, user, form, commit)
        if commit:
            welcome_member(request, user)
        return user

    def confirm_email(self, request: HttpRequest, email_address: EmailAddress) -> bool:
        confirmed = super().confirm_email(request, email_address)
        if confirmed:
            grant_welcome(email_address.user)
        return confirmed


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def save_user(self, request: HttpRequest, sociallogin: SocialLogin, form: Any = None) -> Any:
        # The provider's addresses are saved by now, verified where the provider says so.
        user = super().save_user(request, sociallogin, form)
        welcome_member(request, user)
        return user
