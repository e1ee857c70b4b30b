"""Suspending a member, the account side: they can no longer log in or use API tokens.

`generation.suspension.suspend_user` is the whole suspension (it also empties the member's queue);
this module only switches the account and keeps the record.

`is_active=False` is the switch Django already honours everywhere: ModelBackend refuses the
log-in and drops existing sessions (get_user returns nobody), and `ApiToken.objects.active()`
filters on it. Each change is written to Django's admin log (LogEntry) with the moderator and the
reason, so it shows on the member's History page in the admin.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.utils.translation import gettext as _

from accounts.staff_actions import log_member_change


class SuspensionError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _check(actor: Any, user: Any, reason: str) -> None:
    if not getattr(actor, "is_staff", False):
        raise SuspensionError(_("Only moderators can suspend or reinstate members."))
    if actor.pk == user.pk:
        raise SuspensionError(_("You cannot suspend or reinstate yourself."))
    if (user.is_staff or user.is_superuser) and not actor.is_superuser:
        raise SuspensionError(_("Only a superuser can suspend or reinstate staff."))
    if not reason.strip():
        raise SuspensionError(_("Give a reason: it is kept in the log."))


def deactivate_user(actor: Any, user: Any, reason: str) -> None:
    """Deactivate `user` and log who did it and why (their jobs: see the module docstring)."""
    _check(actor, user, reason)
    with transaction.atomic():
        type(user)._default_manager.filter(pk=user.pk).update(is_active=False)
        log_member_change(actor, user, f"Suspended: {reason.strip()}")
    user.is_active = False


def reinstate_user(actor: Any, user: Any, reason: str) -> None:
    _check(actor, user, reason)
    with transaction.atomic():
        type(user)._default_manager.filter(pk=user.pk).update(is_active=True)
        log_member_change(actor, user, f"Reinstated: {reason.strip()}")
    user.is_active = True


def suspension_history(user: Any) -> list[LogEntry]:
    """The admin-log entries about `user`, newest first (suspensions among them)."""
    content_type = ContentType.objects.get_for_model(user)
    return list(
        LogEntry.objects.filter(content_type=content_type, object_id=str(user.pk))
        .select_related("user")
        .order_by("-action_time")
    )
