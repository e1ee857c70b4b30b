"""Likes: one per member per image, a toggle, and a count that stays exact under racing clicks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils.translation import gettext as _

from gallery.errors import NotAllowed, NotFound
from gallery.models import Like, Publication


@dataclass(frozen=True)
class LikeState:
    liked: bool
    likes_count: int


def toggle_like(user: Any, publication_id: Any) -> LikeState:
    """Like the image, or take the like back. Refused for images not published and shown.

    The publication row is locked for the transaction, so clicks on one image (by anyone)
    take turns, and the count is recounted from the likes it holds: it cannot drift.
    """
    if not user.is_authenticated:
        raise NotAllowed(_("Log in to like images."))
    with transaction.atomic():
        publication = (
            Publication.objects.visible_to(user)
            .select_for_update()
            .filter(pk=publication_id)
            .first()
        )
        if publication is None:
            raise NotFound(_("There is no such image."))
        if not publication.is_published or publication.hidden:
            raise NotAllowed(_("Only published images can be liked."))
        deleted, _rows = Like.objects.filter(user=user, publication=publication).delete()
        liked = not deleted
        if liked:
            Like.objects.create(user=user, publication=publication)
        count = Like.objects.filter(publication=publication).count()
        Publication.objects.filter(pk=publication.pk).update(likes_count=count)
    return LikeState(liked=liked, likes_count=count)


def liked_ids(user: Any, publication_ids: list[Any]) -> set[Any]:
    """Which of these images `user` likes, in one query (for a page of cards)."""
    if not user.is_authenticated or not publication_ids:
        return set()
    return set(
        Like.objects.filter(user=user, publication_id__in=publication_ids).values_list(
            "publication_id", flat=True
        )
    )
