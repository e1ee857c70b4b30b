"""Reports from members and what moderators do about them.

Every moderator action is written to Django's admin log (LogEntry): who, what, why, when. It
shows on the object's History page in the admin, next to the other changes staff make there.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.db import IntegrityError, models, transaction
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from gallery.errors import Conflict, NotAllowed, NotFound
from gallery.models import Publication, Report


def log_moderation(actor: Any, obj: models.Model, message: str) -> None:
    LogEntry.objects.log_actions(
        user_id=actor.pk,
        queryset=type(obj)._default_manager.filter(pk=obj.pk),
        action_flag=CHANGE,
        change_message=message,
        single_object=True,
    )


def _require_staff(actor: Any) -> None:
    if not getattr(actor, "is_staff", False):
        raise NotAllowed(_("Only moderators can do this."))


# --- members ---------------------------------------------------------------------------------


def report_publication(user: Any, publication_id: Any, reason: str, details: str = "") -> Report:
    """Any member may report an image they can see, once."""
    if not user.is_authenticated:
        raise NotAllowed(_("Log in to report images."))
    publication = Publication.objects.visible_to(user).filter(pk=publication_id).first()
    if publication is None:
        raise NotFound(_("There is no such image."))
    if publication.owner_id == user.pk:
        raise NotAllowed(_("You cannot report your own image."))
    if reason not in Report.Reason.values:
        raise NotAllowed(_("Choose a reason for the report."))
    try:
        with transaction.atomic():
            return Report.objects.create(
                reporter=user, publication=publication, reason=reason, details=details.strip()
            )
    except IntegrityError:
        raise Conflict(
            _("You have already reported this image. A moderator will look at it.")
        ) from None


# --- moderators ------------------------------------------------------------------------------


def moderation_queue() -> models.QuerySet[Publication]:
    """Images with open reports, most reported first, then hidden images without open reports."""
    return (
        Publication.objects.for_cards()
        .annotate(open_reports=Count("reports", filter=Q(reports__resolved_at__isnull=True)))
        .filter(Q(open_reports__gt=0) | Q(hidden=True))
        .order_by("-open_reports", "-published_at")
    )


def hide_publication(actor: Any, publication: Publication, reason: str) -> None:
    _require_staff(actor)
    Publication.objects.filter(pk=publication.pk).update(
        hidden=True, hidden_reason=reason[:500], updated_at=timezone.now()
    )
    log_moderation(actor, publication, f"Hidden: {reason}")


def restore_publication(actor: Any, publication: Publication, reason: str = "") -> None:
    _require_staff(actor)
    Publication.objects.filter(pk=publication.pk).update(
        hidden=False, hidden_reason="", updated_at=timezone.now()
    )
    log_moderation(actor, publication, f"Restored: {reason}")


def set_mature(actor: Any, publication: Publication, mature: bool) -> None:
    """A moderator's mark: the author cannot remove it; unmarking frees it again."""
    _require_staff(actor)
    Publication.objects.filter(pk=publication.pk).update(
        mature=mature, mature_locked=mature, updated_at=timezone.now()
    )
    log_moderation(actor, publication, "Marked mature" if mature else "Unmarked mature")


def resolve_reports(actor: Any, publication: Publication, resolution: str) -> int:
    """Close every open report on the image; returns how many were closed."""
    _require_staff(actor)
    if resolution not in Report.Resolution.values:
        raise NotAllowed(_("Choose how the reports were resolved."))
    closed = publication.reports.open().update(
        resolution=resolution, resolved_at=timezone.now(), resolved_by=actor
    )
    log_moderation(actor, publication, f"Resolved {closed} report(s): {resolution}")
    return closed


def apply_action(actor: Any, publication: Publication, action: str, reason: str = "") -> None:
    """One moderation form, several actions (the queue's and the image page's buttons)."""
    if action == "hide":
        hide_publication(actor, publication, reason)
    elif action == "restore":
        restore_publication(actor, publication, reason)
    elif action in ("mature", "not-mature"):
        set_mature(actor, publication, action == "mature")
    elif action == "dismiss":
        resolve_reports(actor, publication, Report.Resolution.DISMISSED)
    elif action == "actioned":
        resolve_reports(actor, publication, Report.Resolution.ACTIONED)
    else:
        raise NotAllowed(_("Unknown moderation action."))


def open_reports_for(publications: list[Publication]) -> dict[Any, list[Report]]:
    """The open reports of a page of the queue, in one query."""
    grouped: dict[Any, list[Report]] = {}
    reports = (
        Report.objects.open()
        .filter(publication__in=[p.pk for p in publications])
        .select_related("reporter")
    )
    for item in reports:
        grouped.setdefault(item.publication_id, []).append(item)
    return grouped
