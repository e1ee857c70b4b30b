"""The feed: order, filters, search, paging, mature blur, and a constant number of queries."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gallery.feed import PAGE_SIZE
from gallery.likes import toggle_like
from gallery.models import GalleryPreferences, Like, Publication, Visibility
from tests.gallery.factories import make_checkpoint, make_publication


def _ids_on(page) -> list[str]:
    return re.findall(r'data-publication="([0-9a-f-]+)"', page.content.decode())


def _count_queries(client, url: str, params=None) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, params or {})
    assert response.status_code == 200
    return len(queries)


@pytest.mark.parametrize("viewer", ["anonymous", "bob"])
@pytest.mark.parametrize("sort", ["newest", "top-week"])
def test_the_feed_costs_the_same_queries_for_one_image_as_for_a_full_page(
    viewer, sort, alice, bob, carol, client_for
):
    client = client_for({"anonymous": None, "bob": bob}[viewer])
    url = reverse("gallery:feed")
    first = make_publication(alice, mature=True)
    toggle_like(bob, first.pk)
    one = _count_queries(client, url, {"sort": sort})
    other_model = make_checkpoint("anything-v5", short_hash="0123456789")
    for i in range(PAGE_SIZE + 3):
        publication = make_publication(
            carol if i % 2 else alice,
            title=f"n{i}",
            checkpoint=other_model if i % 3 else None,
            mature=i % 4 == 0,
        )
        if i % 2:
            toggle_like(bob, publication.pk)
    full = _count_queries(client, url, {"sort": sort})
    assert full == one
    assert full <= 8


def test_the_author_page_costs_the_same_queries_however_many_images(alice, bob, client_for):
    client = client_for(bob)
    url = reverse("gallery:author", args=["alice"])
    make_publication(alice)
    one = _count_queries(client, url)
    for _ in range(10):
        make_publication(alice)
    assert _count_queries(client, url) == one


def test_the_feed_shows_the_newest_first_and_pages_through_the_rest(alice, client_for):
    made = [make_publication(alice, title=f"n{i}") for i in range(PAGE_SIZE + 2)]
    client = client_for(None)
    first_page = _ids_on(client.get(reverse("gallery:feed")))
    second_page = _ids_on(client.get(reverse("gallery:feed"), {"page": 2}))
    assert first_page[0] == str(made[-1].pk)
    assert len(first_page) == PAGE_SIZE
    assert second_page == [str(made[1].pk), str(made[0].pk)]


def test_top_this_week_counts_only_this_weeks_likes(alice, bob, carol, client_for):
    old_favourite = make_publication(alice, title="old")
    rising = make_publication(alice, title="new")
    toggle_like(bob, old_favourite.pk)
    toggle_like(carol, old_favourite.pk)
    Like.objects.filter(publication=old_favourite).update(
        created_at=timezone.now() - timedelta(days=30)
    )
    toggle_like(bob, rising.pk)
    client = client_for(None)
    week = _ids_on(client.get(reverse("gallery:feed"), {"sort": "top-week"}))
    all_time = _ids_on(client.get(reverse("gallery:feed"), {"sort": "top"}))
    assert week == [str(rising.pk), str(old_favourite.pk)]
    assert all_time == [str(old_favourite.pk), str(rising.pk)]


def test_the_feed_filters_by_model(alice, client_for):
    anything = make_checkpoint("anything-v5", short_hash="0123456789")
    other = make_publication(alice, checkpoint=anything)
    make_publication(alice)
    page = client_for(None).get(reverse("gallery:feed"), {"model": "anything-v5"})
    assert _ids_on(page) == [str(other.pk)]


def test_search_finds_words_in_prompts_and_titles_but_not_in_unlisted_images(alice, client_for):
    heron = make_publication(alice, title="Heron", prompt="an origami bird on a lake")
    titled = make_publication(alice, title="Origami study")
    make_publication(alice, Visibility.UNLISTED, prompt="origami but unlisted")
    make_publication(alice, prompt="a red car")
    found = _ids_on(client_for(None).get(reverse("gallery:feed"), {"q": "ORIGAMI"}))
    assert sorted(found) == sorted([str(heron.pk), str(titled.pk)])


def test_an_unknown_sort_falls_back_to_newest(alice, client_for):
    made = make_publication(alice)
    response = client_for(None).get(reverse("gallery:feed"), {"sort": "drop table"})
    assert response.status_code == 200 and _ids_on(response) == [str(made.pk)]


# --- mature content ------------------------------------------------------------------------


def _blurred(page, publication: Publication) -> bool:
    match = re.search(
        rf'class="gallery-card([^"]*)" data-publication="{publication.pk}"', page.content.decode()
    )
    assert match, "card not found"
    return "mature-blur" in match.group(1)


def test_mature_images_are_blurred_until_the_viewer_opts_in(alice, bob, client_for):
    mature = make_publication(alice, mature=True)
    tame = make_publication(alice)
    url = reverse("gallery:feed")
    assert _blurred(client_for(None).get(url), mature)
    assert _blurred(client_for(bob).get(url), mature)
    assert not _blurred(client_for(bob).get(url), tame)
    client_for(bob).post(reverse("gallery:preferences"), {"show_mature": "on"})
    assert GalleryPreferences.objects.get(user=bob).show_mature
    assert not _blurred(client_for(bob).get(url), mature)


def test_authors_see_their_own_mature_images_unblurred(alice, client_for):
    mature = make_publication(alice, mature=True)
    assert not _blurred(client_for(alice).get(reverse("gallery:feed")), mature)


def test_the_image_page_blurs_a_mature_image_for_anonymous_visitors(alice, client_for):
    mature = make_publication(alice, mature=True)
    page = client_for(None).get(reverse("gallery:image", args=[mature.pk])).content.decode()
    assert 'class="gallery-full mature-blur"' in page


def test_the_author_page_shows_totals(alice, bob, carol, client_for):
    first = make_publication(alice)
    make_publication(alice)
    make_publication(alice, Visibility.UNLISTED)
    toggle_like(bob, first.pk)
    toggle_like(carol, first.pk)
    page = client_for(None).get(reverse("gallery:author", args=["alice"])).content.decode()
    assert "2 public images" in page and "2 likes received" in page
