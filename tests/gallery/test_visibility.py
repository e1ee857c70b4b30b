"""Who sees a publication where: feed, search, author page, image page and file URLs."""

from __future__ import annotations

import pytest
from django.urls import reverse

from gallery.models import Visibility
from tests.gallery.factories import make_publication

SURFACES = ("feed", "search", "author", "page", "file", "thumbnail", "download")

# case -> the surfaces each viewer finds the image on.
EVERYWHERE = set(SURFACES)
BY_LINK = {"page", "file", "thumbnail", "download"}
NOWHERE: set[str] = set()
EXPECTED = {
    "public": {
        "alice": EVERYWHERE,
        "bob": EVERYWHERE,
        "anonymous": EVERYWHERE,
        "carol": EVERYWHERE,
    },
    "unlisted": {"alice": BY_LINK, "bob": BY_LINK, "anonymous": BY_LINK, "carol": BY_LINK},
    "private": {"alice": BY_LINK, "bob": NOWHERE, "anonymous": NOWHERE, "carol": BY_LINK},
    "hidden": {"alice": EVERYWHERE, "bob": NOWHERE, "anonymous": NOWHERE, "carol": EVERYWHERE},
}


def _publish(alice, case: str):
    if case == "hidden":
        return make_publication(alice, Visibility.PUBLIC, title="Misty fox", hidden=True)
    return make_publication(alice, case, title="Misty fox")


def _found_on(client, publication, surface: str) -> bool:
    pk = str(publication.pk)
    if surface == "feed":
        return pk in client.get(reverse("gallery:feed")).content.decode()
    if surface == "search":
        return pk in client.get(reverse("gallery:feed"), {"q": "watercolor"}).content.decode()
    if surface == "author":
        url = reverse("gallery:author", args=[publication.owner.username])
        return pk in client.get(url).content.decode()
    names = {
        "page": "gallery:image",
        "file": "gallery:image_file",
        "thumbnail": "gallery:thumbnail",
        "download": "gallery:download",
    }
    response = client.get(reverse(names[surface], args=[publication.pk]))
    assert response.status_code in (200, 404), (surface, response.status_code)
    return response.status_code == 200


@pytest.mark.parametrize("case", list(EXPECTED))
@pytest.mark.parametrize("viewer", ["alice", "bob", "anonymous", "carol"])
def test_each_viewer_finds_the_image_exactly_where_its_visibility_allows(
    case, viewer, alice, bob, carol, client_for
):
    publication = _publish(alice, case)
    user = {"alice": alice, "bob": bob, "carol": carol, "anonymous": None}[viewer]
    client = client_for(user)
    found = {surface for surface in SURFACES if _found_on(client, publication, surface)}
    assert found == EXPECTED[case][viewer]


def test_the_download_is_the_stored_png_with_its_parameters_chunk(alice, alices_public, client_for):
    import io

    from PIL import Image

    from gpu_worker.infotext import read_infotext

    response = client_for(None).get(reverse("gallery:download", args=[alices_public.pk]))
    body = response.getvalue()
    assert response["Content-Type"] == "image/png"
    assert 'attachment; filename="atelier-' in response["Content-Disposition"]
    assert response["Cache-Control"] == "private, max-age=300"
    assert read_infotext(body) == alices_public.image.infotext
    assert Image.open(io.BytesIO(body)).format == "PNG"


def test_unpublishing_takes_the_image_away_from_everyone_else_at_once(
    alice, bob, alices_public, client_for
):
    client_for(alice).post(reverse("gallery:unpublish", args=[alices_public.pk]))
    bobs = client_for(bob)
    assert bobs.get(reverse("gallery:image", args=[alices_public.pk])).status_code == 404
    assert bobs.get(reverse("gallery:image_file", args=[alices_public.pk])).status_code == 404
    assert (
        client_for(alice).get(reverse("gallery:image", args=[alices_public.pk])).status_code == 200
    )


def test_an_unknown_image_id_is_a_404_not_an_error(bob, client_for):
    url = reverse("gallery:image", args=["5d1c6f6e-0000-4000-8000-000000000000"])
    assert client_for(bob).get(url).status_code == 404


def test_the_image_page_shows_author_model_hash_parameters_and_infotext(
    bob, alices_public, client_for
):
    page = client_for(bob).get(reverse("gallery:image", args=[alices_public.pk])).content.decode()
    assert 'href="/gallery/u/alice/"' in page
    assert "dreamshaper-8" in page and "[6ce0161689]" in page
    assert "<dt>Schedule type</dt><dd>Karras</dd>" in page
    assert '<pre class="infotext" id="infotext">' in page and "Clip skip: 2" in page
