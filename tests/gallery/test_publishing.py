"""Publishing from one's own images: visibility, title, mature flag, unpublishing."""

from __future__ import annotations

import pytest
from django.urls import reverse

from gallery.errors import NotAllowed
from gallery.models import Publication, Visibility
from gallery.moderation import set_mature
from gallery.publishing import publish_image, unpublish
from tests.gallery.factories import make_image


def test_alice_publishes_her_image_with_a_title_from_the_publish_page(alice, client_for):
    image = make_image(alice)
    client = client_for(alice)
    assert client.get(reverse("gallery:publish", args=[image.pk])).status_code == 200
    response = client.post(
        reverse("gallery:publish", args=[image.pk]),
        {
            "title": "Fox at dawn",
            "description": "first try",
            "visibility": "public",
        },
    )
    publication = Publication.objects.get(pk=image.pk)
    assert response.status_code == 302
    assert response["Location"] == reverse("gallery:image", args=[image.pk])
    assert (publication.title, publication.visibility, publication.owner) == (
        "Fox at dawn",
        Visibility.PUBLIC,
        alice,
    )
    assert publication.published_at is not None


def test_bob_cannot_publish_alices_image(alice, bob, client_for):
    image = make_image(alice)
    response = client_for(bob).post(
        reverse("gallery:publish", args=[image.pk]), {"visibility": "public"}
    )
    assert response.status_code == 403
    assert "only publish your own images" in response.content.decode()
    assert not Publication.objects.exists()
    with pytest.raises(NotAllowed):
        publish_image(bob, image)


def test_staff_cannot_publish_a_members_image_either(alice, carol):
    with pytest.raises(NotAllowed):
        publish_image(carol, make_image(alice))


def test_anonymous_visitors_are_sent_to_log_in_before_publishing(alice, client_for):
    image = make_image(alice)
    response = client_for(None).get(reverse("gallery:publish", args=[image.pk]))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_publishing_is_private_unless_chosen_otherwise(alice):
    publication = publish_image(alice, make_image(alice), visibility=Visibility.PRIVATE)
    assert not publication.is_published
    assert publication.published_at is None


def test_alice_can_unpublish_and_bob_cannot(alice, bob, alices_public):
    with pytest.raises(NotAllowed):
        unpublish(bob, alices_public)
    unpublish(alice, alices_public)
    alices_public.refresh_from_db()
    assert alices_public.visibility == Visibility.PRIVATE


def test_bob_cannot_unpublish_alices_image_through_the_page(bob, alices_public, client_for):
    url = reverse("gallery:unpublish", args=[alices_public.pk])
    assert client_for(bob).post(url).status_code == 404
    alices_public.refresh_from_db()
    assert alices_public.is_published


def test_alice_cannot_remove_a_moderators_mature_mark(alice, carol, alices_public):
    set_mature(carol, alices_public, True)
    republished = publish_image(
        alice, alices_public.image, visibility=Visibility.PUBLIC, mature=False
    )
    assert republished.mature is True


def test_editing_a_publication_keeps_its_likes_and_first_publication_date(alice, alices_public):
    first = alices_public.published_at
    Publication.objects.filter(pk=alices_public.pk).update(likes_count=3)
    edited = publish_image(
        alice, alices_public.image, title="Renamed", visibility=Visibility.UNLISTED
    )
    assert (edited.title, edited.likes_count, edited.published_at) == ("Renamed", 3, first)
