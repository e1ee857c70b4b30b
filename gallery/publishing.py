"""Publishing: an owner shares one of their images, changes how, or takes it back."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from gallery.errors import NotAllowed
from gallery.models import Publication, Visibility
from gallery.private_models import redact_text, shown_for
from generation.models import JobImage


@transaction.atomic
def publish_image(
    user: Any,
    image: JobImage,
    *,
    title: str = "",
    description: str = "",
    visibility: str = Visibility.PUBLIC,
    mature: bool = False,
) -> Publication:
    """Create or update the publication of `image`. Only its owner may; staff included."""
    if not user.is_authenticated or image.owner_id != user.pk:
        raise NotAllowed(_("You can only publish your own images."))
    publication = Publication.objects.select_for_update().filter(
        pk=image.pk
    ).first() or Publication(image=image, owner_id=image.owner_id)
    was_published = publication.is_published
    publication.title = title.strip()
    publication.description = description.strip()
    publication.visibility = visibility
    # A moderator's "mature" mark stays: the author may add the flag, not remove theirs.
    publication.mature = mature or publication.mature_locked
    prompt = str(image.job.params.get("prompt", ""))
    publication.search_text = redact_text(prompt, shown_for(image.job, image.infotext))
    if publication.is_published and not was_published:
        publication.published_at = timezone.now()
    publication.save()
    return publication


def unpublish(user: Any, publication: Publication) -> Publication:
    """Back to private: gone from the gallery and its links, likes kept for a re-publish."""
    if publication.owner_id != user.pk:
        raise NotAllowed(_("You can only unpublish your own images."))
    Publication.objects.filter(pk=publication.pk).update(
        visibility=Visibility.PRIVATE, updated_at=timezone.now()
    )
    publication.visibility = Visibility.PRIVATE
    return publication


def publication_of(image: JobImage) -> Publication | None:
    return Publication.objects.filter(pk=image.pk).first()


def publication_state(image_id: Any, publication: Publication | None) -> dict[str, Any]:
    """How an image is shared, as the pages' publish controls show it."""
    published = bool(publication and publication.is_published)
    return {
        "image_id": str(image_id),
        "published": published,
        "visibility": publication.visibility if publication else Visibility.PRIVATE,
        "visibility_label": str(Visibility(publication.visibility).label)
        if publication
        else str(Visibility.PRIVATE.label),
        "title": publication.title if publication else "",
        "description": publication.description if publication else "",
        "mature": bool(publication and publication.mature),
        "mature_locked": bool(publication and publication.mature_locked),
        "gallery_url": reverse("gallery:image", args=[image_id]) if published else None,
    }
