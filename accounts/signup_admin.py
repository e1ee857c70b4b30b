"""The members list's view of suspicious sign-ups (accounts/signup_review.py): a filter and a
column, added to whichever admin lists members."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from accounts.models import User
from accounts.signup_review import DISPOSABLE_EMAIL, SAME_ADDRESS


class SuspiciousSignupFilter(admin.SimpleListFilter):
    title = _("suspicious sign-up")
    parameter_name = "suspicious"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("yes", _("Any flag")),
            (SAME_ADDRESS, _("Many from one address")),
            (DISPOSABLE_EMAIL, _("Disposable e-mail")),
            ("no", _("Not flagged")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == "yes":
            return queryset.exclude(signup_flags="")
        if value == "no":
            return queryset.filter(signup_flags="")
        if value in (SAME_ADDRESS, DISPOSABLE_EMAIL):
            return queryset.filter(signup_flags__contains=value)
        return queryset


@admin.display(description=_("sign-up flags"), ordering="signup_flags")
def signup_flags(member: User) -> str:
    return member.signup_flags.replace(",", ", ")
