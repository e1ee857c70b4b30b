"""Likes: a toggle, one per member, refused where the image is not published, exact under races."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.urls import reverse

from accounts.models import User
from gallery.errors import NotAllowed, NotFound
from gallery.likes import toggle_like
from gallery.models import Like, Publication, Visibility
from tests.gallery.factories import make_publication


def test_bob_likes_and_unlikes_alices_image(bob, alices_public, client_for):
    client = client_for(bob)
    url = reverse("gallery:like", args=[alices_public.pk])
    liked = client.post(url, HTTP_ACCEPT="application/json").json()
    assert liked == {"liked": True, "likes_count": 1}
    unliked = client.post(url, HTTP_ACCEPT="application/json").json()
    assert unliked == {"liked": False, "likes_count": 0}
    assert not Like.objects.exists()


def test_the_like_form_without_javascript_redirects_back_to_the_image(
    bob, alices_public, client_for
):
    response = client_for(bob).post(reverse("gallery:like", args=[alices_public.pk]))
    assert response["Location"] == reverse("gallery:image", args=[alices_public.pk])
    alices_public.refresh_from_db()
    assert alices_public.likes_count == 1


def test_two_members_likes_add_up(alice, bob, carol, alices_public):
    toggle_like(bob, alices_public.pk)
    state = toggle_like(carol, alices_public.pk)
    assert state.likes_count == 2


def test_bob_cannot_like_alices_private_image(alice, bob, client_for):
    private = make_publication(alice, Visibility.PRIVATE)
    response = client_for(bob).post(
        reverse("gallery:like", args=[private.pk]), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 404
    assert response.json() == {"error": "There is no such image."}
    with pytest.raises(NotFound):
        toggle_like(bob, private.pk)


def test_alice_cannot_like_her_own_private_image(alice):
    private = make_publication(alice, Visibility.PRIVATE)
    with pytest.raises(NotAllowed):
        toggle_like(alice, private.pk)


def test_nobody_can_like_a_hidden_image(alice, carol):
    hidden = make_publication(alice, hidden=True)
    with pytest.raises(NotAllowed):
        toggle_like(carol, hidden.pk)


def test_anonymous_visitors_are_sent_to_log_in_to_like(alices_public, client_for):
    response = client_for(None).post(reverse("gallery:like", args=[alices_public.pk]))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert not Like.objects.exists()


def test_liking_needs_a_post(bob, alices_public, client_for):
    response = client_for(bob).get(reverse("gallery:like", args=[alices_public.pk]))
    assert response.status_code == 405


@pytest.mark.django_db(transaction=True)
def test_concurrent_clicks_keep_the_count_equal_to_the_likes(alice):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers with a database lock; row locks need Postgres")
    publication = make_publication(alice)
    members = [User.objects.create_user(f"fan{i}", f"fan{i}@example.com", "pw") for i in range(12)]
    # Every member clicks three times (like, unlike, like) while the others do the same.
    barrier = threading.Barrier(len(members))
    errors: list[BaseException] = []

    def click(member: User) -> None:
        from django.db import connection as thread_connection

        try:
            barrier.wait()
            for _ in range(3):
                toggle_like(member, publication.pk)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=click, args=(member,)) for member in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    publication.refresh_from_db()
    assert publication.likes_count == Like.objects.filter(publication=publication).count() == 12


@pytest.mark.django_db(transaction=True)
def test_a_double_click_by_one_member_never_counts_twice(alice, bob):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers with a database lock; row locks need Postgres")
    publication = make_publication(alice)
    barrier = threading.Barrier(2)

    def click() -> None:
        from django.db import connection as thread_connection

        try:
            barrier.wait()
            toggle_like(bob, publication.pk)
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    count = Publication.objects.get(pk=publication.pk).likes_count
    # Two toggles in turn: liked then unliked, and the count agrees with the rows.
    assert count == Like.objects.filter(publication=publication).count() == 0
