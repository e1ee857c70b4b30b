"""Flagging sign-ups that look like credit farming, for admins to review (the members list
filters on the flags). A flag blocks nothing by itself: throttling and e-mail verification do."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from accounts.models import User

SAME_ADDRESS = "same-address"
DISPOSABLE_EMAIL = "disposable-email"
WINDOW = timedelta(days=1)

# Well-known throwaway-mail domains; SIGNUP_DISPOSABLE_DOMAINS adds more.
DISPOSABLE_DOMAINS = frozenset(
    {
        "10minutemail.com",
        "dispostable.com",
        "getnada.com",
        "guerrillamail.com",
        "maildrop.cc",
        "mailinator.com",
        "mintemail.com",
        "sharklasers.com",
        "temp-mail.org",
        "tempmail.com",
        "throwawaymail.com",
        "trashmail.com",
        "yopmail.com",
    }
)


def client_address(request: Any) -> str | None:
    """REMOTE_ADDR, which the ASGI layer sets to the real client; None if it is no address."""
    raw = request.META.get("REMOTE_ADDR") if request is not None else None
    try:
        return str(ipaddress.ip_address(raw)) if raw else None
    except ValueError:
        return None


def is_disposable(email: str) -> bool:
    domain = email.rpartition("@")[2].lower().strip(".")
    listed = DISPOSABLE_DOMAINS | {d.lower() for d in settings.SIGNUP_DISPOSABLE_DOMAINS}
    parts = domain.split(".")
    # A subdomain of a listed domain counts too (x.mailinator.com).
    return any(".".join(parts[i:]) in listed for i in range(len(parts) - 1))


def review_signup(user: User, address: str | None, now: datetime | None = None) -> list[str]:
    """Record where `user` signed up from and flag the sign-up if it looks like farming.

    Many sign-ups from one address within a day flag all of them, the earlier ones too, so
    admins see the whole cluster. Returns the user's flags."""
    now = now or timezone.now()
    flags = set(filter(None, user.signup_flags.split(",")))
    if is_disposable(user.email):
        flags.add(DISPOSABLE_EMAIL)
    if address:
        siblings = User.objects.filter(
            signup_address=address, date_joined__gte=now - WINDOW
        ).exclude(pk=user.pk)
        if siblings.count() + 1 >= settings.SIGNUP_FLAG_SAME_ADDRESS:
            flags.add(SAME_ADDRESS)
            for sibling in siblings.exclude(signup_flags__contains=SAME_ADDRESS):
                _add_flag(sibling, SAME_ADDRESS)
    user.signup_address = address
    user.signup_flags = ",".join(sorted(flags))
    User.objects.filter(pk=user.pk).update(
        signup_address=user.signup_address, signup_flags=user.signup_flags
    )
    return sorted(flags)


def _add_flag(user: User, flag: str) -> None:
    flags = sorted(set(filter(None, user.signup_flags.split(","))) | {flag})
    User.objects.filter(pk=user.pk).update(signup_flags=",".join(flags))
