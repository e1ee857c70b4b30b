"""The feed's queries: newest or top by likes in a window, by model, by words. Each page costs
the same few queries however many images it shows (cards come with their joins)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import models
from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from gallery.models import Publication, Visibility
from generation.models import CatalogEntry

PAGE_SIZE = 24


class Sort(models.TextChoices):
    NEWEST = "newest", _("Newest")
    TOP_DAY = "top-day", _("Top today")
    TOP_WEEK = "top-week", _("Top this week")
    TOP_ALL = "top", _("Top of all time")


WINDOWS: dict[str, timedelta] = {Sort.TOP_DAY: timedelta(days=1), Sort.TOP_WEEK: timedelta(days=7)}


def feed(
    viewer: Any, sort: str = Sort.NEWEST, model: str = "", query: str = "", author: Any = None
) -> models.QuerySet[Publication]:
    publications = Publication.objects.in_feeds_for(viewer).for_cards()
    if author is not None:
        publications = publications.filter(owner=author)
    if model:
        publications = publications.filter(
            image__job__checkpoint__in=CatalogEntry.objects.public().filter(name=model)
        )
    for word in query.split()[:8]:
        publications = publications.filter(
            Q(title__icontains=word)
            | Q(description__icontains=word)
            | Q(search_text__icontains=word)
        )
    if sort in WINDOWS:
        since = timezone.now() - WINDOWS[sort]
        publications = publications.annotate(
            recent_likes=Count("likes", filter=Q(likes__created_at__gte=since))
        ).order_by("-recent_likes", "-likes_count", "-published_at", "pk")
    elif sort == Sort.TOP_ALL:
        publications = publications.order_by("-likes_count", "-published_at", "pk")
    else:
        publications = publications.order_by("-published_at", "pk")
    return publications


def models_in_gallery() -> models.QuerySet[CatalogEntry]:
    """Checkpoints that made at least one public image: the feed's model filter."""
    return (
        CatalogEntry.objects.public()
        .checkpoints()
        .filter(jobs__images__publication__visibility=Visibility.PUBLIC)
        .distinct()
        .order_by("name")
    )


def author_totals(publications: models.QuerySet[Publication]) -> dict[str, int]:
    totals = publications.order_by().aggregate(
        images=Count("pk"), likes=Coalesce(Sum("likes_count"), 0)
    )
    return {"images": totals["images"], "likes": totals["likes"]}
