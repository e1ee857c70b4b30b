"""Published images, likes, reports and each member's gallery preferences.

A `Publication` shares one `generation.JobImage` and uses the image's UUID as its own key, so a
gallery URL is as unguessable as the image itself. Who may see what lives in the queryset:
`in_feeds_for(user)` (feeds, search, author pages) and `visible_to(user)` (image page, files).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Visibility(models.TextChoices):
    PRIVATE = "private", _("Private (only you)")
    UNLISTED = "unlisted", _("Unlisted (anyone with the link)")
    PUBLIC = "public", _("Public (in the gallery)")


PUBLISHED = (Visibility.UNLISTED, Visibility.PUBLIC)


def _is_staff(user: Any) -> bool:
    return bool(getattr(user, "is_staff", False))


def _owner_filter(user: Any) -> Q:
    # Anonymous visitors own nothing: a condition that matches no row.
    if getattr(user, "is_authenticated", False):
        return Q(owner=user)
    return Q(pk__in=[])


class PublicationQuerySet(models.QuerySet["Publication"]):
    def in_feeds_for(self, user: Any) -> PublicationQuerySet:
        """What feeds, search and author pages list: public only, never private or unlisted.

        Hidden images stay listed for their author and for staff, nobody else.
        """
        public = self.filter(visibility=Visibility.PUBLIC)
        if _is_staff(user):
            return public
        return public.filter(Q(hidden=False) | _owner_filter(user))

    def visible_to(self, user: Any) -> PublicationQuerySet:
        """What `user` may open (image page, file URLs): published and not hidden, or own."""
        if _is_staff(user):
            return self.all()
        return self.filter(Q(visibility__in=PUBLISHED, hidden=False) | _owner_filter(user))

    def for_cards(self) -> PublicationQuerySet:
        """Everything a feed card shows, in the same query (no per-image queries)."""
        return self.select_related("owner", "image", "image__job__checkpoint")


class Publication(models.Model):
    image = models.OneToOneField(
        "generation.JobImage",
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="publication",
        verbose_name=_("image"),
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="publications",
        verbose_name=_("author"),
    )
    title = models.CharField(_("title"), max_length=120, blank=True)
    description = models.TextField(_("description"), max_length=2000, blank=True)
    visibility = models.CharField(
        _("visibility"), max_length=16, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    mature = models.BooleanField(
        _("mature content"),
        default=False,
        help_text=_("Blurred for viewers who have not chosen to see mature content."),
    )
    mature_locked = models.BooleanField(
        _("marked mature by a moderator"),
        default=False,
        help_text=_("The author cannot remove a moderator's mature mark."),
    )
    hidden = models.BooleanField(
        _("hidden by a moderator"),
        default=False,
        help_text=_("Only the author and staff can see a hidden image."),
    )
    hidden_reason = models.CharField(_("reason for hiding"), max_length=500, blank=True)
    published_at = models.DateTimeField(_("published"), null=True, blank=True, db_index=True)
    likes_count = models.PositiveIntegerField(_("likes"), default=0)
    # What the gallery's search reads of the prompt: without private model names (set when
    # published, `gallery.private_models`), so a search cannot confirm a guessed name.
    search_text = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PublicationQuerySet.as_manager()

    # Not columns: per-viewer facts that gallery views set on a page of cards for templates.
    blurred: bool
    liked: bool
    open_report_list: list[Report]

    class Meta:
        ordering = ["-published_at"]
        verbose_name = _("publication")
        verbose_name_plural = _("publications")
        indexes = [
            models.Index(fields=["visibility", "-published_at"], name="pub_visibility_published"),
            models.Index(fields=["visibility", "-likes_count"], name="pub_visibility_likes"),
            models.Index(fields=["owner", "-published_at"], name="pub_owner_published"),
        ]

    def __str__(self) -> str:
        return self.title or str(self.pk)

    @property
    def is_published(self) -> bool:
        return self.visibility in PUBLISHED

    @property
    def display_title(self) -> str:
        return self.title or str(_("Untitled"))

    def is_viewable_by(self, user: Any) -> bool:
        if _is_staff(user) or (user.is_authenticated and user.pk == self.owner_id):
            return True
        return self.is_published and not self.hidden

    def blurred_for(self, user: Any, preferences: GalleryPreferences | None) -> bool:
        """Mature images are blurred unless the viewer opted in (authors see their own)."""
        if not self.mature:
            return False
        if user.is_authenticated and user.pk == self.owner_id:
            return False
        return not (preferences and preferences.show_mature)


class Like(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="gallery_likes"
    )
    publication = models.ForeignKey(Publication, on_delete=models.CASCADE, related_name="likes")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("like")
        verbose_name_plural = _("likes")
        constraints = [
            models.UniqueConstraint(fields=["user", "publication"], name="one_like_per_user"),
        ]
        indexes = [models.Index(fields=["publication", "created_at"], name="like_pub_created")]

    def __str__(self) -> str:
        return f"{self.user_id} likes {self.publication_id}"


class ReportQuerySet(models.QuerySet["Report"]):
    def open(self) -> ReportQuerySet:
        return self.filter(resolved_at__isnull=True)


class Report(models.Model):
    class Reason(models.TextChoices):
        UNMARKED_MATURE = "mature", _("Mature content not marked as mature")
        ILLEGAL = "illegal", _("Illegal content")
        HARASSMENT = "harassment", _("Harassment or hate")
        SPAM = "spam", _("Spam")
        STOLEN = "stolen", _("Someone else's work")
        OTHER = "other", _("Something else")

    class Resolution(models.TextChoices):
        DISMISSED = "dismissed", _("Dismissed: nothing wrong")
        ACTIONED = "actioned", _("Actioned: the image was changed or hidden")

    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="gallery_reports"
    )
    publication = models.ForeignKey(Publication, on_delete=models.CASCADE, related_name="reports")
    reason = models.CharField(_("reason"), max_length=16, choices=Reason.choices)
    details = models.TextField(_("details"), max_length=2000, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    resolution = models.CharField(
        _("resolution"), max_length=16, choices=Resolution.choices, blank=True
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    objects = ReportQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        verbose_name = _("report")
        verbose_name_plural = _("reports")
        constraints = [
            models.UniqueConstraint(
                fields=["reporter", "publication"], name="one_report_per_user_and_image"
            ),
        ]

    def __str__(self) -> str:
        return f"report by {self.reporter_id} on {self.publication_id}"


class GalleryPreferences(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="gallery_preferences"
    )
    show_mature = models.BooleanField(
        _("show mature content"),
        default=False,
        help_text=_("Show images marked as mature without blurring them."),
    )

    class Meta:
        verbose_name = _("gallery preferences")
        verbose_name_plural = _("gallery preferences")

    def __str__(self) -> str:
        return f"gallery preferences of {self.user_id}"

    @classmethod
    def of(cls, user: Any) -> GalleryPreferences | None:
        """The viewer's preferences without creating a row (None for anonymous or unset)."""
        if not user.is_authenticated:
            return None
        return cls.objects.filter(user=user).first()
