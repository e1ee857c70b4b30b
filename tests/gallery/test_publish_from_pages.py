"""Publishing from where the images are: result cards, My images, the image page (issue 15)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from gallery.models import Publication, Visibility
from gallery.publishing import publish_image
from tests.gallery.factories import make_image

pytestmark = pytest.mark.django_db

JSON = {"Accept": "application/json"}


@pytest.mark.parametrize("page", ["generate", "my_images", "image_detail"])
def test_every_page_with_alices_image_offers_publish(alice, client_for, page):
    image = make_image(alice)
    url = reverse(page, args=[image.pk]) if page == "image_detail" else reverse(page)
    html = client_for(alice).get(url).content.decode()
    assert f'href="{reverse("gallery:publish", args=[image.pk])}?next=' in html
    assert 'id="publish-dialog"' in html


@pytest.mark.parametrize("page", ["generate", "my_images", "image_detail"])
def test_a_published_image_shows_its_gallery_link_and_unpublish(alice, client_for, page):
    image = make_image(alice)
    publish_image(alice, image, visibility=Visibility.PUBLIC, title="Dusk")
    url = reverse(page, args=[image.pk]) if page == "image_detail" else reverse(page)
    html = client_for(alice).get(url).content.decode()
    controls = html[html.index(f'data-image-id="{image.pk}" data-publish-url') :]
    controls = controls[: controls.index("</form>")]
    assert f'href="{reverse("gallery:image", args=[image.pk])}"' in controls
    assert 'publish-state" hidden' not in controls
    assert f'action="{reverse("gallery:unpublish", args=[image.pk])}"' in controls


def test_the_generators_new_result_cards_carry_publish_controls(alice, client_for):
    html = client_for(alice).get(reverse("generate")).content.decode()
    template = html[html.index('<template id="result-template">') :]
    template = template[: template.index("</template>")]
    assert "publish-open" in template and "unpublish-form" in template


def test_the_dialog_publishes_with_visibility_title_and_mature_flag_as_json(alice, client_for):
    image = make_image(alice)
    client = client_for(alice)
    url = reverse("gallery:publish", args=[image.pk])
    assert client.get(url, headers=JSON).json()["published"] is False
    state = client.post(
        url, {"visibility": "unlisted", "title": "Night", "mature": "on"}, headers=JSON
    ).json()
    assert state["published"] is True and state["visibility"] == "unlisted"
    assert state["gallery_url"] == reverse("gallery:image", args=[image.pk])
    publication = Publication.objects.get(pk=image.pk)
    assert (publication.title, publication.mature) == ("Night", True)
    state = client.post(reverse("gallery:unpublish", args=[image.pk]), headers=JSON).json()
    assert state["published"] is False and state["gallery_url"] is None


def test_bob_cannot_publish_alices_image_through_the_dialog(alice, bob, client_for):
    image = make_image(alice)
    url = reverse("gallery:publish", args=[image.pk])
    response = client_for(bob).post(url, {"visibility": "public"}, headers=JSON)
    assert response.status_code == 403
    assert not Publication.objects.filter(pk=image.pk).exists()


def test_without_javascript_publishing_returns_to_the_page_it_came_from(alice, client_for):
    image = make_image(alice)
    url = reverse("gallery:publish", args=[image.pk])
    response = client_for(alice).post(
        url, {"visibility": "public", "title": "", "next": reverse("my_images")}
    )
    assert response.status_code == 302 and response["Location"] == reverse("my_images")
    elsewhere = client_for(alice).post(
        url, {"visibility": "public", "next": "https://evil.example/"}
    )
    assert elsewhere["Location"] == reverse("gallery:image", args=[image.pk])
